"""How far bf16 autocast moves pacegeo's outputs from float32 (decides the CPU default dtype).

For every case (model, frames, input size) and keep, the same images run twice through
``PaceVGGT`` (the pruned and unpruned forwards the pipeline runs): once in float32, once under bf16
autocast (embedding, attention stack, restoration and heads; see :mod:`pacegeo.precision`).
Reported per keep, bf16 against float32:

* depth: median and 90th percentile of ``|d_bf16 - d_fp32| / d_fp32`` over all pixels;
* point map: median and 90th percentile of ``|p_bf16 - p_fp32|`` over the median distance of the
  float32 points to their centroid (scale-free);
* cameras: relative rotation and translation-direction deviation over all frame pairs
  (``pacegeo.metrics.relative_pose_errors``), median and maximum, in degrees;

and, for scale, the same deviations between keep 0.3 and keep 1 in float32 (what pruning itself
changes). Cases: ``pacegeo-tiny`` (bundled weights) on the real kitchen photos at its own input
size and at 518 px, and VGGT-1B with seeded random weights (no download) on 4 of them at 518 px wide
(``--cases vggt-1b`` uses the official weights when they are in the Hugging Face cache).

    python eval/precision.py --images ../shared/data/images/kitchen --out eval/results/precision
    python eval/precision.py --cases tiny --frames 4            # quick

Writes ``<out>.json`` and ``<out>.md``. Deviation numbers do not depend on timing.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pacegeo.errors import PacegeoError
from pacegeo.geometry import pose_encoding_to_extri_intri
from pacegeo.metrics import relative_pose_errors
from pacegeo.pace import PaceVGGT
from pacegeo.pruning.checkpoint import load_pruner
from pacegeo.pipeline import prepare_inputs, select_frames
from pacegeo.precision import cpu_has_native_bf16

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "kitchen"
PRUNED_KEEP = 0.3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of photos (default: the shared kitchen set)")
    p.add_argument("--cases", nargs="+", default=["tiny", "tiny-518", "vggt-1b-random"],
                   choices=["tiny", "tiny-518", "vggt-1b-random", "vggt-1b"],
                   help="vggt-1b: the official weights (from the Hugging Face cache), at 518 px")
    p.add_argument("--frames", type=int, default=8, help="frames of the pacegeo-tiny cases (VGGT-1B: --vggt-frames)")
    p.add_argument("--vggt-frames", type=int, default=4)
    p.add_argument("--keep", type=float, nargs="+", default=[1.0, PRUNED_KEEP])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "precision")
    return p.parse_args(argv)


# -- models ---------------------------------------------------------------------------------------


def tiny_pruner() -> tuple[PaceVGGT, int]:
    """The bundled pacegeo-tiny with its bundled pruner, and its input width."""
    from pacegeo.hub import checkpoints_dir, load_backbone
    from pacegeo.pipeline import resolve_model

    choice = resolve_model("pacegeo-tiny")
    backbone = load_backbone(choice.path)
    bundled = checkpoints_dir() / "pacegeo-tiny-pruner.safetensors"
    pace = load_pruner(bundled, backbone) if bundled.is_file() else PaceVGGT(backbone, mode="training-free")
    return pace.eval(), choice.target_size


def vggt_random_pruner(seed: int = 0) -> PaceVGGT:
    """VGGT-1B's architecture with seeded random weights (no download), training-free pruning."""
    from pacegeo.backbone import VGGT, vggt_1b

    torch.manual_seed(seed)
    return PaceVGGT(VGGT(vggt_1b()).eval(), mode="training-free").eval()


# -- deviations -----------------------------------------------------------------------------------


def _numpy(out: dict, image_hw: tuple[int, int]) -> dict:
    extrinsics, _ = pose_encoding_to_extri_intri(out["pose_enc"][0].float(), image_hw)
    return {
        "depth": out["depth"][0, ..., 0].float().numpy(),
        "points": out["world_points"][0].float().numpy(),
        "extrinsics": extrinsics.numpy(),
    }


def deviation(test: dict, ref: dict) -> dict:
    """How far ``test`` outputs are from ``ref`` (see the module docstring)."""
    depth = np.abs(test["depth"] - ref["depth"]) / np.maximum(np.abs(ref["depth"]), 1e-12)
    points = ref["points"].reshape(-1, 3)
    scale = float(np.median(np.linalg.norm(points - points.mean(axis=0), axis=1))) or 1.0
    point_dev = np.linalg.norm(test["points"] - ref["points"], axis=-1).ravel() / scale
    out = {
        "depth_rel_median": float(np.median(depth)),
        "depth_rel_p90": float(np.percentile(depth, 90)),
        "points_rel_median": float(np.median(point_dev)),
        "points_rel_p90": float(np.percentile(point_dev, 90)),
    }
    if len(ref["extrinsics"]) > 1:
        rot, trans = relative_pose_errors(test["extrinsics"], ref["extrinsics"])
        out.update(rotation_deg_median=float(np.median(rot)), rotation_deg_max=float(np.max(rot)),
                   translation_dir_deg_median=float(np.median(trans)), translation_dir_deg_max=float(np.max(trans)))
    return out


def run_case(name: str, pace: PaceVGGT, images: torch.Tensor, keeps: list[float]) -> dict:
    """float32 and bf16 outputs of ``pace`` at every keep, and their deviations."""
    image_hw = tuple(images.shape[-2:])
    outputs, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        pace.amp_dtype = dtype
        for keep in keeps:
            start = time.perf_counter()
            with torch.inference_mode():
                outputs[dtype, keep] = _numpy(pace(images[None], keep=keep), image_hw)
            seconds[f"{dtype}@{keep:g}"] = time.perf_counter() - start
            print(f"  {name}: {dtype} keep {keep:g} done ({seconds[f'{dtype}@{keep:g}']:.0f} s)", flush=True)
    result = {
        "case": name,
        "frames": int(images.shape[0]),
        "height": int(image_hw[0]),
        "width": int(image_hw[1]),
        "bf16_vs_fp32": {f"{keep:g}": deviation(outputs["bfloat16", keep], outputs["float32", keep]) for keep in keeps},
        "seconds": seconds,
    }
    pruned = [k for k in keeps if k < 1]
    if 1.0 in keeps and pruned:
        result["pruning_fp32"] = {f"{k:g}": deviation(outputs["float32", k], outputs["float32", 1.0]) for k in pruned}
    return result


# -- report ---------------------------------------------------------------------------------------

COLUMNS = [("depth_rel_median", "depth rel. median", 100, "%"), ("depth_rel_p90", "depth rel. p90", 100, "%"),
           ("points_rel_median", "points median", 100, "%"), ("points_rel_p90", "points p90", 100, "%"),
           ("rotation_deg_median", "rot. median", 1, "°"), ("rotation_deg_max", "rot. max", 1, "°"),
           ("translation_dir_deg_median", "transl. dir. median", 1, "°"), ("translation_dir_deg_max", "transl. dir. max", 1, "°")]


#: "small": what bf16 may move at most (median over pixels / pairs) to be the CPU default, and at
#: most this fraction of what keep 0.3 itself moves in float32
SMALL = {"depth_rel_median": 0.01, "points_rel_median": 0.02, "rotation_deg_median": 0.5}
SMALL_FRACTION_OF_PRUNING = 0.1


def trained(case: dict) -> bool:
    """Cases with trained weights; random-weight ones have no calibrated geometry to keep."""
    return "random" not in case["case"]


def verdict(report: dict) -> tuple[bool, list[str]]:
    """Whether the bf16 deviations of every trained-weight case are small (see ``SMALL``), with the
    reasons if not. Random-weight cases are reported but not judged: their outputs are not
    geometry, so their deviations show how random layers amplify rounding, not how a trained
    model's predictions move."""
    problems = []
    for case in filter(trained, report["cases"]):
        for keep, dev in case["bf16_vs_fp32"].items():
            for key, limit in SMALL.items():
                if key in dev and dev[key] > limit:
                    problems.append(f"{case['case']} keep {keep}: {key} {dev[key]:.3g} > {limit}")
            pruning = case.get("pruning_fp32", {}).get(keep)
            if pruning:
                for key in SMALL:
                    if key in dev and key in pruning and dev[key] > SMALL_FRACTION_OF_PRUNING * pruning[key]:
                        problems.append(f"{case['case']} keep {keep}: {key} {dev[key]:.3g} above a tenth of pruning's")
    return not problems, problems


def markdown(report: dict) -> str:
    lines = [
        "# bf16 autocast against float32",
        "",
        f"CPU: native bf16 matrix instructions {'yes' if report['cpu_native_bf16'] else 'no'}; torch {report['torch']}.",
        "Points are relative to the median distance of the float32 points to their centroid; camera deviations",
        "are over all frame pairs (relative rotation, relative translation direction).",
        "Rows `pruning` show what keep 0.3 changes against keep 1 in float32, for scale.",
        "",
        "| case | frames | size | compared | " + " | ".join(c[1] for c in COLUMNS) + " |",
        "|" + "---|" * (4 + len(COLUMNS)),
    ]
    for case in report["cases"]:
        size = f"{case['width']}x{case['height']}"
        rows = [(f"bf16 vs fp32, keep {k}", dev) for k, dev in case["bf16_vs_fp32"].items()]
        rows += [(f"pruning: keep {k} vs 1, fp32", dev) for k, dev in case.get("pruning_fp32", {}).items()]
        for label, dev in rows:
            cells = [f"{dev[key] * scale:.3g}{unit}" if key in dev else "-" for key, _, scale, unit in COLUMNS]
            lines.append(f"| {case['case']} | {case['frames']} | {size} | {label} | " + " | ".join(cells) + " |")
    small, problems = verdict(report)
    limits = ", ".join(f"{k} <= {v:g}" for k, v in SMALL.items())
    judged = ", ".join(sorted({c["case"] for c in report["cases"] if trained(c)})) or "none"
    lines += ["", f"Small means: {limits} (medians), and at most {SMALL_FRACTION_OF_PRUNING:g} of what keep 0.3 moves.",
              f"Judged: the cases with trained weights ({judged}). Random-weight rows are reported, not judged: "
              "their outputs are not geometry, so they show how random layers amplify rounding.",
              f"bf16 deviations small: {'yes' if small else 'no'}" + ("" if small else " (" + "; ".join(problems) + ")"),
              "CPU default (`auto`, pacegeo.precision): bf16 where the CPU has native bf16 matrix instructions and the "
              "deviations are small, float32 elsewhere; on this CPU: "
              + ("bf16" if small and report["cpu_native_bf16"] else "float32") + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.images.is_dir():
        print(f"error: image folder {args.images} does not exist", file=sys.stderr)
        return 2
    try:
        cases = []
        for case in args.cases:
            if case.startswith("tiny"):
                pace, size = tiny_pruner()
                size = 518 if case == "tiny-518" else size
                frames = args.frames
            elif case == "vggt-1b":
                from pacegeo.hub import load_backbone

                pace, size, frames = PaceVGGT(load_backbone("vggt-1b"), mode="training-free").eval(), 518, args.vggt_frames
            else:
                pace, size, frames = vggt_random_pruner(), 518, args.vggt_frames
            prepared = prepare_inputs(args.images, "crop", size, progress=False)
            pick = select_frames(len(prepared), frames)
            images = prepared.images[pick]
            name = {"tiny": "pacegeo-tiny", "tiny-518": "pacegeo-tiny", "vggt-1b-random": "vggt-1b (random weights)",
                    "vggt-1b": "vggt-1b"}[case]
            print(f"{name}: {len(pick)} frames at {images.shape[-1]}x{images.shape[-2]}", flush=True)
            cases.append(run_case(name, pace, images, sorted(set(args.keep), reverse=True)))
            del pace
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu_native_bf16": cpu_has_native_bf16(), "images": str(args.images), "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
