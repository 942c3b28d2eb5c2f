"""eval/peers.py: every method in one harness, FLOPs counted as executed, the dominance tables."""

import json
from pathlib import Path

import pytest
import torch

from helpers import load_script

peers = load_script(Path(__file__).resolve().parents[1] / "eval" / "peers.py", "eval")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_counted_flops_match_the_analytic_model():
    from pacegeo.backbone import VGGT, tiny
    from pacegeo.evaluation.flopcount import counted_flops
    from pacegeo.pace import PaceVGGT
    from pacegeo.pruning.flops import forward_flops

    model = VGGT(tiny(dino_depth=2)).eval().requires_grad_(False)
    images = torch.rand(1, 4, 3, 56, 70)
    pace = PaceVGGT(model, mode="training-free", amp_dtype=None, merge_ratio=0.0).requires_grad_(False)
    with torch.no_grad():
        assert counted_flops(lambda: model(images)) == forward_flops(model.config, 4, 56, 70)["total"]
        pruned = counted_flops(lambda: pace(images, keep=0.5))
    analytic = forward_flops(model.config, 4, 56, 70, keep=0.5, mode="training-free", merge_ratio=0.0)
    # the analytic model's AA and head terms are exact; scoring and restoration are approximations
    assert abs(pruned - analytic["total"]) / analytic["total"] < 0.05


def _rec(method, setting, speedup, abs_rel, rot):
    return {"method": method, "setting": setting, "speedup": speedup, "abs_rel": abs_rel, "rot_err_deg": rot}


def test_dominance_lists_exactly_the_faster_and_no_worse_settings():
    records = [
        _rec("unpruned", "-", 1.0, 0.10, 5.0),
        _rec("fastvggt", "0.9", 1.6, 0.12, 6.0),
        _rec("pace", "0.5", 1.5, 0.11, 5.5),  # slower
        _rec("pace", "0.3", 1.7, 0.13, 5.5),  # worse AbsRel
        _rec("pace+fastvggt", "keep 0.5 + merge 0.9", 2.0, 0.12, 6.0),  # ties count as no worse
    ]
    lines = peers.dominance(records)
    row = next(line for line in lines if line.startswith("| fastvggt | 0.9"))
    assert row.endswith("| pace+fastvggt keep 0.5 + merge 0.9 |")
    beyond = next(line for line in lines if line.startswith("| pace 0.3 "))
    assert "pace+fastvggt keep 0.5 + merge 0.9 | 2.00x | 1.18 |" in beyond
    assert next(line for line in lines if line.startswith("| pace 0.5 ")).endswith("| none | - | - |")


def test_paired_view_compares_settings_of_similar_speed_clip_by_clip():
    def rec(method, setting, speedup, abs_rel, rot):
        return {**_rec(method, setting, speedup, sum(abs_rel) / 3, sum(rot) / 3),
                "per_scene": {"abs_rel": abs_rel, "rot_err_med": rot}}

    records = [
        rec("fastvggt", "0.9", 1.60, [0.12, 0.10, 0.14], [6.0, 5.0, 7.0]),
        rec("pace", "0.5", 1.55, [0.11, 0.09, 0.13], [6.5, 5.5, 7.5]),  # within 5%: 0.01 better, 0.5 deg worse
        rec("pace", "0.3", 2.00, [0.05, 0.05, 0.05], [1.0, 1.0, 1.0]),  # 25% faster: not compared
    ]
    rows = [line for line in peers.paired_view(records) if line.startswith("| fastvggt")]
    assert rows == ["| fastvggt | 0.9 | 1.60x | pace 0.5 | 1.55x | +0.0100 [+0.0100, +0.0100] | -0.50 [-0.50, -0.50] |"]


def test_one_run_writes_every_method_with_its_figures(tmp_path):
    from pacegeo.backbone import VGGT, tiny
    from pacegeo.hub import save_backbone
    from pacegeo.pruning.come import CoMeConfig, ConfidencePredictor, save_confidence

    torch.manual_seed(0)
    model = VGGT(tiny(dino_depth=2)).eval()
    path = save_backbone(model, tmp_path / "tiny.safetensors")
    come = save_confidence(ConfidencePredictor(CoMeConfig(in_dim=model.config.aggregator.embed_dim, layer=1)),
                           tmp_path / "come.safetensors", model)
    out = tmp_path / "peers.json"
    assert peers.main(["--model", str(path), "--come", str(come), "--scenes", "1", "--frames", "3", "--rounds", "1",
                       "--size", "84x84", "--dtype", "float32",
                       "--methods", "come", "--json", str(out), "--md", str(tmp_path / "p.md")]) == 0
    report = json.loads(out.read_text())
    records = {(r["method"], r["setting"]): r for r in report["records"]}
    assert {m for m, _ in records} == {"unpruned", "come"} and len(records) == 1 + 3  # every setting of the chosen methods
    for r in records.values():
        assert {"speedup", "abs_rel", "rot_err_deg", "rot_dev_deg", "depth_dev", "flops", "peak_tensor_bytes"} <= r.keys()
    base = records[("unpruned", "-")]
    assert base["speedup"] == 1.0 and base["rot_dev_deg"] < 1e-6 and base["depth_dev"] == 0.0
    from pacegeo.pruning.flops import forward_flops

    assert base["flops"] == forward_flops(model.config, 3, 84, 84)["total"]
    assert records[("come", "0.9")]["flops"] < base["flops"]  # merged cells: fewer tokens downstream
    assert "dominate" in (tmp_path / "p.md").read_text()
    # the markdown again from the report alone, measuring nothing
    assert peers.main(["--json", str(out), "--from-json", "--md", str(tmp_path / "again.md")]) == 0
    assert (tmp_path / "again.md").read_text() == (tmp_path / "p.md").read_text()
