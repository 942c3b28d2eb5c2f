"""Long sequences: chunked reconstruction with and without loop closure, against one pass and
against ground truth, on long SynthRooms walks that revisit places and on posed 7-Scenes frames.

* **ground truth substituted** (:class:`pacegeo.evaluation.oracle.GroundTruthReconstructor`): the
  true depth and cameras of every chunk, each in its own frame and scale; stitching must recover the
  trajectory to numerical precision (ATE over the scene size);
* **pacegeo-tiny**: for each ``--frames`` length, one pass (when ``--one-pass-max`` allows it),
  ``--chunk``/``--overlap`` chunks, and chunks with loop closure; ATE (RMSE of camera centres after a
  Sim(3) fit, over the RMS spread of the true centres) and RPE (consecutive frames, rotation in
  degrees); seconds;
* **memory against frames**: each length in a fresh process, chunked and one pass: the peak of live
  tensor bytes during the reconstruction (:class:`pacegeo.memtrace.TensorMemoryTracker`, what a
  GPU must hold), beside the bytes of the result arrays, which grow with the frames in any case;
* **7-Scenes** (``--sevenscenes``): the posed frames of a sequence folder, one pass against chunks.

A looping walk (``--laps``) goes out along a SynthRooms path and back, and again, each return a few
centimetres off the way out, so that later frames see the places of earlier ones.

    python eval/long.py --frames 160 600 --chunk 32 --overlap 8 --keep 0.5 --laps 4 \\
        --sevenscenes ../shared/data/7scenes-redkitchen \\
        --json eval/results/long.json --md eval/results/long.md --plot eval/results/long.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pacegeo.evaluation.sequences import SynthSequence, out_and_back, render_sequence, scene_spread
from pacegeo.geometry.transforms import invert_se3
from pacegeo.metrics import ate, rpe
from pacegeo.sequence import reconstruct_in_chunks

SEED = 500_000


def render(seed: int, frames: int, laps: int, height: int, width: int) -> SynthSequence:
    """The looping walk of scene ``seed``: ``laps`` laps out and back, each return up to 3 cm off."""
    return render_sequence(seed, frames, height, width, lambda scene: out_and_back(scene, frames, laps, shift=0.03, seed=seed))


def errors(rec, c2w: np.ndarray) -> dict:
    pred = invert_se3(rec.extrinsics.astype(np.float64))
    rpe_rot, _ = rpe(pred, c2w, reduction="median")
    return {"ate": float(ate(pred, c2w)) / scene_spread(c2w), "rpe_rot_med": float(rpe_rot),
            "loops_accepted": sum(r["accepted"] for r in rec.pruning.get("loops", []))}


def result_bytes(rec) -> int:
    return sum(getattr(rec, n).nbytes for n in ("depth", "depth_conf", "world_points", "world_points_conf",
                                                 "points_from_depth", "colors", "valid_mask"))


def probe(args) -> int:
    """One memory measurement in this (fresh) process: prints a JSON line."""
    from pacegeo import Pipeline
    from pacegeo.memtrace import TensorMemoryTracker

    pipe = Pipeline.from_pretrained(args.model, device="cpu")
    height, width = pipe.prepare([np.zeros((300, 400, 3), np.uint8)]).image_hw
    prepared = pipe.prepare(render(args.seed, args.probe, args.laps, height, width).rgbs)
    start = time.perf_counter()
    chunk = None if args.probe_one_pass else args.chunk
    with TensorMemoryTracker() as tracker:
        rec = pipe.reconstruct(prepared, keep=args.keep, progress=False, chunk=chunk,
                               overlap=None if chunk is None else args.overlap)
    print(json.dumps({"frames": args.probe, "one_pass": args.probe_one_pass, "seconds": time.perf_counter() - start,
                      "peak_tensor_bytes": tracker.peak, "result_bytes": result_bytes(rec)}))
    return 0


def run_memory(args) -> list[dict]:
    rows = []
    for frames in args.memory_frames:
        for one_pass in (False, True):
            if one_pass and frames > args.one_pass_max:
                continue
            cmd = [sys.executable, __file__, "--probe", str(frames), "--model", args.model, "--keep", str(args.keep),
                   "--chunk", str(args.chunk), "--overlap", str(args.overlap), "--laps", str(args.laps), "--seed", str(args.seed)]
            out = subprocess.run(cmd + (["--probe-one-pass"] if one_pass else []), capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"memory: {frames} frames {'one pass' if one_pass else 'chunked'}: peak tensors "
                  f"{r['peak_tensor_bytes'] / 2**20:.0f} MiB, results {r['result_bytes'] / 2**20:.0f} MiB, {r['seconds']:.1f} s",
                  flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pacegeo-tiny")
    p.add_argument("--frames", type=int, nargs="+", default=[160, 600])
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--laps", type=int, default=4)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--one-pass-max", type=int, default=300, help="longest sequence also run in one pass")
    p.add_argument("--memory-frames", type=int, nargs="*", default=[75, 150, 300, 600])
    p.add_argument("--sevenscenes", type=Path, default=None, help="a 7-Scenes sequence folder (posed frames)")
    p.add_argument("--json", type=Path, default=None, help="results (required)")
    p.add_argument("--md", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--probe", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--probe-one-pass", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--replot", type=Path, default=None, help="only redraw --plot from this results JSON")
    args = p.parse_args(argv)
    if args.replot is not None and args.plot is not None:
        plot(json.loads(args.replot.read_text()), args.plot)
        return 0
    if args.probe is not None:
        return probe(args)
    if args.json is None:
        p.error("--json is required")
    from pacegeo import Pipeline
    from pacegeo.evaluation.oracle import GroundTruthReconstructor

    pipe = Pipeline.from_pretrained(args.model, device="cpu")
    height, width = pipe.prepare([np.zeros((300, 400, 3), np.uint8)]).image_hw
    report = {"model": args.model, "keep": args.keep, "chunk": args.chunk, "overlap": args.overlap, "laps": args.laps,
              "height": height, "width": width, "runs": [], "trajectories": {}}
    for frames in args.frames:
        seq = render(args.seed, frames, args.laps, height, width)
        c2w = seq.cam_to_world
        prepared = pipe.prepare(seq.rgbs)
        oracle = GroundTruthReconstructor(seq.depths, seq.K, c2w, prepared.names)
        rec = reconstruct_in_chunks(oracle, prepared, args.chunk, args.overlap)
        row = {"frames": frames, "run": "ground truth, chunked", **errors(rec, c2w), "seconds": 0.0}
        report["runs"].append(row)
        print(f"{frames} frames, ground truth substituted: ATE {row['ate']:.2e} of the scene size", flush=True)
        settings = [("chunked", dict(chunk=args.chunk, overlap=args.overlap)),
                    ("chunked + loops", dict(chunk=args.chunk, overlap=args.overlap, loops=True))]
        if frames <= args.one_pass_max:
            settings.insert(0, ("one pass", {}))
        for name, kwargs in settings:
            start = time.perf_counter()
            rec = pipe.reconstruct(prepared, keep=args.keep, progress=False, **kwargs)
            row = {"frames": frames, "run": name, **errors(rec, c2w), "seconds": time.perf_counter() - start}
            report["runs"].append(row)
            if frames == max(args.frames):
                report["trajectories"][name] = invert_se3(rec.extrinsics.astype(np.float64))[:, :3, 3].tolist()
            print(f"{frames} frames, {name}: ATE {row['ate']:.3f}, RPE rot {row['rpe_rot_med']:.2f} deg, "
                  f"loops {row['loops_accepted']}, {row['seconds']:.1f} s", flush=True)
        if frames == max(args.frames):
            report["trajectories"]["ground truth"] = c2w[:, :3, 3].tolist()
    if args.sevenscenes is not None:
        report["runs"] += run_sevenscenes(pipe, args)
    report["memory"] = run_memory(args) if args.memory_frames else []
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    lines = markdown(report)
    print("\n".join(lines))
    if args.md is not None:
        args.md.write_text("\n".join(lines) + "\n")
    if args.plot is not None:
        plot(report, args.plot)
    return 0


def run_sevenscenes(pipe, args) -> list[dict]:
    from pacegeo.data.sevenscenes import read_sevenscenes_sequence

    seq = read_sevenscenes_sequence(args.sevenscenes, load_depth=False)
    c2w = np.asarray(seq.poses, np.float64)
    prepared = pipe.prepare([str(r.image_path) for r in seq.records])
    rows = []
    for name, kwargs in (("one pass", {}), ("chunked", dict(chunk=args.chunk, overlap=args.overlap))):
        start = time.perf_counter()
        rec = pipe.reconstruct(prepared, keep=args.keep, progress=False, **kwargs)
        rows.append({"frames": len(prepared), "run": f"7-Scenes {name}", **errors(rec, c2w), "seconds": time.perf_counter() - start})
        print(f"7-Scenes {len(prepared)} frames, {name}: ATE {rows[-1]['ate']:.3f}, RPE rot {rows[-1]['rpe_rot_med']:.2f} deg",
              flush=True)
    return rows


def markdown(report: dict) -> list[str]:
    lines = [f"{report['model']}, keep {report['keep']:g}, chunks of {report['chunk']} frames ({report['overlap']} shared), "
             f"SynthRooms walks of {report['laps']} laps out and back.", "",
             "| frames | run | ATE / scene spread | RPE rotation, median (deg) | loops applied | seconds |", "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['frames']} | {r['run']} | {r['ate']:.3g} | {r['rpe_rot_med']:.2f} | {r['loops_accepted']} | {r['seconds']:.1f} |")
    if report["memory"]:
        lines += ["", "Peak memory of the reconstruction: live tensor bytes (`pacegeo.memtrace`, what a GPU must hold; "
                  "a fresh process per row), and the host arrays of the result, which grow with the frames in any case:", "",
                  "| frames | run | peak tensors (MiB) | result arrays (MiB) | seconds (traced) |", "|---|---|---|---|---|"]
        for r in report["memory"]:
            lines.append(f"| {r['frames']} | {'one pass' if r['one_pass'] else 'chunked'} | {r['peak_tensor_bytes'] / 2**20:.0f} | "
                         f"{r['result_bytes'] / 2**20:.0f} | {r['seconds']:.1f} |")
    return lines


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pacegeo.geometry.transforms import umeyama

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    traj = report["trajectories"]
    truth = np.asarray(traj["ground truth"])
    ax.plot(truth[:, 0], truth[:, 1], "k-", lw=2, label="ground truth")  # SynthRooms worlds are z-up
    for name, style in (("one pass", "C0-"), ("chunked", "C1-"), ("chunked + loops", "C2-")):
        if name in traj:
            got = np.asarray(traj[name])
            s, R, t = umeyama(got, truth)
            aligned = s * got @ R.T + t
            ax.plot(aligned[:, 0], aligned[:, 1], style, lw=1, label=name)
    ax.set_title(f"{len(truth)} frames, top view (x, y), after Sim(3)")
    ax.set_aspect("equal")
    ax.legend(fontsize=8)
    for one_pass, style, label in ((False, "C1o-", "chunked"), (True, "C0s-", "one pass")):
        rows = [r for r in report["memory"] if r["one_pass"] == one_pass]
        if rows:
            f = [r["frames"] for r in rows]
            bx.plot(f, [r["peak_tensor_bytes"] / 2**20 for r in rows], style, label=f"{label}: peak tensors")
            bx.plot(f, [r["result_bytes"] / 2**20 for r in rows], style.replace("-", ":"), label=f"{label}: result arrays")
    bx.set_xlabel("frames")
    bx.set_ylabel("MiB")
    bx.set_title("peak memory against frames")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
