"""Ternary VPR extractor: absmean quantisation, straight-through gradients, activation top-k,
2-bit packing, checkpoint round trip and the stored byte count."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from pacegeo.backbone import VGGT, tiny
from pacegeo.errors import CheckpointError, InputError
from pacegeo.hub import backbone_fingerprint, load_backbone
from pacegeo.pruning.scorer import ScorerConfig, TokenScorer
from pacegeo.vpr import DescriptorExtractor, WeightedOTConfig, WeightedOTHead
from pacegeo.vpr.ternary import (
    TernaryExtractor,
    TernaryLinear,
    load_ternary_vpr,
    pack_ternary,
    save_ternary_vpr,
    ternarize_encoder,
    ternary_from_teacher,
    ternary_quantize,
    topk_activations,
    unpack_ternary,
)

DIM = 32


def _hand_layer() -> TernaryLinear:
    layer = TernaryLinear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.9, -0.05, 0.2], [-1.2, 0.6, 0.3]]))
        layer.bias.copy_(torch.tensor([0.5, -1.0]))
    return layer


def _extractor(seed: int = 0) -> DescriptorExtractor:
    torch.manual_seed(seed)
    backbone = VGGT(tiny(embed_dim=DIM, depth=1, num_heads=2, dino_depth=3, with_point_head=False)).eval()
    head = WeightedOTHead(WeightedOTConfig(in_dim=DIM, num_clusters=4, cluster_dim=8, global_dim=16, hidden_dim=16))
    scorer = TokenScorer(ScorerConfig(in_dim=DIM, hidden=8))
    return DescriptorExtractor.from_backbone(backbone, head, scorer=scorer).eval()


def _images(n=3, h=56, w=70, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_absmean_quantisation_matches_a_hand_computed_example():
    # mean|W| = (0.9 + 0.05 + 0.2 + 1.2 + 0.6 + 0.3) / 6 = 0.541667; W / s rounds to the codes below
    codes, scale = ternary_quantize(_hand_layer().weight)
    assert codes.dtype == torch.int8
    assert codes.tolist() == [[1, 0, 0], [-1, 1, 1]]
    assert scale.item() == pytest.approx(3.25 / 6, rel=1e-6)
    layer = _hand_layer().eval()
    out = layer(torch.tensor([[1.0, 2.0, 3.0]]))
    s = 3.25 / 6
    assert out[0].tolist() == pytest.approx([1 * s + 0.5, (-1 + 2 + 3) * s - 1.0], rel=1e-6)


def test_straight_through_gradient_reaches_the_latent_weights():
    torch.manual_seed(0)
    layer = TernaryLinear(6, 4).train()
    x = torch.randn(5, 6, requires_grad=True)
    g = torch.randn(5, 4)
    (layer(x) * g).sum().backward()
    codes, scale = ternary_quantize(layer.weight)
    w_q = codes.float() * scale
    assert torch.allclose(layer.weight.grad, g.T @ x.detach(), atol=1e-6)  # identity through the rounding
    assert torch.allclose(x.grad, g @ w_q, atol=1e-6)  # the input sees the quantised weights
    assert torch.allclose(layer.bias.grad, g.sum(0), atol=1e-6)


def test_pack_unpack_is_exact_and_four_values_per_byte():
    assert pack_ternary(torch.tensor([-1, 0, 1, 1])).tolist() == [0 | 1 << 2 | 2 << 4 | 2 << 6]
    codes = torch.randint(-1, 2, (7, 5), generator=torch.Generator().manual_seed(0)).to(torch.int8)
    packed = pack_ternary(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(35 / 4)
    assert torch.equal(unpack_ternary(packed, (7, 5)), codes)
    with pytest.raises(CheckpointError):
        unpack_ternary(torch.tensor([255], dtype=torch.uint8), (4,))  # code 3 is not a ternary value
    with pytest.raises(CheckpointError):
        unpack_ternary(packed, (8, 5))
    with pytest.raises(InputError):
        pack_ternary(torch.tensor([2]))


def test_full_activation_keep_is_the_plain_quantised_layer():
    torch.manual_seed(0)
    layer = TernaryLinear(16, 8).eval()
    x = torch.randn(2, 7, 16)
    codes, scale = ternary_quantize(layer.weight)
    reference = F.linear(x, codes.float() * scale, layer.bias)
    layer.keep_activations = 1.0
    assert torch.equal(layer(x), reference)
    layer.keep_activations = 0.5
    assert not torch.equal(layer(x), reference)


def test_topk_keeps_exactly_the_largest_magnitudes_per_token():
    x = torch.randn(3, 4, 10, generator=torch.Generator().manual_seed(0))
    out = topk_activations(x, 0.45)  # ceil(4.5) = 5 of 10 per token
    xs = x.numpy().reshape(-1, 10)
    expected = np.zeros_like(xs)
    for r, row in enumerate(xs):
        top = np.argsort(-np.abs(row))[:5]
        expected[r, top] = row[top]
    assert np.array_equal(out.numpy().reshape(-1, 10), expected)
    assert ((out != 0).sum(-1) == 5).all()
    torch.manual_seed(0)
    layer = TernaryLinear(10, 3).eval()
    layer.keep_activations = 0.45
    codes, scale = ternary_quantize(layer.weight)
    assert torch.allclose(layer(x), F.linear(torch.from_numpy(expected).reshape(3, 4, 10), codes.float() * scale, layer.bias))


def test_conversion_replaces_every_block_linear_and_leaves_the_teacher_alone():
    teacher = _extractor()
    before = {k: v.clone() for k, v in teacher.encoder.state_dict().items()}
    student = ternarize_encoder(teacher.encoder)
    linears = [n for n, m in teacher.encoder.named_modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(student.get_submodule(n), TernaryLinear) for n in linears)
    assert not any(type(m) is torch.nn.Linear for m in student.modules())
    assert isinstance(student.patch_embed.proj, torch.nn.Conv2d) and isinstance(student.norm, torch.nn.LayerNorm)
    assert all(torch.equal(before[k], v) for k, v in teacher.encoder.state_dict().items())
    assert all(type(teacher.encoder.get_submodule(n)) is torch.nn.Linear for n in linears)


def test_activation_keep_setting_reaches_every_layer_and_is_range_checked():
    student = ternary_from_teacher(_extractor())
    student.keep_activations = 0.6
    assert {m.keep_activations for m in student.ternary_layers().values()} == {0.6}
    with pytest.raises(InputError):
        student.keep_activations = 0.2


def test_checkpoint_round_trip_gives_bit_identical_descriptors(tmp_path):
    teacher = _extractor()
    student = ternary_from_teacher(teacher)
    with torch.no_grad():  # move the float parts away from the teacher's, as training does
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    student.eval()
    path = save_ternary_vpr(student, tmp_path / "t.safetensors", "random-tiny", backbone_fingerprint(teacher.encoder))
    loaded = load_ternary_vpr(path)
    images = _images()
    for act in (1.0, 0.6):
        student.keep_activations = loaded.keep_activations = act
        for keep in (1.0, 0.5):
            with torch.no_grad():
                assert torch.equal(student(images, keep), loaded(images, keep))
    codes, _ = student.ternary_layers()["blocks.0.attn.qkv"].ternary()
    assert torch.equal(loaded.ternary_layers()["blocks.0.attn.qkv"].ternary()[0], codes)


def test_loading_is_strict(tmp_path):
    teacher = _extractor()
    path = save_ternary_vpr(ternary_from_teacher(teacher).eval(), tmp_path / "t.safetensors", "x",
                            backbone_fingerprint(teacher.encoder))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    missing = dict(state)
    del missing["ternary.blocks.1.mlp.fc2.codes"]
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="missing"):
        load_ternary_vpr(tmp_path / "missing.safetensors")
    bad = dict(state)
    bad["encoder.norm.weight"] = torch.zeros(DIM + 1)
    save_file(bad, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="encoder"):
        load_ternary_vpr(tmp_path / "bad.safetensors")
    other = _extractor(seed=1)
    with pytest.raises(CheckpointError, match="distilled from"):
        load_ternary_vpr(path, backbone=other.encoder)
    assert load_ternary_vpr(path, backbone=teacher.encoder).prune_after == teacher.prune_after


def test_stored_bytes_are_at_most_an_eighth_of_the_teachers_linear_weights(tmp_path):
    backbone = load_backbone("pacegeo-tiny")
    head = WeightedOTHead(WeightedOTConfig(in_dim=backbone.config.aggregator.embed_dim))
    teacher = DescriptorExtractor.from_backbone(backbone, head).eval()
    student = ternary_from_teacher(teacher).eval()
    linear = [m for m in teacher.encoder.blocks.modules() if isinstance(m, torch.nn.Linear)]
    float32_linear_bytes = sum(4 * m.weight.numel() for m in linear)
    assert len(linear) == len(student.ternary_layers()) > 0
    assert student.linear_weight_bytes() <= float32_linear_bytes / 8
    # everything else is stored as float32: encoder tensors other than the linear weights, and the head
    float_params = sum(p.numel() for p in teacher.parameters()) - sum(m.weight.numel() for m in linear)
    packed = sum(math.ceil(m.weight.numel() / 4) + 4 for m in linear)
    assert student.weight_bytes() == packed + 4 * float_params
    path = save_ternary_vpr(student, tmp_path / "t.safetensors", "pacegeo-tiny", backbone_fingerprint(backbone))
    stored = load_file(str(path))
    assert student.weight_bytes() == sum(t.numel() * t.element_size() for t in stored.values())
    assert isinstance(load_ternary_vpr(path), TernaryExtractor)


def test_eval_gives_one_ternary_row_per_activation_keep(tmp_path):
    import json
    from pathlib import Path
    from types import SimpleNamespace

    from helpers import load_script

    vpr_eval = load_script(Path(__file__).resolve().parents[1] / "eval" / "vpr.py", "eval")
    teacher = _extractor()
    student = ternary_from_teacher(teacher).eval()
    ckpt = save_ternary_vpr(student, tmp_path / "t.safetensors", "x", backbone_fingerprint(teacher.encoder))
    places = tmp_path / "places"
    vpr_eval.build_synthrooms(places, SimpleNamespace(synth_size="56x70", synth_scenes=1, synth_queries=3,
                                                      synth_seed=0, synth_scene_seed=600_000))
    out = tmp_path / "r.json"
    assert vpr_eval.main(["--synthrooms", str(places), "--synth-scenes", "1", "--synth-scene-seed", "600000",
                          "--head", "ternary", "--ternary", str(ckpt), "--keep", "1.0", "--activation-keep", "1.0", "0.5",
                          "--size", "70", "--threads", "1", "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["head"], r["keep"], r["activation_keep"]) for r in rows] == [("ternary", 1.0, 1.0), ("ternary", 1.0, 0.5)]
    assert {r["weight_bytes"] for r in rows} == {student.weight_bytes()}
    assert rows[0]["num_queries"] == 3
