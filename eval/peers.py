"""Accelerators side by side on one backbone, the same frames and one machine: pacegeo's pre-AA
pruning, FastVGGT-style merging inside global attention (:mod:`pacegeo.pruning.global_merge`), and
both together, against the unpruned model.

Every variant runs through :class:`pacegeo.Pipeline` (one precision rule) on held-out SynthRooms
sequences of ``--frames`` frames. Timing is round-robin (each round runs every variant once, so
machine load hits all alike); reported per variant: median inference seconds and speed-up over the
unpruned model, fidelity to the unpruned model (median relative-rotation deviation, median depth
deviation; :mod:`pacegeo.fidelity`) and accuracy against ground truth (median relative-rotation
error, depth AbsRel), medians over scenes.

    python eval/peers.py --frames 64 --scenes 6 --json eval/results/peers_synthrooms.json --md eval/results/peers_synthrooms.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from pacegeo.evaluation.sequences import render_sequence
from pacegeo.fidelity import camera_deviation, depth_deviation
from pacegeo.geometry.transforms import invert_se3
from pacegeo.metrics import depth_metrics, relative_pose_errors
from pacegeo.pruning.global_merge import merge_config

SEED = 500_000
#: name -> (keep, global merge ratio)
VARIANTS = {
    "unpruned": (1.0, 0.0),
    "fastvggt merge 0.9": (1.0, 0.9),
    "pacegeo keep 0.5": (0.5, 0.0),
    "pacegeo keep 0.3": (0.3, 0.0),
    "pacegeo keep 0.5 + merge 0.5": (0.5, 0.5),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pacegeo-tiny")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--scenes", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3, help="timing rounds per scene (after one warm-up round)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--md", type=Path, default=None)
    args = p.parse_args(argv)
    from pacegeo import Pipeline

    pipe = Pipeline.from_pretrained(args.model, device="cpu")
    height, width = pipe.prepare([np.zeros((300, 400, 3), np.uint8)]).image_hw
    rows: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for i in range(args.scenes):
        seq = render_sequence(args.seed + i, args.frames, height, width)
        depths, c2w = seq.depths, seq.cam_to_world
        prepared = pipe.prepare(seq.rgbs)
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        recs = {}
        for round_ in range(args.rounds + 1):
            for name, (keep, ratio) in VARIANTS.items():
                pipe.global_merge = merge_config(ratio)
                rec = pipe.reconstruct(prepared, keep=keep, progress=False, check_memory=False)
                if round_:
                    times[name].append(rec.timings["inference"])
                recs[name] = rec
        ref = recs["unpruned"]
        valid = depths > 0
        for name, rec in recs.items():
            rot_dev, _ = camera_deviation(rec.extrinsics, ref.extrinsics)
            rot_err, _ = relative_pose_errors(rec.extrinsics, invert_se3(c2w))
            rows[name].append({
                "scene": args.seed + i, "seconds": statistics.median(times[name]),
                "rot_dev_med": float(np.median(rot_dev)),
                "depth_dev_med": float(np.median(depth_deviation(rec.depth, ref.depth, valid))),
                "rot_err_med": float(np.median(rot_err)),
                "abs_rel": float(depth_metrics(rec.depth, depths, valid, align="median")["abs_rel"]),
            })
        print(f"scene {args.seed + i}: " + ", ".join(f"{n} {statistics.median(times[n]):.2f} s" for n in VARIANTS), flush=True)
    summary = []
    base = statistics.median(r["seconds"] for r in rows["unpruned"])
    for name, (keep, ratio) in VARIANTS.items():
        med = {k: float(np.median([r[k] for r in rows[name]])) for k in ("seconds", "rot_dev_med", "depth_dev_med", "rot_err_med", "abs_rel")}
        summary.append({"variant": name, "keep": keep, "global_merge": ratio, **med, "speedup": base / med["seconds"]})
    report = {"model": args.model, "frames": args.frames, "scenes": args.scenes, "height": height, "width": width,
              "summary": summary, "per_scene": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"{args.model}, {args.scenes} held-out SynthRooms sequences of {args.frames} frames at {width}x{height}, "
             "CPU, medians over scenes.", "",
             "| variant | inference (s) | speed-up | rot. deviation from unpruned (deg) | depth deviation | rot. error vs truth (deg) | AbsRel |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['variant']} | {s['seconds']:.2f} | {s['speedup']:.2f}x | {s['rot_dev_med']:.2f} | "
                     f"{100 * s['depth_dev_med']:.1f}% | {s['rot_err_med']:.2f} | {s['abs_rel']:.3f} |")
    print("\n".join(lines))
    if args.md is not None:
        args.md.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
