"""Weight resolution: bundled files, local files, a Hugging Face cache, offline failures, strictness."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pacegeo.backbone import VGGT, config_to_dict, tiny
from pacegeo.errors import CheckpointError
from pacegeo.hub import load_backbone, read_metadata, resolve_weights, save_backbone


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return VGGT(tiny()).eval()


def _make_hf_cache(root: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay files out the way huggingface_hub caches a repository snapshot."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    for name, src in files.items():
        (snapshot / name).write_bytes(src.read_bytes())
    return root


def _same_outputs(a, b):
    images = torch.rand(1, 2, 3, 28, 42)
    with torch.inference_mode():
        out_a, out_b = a(images), b(images)
    for key in ("pose_enc", "depth", "world_points"):
        torch.testing.assert_close(out_a[key], out_b[key], atol=0, rtol=0)


def test_saved_checkpoint_carries_its_config_and_reloads_identically(tmp_path, tiny_model):
    path = save_backbone(tiny_model, tmp_path / "m.safetensors", extra={"summary": "test"})
    meta = read_metadata(path)
    assert json.loads(meta["config"])["aggregator"]["embed_dim"] == 64
    assert meta["summary"] == "test"
    assert not list(tmp_path.glob("*.tmp"))
    _same_outputs(tiny_model, load_backbone(path))


def test_bundled_name_resolves_from_the_checkpoints_folder(tmp_path, tiny_model, monkeypatch):
    save_backbone(tiny_model, tmp_path / "my-bundled.safetensors")
    monkeypatch.setenv("PACEGEO_CHECKPOINTS", str(tmp_path))
    assert resolve_weights("my-bundled") == tmp_path / "my-bundled.safetensors"
    _same_outputs(tiny_model, load_backbone("my-bundled"))


def test_hub_repository_resolves_from_a_local_hf_cache(tmp_path, tiny_model):
    weights = save_backbone(tiny_model, tmp_path / "model.safetensors")
    cache = _make_hf_cache(tmp_path / "hf", "someone/tiny-vggt", {"model.safetensors": weights})
    found = resolve_weights("someone/tiny-vggt", cache_dir=cache)
    assert found.name == "model.safetensors" and "snapshots" in str(found)
    _same_outputs(tiny_model, load_backbone("hf://someone/tiny-vggt", cache_dir=cache))


def test_vggt_1b_offline_and_not_cached_says_how_to_get_the_weights(tmp_path):
    with pytest.raises(CheckpointError) as err:
        resolve_weights("vggt-1b", cache_dir=tmp_path / "empty-cache")
    message = str(err.value)
    assert "offline" in message and "huggingface-cli download facebook/VGGT-1B" in message
    assert "\n" not in message


def test_vggt_1b_name_finds_a_cached_official_style_model_pt(tmp_path):
    """A cached model.pt without architecture metadata is read as VGGT-1B: a tiny file fails
    strictly with an error that names the mismatched keys (proving the 1B path ran)."""
    pt = tmp_path / "model.pt"
    torch.save({"aggregator.camera_token": torch.zeros(1, 2, 1, 64)}, pt)
    cache = _make_hf_cache(tmp_path / "hf", "facebook/VGGT-1B", {"model.pt": pt})
    assert resolve_weights("vggt-1b", cache_dir=cache).name == "model.pt"
    with pytest.raises(CheckpointError, match=r"missing .*mis-shaped \(aggregator.camera_token"):
        load_backbone("vggt-1b", cache_dir=cache)


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path, tiny_model):
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    state["aggregator.extra.weight"] = torch.zeros(3)
    del state["camera_head.embed_pose.bias"]
    state["aggregator.camera_token"] = torch.zeros(1, 2, 1, 32)
    meta = {"format": "pacegeo-backbone/1", "config": json.dumps({"aggregator": {"embed_dim": 64, "depth": 2, "num_heads": 4, "patch_embed": "conv"}, "camera_head": {"dim_in": 128, "trunk_depth": 1, "num_heads": 4}, "depth_head": None, "point_head": None})}
    path = tmp_path / "wrong.safetensors"
    save_file(state, str(path), metadata=meta)
    with pytest.raises(CheckpointError) as err:
        load_backbone(path)
    message = str(err.value)
    assert "unexpected (aggregator.extra.weight" in message or "aggregator.extra.weight" in message
    assert "camera_head.embed_pose.bias" in message
    assert "aggregator.camera_token (1, 2, 1, 32) vs (1, 2, 1, 64)" in message


def test_unreadable_and_unknown_models_are_clear_errors(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_backbone(bad)
    with pytest.raises(CheckpointError, match="neither a file nor a known model"):
        resolve_weights("no-such-model")


def test_pt_checkpoints_nested_under_model_key_load(tmp_path, tiny_model):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in tiny_model.state_dict().items()}, "step": 3}, path)
    (tmp_path / "config.json").write_text(json.dumps(config_to_dict(tiny_model.config)))
    _same_outputs(tiny_model, load_backbone(path))
