"""The reliability catalogue (eval/reliability.py), judged by pacegeo.evaluation.reliability: no
traceback, no destroyed file, no partial output set, for every case; and the judge itself catches
what it is meant to."""

import os
from pathlib import Path

import pytest

from helpers import load_script
from pacegeo.evaluation.reliability import judge, snapshot

REPO_ROOT = Path(__file__).resolve().parents[1]
reliability = load_script(REPO_ROOT / "eval" / "reliability.py", "eval")
CASES = reliability.catalogue()

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return reliability.build_base(tmp_path_factory.mktemp("reliability") / "base")


def run_case(case, base: Path, tmp_path: Path, subprocess: bool = False) -> dict:
    work = tmp_path / "work"
    reliability._setup(case, base, work)
    before = snapshot(work)
    run = reliability.run_subprocess if subprocess else reliability.run_in_process
    code, err, uncaught = run(case, work)
    return judge(case, work, before, snapshot(work), code, err, uncaught)


def test_the_catalogue_covers_every_class():
    groups = {case.group for case in CASES}
    assert groups == {"collision", "arguments", "names", "inputs", "faults", "success", "api"}
    assert len(CASES) >= 170


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_ends_cleanly(case, base, tmp_path):
    verdict = run_case(case, base, tmp_path)
    assert not verdict["traceback"], verdict
    assert verdict["destroyed"] == [], verdict
    assert verdict["partial"] == [], verdict
    assert verdict["expected"], verdict


def test_the_judge_sees_a_destroyed_input(base, tmp_path, monkeypatch):
    """With the output check switched off, the COLMAP-over-input case destroys the input photos;
    the judge must say so (the catalogue cannot pass vacuously)."""
    import pacegeo.cli
    import pacegeo.io.outputs

    case = next(c for c in CASES if c.name == "colmap export is the input folder (--overwrite)")
    monkeypatch.setattr(pacegeo.io.outputs, "check_outputs", lambda outputs, inputs=(), overwrite=False: list(outputs))
    monkeypatch.setattr(pacegeo.io.outputs.OutputSet, "__enter__", _enter_without_checks)
    verdict = run_case(case, base, tmp_path)
    assert any(p.startswith("scene_colmap/frame_") for p in verdict["destroyed"]), verdict
    assert not verdict["ok"]


def _enter_without_checks(self):
    import tempfile

    for spec in self.outputs:
        prefix = f".{spec.path.name}."
        if spec.kind == "folder":
            self._staged[spec.path] = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=spec.path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=spec.path.parent)
            os.close(fd)
            self._staged[spec.path] = Path(name)
    return self


def test_a_file_size_limit_in_a_real_process_leaves_nothing(base, tmp_path):
    """A real command under RLIMIT_FSIZE (writes fail as on a full disk): one line, nothing written."""
    case = next(c for c in reliability.catalogue(subprocess_only=True) if c.rlimit_fsize == 20_000 and "exporting" in c.name)
    verdict = run_case(case, base, tmp_path, subprocess=True)
    assert verdict["ok"], verdict
    assert "nothing was written" in verdict["message"]
