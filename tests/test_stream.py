"""Streamed restoration and heads (pacegeo.pruning.stream) against the dense path they replace."""

import pytest
import torch

import pacegeo.pace as pace_module
from pacegeo.backbone import VGGT, tiny
from pacegeo.pace import PaceVGGT
from pacegeo.pruning import FeatureGuidedRestoration, ScorerConfig, TokenScorer

pytestmark = pytest.mark.usefixtures("one_thread")

DENSE_KEYS = ("depth", "depth_conf", "world_points", "world_points_conf")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VGGT(tiny(dino_depth=1)).eval()


def _trained_pruner(model, **kwargs):
    """A learned pruner whose residual MLPs and camera correction are not neutral (all paths matter)."""
    torch.manual_seed(3)
    pace = PaceVGGT(model, scorer=TokenScorer(ScorerConfig.for_backbone(model)), mode="learned", amp_dtype="float32", **kwargs)
    pace.restoration = pace.restoration.with_camera_correction()
    with torch.no_grad():
        for p in pace.restoration.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return pace.eval()


def _with_dense_reference(monkeypatch):
    """Wrap streamed_heads so that every call also runs the dense path on the same inputs:
    FeatureGuidedRestoration.forward over all frames at once, then the backbone's predict."""
    refs = []
    streamed = pace_module.streamed_heads

    def spy(backbone, restoration, entries, reduction, feats, grid_hw, image_hw, **kwargs):
        psi = backbone.aggregator.patch_start_idx
        dense = FeatureGuidedRestoration.forward(restoration, entries, reduction, feats, grid_hw, psi)
        refs.append(backbone.predict(dense, image_hw, psi))
        return streamed(backbone, restoration, entries, reduction, feats, grid_hw, image_hw, **kwargs)

    monkeypatch.setattr(pace_module, "streamed_heads", spy)
    return refs


def _assert_same(out, ref, atol=1e-5):
    for key in ("pose_enc", *DENSE_KEYS):
        torch.testing.assert_close(out[key], ref[key], atol=atol, rtol=1e-5, msg=key)
    for a, b in zip(out["pose_enc_list"], ref["pose_enc_list"], strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 2, 8])
@pytest.mark.parametrize("keep,merge_ratio,ref_boost", [(0.3, 0.5, 1.0), (0.5, 0.0, 1.0), (0.3, 1.0, 2.0)])
def test_streamed_heads_equal_dense_restoration_then_predict(monkeypatch, model, chunk, keep, merge_ratio, ref_boost):
    images = torch.rand(1, 5, 3, 56, 70, generator=torch.Generator().manual_seed(1))
    pace = _trained_pruner(model, frames_chunk=chunk, heads_chunk=chunk)
    refs = _with_dense_reference(monkeypatch)
    with torch.no_grad():
        out = pace(images, keep=keep, merge_ratio=merge_ratio, ref_boost=ref_boost)
    assert len(refs) == 1
    _assert_same(out, refs[0])


def test_outputs_do_not_depend_on_the_chunk_size(model):
    images = torch.rand(1, 5, 3, 56, 70, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        one = _trained_pruner(model, frames_chunk=1, heads_chunk=1)(images, keep=0.4)
        all_frames = _trained_pruner(model, frames_chunk=5, heads_chunk=5)(images, keep=0.4)
    _assert_same(one, all_frames)
    assert one["pruning"]["kept_per_frame"] == all_frames["pruning"]["kept_per_frame"]
    assert one["pruning"]["merged"] == all_frames["pruning"]["merged"]


def test_restoration_never_holds_more_than_one_chunk_of_dense_entries(monkeypatch, model):
    images = torch.rand(1, 5, 3, 56, 70)
    pace = _trained_pruner(model, heads_chunk=2)
    frames_seen = []
    restore_layer = pace.restoration.restore_layer

    def spy(entry, *args, **kwargs):
        dense = restore_layer(entry, *args, **kwargs)
        frames_seen.append(dense.shape[1])
        return dense

    monkeypatch.setattr(pace.restoration, "restore_layer", spy)
    with torch.no_grad():
        out = pace(images, keep=0.3)
    layers = len(set(model.config.depth_head.intermediate_layer_idx) | {model.config.aggregator.depth - 1})
    assert frames_seen == [2] * layers + [2] * layers + [1] * layers
    assert out["depth"].shape[:2] == (1, 5)


def test_outputs_gathered_on_the_requested_device_are_the_same(model):
    images = torch.rand(1, 3, 3, 56, 70)
    pace = _trained_pruner(model, heads_chunk=2)
    with torch.no_grad():
        here = pace(images, keep=0.3)
        gathered = pace(images, keep=0.3, output_device="cpu")
    _assert_same(gathered, here, atol=0)
    with torch.no_grad():
        full = pace(images, keep=1.0, output_device="cpu")
    assert full["depth"].device.type == "cpu"


def test_streamed_path_passes_gradients_to_the_pruner(model):
    images = torch.rand(1, 3, 3, 56, 70)
    pace = _trained_pruner(model, heads_chunk=2)
    pace.train()
    out = pace(images, keep=0.5, soft=True)
    (out["depth"].mean() + out["world_points"].mean() + out["pose_enc"].mean()).backward()
    scorer_grads = [p.grad for p in pace.scorer.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in scorer_grads)
    camera = pace.restoration.camera.fc2
    assert camera.weight.grad is not None and camera.weight.grad.abs().sum() > 0
    residual = next(iter(pace.restoration.residuals.values())).fc2
    assert residual.weight.grad is not None and residual.weight.grad.abs().sum() > 0
    pace.zero_grad(set_to_none=True)
    pace.eval()


def test_aa_stack_run_in_two_parts_equals_one_run(model):
    agg = model.aggregator
    tokens = torch.randn(1, 3, agg.patch_start_idx + 20, agg.config.embed_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = agg.run_blocks(tokens, None)
        first = agg.run_blocks(tokens, None, stop=1)
        second = agg.run_blocks(first[0][..., agg.config.embed_dim :], None, start=1)
    assert first[1] is None and second[0] is None
    torch.testing.assert_close(first[0], whole[0], atol=0, rtol=0)
    torch.testing.assert_close(second[1], whole[1], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="whole AA blocks"):
        agg.run_blocks(tokens, None, start=2, stop=1)


def test_dense_tail_runs_the_last_blocks_on_the_restored_sequence(monkeypatch, model):
    """Independent reference: restore entry 0 over all frames (FeatureGuidedRestoration.forward),
    run block 1 of the AA stack on its global half at every grid position, predict from that."""
    from einops import repeat

    seen = []
    streamed = pace_module.streamed_heads

    def spy(backbone, restoration, entries, reduction, feats, grid_hw, image_hw, **kwargs):
        seen.append((list(entries), reduction, feats, grid_hw, kwargs["dense_from"]))
        return streamed(backbone, restoration, entries, reduction, feats, grid_hw, image_hw, **kwargs)

    monkeypatch.setattr(pace_module, "streamed_heads", spy)
    images = torch.rand(1, 4, 3, 56, 70, generator=torch.Generator().manual_seed(1))
    pace = _trained_pruner(model)
    pace.dense_tail = 1
    with torch.no_grad():
        out = pace(images, keep=0.3)
        entries, reduction, feats, grid_hw, dense_from = seen[-1]
        agg, psi = model.aggregator, model.aggregator.patch_start_idx
        dense0 = FeatureGuidedRestoration.forward(pace.restoration, [entries[0], None], reduction, feats, grid_hw, psi)[0]
        pos = repeat(agg.patch_positions(*grid_hw), "p two -> b s p two", b=1, s=4)
        last = agg.run_blocks(dense0[..., agg.config.embed_dim :], pos, start=1)[1]
        ref = model.predict([dense0, last], (56, 70), psi)
        plain = pace.__class__.forward(_trained_pruner(model), images, keep=0.3)
    assert dense_from == 1 and entries[1].shape[2] == psi + grid_hw[0] * grid_hw[1]
    torch.testing.assert_close(entries[1], last, atol=1e-5, rtol=1e-5)
    _assert_same(out, ref)
    assert not torch.allclose(out["pose_enc"], plain["pose_enc"])  # the tail changes what the cameras see


def test_dense_tail_is_checked():
    from pacegeo.errors import InputError
    from pacegeo.pace import check_dense_tail

    model = VGGT(tiny(depth=2))
    assert check_dense_tail(model, 0) == 0 and check_dense_tail(model, 1) == 1
    for bad in (2, -1, True, 0.5):
        with pytest.raises(InputError, match="dense tail"):
            check_dense_tail(model, bad)


def test_default_heads_chunk_holds_two_frames_of_518x392_more_of_smaller_ones_and_an_eighth_of_the_frames():
    from pacegeo.pruning.stream import heads_chunk_for

    assert heads_chunk_for((392, 518), 1000) == 2 and heads_chunk_for((392, 518), 1000, dpt_chunk=8) == 2
    assert heads_chunk_for((1036, 784), 1000) == 1
    assert heads_chunk_for((112, 154), 1000) == 23  # 2 * 518 * 392 // (112 * 154)
    assert heads_chunk_for((112, 154), 1000, dpt_chunk=8) == 16  # a whole number of the DPT heads' chunks
    assert heads_chunk_for((112, 154), 32, dpt_chunk=8) == 4  # an eighth of the frames
    assert heads_chunk_for((112, 154), 8, dpt_chunk=8) == 2  # but at least two


def test_default_heads_chunk_gives_the_outputs_of_one_frame_at_a_time(model, monkeypatch):
    """The default chunking (chunks of two of the 6 frames of 56x70) against chunks of one frame."""
    import pacegeo.pruning.stream as stream

    chunks = []
    real = stream.heads_chunk_for
    monkeypatch.setattr(stream, "heads_chunk_for", lambda *a, **k: chunks.append(real(*a, **k)) or chunks[-1])
    images = torch.rand(1, 6, 3, 56, 70, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        auto = _trained_pruner(model)(images, keep=0.4)
        one = _trained_pruner(model, heads_chunk=1)(images, keep=0.4)
    assert chunks == [2]  # the default was used
    for key in DENSE_KEYS:
        torch.testing.assert_close(auto[key], one[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("min_pixels, trims", [(2 * 56 * 70, 3), (2 * 56 * 70 + 1, 0)])
def test_freed_heap_is_handed_back_after_chunks_of_at_least_trim_min_pixels(model, monkeypatch, min_pixels, trims):
    import pacegeo.pruning.stream as stream

    calls = []
    monkeypatch.setattr(stream, "TRIM_MIN_PIXELS", min_pixels)
    monkeypatch.setattr(stream, "release_host_memory", lambda: calls.append(1))
    with torch.no_grad():
        _trained_pruner(model, heads_chunk=2)(torch.rand(1, 6, 3, 56, 70), keep=0.4)
    assert len(calls) == trims
