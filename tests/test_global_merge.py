"""Token merging inside global attention (pacegeo.pruning.global_merge): off equals the baseline,
the destination set is what the method says, and merged attention equals the attention of an
explicitly shortened sequence."""

import pytest
import torch
import torch.nn.functional as F

from pacegeo.backbone import VGGT, tiny
from pacegeo.pruning.global_merge import GlobalMergeConfig, _destinations, _merge, _unmerge, global_merging, plan_merge


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VGGT(tiny(embed_dim=32, depth=2, num_heads=2, with_point_head=False)).eval()


def _images(frames=3, seed=0):
    return torch.rand(1, frames, 3, 56, 70, generator=torch.Generator().manual_seed(seed))


def test_ratio_zero_is_the_unmodified_model(model):
    images = _images()
    with torch.no_grad():
        base = model(images)
        with global_merging(model.aggregator, GlobalMergeConfig(ratio=0.0), frames=3):
            same = model(images)
    assert torch.equal(base["depth"], same["depth"]) and torch.equal(base["pose_enc"], same["pose_enc"])


def test_merging_changes_the_output_and_the_blocks_come_back(model):
    images = _images()
    attns = [block.attn for block in model.aggregator.global_blocks]
    with torch.no_grad():
        base = model.aggregator(images)[0][-1]
        with global_merging(model.aggregator, GlobalMergeConfig(ratio=0.9), frames=3, grid_w=5):
            merged = model.aggregator(images)[0][-1]
    assert [block.attn for block in model.aggregator.global_blocks] == attns
    global_half = slice(base.shape[-1] // 2, None)
    change = (merged[..., global_half] - base[..., global_half]).abs().max() / base[..., global_half].abs().max()
    assert change > 1e-4 and torch.isfinite(merged).all()  # small: the random blocks' LayerScale is tiny


def test_destinations_are_frame_zero_specials_one_per_cell_and_protected():
    frames, special, h, w = 3, 5, 4, 6
    per_frame = special + h * w
    cfg = GlobalMergeConfig(ratio=0.9, protect=0.0, cell=2)
    dst = _destinations(frames, per_frame, special, w, cfg, "cpu").view(frames, per_frame)
    assert dst[0].all() and dst[:, :special].all()
    for f in (1, 2):
        grid = dst[f, special:].view(h, w)
        cells = grid.view(h // 2, 2, w // 2, 2).permute(0, 2, 1, 3).reshape(-1, 4)
        assert (cells.sum(dim=1) == 1).all()  # exactly one destination per 2x2 cell
    protected = _destinations(frames, per_frame, special, w, GlobalMergeConfig(protect=0.1), "cpu")
    assert protected.sum() >= dst.sum() and protected[:: (frames * per_frame) // int(0.1 * frames * per_frame)].all()


def test_merged_attention_equals_attention_over_the_shortened_sequence():
    torch.manual_seed(1)
    b, heads, n, d = 1, 2, 3 * 29, 8
    x = torch.randn(b, n, 16)
    cfg = GlobalMergeConfig(ratio=0.5, protect=0.0)
    plan = plan_merge(x, frames=3, special=5, grid_w=6, config=cfg)
    assert plan.src.shape[1] == round(0.5 * (plan.src.shape[1] + plan.rest.shape[1]))
    q, k, v = (torch.randn(b, heads, n, d) for _ in range(3))
    out = _unmerge(F.scaled_dot_product_attention(_merge(q, plan), _merge(k, plan), _merge(v, plan)), plan, n)
    # independent reference: group members explicitly, average them, attend, copy back
    groups = {int(t): [int(t)] for t in plan.dst}
    for s, into in zip(plan.src[0].tolist(), plan.into[0].tolist()):
        groups[int(plan.dst[into])].append(s)
    for r in plan.rest[0].tolist():
        groups[r] = [r]
    heads_of = list(groups)
    mean = lambda t: torch.stack([t[:, :, groups[g]].mean(dim=2) for g in heads_of], dim=2)  # noqa: E731
    short = F.scaled_dot_product_attention(mean(q), mean(k), mean(v))
    expected = torch.empty_like(q)
    for i, g in enumerate(heads_of):
        for member in groups[g]:
            expected[:, :, member] = short[:, :, i]
    assert torch.allclose(out, expected, atol=1e-5)


def test_padding_slots_are_never_merged():
    torch.manual_seed(2)
    x = torch.randn(1, 2 * 13, 8)
    blocked = torch.zeros(1, 26, dtype=torch.bool)
    blocked[0, 20:] = True
    plan = plan_merge(x, frames=2, special=5, grid_w=None, config=GlobalMergeConfig(ratio=0.9, protect=0.0), blocked=blocked)
    assert not set(plan.src[0].tolist()) & set(range(20, 26))
    assert not set(plan.dst[plan.into[0]].tolist()) & set(range(20, 26))


def test_pipeline_option_off_is_the_baseline_and_bad_values_are_refused(tmp_path):
    import numpy as np

    from pacegeo import Pipeline
    from pacegeo.errors import InputError
    from pacegeo.hub import save_backbone

    torch.manual_seed(0)
    path = save_backbone(VGGT(tiny(embed_dim=32, depth=2, num_heads=2)).eval(), tmp_path / "m.safetensors")
    frames = [np.random.default_rng(i).integers(0, 255, (56, 70, 3), dtype=np.uint8) for i in range(3)]
    plain = Pipeline.from_pretrained(str(path), pruner="none", device="cpu", dtype="float32", target_size=70)
    off = Pipeline.from_pretrained(str(path), pruner="none", device="cpu", dtype="float32", target_size=70, global_merge=0.0)
    on = Pipeline.from_pretrained(str(path), pruner="none", device="cpu", dtype="float32", target_size=70, global_merge=0.9)
    a, b, c = (p.reconstruct(frames, keep=1.0) for p in (plain, off, on))
    assert off.global_merge is None and on.global_merge == GlobalMergeConfig(ratio=0.9)
    assert np.array_equal(a.depth, b.depth) and not np.array_equal(a.depth, c.depth)
    pruned = Pipeline.from_pretrained(str(path), pruner="training-free", device="cpu", dtype="float32", target_size=70,
                                      global_merge=0.5)
    assert np.isfinite(pruned.reconstruct(frames, keep=0.5).depth).all()  # combined with pre-AA pruning
    with pytest.raises(InputError, match="global_merge must be a number in"):
        Pipeline.from_pretrained(str(path), pruner="none", device="cpu", global_merge=1.5)
