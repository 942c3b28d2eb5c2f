"""The one precision rule (pacegeo.precision) and the autocast region it sets for every path."""

import pytest
import torch

import pacegeo.precision as precision
from pacegeo.backbone import VGGT, tiny
from pacegeo.errors import InputError
from pacegeo.pace import PaceVGGT
from pacegeo.precision import dtype_name, resolve_dtype

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


@pytest.fixture
def native_bf16(monkeypatch):
    """Set what the CPU detection reports."""

    def set_native(value: bool):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: value)

    return set_native


def test_auto_on_cpu_is_bf16_only_with_native_bf16(native_bf16):
    native_bf16(True)
    assert resolve_dtype("auto", CPU) is torch.bfloat16
    native_bf16(False)
    assert resolve_dtype("auto", CPU) is None


@pytest.mark.parametrize("name,expected", [
    ("float32", None), ("fp32", None), (None, None), (torch.float32, None),
    ("bfloat16", torch.bfloat16), ("BF16", torch.bfloat16), (torch.bfloat16, torch.bfloat16),
])
def test_explicit_names_resolve(name, expected):
    assert resolve_dtype(name, CPU) is expected


@pytest.mark.parametrize("name", ["float16", "fp16", "int8", "double", 3])
def test_bad_or_unsupported_dtypes_are_input_errors(name):
    with pytest.raises(InputError) as err:
        resolve_dtype(name, CPU)
    assert "\n" not in str(err.value)


def test_cpu_detection_readscpu_flags(monkeypatch):
    precision.cpu_has_native_bf16.cache_clear()
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert precision.cpu_has_native_bf16()
    precision.cpu_has_native_bf16.cache_clear()
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert not precision.cpu_has_native_bf16()
    precision.cpu_has_native_bf16.cache_clear()


def test_dtype_names():
    assert dtype_name(None) == "float32" and dtype_name(torch.bfloat16) == "bfloat16"


def _autocast_dtypes(monkeypatch, model):
    """The autocast state seen by the DPT heads' first conv, per call."""
    seen = []
    conv = model.depth_head.projects[0]
    forward = conv.forward

    def spy(x):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(x)

    monkeypatch.setattr(conv, "forward", spy)
    return seen


@pytest.mark.parametrize("keep", [1.0, 0.3])
def test_heads_run_in_the_same_autocast_region_for_every_keep(monkeypatch, keep):
    torch.manual_seed(0)
    model = VGGT(tiny(dino_depth=1)).eval()
    seen = _autocast_dtypes(monkeypatch, model)
    images = torch.rand(1, 3, 3, 56, 70)
    with torch.no_grad():
        out = PaceVGGT(model, mode="training-free", amp_dtype="bfloat16")(images, keep=keep)
        plain = PaceVGGT(model, mode="training-free", amp_dtype="float32")(images, keep=keep)
    assert seen[0] == (True, torch.bfloat16)  # the bf16 forward: heads under autocast
    assert seen[-1][0] is False  # the float32 forward: no autocast
    assert out["depth"].dtype == torch.bfloat16 and plain["depth"].dtype == torch.float32
    # bf16 moves the outputs a little, not a lot
    rel = (out["depth"].float() - plain["depth"]).abs() / plain["depth"]
    assert float(rel.median()) < 0.05


def test_float32_islands_stay_float32_inside_autocast(monkeypatch):
    """Scorer, merge assignment and interpolation weights are float32 inside a bf16 forward."""
    from pacegeo.pruning import FeatureGuidedRestoration, ScorerConfig, TokenScorer

    torch.manual_seed(0)
    model = VGGT(tiny(dino_depth=1)).eval()
    pace = PaceVGGT(model, scorer=TokenScorer(ScorerConfig.for_backbone(model)), mode="learned", amp_dtype="bfloat16")
    dtypes = {}
    weights = FeatureGuidedRestoration.interpolation_weights

    def weights_spy(self, *args, **kwargs):
        out = weights(self, *args, **kwargs)
        dtypes["weights"] = out.dtype
        dtypes["weights_autocast"] = torch.is_autocast_enabled("cpu")
        return out

    monkeypatch.setattr(FeatureGuidedRestoration, "interpolation_weights", weights_spy)
    with torch.no_grad():
        out = pace(torch.rand(1, 2, 3, 56, 70), keep=0.3)
        feats = torch.randn(1, 2, 20, 64)
        with precision.autocast(CPU, torch.bfloat16):
            scores = pace.score(feats, (4, 5))
    assert scores.dtype == torch.float32
    assert dtypes == {"weights": torch.float32, "weights_autocast": False}
    assert out["depth"].dtype == torch.bfloat16  # the heads themselves ran in bf16


def test_precision_report_measures_known_deviations():
    import numpy as np
    from pathlib import Path

    from helpers import load_script

    script = load_script(Path(__file__).resolve().parents[1] / "eval" / "precision.py", "pacegeo_eval")
    rng = np.random.default_rng(0)
    extrinsics = np.tile(np.eye(4)[:3], (3, 1, 1)).astype(np.float32)
    extrinsics[1:, :3, 3] = rng.normal(size=(2, 3))
    ref = {"depth": rng.uniform(1, 2, (3, 4, 5)), "points": rng.normal(size=(3, 4, 5, 3)), "extrinsics": extrinsics}
    same = script.deviation(ref, ref)
    assert all(abs(v) < 1e-3 for v in same.values())  # angles: acos rounding only
    scaled = dict(ref, depth=ref["depth"] * 1.01)
    assert script.deviation(scaled, ref)["depth_rel_median"] == pytest.approx(0.01)
    report = {"cpu_native_bf16": True, "torch": "x", "cases": [{"case": "x", "frames": 3, "width": 5, "height": 4,
              "bf16_vs_fp32": {"1": script.deviation(scaled, ref)}}]}
    assert script.verdict(report) == (True, [])
    report["cases"][0]["bf16_vs_fp32"]["1"] = script.deviation(dict(ref, depth=ref["depth"] * 1.05), ref)
    small, problems = script.verdict(report)
    assert not small and "depth_rel_median" in problems[0]
    assert "on this CPU: float32" in script.markdown(report)
