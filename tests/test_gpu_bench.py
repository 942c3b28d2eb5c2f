"""eval/gpu_bench.py end to end on a small random model on the CPU (the GPU grid's structure and arithmetic)."""

import json
import statistics
from pathlib import Path

import pytest
import torch

from helpers import load_script

pytestmark = pytest.mark.usefixtures("one_thread")
SCRIPT = Path(__file__).resolve().parents[1] / "eval" / "gpu_bench.py"


def test_bench_records_speedups_ideal_ratios_and_skips(tmp_path):
    from pacegeo.backbone import pacegeo_tiny
    from pacegeo.memory import estimate_peak_memory, parameter_bytes
    from pacegeo.pruning.flops import forward_flops

    bench = load_script(SCRIPT, "pacegeo_eval")
    config = pacegeo_tiny()
    kwargs = dict(weights_bytes=parameter_bytes(config), device="cpu", post=False, outputs_on_host=False)
    def est(frames, keep):
        return estimate_peak_memory(config, frames, (56, 70), keep, torch.bfloat16, **kwargs).total

    large = est(3, 1.0)
    limit = max(est(2, 1.0), est(2, 0.5), est(3, 0.5))  # frames 3 at keep 1 does not fit, the rest does
    assert large > limit
    argv = ["--model", "tiny-random", "--device", "cpu", "--frames", "2", "3", "--keep", "1", "0.5", "--size", "70x56",
            "--repeats", "2", "--warmup", "0", "--memory", str(limit), "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.md").read_text().startswith("# tiny-random")
    records = {(r["frames"], r["keep"]): r for r in report["records"]}
    assert set(records) == {(2, 1.0), (2, 0.5), (3, 1.0), (3, 0.5)}
    full, pruned = records[2, 1.0], records[2, 0.5]
    for r in (full, pruned):
        assert len(r["times_s"]) == 2 and r["median_s"] == statistics.median(r["times_s"])
    assert full["ideal_speedup"] == 1.0 and full["speedup"] == 1.0 and full["ratio_to_ideal"] == 1.0
    ideal = forward_flops(config, 2, 56, 70)["total"] / forward_flops(config, 2, 56, 70, 0.5, mode="training-free")["total"]
    assert pruned["ideal_speedup"] == pytest.approx(ideal)
    assert pruned["speedup"] == pytest.approx(full["median_s"] / pruned["median_s"])
    assert pruned["ratio_to_ideal"] == pytest.approx(pruned["speedup"] / ideal)
    skipped = records[3, 1.0]
    assert "exceeds" in skipped["skipped"] and skipped["median_s"] is None and skipped["estimate_bytes"] == large
    assert records[3, 0.5]["skipped"] is None and records[3, 0.5]["speedup"] is None  # no keep-1 baseline at 3 frames


def test_bench_skips_cells_beyond_the_time_budget(tmp_path):
    bench = load_script(SCRIPT, "pacegeo_eval")
    argv = ["--model", "tiny-random", "--device", "cpu", "--frames", "2", "--keep", "1", "0.5", "--size", "70x56",
            "--repeats", "1", "--warmup", "0", "--budget", "0", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    records = json.loads((tmp_path / "bench.json").read_text())["records"]
    assert records[0]["skipped"] is None  # nothing measured yet: nothing to predict from
    assert "time left" in records[1]["skipped"]
