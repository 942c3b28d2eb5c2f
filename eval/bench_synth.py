"""Benchmark SynthRooms generation speed.

Measures, for one scene of N frames:

* render only: ``render_frame`` in a loop in this process (scene and trajectory built beforehand);
* render + write: ``generate_scenes`` end to end into a temporary folder (scene set-up, rendering,
  JPEG/PNG/pose files, mesh visibility and PLY), with the library's default worker processes.

Usage::

    python eval/bench_synth.py --frames 60 --json /tmp/synth_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from pacegeo.data import synth


def bench_render(seed: int, frames: int, width: int, height: int) -> dict:
    t0 = time.perf_counter()
    scene = synth.make_scene(seed)
    poses = synth.make_trajectory(scene, frames)
    setup = time.perf_counter() - t0
    K = synth.scene_intrinsics(scene, width, height)
    synth.render_frame(scene, poses[0], K, width, height)  # warm caches (ray directions, noise tables)
    t0 = time.perf_counter()
    c0 = time.process_time()
    for i, pose in enumerate(poses):
        synth.render_frame(scene, pose, K, width, height, frame_index=i)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {"setup_s": setup, "render_s": wall, "render_fps": frames / wall,
            "render_cpu_ms_per_frame": 1e3 * cpu / frames}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench_write(seed: int, frames: int, width: int, height: int, workers: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        c0 = _cpu_seconds()
        paths = synth.generate_scenes(tmp, [seed], frames, width, height, progress=False, workers=workers)
        wall = time.perf_counter() - t0
        cpu = _cpu_seconds() - c0
        size = sum(f.stat().st_size for f in Path(paths[0]).rglob("*") if f.is_file())
    return {"write_s": wall, "render_write_fps": frames / wall, "scene_bytes": size,
            "render_write_cpu_ms_per_frame": 1e3 * cpu / frames}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: library choice)")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    result = {
        "frames": args.frames, "width": args.width, "height": args.height, "seed": args.seed,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "workers": args.workers if args.workers is not None
        else synth._num_workers(args.frames * args.width * args.height),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
    }
    result |= bench_render(args.seed, args.frames, args.width, args.height)
    result |= bench_write(args.seed, args.frames, args.width, args.height, args.workers)
    print(f"SynthRooms {args.width}x{args.height}, {args.frames} frames, {result['cpus']} cpus, "
          f"{result['workers']} worker(s), load {result['load_avg_1min']:.2f}")
    print(f"  render only   : {result['render_fps']:6.1f} frames/s  "
          f"({result['render_cpu_ms_per_frame']:.0f} ms CPU per frame, scene set-up {result['setup_s']:.2f} s)")
    print(f"  render + write: {result['render_write_fps']:6.1f} frames/s  "
          f"(end to end incl. scene set-up and mesh, {result['scene_bytes'] / 1e6:.1f} MB, "
          f"{result['render_write_cpu_ms_per_frame']:.0f} ms CPU per frame)")
    cpus = min(result["cpus"], max(1, result["workers"]))
    result["idle_estimate_fps"] = 1e3 * cpus / result["render_write_cpu_ms_per_frame"]
    print(f"  CPU-bound estimate on {cpus} idle core(s): {result['idle_estimate_fps']:.1f} frames/s")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
