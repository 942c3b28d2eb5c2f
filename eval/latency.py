"""Latency, memory and FLOPs of pruned vs unpruned forwards.

For every (frames, keep) it times the full forward (median of ``--repeats`` runs after
``--warmup``; CUDA is synchronised; the keeps of one frame count run round-robin, so that load
from other processes affects them alike), measures peak memory, counts the tokens entering the AA stack,
times each stage (patch embedding, scorer, selection/merging, AA stack, restoration, heads) and
counts FLOPs per stage analytically (:mod:`pacegeo.pruning.flops`), giving the ideal speedup
``FLOPs(keep=1) / FLOPs(keep)`` next to the measured one (against keep 1 of the same run).

    python eval/latency.py --model tiny-random --pruner training-free --frames 8 32 \\
        --keep 1 0.5 0.3 0.2 --size 224 --device cpu --json /tmp/lat_tiny.json --plot /tmp/lat_tiny.png
    python eval/latency.py --model vggt-1b-random --pruner none --frames 8 32 64 --size 518 \\
        --device cuda --json vggt_backbone.json     # the plain backbone's latency
    python eval/latency.py --model vggt-1b-random --pruner training-free --frames 4 --size 518 --height 392 \\
        --keep 1 0.3 --device cpu --dtype auto --reference-dtype float32 --json lat.json
        # the default CPU precision against keep 1 in float32 (speedup_vs_reference)

Models: ``vggt-1b-random`` (VGGT-1B architecture, random weights), ``tiny-random`` (the
``pacegeo-tiny`` architecture with random weights), or any name/path :func:`pacegeo.hub.load_backbone`
resolves (``pacegeo-tiny``, ``vggt-1b``, a file). Pruners: ``none`` (plain backbone only),
``learned`` (an untrained scorer: the timing is that of the trained one), ``training-free``,
``random``, ``grid``, or the path of a saved pruner (:func:`pacegeo.pruning.checkpoint.save_pruner`).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the timed runs (weights included);
on CPU the growth of the process's resident set over the runs (peak RSS after resetting the
high-water mark through ``/proc/self/clear_refs``, else ``ru_maxrss`` deltas), which is approximate:
the allocator keeps freed memory and the high-water mark may include earlier runs.
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from pacegeo.backbone import VGGT, vggt_1b
from pacegeo.errors import CheckpointError, PacegeoError
from pacegeo.pace import PaceVGGT
from pacegeo.stages import STAGES, StageClock, backbone_forward_staged
from pacegeo.pruning.checkpoint import load_pruner
from pacegeo.precision import DTYPE_CHOICES, dtype_name, resolve_dtype
from pacegeo.pruning import ScorerConfig, TokenScorer, keep_count
from pacegeo.memory import estimate_peak_memory
from pacegeo.pruning.flops import forward_flops, ideal_speedup

PRUNER_MODES = {"learned": "learned", "training-free": "training-free", "random": "random", "grid": "grid"}
OVERHEAD_STAGES = ("scorer", "select", "restoration")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random", help="vggt-1b-random | tiny-random | pacegeo-tiny | vggt-1b | PATH")
    p.add_argument("--pruner", default="training-free", help="none | learned | training-free | random | grid | PATH")
    p.add_argument("--frames", type=int, nargs="+", default=[8, 32, 64])
    p.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.5, 0.3, 0.2])
    p.add_argument("--size", type=int, default=224, help="image width in pixels (multiple of the patch size)")
    p.add_argument("--height", type=int, default=None, help="image height (default: --size)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--merge-ratio", type=float, default=0.5, help="fraction of pruned tokens merged, not dropped")
    p.add_argument("--ref-boost", type=float, default=1.0, help="reference-frame keep multiplier")
    p.add_argument("--encoder-layer", type=int, default=None,
                   help="prune inside the encoder after this many of its blocks (default: before the AA stack)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="autocast dtype of the forward (auto: pacegeo.precision.resolve_dtype, e.g. bf16 on CUDA)")
    p.add_argument("--reference-dtype", default=None, choices=DTYPE_CHOICES,
                   help="also time keep 1 in this dtype (e.g. float32) and report every keep's speed-up over it")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--json", type=Path, required=True, help="output JSON (a list of records)")
    p.add_argument("--plot", type=Path, default=None, help="PNG of speedup vs frames for each keep")
    return p.parse_args(argv)


# -- models ---------------------------------------------------------------------------------------


def random_tiny_config():
    """The pacegeo-tiny architecture (or an equivalent tiny() model on older backbones)."""
    from pacegeo import backbone

    if hasattr(backbone, "pacegeo_tiny"):
        return backbone.pacegeo_tiny(), "pacegeo_tiny() architecture, random weights"
    return backbone.tiny(embed_dim=192, depth=6, num_heads=4, dino_depth=2), "tiny(192, depth 6, 4 heads, dino 2), random weights"


def build_backbone(name: str, device: torch.device) -> tuple[VGGT, str]:
    torch.manual_seed(0)
    if name == "vggt-1b-random":
        with torch.device(device):
            return VGGT(vggt_1b()).eval(), "VGGT-1B architecture, random weights"
    if name == "tiny-random":
        config, what = random_tiny_config()
        with torch.device(device):
            return VGGT(config).eval(), what
    from pacegeo.hub import bundled_models, checkpoints_dir, load_backbone

    if name == "pacegeo-tiny" and name not in bundled_models():
        raise CheckpointError(
            f"pacegeo-tiny is not available yet (no pacegeo-tiny.safetensors in {checkpoints_dir()}); "
            "use --model tiny-random to time a random model of the same architecture"
        )
    return load_backbone(name, device=device), f"weights from {name}"


def build_pruner(backbone: VGGT, pruner: str, args) -> tuple[PaceVGGT | None, str]:
    common = dict(merge_ratio=args.merge_ratio, ref_boost=args.ref_boost, amp_dtype=args.dtype, seed=args.seed)
    if pruner == "none":
        return None, "plain backbone"
    if pruner in PRUNER_MODES:
        scorer = None
        if pruner == "learned":
            torch.manual_seed(args.seed)
            scorer = TokenScorer(ScorerConfig.for_backbone(backbone))
            print("note: --pruner learned without a path uses an untrained scorer (same cost as a trained one)")
        pace = PaceVGGT(backbone, scorer=scorer, mode=PRUNER_MODES[pruner], **common)
        pace.encoder_layer = args.encoder_layer
        return pace, pruner + (f", pruned inside the encoder after block {args.encoder_layer}" if args.encoder_layer else "")
    pace = load_pruner(pruner, backbone, **common)
    return pace, f"{pace.mode} from {pruner}"


# -- measurement ----------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class MemoryProbe:
    """Peak memory over a block of runs (see the module docstring for what it means on CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_memory_allocated"
        if device.type != "cuda":
            self.kind = "cpu_rss_growth_approx"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        self.hwm_reset = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak-RSS high-water mark
            self.hwm_reset = True
        except OSError:
            pass
        self.base = _proc_status("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.hwm_reset and _proc_status("VmHWM") is not None:
            return max(0, _proc_status("VmHWM") - self.base)
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base_maxrss)


def available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate" in text or "not enough memory" in text)


def run_once(backbone: VGGT, pace: PaceVGGT | None, images: torch.Tensor, keep: float, amp) -> tuple[float, dict, dict | None]:
    """One timed forward: (seconds, seconds per stage, pruning statistics or None)."""
    device = images.device
    _sync(device)
    start = time.perf_counter()
    if pace is None:
        clock = StageClock(device, True)
        backbone_forward_staged(backbone, images, clock, amp)
        stages, stats = clock.times, None
    else:
        pace.amp_dtype = amp
        out = pace(images, keep=keep, timings=True)
        stats = out["pruning"]
        stages = stats["timings"]
    _sync(device)
    total = time.perf_counter() - start
    return total, {stage: float(stages.get(stage, 0.0)) for stage in STAGES}, stats


def measure(backbone, pace, images, variants, repeats: int, warmup: int, probe: MemoryProbe) -> dict:
    """Time every variant ``(keep, autocast dtype)`` on the same images, round-robin: all warm-ups
    first, then ``repeats`` rounds that run each variant once, so that load from other processes
    hits every variant alike.

    Returns ``{variant: result}``; a result holds ``times_s``, ``median_s``, ``stage_s`` (median per
    stage), ``peak_mem_bytes`` (largest over the runs) and the pruning statistics, or ``error``
    when the configuration ran out of memory.
    """
    results: dict[tuple, dict] = {v: {"times_s": [], "stages": [], "peaks": []} for v in variants}

    def attempt(variant: tuple, timed: bool) -> None:
        res = results[variant]
        keep, amp = variant
        if "error" in res:
            return
        try:
            probe.start()
            total, stages, stats = run_once(backbone, pace, images, keep, amp)
            peak = probe.peak()
        except Exception as err:  # report too-large configurations instead of crashing
            if not is_oom(err):
                raise
            if images.device.type == "cuda":
                torch.cuda.empty_cache()
            res["error"] = f"out of memory ({type(err).__name__}); use fewer frames or a smaller size"
            return
        if timed:
            res["times_s"].append(total)
            res["stages"].append(stages)
            res["peaks"].append(peak)
            res["stats"] = stats

    with torch.inference_mode():
        for variant in variants:
            for _ in range(warmup):
                attempt(variant, timed=False)
        for _ in range(repeats):
            for variant in variants:
                attempt(variant, timed=True)
    out = {}
    for variant, res in results.items():
        if "error" in res:
            out[variant] = {"error": res["error"]}
            continue
        stage_s = {stage: statistics.median(run[stage] for run in res["stages"]) for stage in STAGES}
        out[variant] = {"times_s": res["times_s"], "median_s": statistics.median(res["times_s"]), "stage_s": stage_s,
                     "peak_mem_bytes": max(res["peaks"]), "stats": res.get("stats")}
    return out


# -- report ---------------------------------------------------------------------------------------


def print_table(records: list[dict]) -> None:
    head = f"{'frames':>6} {'keep':>5} {'AA tokens':>10} {'median ms':>10} {'speedup':>8} {'ideal':>7} {'ratio':>6} {'peak MB':>9} {'sc+rest %':>9} {'overhead %':>10}"
    print(head)
    print("-" * len(head))
    for r in records:
        if r.get("error"):
            print(f"{r['frames']:>6} {r['keep']:>5.2f}  skipped: {r['error']}")
            continue
        ratio = r["speedup"] / r["ideal_speedup"] if r["ideal_speedup"] else float("nan")
        print(
            f"{r['frames']:>6} {r['keep']:>5.2f} {r['aa_tokens']:>10} {1000 * r['median_s']:>10.1f} "
            f"{r['speedup']:>8.2f} {r['ideal_speedup']:>7.2f} {ratio:>6.2f} {r['peak_mem_bytes'] / 2**20:>9.1f} "
            f"{100 * r['scorer_restoration_share']:>9.2f} {100 * r['pruner_overhead_share']:>10.2f}"
        )


def plot(records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    keeps = sorted({r["keep"] for r in records if not r.get("error") and r["keep"] < 1}, reverse=True)
    for keep in keeps:
        rows = sorted((r for r in records if r["keep"] == keep and not r.get("error")), key=lambda r: r["frames"])
        frames = [r["frames"] for r in rows]
        line, = ax.plot(frames, [r["speedup"] for r in rows], "o-", label=f"keep {keep:g}")
        ax.plot(frames, [r["ideal_speedup"] for r in rows], "x--", color=line.get_color(), alpha=0.5)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("frames")
    ax.set_ylabel("speedup vs keep 1 (dashed: FLOP ideal)")
    ax.set_xscale("log", base=2)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _finite(value):
    """JSON-safe copy: non-finite floats become None, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# -- main -----------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    height = args.height or args.size
    width = args.size
    try:
        for keep in args.keep:
            keep_count(keep, 1)  # validates
        backbone, model_desc = build_backbone(args.model, device)
        ps = backbone.config.aggregator.patch_size
        if height % ps or width % ps:
            print(f"error: image size {height}x{width} must be a multiple of the patch size {ps}", file=sys.stderr)
            return 2
        pace, pruner_desc = build_pruner(backbone, args.pruner, args)
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        amp = resolve_dtype(args.dtype, device)
        ref_amp = resolve_dtype(args.reference_dtype, device) if args.reference_dtype else None
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    dtype = dtype_name(amp)
    reference = (1.0, ref_amp) if args.reference_dtype and ref_amp != amp else None
    keeps = sorted(set(args.keep) | {1.0}, reverse=True)
    if 1.0 not in args.keep:
        print("note: keep 1 added as the speedup baseline")
    if pace is None and keeps != [1.0]:
        print("note: --pruner none times the plain backbone only (keep 1)")
        keeps = [1.0]
    print(f"model {args.model} ({model_desc}); pruner {pruner_desc}; {height}x{width} px; device {device} "
          f"({torch.get_num_threads()} threads); dtype {dtype}; median of {args.repeats} after {args.warmup} warm-up")

    probe = MemoryProbe(device)
    records = []
    config = backbone.config
    scorer_cfg = pace.scorer.config if pace is not None and pace.scorer is not None else None
    rest_cfg = pace.restoration.config if pace is not None else None
    mode = pace.mode if pace is not None else "none"
    param_bytes = sum(p.numel() * p.element_size() for p in backbone.parameters())
    for frames in sorted(args.frames):
        need = max(estimate_peak_memory(config, frames, (height, width), k, amp, weights_bytes=param_bytes,
                                        device=device.type, post=False, outputs_on_host=False).activations
                   for k in keeps) * args.batch
        free = available_bytes(device)
        gen = torch.Generator().manual_seed(args.seed)
        images = torch.rand(args.batch, frames, 3, height, width, generator=gen).to(device)
        base_flops = forward_flops(config, frames, height, width, 1.0, batch=args.batch)
        common = {
            "model": args.model, "pruner": args.pruner, "mode": mode, "frames": frames, "batch": args.batch,
            "height": height, "width": width, "device": str(device), "dtype": dtype,
            "threads": torch.get_num_threads(), "merge_ratio": args.merge_ratio, "ref_boost": args.ref_boost,
            "param_bytes": param_bytes, "repeats": args.repeats, "warmup": args.warmup,
            "encoder_layer": args.encoder_layer,
        }
        if free is not None and need > 0.9 * free:
            error = (f"needs about {need / 2**30:.1f} GiB of activations, {free / 2**30:.1f} GiB free; "
                     "use fewer frames or a smaller size")
            print(f"frames {frames}: skipped, {error}")
            records.extend({**common, "keep": keep, "error": error} for keep in keeps)
            continue
        variants = [(keep, amp) for keep in keeps] + ([reference] if reference else [])
        results = measure(backbone, pace, images, variants, args.repeats, args.warmup, probe)
        baseline = results[1.0, amp].get("median_s")
        ref_median = results[reference].get("median_s") if reference else None
        if reference:
            print(f"frames {frames:>4} keep 1 in {dtype_name(ref_amp)} (reference): "
                  f"{1000 * ref_median:9.1f} ms" if ref_median else f"frames {frames}: reference failed", flush=True)
        agg = config.aggregator
        n = (height // agg.patch_size) * (width // agg.patch_size)
        for keep in keeps:
            record = {**common, "keep": keep}
            result = results[keep, amp]
            if "error" in result:
                record["error"] = result["error"]
                print(f"frames {frames}, keep {keep:g}: {record['error']}")
                records.append(record)
                continue
            flops = forward_flops(config, frames, height, width, keep, batch=args.batch, mode=mode,
                                  scorer=scorer_cfg, restoration=rest_cfg, ref_boost=args.ref_boost,
                                  merge_ratio=args.merge_ratio, encoder_layer=args.encoder_layer)
            stats = result.pop("stats")
            stage_sum = sum(result["stage_s"].values()) or float("nan")
            record.update(
                result,
                aa_tokens=stats["aa_tokens"] if stats else frames * (agg.patch_start_idx + n),
                dense_aa_tokens=frames * (agg.patch_start_idx + n),
                patch_tokens_per_frame=n,
                kept_per_frame=stats["kept_per_frame"] if stats else [n] * frames,
                peak_mem_kind=probe.kind,
                flops=flops,
                flops_total=flops["total"],
                ideal_speedup=ideal_speedup(base_flops, flops),
                speedup=(baseline / result["median_s"]) if baseline else float("nan"),
                scorer_restoration_share=(result["stage_s"]["scorer"] + result["stage_s"]["restoration"]) / stage_sum,
                pruner_overhead_share=sum(result["stage_s"][s] for s in OVERHEAD_STAGES) / stage_sum,
                flops_overhead_share=sum(flops[s] for s in OVERHEAD_STAGES) / flops["total"],
            )
            record["speedup_over_ideal"] = record["speedup"] / record["ideal_speedup"]
            if ref_median:
                record.update(reference_dtype=dtype_name(ref_amp), reference_median_s=ref_median,
                              speedup_vs_reference=ref_median / result["median_s"])
            records.append(record)
            print(f"frames {frames:>4} keep {keep:<4g} {1000 * record['median_s']:9.1f} ms  "
                  f"speedup {record['speedup']:.2f} (ideal {record['ideal_speedup']:.2f})"
                  + (f", {record['speedup_vs_reference']:.2f} over keep 1 in {dtype_name(ref_amp)}" if ref_median else ""),
                  flush=True)
        del images

    print()
    print_table(records)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_finite(records), indent=1))
    print(f"\nwrote {args.json}")
    if args.plot:
        plot(records, args.plot, f"{args.model} / {pruner_desc}, {height}x{width}, {device}")
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
