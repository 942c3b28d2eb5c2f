"""``pacegeo estimate``: the memory model from the command line, without weights."""

import json

import pytest
import torch

from pacegeo.backbone import vggt_1b
from pacegeo.cli import main
from pacegeo.memory import GIB, estimate_peak_memory

pytestmark = pytest.mark.usefixtures("one_thread")

VGGT_ARGS = ["estimate", "--model", "vggt-1b", "--size", "518x392", "--device", "cuda", "--dtype", "bfloat16"]


def _run(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_report_is_the_memory_model(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # config only: no weights looked up
    code, out, err = _run(VGGT_ARGS + ["--frames", "1200", "--keep", "0.3", "--memory", "40GiB", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    expected = estimate_peak_memory(vggt_1b(), 1200, (392, 518), 0.3, torch.bfloat16, device="cuda")
    assert report["peak_bytes"] == expected.total
    assert report["fits"] == (expected.total <= 40 * GIB)
    at_max = estimate_peak_memory(vggt_1b(), report["max_frames"], (392, 518), 0.3, torch.bfloat16, device="cuda")
    beyond = estimate_peak_memory(vggt_1b(), report["max_frames"] + 1, (392, 518), 0.3, torch.bfloat16, device="cuda")
    assert at_max.total <= 40 * GIB < beyond.total
    needed = estimate_peak_memory(vggt_1b(), 1200, (392, 518), report["min_keep"], torch.bfloat16, device="cuda")
    assert needed.total <= 40 * GIB
    assert (report["width"], report["height"], report["dtype"], report["device"]) == (518, 392, "bfloat16", "cuda")


def test_text_report_says_fit_frames_and_keep(capsys):
    code, out, _ = _run(VGGT_ARGS + ["--frames", "5000", "--keep", "1", "--memory", "80GiB"], capsys)
    assert code == 0
    assert "peak memory:" in out and "fits in 80.0 GiB: no" in out
    assert "largest frame count that fits at keep 1:" in out and "keep needed for 5000 frames:" in out


def test_auto_dtype_without_a_gpu_assumes_bf16_and_says_so(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, _ = _run(["estimate", "--frames", "10", "--memory", "24GiB", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["dtype"] == "bfloat16" and "assumed" in report["note"]


@pytest.mark.parametrize("extra,message", [
    (["--frames", "0"], "--frames"),
    (["--frames", "10", "--keep", "1.5"], "keep"),
    (["--frames", "10", "--memory", "lots"], "memory"),
    (["--frames", "10", "--size", "500x400"], "multiples"),
    (["--frames", "10", "--model", "no-such-model"], "no-such-model"),
    (["--frames", "ten"], "--frames"),
    (["--frames", "10", "--device", "tpu"], "--device"),
])
def test_bad_arguments_are_one_line_and_exit_2(capsys, extra, message):
    code, out, err = _run(["estimate", "--memory", "8GiB", *extra], capsys)
    lines = [line for line in err.splitlines() if line]
    assert code == 2 and out == ""
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err
