"""Visual place recognition: heads, pruned extraction, index persistence, recall."""

import math

import numpy as np
import pytest
import torch

from pacegeo.backbone import VGGT, tiny
from pacegeo.errors import InputError
from pacegeo.pruning.scorer import ScorerConfig, TokenScorer
from pacegeo.vpr import (
    DescriptorExtractor,
    DescriptorIndex,
    GeMConfig,
    GeMHead,
    VLADConfig,
    VLADHead,
    WeightedOTConfig,
    WeightedOTHead,
    distillation_loss,
    distillation_target,
    load_gt_file,
    load_vpr,
    log_sinkhorn,
    positives_by_index,
    positives_for_folders,
    positives_from_poses,
    positives_from_utm,
    recall_at_n,
    save_vpr,
)
from pacegeo.vpr.head import ot_log_marginals

DIM = 32


@pytest.fixture(scope="module")
def vit_backbone():
    torch.manual_seed(0)
    return VGGT(tiny(embed_dim=DIM, depth=1, num_heads=2, dino_depth=3, with_point_head=False)).eval()


@pytest.fixture(scope="module")
def conv_backbone():
    torch.manual_seed(0)
    return VGGT(tiny(embed_dim=DIM, depth=1, num_heads=2, with_point_head=False)).eval()


def _head(**kw) -> WeightedOTHead:
    torch.manual_seed(1)
    return WeightedOTHead(WeightedOTConfig(in_dim=DIM, num_clusters=4, cluster_dim=8, global_dim=16, hidden_dim=16, **kw)).eval()


def _images(n=3, h=56, w=70, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# -- optimal transport / heads -----------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 40])
def test_sinkhorn_marginals(n):
    k = 4
    scores = torch.randn(2, k + 1, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * 3
    log_a, log_b = ot_log_marginals(n, k)
    plan = log_sinkhorn(scores, log_a.double(), log_b.double(), iters=500).exp()
    assert torch.allclose(plan.sum(dim=1), log_b.exp().double().expand(2, n), atol=1e-4)
    assert torch.allclose(plan.sum(dim=2), log_a.exp().double().expand(2, k + 1), atol=1e-4)
    assert math.isclose(float(log_a.exp().sum()), n, rel_tol=1e-6)


def test_head_plan_columns_and_importance():
    head = _head()
    tokens = torch.randn(2, 12, DIM)
    plan = head.transport_plan(tokens)
    assert plan.shape == (2, 5, 12)
    assert torch.allclose(plan.sum(dim=1), torch.ones(2, 12), atol=1e-5)  # every token sends mass 1
    imp = head.token_importance(tokens)
    assert imp.shape == (2, 12) and bool((imp >= 0).all())


@pytest.mark.parametrize("out_dim", [0, 24])
def test_descriptor_dim_and_norm(out_dim):
    head = _head(out_dim=out_dim)
    desc = head(torch.randn(3, 10, DIM), torch.randn(3, DIM))
    expected = out_dim or 4 * 8 + 16
    assert desc.shape == (3, expected) == (3, head.out_dim)
    assert torch.allclose(desc.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert WeightedOTConfig(in_dim=192).descriptor_dim == 1280


def test_gem_head():
    desc = GeMHead(GeMConfig(DIM))(torch.rand(2, 9, DIM))
    assert desc.shape == (2, DIM) and torch.allclose(desc.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_vlad_fit_and_encode():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, DIM, generator=gen) * 5
    feats = (centres[torch.arange(400) % 4] + 0.1 * torch.randn(400, DIM, generator=gen)).reshape(20, 20, DIM)
    head = VLADHead(VLADConfig(DIM, num_clusters=4, seed=0))
    with pytest.raises(InputError):
        head(feats[:2])
    head.fit(feats)
    assert head.is_fitted
    # every true cluster gets its own word
    assert len(set(head.assign(centres[None])[0].tolist())) == 4
    desc = head(feats[:3])
    assert desc.shape == (3, 4 * DIM) and torch.allclose(desc.norm(dim=-1), torch.ones(3), atol=1e-5)
    again = VLADHead(VLADConfig(DIM, num_clusters=4, seed=0)).fit(feats)
    assert torch.equal(again.centroids, head.centroids)  # deterministic given the seed


# -- extraction ---------------------------------------------------------------------------------


def _reference_descriptor(extractor, images):
    x = (images - extractor._mean) / extractor._std
    out = extractor.encoder.forward_features(x)
    return extractor.head(out["x_norm_patchtokens"], out["x_norm_clstoken"])


def test_keep_one_equals_unpruned(vit_backbone):
    ex = DescriptorExtractor.from_backbone(vit_backbone, _head(), prune_after=1).eval()
    images = _images()
    with torch.no_grad():
        assert torch.equal(ex(images, 1.0), _reference_descriptor(ex, images))


@pytest.mark.parametrize("scoring", ["learned", "distinctiveness", "grid", "random"])
@pytest.mark.parametrize("keep", [0.5, 0.3])
def test_pruned_shapes_and_determinism(vit_backbone, scoring, keep):
    torch.manual_seed(2)
    scorer = TokenScorer(ScorerConfig(in_dim=DIM, hidden=8))
    ex = DescriptorExtractor.from_backbone(vit_backbone, _head(), scorer=scorer, prune_after=1, scoring=scoring).eval()
    images = _images()
    n = (56 // 14) * (70 // 14)
    with torch.no_grad():
        enc = ex.encode(images, keep)
        k = math.ceil(keep * n)
        assert enc.tokens.shape == (3, k, DIM) and enc.kept_idx.shape == (3, k) and enc.cls.shape == (3, DIM)
        assert bool((enc.kept_idx.diff(dim=-1) > 0).all())  # grid order, no duplicates
        d1, d2 = ex(images, keep), ex(images, keep)
    assert torch.equal(d1, d2)
    assert torch.allclose(d1.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_conv_encoder_pruning(conv_backbone):
    ex = DescriptorExtractor.from_backbone(conv_backbone, _head(global_source="gem")).eval()
    images = _images()
    with torch.no_grad():
        full = ex(images, 1.0)
        ref = ex.head(ex.encoder((images - ex._mean) / ex._std))
        assert torch.equal(full, ref)
        enc = ex.encode(images, 0.5)
    assert enc.cls is None and enc.tokens.shape == (3, 10, DIM)


def test_invalid_keep(vit_backbone):
    ex = DescriptorExtractor.from_backbone(vit_backbone, _head())
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(InputError):
            ex(_images(1), bad)


def test_distillation_target_is_distribution(vit_backbone):
    ex = DescriptorExtractor.from_backbone(vit_backbone, _head(), prune_after=1).eval()
    with torch.no_grad():
        importance = ex.head_importance(_images())
    target = distillation_target(importance)
    assert target.shape == (3, 20)
    assert bool((target >= 0).all()) and torch.allclose(target.sum(-1), torch.ones(3), atol=1e-5)
    logits = torch.randn(3, 20, requires_grad=True)
    loss = distillation_loss(logits, target)
    loss.backward()
    assert loss.item() >= 0 and logits.grad is not None
    assert distillation_loss(torch.log(target), target).item() == pytest.approx(0.0, abs=1e-6)


def _saved_head(backbone, tmp_path, fingerprint=None):
    from pacegeo.hub import backbone_fingerprint, save_backbone

    backbone_path = save_backbone(backbone, tmp_path / "bb.safetensors")
    torch.manual_seed(3)
    scorer = TokenScorer(ScorerConfig(in_dim=DIM, hidden=8))
    ex = DescriptorExtractor.from_backbone(backbone, _head(), scorer=scorer, prune_after=2).eval()
    path = save_vpr(ex, tmp_path / "vpr.safetensors", backbone=str(backbone_path),
                    backbone_fingerprint=fingerprint or backbone_fingerprint(backbone))
    return ex, path


def test_vpr_checkpoint_round_trip(vit_backbone, tmp_path):
    ex, path = _saved_head(vit_backbone, tmp_path)
    for loaded in (load_vpr(path), load_vpr(path, backbone=vit_backbone)):
        images = _images(2)
        assert loaded.prune_after == 2 and loaded.scoring == "learned"
        with torch.no_grad():
            assert torch.allclose(loaded(images, 0.5), ex(images, 0.5), atol=1e-6)


def test_vpr_head_refuses_another_backbone(vit_backbone, tmp_path):
    from pacegeo.errors import CheckpointError
    from pacegeo.hub import backbone_fingerprint

    ex, path = _saved_head(vit_backbone, tmp_path)
    torch.manual_seed(1)
    other = VGGT(tiny(embed_dim=DIM, depth=1, num_heads=2, dino_depth=3, with_point_head=False)).eval()
    assert backbone_fingerprint(other) != backbone_fingerprint(vit_backbone)
    with pytest.raises(CheckpointError, match=f"fingerprint {backbone_fingerprint(vit_backbone)}.*retrain"):
        load_vpr(path, backbone=other)
    loaded = load_vpr(path, backbone=other, verify_backbone=False)  # the expert's override
    expected = DescriptorExtractor.from_backbone(other, ex.head, scorer=ex.scorer, prune_after=2).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(_images(2), 0.5), expected(_images(2), 0.5), atol=1e-6)


def test_vpr_head_without_a_fingerprint_is_refused(vit_backbone, tmp_path):
    from safetensors.torch import load_file, save_file

    from pacegeo.errors import CheckpointError
    from pacegeo.vpr.extract import read_vpr_metadata

    _, path = _saved_head(vit_backbone, tmp_path)
    meta = read_vpr_metadata(path)
    del meta["backbone_fingerprint"]
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="records no backbone fingerprint"):
        load_vpr(path, backbone=vit_backbone)


def test_save_vpr_needs_the_backbone_fingerprint(vit_backbone, tmp_path):
    ex = DescriptorExtractor.from_backbone(vit_backbone, _head()).eval()
    with pytest.raises(ValueError, match="fingerprint"):
        save_vpr(ex, tmp_path / "vpr.safetensors", backbone="x", backbone_fingerprint="")


# -- index --------------------------------------------------------------------------------------


def _unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_save_load_round_trip(kind, tmp_path):
    db, qs = _unit(50, 16, 0), _unit(7, 16, 1)
    poses = np.tile(np.eye(4), (50, 1, 1))
    poses[:, 0, 3] = np.arange(50)
    index = DescriptorIndex(16, kind=kind, nlist=4, nprobe=4)
    index.add(db[:30], names=[f"img{i}" for i in range(30)], poses=poses[:30])
    index.add(db[30:], names=[f"img{i}" for i in range(30, 50)], poses=poses[30:])
    scores, ids = index.search(qs, 5)
    path = index.save(tmp_path / "map")
    assert path.suffix == ".npz" and not list(tmp_path.glob("*.tmp"))
    again = DescriptorIndex.load(path)
    scores2, ids2 = again.search(qs, 5)
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_allclose(scores, scores2)
    assert again.names == index.names and np.array_equal(again.poses, index.poses)
    assert np.isnan(again.intrinsics).all()
    if kind == "flat":  # exact search
        np.testing.assert_array_equal(ids, np.argsort(-qs @ db.T, axis=1)[:, :5])


def test_index_short_database():
    index = DescriptorIndex(4)
    index.add(_unit(2, 4, 0))
    scores, ids = index.search(_unit(1, 4, 1), 3)
    assert ids[0, 2] == -1 and np.isneginf(scores[0, 2])
    with pytest.raises(InputError):
        index.add(_unit(2, 5, 0))


# -- recall -------------------------------------------------------------------------------------


def test_recall_with_index_lists(tmp_path):
    gt = np.empty((3, 2), dtype=object)
    gt[0, 0], gt[0, 1] = 0, [0, 1]
    gt[1, 0], gt[1, 1] = 1, [2]
    gt[2, 0], gt[2, 1] = 2, [3]
    np.save(tmp_path / "gt.npy", gt, allow_pickle=True)
    positives = load_gt_file(tmp_path / "gt.npy", 3)
    preds = np.array([[1, 5, 6], [4, 2, 0], [0, 1, 2]])
    assert recall_at_n(preds, positives, (1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(2 / 3)}
    # gsv-cities style: 1-D object array of lists
    flat = np.empty(3, dtype=object)
    flat[:] = [[0, 1], [2], [3]]
    np.save(tmp_path / "flat.npy", flat, allow_pickle=True)
    assert [p.tolist() for p in load_gt_file(tmp_path / "flat.npy")] == [[0, 1], [2], [3]]


def test_recall_with_utm_names():
    db = [f"@{e}@{n}@17@S@0@0@x@@@@@@@@.jpg" for e, n in [(0, 0), (100, 0), (200, 0), (0, 30)]]
    qs = [f"@{e}@{n}@17@S@0@0@q@@@@@@@@.jpg" for e, n in [(10, 0), (190, 10), (500, 500)]]
    positives = positives_from_utm(db, qs, radius=25.0)
    assert [p.tolist() for p in positives] == [[0], [2], []]
    same, style = positives_for_folders(db, qs)
    assert style == "utm" and [p.tolist() for p in same] == [[0], [2], []]
    preds = np.array([[0, 1], [1, 2], [0, 1]])
    # the third query has no positive and stays in the denominator
    assert recall_at_n(preds, positives, (1, 2)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}


def test_index_pairing_and_poses():
    positives, style = positives_for_folders(["a.jpg", "b.jpg"], ["c.jpg", "d.jpg"])
    assert style == "index" and [p.tolist() for p in positives] == [[0], [1]]
    assert [p.tolist() for p in positives_by_index(3, 3, tolerance=1)] == [[0, 1], [0, 1, 2], [1, 2]]
    db = np.tile(np.eye(4), (3, 1, 1))
    db[1, 0, 3] = 2.0
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    db[2, :3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    q = np.eye(4)[None]
    assert positives_from_poses(db, q, 0.5, 20.0)[0].tolist() == [0]


# -- SynthRooms places ----------------------------------------------------------------------------


def test_synthrooms_places_are_deterministic_and_separated():
    from pacegeo.vpr.places import PlaceConfig, make_place_set, render_places

    cfg = PlaceConfig(width=42, height=28, trajectory_frames=40, db_stride=4)
    imgs, poses = render_places(7, num_places=3, views_per_place=2, cfg=cfg)
    again, _ = render_places(7, num_places=3, views_per_place=2, cfg=cfg)
    assert imgs.shape[1:] == (2, 28, 42, 3) and np.array_equal(imgs, again)
    for a in range(len(poses)):  # views of one place are the same place, other places are not
        assert positives_from_poses(poses[a], poses[a, :1], 2 * cfg.view_radius, 2 * cfg.view_angle)[0].size == 2
        for b in range(a + 1, len(poses)):
            assert all(p.size == 0 for p in positives_from_poses(poses[b], poses[a], cfg.same_distance, cfg.same_angle))
    places = make_place_set([7, 8], queries_per_scene=3, cfg=cfg)
    assert len(places.queries) == 6 and len(places.database) == 20
    for q, pos in enumerate(places.positives):  # positives never cross rooms
        assert set(places.database_scene[pos]) <= {places.query_scene[q]}


def test_recall_at_1_counts_queries_whose_nearest_database_entry_is_a_positive():
    from pacegeo.vpr.index import recall_at_1

    database = torch.eye(3)
    queries = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.2, 1.0], [0.9, 0.0, 0.1]])  # nearest: 0, 2, 0
    assert recall_at_1(database, queries, [[0], [2], [1]]) == pytest.approx(2 / 3)


def test_rendered_views_become_float_images_in_0_1():
    from pacegeo.vpr.places import images_to_tensor

    views = np.arange(2 * 3 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 3, 4, 5, 3)  # [P, V, H, W, 3]
    out = images_to_tensor(views)
    assert out.shape == (6, 3, 4, 5) and out.dtype == torch.float32
    assert float(out[4, 2, 3, 1]) == pytest.approx(float(views[1, 1, 3, 1, 2]) / 255.0)


def test_photometric_jitter_is_off_at_zero_and_seeded_within_its_ranges():
    from pacegeo.vpr.places import photometric_jitter

    images = torch.rand(4, 3, 6, 7, generator=torch.Generator().manual_seed(1))
    assert photometric_jitter(images, 0.0, torch.Generator().manual_seed(0)) is images
    a = photometric_jitter(images, 0.4, torch.Generator().manual_seed(0))
    b = photometric_jitter(images, 0.4, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == images.shape
    assert 0 <= a.min() and a.max() <= 1 and (a - images).abs().mean() > 0.01
    # One colour transform per image: a uniform image stays uniform, in a colour of its own.
    grey = torch.full((64, 3, 2, 2), 0.5)
    out = photometric_jitter(grey, 0.4, torch.Generator().manual_seed(0))
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))
    assert out.std(dim=0).mean() > 0.01
