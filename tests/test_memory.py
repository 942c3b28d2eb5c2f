"""The peak-memory model (pacegeo.memory) against the tensor bytes the code really allocates."""

import pytest
import torch

import pacegeo.stages as stages_module
from pacegeo.backbone import VGGT, tiny, vggt_1b
from pacegeo.errors import InputError
from pacegeo.memory import estimate_peak_memory, fit_report, max_frames, parse_bytes
from pacegeo.memtrace import TensorMemoryTracker
from pacegeo.pace import PaceVGGT

pytestmark = pytest.mark.usefixtures("one_thread")

# StageClock marks -> the model's phase that starts there
NEXT_PHASE = {"embed": "select", "scorer": "select", "select": "aa", "aa": "heads", "restoration": "heads", "heads": "heads"}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VGGT(tiny(dino_depth=1)).eval()


def _traced_phases(monkeypatch, pace, images, keep):
    tracker = TensorMemoryTracker()
    mark = stages_module.StageClock.mark

    def spy(self, stage):
        mark(self, stage)
        tracker.mark("aa" if keep >= 1 and stage == "embed" else NEXT_PHASE[stage])

    monkeypatch.setattr(stages_module.StageClock, "mark", spy)
    tracker.mark("embed")
    with torch.inference_mode(), tracker:
        pace(images, keep=keep, timings=True)
    return tracker


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("keep", [1.0, 0.5])
@pytest.mark.parametrize("frames,hw", [(16, (56, 70)), (12, (84, 112))])
def test_every_phase_matches_the_tensor_bytes_the_forward_allocates(monkeypatch, model, dtype, keep, frames, hw):
    images = torch.rand(1, frames, 3, *hw)
    traced = _traced_phases(monkeypatch, PaceVGGT(model, mode="training-free", amp_dtype=dtype), images, keep)
    amp = None if dtype == "float32" else torch.bfloat16
    est = estimate_peak_memory(model.config, frames, hw, keep, amp, device="cpu", post=False, live_only=True)
    phases = dict(est.phases)
    for phase in ("embed", "aa", "heads"):
        assert phases[phase] == pytest.approx(traced.phase_peaks[phase], rel=0.12), phase
    if keep < 1:
        assert phases["select"] == pytest.approx(traced.phase_peaks["select"], rel=0.3)
    assert est.activations == pytest.approx(traced.peak, rel=0.12)


@pytest.mark.parametrize("heads_chunk", [4, 8, 16])
def test_heads_phase_matches_for_chunks_of_several_frames(monkeypatch, model, heads_chunk):
    """Chunks below, at and above the DPT heads' own chunk of 8 (16: one chunk holds every frame)."""
    images = torch.rand(1, 16, 3, 56, 70)
    pace = PaceVGGT(model, mode="training-free", amp_dtype="float32", heads_chunk=heads_chunk)
    traced = _traced_phases(monkeypatch, pace, images, 0.5)
    est = estimate_peak_memory(model.config, 16, (56, 70), 0.5, None, device="cpu", post=False, live_only=True,
                               heads_chunk=heads_chunk)
    assert dict(est.phases)["heads"] == pytest.approx(traced.phase_peaks["heads"], rel=0.12)


def test_embed_and_select_phases_match_for_chunks_of_frames(monkeypatch, model):
    """The embedding, scoring and selection in chunks of 4 of 16 frames (feature buffer filled chunk by chunk)."""
    images = torch.rand(1, 16, 3, 56, 70)
    pace = PaceVGGT(model, mode="training-free", amp_dtype="float32", frames_chunk=4)
    traced = _traced_phases(monkeypatch, pace, images, 0.5)
    est = dict(estimate_peak_memory(model.config, 16, (56, 70), 0.5, None, device="cpu", post=False, live_only=True,
                                    frames_chunk=4).phases)
    assert est["embed"] == pytest.approx(traced.phase_peaks["embed"], rel=0.12)
    assert est["select"] == pytest.approx(traced.phase_peaks["select"], rel=0.3)


def test_pruning_shrinks_the_stack_and_its_entries():
    config = vggt_1b()
    full = estimate_peak_memory(config, 500, (392, 518), 1.0, torch.bfloat16, device="cuda")
    pruned = estimate_peak_memory(config, 500, (392, 518), 0.3, torch.bfloat16, device="cuda")
    assert pruned.stack < 0.5 * full.stack
    assert pruned.total < full.total
    more = estimate_peak_memory(config, 1000, (392, 518), 0.3, torch.bfloat16, device="cuda")
    assert more.total > pruned.total and more.inputs == 2 * pruned.inputs


def test_cuda_heads_are_float32_and_cpu_heads_follow_autocast():
    config = tiny(dino_depth=1)
    cuda = dict(estimate_peak_memory(config, 8, (140, 182), 1.0, torch.bfloat16, device="cuda").phases)
    cpu = dict(estimate_peak_memory(config, 8, (140, 182), 1.0, torch.bfloat16, device="cpu", post=False, live_only=True).phases)
    fp32 = dict(estimate_peak_memory(config, 8, (140, 182), 1.0, None, device="cpu", post=False, live_only=True).phases)
    assert cuda["heads"] == fp32["heads"] and cpu["heads"] < fp32["heads"]


def test_cpu_estimate_adds_one_chunk_of_allocator_slack_from_the_heads_on():
    config = tiny(dino_depth=1)
    live = dict(estimate_peak_memory(config, 8, (140, 182), 0.3, device="cpu", live_only=True).phases)
    resident = dict(estimate_peak_memory(config, 8, (140, 182), 0.3, device="cpu").phases)
    assert resident["heads"] - live["heads"] == resident["post"] - live["post"] > 0
    assert all(resident[p] == live[p] for p in ("embed", "select", "aa"))


def test_weights_default_to_the_float32_parameter_count():
    config = tiny()
    est = estimate_peak_memory(config, 2, (56, 70))
    assert est.weights == 4 * sum(p.numel() for p in VGGT(config).parameters())
    assert est.total == est.weights + est.inputs + est.runtime + est.activations


def test_fit_report_finds_the_largest_frame_count_and_the_keep_that_fit():
    config = vggt_1b()

    def estimate_for(frames, keep):
        return estimate_peak_memory(config, frames, (392, 518), keep, torch.bfloat16, device="cuda")

    memory = 40 * 1024**3
    report = fit_report(estimate_for, 1500, 0.3, memory)
    assert report["peak_bytes"] == estimate_for(1500, 0.3).total
    most = report["max_frames"]
    assert estimate_for(most, 0.3).total <= memory < estimate_for(most + 1, 0.3).total
    assert report["fits"] == (most >= 1500)
    keep = report["min_keep"]
    assert estimate_for(1500, keep).total <= memory
    assert all(estimate_for(1500, k / 100).total > memory for k in range(int(round(keep * 100)) + 1, 101))


def test_max_frames_edges():
    assert max_frames(lambda s: s <= 37) == 37
    assert max_frames(lambda s: False) == 0
    assert max_frames(lambda s: True, 1, 50) == 50


@pytest.mark.parametrize("text,expected", [("80GiB", 80 * 1024**3), ("24 GB", 24 * 10**9), ("512MiB", 512 * 1024**2), ("1000", 1000)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "0GiB", "-1GB", "80 parsecs", "GiB"])
def test_parse_bytes_rejects_nonsense(text):
    with pytest.raises(InputError):
        parse_bytes(text)
