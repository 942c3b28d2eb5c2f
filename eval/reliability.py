"""Reliability catalogue: bad inputs, outputs that collide with inputs, failures while writing.

Every case runs a command (``pacegeo reconstruct|map|localize|synth``) or a Python API call in a
fresh work folder holding frames, a small random model and a map, and is judged by
:func:`pacegeo.evaluation.reliability.judge`: no traceback, no destroyed file, no partial set of
outputs, the expected outcome and message.

Faults (out of memory, disk full) are injected into the exporters and the synthetic renderer.
``--subprocess`` runs each case in its own interpreter (a real command line, real tracebacks), and
adds cases that only a separate process can show: writes beyond a file-size limit (``RLIMIT_FSIZE``,
a full disk as the writer sees it), address-space limits, and ``kill -9`` at several moments of a
run over existing outputs (each output must then hold its previous or its complete new content).

    python eval/reliability.py --json eval/results/reliability.json --subprocess
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

from pacegeo.evaluation.reliability import ERROR_PREFIX, Case, judge, snapshot, summary, to_jsonable

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# The work folder every case starts from
# --------------------------------------------------------------------------------------------

def _write_frames(folder: Path, count: int = 3, size_hw: tuple[int, int] = (56, 70)) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : size_hw[0], 0 : size_hw[1]]
    for i in range(count):
        rgb = np.stack([(xx * 3 + 20 * i) % 256, (yy * 4) % 256, (xx + yy + 40 * i) % 256], axis=-1)
        rgb = np.clip(rgb + rng.integers(0, 40, size=rgb.shape), 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"frame_{i:02d}.png")


def build_base(folder: Path) -> Path:
    """``frames/`` (3 PNGs), ``model.safetensors`` (random tiny backbone, 70 px input),
    ``map.pgmap`` (a map of the frames), ``out/`` (empty). Returns ``folder``."""
    import torch

    from pacegeo.backbone import VGGT, tiny
    from pacegeo.hub import save_backbone
    from pacegeo.pipeline import Pipeline

    folder.mkdir(parents=True, exist_ok=True)
    _write_frames(folder / "frames")
    torch.manual_seed(0)
    save_backbone(VGGT(tiny()).eval(), folder / "model.safetensors",
                  extra={"preprocess": json.dumps({"target_size": 70, "mode": "crop"})})
    pipe = Pipeline.from_pretrained(folder / "model.safetensors", pruner="training-free", device="cpu")
    pipe.build_map(folder / "frames", keep=0.5, vpr="gem").save(folder / "map.pgmap")
    (folder / "out").mkdir()
    return folder


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


M = "model.safetensors"
RECON = ["reconstruct", "frames", "--model", M, "--conf", "0"]
EXPORT_NAMES = {"ply": "out/scene.ply", "glb": "out/scene.glb", "colmap": "out/scene_colmap", "npz": "out/scene.npz",
                "cameras": "out/scene_cameras.json", "preview": "out/preview.png"}
ALL_EXPORTS = ["--export", "glb,colmap,npz,cameras", "--preview", "out/preview.png"]


def _collision_cases() -> list[Case]:
    """Outputs that are, contain or lie inside an input: refused with or without --overwrite."""
    cases = []
    # (name, argv, fragment); paths relative to the work folder
    table = [
        ("colmap export is the input folder", ["reconstruct", "scene_colmap", "--model", M, "-o", "scene.ply", "--export", "colmap"], "is the input"),
        ("preview is an input image", RECON + ["-o", "out/scene.ply", "--preview", "frames/frame_00.png"], "inside the input folder"),
        ("preview named like an input image elsewhere", ["reconstruct", "frames/frame_00.png", "--model", M, "-o", "out/s.ply", "--preview", "frames/frame_00.png"], "is the input"),
        ("point cloud inside the input folder", RECON + ["-o", "frames/scene.ply"], "inside the input folder"),
        ("npz export over the model", ["reconstruct", "frames", "--model", "model.npz", "-o", "model.ply", "--export", "npz"], "is the input"),
        ("glb beside, input folder named like it", ["reconstruct", "scene.glb", "--model", M, "-o", "scene.ply", "--export", "glb"], "is the input"),
        ("cameras json over the model file", ["reconstruct", "frames", "--model", "scene_cameras.json", "-o", "scene.ply", "--export", "cameras"], "is the input"),
        ("colmap folder contains the input", ["reconstruct", "scene_colmap/frames", "--model", M, "-o", "scene.ply", "--export", "colmap"], "contains the input"),
        ("preview through a link to an input image", RECON + ["-o", "out/scene.ply", "--preview", "link.png"], "input"),
        ("output folder is a link into the input", RECON + ["-o", "linkdir/scene.ply"], "inside the input folder"),
        ("map output inside the frames", ["map", "frames", "--model", M, "-o", "frames/room.pgmap"], "inside the input folder"),
        ("map output over the model", ["map", "frames", "--model", "room.pgmap", "-o", "room.pgmap"], "is the input"),
        ("localize json over the query image", ["localize", "map.pgmap", "q.png", "--model", M, "--json", "q.png"], "must end in .json"),
        ("localize json inside the query folder", ["localize", "map.pgmap", "frames", "--model", M, "--json", "frames/report.json"], "inside the input folder"),
        ("localize json over the map", ["localize", "map.json", "frames/frame_01.png", "--model", M, "--json", "map.json"], "is the input"),
    ]
    for name, argv, fragment in table:
        for overwrite in (False, True):
            case = Case(f"{name}{' (--overwrite)' if overwrite else ''}", "collision", argv + (["--overwrite"] if overwrite else []),
                        fragment=fragment)
            if "link.png" in argv:
                case.links["link.png"] = "frames/frame_00.png"
            if "linkdir/scene.ply" in argv:
                case.links["linkdir"] = "frames"
            cases.append(case)
    return cases


def _prepare_collision_inputs(work: Path) -> None:
    """Extra inputs some collision cases read: copies of the frames, model and map under other names."""
    shutil.copytree(work / "frames", work / "scene_colmap")
    shutil.copytree(work / "frames", work / "scene_colmap" / "frames")
    shutil.copytree(work / "frames", work / "scene.glb")
    shutil.copy(work / M, work / "model.ply")
    shutil.copy(work / M, work / "model.npz")
    shutil.copy(work / "frames" / "frame_00.png", work / "q.png")
    shutil.copy(work / M, work / "scene_cameras.json")
    shutil.copy(work / M, work / "room.pgmap")
    shutil.copy(work / "map.pgmap", work / "map.json")


def _argument_cases() -> list[Case]:
    """Bad option values: one line naming the flag, before any work."""
    bad = {
        "--keep": ["0", "-0.5", "1.5", "nan", "inf"],
        "--frames": ["0", "-3"],
        "--stride": ["0"],
        "--fps": ["0", "-1", "nan", "inf"],
        "--conf": ["-1", "nan", "inf"],
        "--conf-percentile": ["100", "-5", "nan"],
        "--target-size": ["13", "0", "-14"],
        "--max-points": ["0", "-1"],
        "--seed": ["-1", str(2**63), str(10**30)],
        "--export": ["obj", "ply,foo"],
        "--pruner": ["nonsense", "missing.safetensors", "dir/missing.safetensors"],
        "--model": ["nonsense", "missing.safetensors", "./nowhere/model.pt"],
        "--device": ["tpu", "cuda:7"],
    }
    cases = []
    for flag, values in bad.items():
        for value in values:
            cases.append(Case(f"reconstruct {flag} {value}", "arguments", RECON + ["-o", "out/scene.ply", flag, value]))
    cases.append(Case("reconstruct --seed -5 --max-points 10", "arguments", RECON + ["-o", "out/s.ply", "--seed", "-5", "--max-points", "10"], fragment="--seed"))
    for argv in (["--keep", "2"], ["--chunk", "1"], ["--chunk", "4", "--overlap", "4"], ["--overlap", "2"], ["--seed", "-1"],
                 ["--seed", str(2**64)], ["--frames", "0"], ["--target-size", "15"]):
        cases.append(Case(f"map {' '.join(argv)}", "arguments", ["map", "frames", "--model", M, "-o", "out/m.pgmap", *argv]))
    for argv in (["--keep", "0"], ["--top-k", "0"], ["--seed", "-2"], ["--seed", str(2**70)]):
        cases.append(Case(f"localize {' '.join(argv)}", "arguments", ["localize", "map.pgmap", "frames/frame_01.png", "--model", M, *argv]))
    for argv in (["--size", "100000x100000"], ["--size", "0x0"], ["--size", "640"], ["--frames", "0"], ["--scenes", "0"],
                 ["--seed", "-1"], ["--seed", str(2**63 - 1), "--scenes", "2"], ["--seed", str(10**25)]):
        cases.append(Case(f"synth {' '.join(argv)}", "arguments", ["synth", "-o", "out/synth", "-q", *argv]))
    cases.append(Case("reconstruct --frames with --stride", "arguments", RECON + ["-o", "out/s.ply", "--frames", "2", "--stride", "2"]))
    cases.append(Case("reconstruct --keep 0.3 --pruner none", "arguments", RECON + ["-o", "out/s.ply", "--keep", "0.3", "--pruner", "none"]))
    return cases


def _name_cases() -> list[Case]:
    long_name = "n" * 250 + ".ply"  # valid (254 bytes), but its temporary name is not
    return [
        Case("output name over the file-system limit", "names", RECON + ["-o", "out/" + "x" * 300 + ".ply"], fragment="too long"),
        Case("valid name whose temporary name is too long", "names", RECON + ["-o", "out/" + long_name], fragment="too long"),
        Case("export name too long", "names", RECON + ["-o", "out/" + "y" * 235 + ".ply", "--export", "cameras"], fragment="too long"),
        Case("path too long", "names", RECON + ["-o", "out/" + "/".join(["d" * 200] * 25) + "/s.ply"], fragment="cannot use"),
        Case("output is not a .ply", "names", RECON + ["-o", "out/scene.obj"], fragment=".ply"),
        Case("preview is not a .png", "names", RECON + ["-o", "out/scene.ply", "--preview", "out/p.jpg"], fragment=".png"),
        Case("map output is not a .pgmap", "names", ["map", "frames", "--model", M, "-o", "out/m.npz"], fragment=".pgmap"),
        Case("report is not a .json", "names", ["localize", "map.pgmap", "frames/frame_00.png", "--model", M, "--json", "out/r.txt"], fragment=".json"),
        Case("output folder missing", "names", RECON + ["-o", "out/none/scene.ply"], fragment="does not exist"),
        Case("output folder is a file", "names", RECON + ["-o", "model.safetensors/scene.ply"], fragment="not a folder"),
        Case("output in /proc", "names", RECON + ["-o", "/proc/scene.ply"], fragment="no file can be created"),
        Case("preview in /sys", "names", RECON + ["-o", "out/scene.ply", "--preview", "/sys/p.png"], fragment="no file can be created"),
        Case("existing output without --overwrite", "names", RECON + ["-o", "out/scene.ply", *ALL_EXPORTS], fragment="--overwrite",
             existing={"out/scene_cameras.json": b"{}"}),
        Case("existing folder where the point cloud goes", "names", RECON + ["-o", "out/scene.ply", "--overwrite"], fragment="folder",
             existing={"out/scene.ply/keep.txt": b"mine"}),
        Case("existing file where the COLMAP folder goes", "names", RECON + ["-o", "out/scene.ply", "--export", "colmap", "--overwrite"],
             fragment="existing file", existing={"out/scene_colmap": b"mine"}),
        Case("map output exists", "names", ["map", "frames", "--model", M, "-o", "map.pgmap"], fragment="--overwrite"),
        Case("synth output is a file", "names", ["synth", "-o", "map.pgmap", "-q", "--size", "32x24", "--frames", "2"], fragment="not a folder"),
        Case("synth into /proc", "names", ["synth", "-o", "/proc/pacegeo_synth", "-q", "--size", "32x24", "--frames", "2"], fragment="cannot create"),
        Case("synth scene exists", "names", ["synth", "-o", "out", "-q", "--size", "32x24", "--frames", "2", "--seed", "7"],
             fragment="--overwrite", existing={"out/scene_00007/mine.txt": b"mine"}),
    ]


def _input_cases() -> list[Case]:
    awkward = [("missing input", "nowhere", "not found"), ("empty folder", "empty", "no image files"),
               ("junk images only", "junk", "no readable images"), ("a text file", "notes.txt", "unsupported input"),
               ("a junk video", "clip.mp4", "")]
    cases = [Case(f"reconstruct from {n}", "inputs", ["reconstruct", src, "--model", M, "-o", "out/s.ply"], fragment=f)
             for n, src, f in awkward]
    cases += [
        Case("strict run with a junk image among frames", "inputs", ["reconstruct", "mixed", "--model", M, "-o", "out/s.ply", "--strict"], fragment="junk.png"),
        Case("junk image among frames is skipped", "inputs", ["reconstruct", "mixed", "--model", M, "-o", "out/s.ply", "--conf", "0", "-q"],
             expect="ok", outputs=("out/s.ply",)),
        Case("model file is junk", "inputs", RECON[:2] + ["--model", "junk.safetensors", "-o", "out/s.ply"], fragment="not a valid safetensors"),
        Case("model .pt holds pickled objects", "inputs", RECON[:2] + ["--model", "objects.pt", "-o", "out/s.ply"], fragment="cannot read checkpoint"),
        Case("model has NaN weights", "inputs", RECON[:2] + ["--model", "nan.safetensors", "-o", "out/s.ply"], fragment="NaN"),
        Case("model file truncated", "inputs", RECON[:2] + ["--model", "truncated.safetensors", "-o", "out/s.ply"], fragment="cannot read checkpoint"),
        Case("pruner file is junk", "inputs", RECON + ["--pruner", "junk.safetensors", "-o", "out/s.ply"], fragment="pruner"),
        Case("map file is junk", "inputs", ["localize", "junk.pgmap", "frames/frame_00.png", "--model", M], fragment="not a pacegeo map"),
        Case("map holds pickled objects", "inputs", ["localize", "objects.pgmap", "frames/frame_00.png", "--model", M], fragment="not a pacegeo map"),
        Case("map file missing", "inputs", ["localize", "none.pgmap", "frames/frame_00.png", "--model", M], fragment="not found"),
        Case("query is not an image", "inputs", ["localize", "map.pgmap", "notes.txt", "--model", M], fragment="not an image"),
    ]
    return cases


def _prepare_input_files(work: Path) -> None:
    from safetensors.torch import load_file, save_file

    (work / "empty").mkdir()
    (work / "junk").mkdir()
    (work / "junk" / "a.png").write_bytes(b"not an image")
    (work / "junk" / "b.jpg").write_bytes(b"")
    shutil.copytree(work / "frames", work / "mixed")
    (work / "mixed" / "junk.png").write_bytes(os.urandom(512))
    (work / "notes.txt").write_text("hello")
    (work / "clip.mp4").write_bytes(os.urandom(2048))
    (work / "junk.safetensors").write_bytes(os.urandom(4096))
    (work / "junk.pgmap").write_bytes(b"PK\x03\x04" + os.urandom(1000))
    np.savez(work / "objects.npz", meta=np.array([{"format": 1}], dtype=object))
    os.replace(work / "objects.npz", work / "objects.pgmap")
    import pickle

    (work / "objects.pt").write_bytes(pickle.dumps({"weights": {"a": 1}, "fn": os.getcwd}))
    data = (work / M).read_bytes()
    (work / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    from safetensors import safe_open

    with safe_open(str(work / M), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(work / M))
    first = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[first] = state[first].clone().fill_(float("nan"))
    save_file(state, str(work / "nan.safetensors"), metadata=meta)


def _fault_cases() -> list[Case]:
    """Out of memory and a full disk in each exporter, with and without earlier outputs."""
    targets = {"ply": "pacegeo.io.export.ply_into", "glb": "pacegeo.io.export.glb_into",
               "colmap": "pacegeo.io.export.colmap_into", "npz": "pacegeo.io.export.npz_into",
               "cameras": "pacegeo.io.export.json_into", "preview": "pacegeo.io.preview.preview_into"}
    cases = []
    outputs = tuple(EXPORT_NAMES.values())
    for fmt, target in targets.items():
        for kind in ("memory", "disk"):
            cases.append(Case(f"{kind} fault in the {fmt} writer", "faults", RECON + ["-o", "out/scene.ply", *ALL_EXPORTS],
                              fault=(target, kind), fragment="nothing was written"))
            previous = {p: f"previous {p}".encode() for p in outputs if p != "out/scene_colmap"}
            previous["out/scene_colmap/cameras.txt"] = b"previous"
            cases.append(Case(f"{kind} fault in the {fmt} writer over earlier outputs", "faults",
                              RECON + ["-o", "out/scene.ply", *ALL_EXPORTS, "--overwrite"], fault=(target, kind),
                              fragment="nothing was written", existing=previous))
    for kind in ("memory", "disk"):
        cases.append(Case(f"{kind} fault writing the map", "faults", ["map", "frames", "--model", M, "-o", "out/m.pgmap"],
                          fault=("pacegeo.io.export.npz_into", kind), fragment="nothing was written"))
        cases.append(Case(f"{kind} fault writing the localize report", "faults",
                          ["localize", "map.pgmap", "frames/frame_01.png", "--model", M, "--json", "out/r.json"],
                          fault=("pacegeo.io.export.json_into", kind), fragment="nothing was written"))
        cases.append(Case(f"{kind} fault in synth's mesh writer", "faults",
                          ["synth", "-o", "out/synth", "-q", "--size", "32x24", "--frames", "2", "--scenes", "2"],
                          fault=("pacegeo.data.synth.writer.write_mesh_ply", kind), fragment="nothing was written"))
        cases.append(Case(f"{kind} fault in synth's frame writer", "faults",
                          ["synth", "-o", "out", "-q", "--size", "32x24", "--frames", "3", "--overwrite"],
                          fault=("pacegeo.data.synth.writer._write_frame", kind), fragment="nothing was written",
                          existing={"out/scene_00000/color/0.jpg": b"previous"}))
    return cases


def _success_cases() -> list[Case]:
    """Runs that must succeed and write every output."""
    return [
        Case("every export", "success", RECON + ["-o", "out/scene.ply", *ALL_EXPORTS], expect="ok", outputs=tuple(EXPORT_NAMES.values())),
        Case("every export over earlier ones", "success", RECON + ["-o", "out/scene.ply", *ALL_EXPORTS, "--overwrite"], expect="ok",
             outputs=tuple(EXPORT_NAMES.values()), existing={"out/scene.ply": b"old", "out/scene_colmap/x.txt": b"old"}),
        Case("largest seed", "success", RECON + ["-o", "out/scene.ply", "--seed", str(2**63 - 1), "--max-points", "100"], expect="ok",
             outputs=("out/scene.ply",)),
        Case("point cloud beside the input folder", "success", RECON + ["-o", "frames.ply", "--export", "colmap"], expect="ok",
             outputs=("frames.ply", "frames_colmap")),
        Case("map", "success", ["map", "frames", "--model", M, "-o", "out/m.pgmap", "-q"], expect="ok", outputs=("out/m.pgmap",)),
        Case("localize with a report", "success", ["localize", "map.pgmap", "frames/frame_01.png", "--model", M, "--json", "out/r.json", "-q"],
             expect="ok", outputs=("out/r.json",)),
        Case("synth two scenes and a preview", "success", ["synth", "-o", "out/synth", "-q", "--size", "32x24", "--frames", "2", "--scenes", "2", "--preview"],
             expect="ok", outputs=("out/synth",)),
    ]


# API scenarios: functions of the work folder; they raise PacegeoError for a refused call.

def _api_pipeline(work: Path):
    from pacegeo.pipeline import Pipeline

    return Pipeline.from_pretrained(work / M, pruner="training-free", device="cpu")


def _api_reconstruction(work: Path):
    return _api_pipeline(work).reconstruct(work / "frames", keep=0.5)


API_SCENARIOS = {
    "save_preview over an input image": lambda w: _api_reconstruction(w).save_preview(w / "frames" / "frame_00.png"),
    "save_ply inside the input folder": lambda w: _api_reconstruction(w).save_ply(w / "frames" / "s.ply", conf_threshold=0),
    "save_colmap over the input folder": lambda w: _api_reconstruction(w).save_colmap(w / "frames", overwrite=True, conf_threshold=0),
    "save_glb through a link into the input folder": lambda w: _api_reconstruction(w).save_glb(w / "ln" / "s.glb"),
    "export with a bad format": lambda w: _api_reconstruction(w).export({"obj": w / "out" / "s.obj"}),
    "export with a preview named .jpg": lambda w: _api_reconstruction(w).export({"preview": w / "out" / "p.jpg"}),
    "reconstruct with a huge seed": lambda w: _api_pipeline(w).reconstruct(w / "frames", seed=2**64),
    "reconstruct with a negative seed": lambda w: _api_pipeline(w).reconstruct(w / "frames", seed=-1),
    "reconstruct with keep 0": lambda w: _api_pipeline(w).reconstruct(w / "frames", keep=0),
    "point_cloud with a negative seed": lambda w: _api_reconstruction(w).point_cloud(max_points=5, seed=-5),
    "map saved over its frames folder": lambda w: _api_pipeline(w).build_map(w / "frames", vpr="gem").save(w / "frames" / "frame_00.png"),
    "build_map with a bad seed": lambda w: _api_pipeline(w).build_map(w / "frames", vpr="gem", seed=-3),
    "localize with a bad seed": lambda w: _api_pipeline(w).localize([w / "frames" / "frame_00.png"], store=w / "map.pgmap", seed=2**65),
    "synth with a huge size": lambda w: __import__("pacegeo.data.synth", fromlist=["x"]).generate_dataset(w / "out" / "s", 1, 2, 0, width=10**6, height=10**6),
    "synth with a seed range past the limit": lambda w: __import__("pacegeo.data.synth", fromlist=["x"]).generate_dataset(w / "out" / "s", 3, 2, 2**63 - 2, width=32, height=24),
}
API_FRAGMENTS = {"reconstruct with a huge seed": "seed must be", "save_preview over an input image": "inside the input folder",
                 "save_colmap over the input folder": "is the input", "save_glb through a link into the input folder": "inside the input folder"}


def _api_cases() -> list[Case]:
    return [Case(f"API: {name}", "api", api=name, fragment=API_FRAGMENTS.get(name, ""), links={"ln": "frames"})
            for name in API_SCENARIOS]


def catalogue(subprocess_only: bool = False) -> list[Case]:
    """Every case; with ``subprocess_only`` only those that need a separate process."""
    if subprocess_only:
        return _process_cases()
    return _collision_cases() + _argument_cases() + _name_cases() + _input_cases() + _fault_cases() + _success_cases() + _api_cases()


def _process_cases() -> list[Case]:
    cases = []
    for limit in (2_000, 20_000, 200_000):
        cases.append(Case(f"file-size limit {limit} B while exporting", "process", RECON + ["-o", "out/scene.ply", *ALL_EXPORTS],
                          rlimit_fsize=limit, fragment="nothing was written"))
        cases.append(Case(f"file-size limit {limit} B in synth", "process", ["synth", "-o", "out/synth", "-q", "--size", "64x48", "--frames", "3"],
                          rlimit_fsize=limit, fragment=""))
    for mib in (450, 550, 650, 750, 850, 1000, 1300):
        cases.append(Case(f"address-space limit {mib} MiB, every export", "process", RECON + ["-o", "out/scene.ply", *ALL_EXPORTS],
                          rlimit_as=mib << 20, expect="any", outputs=tuple(EXPORT_NAMES.values())))
    for mib in (450, 700, 1000):
        cases.append(Case(f"address-space limit {mib} MiB in synth", "process",
                          ["synth", "-o", "out/synth", "-q", "--size", "320x240", "--frames", "3"], rlimit_as=mib << 20,
                          expect="any", outputs=("out/synth",)))
    previous = {p: f"previous {p}".encode() for p in EXPORT_NAMES.values() if p != "out/scene_colmap"}
    for seconds in (0.5, 1.0, 2.0, 3.0, 4.0, 6.0):
        cases.append(Case(f"kill -9 after {seconds} s over earlier outputs", "process",
                          RECON + ["-o", "out/scene.ply", *ALL_EXPORTS, "--overwrite"], kill_after=seconds, existing=dict(previous),
                          expect="ok", outputs=tuple(EXPORT_NAMES.values())))
    return cases


# --------------------------------------------------------------------------------------------
# Running and judging
# --------------------------------------------------------------------------------------------


def _setup(case: Case, base: Path, work: Path) -> None:
    shutil.copytree(base, work, symlinks=True)
    if case.group == "collision":
        _prepare_collision_inputs(work)
    elif case.group == "inputs":
        _prepare_input_files(work)
    for rel, content in case.existing.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(content)
    for name, target in case.links.items():
        os.symlink(work / target, work / name)


@contextlib.contextmanager
def _fault(case: Case):
    if case.fault is None:
        yield
        return
    target, kind = case.fault

    def broken(*args, **kwargs):
        if kind == "memory":
            raise MemoryError()
        raise OSError(errno.ENOSPC, "No space left on device")

    with mock.patch(target, broken):
        yield


def run_in_process(case: Case, work: Path) -> tuple[int | None, str, str]:
    """Run ``case`` in this interpreter (cwd = ``work``). Returns (exit code, stderr, uncaught exception)."""
    from pacegeo.cli import main
    from pacegeo.errors import PacegeoError

    err = io.StringIO()
    uncaught = ""
    cwd = os.getcwd()
    os.chdir(work)
    try:
        with _fault(case), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if case.api is not None:
                try:
                    API_SCENARIOS[case.api](work)
                    code = 0
                except PacegeoError as exc:
                    print(f"{ERROR_PREFIX}{exc}", file=sys.stderr)
                    code = 2
            else:
                try:
                    code = main(case.argv)
                except SystemExit as exc:  # argparse usage errors
                    code = exc.code if isinstance(exc.code, int) else 2
    except BaseException as exc:  # noqa: BLE001 - an uncaught exception is what this catalogue looks for
        code, uncaught = None, f"{type(exc).__name__}: {exc}"
    finally:
        os.chdir(cwd)
    return code, err.getvalue(), uncaught


def run_subprocess(case: Case, work: Path, timeout: float = 300) -> tuple[int | None, str, str]:
    """Run ``case`` in a new interpreter (cwd = ``work``), with its resource limit or kill."""
    command = [sys.executable, str(Path(__file__).resolve()), "--run-one", json.dumps(case.__dict__, default=to_jsonable)]

    def limits() -> None:
        import resource

        if case.rlimit_fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.rlimit_fsize, case.rlimit_fsize))
        if case.rlimit_as is not None:
            resource.setrlimit(resource.RLIMIT_AS, (case.rlimit_as, case.rlimit_as))

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limits, env=env)
    if case.kill_after is not None:
        time.sleep(case.kill_after)
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=timeout)
    code = proc.returncode
    return (None if code == -signal.SIGKILL else code), err, ""


def run_catalogue(cases: list[Case], base: Path, scratch: Path, in_process: bool = True, progress: bool = False) -> list[dict]:
    results = []
    for i, case in enumerate(cases):
        work = scratch / f"case_{i:03d}"
        _setup(case, base, work)
        before = snapshot(work)
        if in_process and case.rlimit_fsize is None and case.rlimit_as is None and case.kill_after is None:
            code, err, uncaught = run_in_process(case, work)
        else:
            code, err, uncaught = run_subprocess(case, work)
        results.append(judge(case, work, before, snapshot(work), code, err, uncaught))
        shutil.rmtree(work, ignore_errors=True)
        if progress:
            mark = "ok" if results[-1]["ok"] else "FAIL"
            print(f"[{i + 1}/{len(cases)}] {mark:4s} {case.group:10s} {case.name}: {results[-1]['message'][:110]}", file=sys.stderr)
    return results


def _run_one(payload: str) -> int:
    """Entry point of ``--run-one``: the case, with its fault, in this process (cwd is its work folder)."""
    data = json.loads(payload)
    data["existing"] = {}
    case = Case(**{k: (tuple(v) if k in ("outputs", "fault") and v is not None else v) for k, v in data.items()})
    from pacegeo.cli import main

    from pacegeo.errors import PacegeoError

    with _fault(case):
        if case.api is not None:  # an API call: its error is an exception, shown here as one line
            try:
                API_SCENARIOS[case.api](Path.cwd())
            except PacegeoError as exc:
                print(f"{ERROR_PREFIX}{exc}", file=sys.stderr)
                return 2
            return 0
        return main(case.argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--subprocess", action="store_true",
                        help="run every case in its own interpreter, plus the file-size-limit and kill -9 cases")
    parser.add_argument("--groups", nargs="+", default=None, help="run only these groups of cases")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one is not None:
        return _run_one(args.run_one)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cases = catalogue() + (catalogue(subprocess_only=True) if args.subprocess else [])
    if args.groups:
        cases = [case for case in cases if case.group in args.groups]
    with tempfile.TemporaryDirectory() as tmp:
        base = build_base(Path(tmp) / "base")
        results = run_catalogue(cases, base, Path(tmp), in_process=not args.subprocess, progress=True)
    report = summary(results)
    print(json.dumps({k: v for k, v in report.items() if k != "by_group"}, indent=1))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": report, "mode": "subprocess" if args.subprocess else "in-process",
                                         "results": results}, indent=1) + "\n")
    return 0 if not report["failed_cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
