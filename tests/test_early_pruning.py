"""Pruning inside the encoder (pacegeo.pruning.early): the last layer is ordinary pre-AA pruning,
kept tokens get exactly the features of an encoder run on them alone from the chosen layer on."""

import pytest
import torch
from einops import rearrange

from pacegeo.backbone import VGGT, tiny
from pacegeo.pace import PaceVGGT
from pacegeo.pruning.early import encoder_blocks, prune_inside_encoder
from pacegeo.pruning.merge import topk_mask


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VGGT(tiny(embed_dim=32, depth=2, num_heads=2, dino_depth=4, with_point_head=False)).eval()


def _images(frames=3):
    return torch.rand(1, frames, 3, 56, 70, generator=torch.Generator().manual_seed(1))


def test_last_layer_is_ordinary_pre_aa_pruning(model):
    pace = PaceVGGT(model, mode="training-free", keep=0.5, amp_dtype=None)
    images = _images()
    with torch.no_grad():
        plain = pace(images)
        pace.encoder_layer = len(encoder_blocks(model.aggregator.patch_embed))
        same = pace(images)
        pace.encoder_layer = None
    assert torch.allclose(plain["depth"], same["depth"], atol=1e-5)
    assert torch.equal(torch.tensor(plain["pruning"]["kept_per_frame"]), torch.tensor(same["pruning"]["kept_per_frame"]))


def test_kept_tokens_get_the_encoder_run_on_them_alone(model):
    agg = model.aggregator
    encoder = agg.patch_embed
    blocks = encoder_blocks(encoder)
    images = _images()
    counts = [10, 8, 8]
    with torch.no_grad():
        feats, scores = prune_inside_encoder(agg, images, 2, counts, lambda mid: mid.norm(dim=-1))
        # independent reference: run the encoder frame by frame, dropping the pruned tokens by hand
        x = rearrange((images - agg._mean) / agg._std, "b s c h w -> (b s) c h w")
        tokens = encoder.prepare_tokens(x)
        for block in blocks[:2]:
            tokens = block(tokens)
        front = 1 + encoder.num_register_tokens
        middle = encoder.norm(tokens)[:, front:]
        kept = topk_mask(middle.norm(dim=-1)[None], counts)[0]
        for f in range(3):
            idx = torch.nonzero(kept[f]).flatten()
            part = torch.cat((tokens[f : f + 1, :front], tokens[f : f + 1, front:][:, idx]), dim=1)
            for block in blocks[2:]:
                part = block(part)
            expected = encoder.norm(part)[0, front:]
            assert torch.allclose(feats[0, f, idx], expected, atol=1e-5)
            dropped = torch.nonzero(~kept[f]).flatten()
            assert torch.allclose(feats[0, f, dropped], middle[f, dropped], atol=1e-6)  # layer-2 features
    assert torch.equal(scores[0], middle.norm(dim=-1))


def test_bad_layers_are_refused(model):
    from pacegeo.errors import InputError

    with pytest.raises(InputError, match="between 1 and 4"):
        prune_inside_encoder(model.aggregator, _images(), 0, [5, 5, 5], lambda mid: mid.norm(dim=-1))


def test_pipeline_option_prunes_inside_the_encoder(tmp_path, model):
    import json

    from helpers import write_frames
    from pacegeo.hub import save_backbone
    from pacegeo.pipeline import Pipeline

    path = save_backbone(model, tmp_path / "dino.safetensors", extra={"preprocess": json.dumps({"target_size": 70, "mode": "crop"})})
    write_frames(tmp_path / "frames", count=3)
    pipe = Pipeline.from_pretrained(path, pruner="training-free", device="cpu", dtype="float32", encoder_layer=2)
    assert pipe.pruner.encoder_layer == 2
    prepared = pipe.prepare(tmp_path / "frames")
    rec = pipe.reconstruct(prepared, keep=0.5, progress=False)
    direct = PaceVGGT(model, mode="training-free", amp_dtype=None)
    with torch.no_grad():
        direct.encoder_layer = 2
        inside = direct(prepared.images[None], keep=0.5)
        direct.encoder_layer = None
        before = direct(prepared.images[None], keep=0.5)
    depth = torch.as_tensor(rec.depth)
    assert torch.allclose(depth, inside["depth"][0, ..., 0], atol=1e-5)
    assert not torch.allclose(depth, before["depth"][0, ..., 0], atol=1e-4)  # the option changes the run


def test_pipeline_refuses_encoder_layers_it_cannot_use(tmp_path, model, model_path):
    from pacegeo.errors import InputError
    from pacegeo.hub import save_backbone
    from pacegeo.pipeline import Pipeline

    path = save_backbone(model, tmp_path / "dino.safetensors")
    with pytest.raises(InputError, match="from 1 to 4"):
        Pipeline.from_pretrained(path, pruner="training-free", device="cpu", encoder_layer=5)
    with pytest.raises(InputError, match="needs a pruner"):
        Pipeline.from_pretrained(path, pruner="none", device="cpu", encoder_layer=2)
    with pytest.raises(InputError, match="ViT encoder"):
        Pipeline.from_pretrained(model_path, pruner="training-free", device="cpu", encoder_layer=1)
