"""Token pruning before the AA stack: budgets, merging, restoration and the PaceVGGT wrapper."""

import math

import pytest
import torch

from pacegeo.backbone import VGGT, tiny, vggt_1b
from pacegeo.errors import InputError
from pacegeo.pace import MODES, PaceVGGT
from pacegeo.pruning.checkpoint import load_pruner, save_pruner
from pacegeo.pruning import (
    FeatureGuidedRestoration,
    RestorationConfig,
    ScorerConfig,
    TokenScorer,
    distinctiveness_scores,
    dither_rank,
    frame_keep_counts,
    gather_tokens,
    grid_scores,
    importance_mass,
    keep_count,
    random_scores,
    reduce_tokens,
    scatter_to_grid,
    split_merge_budget,
    straight_through_mask,
    topk_mask,
    total_merge_budget,
    unmerge,
)
from pacegeo.pruning.flops import forward_flops, scorer_flops

KEEPS = (0.7, 0.5, 0.3, 0.2)
OUTPUT_KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf", "images")


def _frozen(config):
    torch.manual_seed(0)
    return VGGT(config).eval()


@pytest.fixture(scope="module")
def conv_model():
    return _frozen(tiny())


@pytest.fixture(scope="module")
def dino_model():
    return _frozen(tiny(dino_depth=1))


@pytest.fixture(scope="module", params=["conv", "dino"])
def case(request, conv_model, dino_model):
    """(model, images): conv patch embedding at 28x42 px, S=2; DINO embedding at 56x70 px, S=3."""
    gen = torch.Generator().manual_seed(1)
    if request.param == "conv":
        return conv_model, torch.rand(1, 2, 3, 28, 42, generator=gen)
    return dino_model, torch.rand(1, 3, 3, 56, 70, generator=gen)


def _pace(model, mode, **kwargs):
    """A pruner in float32 (these tests compare numbers with the float32 backbone)."""
    kwargs.setdefault("amp_dtype", "float32")
    scorer = None
    if mode == "learned":
        torch.manual_seed(2)
        scorer = TokenScorer(ScorerConfig.for_backbone(model))
    return PaceVGGT(model, scorer=scorer, mode=mode, **kwargs)


def _feats(b=2, s=3, n=20, c=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, s, n, c, generator=gen), torch.randn(b, s, n, generator=gen)


# -- keep = 1 is the backbone ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_keep_one_equals_backbone(case, mode):
    model, images = case
    pace = _pace(model, mode)
    with torch.no_grad():
        ref = model(images)
        for timings in (False, True):  # plain call and the stage-timed decomposition
            out = pace(images, keep=1.0, timings=timings)
            for key in OUTPUT_KEYS:
                torch.testing.assert_close(out[key], ref[key], atol=1e-6, rtol=0)
            for a, b in zip(out["pose_enc_list"], ref["pose_enc_list"]):
                torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    stats = out["pruning"]
    n = stats["patch_tokens_per_frame"]
    assert stats["kept_per_frame"] == [n] * images.shape[1]
    assert stats["aa_tokens"] == stats["dense_aa_tokens"]
    assert set(stats["timings"]) == {"embed", "scorer", "select", "aa", "restoration", "heads"}


# -- outputs keep the backbone's conventions ------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_pruned_outputs_match_backbone_keys_shapes_and_conventions(case, mode):
    model, images = case
    pace = _pace(model, mode)
    with torch.no_grad():
        ref = model(images)
        for keep in KEEPS:
            out = pace(images, keep=keep)
            assert set(out) == set(ref) | {"pruning"}
            for key in OUTPUT_KEYS:
                assert out[key].shape == ref[key].shape and out[key].dtype == ref[key].dtype, key
                assert torch.isfinite(out[key]).all(), key
            assert out["images"] is images
            assert len(out["pose_enc_list"]) == len(ref["pose_enc_list"])
            assert (out["depth"] > 0).all() and (out["depth_conf"] >= 1).all()  # exp / expp1
            assert (out["world_points_conf"] >= 1).all()
            stats = out["pruning"]
            s, n, psi = images.shape[1], stats["patch_tokens_per_frame"], stats["special_tokens_per_frame"]
            k = keep_count(keep, n)
            assert stats["kept_per_frame"] == [k] * s
            assert stats["aa_tokens"] == s * (psi + k)
            merged, dropped = torch.tensor(stats["merged"]), torch.tensor(stats["dropped"])
            assert torch.equal(merged + dropped, torch.full_like(merged, n - k))


def test_four_dim_input_and_default_keep(conv_model):
    images = torch.rand(2, 3, 28, 42)
    with torch.no_grad():
        out = PaceVGGT(conv_model, mode="grid", keep=0.5)(images)
    assert out["depth"].shape == (1, 2, 28, 42, 1)
    assert out["pruning"]["keep"] == 0.5


# -- budgets --------------------------------------------------------------------------------------


def test_keep_count_is_ceil_and_clamped():
    assert keep_count(0.3, 10) == 3  # 0.3 * 10 is 3.0000000000000004 in floating point
    assert keep_count(0.25, 10) == 3
    assert keep_count(0.01, 10) == 1
    assert keep_count(1.0, 10) == 10
    assert keep_count(0.999, 1369) == 1368
    assert frame_keep_counts(0.3, 20, 3) == [6, 6, 6]
    assert frame_keep_counts(0.3, 20, 3, ref_boost=2.0) == [12, 6, 6]
    assert frame_keep_counts(0.6, 20, 2, ref_boost=3.0) == [20, 12]


@pytest.mark.parametrize("keep", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), "0.5", None, True])
def test_invalid_keep_raises_input_error(keep, conv_model):
    with pytest.raises(InputError):
        keep_count(keep, 10)
    with pytest.raises(InputError):
        PaceVGGT(conv_model, mode="grid", keep=keep)
    if keep is not None:  # forward(keep=None) means the constructor's keep
        with pytest.raises(InputError):
            PaceVGGT(conv_model, mode="grid")(torch.rand(1, 2, 3, 28, 42), keep=keep)


def test_invalid_mode_merge_ratio_and_missing_scorer(conv_model):
    with pytest.raises(InputError):
        PaceVGGT(conv_model, mode="nope")
    with pytest.raises(InputError):
        PaceVGGT(conv_model, mode="learned")
    with pytest.raises(InputError):
        PaceVGGT(conv_model, mode="grid", merge_ratio=1.5)
    with pytest.raises(InputError):
        PaceVGGT(conv_model, mode="grid", ref_boost=0.5)


def test_merge_budget_split_sums_exactly_and_follows_importance():
    mass = torch.tensor([[1.0, 1.0, 1.0], [6.0, 3.0, 1.0], [0.0, 0.0, 0.0]])
    capacity = torch.tensor([10, 10, 10])
    alloc = split_merge_budget(mass, 10, capacity)
    assert alloc.tolist() == [[4, 3, 3], [6, 3, 1], [4, 3, 3]]
    # capped frames give their surplus to the others; the sum is min(total, capacity)
    alloc = split_merge_budget(torch.tensor([[100.0, 1.0, 1.0]]), 12, torch.tensor([5, 10, 10]))
    assert alloc.tolist() == [[5, 4, 3]]
    assert split_merge_budget(torch.tensor([[1.0, 2.0]]), 50, torch.tensor([3, 4])).tolist() == [[3, 4]]
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        mass = torch.rand(4, 7, generator=gen) ** 3
        capacity = torch.randint(0, 30, (4, 7), generator=gen)
        total = int(torch.randint(0, 150, (1,), generator=gen))
        alloc = split_merge_budget(mass, total, capacity)
        assert torch.equal(alloc.sum(-1), torch.minimum(torch.tensor(total), capacity.sum(-1)))
        assert (alloc >= 0).all() and (alloc <= capacity).all()
        assert torch.equal(alloc, split_merge_budget(mass, total, capacity))  # deterministic
    assert total_merge_budget(0.5, [14, 14, 14]) == 21
    assert total_merge_budget(0.0, [14, 14]) == 0


def test_importance_mass_counts_only_pruned_tokens():
    scores = torch.tensor([[[0.0, 100.0, -100.0, 0.0]]])
    kept = torch.tensor([[[False, True, False, False]]])
    torch.testing.assert_close(importance_mass(scores, kept), torch.tensor([[1.0]]))


def test_reduce_tokens_honours_budgets():
    x, scores = _feats(b=2, s=3, n=20)
    budget = torch.tensor([[0, 5, 14], [3, 20, 1]])
    red = reduce_tokens(x, scores, 6, budget)
    assert red.kept_idx.shape == (2, 3, 6) and red.tokens.shape == (2, 3, 6, 8)
    assert torch.equal(red.kept_mask.sum(-1), torch.full((2, 3), 6))
    assert torch.equal(red.kept_mask, topk_mask(scores, 6))
    merged = red.merged_mask.sum(-1)
    assert torch.equal(merged, torch.minimum(budget, torch.tensor(14)))
    assert torch.equal(merged + red.dropped_mask.sum(-1), torch.full((2, 3), 14))
    # kept indices ascend (grid order) and are the top-k scores
    assert (red.kept_idx.diff(dim=-1) > 0).all()
    top = scores.topk(6, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(red.kept_idx, top)


def test_merge_is_size_weighted_mean_into_most_similar_kept_token():
    x, scores = _feats(b=1, s=2, n=12, c=5)
    red = reduce_tokens(x, scores, 4, torch.tensor([[8, 3]]))
    sizes = torch.zeros(1, 2, 4).scatter_add_(-1, red.assignment.clamp(min=0), (red.assignment >= 0).float())
    assert torch.equal(red.sizes, sizes)
    torch.testing.assert_close(red.attn_bias(), torch.log(sizes))
    for s in range(2):
        for j in range(4):
            members = x[0, s][red.assignment[0, s] == j]
            torch.testing.assert_close(red.tokens[0, s, j], members.mean(0))
    # each merged token went to its most similar kept token
    unit = torch.nn.functional.normalize(x, dim=-1)
    sim = unit @ gather_tokens(unit, red.kept_idx).transpose(-1, -2)
    best = sim.argmax(-1)
    assert torch.equal(red.assignment[red.merged_mask], best[red.merged_mask])
    # the merged tokens are the most similar of the pruned ones
    for s in range(2):
        pruned = ~red.kept_mask[0, s]
        merged_sim = sim[0, s].max(-1).values[red.merged_mask[0, s]]
        dropped_sim = sim[0, s].max(-1).values[pruned & ~red.merged_mask[0, s]]
        if len(dropped_sim) and len(merged_sim):
            assert merged_sim.min() >= dropped_sim.max()


def test_input_sizes_weight_the_mean():
    x = torch.tensor([[[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]]])
    scores = torch.tensor([[[2.0, 0.0, 1.0]]])
    red = reduce_tokens(x, scores, 2, 1, sizes=torch.tensor([[[1.0, 3.0, 1.0]]]))
    torch.testing.assert_close(red.tokens[0, 0, 0], torch.tensor([1.0, 0.075]))
    assert red.sizes[0, 0].tolist() == [4.0, 1.0]


def test_pure_functions_are_deterministic():
    x, scores = _feats(b=2, s=3, n=30, c=16, seed=5)
    scores[:, :, 10:20] = 0.0  # ties
    a = reduce_tokens(x, scores, [9, 7, 7], torch.tensor([[5, 4, 0], [21, 2, 3]]))
    b = reduce_tokens(x.clone(), scores.clone(), [9, 7, 7], torch.tensor([[5, 4, 0], [21, 2, 3]]))
    for field in ("kept_idx", "valid", "tokens", "sizes", "assignment", "kept_mask"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert torch.equal(distinctiveness_scores(x, (5, 6)), distinctiveness_scores(x.clone(), (5, 6)))
    assert torch.equal(random_scores(2, 3, 30, seed=4), random_scores(2, 3, 30, seed=4))
    assert not torch.equal(random_scores(2, 3, 30, seed=4), random_scores(2, 3, 30, seed=5))
    assert torch.equal(grid_scores(2, 3, (5, 6)), grid_scores(2, 3, (5, 6)))
    # ties break towards the lower grid index
    assert topk_mask(torch.zeros(1, 1, 6), 2)[0, 0].tolist() == [True, True, False, False, False, False]


def test_padded_slots_for_a_boosted_reference_frame():
    x, scores = _feats(b=1, s=3, n=20)
    red = reduce_tokens(x, scores, [10, 4, 4], torch.tensor([[5, 5, 5]]))
    assert red.kept_idx.shape == (1, 3, 10)
    assert red.valid.sum(-1).tolist() == [[10, 4, 4]]
    assert torch.isneginf(red.attn_bias()[~red.valid]).all()
    assert (red.tokens[~red.valid] == 0).all()
    assert (red.assignment < red.valid.sum(-1, keepdim=True)).all()  # never a padded slot


def test_scatter_and_unmerge_undo_the_reduction():
    x, scores = _feats(b=2, s=2, n=15, c=4)
    red = reduce_tokens(x, scores, [7, 5], torch.tensor([[3, 2], [0, 10]]))
    grid = scatter_to_grid(gather_tokens(x, red.kept_idx), red.kept_idx, 15, red.valid)
    assert torch.equal(grid[red.kept_mask], x[red.kept_mask])
    assert (grid[~red.kept_mask] == 0).all()
    # scatter then gather is the identity on the valid slots
    back = gather_tokens(grid, red.kept_idx)
    assert torch.equal(back[red.valid], gather_tokens(x, red.kept_idx)[red.valid])
    # unmerge: kept and merged tokens take their slot's value, dropped ones the fill
    dense = unmerge(red.tokens, red.assignment, fill=float("nan"))
    assert torch.isnan(dense[red.dropped_mask]).all()
    for b in range(2):
        for s in range(2):
            for i in range(15):
                slot = int(red.assignment[b, s, i])
                if slot >= 0:
                    assert torch.equal(dense[b, s, i], red.tokens[b, s, slot])


def test_dither_rank_spreads_any_prefix_evenly():
    rank = dither_rank(4, 4).view(4, 4)
    quarter = rank < 4
    assert quarter.nonzero().tolist() == [[0, 0], [0, 2], [2, 0], [2, 2]]
    half = rank < 8
    assert torch.equal(half, (torch.arange(4)[:, None] + torch.arange(4)) % 2 == 0)
    rank = dither_rank(5, 7)
    assert sorted(rank.tolist()) == list(range(35))
    kept = (rank < 9).view(5, 7)
    assert kept.any(0).sum() >= 4 and kept.any(1).sum() >= 3  # not clustered


def test_training_free_scores_prefer_distinct_tokens():
    feats = torch.ones(1, 1, 16, 4) + 0.01 * torch.randn(1, 1, 16, 4)
    feats[0, 0, 5] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    scores = distinctiveness_scores(feats, (4, 4), coverage=0.5)
    assert scores[0, 0].argmax() == 5


# -- the wrapper: special tokens, positions, bias, restoration ------------------------------------


def _capture(monkeypatch, model):
    """Record the arguments and outputs of run_blocks and the dense entries handed to the depth
    and point heads (chunk by chunk, concatenated over frames)."""
    calls = {"chunks": []}
    agg = model.aggregator
    run_blocks, predict_dense = agg.run_blocks, model.predict_dense

    def run_blocks_spy(tokens, pos, attn_bias=None, keep_layers=None, **parts):
        out = run_blocks(tokens, pos, attn_bias=attn_bias, keep_layers=keep_layers, **parts)
        calls.update(tokens=tokens, pos=pos, bias=attn_bias, entries=out)
        return out

    def predict_dense_spy(tokens_list, image_hw, patch_start_idx):
        calls["chunks"].append(tokens_list)
        parts = list(zip(*calls["chunks"]))
        calls["dense"] = [None if p[0] is None else torch.cat(p, dim=1) for p in parts]
        return predict_dense(tokens_list, image_hw, patch_start_idx)

    monkeypatch.setattr(agg, "run_blocks", run_blocks_spy)
    monkeypatch.setattr(model, "predict_dense", predict_dense_spy)
    return calls


@pytest.mark.parametrize("merge_ratio", [0.0, 0.6])
def test_special_tokens_positions_and_bias_reach_the_aa_stack(monkeypatch, dino_model, merge_ratio):
    model = dino_model
    images = torch.rand(1, 3, 3, 56, 70)
    agg = model.aggregator
    psi = agg.patch_start_idx
    calls = _capture(monkeypatch, model)
    with torch.no_grad():
        feats = agg.embed(images)
        out = PaceVGGT(model, mode="training-free", amp_dtype="float32")(images, keep=0.3, merge_ratio=merge_ratio)
    stats = out["pruning"]
    tokens, pos, bias = calls["tokens"], calls["pos"], calls["bias"]
    k = stats["kept_per_frame"][0]
    assert tokens.shape == (1, 3, psi + k, agg.config.embed_dim)
    # special tokens: untouched and at (0, 0)
    assert torch.equal(tokens[:, :, :psi], agg.special_tokens(1, 3))
    assert (pos[:, :, :psi] == 0).all()
    # kept tokens carry their original 2D positions, in grid order
    grid = agg.patch_positions(4, 5)[psi:]
    index = (pos[:, :, psi:, 0] - 1) * 5 + (pos[:, :, psi:, 1] - 1)
    assert torch.equal(pos[:, :, psi:], grid[index])
    assert (index.diff(dim=-1) > 0).all()
    if merge_ratio == 0:
        assert bias is None  # no merging: plain attention
        assert torch.equal(tokens[:, :, psi:], gather_tokens(feats, index))
        return
    # proportional attention: log(group size), 0 for special tokens
    assert (bias[:, :, :psi] == 0).all()
    sizes = bias[:, :, psi:].exp()
    torch.testing.assert_close(sizes, sizes.round())
    merged = torch.tensor(stats["merged"])
    assert torch.equal(sizes.round().sum(-1).long(), k + merged)
    assert stats["merged"] == stats["merge_budget"]


@pytest.mark.parametrize("merge_ratio", [0.0, 1.0, 0.5])
def test_restored_kept_positions_equal_their_aa_outputs(monkeypatch, dino_model, merge_ratio):
    model = dino_model
    images = torch.rand(1, 3, 3, 56, 70)
    psi = model.aggregator.patch_start_idx
    calls = _capture(monkeypatch, model)
    with torch.no_grad():
        PaceVGGT(model, mode="training-free", amp_dtype="float32", heads_chunk=2)(images, keep=0.5, merge_ratio=merge_ratio)
    assert len(calls["chunks"]) == 2  # 3 frames, 2 per chunk
    pos = calls["pos"]
    index = (pos[:, :, psi:, 0] - 1) * 5 + (pos[:, :, psi:, 1] - 1)  # grid index of each slot
    for layer in model.head_layers():
        entry, dense = calls["entries"][layer], calls["dense"][layer]
        assert dense.shape[1] == 3
        assert dense.shape[2] == psi + 20
        assert torch.equal(dense[:, :, :psi], entry[:, :, :psi])  # special tokens pass through
        restored = gather_tokens(dense[:, :, psi:], index)
        assert torch.equal(restored, entry[:, :, psi:])  # kept positions: exact copies


def test_restoration_copies_merge_targets_and_interpolates_dropped():
    x, scores = _feats(b=1, s=2, n=20, c=8)
    red = reduce_tokens(x, scores, 6, torch.tensor([[7, 3]]))
    config = RestorationConfig(feat_dim=8, token_dim=12, layers=(1,), temperature=0.2, spatial_sigma=2.0)
    module = FeatureGuidedRestoration(config)
    entry = torch.randn(1, 2, 3 + 6, 12)
    dense = module([None, entry], red, x, (4, 5), 3)[1]
    slots = entry[:, :, 3:]
    target = gather_tokens(slots, red.assignment.clamp(min=0))
    assert torch.equal(dense[:, :, 3:][~red.dropped_mask], target[~red.dropped_mask])
    weights = module.interpolation_weights(x, red, (4, 5))
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 20))
    interp = weights @ slots
    torch.testing.assert_close(dense[:, :, 3:][red.dropped_mask], interp[red.dropped_mask])
    # the weights: softmax(cos / T - d^2 / (2 sigma^2)) over the frame's kept tokens
    unit = torch.nn.functional.normalize(x, dim=-1)
    ys, xs = torch.meshgrid(torch.arange(4), torch.arange(5), indexing="ij")
    coords = torch.stack((ys.flatten(), xs.flatten()), -1).float()
    kc = coords[red.kept_idx]
    d2 = ((coords[None, None, :, None] - kc[:, :, None]) ** 2).sum(-1)
    logits = unit @ gather_tokens(unit, red.kept_idx).transpose(-1, -2) / 0.2 - d2 / 8.0
    torch.testing.assert_close(weights, logits.softmax(-1))


def test_untrained_restoration_equals_training_free_base():
    x, scores = _feats(b=1, s=2, n=20, c=8)
    red = reduce_tokens(x, scores, 5, torch.tensor([[4, 8]]))
    entries = [torch.randn(1, 2, 3 + 5, 12), None, torch.randn(1, 2, 3 + 5, 12)]
    learned = FeatureGuidedRestoration(RestorationConfig(feat_dim=8, token_dim=12, layers=(0, 2), hidden=16))
    base = FeatureGuidedRestoration(RestorationConfig(feat_dim=8, token_dim=12, layers=()))
    out_learned = learned(entries, red, x, (4, 5), 3)
    out_base = base(entries, red, x, (4, 5), 3)
    assert out_learned[1] is None
    for a, b in ((out_learned[0], out_base[0]), (out_learned[2], out_base[2])):
        assert torch.equal(a, b)
    # once trained, the residual changes pruned positions only
    with torch.no_grad():
        learned.residuals["0"].fc2.bias.fill_(1.0)
    changed = learned(entries, red, x, (4, 5), 3)[0]
    diff = (changed - out_base[0])[:, :, 3:].abs().sum(-1) > 0
    assert torch.equal(diff, ~red.kept_mask)


def test_camera_correction_starts_neutral_and_moves_only_the_camera(tmp_path, conv_model):
    images = torch.rand(1, 2, 3, 28, 42)
    pace = _pace(conv_model, "learned")
    with torch.no_grad():
        before = pace(images, keep=0.5)
        pace.restoration = pace.restoration.with_camera_correction()
        assert pace.restoration.config.camera_correction
        neutral = pace(images, keep=0.5)
        for key in ("pose_enc", "depth", "world_points"):
            assert torch.equal(before[key], neutral[key]), key
        pace.restoration.camera.fc2.bias.fill_(0.5)
        moved = pace(images, keep=0.5)
    assert not torch.allclose(moved["pose_enc"], before["pose_enc"])
    assert torch.equal(moved["depth"], before["depth"]) and torch.equal(moved["world_points"], before["world_points"])
    # trainable through the camera loss
    pace.train()
    pace(images, keep=0.5, soft=True)["pose_enc"].sum().backward()
    fc2 = pace.restoration.camera.fc2  # zero-initialised weight: the first steps start here
    assert fc2.weight.grad.abs().sum() > 0 and fc2.bias.grad.abs().sum() > 0
    pace.zero_grad(set_to_none=True)
    pace.eval()
    # saved with the pruner and restored from it
    loaded = load_pruner(save_pruner(pace, tmp_path / "pruner.safetensors"), conv_model, amp_dtype="float32")
    with torch.no_grad():
        assert torch.equal(loaded(images, keep=0.5)["pose_enc"], moved["pose_enc"])


def test_reference_frame_boost_pads_and_masks(dino_model):
    images = torch.rand(1, 3, 3, 56, 70)
    pace = PaceVGGT(dino_model, mode="training-free", ref_boost=2.0, amp_dtype="float32")
    with torch.no_grad():
        out = pace(images, keep=0.3)
        ref = dino_model(images)
    stats = out["pruning"]
    assert stats["kept_per_frame"] == [12, 6, 6]
    assert stats["aa_tokens"] == 3 * (5 + 12) and stats["padded_slots"] == 12
    for key in OUTPUT_KEYS:
        assert out[key].shape == ref[key].shape and torch.isfinite(out[key]).all()


def test_backbone_stays_frozen_and_scorer_gets_gradients(conv_model):
    before = {k: v.clone() for k, v in conv_model.state_dict().items()}
    pace = _pace(conv_model, "learned")
    pace.train()
    assert not conv_model.training
    images = torch.rand(1, 2, 3, 28, 42)
    out = pace(images, keep=0.5, soft=True)
    (out["depth"].mean() + out["world_points"].mean() + out["pose_enc"].mean()).backward()
    grads = [p.grad for p in pace.scorer.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(not p.requires_grad and p.grad is None for p in conv_model.parameters())
    for key, value in conv_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    # soft=True changes no value
    with torch.no_grad():
        hard = pace(images, keep=0.5)
        soft = pace(images, keep=0.5, soft=True)
    assert torch.equal(hard["depth"], soft["depth"])
    pace.eval()


def test_straight_through_mask_is_exactly_hard_forward():
    scores = torch.randn(2, 3, 10, requires_grad=True)
    mask = straight_through_mask(scores, [4, 3, 3])
    assert torch.equal(mask.detach(), topk_mask(scores, [4, 3, 3]).float())
    (mask * torch.arange(10.0)).sum().backward()
    assert scores.grad.abs().sum() > 0


def test_pruner_checkpoint_round_trip(tmp_path, conv_model):
    pace = _pace(conv_model, "learned")
    with torch.no_grad():
        pace.restoration.residuals[str(max(conv_model.head_layers()))].fc2.bias.fill_(0.1)
    path = save_pruner(pace, tmp_path / "pruner.safetensors")
    loaded = load_pruner(path, conv_model, amp_dtype="float32")
    assert loaded.mode == "learned"
    images = torch.rand(1, 2, 3, 28, 42)
    with torch.no_grad():
        assert torch.equal(pace(images, keep=0.5)["depth"], loaded(images, keep=0.5)["depth"])


def test_learned_coverage_zero_leaves_the_scorer_alone_and_large_coverage_selects_the_grid(dino_model):
    feats = torch.randn(1, 2, 20, dino_model.config.aggregator.embed_dim, generator=torch.Generator().manual_seed(3))
    grid_hw = (4, 5)
    plain = _pace(dino_model, "learned")
    with torch.no_grad():
        assert torch.equal(plain.score(feats, grid_hw), plain.scorer(feats, grid_hw))
        spread = _pace(dino_model, "learned", learned_coverage=1e3).score(feats, grid_hw)
        grid = _pace(dino_model, "grid").score(feats, grid_hw)
        mixed = _pace(dino_model, "learned", learned_coverage=0.5).score(feats, grid_hw)
    for k in (3, 7, 12):
        top = lambda x: set(x[0, 1].topk(k).indices.tolist())  # noqa: E731
        assert top(spread) == top(grid)
    # a mild prior keeps the scorer's say: the ranking differs from the grid's
    assert mixed[0, 1].argsort().tolist() != grid[0, 1].argsort().tolist()


def test_learned_coverage_is_saved_with_the_pruner_and_can_be_overridden(tmp_path, conv_model):
    path = save_pruner(_pace(conv_model, "learned", learned_coverage=2.0), tmp_path / "pruner.safetensors")
    assert load_pruner(path, conv_model).learned_coverage == 2.0
    assert load_pruner(path, conv_model, learned_coverage=0.0).learned_coverage == 0.0


# -- cost -----------------------------------------------------------------------------------------


def _flop_counter():
    """FlopCounterMode that also counts the CPU SDPA kernel (not in torch's registry)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query, key, value, *args, **kwargs):
        return sdpa_flop_count(query, key, value)

    mapping = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = cpu_sdpa
    return FlopCounterMode(display=False, custom_mapping=mapping)


def test_analytic_flops_match_the_flop_counter(dino_model):
    images = torch.rand(1, 3, 3, 56, 70)
    dino_model.requires_grad_(False)
    for keep, mode, merge_ratio in ((1.0, "learned", 0.5), (0.5, "learned", 0.5), (0.3, "training-free", 0.0)):
        pace = _pace(dino_model, mode)
        counter = _flop_counter()
        with torch.no_grad(), counter:
            pace(images, keep=keep, merge_ratio=merge_ratio)
        analytic = forward_flops(
            dino_model.config, 3, 56, 70, keep=keep, mode=mode, merge_ratio=merge_ratio,
            scorer=pace.scorer.config if pace.scorer else None, restoration=pace.restoration.config,
        )
        assert analytic["total"] == counter.get_total_flops(), (keep, analytic, counter.get_total_flops())


def test_scorer_costs_well_under_one_percent_of_vggt_1b():
    config = vggt_1b()
    frames, size = 8, 518
    backbone = forward_flops(config, frames, size, size)["total"]
    n = (size // 14) ** 2
    share = scorer_flops(ScorerConfig(in_dim=1024), frames * n) / backbone
    assert share < 1e-3
    assert math.isclose(TokenScorer(ScorerConfig(in_dim=1024)).flops_per_token() * frames * n,
                        scorer_flops(ScorerConfig(in_dim=1024), frames * n))


def test_latency_script_runs_and_writes_records(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "eval" / "latency.py"
    spec = importlib.util.spec_from_file_location("latency_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "lat.json"
    argv = ["--model", "tiny-random", "--pruner", "grid", "--frames", "2", "--keep", "1", "0.5",
            "--size", "28", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--json", str(out)]
    assert script.main(argv) == 0
    records = json.loads(out.read_text())
    assert [r["keep"] for r in records] == [1.0, 0.5]
    for key in ("model", "pruner", "keep", "frames", "height", "width", "device", "dtype", "median_s",
                "peak_mem_bytes", "aa_tokens", "ideal_speedup", "speedup", "stage_s", "scorer_restoration_share"):
        assert key in records[1], key
    assert records[1]["aa_tokens"] < records[0]["aa_tokens"] and records[1]["ideal_speedup"] > 1
    assert script.main(argv[:-2] + ["--json", str(out), "--keep", "0"]) == 2  # invalid keep: one-line error
    # keep 1 in float32 as the reference of the speed-ups
    assert script.main(argv + ["--dtype", "bfloat16", "--reference-dtype", "float32"]) == 0
    records = json.loads(out.read_text())
    for record in records:
        assert record["dtype"] == "bfloat16" and record["reference_dtype"] == "float32"
        assert record["speedup_vs_reference"] == pytest.approx(record["reference_median_s"] / record["median_s"])


def test_pruner_refuses_a_backbone_it_was_not_trained_for(tmp_path):
    from pacegeo.backbone import VGGT, tiny
    from pacegeo.errors import CheckpointError
    from pacegeo.pace import PaceVGGT
    from pacegeo.pruning.checkpoint import load_pruner, save_pruner
    from pacegeo.pruning import ScorerConfig, TokenScorer

    torch.manual_seed(0)
    trained_for = VGGT(tiny()).eval()
    pace = PaceVGGT(trained_for, scorer=TokenScorer(ScorerConfig.for_backbone(trained_for)))
    path = save_pruner(pace, tmp_path / "pruner.safetensors")
    assert load_pruner(path, trained_for).mode == "learned"
    torch.manual_seed(1)
    other = VGGT(tiny()).eval()  # same architecture, different weights
    with pytest.raises(CheckpointError, match="was trained for backbone tiny"):
        load_pruner(path, other)
