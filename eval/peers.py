"""Accelerators side by side on one backbone, the same frames and one machine.

Methods (``method`` in the records; pacegeo's own configurations start with ``pace``):

* ``unpruned``: the frozen backbone;
* ``fastvggt``: training-free token merging inside global attention, after FastVGGT
  (:mod:`pacegeo.pruning.global_merge`; setting: merge ratio);
* ``come``: confidence-guided merging of 3x3 cells inside the encoder, after Co-Me
  (:mod:`pacegeo.pruning.come`; its predictor is trained for the backbone, ``--come``; setting:
  fraction of cells merged);
* ``pace``: pacegeo's learned pre-AA pruning (setting: keep); ``pace-training-free``: the same
  without training; ``pace+fastvggt``: pre-AA pruning, then merging inside global attention;
  ``pace-encoder``: pruning inside the encoder after block ``--encoder-layer``.

Every method runs at the model level under the one precision rule (:mod:`pacegeo.precision`,
``--dtype auto``) on held-out SynthRooms clips (:mod:`pacegeo.evaluation.synthclips`, seeds from
``--seed``). Timing is round-robin (each round runs every method once, so machine load hits all
alike); per clip the median of ``--rounds``, then the median over clips; speed-up against the
unpruned median. Per method also: FLOPs actually executed (:func:`pacegeo.evaluation.flopcount.counted_flops`)
and the FLOP-ideal speed-up, the peak of live tensor bytes of one forward
(:class:`pacegeo.memtrace.TensorMemoryTracker`, first clip), ground-truth quality (depth AbsRel,
median relative-rotation error, Chamfer) and fidelity to the unpruned run (rotation and depth
deviation), means over clips. The markdown then asks whether a pacegeo setting dominates each peer
setting, compares each peer setting clip by clip with the pacegeo settings of similar speed-up
(paired bootstrap intervals), and sets the combinations against pre-AA pruning alone;
``--from-json`` rewrites the markdown and the plot from a report without measuring again.

    python eval/peers.py --model pacegeo-tiny --frames 32 --scenes 20 --json eval/results/peers_synthrooms_S32.json \
        --md eval/results/peers_synthrooms_S32.md --plot eval/results/peers_synthrooms_S32.png
    # latency only, VGGT-1B random weights (no download), CPU:
    python eval/peers.py --model vggt-1b-random --latency-only --frames 4 --size 392x518 --rounds 2 \
        --json eval/results/peers_vggt1b_cpu.json --md eval/results/peers_vggt1b_cpu.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pacegeo.errors import PacegeoError
from pacegeo.evaluation.flopcount import counted_flops
from pacegeo.evaluation.stats import paired_gain_ci
from pacegeo.evaluation.synthclips import clip_metrics, eval_clip, run_reference
from pacegeo.memtrace import TensorMemoryTracker
from pacegeo.pace import PaceVGGT
from pacegeo.precision import resolve_dtype
from pacegeo.pruning.come import CoMeConfig, CoMeVGGT, ConfidencePredictor, load_confidence
from pacegeo.pruning.global_merge import global_merging, merge_config

SEED = 500_000
METRICS = ("abs_rel", "rot_err_med", "chamfer", "rot_dev_med", "depth_dev_med")

#: (method, setting) pairs of the quality run; settings: keep, merge ratio, fraction of cells, or both
SETTINGS = [
    ("unpruned", None),
    *[("fastvggt", r) for r in (0.5, 0.7, 0.9)],
    *[("come", r) for r in (0.3, 0.6, 0.9)],
    *[("pace", k) for k in (0.8, 0.75, 0.7, 0.65, 0.6, 0.5, 0.3)],
    *[("pace-training-free", k) for k in (0.5, 0.3)],
    *[("pace+fastvggt", kr) for kr in ((0.7, 0.9), (0.7, 0.5), (0.5, 0.9), (0.5, 0.5), (0.3, 0.5))],
    *[("pace-encoder", k) for k in (0.5, 0.3)],
]
#: the latency-only run on VGGT-1B random weights (no trained pruner: training-free scores)
LATENCY_SETTINGS = [
    ("unpruned", None), ("fastvggt", 0.9), ("come", 0.6), ("pace-training-free", 0.5), ("pace-training-free", 0.3),
    ("pace+fastvggt", (0.5, 0.9)), ("pace-encoder", 0.3),
]


def setting_text(setting) -> str:
    if setting is None:
        return "-"
    if isinstance(setting, tuple):
        return f"keep {setting[0]:g} + merge {setting[1]:g}"
    return f"{setting:g}"


def build_runners(backbone, settings, pruner_path: str | None, come_path: str | None, encoder_layer: int,
                  come_layer: int, dtype: str):
    """``(method, setting) -> images -> output dict`` for every setting, all under ``dtype``."""
    from pacegeo.pruning.checkpoint import load_pruner

    free = PaceVGGT(backbone, mode="training-free", amp_dtype=dtype).eval()
    learned = load_pruner(pruner_path, backbone, amp_dtype=dtype).eval() if pruner_path else free
    inside = load_pruner(pruner_path, backbone, amp_dtype=dtype).eval() if pruner_path else \
        PaceVGGT(backbone, mode="training-free", amp_dtype=dtype).eval()
    inside.encoder_layer = encoder_layer
    if come_path:
        predictor = load_confidence(come_path, backbone)
    else:  # latency only: an untrained predictor costs the same
        predictor = ConfidencePredictor(CoMeConfig(in_dim=backbone.config.aggregator.embed_dim, layer=come_layer))
    come = CoMeVGGT(PaceVGGT(backbone, mode="training-free", amp_dtype=dtype), predictor.eval(), amp_dtype=dtype)
    for module in (free, learned, inside, come):
        module.requires_grad_(False)

    def merged(run, ratio):
        def call(images):
            with global_merging(backbone.aggregator, merge_config(ratio), images.shape[1], images.shape[-1] // 14):
                return run(images)
        return call

    runners = {}
    for method, setting in settings:
        if method == "unpruned":
            run = lambda images: free(images, keep=1.0)  # the backbone's own path, same precision rule
        elif method == "fastvggt":
            run = merged(lambda images: free(images, keep=1.0), setting)
        elif method == "come":
            run = (lambda m: lambda images: come(images, merge=m))(setting)
        elif method == "pace":
            run = (lambda k: lambda images: learned(images, keep=k))(setting)
        elif method == "pace-training-free":
            run = (lambda k: lambda images: free(images, keep=k))(setting)
        elif method == "pace+fastvggt":
            keep, ratio = setting
            run = merged((lambda k: lambda images: learned(images, keep=k))(keep), ratio)
        elif method == "pace-encoder":
            run = (lambda k: lambda images: inside(images, keep=k))(setting)
        else:
            raise ValueError(method)
        runners[(method, setting)] = run
    return runners


def timed(run, images) -> tuple[dict, float]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = run(images)
    return out, time.perf_counter() - start


def measure(runners, clips, rounds: int, quality: bool) -> dict:
    """Per setting: per-clip median seconds and (with ``quality``) per-clip metrics."""
    per = {key: {"seconds": [], "metrics": []} for key in runners}
    first = clips[0]["images"][None]
    for run in runners.values():  # warm-up
        timed(run, first)
    for i, clip in enumerate(clips):
        images = clip["images"][None]
        times = {key: [] for key in runners}
        outs = {}
        for _ in range(rounds):
            for key, run in runners.items():
                outs[key], seconds = timed(run, images)
                times[key].append(seconds)
        reference = run_reference(outs[("unpruned", None)], tuple(images.shape[-2:])) if quality else None
        for key in runners:
            per[key]["seconds"].append(statistics.median(times[key]))
            if quality:
                per[key]["metrics"].append(clip_metrics(outs[key], clip, reference=reference))
        print(f"clip {i + 1}/{len(clips)}: " + ", ".join(
            f"{m} {setting_text(s)} {statistics.median(times[(m, s)]):.2f}s" for m, s in runners), flush=True)
    return per


def costs(runners, images) -> dict:
    """FLOPs and peak live tensor bytes of one forward of every setting."""
    out = {}
    for key, run in runners.items():
        with torch.inference_mode():
            flops = counted_flops(lambda: run(images))
            with TensorMemoryTracker() as tracker:
                run(images)
        out[key] = {"flops": flops, "peak_tensor_bytes": tracker.peak}
    return out


def records_of(per, cost, quality: bool) -> list[dict]:
    base_s = statistics.median(per[("unpruned", None)]["seconds"])
    base_f = cost[("unpruned", None)]["flops"]
    records = []
    for (method, setting), values in per.items():
        seconds = statistics.median(values["seconds"])
        rec = {"method": method, "setting": setting_text(setting),
               "keep": setting[0] if isinstance(setting, tuple) else (setting if method.startswith("pace") else 1.0),
               "seconds": seconds, "speedup": base_s / seconds, **cost[(method, setting)],
               "flop_ideal_speedup": base_f / cost[(method, setting)]["flops"]}
        if quality:
            for k in METRICS:
                rec[k] = float(np.mean([m[k] for m in values["metrics"]]))
            rec.update(rot_err_deg=rec["rot_err_med"], rot_dev_deg=rec["rot_dev_med"], depth_dev=rec["depth_dev_med"],
                       per_scene={k: [round(m[k], 6) for m in values["metrics"]] for k in METRICS})
            rec["per_scene"]["seconds"] = [round(v, 5) for v in values["seconds"]]
        records.append(rec)
    return records


def dominance(records: list[dict]) -> list[str]:
    """Markdown: for every peer setting, the pacegeo settings at least as fast with no worse AbsRel
    and rotation error; and the combinations against pre-AA pruning alone."""
    ours = [r for r in records if r["method"].startswith("pace")]
    lines = ["", "Does a pacegeo setting dominate each peer setting (at least as fast, AbsRel and rotation error no worse)?", "",
             "| peer | setting | speed-up | AbsRel | rot. err. | dominating pacegeo settings |", "|---|---|---|---|---|---|"]
    for peer in (r for r in records if r["method"] in ("fastvggt", "come")):
        wins = [f"{r['method']} {r['setting']}" for r in ours
                if r["speedup"] >= peer["speedup"] and r["abs_rel"] <= peer["abs_rel"] and r["rot_err_deg"] <= peer["rot_err_deg"]]
        lines.append(f"| {peer['method']} | {peer['setting']} | {peer['speedup']:.2f}x | {peer['abs_rel']:.4f} | "
                     f"{peer['rot_err_deg']:.2f} | {', '.join(wins) or 'none'} |")
    lines += paired_view(records)
    alone = [r for r in records if r["method"] == "pace"]
    combos = [r for r in records if r["method"] in ("pace+fastvggt", "pace-encoder")]
    lines += ["", "Beyond pre-AA: combinations against pre-AA pruning alone at equal or better AbsRel (speed-up ratio).", "",
              "| pre-AA alone | speed-up | AbsRel | best combination with AbsRel no worse | its speed-up | ratio |", "|---|---|---|---|---|---|"]
    for a in alone:
        fits = [c for c in combos if c["abs_rel"] <= a["abs_rel"]]
        best = max(fits, key=lambda c: c["speedup"], default=None)
        lines.append(f"| pace {a['setting']} | {a['speedup']:.2f}x | {a['abs_rel']:.4f} | "
                     + (f"{best['method']} {best['setting']} | {best['speedup']:.2f}x | {best['speedup'] / a['speedup']:.2f} |"
                        if best else "none | - | - |"))
    return lines


#: the paired view compares each peer setting with the pacegeo settings this close in speed-up
SPEED_BAND = 0.05


def paired_view(records: list[dict]) -> list[str]:
    """Markdown: each peer setting against the pacegeo settings within :data:`SPEED_BAND` of its
    speed-up, with the mean per-clip gain in AbsRel and rotation error (positive: pacegeo better)
    and its 95% paired bootstrap interval over clips (:func:`pacegeo.evaluation.stats.paired_gain_ci`)."""
    lines = ["", f"Paired view: each peer setting against the pacegeo settings within {SPEED_BAND:.0%} of its speed-up; "
             "gain = peer minus pacegeo per clip (positive: pacegeo better), mean over clips and 95% paired bootstrap "
             "interval. An interval that contains 0 means these clips do not tell the two apart.", "",
             "| peer | setting | speed-up | pacegeo | speed-up | AbsRel gain [95%] | rot. err. gain, deg [95%] |",
             "|---|---|---|---|---|---|---|"]
    ours = [r for r in records if r["method"].startswith("pace") and "per_scene" in r]
    for peer in (r for r in records if r["method"] in ("fastvggt", "come") and "per_scene" in r):
        near = [r for r in ours if abs(r["speedup"] / peer["speedup"] - 1) <= SPEED_BAND]
        for r in sorted(near, key=lambda r: -r["speedup"]):
            cells = []
            for key, digits in (("abs_rel", 4), ("rot_err_med", 2)):
                gain, lo, hi = paired_gain_ci(r["per_scene"][key], peer["per_scene"][key], higher=False)
                cells.append(f"{gain:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]")
            lines.append(f"| {peer['method']} | {peer['setting']} | {peer['speedup']:.2f}x | {r['method']} {r['setting']} | "
                         f"{r['speedup']:.2f}x | {cells[0]} | {cells[1]} |")
    return lines


def write_markdown(report: dict, path: Path) -> None:
    quality = not report["latency_only"]
    head = (f"{report['model']}, {report['scenes']} held-out SynthRooms clips (seeds {report['seed']}+) of {report['frames']} "
            f"frames at {report['width']}x{report['height']}, {report['device']}, {report['dtype']}, {report['threads']} threads; "
            "seconds: median over clips of the median of the rounds; quality: means over clips.")
    cols = ["method", "setting", "seconds", "speedup", "flop_ideal_speedup", "peak_tensor_bytes"]
    if quality:
        cols += ["abs_rel", "rot_err_deg", "chamfer", "rot_dev_deg", "depth_dev"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in report["records"]:
        cells = []
        for c in cols:
            v = r[c]
            cells.append(f"{v / 2**20:.0f} MiB" if c == "peak_tensor_bytes" else f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    if quality:
        lines += dominance(report["records"])
    path.write_text("\n".join(lines) + "\n")


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, label in ((axes[0], "abs_rel", "depth AbsRel"), (axes[1], "rot_err_deg", "median rotation error (deg)")):
        for method in dict.fromkeys(r["method"] for r in records):
            rows = sorted((r for r in records if r["method"] == method), key=lambda r: r["speedup"])
            ax.plot([r["speedup"] for r in rows], [r[metric] for r in rows], "o-" if len(rows) > 1 else "o", label=method)
        ax.set_xlabel("measured speed-up over unpruned")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pacegeo-tiny", help="a backbone name or path, or vggt-1b-random (latency only)")
    p.add_argument("--pruner", default=None, help="learned pruner (default: the model's bundled one)")
    p.add_argument("--come", default=None, help="Co-Me confidence predictor (default: checkpoints/<model>-come.safetensors)")
    p.add_argument("--encoder-layer", type=int, default=None, help="pace-encoder: encoder blocks before pruning (default: depth / 3)")
    p.add_argument("--come-layer", type=int, default=None, help="come with an untrained predictor: its layer (default: 7/12 of depth)")
    p.add_argument("--seed", type=int, default=SEED, help="first scene seed")
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", default=None, help="HxW (default: the model's training width, 3:4)")
    p.add_argument("--rounds", type=int, default=2, help="timing rounds per clip")
    p.add_argument("--methods", nargs="+", default=None, help="run only these methods (unpruned always runs)")
    p.add_argument("--latency-only", action="store_true", help="no quality metrics (random weights)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--from-json", action="store_true",
                   help="measure nothing: rewrite --md and --plot from the report already in --json")
    p.add_argument("--md", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args(argv)
    if args.from_json:
        if not args.json.is_file():
            print(f"error: --from-json: no report at {args.json}", file=sys.stderr)
            return 2
        write_outputs(json.loads(args.json.read_text()), args.md, args.plot)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        backbone, pruner, come_path = load_models(args)
        if args.size:
            height, width = (int(v) for v in args.size.lower().split("x"))
        else:
            from pacegeo.training.setup import model_size

            height, width = model_size(args.model, None)
        depth = backbone.config.aggregator.resolved_dino().depth
        encoder_layer = args.encoder_layer or max(1, depth // 3)
        come_layer = args.come_layer or max(1, round(depth * 7 / 12))
        settings = LATENCY_SETTINGS if args.latency_only else SETTINGS
        if args.methods:
            settings = [(m, v) for m, v in settings if m == "unpruned" or m in args.methods]
        runners = build_runners(backbone, settings, pruner, come_path, encoder_layer, come_layer, args.dtype)
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    clips = [eval_clip(args.seed + i, args.frames, height, width) for i in range(args.scenes)]
    per = measure(runners, clips, args.rounds, quality=not args.latency_only)
    cost = costs(runners, clips[0]["images"][None])
    report = {"model": args.model, "frames": args.frames, "scenes": args.scenes, "seed": args.seed, "height": height,
              "width": width, "device": "cpu", "dtype": str(resolve_dtype(args.dtype, torch.device("cpu"))),
              "threads": torch.get_num_threads(), "rounds": args.rounds, "latency_only": args.latency_only,
              "encoder_layer": encoder_layer, "come": come_path or f"untrained predictor after block {come_layer}",
              "pruner": pruner or "training-free", "records": records_of(per, cost, not args.latency_only)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    write_outputs(report, args.md, args.plot)
    return 0


def write_outputs(report: dict, md: Path | None, png: Path | None) -> None:
    if md:
        write_markdown(report, md)
        print(md.read_text())
    if png and not report["latency_only"]:
        plot(report["records"], png)


def load_models(args):
    """The backbone, the learned pruner path and the Co-Me predictor path of this run."""
    from pacegeo.hub import load_backbone

    if args.model == "vggt-1b-random":
        from pacegeo.backbone import VGGT, vggt_1b

        if not args.latency_only:
            raise PacegeoError("vggt-1b-random has random weights: use --latency-only")
        return VGGT(vggt_1b()).eval().requires_grad_(False), args.pruner, args.come
    backbone = load_backbone(args.model).eval().requires_grad_(False)
    pruner, come = args.pruner, args.come
    bundled = Path(__file__).resolve().parents[1] / "checkpoints"
    if pruner is None and (bundled / f"{args.model}-pruner.safetensors").is_file():
        pruner = str(bundled / f"{args.model}-pruner.safetensors")
    if come is None and (bundled / f"{args.model}-come.safetensors").is_file():
        come = str(bundled / f"{args.model}-come.safetensors")
    if come is None and not args.latency_only:
        raise PacegeoError(f"no Co-Me predictor for {args.model}: train one with train/come.py and pass --come")
    return backbone, pruner, come


if __name__ == "__main__":
    sys.exit(main())
