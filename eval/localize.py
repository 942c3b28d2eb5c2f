"""Localize-then-map on SynthRooms: query-camera errors against retrieval only.

Per scene (seeds from ``--seed``, held out from training): a trajectory of
``(map_frames - 1) * map_stride + 1`` poses is generated; every ``map_stride``-th pose is a map
frame, and ``--queries`` held-out poses half-way between consecutive map frames are the queries
(rendered with their own sensor noise). Everything is rendered at the model resolution. The map is
built with :func:`pacegeo.localize.build_map` and each query localized with
:func:`pacegeo.localize.localize`.

The map frame is the reconstruction's (first map frame = identity, arbitrary scale). For the
comparison with ground truth, the map's stored camera centres are aligned once to the true centres
of the map frames by a Sim(3) (Umeyama): this is the evaluation's alignment, not part of the
method. The same similarity is applied to every estimate. Reported per method:

* ``localize``: the query pose from the joint reconstruction with the retrieved map frames;
* ``retrieval``: the stored map pose of the top-1 retrieved map frame (retrieval only);
* ``retrieval (true pose)``: the true pose of the top-1 map frame (retrieval only, no map error).

Errors are the median camera-centre distance (metres, and divided by the diagonal of the room's
bounding box) and the median rotation angle; scenes are averaged (mean of per-scene medians), and
the medians over all queries are given too. ``top-1 ok`` is the share of queries whose top-1 map
frame is one of the two map frames next to the query on the trajectory; ``map err`` the median
centre error of the map frames themselves after the alignment (``map rot`` their median
rotation error).

    python eval/localize.py --model pacegeo-tiny --scenes 2 --json out/localize.json
"""

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from pacegeo.data.stream import intrinsics_for_fov
from pacegeo.data.synth import make_scene, make_trajectory, render_frame
from pacegeo.errors import PacegeoError
from pacegeo.localize import build_map, localize
from pacegeo.geometry.transforms import apply_sim3_to_c2w, rotation_angle_deg, umeyama
from pacegeo.pipeline import Pipeline

EVAL_SEED_BASE = 500_000
METHODS = ("localize", "retrieval", "retrieval (true pose)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pacegeo-tiny", help="backbone name or checkpoint path")
    p.add_argument("--pruner", default="auto", help="pruner (auto, training-free, random, grid, none or a checkpoint)")
    p.add_argument("--vpr", default="auto", help="descriptor head: auto, gem or a VPR checkpoint")
    p.add_argument("--scenes", type=int, default=1, help="scenes to average over (seeds --seed, --seed+1, ...)")
    p.add_argument("--seed", type=int, default=EVAL_SEED_BASE, help="seed of the first scene")
    p.add_argument("--map-frames", type=int, default=48, help="map frames per scene")
    p.add_argument("--map-stride", type=int, default=4, help="trajectory steps between consecutive map frames")
    p.add_argument("--queries", type=int, default=20, help="held-out query frames per scene")
    p.add_argument("--top-k", type=int, default=4, help="map frames retrieved per query")
    p.add_argument("--keep", type=float, default=0.5, help="fraction of patch tokens kept (map and queries)")
    p.add_argument("--chunk", type=int, default=None, help="reconstruct the map in chunks of this many frames")
    p.add_argument("--size", default=None, help="HxW of the rendered frames (default: the model width, 3:4)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, required=True, help="output file")
    args = p.parse_args(argv)
    if args.map_frames < 2 or args.queries < 1 or args.map_stride < 2:
        p.error("need --map-frames >= 2, --queries >= 1 and --map-stride >= 2 (queries lie between map frames)")
    return args


def room_diagonal(scene) -> float:
    """Diagonal of the room's bounding box (floor footprint x ceiling height), metres."""
    extent = scene.footprint.max(0) - scene.footprint.min(0)
    return float(np.sqrt(extent[0] ** 2 + extent[1] ** 2 + scene.height**2))


def pose_errors(est_c2w: np.ndarray, gt_c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre distances ``[N]`` and rotation angles ``[N]`` (degrees) of camera-to-world poses."""
    pos = np.linalg.norm(est_c2w[:, :3, 3] - gt_c2w[:, :3, 3], axis=1)
    rot = rotation_angle_deg(np.swapaxes(est_c2w[:, :3, :3], -1, -2) @ gt_c2w[:, :3, :3])
    return pos, rot


def eval_scene(pipe: Pipeline, seed: int, args, height: int, width: int) -> dict:
    scene = make_scene(seed)
    stride = args.map_stride
    traj = make_trajectory(scene, (args.map_frames - 1) * stride + 1)
    map_idx = np.arange(args.map_frames) * stride
    between = map_idx[:-1] + stride // 2
    pick = np.unique(np.linspace(0, len(between) - 1, min(args.queries, len(between))).round().astype(int))
    query_idx = between[pick]
    K = intrinsics_for_fov(scene.fov_deg, height, width)

    def render(indices) -> list[np.ndarray]:
        return [render_frame(scene, traj[i], K, width, height, frame_index=int(i))[0] for i in indices]

    start = time.perf_counter()
    map_images, query_images = render(map_idx), render(query_idx)
    render_s = time.perf_counter() - start

    start = time.perf_counter()
    prepared = pipe.prepare(map_images, progress=False)
    prepared = replace(prepared, names=[f"map_{i:04d}" for i in map_idx])
    store = build_map(pipe, prepared, keep=args.keep, chunk=args.chunk, vpr=args.vpr, progress=False)
    map_s = time.perf_counter() - start

    start = time.perf_counter()
    locs = localize(pipe, store, query_images, top_k=args.top_k, keep=args.keep, progress=False)
    loc_s = time.perf_counter() - start

    # Evaluation alignment: map frame -> ground truth, fitted once on the map frames' centres.
    s, R, t = umeyama(store.camera_centers, traj[map_idx][:, :3, 3])
    map_pos, map_rot = pose_errors(apply_sim3_to_c2w(store.cam_to_world, s, R, t), traj[map_idx])
    gt = traj[query_idx]
    top1 = np.array([loc.retrieved_indices[0] for loc in locs])
    estimates = {
        "localize": apply_sim3_to_c2w(np.stack([loc.cam_to_world for loc in locs]), s, R, t),
        "retrieval": apply_sim3_to_c2w(np.stack([loc.retrieval_cam_to_world for loc in locs]), s, R, t),
        "retrieval (true pose)": traj[map_idx[top1]],
    }
    diag = room_diagonal(scene)
    errors = {name: pose_errors(est, gt) for name, est in estimates.items()}
    confidence = np.array([loc.confidence for loc in locs])
    top1_ok = np.abs(map_idx[top1] - query_idx) <= stride
    methods = [loc.fit.method for loc in locs]
    record = {
        "seed": seed,
        "room_diagonal_m": diag,
        "fov_deg": float(scene.fov_deg),
        "map_frames": len(map_idx),
        "queries": len(query_idx),
        "map_alignment": {"scale": float(s), "median_pos_err_m": float(np.median(map_pos)),
                          "median_rot_err_deg": float(np.median(map_rot))},
        "vpr": store.vpr_identity,
        "top1_correct": float(top1_ok.mean()),
        "fit_methods": {m: methods.count(m) for m in sorted(set(methods))},
        "seconds": {"render": render_s, "map": map_s, "localize": loc_s, "per_query": loc_s / len(locs)},
        "methods": {},
        "per_query": [],
    }
    for name, (pos, rot) in errors.items():
        record["methods"][name] = {
            "median_pos_err_m": float(np.median(pos)),
            "median_pos_err_rel": float(np.median(pos) / diag),
            "median_rot_err_deg": float(np.median(rot)),
        }
    rho = spearmanr(confidence, errors["localize"][0]).statistic if len(locs) > 2 and np.ptp(confidence) > 0 else float("nan")
    record["confidence"] = {"mean": float(confidence.mean()), "spearman_vs_pos_err": float(rho)}
    for j, loc in enumerate(locs):
        record["per_query"].append({
            "trajectory_index": int(query_idx[j]),
            "retrieved": [int(map_idx[i]) for i in loc.retrieved_indices],
            "scores": [float(x) for x in loc.scores],
            "confidence": float(loc.confidence),
            "fit": loc.fit.to_dict(),
            **{f"{name}_pos_err_m": float(errors[name][0][j]) for name in METHODS},
            **{f"{name}_rot_err_deg": float(errors[name][1][j]) for name in METHODS},
        })
    return record


def summarize(records: list[dict]) -> dict:
    out = {}
    for name in METHODS:
        per_scene = {k: float(np.mean([r["methods"][name][k] for r in records]))
                     for k in ("median_pos_err_m", "median_pos_err_rel", "median_rot_err_deg")}
        pos = np.concatenate([[q[f"{name}_pos_err_m"] for q in r["per_query"]] for r in records])
        rel = np.concatenate([[q[f"{name}_pos_err_m"] / r["room_diagonal_m"] for q in r["per_query"]] for r in records])
        rot = np.concatenate([[q[f"{name}_rot_err_deg"] for q in r["per_query"]] for r in records])
        out[name] = {
            "scene_mean": per_scene,
            "pooled": {"median_pos_err_m": float(np.median(pos)), "median_pos_err_rel": float(np.median(rel)),
                       "median_rot_err_deg": float(np.median(rot))},
        }
    return out


def print_table(records: list[dict], summary: dict) -> None:
    print()
    print(f"{'method':<24} {'pos err (m)':>12} {'pos err / diag':>15} {'rot err (deg)':>14}   (mean over {len(records)} scene(s) of per-scene medians)")
    for name in METHODS:
        m = summary[name]["scene_mean"]
        print(f"{name:<24} {m['median_pos_err_m']:>12.3f} {m['median_pos_err_rel']:>15.4f} {m['median_rot_err_deg']:>14.2f}")
    print()
    print(f"{'scene':>8} {'diag (m)':>9} {'map err (m)':>12} {'map rot':>8} {'top-1 ok':>9} {'loc pos (m)':>12} {'ret pos (m)':>12} "
          f"{'loc rot':>8} {'ret rot':>8} {'conf':>6} {'rho(conf,err)':>14}  fits")
    for r in records:
        loc, ret = r["methods"]["localize"], r["methods"]["retrieval"]
        fits = ", ".join(f"{k} {v}" for k, v in r["fit_methods"].items())
        print(f"{r['seed']:>8} {r['room_diagonal_m']:>9.2f} {r['map_alignment']['median_pos_err_m']:>12.3f} "
              f"{r['map_alignment']['median_rot_err_deg']:>8.2f} {r['top1_correct']:>9.0%} {loc['median_pos_err_m']:>12.3f} {ret['median_pos_err_m']:>12.3f} "
              f"{loc['median_rot_err_deg']:>8.2f} {ret['median_rot_err_deg']:>8.2f} {r['confidence']['mean']:>6.2f} "
              f"{r['confidence']['spearman_vs_pos_err']:>14.2f}  {fits}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        pipe = Pipeline.from_pretrained(args.model, pruner=args.pruner, device=args.device)
        if args.size:
            height, width = (int(v) for v in args.size.lower().split("x"))
        else:
            width = pipe.target_size
            height = max(14, round(width * 0.75 / 14) * 14)
        if pipe.preprocess_mode == "crop" and width != pipe.target_size:
            print(f"note: frames of width {width} are resized to the model width {pipe.target_size}", file=sys.stderr)
        print(f"model {args.model} ({pipe.config.name}), pruner {pipe.pruner_mode}, keep {args.keep:g}, frames {height}x{width}, "
              f"{args.map_frames} map frames (stride {args.map_stride}), {args.queries} queries, top-{args.top_k}")
        records = []
        for i in range(args.scenes):
            seed = args.seed + i
            start = time.perf_counter()
            record = eval_scene(pipe, seed, args, height, width)
            records.append(record)
            sec = record["seconds"]
            print(f"scene {seed}: map {sec['map']:.1f} s, localize {sec['localize']:.1f} s "
                  f"({sec['per_query']:.2f} s per query), total {time.perf_counter() - start:.1f} s, descriptors {record['vpr']}")
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = summarize(records)
    print_table(records, summary)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(height=height, width=width, pruner_mode=pipe.pruner_mode)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"config": config, "summary": summary, "scenes": records}, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
