"""Scene-aware prompt tuning of the frozen encoder with a local-feature-enhancement head, and its
file format.

:class:`PromptExtractor` (after EfficientVPR) keeps the backbone's DINO-style encoder frozen and
trains two small parts only:

* a prompt pool (:class:`PromptPool`): ``P`` learnable prompts of ``L`` tokens each (width ``C`` of
  the encoder) with one key ``[C]`` per prompt (training starts them from far-apart queries,
  :meth:`PromptPool.init_keys`). Per image, the query is the layer-normalised class
  token after the first ``query_layer`` frozen blocks run without prompts; the prompt whose key has
  the highest cosine similarity to the query is selected (top-1) and its ``L`` tokens are inserted
  after the class and register tokens, in front of the patch tokens, before block
  ``prompt_layer`` (shallow prompting: ``prompt_layer = 0`` inserts them before every block). The
  frozen blocks attend to the prompt tokens like to any other token; they are dropped again after
  the final norm. Keys learn through the pull loss :meth:`PromptPool.key_loss` (``1 - cos`` between
  each query and its selected key), the prompt tokens through the retrieval loss.
* a local-feature-enhancement head (:class:`EnhancementHead`) on the patch-token grid
  ``[B, C, h, w]``:

  - multi-scale global path: GeM over the tokens (scale 1) and GeM over the 2x2-average-pooled grid
    (scale 2), with the class token, projected to ``global_dim``;
  - orientation-aware local path: the tokens reduced to ``local_dim`` channels, then four depthwise
    convolutions with oriented supports (horizontal ``1 x k``, vertical ``k x 1``, diagonal and
    anti-diagonal ``k x k`` masked to their diagonal), each followed by ReLU and GeM over the grid;
  - both concatenated, projected to ``out_dim`` and L2-normalised.

``describe(images, keep, batch_size)`` works as for :class:`pacegeo.vpr.DescriptorExtractor`; token
pruning (``keep < 1``) is not supported (the head works on the full grid): it raises
:class:`pacegeo.errors.InputError`.

A prompt file (:func:`save_prompt` / :func:`load_prompt`) is a safetensors file with the prompt pool
and head weights only; the encoder is the bundled backbone's, named in the metadata with its
:func:`pacegeo.hub.backbone_fingerprint`, and :func:`load_prompt` refuses any other backbone.
Loading is strict: missing, unexpected or misshapen tensors raise :class:`CheckpointError`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file
from torch import nn

from pacegeo.backbone import VGGT, DinoViT
from pacegeo.errors import CheckpointError, InputError
from pacegeo.io.outputs import save_tensors
from pacegeo.pruning.budget import validate_keep
from pacegeo.vpr.extract import DescriptorExtractor, EncodedTokens, resolve_vpr

PROMPT_FORMAT = "pacegeo-vpr-prompt/1"
ORIENTATIONS = ("horizontal", "vertical", "diagonal", "antidiagonal")

__all__ = [
    "ORIENTATIONS",
    "PROMPT_FORMAT",
    "EnhancementHead",
    "PromptConfig",
    "PromptExtractor",
    "PromptPool",
    "load_prompt",
    "read_prompt_metadata",
    "save_prompt",
]


@dataclass(frozen=True)
class PromptConfig:
    """Prompt pool and head of :class:`PromptExtractor`. Descriptor size: ``out_dim``."""

    embed_dim: int = 192  # width C of the frozen encoder
    pool_size: int = 8  # P prompts
    prompt_length: int = 4  # L tokens per prompt
    prompt_layer: int = 0  # frozen blocks run before the prompt tokens are inserted
    query_layer: int = 1  # frozen blocks (without prompts) before the class token is read as the query
    global_dim: int = 256
    local_dim: int = 64  # channels of each oriented branch
    kernel: int = 5  # support of the oriented depthwise kernels
    out_dim: int = 256
    gem_p: float = 3.0

    def __post_init__(self) -> None:
        for name in ("embed_dim", "pool_size", "prompt_length", "global_dim", "local_dim", "kernel", "out_dim"):
            if getattr(self, name) < 1:
                raise InputError(f"PromptConfig.{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.prompt_layer <= self.query_layer:
            raise InputError(f"PromptConfig needs 0 <= prompt_layer <= query_layer, got {self.prompt_layer}, {self.query_layer}")
        if self.kernel % 2 == 0:
            raise InputError(f"PromptConfig.kernel must be odd, got {self.kernel}")


class PromptPool(nn.Module):
    """``P`` prompts of ``L`` tokens ``[P, L, C]`` and their keys ``[P, C]``; top-1 selection by
    cosine similarity of a query ``[B, C]`` to the keys."""

    def __init__(self, pool_size: int, length: int, dim: int) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(pool_size, length, dim).uniform_(-0.02, 0.02))
        self.keys = nn.Parameter(torch.empty(pool_size, dim).uniform_(-1.0, 1.0))

    def similarity(self, query: torch.Tensor) -> torch.Tensor:
        """``[B, C] -> [B, P]`` cosine similarity of every query to every key."""
        return F.normalize(query, dim=-1) @ F.normalize(self.keys, dim=-1).T

    def select(self, query: torch.Tensor) -> torch.Tensor:
        """``[B, C] -> [B]`` index of the most similar key (top-1)."""
        return self.similarity(query).argmax(dim=-1)

    def forward(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, C]`` -> (selected prompt tokens ``[B, L, C]``, selected index ``[B]``)."""
        idx = self.select(query)
        return self.prompts[idx], idx

    @torch.no_grad()
    def init_keys(self, queries: torch.Tensor) -> torch.Tensor:
        """Set the keys to ``P`` of the given queries ``[M, C]`` (``M >= P``) that are far apart in
        angle: farthest-point sampling on the cosine distance, starting from the first query, so
        that every prompt is selected by some images from the start. Returns the chosen ``[P]``."""
        q = F.normalize(queries.float(), dim=-1)
        if q.shape[0] < self.keys.shape[0]:
            raise InputError(f"init_keys needs at least {self.keys.shape[0]} queries, got {q.shape[0]}")
        chosen = [0]
        nearest = 1.0 - q @ q[0]
        for _ in range(1, self.keys.shape[0]):
            chosen.append(int(nearest.argmax()))
            nearest = torch.minimum(nearest, 1.0 - q @ q[chosen[-1]])
        idx = torch.tensor(chosen)
        self.keys.copy_(queries[idx].to(self.keys.dtype))
        return idx

    def key_loss(self, query: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Mean ``1 - cos(query, key[idx])``: pulls each selected key towards its queries (scalar)."""
        sim = F.cosine_similarity(query.detach(), self.keys[idx], dim=-1)
        return (1.0 - sim).mean()


def _grid_gem(x: torch.Tensor, p: float, eps: float = 1e-6) -> torch.Tensor:
    """GeM over the spatial grid: ``[B, C, h, w] -> [B, C]``."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def oriented_masks(kernel: int) -> torch.Tensor:
    """``[4, k, k]`` 0/1 supports of the oriented kernels, in :data:`ORIENTATIONS` order."""
    masks = torch.zeros(4, kernel, kernel)
    mid = kernel // 2
    masks[0, mid, :] = 1.0  # horizontal
    masks[1, :, mid] = 1.0  # vertical
    masks[2] = torch.eye(kernel)  # diagonal
    masks[3] = torch.eye(kernel).flip(-1)  # anti-diagonal
    return masks


class EnhancementHead(nn.Module):
    """Local-feature-enhancement head: patch tokens ``[B, N, C]`` on an ``(h, w)`` grid plus the
    class token ``[B, C]`` -> L2-normalised ``[B, out_dim]`` (see the module docstring)."""

    needs_fit = False

    def __init__(self, config: PromptConfig) -> None:
        super().__init__()
        self.config = c = config
        self.global_proj = nn.Sequential(nn.LayerNorm(3 * c.embed_dim), nn.Linear(3 * c.embed_dim, c.global_dim))
        self.reduce = nn.Linear(c.embed_dim, c.local_dim)
        # one depthwise k x k kernel per orientation and channel; only its oriented support is used
        self.oriented = nn.Parameter(torch.randn(4, c.local_dim, 1, c.kernel, c.kernel) / c.kernel)
        self.oriented_bias = nn.Parameter(torch.zeros(4, c.local_dim))
        self.register_buffer("masks", oriented_masks(c.kernel)[:, None, None], persistent=False)  # [4, 1, 1, k, k]
        self.out = nn.Linear(c.global_dim + 4 * c.local_dim, c.out_dim)

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def global_features(self, grid: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]``, ``[B, C]`` -> ``[B, global_dim]``: GeM at scales 1 and 2 with the class token."""
        p = self.config.gem_p
        coarse = F.avg_pool2d(grid, 2, ceil_mode=True) if min(grid.shape[-2:]) > 1 else grid
        return self.global_proj(torch.cat((_grid_gem(grid, p), _grid_gem(coarse, p), cls), dim=-1))

    def orientation_responses(self, grid: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w] -> [B, 4, local_dim]``: per orientation, GeM of the ReLU'd depthwise response."""
        x = self.reduce(rearrange(grid, "b c h w -> b h w c"))
        x = rearrange(x, "b h w c -> b c h w")
        weights = self.oriented * self.masks
        pad = self.config.kernel // 2
        out = [
            _grid_gem(F.relu(F.conv2d(x, weights[o], self.oriented_bias[o], padding=pad, groups=x.shape[1])),
                        self.config.gem_p)
            for o in range(4)
        ]
        return torch.stack(out, dim=1)

    def forward(self, tokens: torch.Tensor, cls: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """``tokens [B, N, C]`` (grid order, ``N = h * w``), ``cls [B, C]`` -> ``[B, out_dim]``."""
        h, w = grid_hw
        if tokens.shape[1] != h * w:
            raise InputError(f"the enhancement head needs the full {h}x{w} token grid, got {tokens.shape[1]} tokens")
        grid = rearrange(tokens, "b (h w) c -> b c h w", h=h, w=w)
        local = rearrange(self.orientation_responses(grid), "b o c -> b (o c)")
        desc = self.out(torch.cat((F.normalize(self.global_features(grid, cls), dim=-1), local), dim=-1))
        return F.normalize(desc, dim=-1)


class PromptExtractor(DescriptorExtractor):
    """Images ``[B, 3, H, W]`` in [0, 1] -> L2-normalised descriptors ``[B, out_dim]`` with the frozen
    encoder, a selected prompt and the enhancement head (see the module docstring).

    Args:
        encoder: the backbone's DINO-style patch encoder (``model.aggregator.patch_embed``); its
            parameters are set to ``requires_grad=False``.
        config: prompt pool and head (randomly initialised; train them or use :func:`load_prompt`).
    """

    def __init__(self, encoder: DinoViT, config: PromptConfig) -> None:
        if not isinstance(encoder, DinoViT):
            raise InputError(f"prompt tuning needs a DINO-style ViT encoder, got {type(encoder).__name__}")
        if config.embed_dim != encoder.pos_embed.shape[-1]:
            raise InputError(f"PromptConfig.embed_dim {config.embed_dim} != encoder width {encoder.pos_embed.shape[-1]}")
        super().__init__(encoder, EnhancementHead(config), prune_after=0, scoring="distinctiveness")
        if config.query_layer > len(self.blocks):
            raise InputError(f"PromptConfig.query_layer {config.query_layer} > encoder depth {len(self.blocks)}")
        self.config = config
        self.prompts = PromptPool(config.pool_size, config.prompt_length, config.embed_dim)
        self.encoder.requires_grad_(False)

    @classmethod
    def from_backbone(cls, backbone: VGGT, config: PromptConfig) -> "PromptExtractor":
        return cls(backbone.aggregator.patch_embed, config)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The tensors a prompt file holds: ``prompts.*`` and ``head.*``."""
        state = {f"prompts.{k}": v for k, v in self.prompts.state_dict().items()}
        state.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return state

    def frozen_inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt-independent part: ``[B, 3, H, W]`` -> (tokens before block ``prompt_layer``
        ``[B, 1 + R + N, C]``, query ``[B, C]``). Both can be cached when the encoder is frozen."""
        self._grid(images)
        tokens = self.encoder.prepare_tokens((images - self._mean) / self._std)
        start = tokens
        for i, block in enumerate(self.blocks[: self.config.query_layer]):
            if i == self.config.prompt_layer:
                start = tokens
            tokens = block(tokens)
        if self.config.prompt_layer == self.config.query_layer:
            start = tokens
        return start, self.encoder.norm(tokens[:, 0])

    def prompted(self, start: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Insert the selected prompt and run the remaining blocks: (``[B, 1 + R + N, C]``, ``[B, C]``)
        -> (patch features ``[B, N, C]``, class token ``[B, C]``, selected prompt ``[B]``), normalised."""
        prompt, idx = self.prompts(query)
        s = self.num_special
        tokens = torch.cat((start[:, :s], prompt.to(start.dtype), start[:, s:]), dim=1)
        for block in self.blocks[self.config.prompt_layer :]:
            tokens = block(tokens)
        normed = self.encoder.norm(tokens)
        return normed[:, s + self.config.prompt_length :], normed[:, 0], idx

    def encode(self, images: torch.Tensor, keep: float = 1.0) -> EncodedTokens:
        if validate_keep(keep) < 1.0:
            raise InputError("the prompt-tuned extractor does not prune tokens: use keep=1.0")
        grid_hw = self._grid(images)
        tokens, cls, _ = self.prompted(*self.frozen_inputs(images))
        return EncodedTokens(tokens, cls, None, None, grid_hw)

    def forward(self, images: torch.Tensor, keep: float = 1.0) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> ``[B, out_dim]`` L2-normalised descriptors (``keep`` must be 1)."""
        enc = self.encode(images, keep)
        return self.head(enc.tokens, enc.cls, enc.grid_hw)

    def fit(self, images: torch.Tensor, batch_size: int = 16) -> "PromptExtractor":
        return self


# ---------------------------------------------------------------------------------------------
# Files


def read_prompt_metadata(path: str | Path) -> dict[str, str]:
    """Metadata of a prompt file; :class:`CheckpointError` if it is not one."""
    from pacegeo.hub import read_metadata

    meta = read_metadata(path)
    if meta.get("format") != PROMPT_FORMAT:
        raise CheckpointError(f"{path} is not a pacegeo prompt-tuned VPR file (format {meta.get('format')!r}, "
                              f"expected {PROMPT_FORMAT!r})")
    return meta


def save_prompt(extractor: PromptExtractor, path: str | Path, backbone: str, backbone_fingerprint: str,
                extra: dict[str, str] | None = None) -> Path:
    """Write the prompt pool and head of ``extractor`` (not the encoder) as safetensors, atomically.
    ``backbone``/``backbone_fingerprint``: the frozen backbone they were trained on."""
    if not backbone_fingerprint:
        raise ValueError("save_prompt needs the fingerprint of the backbone the prompts were trained on")
    meta = {
        "format": PROMPT_FORMAT,
        "prompt_config": json.dumps(asdict(extractor.config)),
        "backbone": str(backbone),
        "backbone_fingerprint": backbone_fingerprint,
    }
    meta.update(extra or {})
    return save_tensors(extractor.trainable_state(), path, meta)


def load_prompt(name_or_path: str | Path = "pacegeo-tiny-vpr-prompt", backbone: VGGT | str | Path | None = None,
                device: str | torch.device = "cpu") -> PromptExtractor:
    """A :class:`PromptExtractor` from a prompt file (a path or a bundled name), in eval mode.

    Args:
        backbone: a loaded model, a name/path for :func:`pacegeo.hub.load_backbone`, or None for
            the one recorded in the file. A backbone with another fingerprint is refused.
    """
    from pacegeo.hub import backbone_fingerprint, load_backbone

    path = resolve_vpr(name_or_path)
    meta = read_prompt_metadata(path)
    if not isinstance(backbone, nn.Module):
        backbone = load_backbone(backbone if backbone is not None else meta["backbone"])
    actual = backbone_fingerprint(backbone)
    if actual != meta.get("backbone_fingerprint"):
        raise CheckpointError(f"prompts {path.name} were trained on backbone {meta.get('backbone', '?')} "
                              f"(fingerprint {meta.get('backbone_fingerprint')}), not on this one ({actual}); "
                              "retrain them on this backbone (train/vpr_prompt.py)")
    try:
        config = PromptConfig(**json.loads(meta["prompt_config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"bad prompt config in {path}: {err}") from None
    extractor = PromptExtractor.from_backbone(backbone, config)
    state = load_file(str(path))
    expected = extractor.trainable_state()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shaped = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or shaped:
        raise CheckpointError(f"{path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                              f"misshapen {shaped[:5]}")
    try:
        extractor.prompts.load_state_dict({k[len("prompts."):]: v for k, v in state.items() if k.startswith("prompts.")},
                                          strict=True)
        extractor.head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")},
                                       strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"weights of {path} do not match its config: {err}") from None
    return extractor.to(device).eval()
