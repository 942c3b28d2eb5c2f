"""The backbone reproduces the official implementation on the shared reference fixtures."""

import json

import pytest
import torch
from safetensors.torch import load_file

from pacegeo.backbone import VGGT, DinoConfig, DinoViT, build_from_upstream_config, vggt_1b
from pacegeo.backbone.config import from_upstream_config
from pacegeo.hub import load_backbone_state_dict

TOL = dict(atol=1e-4, rtol=1e-4)
OUTPUT_KEYS = ["pose_enc", "depth", "depth_conf", "world_points", "world_points_conf", "images"]


def _state_dict(tensors):
    return {k[len("state_dict.") :]: v for k, v in tensors.items() if k.startswith("state_dict.")}


@pytest.fixture(scope="module")
def vggt_fixture(shared_dir):
    ref = shared_dir / "reference"
    tensors = load_file(str(ref / "vggt_tiny_reference.safetensors"))
    config = json.loads((ref / "vggt_tiny_reference.json").read_text())
    return tensors, config


@pytest.fixture(scope="module")
def tiny_reference_outputs(vggt_fixture):
    tensors, config = vggt_fixture
    model = build_from_upstream_config(config).eval()
    model.load_state_dict(_state_dict(tensors), strict=True)
    with torch.inference_mode():
        tokens, start = model.aggregator(tensors["input.images"])
        out = model(tensors["input.images"])
    return tensors, tokens, start, out


def test_tiny_vggt_loads_strictly_and_matches_every_output(tiny_reference_outputs):
    tensors, _, _, out = tiny_reference_outputs
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(out[key], tensors[f"output.{key}"], **TOL)
    assert len(out["pose_enc_list"]) == 4
    for i, pose in enumerate(out["pose_enc_list"]):
        torch.testing.assert_close(pose, tensors[f"output.pose_enc_list.{i}"], **TOL)


def test_tiny_vggt_aggregator_matches_every_intermediate_layer(tiny_reference_outputs):
    tensors, tokens, start, _ = tiny_reference_outputs
    assert start == 5
    assert len(tokens) == 6
    for i, layer in enumerate(tokens):
        torch.testing.assert_close(layer, tensors[f"intermediate.aggregated_tokens.{i}"], **TOL)


def test_upstream_config_is_read_not_assumed(vggt_fixture):
    _, config = vggt_fixture
    parsed = from_upstream_config(config)
    assert parsed.aggregator.embed_dim == 64 and parsed.aggregator.depth == 6
    assert parsed.depth_head.intermediate_layer_idx == (0, 2, 3, 5)
    assert parsed.camera_head.trunk_depth == 1
    assert parsed.aggregator.resolved_dino() is None  # conv patch embedding


def test_dinov2_with_registers_matches_reference(shared_dir):
    ref = shared_dir / "reference"
    tensors = load_file(str(ref / "dinov2_tiny_reference.safetensors"))
    cfg = json.loads((ref / "dinov2_tiny_reference.json").read_text())["dino_vit"]
    fields = {f for f in DinoConfig.__dataclass_fields__}
    vit = DinoViT(DinoConfig(**{k: v for k, v in cfg.items() if k in fields})).eval()
    vit.load_state_dict(_state_dict(tensors), strict=True)
    with torch.inference_mode():
        out = vit.forward_features(tensors["input.x"])
    for key in ["x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"]:
        torch.testing.assert_close(out[key], tensors[f"output.{key}"], **TOL)


def test_upstream_config_with_dino_patch_embedding_builds_a_vit_aggregator(vggt_fixture, shared_dir):
    _, config = vggt_fixture
    dino = json.loads((shared_dir / "reference" / "dinov2_tiny_reference.json").read_text())["dino_vit"]
    config = dict(config, patch_embed_vit=dino)
    model = build_from_upstream_config(config).eval()
    keys = model.state_dict().keys()
    assert "aggregator.patch_embed.register_tokens" in keys
    assert "aggregator.patch_embed.blocks.1.mlp.fc2.weight" in keys
    with torch.inference_mode():
        out = model(torch.rand(1, 2, 3, 70, 98))
    assert out["depth"].shape == (1, 2, 70, 98, 1)
    assert out["world_points"].shape == (1, 2, 70, 98, 3)


def _manifest(shared_dir):
    rows = {}
    for line in (shared_dir / "reference" / "vggt1b_manifest.tsv").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows[key] = tuple(int(s) for s in shape.split(","))
    return rows


def test_vggt_1b_preset_state_dict_equals_the_official_manifest(shared_dir):
    manifest = _manifest(shared_dir)
    assert len(manifest) == 1797
    with torch.device("meta"):
        model = VGGT(vggt_1b())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {k: v for k, v in manifest.items() if not k.startswith("track_head.")}
    assert set(ours) == set(official)
    assert ours == official
    assert sum(1 for k in manifest if k.startswith("track_head.")) == 1797 - len(ours)


def test_official_key_set_loads_strictly_skipping_only_the_track_head(shared_dir, caplog):
    """A state dict with exactly the official keys (track head included) loads into the preset."""
    manifest = _manifest(shared_dir)
    with torch.device("meta"):
        model = VGGT(vggt_1b())
    state = {k: torch.empty(shape, device="meta") for k, shape in manifest.items()}
    caplog.set_level("INFO")
    load_backbone_state_dict(model, state, source="official")
    assert "track_head" in caplog.text and "skipping 394" in caplog.text
