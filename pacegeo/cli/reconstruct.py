"""``pacegeo reconstruct``: images or a video in, a point cloud and exports out."""

from __future__ import annotations

import argparse
import sys

from pacegeo.cli.common import (
    DEVICE_HELP,
    DTYPE_HELP,
    MODEL_HELP,
    PRUNER_HELP,
    WarningHandler,
    add_frame_selection,
    fmt_bytes,
    one_line_errors,
    weight_inputs,
)


EXPORT_FORMATS = ("glb", "colmap", "npz", "cameras")


def _export_paths(output, formats: list[str]) -> dict:
    """Where each extra export of ``--export`` goes: beside OUT.ply, with the same stem."""
    from pathlib import Path

    out = Path(output)
    names = {
        "glb": out.with_suffix(".glb"),
        "colmap": out.parent / f"{out.stem}_colmap",
        "npz": out.with_suffix(".npz"),
        "cameras": out.parent / f"{out.stem}_cameras.json",
    }
    return {fmt: names[fmt] for fmt in formats}


def _parse_exports(text: str | None) -> list[str]:
    from pacegeo.errors import InputError

    if not text:
        return []
    formats = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item not in EXPORT_FORMATS:
            raise InputError(f"unknown export format {item!r}; choose from {','.join(EXPORT_FORMATS)}")
        if item not in formats:
            formats.append(item)
    return formats


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    import time

    from pacegeo.errors import InputError

    started = time.perf_counter()
    with WarningHandler():
        # 1. Options, before anything is read (the library's checks, messages in flag names).
        from pathlib import Path

        from pacegeo.io.outputs import OutputSpec, check_outputs
        from pacegeo.options import check_count, check_keep, check_positive_number, check_seed
        from pacegeo.io.inputs import check_input, input_paths, prepare_inputs
        from pacegeo.models import resolve_model
        from pacegeo.pipeline import DEFAULT_KEEP, Pipeline
        from pacegeo.reconstruction import check_point_filter, export_spec
        from pacegeo.pruning.global_merge import merge_config
        from pacegeo.sequence import check_chunking, process_device, process_layout

        pruner = args.pruner
        keep = args.keep
        if keep is None:
            keep = 1.0 if str(pruner).lower() == "none" else DEFAULT_KEEP
        keep = check_keep(keep)
        if str(pruner).lower() == "none" and keep < 1.0:
            raise InputError(f"--keep {keep:g} needs a pruner; drop --pruner none or use --keep 1")
        if args.encoder_layer is not None and (str(pruner).lower() == "none" or args.encoder_layer < 1):
            raise InputError(f"--encoder-layer needs a pruner and a positive block number, got {args.encoder_layer}")
        for name in ("frames", "stride", "max_points"):
            check_count(getattr(args, name), name)
        check_chunking(args.chunk, args.overlap, args.work_dir, args.loops)
        merge_config(args.global_merge)
        rank, world = process_layout()
        if world > 1 and (args.chunk is None or args.work_dir is None):
            raise InputError(f"a run spread over {world} processes needs --chunk and a --work-dir they all share")
        check_seed(args.seed)
        check_positive_number(args.fps, "fps")
        check_point_filter(args.conf, args.conf_percentile)
        if args.target_size is not None and (args.target_size < 14 or args.target_size % 14):
            raise InputError(f"--target-size must be a positive multiple of 14, got {args.target_size}")
        formats = _parse_exports(args.export)

        # 2. Input: exists, has images, or is a readable video. Then the model (resolved, not loaded).
        description = check_input(args.input, args.fps)
        choice = resolve_model(args.model)

        # 3. Outputs, all of them, before any work: never an input, writable, names that fit.
        if not args.output.lower().endswith(".ply"):
            raise InputError(f"output must be a .ply file (other formats go beside it with --export), got {args.output}")
        targets = {"ply": args.output, **_export_paths(args.output, formats)}
        if args.preview:
            targets["preview"] = args.preview
        inputs = [*input_paths(args.input, args.fps), *weight_inputs(choice, pruner)]
        check_outputs([export_spec(fmt, path) for fmt, path in targets.items()], inputs, args.overwrite)
        if args.work_dir is not None:  # kept between runs (resume): only where it may go
            check_outputs([OutputSpec(Path(args.work_dir), "folder", what="work folder")], inputs, overwrite=True)

        # 4. Images, then weights.
        prepared = prepare_inputs(
            args.input,
            mode=args.mode or choice.preprocess_mode,
            target_size=args.target_size or choice.target_size,
            frames=args.frames,
            stride=args.stride,
            fps=args.fps,
            strict=args.strict,
            progress=False if args.quiet else None,
        )
        pipe = Pipeline.from_pretrained(
            choice, pruner=pruner, device=process_device(args.device), global_merge=args.global_merge,
            encoder_layer=args.encoder_layer, target_size=args.target_size or choice.target_size, dtype=args.dtype
        )
        if pipe.notice and not args.quiet and rank == 0:
            print(f"pacegeo: note: {pipe.notice}", file=sys.stderr)

        # 5. Inference (memory preflight first).
        rec = pipe.reconstruct(
            prepared, keep=keep, seed=args.seed, check_memory=not args.no_memory_check,
            progress=False if args.quiet else None, chunk=args.chunk, overlap=args.overlap, work_dir=args.work_dir,
            loops=args.loops,
        )
        if rec is None:  # a process of a multi-process run other than the first: its chunks are done
            return 0

        # 6. Every output together: all appear, or none does and earlier files stay as they were.
        point_kwargs = {  # neither given: the library's default filter (DEFAULT_CONF_PERCENTILE)
            "conf_threshold": args.conf,
            "conf_percentile": args.conf_percentile,
            "source": args.points_from,
            "max_points": args.max_points,
            "seed": args.seed,
        }
        points = int(rec.point_mask(point_kwargs["conf_threshold"], point_kwargs["conf_percentile"], args.points_from).sum())
        points = min(points, args.max_points or points)
        rec.export(targets, overwrite=args.overwrite, progress=False if args.quiet else None, **point_kwargs)

    if args.quiet:
        return 0
    _print_summary(rec, description, points, time.perf_counter() - started)
    return 0


def _print_summary(rec, description: str, points: int, total_seconds: float) -> None:
    kept = rec.kept_per_frame
    total = rec.tokens_per_frame
    h, w = rec.inference_hw
    pruning = f"{rec.pruner_mode} pruning" if rec.pruner_mode and rec.keep < 1 else "no pruning"
    print(f"reconstructed {len(rec)} frames from {description} at {w}x{h} ({rec.model_name}, {pruning}, {rec.device}, {rec.dtype})")
    chunks = rec.pruning.get("chunks")
    if chunks:
        shared = chunks[0]["end"] - chunks[1]["start"]
        worst = min(c["fit"]["inliers"] for c in chunks[1:])
        print(f"in {len(chunks)} chunks of up to {chunks[0]['end']} frames ({shared} shared), "
              f"aligned on their shared frames' points (lowest inlier share {100 * worst:.0f}%)")
        if "loops" in rec.pruning:
            accepted = sum(r["accepted"] for r in rec.pruning["loops"])
            print(f"loop closure: {accepted} of {len(rec.pruning['loops'])} candidate loops verified and applied")
    if rec.skipped:
        print(f"skipped {len(rec.skipped)} unreadable input(s): " + ", ".join(_file_name(s[0]) for s in rec.skipped))
    others = kept[1:] or kept
    share = 100.0 * others[0] / total if total else 100.0
    line = f"tokens per frame: {others[0]} of {total} patch tokens kept ({share:.0f}%, keep {rec.keep:g})"
    if len(kept) > 1 and kept[0] != kept[1]:
        line += f"; reference frame {kept[0]}"
    print(line)
    t = rec.timings
    stages = ", ".join(f"{name} {t.get(name, 0.0):.2f} s" for name in ("load", "preprocess", "inference", "export"))
    print(f"time: {stages} (total {total_seconds:.2f} s)")
    from pacegeo.system import peak_rss_bytes

    run_peak = peak_rss_bytes()  # after the exports: the whole run
    if rec.peak_memory_kind == "process RSS":
        memory = f"{fmt_bytes(run_peak)} (process RSS, whole run; {fmt_bytes(rec.peak_memory)} by the end of inference)"
    else:
        memory = f"{fmt_bytes(rec.peak_memory)} ({rec.peak_memory_kind}, inference); host {fmt_bytes(run_peak)} (process RSS, whole run)"
    print(f"peak memory: {memory}; preflight estimate {fmt_bytes(rec.memory_estimate)}")
    print(f"points written: {points:,}")
    names = [f"{p}/" if p.is_dir() else str(p) for p in rec.files_written]
    print("files written: " + ", ".join(names))


def _file_name(source: str) -> str:
    from pathlib import Path

    return Path(source).name


def add_reconstruct_parser(sub) -> None:
    """The ``pacegeo reconstruct`` sub-command."""
    p = sub.add_parser(
        "reconstruct",
        help="reconstruct cameras, depth and a coloured point cloud from images or a video",
        description=(
            "Reconstruct cameras, depth and a coloured point cloud from a folder of images or a video. "
            "Writes OUT.ply; --export adds files beside it with the same stem "
            "(scene.glb, scene_colmap/, scene.npz, scene_cameras.json)."
        ),
    )
    p.add_argument("input", help="folder of images, or a video file (mp4, mov, avi, mkv, webm, ...)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.ply", help="point cloud to write (binary PLY with RGB)")
    p.add_argument("--keep", type=float, default=None, metavar="K",
                   help="fraction of patch tokens each frame keeps, in (0, 1]; 1 = unpruned (default 0.3, or 1 with --pruner none)")
    p.add_argument("--model", default="auto", help=MODEL_HELP)
    p.add_argument("--pruner", default="auto", help=PRUNER_HELP)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help=DTYPE_HELP)
    add_frame_selection(p)
    p.add_argument("--fps", type=float, metavar="F", help="video: frames sampled per second of video (default 2)")
    p.add_argument("--mode", choices=("crop", "pad"), default=None,
                   help="preprocessing: crop (width to the model size, centre-crop tall images) or pad (whole image, white borders)")
    p.add_argument("--target-size", type=int, default=None, metavar="PX",
                   help="inference width (crop) or longer side (pad), a multiple of 14 (default: the model's, 518 for VGGT-1B)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--conf", type=float, default=None, metavar="C", help="keep points with confidence >= C instead (e.g. 3.0 for VGGT-1B)")
    group.add_argument("--conf-percentile", type=float, default=None, metavar="P",
                       help="drop the lowest P percent of points by confidence (default 50, as in the Python API)")
    p.add_argument("--points-from", choices=("depth", "pointmap"), default="depth",
                   help="points from depth + cameras (default) or from the point head")
    p.add_argument("--max-points", type=int, default=None, metavar="N", help="write at most N points (seeded random subset)")
    p.add_argument("--export", default=None, metavar="FORMATS",
                   help="comma-separated extra outputs beside OUT: glb, colmap, npz, cameras")
    p.add_argument("--preview", default=None, metavar="PNG", help="also write a PNG preview (perspective, top and side views)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")
    p.add_argument("--chunk", type=int, default=None, metavar="N",
                   help="at most N frames per forward pass, chunks stitched on their shared frames (default: all at once)")
    p.add_argument("--overlap", type=int, default=None, metavar="N",
                   help="frames shared by consecutive chunks (default max(3, chunk/4))")
    p.add_argument("--work-dir", default=None, metavar="DIR",
                   help="with --chunk: keep finished chunks in DIR so that a failed run resumes when rerun "
                        "(required under accelerate launch, shared by its processes)")
    p.add_argument("--global-merge", type=float, default=0.0, metavar="R",
                   help="also merge this share of tokens inside every global-attention block (training-free, "
                        "after FastVGGT; e.g. 0.9); 0 = off (default)")
    p.add_argument("--encoder-layer", type=int, default=None, metavar="L",
                   help="prune inside the DINO encoder after its block L, so that its later blocks also run on "
                        "the kept tokens (faster, at some fidelity cost; default: prune after the encoder)")
    p.add_argument("--loops", action="store_true",
                   help="with --chunk: close loops between distant chunks found by place recognition")
    p.add_argument("--seed", type=int, default=0, help="seed of any randomness (random pruning, point subsets)")
    p.add_argument("--no-memory-check", action="store_true", help="skip the memory preflight")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, notes or summary (errors and warnings still shown)")
    p.set_defaults(func=_cmd_reconstruct)
    one_line_errors(p)

