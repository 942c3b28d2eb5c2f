"""Held-out SynthRooms quality of a backbone, with and without pruning.

Scenes are generated from seeds far below the training range (training scenes use seeds
>= 1,000,000), with ``pacegeo synth``'s default trajectories (``--traj-frames`` frames); each clip
takes ``--frames`` of them, first frame plus a uniform stride, rendered at the model resolution
with exact ground truth. Reported per pruner and keep:

* depth AbsRel and delta<1.25 after per-frame median scaling, against the constant-depth baseline;
* relative rotation / translation-direction errors over all frame pairs: RRA@15, RTA@15, AUC@30
  and the median rotation error, against the identity-pose baseline (rotation only);
* point Chamfer (mean of accuracy and completeness) between points unprojected from predicted depth
  and cameras and the ground-truth points, after a Sim(3) fit on pixel correspondences, in units of
  the scene scale (ground truth is normalised so that the mean point distance is 1);
* fidelity to the unpruned model (:mod:`pacegeo.fidelity`; what pruning changes, without the
  backbone's own error; 0 for the unpruned model): median relative-rotation and translation-direction
  deviation over frame pairs, median relative depth deviation, and the Chamfer distance between
  the two runs' points in units of the scene size;
* where translation-direction errors come from: RTA@15 of the predicted camera centres with the
  true rotations (``rta15_true_rotations``) and of the predicted rotations with the true centres
  (``rta15_true_centres``);
* median forward latency.

Per-scene values of the camera and depth metrics are kept in the JSON; the markdown compares the
pruner named ``learned`` with the best other one at each keep, with a paired bootstrap interval
over scenes.

    python eval/synthrooms.py --model pacegeo-tiny --pruners none --json out/tiny.json
    python eval/synthrooms.py --model pacegeo-tiny --pruners none training-free random grid \
        learned=checkpoints/pacegeo-tiny-pruner.safetensors --keep 1 0.7 0.5 0.3 0.2 --frames 8 32 \
        --json out/pruners.json --md out/pruners.md --plot out/pruners.png
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pacegeo.errors import PacegeoError
from pacegeo.evaluation.stats import paired_gain_ci
from pacegeo.evaluation.synthclips import clip_metrics, eval_clip, run_reference
from pacegeo.hub import load_backbone, resolve_weights
from pacegeo.models import read_preprocess
from pacegeo.pace import check_dense_tail
from pacegeo.pruning.early import check_encoder_layer

EVAL_SEED_BASE = 500_000


def build_runner(backbone, spec: str, learned_coverage: float | None = None, encoder_layer: int | None = None,
                 dense_tail: int = 0):
    """``spec``: ``none``, a pruner name of :func:`pacegeo.models.build_pruner` (``training-free``,
    ``random``, ``grid``, ``learned``), ``oracle`` or ``oracle-camera`` (:func:`oracle_runner`), ``NAME=PATH`` of a pruner file (loaded with
    ``learned_coverage`` when given, else with the value saved in the file), or ``fastvggt``: no
    pruning, tokens merged inside global attention (:mod:`pacegeo.pruning.global_merge`) with a
    merge ratio of ``1 - keep``. ``encoder_layer`` and ``dense_tail`` set the pruned forward's
    :attr:`pacegeo.pace.PaceVGGT.encoder_layer` (pruning inside the encoder) and
    :attr:`~pacegeo.pace.PaceVGGT.dense_tail` (last AA blocks on the re-expanded sequence)."""
    if spec == "none":
        return "none", lambda images, keep: backbone(images)
    if spec == "fastvggt":
        from pacegeo.pruning.global_merge import global_merging, merge_config

        def merged(images, keep):
            with global_merging(backbone.aggregator, merge_config(1.0 - keep), images.shape[1], images.shape[-1] // 14):
                return backbone(images)

        return "fastvggt", merged
    from pacegeo.models import build_pruner
    from pacegeo.pruning.checkpoint import load_pruner

    if "=" in spec:
        name, path = spec.split("=", 1)
        extra = {} if learned_coverage is None else {"learned_coverage": learned_coverage}
        pace = load_pruner(path, backbone, **extra).eval()
    else:
        name, (pace, _) = spec, build_pruner(backbone, "learned" if spec in ORACLES else spec, amp_dtype="auto")
    pace.encoder_layer = check_encoder_layer(backbone, encoder_layer)
    pace.dense_tail = check_dense_tail(backbone, dense_tail)
    if spec in ORACLES:
        return name, oracle_runner(backbone, pace, ORACLES[spec])
    return name, lambda images, keep: pace(images, keep=keep)


#: diagnostic pruners: the bundled learned pruner with its scores replaced by the unpruned model's
#: own global-attention mass on the same frames (received from every token, or from the camera tokens)
ORACLES = {"oracle": "all", "oracle-camera": "camera"}


def oracle_runner(backbone, pace, queries: str):
    """The pruned forward of ``pace`` keeping the tokens the unpruned backbone attends to most (a
    ceiling for any scorer, not a method: it needs an unpruned pass first). Selection, merging and
    restoration are ``pace``'s; only its scores are replaced by the log attention mass of
    :func:`pacegeo.pruning.distill.attention_targets`."""
    from pacegeo.pruning.distill import attention_targets

    def run(images, keep):
        logits = attention_targets(backbone, images, queries).clamp(min=1e-12).log()
        pace.score = lambda feats, grid_hw: logits  # shadows the method for this call
        try:
            return pace(images, keep=keep)
        finally:
            del pace.score

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pacegeo-tiny")
    p.add_argument("--pruners", nargs="+", default=["none"])
    p.add_argument("--keep", type=float, nargs="+", default=[1.0])
    p.add_argument("--frames", type=int, nargs="+", default=[8])
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--seed", type=int, default=EVAL_SEED_BASE)
    p.add_argument("--traj-frames", type=int, default=64, help="length of the default trajectory clips sample from")
    p.add_argument("--size", default=None, help="HxW model input (default: the checkpoint's training size)")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--md", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--learned-coverage", type=float, default=None,
                   help="override the coverage prior of the NAME=PATH pruners (default: each file's own)")
    p.add_argument("--encoder-layer", type=int, default=None, metavar="L",
                   help="pruners prune inside the encoder after its block L (default: after the encoder)")
    p.add_argument("--dense-tail", type=int, default=0, metavar="T",
                   help="pruners run the last T AA blocks on the sequence re-expanded by their restoration (default 0)")
    p.add_argument("--append", action="store_true",
                   help="add to the records already in --json (replacing those with the same frames, pruner and keep)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    try:
        model = load_backbone(args.model).eval()
        if args.size:
            height, width = (int(v) for v in args.size.lower().split("x"))
        else:
            width, _ = read_preprocess(resolve_weights(args.model), default_size=model.config.aggregator.img_size)
            height = int(round(width * 0.75 / 14)) * 14
        runners = [build_runner(model, spec, args.learned_coverage, args.encoder_layer, args.dense_tail)
                   for spec in args.pruners]
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    records = []
    for frames in args.frames:
        clips = [eval_clip(args.seed + i, frames, height, width, args.traj_frames) for i in range(args.scenes)]
        # One unpruned pass gives the reference cameras the pruned ones are compared with, and the `none` row.
        reference, unpruned_metrics, unpruned_times = [], [], []
        with torch.inference_mode():
            for clip in clips:
                start = time.perf_counter()
                out = model(clip["images"][None])
                unpruned_times.append(time.perf_counter() - start)
                reference.append(run_reference(out, tuple(clip["images"].shape[-2:])))
                unpruned_metrics.append(clip_metrics(out, clip, reference=reference[-1]))
        for name, run in runners:
            keeps = [1.0] if name == "none" else args.keep
            for keep in keeps:
                if name == "none":
                    per_clip, times = unpruned_metrics, unpruned_times
                else:
                    per_clip, times = [], []
                    with torch.inference_mode():
                        for clip, ref in zip(clips, reference):
                            images = clip["images"][None]
                            start = time.perf_counter()
                            out = run(images, keep)
                            times.append(time.perf_counter() - start)
                            per_clip.append(clip_metrics(out, clip, reference=ref))
                rec = {k: float(np.mean([m[k] for m in per_clip])) for k in per_clip[0]}
                rec["per_scene"] = {k: [round(m[k], 6) for m in per_clip] for k in SCENE_METRICS}
                rec.update(model=args.model, pruner=name, keep=keep, frames=frames, scenes=len(clips),
                           encoder_layer=None if name == "none" else args.encoder_layer,
                           dense_tail=0 if name == "none" else args.dense_tail,
                           height=height, width=width, median_s=float(np.median(times)))
                records.append(rec)
                print(f"S={frames:3d} {name:>14} keep={keep:.2f}  AbsRel {rec['abs_rel']:.3f} (const {rec['abs_rel_constant']:.3f})"
                      f"  rot {rec['rot_err_med']:.2f} deg (identity {rec['rot_err_identity_med']:.2f})"
                      f"  RRA15 {rec['rra15']:.3f}  AUC30 {rec['auc30']:.3f}  Chamfer {rec['chamfer']:.4f}"
                      f"  rot. dev. {rec['rot_dev_med']:.2f} deg  depth dev. {100 * rec['depth_dev_med']:.2f}%"
                      f"  {rec['median_s'] * 1000:.0f} ms", flush=True)
    if args.append and args.json.exists():
        new_keys = {(r["frames"], r["pruner"], r["keep"]) for r in records}
        old = [r for r in json.loads(args.json.read_text()) if (r["frames"], r["pruner"], r["keep"]) not in new_keys]
        records = old + records
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(records, indent=1))
    if args.md:
        write_markdown(records, args.md)
    if args.plot:
        plot(records, args.plot)
    return 0


def write_markdown(records: list[dict], path: Path) -> None:
    cols = ["frames", "pruner", "keep", "abs_rel", "abs_rel_constant", "delta_1_25", "rot_err_med",
            "rot_err_identity_med", "rra15", "rta15", "auc30", "chamfer", "rot_dev_med", "trans_dev_med",
            "depth_dev_med", "points_dev", "median_s"]
    lines = []
    variants = {(r.get("encoder_layer"), r.get("dense_tail", 0)) for r in records if r["pruner"] != "none"}
    for layer, tail in sorted(variants, key=str):
        if layer is not None or tail:
            lines += [f"Pruned runs: {'inside the encoder after its block %d' % layer if layer is not None else 'before the AA stack'}"
                      f"{', last %d AA blocks on the re-expanded sequence' % tail if tail else ''}.", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        cells = (r.get(c, "-") for c in cols)
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in cells) + " |")
    lines += checks_table(records)
    lines += fidelity_table(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


CHECK_METRICS = (("abs_rel", False), ("auc30", True), ("rra15", True))  # (metric, higher is better)
SCENE_METRICS = ("abs_rel", "auc30", "rra15", "rot_err_med", "rot_dev_med", "trans_dev_med", "depth_dev_med",
                 "points_dev")  # kept per scene
FIDELITY_METRICS = ("rot_dev_med", "trans_dev_med", "depth_dev_med", "points_dev")  # lower is better


def checks_table(records: list[dict], learned: str = "learned", ablation: str = "stage1") -> list[str]:
    """Markdown rows comparing ``learned`` with the other pruners and with the unpruned model.

    For each clip length and keep: the learned value of each metric, the best of the other pruners
    (``ablation``, the stage-1-only scorer, is reported in its own column instead; the oracles are
    ceilings, not pruners, and are left out), whether learned
    beats it, the 95% interval of that gain over scenes (paired bootstrap; ``-`` for records
    without per-scene values) and the relative change against the unpruned backbone (positive =
    worse). Empty when the records hold no ``learned`` pruner.
    """
    out = []
    for frames in sorted({r["frames"] for r in records}):
        recs = [r for r in records if r["frames"] == frames]
        base = next((r for r in recs if r["pruner"] == "none"), None)
        for keep in sorted({r["keep"] for r in recs if r["pruner"] == learned}, reverse=True):
            at = {r["pruner"]: r for r in recs if r["keep"] == keep and r["pruner"] != "none"}
            if learned not in at:
                continue
            if not out:
                out = ["", "Learned pruner against the best other pruner at the same keep, and change against unpruned"
                       " (positive = worse):", "",
                       f"| frames | keep | metric | learned | best other | learned better | gain, 95% interval"
                       f" | {ablation} | vs unpruned |",
                       "|---|---|---|---|---|---|---|---|---|"]
            for key, higher in CHECK_METRICS:
                others = {n: r[key] for n, r in at.items() if n not in (learned, ablation, *ORACLES)}
                abl = f"{at[ablation][key]:.4g}" if ablation in at else "-"
                mine = at[learned][key]
                if others:
                    best_name = (max if higher else min)(others, key=others.get)
                    best = f"{others[best_name]:.4g} ({best_name})"
                    wins = "yes" if (mine > others[best_name] if higher else mine < others[best_name]) else "no"
                    ci = "-"
                    scenes = (at[learned].get("per_scene", {}).get(key), at[best_name].get("per_scene", {}).get(key))
                    if all(scenes):
                        gain, lo, hi = paired_gain_ci(*scenes, higher=higher)
                        ci = f"{gain:+.3g} [{lo:+.3g}, {hi:+.3g}]"
                else:
                    best, wins, ci = "-", "-", "-"
                change = "-"
                if base is not None and base[key]:
                    rel = (mine - base[key]) / abs(base[key])
                    change = f"{(-rel if higher else rel) * 100:+.1f}%"
                out.append(f"| {frames} | {keep:g} | {key} | {mine:.4g} | {best} | {wins} | {ci} | {abl} | {change} |")
    return out


def fidelity_table(records: list[dict], learned: str = "learned") -> list[str]:
    """Markdown rows: the learned pruner's fidelity to the unpruned model against every other
    pruner at each keep <= 0.5, with the paired bootstrap interval of each gain over scenes
    (positive = learned closer to the unpruned model)."""
    rows = []
    for frames in sorted({r["frames"] for r in records}):
        recs = [r for r in records if r["frames"] == frames and r["pruner"] != "none"]
        for keep in sorted({r["keep"] for r in recs if r["pruner"] == learned and r["keep"] <= 0.5}, reverse=True):
            at = {r["pruner"]: r for r in recs if r["keep"] == keep}
            for key in FIDELITY_METRICS:
                mine = at[learned]
                cells = []
                for name, other in at.items():
                    if name == learned:
                        continue
                    gain = "-"
                    scenes = (mine.get("per_scene", {}).get(key), other.get("per_scene", {}).get(key))
                    if all(scenes):
                        g, lo, hi = paired_gain_ci(*scenes, higher=False)
                        gain = f"{g:+.3g} [{lo:+.3g}, {hi:+.3g}]"
                    cells.append(f"{name} {other[key]:.4g}, gain {gain}")
                rows.append(f"| {frames} | {keep:g} | {key} | {mine[key]:.4g} | {'; '.join(cells)} |")
    if not rows:
        return []
    return ["", "Fidelity to the unpruned model (rotation and translation-direction deviation in degrees, depth deviation"
            " and point deviation as fractions; lower is better): learned against each other pruner, gain with its"
            " 95% paired-bootstrap interval over scenes (positive = learned closer):", "",
            "| frames | keep | metric | learned | others |", "|---|---|---|---|---|", *rows]


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("abs_rel", "depth AbsRel (lower is better)"), ("auc30", "camera AUC@30"),
               ("rra15", "RRA@15"), ("chamfer", "Chamfer (scene units)")]
    frame_counts = sorted({r["frames"] for r in records})
    fig, axes = plt.subplots(len(frame_counts), len(metrics), figsize=(4 * len(metrics), 3.2 * len(frame_counts)), squeeze=False)
    for row, frames in enumerate(frame_counts):
        recs = [r for r in records if r["frames"] == frames]
        for col, (key, title) in enumerate(metrics):
            ax = axes[row][col]
            for name in dict.fromkeys(r["pruner"] for r in recs):
                pts = sorted((r["keep"], r[key]) for r in recs if r["pruner"] == name)
                if name == "none":
                    ax.axhline(pts[0][1], color="k", ls="--", lw=1, label="unpruned")
                else:
                    ax.plot(*zip(*pts), marker="o", label=name)
            ax.set_title(f"{title}, S={frames}", fontsize=9)
            ax.set_xlabel("keep")
            ax.invert_xaxis()
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
