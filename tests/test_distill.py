"""Stage-1 distillation targets and losses."""

import pytest
import torch

from pacegeo.backbone import VGGT, tiny
from pacegeo.pruning.distill import GlobalAttentionRecorder, attention_targets, distillation_loss, topk_overlap


def explicit_global_attention(agg, images: torch.Tensor) -> torch.Tensor:
    """Softmax weights ``[B, heads, N, N]`` of the first global block, computed by hand from its
    input (captured by a hook: the state after frame block 0)."""
    captured = {}
    block = agg.global_blocks[0]
    handle = block.register_forward_pre_hook(lambda m, a, k: captured.update(x=a[0], pos=k["pos"]), with_kwargs=True)
    agg(images)
    handle.remove()
    x = block.norm1(captured["x"])
    attn = block.attn
    qkv = attn.qkv(x).reshape(x.shape[0], x.shape[1], 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.rope(attn.q_norm(qkv[0]), captured["pos"]), attn.rope(attn.k_norm(qkv[1]), captured["pos"])
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)


def test_attention_targets_are_per_frame_distributions_over_patch_tokens():
    torch.manual_seed(0)
    model = VGGT(tiny()).eval()
    images = torch.rand(2, 3, 3, 28, 42)
    target = attention_targets(model, images)
    assert target.shape == (2, 3, 6)
    torch.testing.assert_close(target.sum(-1), torch.ones(2, 3))
    assert (target >= 0).all()


def test_recorded_mass_equals_an_explicit_attention_computation():
    torch.manual_seed(0)
    model = VGGT(tiny(depth=1)).eval()
    images = torch.rand(1, 2, 3, 28, 28)
    with GlobalAttentionRecorder(model.aggregator) as rec:
        model.aggregator(images)
    assert len(rec.masses) == 1
    weights = explicit_global_attention(model.aggregator, images)
    torch.testing.assert_close(rec.masses[0], weights.mean(dim=(1, 2)))


def test_camera_queries_record_only_the_camera_tokens_rows():
    torch.manual_seed(0)
    model = VGGT(tiny(depth=1)).eval()
    images = torch.rand(1, 3, 3, 28, 28)
    with GlobalAttentionRecorder(model.aggregator, "camera", frames=3) as rec:
        model.aggregator(images)
    weights = explicit_global_attention(model.aggregator, images)  # [1, h, S*P, S*P]
    per_frame = weights.shape[-1] // 3
    camera_rows = weights[:, :, [0, per_frame, 2 * per_frame]]  # the first token of each frame
    torch.testing.assert_close(rec.masses[0], camera_rows.mean(dim=(1, 2)))
    assert not torch.allclose(rec.masses[0], weights.mean(dim=(1, 2)))
    target = attention_targets(model, images, "camera")
    torch.testing.assert_close(target.sum(-1), torch.ones(1, 3))
    with pytest.raises(ValueError):
        GlobalAttentionRecorder(model.aggregator, "camera")


def test_distillation_loss_is_zero_only_for_the_target_ranking():
    target = torch.softmax(torch.randn(2, 3, 10), dim=-1)
    assert distillation_loss(torch.log(target), target).abs() < 1e-6
    assert distillation_loss(torch.log(target) + 5.0, target).abs() < 1e-6  # shift-invariant per frame
    assert distillation_loss(-torch.log(target), target) > 0.01
    assert topk_overlap(torch.log(target), target, 0.3) == 1.0
