"""FLOPs a forward pass really executes, whatever the method (pruning, merging, ...): PyTorch's
``FlopCounterMode`` (matrix products, convolutions, attention), with the CPU attention kernel
counted as the GPU ones are (PyTorch has no formula for it)."""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["counted_flops"]


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of ``fn()``."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())
