"""GPU benchmark: VGGT-1B (random weights), bf16, 518x392, frames x keep.

For every frame count N and keep: the synchronised median latency of ``PaceVGGT`` forwards
(``keep = 1`` is the backbone itself), the peak ``torch.cuda.max_memory_allocated`` beside the
estimate of :mod:`pacegeo.memory`, the speed-up over keep 1 at the same N and its ratio to the
FLOP-ideal speed-up (:mod:`pacegeo.pruning.flops`).

Budgets, so that the default grid runs in under 8 minutes on one H100-class GPU:

* memory: a cell whose estimated peak exceeds the GPU's memory is skipped (and says so);
* time: every cell's duration is predicted from its FLOPs and the throughput measured so far; a
  cell that would overrun ``--budget`` seconds is skipped (and says so). Short cells run
  ``--warmup`` + ``--repeats`` times, long ones (over ``--long`` seconds) once after the warm-up
  that the shorter cells before them gave the kernels.

    bash eval/gpu_bench.sh                                   # the default grid, results in eval/results/gpu/
    python eval/gpu_bench.py --model tiny-random --device cpu --frames 2 4 --size 70x56   # a smoke test

Writes ``<out>/bench.json`` and ``<out>/bench.md``.
"""

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "results" / "gpu"


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 518x392, got {text!r}") from None
    return w, h


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vggt-1b-random", choices=["vggt-1b-random", "tiny-random"])
    p.add_argument("--frames", type=int, nargs="+", default=[32, 100, 300, 1000])
    p.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.5, 0.3, 0.2])
    p.add_argument("--size", type=_size, default=(518, 392), help="WxH (default 518x392)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--pruner", default="training-free", choices=["training-free", "grid", "random"])
    p.add_argument("--merge-ratio", type=float, default=0.5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--long", type=float, default=15.0, help="seconds above which a cell runs once")
    p.add_argument("--budget", type=float, default=420.0, help="seconds for all timed cells")
    p.add_argument("--memory", type=str, default=None, help="memory to plan with (default: the device's total)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args(argv)


def build(model: str, device: torch.device):
    from pacegeo.backbone import VGGT, pacegeo_tiny, vggt_1b

    torch.manual_seed(0)
    config = vggt_1b() if model == "vggt-1b-random" else pacegeo_tiny()
    with torch.device(device):
        return VGGT(config).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_memory(device: torch.device, override: str | None) -> int | None:
    from pacegeo.memory import parse_bytes

    if override is not None:
        return parse_bytes(override)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return None


def time_cell(pace, images: torch.Tensor, keep: float, runs: int, warmup: int) -> tuple[list[float], int | None]:
    """``warmup`` + ``runs`` forwards; the seconds of the timed ones and the peak allocated bytes."""
    device = images.device
    times = []
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        for i in range(warmup + runs):
            _sync(device)
            start = time.perf_counter()
            out = pace(images, keep=keep)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
            del out
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    return times, peak


def markdown(report: dict) -> str:
    lines = [f"# {report['model']}, {report['dtype']}, {report['width']}x{report['height']}, {report['device_name']}", "",
             "| frames | keep | median s | speed-up | FLOP-ideal | ratio | peak allocated | estimate | note |",
             "|---|---|---|---|---|---|---|---|---|"]

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    for r in report["records"]:
        peak = f"{r['peak_bytes'] / 2**30:.2f} GiB" if r["peak_bytes"] else "-"
        lines.append(f"| {r['frames']} | {r['keep']:g} | {fmt(r['median_s'], '.3f')} | {fmt(r['speedup'], '.2f')} | "
                     f"{r['ideal_speedup']:.2f} | {fmt(r['ratio_to_ideal'], '.2f')} | {peak} | "
                     f"{r['estimate_bytes'] / 2**30:.2f} GiB | {r['skipped'] or ''} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from pacegeo.errors import PacegeoError
    from pacegeo.memory import estimate_peak_memory
    from pacegeo.pace import PaceVGGT
    from pacegeo.precision import dtype_name, resolve_dtype
    from pacegeo.pruning.budget import validate_keep
    from pacegeo.pruning.flops import forward_flops, ideal_speedup

    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    try:
        keeps = sorted({validate_keep(k) for k in args.keep} | {1.0}, reverse=True)
        amp = resolve_dtype(args.dtype, device)
        memory = device_memory(device, args.memory)
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    width, height = args.size
    backbone = build(args.model, device)
    ps = backbone.config.aggregator.patch_size
    if width % ps or height % ps:
        print(f"error: --size {width}x{height} must be multiples of {ps}", file=sys.stderr)
        return 2
    pace = PaceVGGT(backbone, mode=args.pruner, amp_dtype=amp, merge_ratio=args.merge_ratio, seed=args.seed)
    weights = sum(p.numel() * p.element_size() for p in backbone.parameters())
    config = backbone.config
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.model} on {name}, {dtype_name(amp)}, {width}x{height}; budget {args.budget:.0f} s", flush=True)

    records = []
    spent, flops_done, seconds_done = 0.0, 0.0, 0.0
    for frames in sorted(args.frames):
        gen = torch.Generator().manual_seed(args.seed)
        images = torch.rand(1, frames, 3, height, width, generator=gen).to(device)
        base = forward_flops(config, frames, height, width, 1.0)
        baseline = None
        for keep in keeps:
            flops = forward_flops(config, frames, height, width, keep, mode=args.pruner, merge_ratio=args.merge_ratio)
            est = estimate_peak_memory(config, frames, (height, width), keep, amp, weights_bytes=weights,
                                       device=device.type, post=False, outputs_on_host=False)
            record = {"frames": frames, "keep": keep, "flops": flops["total"], "ideal_speedup": ideal_speedup(base, flops),
                      "estimate_bytes": est.total, "median_s": None, "times_s": [], "peak_bytes": None,
                      "speedup": None, "ratio_to_ideal": None, "skipped": None}
            rate = flops_done / seconds_done if seconds_done else None
            predicted = flops["total"] / rate if rate else None
            runs, warmup = args.repeats, args.warmup
            if predicted is not None and predicted > args.long:
                runs, warmup = 1, 0
            if memory is not None and est.total > memory:
                record["skipped"] = f"estimated {est.total / 2**30:.1f} GiB exceeds {memory / 2**30:.1f} GiB"
            elif predicted is not None and spent + predicted * (runs + warmup) > args.budget:
                record["skipped"] = f"predicted {predicted * (runs + warmup):.0f} s exceeds the time left ({args.budget - spent:.0f} s)"
            if record["skipped"]:
                print(f"frames {frames:>5} keep {keep:<4g} skipped: {record['skipped']}", flush=True)
                records.append(record)
                continue
            start = time.perf_counter()
            try:
                times, peak = time_cell(pace, images, keep, runs, warmup)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                record["skipped"] = "out of memory"
                records.append(record)
                print(f"frames {frames:>5} keep {keep:<4g} out of memory", flush=True)
                continue
            elapsed = time.perf_counter() - start
            spent += elapsed
            flops_done += flops["total"] * len(times)
            seconds_done += sum(times)
            median = statistics.median(times)
            if keep == 1.0:
                baseline = median
            speedup = baseline / median if baseline else None
            record.update(median_s=median, times_s=times, peak_bytes=peak, speedup=speedup,
                          ratio_to_ideal=speedup / record["ideal_speedup"] if speedup else None)
            records.append(record)
            peak_text = f", peak {peak / 2**30:.2f} GiB (estimate {est.total / 2**30:.2f})" if peak else ""
            print(f"frames {frames:>5} keep {keep:<4g} {median:8.3f} s" + (f", speed-up {speedup:.2f} (ideal "
                  f"{record['ideal_speedup']:.2f})" if speedup else "") + peak_text, flush=True)
        del images
    report = {"model": args.model, "dtype": dtype_name(amp), "width": width, "height": height, "device": str(device),
              "device_name": name, "pruner": args.pruner, "merge_ratio": args.merge_ratio, "torch": torch.__version__,
              "budget_s": args.budget, "spent_s": spent, "memory_bytes": memory, "records": records}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=1, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else v))
    (args.out / "bench.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
