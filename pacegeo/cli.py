"""Command-line interface: a thin layer over the library.

Every sub-command parses its arguments, calls library code and turns a
:class:`pacegeo.errors.PacegeoError` into one line on stderr and exit code 2.
Heavy imports happen inside the command functions so that ``pacegeo --help`` is fast.
"""

import argparse
import sys

from pacegeo import __version__
from pacegeo.errors import PacegeoError


def _parse_size(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` (e.g. ``640x480``) into ``(width, height)``."""
    try:
        w, h = text.lower().split("x")
        width, height = int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}") from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return width, height


def _cmd_info(args: argparse.Namespace) -> int:
    from pacegeo.info import describe

    print(describe())
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from pacegeo.data.synth import generate_dataset

    width, height = args.size
    generate_dataset(
        out_dir=args.output,
        num_scenes=args.scenes,
        num_frames=args.frames,
        seed=args.seed,
        width=width,
        height=height,
        preview=args.preview,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    return 0


EXPORT_FORMATS = ("glb", "colmap", "npz", "cameras")


def _export_paths(output, formats: list[str]) -> dict:
    """Where each extra export of ``--export`` goes: beside OUT.ply, with the same stem."""
    from pathlib import Path

    out = Path(output)
    paths = {}
    for fmt in formats:
        if fmt == "glb":
            paths[fmt] = out.with_suffix(".glb")
        elif fmt == "colmap":
            paths[fmt] = out.parent / f"{out.stem}_colmap"
        elif fmt == "npz":
            paths[fmt] = out.with_suffix(".npz")
        elif fmt == "cameras":
            paths[fmt] = out.parent / f"{out.stem}_cameras.json"
    return paths


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


def _check_outputs(paths: list, overwrite: bool) -> None:
    """Every output's folder must exist and be writable; existing outputs need --overwrite."""
    import os

    from pacegeo.errors import InputError

    seen = {}
    for path in paths:
        key = os.path.abspath(path)
        if key in seen:
            raise InputError(f"two outputs would both be written to {path}")
        seen[key] = path
        folder = path.parent if str(path.parent) else path.cwd()
        if not folder.exists():
            raise InputError(f"output folder {folder} does not exist")
        if not folder.is_dir():
            raise InputError(f"output folder {folder} is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"output folder {folder} is not writable")
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise InputError(f"output {path} already exists; pass --overwrite to replace it")
            if path.is_dir() and path.suffix:  # a folder where a file goes
                raise InputError(f"output {path} is a folder; choose another output name")


class _WarningHandler:
    """Route the library's warnings to stderr as ``pacegeo: warning: ...`` while a command runs."""

    def __init__(self) -> None:
        import logging

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                print(f"pacegeo: warning: {record.getMessage()}", file=sys.stderr)

        self.logger = logging.getLogger("pacegeo")
        self.handler = Handler(level=logging.WARNING)
        self.previous_level = self.logger.level

    def __enter__(self):
        import logging

        self.logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > logging.WARNING:
            self.logger.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.previous_level)


def _one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` report usage errors as one ``pacegeo: error: ...`` line (exit code 2)."""

    def error(message: str):
        parser.exit(2, f"pacegeo: error: {message} (see {parser.prog} --help)\n")

    parser.error = error
    return parser


def _fmt_bytes(value: int) -> str:
    if value >= 1024**3:
        return f"{value / 1024**3:.2f} GiB"
    return f"{value / 1024**2:.0f} MiB"


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    import math
    import time
    from pathlib import Path

    from pacegeo.errors import InputError

    started = time.perf_counter()
    with _WarningHandler():
        # 1. Options, before anything is read.
        from pacegeo.pipeline import DEFAULT_KEEP, check_input, check_keep, prepare_inputs, resolve_model

        pruner = args.pruner
        keep = args.keep
        if keep is None:
            keep = 1.0 if str(pruner).lower() == "none" else DEFAULT_KEEP
        keep = check_keep(keep)
        if str(pruner).lower() == "none" and keep < 1.0:
            raise InputError(f"--keep {keep:g} needs a pruner; drop --pruner none or use --keep 1")
        for name in ("frames", "stride", "max_points"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if args.fps is not None and (not math.isfinite(args.fps) or args.fps <= 0):
            raise InputError(f"--fps must be a positive number, got {args.fps:g}")
        if args.conf is not None and (not math.isfinite(args.conf) or args.conf < 0):
            raise InputError(f"--conf must be a non-negative number, got {args.conf:g}")
        if args.conf_percentile is not None and not (0 <= args.conf_percentile < 100):
            raise InputError(f"--conf-percentile must be in [0, 100), got {args.conf_percentile:g}")
        if args.target_size is not None and (args.target_size < 14 or args.target_size % 14):
            raise InputError(f"--target-size must be a positive multiple of 14, got {args.target_size}")
        formats = _parse_exports(args.export)

        # 2. Input: exists, has images, or is a readable video.
        description = check_input(args.input, args.fps)

        # 3. Outputs: all of them, before any work.
        output = Path(args.output)
        if output.suffix.lower() != ".ply":
            raise InputError(f"output must be a .ply file (other formats go beside it with --export), got {output}")
        extra = _export_paths(output, formats)
        preview = Path(args.preview) if args.preview else None
        _check_outputs([output, *extra.values(), *([preview] if preview else [])], args.overwrite)

        # 4. Model (resolved, not loaded yet), then images, then weights.
        choice = resolve_model(args.model)
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
        from pacegeo.pipeline import Pipeline

        pipe = Pipeline.from_pretrained(
            choice, pruner=pruner, device=args.device, target_size=args.target_size or choice.target_size, dtype=args.dtype
        )
        if pipe.notice and not args.quiet:
            print(f"pacegeo: note: {pipe.notice}", file=sys.stderr)

        # 5. Inference (memory preflight first).
        rec = pipe.reconstruct(prepared, keep=keep, seed=args.seed, check_memory=not args.no_memory_check)

        # 6. Exports.
        point_kwargs = {
            # Default as in VGGT's demos: drop the least confident half of the points.
            "conf_threshold": args.conf if args.conf is not None else 0.0,
            "conf_percentile": args.conf_percentile if args.conf is not None or args.conf_percentile is not None else 50.0,
            "source": args.points_from,
            "max_points": args.max_points,
            "seed": args.seed,
        }
        xyz, _ = rec.point_cloud(**point_kwargs)
        jobs = [("ply", output, lambda p: rec.save_ply(p, **point_kwargs))]
        writers = {
            "glb": lambda p: rec.save_glb(p, **point_kwargs),
            "colmap": lambda p: rec.save_colmap(p, overwrite=args.overwrite, **point_kwargs),
            "npz": rec.save_npz,
            "cameras": rec.save_cameras_json,
        }
        jobs += [(fmt, path, writers[fmt]) for fmt, path in extra.items()]
        if preview is not None:
            jobs.append(("preview", preview, lambda p: rec.save_preview(p, **point_kwargs)))
        from tqdm.auto import tqdm

        bar = tqdm(jobs, desc="writing", unit="file", file=sys.stderr, leave=False, disable=args.quiet or not sys.stderr.isatty())
        for fmt, path, write in bar:
            bar.set_postfix_str(path.name)
            try:
                write(path)
            except OSError as err:
                raise InputError(f"cannot write {path}: {err.strerror or err}") from None

    if args.quiet:
        return 0
    _print_summary(rec, description, len(xyz), time.perf_counter() - started)
    return 0


def _print_summary(rec, description: str, points: int, total_seconds: float) -> None:
    kept = rec.kept_per_frame
    total = rec.tokens_per_frame
    h, w = rec.inference_hw
    pruning = f"{rec.pruner_mode} pruning" if rec.pruner_mode and rec.keep < 1 else "no pruning"
    print(f"reconstructed {len(rec)} frames from {description} at {w}x{h} ({rec.model_name}, {pruning}, {rec.device}, {rec.dtype})")
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
    print(f"peak memory: {_fmt_bytes(rec.peak_memory)} ({rec.peak_memory_kind}); preflight estimate {_fmt_bytes(rec.memory_estimate)}")
    print(f"points written: {points:,}")
    names = [f"{p}/" if p.is_dir() else str(p) for p in rec.files_written]
    print("files written: " + ", ".join(names))


def _file_name(source: str) -> str:
    from pathlib import Path

    return Path(source).name


def _cmd_map(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from pacegeo.errors import InputError

    started = time.perf_counter()
    with _WarningHandler():
        # 1. Options, before anything is read.
        from pacegeo.localize import MAP_SUFFIX
        from pacegeo.pipeline import check_input, check_keep, prepare_inputs, resolve_model

        keep = check_keep(args.keep)
        if str(args.pruner).lower() == "none" and keep < 1.0:
            raise InputError(f"--keep {keep:g} needs a pruner; drop --pruner none or use --keep 1")
        for name in ("frames", "stride", "chunk", "overlap"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise InputError(f"--{name} must be a positive integer, got {value}")
        if args.chunk is not None and args.chunk < 2:
            raise InputError(f"--chunk must be at least 2 frames, got {args.chunk}")
        if args.overlap is not None and args.chunk is None:
            raise InputError("--overlap needs --chunk")
        if args.overlap is not None and args.overlap >= args.chunk:
            raise InputError(f"--overlap must be smaller than --chunk ({args.chunk}), got {args.overlap}")
        if args.target_size is not None and (args.target_size < 14 or args.target_size % 14):
            raise InputError(f"--target-size must be a positive multiple of 14, got {args.target_size}")

        # 2. Input, 3. output, before any work.
        description = check_input(args.input)
        output = Path(args.output)
        if output.suffix.lower() != MAP_SUFFIX:
            raise InputError(f"output must be a {MAP_SUFFIX} file, got {output}")
        _check_outputs([output], args.overwrite)

        # 4. Model, images, weights.
        choice = resolve_model(args.model)
        size = args.target_size or choice.target_size
        prepared = prepare_inputs(
            args.input, mode=choice.preprocess_mode, target_size=size, frames=args.frames, stride=args.stride,
            strict=args.strict, progress=False if args.quiet else None,
        )
        from pacegeo.pipeline import Pipeline

        pipe = Pipeline.from_pretrained(choice, pruner=args.pruner, device=args.device, target_size=size, dtype=args.dtype)
        if pipe.notice and not args.quiet:
            print(f"pacegeo: note: {pipe.notice}", file=sys.stderr)

        # 5. Map, then the file.
        store = pipe.build_map(
            prepared, keep=keep, chunk=args.chunk, overlap=args.overlap, vpr=args.vpr, seed=args.seed,
            progress=False if args.quiet else None,
        )
        store.save(output)

    if args.quiet:
        return 0
    h, w = store.image_hw
    chunks = f"in chunks of {store.chunk} frames ({store.overlap} shared)" if store.chunk else "in one pass"
    print(f"mapped {len(store)} frames from {description} at {w}x{h} {chunks} ({Path(store.model).name}, keep {store.keep:g})")
    print(f"descriptors: {store.descriptors.shape[1]}-d, {store.vpr_identity}")
    print(f"time: {time.perf_counter() - started:.2f} s")
    print(f"map written: {output} ({_fmt_bytes(output.stat().st_size)})")
    return 0


def _query_files(items: list[str]) -> list:
    """Image files named directly or found in folders, in order; :class:`InputError` for anything else."""
    from pathlib import Path

    from pacegeo.errors import InputError
    from pacegeo.io.images import IMAGE_EXTENSIONS, list_image_files

    files = []
    for item in items:
        path = Path(item).expanduser()
        if not path.exists():
            raise InputError(f"query not found: {path}")
        if path.is_dir():
            found = list_image_files(path)
            if not found:
                raise InputError(f"no image files in query folder {path} (looked for {' '.join(sorted(IMAGE_EXTENSIONS))})")
            files.extend(found)
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(path)
        else:
            raise InputError(f"query {path} is not an image file ({' '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def _cmd_localize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pacegeo.errors import InputError

    with _WarningHandler():
        # 1. Options; 2. the map; 3. the queries; 4. the report file; all before any work.
        from pacegeo.localize import MapStore
        from pacegeo.pipeline import check_keep

        keep = check_keep(args.keep)
        if args.top_k < 1:
            raise InputError(f"--top-k must be a positive integer, got {args.top_k}")
        store = MapStore.load(args.map)
        queries = _query_files(args.queries)
        report = Path(args.json) if args.json else None
        if report is not None:
            _check_outputs([report], args.overwrite)

        # 5. The map's model (or --model), then localization.
        from pacegeo.pipeline import Pipeline

        pipe = Pipeline.from_pretrained(
            args.model or store.model, pruner=args.pruner, device=args.device, target_size=store.target_size, dtype=args.dtype
        )
        if pipe.notice and not args.quiet:
            print(f"pacegeo: note: {pipe.notice}", file=sys.stderr)
        results = pipe.localize(queries, store=store, top_k=args.top_k, keep=keep, seed=args.seed,
                                progress=False if args.quiet else None)
        if report is not None:
            from pacegeo.export import write_json

            data = {
                "map": str(args.map),
                "model": store.model,
                "vpr": store.vpr_identity,
                "top_k": args.top_k,
                "keep": keep,
                "frame": "map frame: OpenCV camera-to-world, first map frame = identity, model scale",
                "queries": [loc.to_dict() for loc in results],
            }
            try:
                write_json(report, data)
            except OSError as err:
                raise InputError(f"cannot write {report}: {err.strerror or err}") from None

    if args.quiet:
        return 0
    print(f"localized {len(results)} quer{'y' if len(results) == 1 else 'ies'} in {args.map} ({len(store)} map frames, top-{args.top_k})")
    for loc in results:
        x, y, z = loc.position
        retrieved = ", ".join(f"{n} ({s:.3f})" for n, s in zip(loc.retrieved, loc.scores))
        print(f"{loc.name}: position ({x:.3f}, {y:.3f}, {z:.3f}) in map coordinates, confidence {loc.confidence:.2f} "
              f"({loc.fit.method} fit on {loc.fit.frames} frames)")
        print(f"  retrieved: {retrieved}")
    if report is not None:
        print(f"report written: {report}")
    return 0


def _cmd_estimate(args: argparse.Namespace) -> int:
    import json

    from pacegeo.estimate import EstimateRequest, format_report, parse_bytes, run_estimate

    memory = parse_bytes(args.memory) if args.memory is not None else None
    request = EstimateRequest(model=args.model, frames=args.frames, keep=args.keep, size=args.size,
                              device=args.device, dtype=args.dtype, memory=memory)
    report = run_estimate(request)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


MODEL_HELP = "auto (VGGT-1B if cached, else the bundled pacegeo-tiny), vggt-1b, pacegeo-tiny, or a checkpoint path"
PRUNER_HELP = "auto (trained pruner if bundled, else training-free), training-free, random, grid, none, or a pruner checkpoint"
DEVICE_HELP = "auto (CUDA if available), cpu, cuda or cuda:N"
DTYPE_HELP = ("autocast dtype: auto (bf16 on CUDA, fp16 on older GPUs; on the CPU bf16 where it has native bf16 "
              "matrix instructions, else float32), float32, bfloat16 or float16")


def _add_frame_selection(p: argparse.ArgumentParser) -> None:
    """``--frames N`` / ``--stride K``, mutually exclusive."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--frames", type=int, metavar="N", help="use N frames spread evenly over the input")
    group.add_argument("--stride", type=int, metavar="K", help="use every K-th frame")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacegeo",
        description="Fast feed-forward 3D reconstruction with token pruning.",
    )
    parser.add_argument("--version", action="version", version=f"pacegeo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="print version, device, torch and available models")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("synth", help="generate SynthRooms RGB-D scenes in the ScanNet raw layout")
    p.add_argument("-o", "--output", required=True, help="output folder (one sub-folder per scene)")
    p.add_argument("--scenes", type=int, default=1, help="number of scenes (default 1)")
    p.add_argument("--frames", type=int, default=64, help="frames per scene (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first scene; scene i uses seed+i")
    p.add_argument("--size", type=_parse_size, default=(640, 480), help="WIDTHxHEIGHT (default 640x480)")
    p.add_argument("--preview", action="store_true", help="also write preview.png, a contact sheet")
    p.add_argument("--overwrite", action="store_true", help="replace scenes that already exist")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)

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
    _add_frame_selection(p)
    p.add_argument("--fps", type=float, metavar="F", help="video: frames sampled per second of video (default 2)")
    p.add_argument("--mode", choices=("crop", "pad"), default=None,
                   help="preprocessing: crop (width to the model size, centre-crop tall images) or pad (whole image, white borders)")
    p.add_argument("--target-size", type=int, default=None, metavar="PX",
                   help="inference width (crop) or longer side (pad), a multiple of 14 (default: the model's, 518 for VGGT-1B)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--conf", type=float, default=None, metavar="C", help="keep points with confidence >= C (e.g. 3.0 for VGGT-1B)")
    group.add_argument("--conf-percentile", type=float, default=None, metavar="P",
                       help="drop the lowest P percent of points by confidence (default 50)")
    p.add_argument("--points-from", choices=("depth", "pointmap"), default="depth",
                   help="points from depth + cameras (default) or from the point head")
    p.add_argument("--max-points", type=int, default=None, metavar="N", help="write at most N points (seeded random subset)")
    p.add_argument("--export", default=None, metavar="FORMATS",
                   help="comma-separated extra outputs beside OUT: glb, colmap, npz, cameras")
    p.add_argument("--preview", default=None, metavar="PNG", help="also write a PNG preview (perspective, top and side views)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")
    p.add_argument("--seed", type=int, default=0, help="seed of any randomness (random pruning, point subsets)")
    p.add_argument("--no-memory-check", action="store_true", help="skip the memory preflight")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, notes or summary (errors and warnings still shown)")
    p.set_defaults(func=_cmd_reconstruct)
    _one_line_errors(p)

    p = sub.add_parser(
        "map",
        help="reconstruct and describe a frame sequence as a localization map",
        description=(
            "Reconstruct a sequence of frames (a folder of images or a video) and store, per frame, a global "
            "descriptor, its camera pose and its image, so that new images can be localized in it (pacegeo localize)."
        ),
    )
    p.add_argument("input", help="folder of images (in sequence order), or a video file")
    p.add_argument("-o", "--output", required=True, metavar="MAP.pgmap", help="map file to write")
    p.add_argument("--model", default="auto", help=MODEL_HELP)
    p.add_argument("--pruner", default="auto", help=PRUNER_HELP)
    p.add_argument("--keep", type=float, default=0.5, metavar="K",
                   help="fraction of patch tokens each frame keeps, in (0, 1] (default 0.5)")
    p.add_argument("--chunk", type=int, default=None, metavar="N",
                   help="reconstruct at most N frames at a time, chunks aligned on shared frames (default: all at once)")
    p.add_argument("--overlap", type=int, default=None, metavar="N",
                   help="frames shared by consecutive chunks (default max(3, chunk/4))")
    p.add_argument("--vpr", default="auto",
                   help="descriptor head: auto (the bundled VPR head if it fits the model, else gem), gem, or a VPR checkpoint")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help=DTYPE_HELP)
    _add_frame_selection(p)
    p.add_argument("--target-size", type=int, default=None, metavar="PX",
                   help="inference width, a multiple of 14 (default: the model's)")
    p.add_argument("--overwrite", action="store_true", help="replace the map file if it exists")
    p.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")
    p.add_argument("--seed", type=int, default=0, help="seed of any randomness (random pruning)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, notes or summary")
    p.set_defaults(func=_cmd_map)
    _one_line_errors(p)

    p = sub.add_parser(
        "localize",
        help="localize query images in a map built by pacegeo map",
        description=(
            "Localize query images in a map: retrieve the most similar map frames, reconstruct them together "
            "with each query and place the query camera in map coordinates."
        ),
    )
    p.add_argument("map", help="map file written by pacegeo map")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="query image files or folders of images")
    p.add_argument("--top-k", type=int, default=4, metavar="K",
                   help="map frames retrieved and reconstructed with each query (default 4)")
    p.add_argument("--keep", type=float, default=0.5, metavar="K",
                   help="fraction of patch tokens each frame keeps, in (0, 1] (default 0.5)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the results as JSON")
    p.add_argument("--model", default=None, help="backbone to use (default: the one the map was built with)")
    p.add_argument("--pruner", default="auto", help=PRUNER_HELP)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help=DTYPE_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace the JSON report if it exists")
    p.add_argument("--seed", type=int, default=0, help="seed of any randomness (random pruning)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, notes or printed results")
    p.set_defaults(func=_cmd_localize)
    _one_line_errors(p)

    p = sub.add_parser(
        "estimate",
        help="estimate the peak memory of a reconstruction, and what fits (no weights needed)",
        description=(
            "Estimate the peak memory of reconstructing FRAMES frames with a model (from its architecture "
            "only: no weights are loaded), whether it fits in --memory, the largest frame count that fits at "
            "this keep and the keep these frames need. The reconstruct preflight uses the same model."
        ),
    )
    p.add_argument("--model", default="vggt-1b", help="vggt-1b (default), pacegeo-tiny, or a checkpoint path")
    p.add_argument("--frames", type=int, required=True, metavar="N", help="number of frames")
    p.add_argument("--keep", type=float, default=1.0, metavar="K", help="fraction of patch tokens kept, in (0, 1] (default 1)")
    p.add_argument("--size", type=_parse_size, default=None, metavar="WxH",
                   help="model input in pixels, multiples of 14 (default: the model's width at 4:3, 518x392 for vggt-1b)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="where the run would happen (default cuda)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help=DTYPE_HELP)
    p.add_argument("--memory", default=None, metavar="SIZE",
                   help="memory of the device, e.g. 80GiB, 24GB (default: what is free on this machine's device)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (peak_bytes, fits, max_frames, min_keep and the details)")
    p.set_defaults(func=_cmd_estimate)
    _one_line_errors(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except PacegeoError as err:
        print(f"pacegeo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pacegeo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
