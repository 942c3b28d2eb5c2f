"""Chunked against single-pass reconstruction of long SynthRooms sequences, against ground truth.

Each held-out scene's default trajectory (``--frames`` consecutive views, rendered at the model's
resolution) is reconstructed by :class:`pacegeo.Pipeline` in one pass and in overlapping chunks
(``--chunks CHUNK:OVERLAP ...``), stitched by the point maps of the shared frames (``points``, the
default) or, for comparison, by their camera centres alone (``cameras``). Reported per run:

* ``ate``: RMS camera-centre error after a Sim(3) fit onto the true centres, over the RMS spread of
  the true centres (scale-free);
* ``rot_err_med`` and ``rra15``: relative rotation error over all frame pairs;
* ``points_err``: median distance between the predicted points (from depth) and the true points of
  the same pixels after a least-squares Sim(3) between the two clouds, over the median distance of
  the true points to their centroid: the seams between chunks show here;
* ``abs_rel``: depth AbsRel after per-frame median scaling;
* ``inliers_min``: the lowest inlier share of a chunk alignment; wall seconds; the estimated
  activation memory of the run's largest forward pass (:meth:`Pipeline.estimate_memory`).

    python eval/chunked.py --scenes 6 --frames 64 --chunks 16:4 32:8 --keep 1 0.5 \\
        --json eval/results/chunked_synthrooms.json --md eval/results/chunked_synthrooms.md
    python eval/chunked.py --scenes 6 --frames 64 --chunks 12:3 --keep 0.5 --out-and-back \\
        --json eval/results/chunked_loops_synthrooms.json --md eval/results/chunked_loops_synthrooms.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from pacegeo.evaluation.sequences import SynthSequence, out_and_back, render_sequence, scene_spread, true_points
from pacegeo.geometry.transforms import invert_se3, umeyama
from pacegeo.metrics import ate, depth_metrics, relative_pose_errors, rra
from pacegeo.sequence import reconstruct_in_chunks

SEED_BASE = 500_000  # held out: training scenes use seeds >= 1,000,000


def sequence_metrics(rec, seq: SynthSequence) -> dict:
    depths, c2w = seq.depths, seq.cam_to_world
    pred_c2w = invert_se3(rec.extrinsics.astype(np.float64))
    rot_err, _ = relative_pose_errors(invert_se3(pred_c2w), invert_se3(c2w))
    valid = depths > 0
    gt = true_points(seq)[valid]
    pts = rec.points_from_depth.astype(np.float64)[valid]
    pick = np.random.default_rng(0).choice(len(gt), min(20000, len(gt)), replace=False)
    ps, pR, pt = umeyama(pts[pick], gt[pick])  # the point cloud's own Sim(3) onto the truth
    scene = float(np.median(np.linalg.norm(gt - gt.mean(0), axis=1)))
    points_err = float(np.median(np.linalg.norm(ps * pts @ pR.T + pt - gt, axis=1))) / scene
    chunks = rec.pruning.get("chunks", [])
    return {
        "ate": float(ate(pred_c2w, c2w)) / scene_spread(c2w),
        "rot_err_med": float(np.median(rot_err)),
        "rra15": float(rra(rot_err, 15.0)),
        "points_err": points_err,
        "abs_rel": float(depth_metrics(rec.depth, depths, valid, align="median")["abs_rel"]),
        "inliers_min": min((c["fit"]["inliers"] for c in chunks[1:]), default=1.0),
        "loops_accepted": sum(r["accepted"] for r in rec.pruning.get("loops", [])),
        "chunks": len(chunks) or 1,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pacegeo-tiny")
    p.add_argument("--scenes", type=int, default=6)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--chunks", nargs="+", default=["16:4", "32:8"], help="CHUNK:OVERLAP settings to run")
    p.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.5])
    p.add_argument("--seed", type=int, default=SEED_BASE)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out-and-back", action="store_true",
                   help="walk each path out and back (a revisit), and add loop closure (align 'points+loops')")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--md", type=Path, default=None)
    args = p.parse_args(argv)
    from pacegeo import Pipeline

    pipe = Pipeline.from_pretrained(args.model, device="cpu", dtype=args.dtype)
    height, width = pipe.prepare([np.zeros((300, 400, 3), np.uint8)]).image_hw
    aligns = ("points", "points+loops") if args.out_and_back else ("points", "cameras")
    settings = [(None, None, "single")] + [
        (int(c), int(o), align) for c, o in (s.split(":") for s in args.chunks) for align in aligns
    ]
    records = []
    for i in range(args.scenes):
        walk = (lambda scene: out_and_back(scene, args.frames)) if args.out_and_back else None
        seq = render_sequence(args.seed + i, args.frames, height, width, walk)
        prepared = pipe.prepare(seq.rgbs)
        assert prepared.image_hw == (height, width)
        for keep in args.keep:
            for chunk, overlap, align in settings:
                start = time.perf_counter()
                if chunk is None:
                    rec = pipe.reconstruct(prepared, keep=keep, progress=False)
                elif align == "points+loops":
                    rec = pipe.reconstruct(prepared, keep=keep, progress=False, chunk=chunk, overlap=overlap, loops=True)
                else:
                    rec = reconstruct_in_chunks(pipe, prepared, chunk, overlap, keep, progress=False, align=align)
                seconds = time.perf_counter() - start
                row = {"scene": args.seed + i, "frames": args.frames, "keep": keep, "chunk": chunk, "overlap": overlap,
                       "align": align, "seconds": seconds,
                       "activations_estimate": pipe.estimate_memory(chunk or args.frames, (height, width), keep).activations,
                       **sequence_metrics(rec, seq)}
                records.append(row)
                print(f"scene {row['scene']} keep {keep:g} {align:8s} chunk {chunk or args.frames:>3}/{overlap or 0:<2} "
                      f"ATE {row['ate']:.3f}  rot {row['rot_err_med']:5.2f} deg  points {row['points_err']:.3f}  "
                      f"AbsRel {row['abs_rel']:.3f}  inliers {row['inliers_min']:.2f}  {seconds:.1f} s", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"model": args.model, "height": height, "width": width, "records": records}, indent=1) + "\n")
    table = summary(records)
    print("\n".join(table))
    if args.md is not None:
        args.md.write_text("\n".join(table) + "\n")
    return 0


def summary(records: list[dict]) -> list[str]:
    """Medians over scenes per (keep, chunk, overlap, align)."""
    keys = sorted({(r["keep"], r["chunk"] or 0, r["overlap"] or 0, r["align"]) for r in records}, key=lambda k: (-k[0], k[1], k[3]))
    lines = [f"Median over {len({r['scene'] for r in records})} held-out SynthRooms scenes of {records[0]['frames']} frames.", "",
             "| keep | chunk / overlap | alignment | ATE | rot. err. (deg) | RRA@15 | points err. | AbsRel | lowest inlier share | seconds | activations estimate (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for keep, chunk, overlap, align in keys:
        rows = [r for r in records if (r["keep"], r["chunk"] or 0, r["overlap"] or 0, r["align"]) == (keep, chunk, overlap, align)]

        def med(name):
            return float(np.median([r[name] for r in rows]))

        setting = "one pass" if not chunk else f"{chunk} / {overlap}"
        lines.append(f"| {keep:g} | {setting} | {align} | {med('ate'):.3f} | {med('rot_err_med'):.2f} | {med('rra15'):.3f} | "
                     f"{med('points_err'):.3f} | {med('abs_rel'):.3f} | {med('inliers_min'):.2f} | {med('seconds'):.1f} | "
                     f"{med('activations_estimate') / 2**20:.0f} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
