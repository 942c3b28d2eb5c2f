"""Typed, frozen configurations of the VGGT-style backbone.

Every module of :mod:`pacegeo.backbone` is built from one of these dataclasses. They serialise to
plain JSON (:func:`config_to_dict` / :func:`config_from_dict`), which is how checkpoints carry their
architecture, and :func:`from_upstream_config` reads the constructor-argument format of the official
VGGT code (the format of ``vggt_tiny_reference.json``).
"""

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from pacegeo.errors import CheckpointError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DinoConfig:
    """A DINOv2 ViT with register tokens, used as the patch embedding."""

    img_size: int = 518  # size of the stored positional-embedding grid, in pixels (square)
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    interpolate_antialias: bool = True  # antialias when resizing the positional embedding
    interpolate_offset: float = 0.0  # 0: resize to the explicit grid size; >0: DINOv2 scale-factor path
    block_chunks: int = 0  # >0 stores blocks as `blocks.<chunk>.<i>` (DINOv2 BlockChunk layout)
    init_values: float | None = 1.0  # LayerScale init; None/0 means no LayerScale
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    ffn_layer: str = "mlp"  # "mlp" or "swiglu"/"swiglufused"
    norm_eps: float = 1e-6


#: Named DINOv2 variants: (embed_dim, depth, num_heads, ffn_layer).
DINO_VARIANTS: dict[str, tuple[int, int, int, str]] = {
    "dinov2_vits14_reg": (384, 12, 6, "mlp"),
    "dinov2_vitb14_reg": (768, 12, 12, "mlp"),
    "dinov2_vitl14_reg": (1024, 24, 16, "mlp"),
    "dinov2_vitg2_reg": (1536, 40, 24, "swiglufused"),
}


@dataclass(frozen=True)
class AggregatorConfig:
    """The alternating frame/global attention stack and its patch embedding."""

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24  # number of frame blocks (= number of global blocks)
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    patch_embed: str = "dinov2_vitl14_reg"  # "conv" or a DINOv2 variant name
    dino: DinoConfig | None = None  # explicit ViT; overrides the variant named by `patch_embed`
    aa_order: tuple[str, ...] = ("frame", "global")
    aa_block_size: int = 1
    qk_norm: bool = True
    rope_freq: float = 100.0  # <= 0 disables RoPE
    init_values: float | None = 0.01

    @property
    def patch_start_idx(self) -> int:
        """Index of the first patch token: 1 camera token + the register tokens."""
        return 1 + self.num_register_tokens

    def resolved_dino(self) -> DinoConfig | None:
        """The DINO ViT to build, or None for the convolutional patch embedding."""
        if self.dino is not None:
            return self.dino
        if "conv" in self.patch_embed:
            return None
        if self.patch_embed not in DINO_VARIANTS:
            raise CheckpointError(
                f"unknown patch embedding {self.patch_embed!r}; expected 'conv' or one of {sorted(DINO_VARIANTS)}"
            )
        dim, depth, heads, ffn = DINO_VARIANTS[self.patch_embed]
        return DinoConfig(
            img_size=self.img_size,
            patch_size=self.patch_size,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            ffn_layer=ffn,
            num_register_tokens=self.num_register_tokens,
        )


@dataclass(frozen=True)
class CameraHeadConfig:
    """Camera head: iterative refinement of the 9-d pose encoding from the camera tokens."""

    dim_in: int = 2048
    trunk_depth: int = 4
    pose_encoding_type: str = "absT_quaR_FoV"
    num_heads: int = 16
    mlp_ratio: float = 4.0
    init_values: float | None = 0.01
    trans_act: str = "linear"
    quat_act: str = "linear"
    fl_act: str = "relu"
    num_iterations: int = 4


@dataclass(frozen=True)
class DPTHeadConfig:
    """Dense prediction (DPT) head over four intermediate aggregator layers."""

    dim_in: int = 2048
    patch_size: int = 14
    output_dim: int = 4
    activation: str = "inv_log"
    conf_activation: str = "expp1"
    features: int = 256
    out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    intermediate_layer_idx: tuple[int, int, int, int] = (4, 11, 17, 23)
    pos_embed: bool = True
    feature_only: bool = False
    down_ratio: int = 1
    frames_chunk_size: int = 8  # frames per chunk; bounds memory only


@dataclass(frozen=True)
class VGGTConfig:
    """A whole VGGT-style model. A head set to None is not built (and has no weights)."""

    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    camera_head: CameraHeadConfig | None = field(default_factory=CameraHeadConfig)
    depth_head: DPTHeadConfig | None = field(
        default_factory=lambda: DPTHeadConfig(output_dim=2, activation="exp")
    )
    point_head: DPTHeadConfig | None = field(default_factory=DPTHeadConfig)
    # The official checkpoint carries a track head. pacegeo does not build it; this flag records
    # whether checkpoints of this architecture hold `track_head.*` keys, which loading then skips.
    track_head_in_checkpoint: bool = False
    name: str = "vggt"

    @property
    def embed_dim(self) -> int:
        return self.aggregator.embed_dim

    def head_layers(self) -> set[int]:
        """Aggregator output entries that some head reads (the camera head reads the last)."""
        layers = set()
        if self.camera_head is not None:
            layers.add(self.aggregator.depth - 1)
        for head in (self.depth_head, self.point_head):
            if head is not None:
                layers.update(head.intermediate_layer_idx)
        return layers


# ---------------------------------------------------------------------------------------------
# Presets


def vggt_1b() -> VGGTConfig:
    """The architecture of the official ``facebook/VGGT-1B`` checkpoint."""
    return VGGTConfig(track_head_in_checkpoint=True, name="vggt-1b")


def tiny(
    embed_dim: int = 64,
    depth: int = 2,
    num_heads: int = 4,
    dino_depth: int | None = None,
    dpt_features: int = 16,
    with_point_head: bool = True,
    name: str = "tiny",
) -> VGGTConfig:
    """A small random-weight model for tests and experiments.

    ``dino_depth=None`` uses the convolutional patch embedding; an integer builds a DINOv2-style
    ViT of that depth at the same width.
    """
    taps = tuple(sorted({max(0, round(i * (depth - 1) / 3)) for i in range(4)}))
    while len(taps) < 4:  # shallow stacks repeat the last layer
        taps = taps + (depth - 1,)
    dino = None
    if dino_depth is not None:
        dino = DinoConfig(embed_dim=embed_dim, depth=dino_depth, num_heads=num_heads)
    agg = AggregatorConfig(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        patch_embed="conv" if dino is None else "dino",
        dino=dino,
    )
    oc = (dpt_features, 2 * dpt_features, 2 * dpt_features, 2 * dpt_features)
    dpt = dict(dim_in=2 * embed_dim, features=dpt_features, out_channels=oc, intermediate_layer_idx=taps)
    return VGGTConfig(
        aggregator=agg,
        camera_head=CameraHeadConfig(dim_in=2 * embed_dim, trunk_depth=1, num_heads=num_heads),
        depth_head=DPTHeadConfig(output_dim=2, activation="exp", **dpt),
        point_head=DPTHeadConfig(**dpt) if with_point_head else None,
        name=name,
    )


def pacegeo_tiny() -> VGGTConfig:
    """The bundled small model: a 2-block DINO-style encoder and 6 frame/global block pairs at width
    192 (about 11.7M parameters, 23 MB in float16), trained on SynthRooms at low resolution."""
    dim, heads = 192, 4
    dpt = dict(dim_in=2 * dim, features=64, out_channels=(48, 96, 192, 192), intermediate_layer_idx=(1, 3, 4, 5))
    return VGGTConfig(
        aggregator=AggregatorConfig(
            img_size=224,
            init_values=0.1,  # trained from scratch: a larger LayerScale than VGGT-1B's 0.01
            embed_dim=dim,
            depth=6,
            num_heads=heads,
            patch_embed="dino",
            dino=DinoConfig(img_size=224, embed_dim=dim, depth=2, num_heads=heads),
        ),
        camera_head=CameraHeadConfig(dim_in=2 * dim, trunk_depth=1, num_heads=heads, init_values=0.1),
        depth_head=DPTHeadConfig(output_dim=2, activation="exp", **dpt),
        point_head=DPTHeadConfig(**dpt),
        name="pacegeo-tiny",
    )


PRESETS = {"vggt_1b": vggt_1b, "tiny": tiny, "pacegeo_tiny": pacegeo_tiny}


# ---------------------------------------------------------------------------------------------
# (De)serialisation


def config_to_dict(config: VGGTConfig) -> dict[str, Any]:
    """A JSON-compatible dict of ``config`` (tuples become lists)."""
    return dataclasses.asdict(config)


def _build(cls, data: dict[str, Any] | None, where: str):
    if data is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"unknown {where} config keys: {', '.join(unknown)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> VGGTConfig:
    """Inverse of :func:`config_to_dict`; unknown keys are an error naming them."""
    agg = dict(data.get("aggregator") or {})
    agg["dino"] = _build(DinoConfig, agg.get("dino"), "dino")
    return VGGTConfig(
        aggregator=_build(AggregatorConfig, agg, "aggregator"),
        camera_head=_build(CameraHeadConfig, data.get("camera_head"), "camera_head"),
        depth_head=_build(DPTHeadConfig, data.get("depth_head"), "depth_head"),
        point_head=_build(DPTHeadConfig, data.get("point_head"), "point_head"),
        track_head_in_checkpoint=bool(data.get("track_head_in_checkpoint", False)),
        name=str(data.get("name", "vggt")),
    )


# Keys of the official constructors that describe implementation choices we always make
# (attention class, norm layer, dropout rates at 0) and therefore carry no information here.
_DESCRIPTIVE_KEYS = {"block_fn", "norm_layer", "act_layer", "drop_path_rate", "drop_path_uniform", "qk_norm"}


def _upstream_section(cls, data: dict[str, Any], where: str, rename: dict[str, str] | None = None):
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        key = (rename or {}).get(key, key)
        if key in names:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        elif key in _DESCRIPTIVE_KEYS:
            if key == "drop_path_rate" and value not in (0, 0.0, None):
                logger.warning("%s: drop_path_rate=%s ignored (inference only)", where, value)
            if key == "qk_norm" and value:
                raise CheckpointError(f"{where}: qk_norm in the DINO patch embedding is not supported")
        else:
            logger.warning("%s: ignoring unknown upstream argument %r", where, key)
    return cls(**kwargs)


def from_upstream_config(config: dict[str, Any]) -> VGGTConfig:
    """Translate the official constructor arguments into a :class:`VGGTConfig`.

    ``config`` has the keys ``aggregator``, ``patch_embed_vit`` (None, or the keyword arguments of a
    DINOv2 ``DinoVisionTransformer`` that replaces the aggregator's patch embedding),
    ``camera_head``, ``depth_head``, ``point_head`` and ``track_head`` (each None when absent).
    """
    agg_data = dict(config.get("aggregator") or {})
    dino = None
    vit = config.get("patch_embed_vit")
    if vit:
        vit = dict(vit)
        eps = 1e-6
        if isinstance(vit.get("norm_layer"), str) and "1e-5" in vit["norm_layer"]:
            eps = 1e-5
        dino = _upstream_section(DinoConfig, vit, "patch_embed_vit")
        dino = dataclasses.replace(dino, norm_eps=eps)
    aggregator = _upstream_section(AggregatorConfig, agg_data, "aggregator")
    if dino is not None:
        aggregator = dataclasses.replace(aggregator, dino=dino)
    resolved = aggregator.resolved_dino()
    if resolved is not None and resolved.embed_dim != aggregator.embed_dim:
        raise CheckpointError(
            f"patch embedding width {resolved.embed_dim} differs from the aggregator width {aggregator.embed_dim}"
        )

    def head(cls, key):
        data = config.get(key)
        return None if data is None else _upstream_section(cls, dict(data), key)

    return VGGTConfig(
        aggregator=aggregator,
        camera_head=head(CameraHeadConfig, "camera_head"),
        depth_head=head(DPTHeadConfig, "depth_head"),
        point_head=head(DPTHeadConfig, "point_head"),
        track_head_in_checkpoint=config.get("track_head") is not None,
        name=str(config.get("name", "vggt-upstream")),
    )
