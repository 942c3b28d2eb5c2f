"""Peak memory of reconstructions, measured, beside the estimate of pacegeo.memory.

Grid (default): ``pacegeo-tiny`` at 518 px wide (518x392 on 4:3 frames), N in {16, 32, 64},
keep in {1, 0.5, 0.3}, each cell in a fresh subprocess running the Python API
(``Pipeline.from_pretrained(..., target_size=518)``, ``prepare``, ``reconstruct``):

* CPU: the process's resident set sampled every millisecond during ``reconstruct``; ``peak`` is
  its maximum, ``added`` the maximum minus the resident set after model and images are loaded;
* CUDA: ``torch.cuda.max_memory_allocated`` during ``reconstruct``.

Beside each measurement: the run's own estimate (``rec.memory_estimate``, the same model as the
preflight and ``pacegeo estimate``) and the estimated activations (the part beyond what is
resident). Then the model alone extrapolates VGGT-1B in bf16 at 518x392 on CUDA to 4000 frames:
peak against frames per keep and the largest frame count per 24/48/80 GiB GPU.

    python eval/memory.py --frames-dir /tmp/mem_frames/scene_500000/color     # grid, JSON + PNG
    python eval/memory.py --api-check --frames-dir /tmp/mem_frames/scene_500000/color  # 48 frames, keep 1 vs 0.3

Frames: render them with ``python -m pacegeo synth -o /tmp/mem_frames --scenes 1 --frames 64
--seed 500000``; without ``--frames-dir`` the 16 frames of ``examples/synthrooms-16`` repeat.
Outputs: ``eval/results/memory_<device>.json``/``.png`` (grid) and ``.md``;
``eval/results/memory_api_check.json`` (``--api-check``).
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "synthrooms-16"
GIB = 1024**3
MIB = 1024**2
VGGT_FRAMES = (100, 250, 500, 750, 1000, 1500, 2000, 2500, 3000, 3500, 4000)
VGGT_KEEPS = (1.0, 0.5, 0.3, 0.2)
GPU_MEMORY_GIB = (24, 48, 80)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pacegeo-tiny")
    p.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.5, 0.3])
    p.add_argument("--size", type=int, default=518, help="target size (inference width)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="auto (the precision rule), float32, bfloat16")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each cell (default 1)")
    p.add_argument("--frames-dir", type=Path, default=None, help="folder of frames (default: examples/synthrooms-16, repeated)")
    p.add_argument("--api-check", action="store_true", help="48 frames, keep 1 and 0.3: the memory pruning saves")
    p.add_argument("--out", type=Path, default=None, help="output stem (default eval/results/memory_<device> or memory_api_check)")
    p.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: run one cell, print JSON
    return p.parse_args(argv)


# -- one cell (in its own process) ----------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def frame_paths(folder: Path | None, count: int) -> list[Path]:
    """``count`` frame files: the folder's first ``count`` (repeated if it has fewer)."""
    folder = folder or EXAMPLE
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"error: no frames in {folder}")
    return [files[i % len(files)] for i in range(count)]


def run_cell(spec: dict) -> dict:
    """Load, prepare, measure one ``reconstruct``; returns the record."""
    import torch

    from pacegeo.system import release_host_memory
    from pacegeo.pipeline import Pipeline

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    pipe = Pipeline.from_pretrained(spec["model"], device=device, dtype=spec["dtype"], target_size=spec["size"])
    prepared = pipe.prepare(frame_paths(Path(spec["frames_dir"]) if spec["frames_dir"] else None, spec["frames"]), progress=False)
    release_host_memory()
    base = _rss()
    peak = [base]
    running = [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    sampler.start()
    start = time.perf_counter()
    rec = pipe.reconstruct(prepared, keep=spec["keep"], check_memory=False, progress=False)
    seconds = time.perf_counter() - start
    running[0] = False
    sampler.join()
    peak[0] = max(peak[0], _rss())
    loaded = prepared.images.numel() * prepared.images.element_size()
    estimate = pipe.estimate_memory(len(prepared), prepared.image_hw, spec["keep"], loaded)
    record = {
        **spec,
        "height": prepared.image_hw[0], "width": prepared.image_hw[1], "dtype_resolved": rec.dtype,
        "seconds": seconds, "rss_after_load": base, "rss_peak": peak[0], "rss_added": peak[0] - base,
        "estimate_total": rec.memory_estimate, "estimate_activations": estimate.activations,
        "estimate_peak_phase": estimate.peak_phase, "estimate_phases": dict(estimate.phases),
    }
    if device.type == "cuda":
        record["cuda_max_allocated"] = int(torch.cuda.max_memory_allocated(device))
    return record


def measure(spec: dict) -> dict:
    """``run_cell`` in a fresh subprocess (nothing left over from other cells)."""
    import pacegeo

    root = str(Path(pacegeo.__file__).resolve().parents[1])  # the child imports the same pacegeo
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, __file__, "--cell", json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {**spec, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measured(record: dict) -> tuple[int, str]:
    """The measured peak to compare with ``estimate_total``."""
    if "cuda_max_allocated" in record:
        return record["cuda_max_allocated"], "CUDA max_memory_allocated"
    return record["rss_peak"], "process RSS"


# -- extrapolation -------------------------------------------------------------------------------


def vggt_extrapolation() -> dict:
    """VGGT-1B, bf16, 518x392, CUDA: estimated peak per (frames, keep) and the largest frame count
    per GPU memory size (the model only)."""
    import torch

    from pacegeo.backbone import vggt_1b
    from pacegeo.memory import estimate_peak_memory, max_frames

    config = vggt_1b()

    def est(frames: int, keep: float):
        return estimate_peak_memory(config, frames, (392, 518), keep, torch.bfloat16, device="cuda")

    curves = {f"{k:g}": [{"frames": s, "peak_bytes": est(s, k).total, "peak_phase": est(s, k).peak_phase}
                         for s in VGGT_FRAMES] for k in VGGT_KEEPS}
    fits = {f"{k:g}": {f"{g}GiB": max_frames(lambda s, k=k, g=g: est(s, k).total <= g * GIB, 1, 100000)
                       for g in GPU_MEMORY_GIB} for k in VGGT_KEEPS}
    return {"model": "vggt-1b", "dtype": "bfloat16", "size": "518x392", "device": "cuda", "curves": curves, "max_frames": fits}


# -- reports -------------------------------------------------------------------------------------


def plot(records: list[dict], extrapolation: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    keeps = sorted({r["keep"] for r in records if "error" not in r}, reverse=True)
    for keep in keeps:
        rows = sorted((r for r in records if r["keep"] == keep and "error" not in r), key=lambda r: r["frames"])
        frames = [r["frames"] for r in rows]
        line, = left.plot(frames, [measured(r)[0] / GIB for r in rows], "o-", label=f"keep {keep:g} measured")
        left.plot(frames, [r["estimate_total"] / GIB for r in rows], "x--", color=line.get_color(), label=f"keep {keep:g} estimated")
    left.set_xlabel("frames")
    left.set_ylabel(f"peak memory (GiB, {measured(records[0])[1] if records else ''})")
    left.set_title(title, fontsize=9)
    left.legend(fontsize=7)
    for keep, curve in extrapolation["curves"].items():
        right.plot([c["frames"] for c in curve], [c["peak_bytes"] / GIB for c in curve], "-", label=f"keep {keep}")
    for gib in GPU_MEMORY_GIB:
        right.axhline(gib, color="grey", lw=0.7, ls=":")
    right.set_xlabel("frames")
    right.set_ylabel("estimated peak (GiB)")
    right.set_title("VGGT-1B, bf16, 518x392, CUDA (estimate)", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(records: list[dict], extrapolation: dict | None) -> str:
    lines = ["| frames | keep | dtype | measured peak | estimate | estimate / measured | measured added | estimated activations | peak phase |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['frames']} | {r['keep']:g} | - | error: {r['error']} | | | | | |")
            continue
        peak, _ = measured(r)
        added = r["rss_added"] if "cuda_max_allocated" not in r else peak
        lines.append(f"| {r['frames']} | {r['keep']:g} | {r['dtype_resolved']} | {peak / MIB:.0f} MiB | {r['estimate_total'] / MIB:.0f} MiB | "
                     f"{r['estimate_total'] / peak:.2f} | {added / MIB:.0f} MiB | {r['estimate_activations'] / MIB:.0f} MiB | {r['estimate_peak_phase']} |")
    if extrapolation:
        lines += ["", "VGGT-1B, bf16, 518x392, CUDA (estimate): largest frame count that fits", "",
                  "| keep | " + " | ".join(f"{g} GiB" for g in GPU_MEMORY_GIB) + " |", "|---|" + "---|" * len(GPU_MEMORY_GIB)]
        for keep, row in extrapolation["max_frames"].items():
            lines.append(f"| {keep} | " + " | ".join(str(row[f"{g}GiB"]) for g in GPU_MEMORY_GIB) + " |")
    return "\n".join(lines) + "\n"


def api_check(args) -> int:
    """48 frames at 518 px, keep 1 and 0.3, default precision: what the reconstruct adds."""
    base = dict(model=args.model, size=args.size, device=args.device, dtype=args.dtype, threads=args.threads,
                frames_dir=str(args.frames_dir) if args.frames_dir else None, frames=48)
    records = []
    for keep in (1.0, 0.3):
        record = measure({**base, "keep": keep})
        records.append(record)
        if "error" in record:
            print(f"keep {keep:g}: {record['error']}", file=sys.stderr)
            return 1
        peak, kind = measured(record)
        print(f"keep {keep:g}: added {record['rss_added'] / MIB:.0f} MiB over {record['rss_after_load'] / MIB:.0f} MiB; "
              f"peak {peak / MIB:.0f} MiB ({kind}); estimate {record['estimate_total'] / MIB:.0f} MiB "
              f"({record['estimate_total'] / peak:.2f} x measured)", flush=True)
    ratio = records[1]["rss_added"] / records[0]["rss_added"]
    print(f"memory added at keep 0.3 / at keep 1: {ratio:.2f}")
    out = args.out or RESULTS / "memory_api_check"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"records": records, "added_ratio_keep0.3_over_keep1": ratio}, indent=1))
    print(f"wrote {out.with_suffix('.json')}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cell:
        print(json.dumps(run_cell(json.loads(args.cell))))
        return 0
    if args.frames_dir is not None and not args.frames_dir.is_dir():
        print(f"error: --frames-dir {args.frames_dir} is not a folder", file=sys.stderr)
        return 2
    if args.api_check:
        return api_check(args)
    base = dict(model=args.model, size=args.size, device=args.device, dtype=args.dtype, threads=args.threads,
                frames_dir=str(args.frames_dir) if args.frames_dir else None)
    records = []
    for frames in sorted(args.frames):
        for keep in sorted(args.keep, reverse=True):
            record = measure({**base, "frames": frames, "keep": keep})
            records.append(record)
            if "error" in record:
                print(f"frames {frames} keep {keep:g}: {record['error']}", flush=True)
                continue
            peak, kind = measured(record)
            print(f"frames {frames:>3} keep {keep:<4g} peak {peak / MIB:7.0f} MiB ({kind}), estimate "
                  f"{record['estimate_total'] / MIB:7.0f} MiB ({record['estimate_total'] / peak:.2f} x); added "
                  f"{record['rss_added'] / MIB:.0f} MiB, estimated activations {record['estimate_activations'] / MIB:.0f} MiB", flush=True)
    extrapolation = vggt_extrapolation()
    out = args.out or RESULTS / f"memory_{args.device.split(':')[0]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"records": records, "vggt_1b_extrapolation": extrapolation}, indent=1))
    text = markdown(records, extrapolation)
    out.with_suffix(".md").write_text(text)
    plot(records, extrapolation, out.with_suffix(".png"), f"{args.model}, width {args.size}, {args.device}, threads {args.threads}")
    print(text)
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
