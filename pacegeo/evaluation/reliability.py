"""Judging reliability cases: what a run of a command or API call may and may not leave behind.

A :class:`Case` is one run in a work folder. :func:`judge` compares snapshots of that folder taken
before and after the run (:func:`snapshot`) and gives the verdict on four counts:

* **traceback**: the run ends with exit code 0, or with exactly one ``pacegeo: error: ...`` line and
  exit code 2; an uncaught exception, a traceback or an "internal error" line fails the case;
* **destroyed**: every file that existed before still has its content, unless it is one of the
  run's outputs and the run succeeded with ``--overwrite``;
* **partial**: a failed run leaves no new file or folder behind; a successful one writes every
  output it names; a killed run leaves each output with its previous or its complete new content;
* **expected**: the run fails (or succeeds) as the case says, with the expected message fragment.

The catalogue of cases and the code that runs them are in ``eval/reliability.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ERROR_PREFIX", "Case", "judge", "snapshot", "summary", "to_jsonable"]

ERROR_PREFIX = "pacegeo: error: "


@dataclass
class Case:
    """One run. ``argv`` items and paths are relative to the work folder (``{w}`` expands to it)."""

    name: str
    group: str
    argv: list[str] | None = None  # a CLI run
    api: str | None = None  # or the name of an API scenario (API_SCENARIOS)
    expect: str = "error"  # "error", "ok" or "any" (either, as long as it ends cleanly)
    fragment: str = ""  # expected in the error line
    outputs: tuple[str, ...] = ()  # what a successful run writes (all of them)
    existing: dict[str, bytes] = field(default_factory=dict)  # files made before the run
    fault: tuple[str, str] | None = None  # (patch target, "memory" | "disk") during the run
    links: dict[str, str] = field(default_factory=dict)  # symlinks made before the run: name -> target
    rlimit_fsize: int | None = None  # subprocess only: RLIMIT_FSIZE in bytes
    rlimit_as: int | None = None  # subprocess only: RLIMIT_AS (address space) in bytes
    kill_after: float | None = None  # subprocess only: SIGKILL after this many seconds


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> content digest (``dir`` for folders, ``link:<target>`` for links)."""
    state = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                state[rel] = f"link:{os.readlink(path)}"
            elif path.is_dir():
                state[rel] = "dir"
            else:
                state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def to_jsonable(value):
    """``json.dumps`` default for a :class:`Case`'s fields (bytes, tuples)."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(type(value))


def judge(case: Case, work: Path, before: dict[str, str], after: dict[str, str], code, err: str, uncaught: str) -> dict:
    """The case's verdict (see the module docstring)."""
    lines = [line for line in err.strip().splitlines() if line and not line.startswith("pacegeo: warning:")
             and not line.startswith("pacegeo: note:")]
    killed = case.kill_after is not None and code is None
    traceback = bool(uncaught) or "Traceback" in err or "internal error" in err
    if not killed and not traceback:
        if code == 2:
            traceback = len(lines) != 1 or not lines[0].startswith(ERROR_PREFIX)
        elif code != 0:
            traceback = True
    outputs = set(case.outputs)

    def is_output(rel: str) -> bool:
        return any(rel == o or rel.startswith(o + "/") for o in outputs)

    succeeded = code == 0
    overwrite = case.argv is not None and "--overwrite" in case.argv
    destroyed = []
    for rel, digest in before.items():
        if after.get(rel) == digest:
            continue
        replaced_by_run = succeeded and overwrite and is_output(rel)
        if killed:  # a killed run: an output holds its previous or its complete new content
            replaced_by_run = rel in after and _complete(work / rel)
        if not replaced_by_run:
            destroyed.append(rel)
    new = sorted(set(after) - set(before))
    if succeeded:
        partial = [o for o in outputs if o not in after] + [p for p in new if not is_output(p)]
    elif killed:
        # hidden temporaries (".<name>.<random>.tmp", and what is inside them) may stay after kill -9;
        # an output that appeared must be complete
        partial = [p for p in new if not any(part.startswith(".") for part in Path(p).parts)
                   and not (is_output(p) and ((work / p).is_dir() or _complete(work / p)))]
    else:
        partial = new
    kill_state = ""
    if killed:  # which outputs hold their previous and which their new content
        states = set()
        for out in outputs:
            if out in before and before[out] != "dir":
                states.add("previous" if after.get(out) == before[out] else "new")
            else:
                states.add("new" if out in after else "previous")
        kill_state = states.pop() if len(states) == 1 else "mixed"
    expected = True if killed or case.expect == "any" else (case.expect == "ok") == succeeded
    if not succeeded and not killed and case.fragment and not (lines and case.fragment in lines[0]):
        expected = False
    return {
        "name": case.name, "group": case.group, "code": code, "message": lines[0] if lines else "", "uncaught": uncaught,
        "traceback": traceback, "destroyed": destroyed, "partial": partial, "expected": expected, "killed": killed,
        "kill_state": kill_state,
        "ok": not traceback and not destroyed and not partial and expected,
    }


def _complete(path: Path) -> bool:
    """Whether a file a killed run changed is complete (readable as its format)."""
    try:
        if path.suffix == ".ply":
            import trimesh

            return len(trimesh.load(path).vertices) > 0
        if path.suffix == ".npz":
            with np.load(path) as data:
                return "depth" in data.files
        if path.suffix == ".json":
            return isinstance(json.loads(path.read_text()), dict)
        if path.suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                image.load()
            return True
        if path.suffix == ".glb":
            import trimesh

            return len(trimesh.load(path).geometry) > 0
        return path.parent.name.endswith("_colmap") and path.stat().st_size > 0
    except Exception:  # noqa: BLE001 - unreadable means incomplete
        return False


def summary(results: list[dict]) -> dict:
    """Counts over a list of :func:`judge` verdicts."""
    return {
        "cases": len(results),
        "tracebacks": sum(r["traceback"] for r in results),
        "files_destroyed": sum(len(r["destroyed"]) for r in results),
        "partial_output_sets": sum(bool(r["partial"]) for r in results),
        "unexpected_outcomes": sum(not r["expected"] for r in results),
        "failed_cases": [r["name"] for r in results if not r["ok"]],
        "by_group": dict(Counter(r["group"] for r in results)),
    }
