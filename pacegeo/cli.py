"""Command-line interface: a thin layer over the library.

Every sub-command parses its arguments, calls library code and turns a
:class:`pacegeo.errors.PacegeoError` into one line on stderr and exit code 2.
Heavy imports happen inside the command functions so that ``pacegeo --help`` is fast.
"""

import argparse
import os
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


def _weight_inputs(choice, pruner) -> list:
    """Weight files a run reads (the model's, and the pruner's when it names a file): outputs must
    not replace them."""
    from pathlib import Path

    paths = [choice.path]
    if pruner is not None and Path(str(pruner)).expanduser().is_file():
        paths.append(Path(str(pruner)).expanduser())
    return paths


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
    import time

    from pacegeo.errors import InputError

    started = time.perf_counter()
    with _WarningHandler():
        # 1. Options, before anything is read (the library's checks, messages in flag names).
        from pacegeo.io.outputs import check_outputs
        from pacegeo.options import check_count, check_keep, check_positive_number, check_seed
        from pacegeo.io.inputs import check_input, input_paths, prepare_inputs
        from pacegeo.models import resolve_model
        from pacegeo.pipeline import DEFAULT_KEEP, Pipeline
        from pacegeo.reconstruction import check_point_filter, export_spec

        pruner = args.pruner
        keep = args.keep
        if keep is None:
            keep = 1.0 if str(pruner).lower() == "none" else DEFAULT_KEEP
        keep = check_keep(keep)
        if str(pruner).lower() == "none" and keep < 1.0:
            raise InputError(f"--keep {keep:g} needs a pruner; drop --pruner none or use --keep 1")
        for name in ("frames", "stride", "max_points"):
            check_count(getattr(args, name), name)
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
        inputs = [*input_paths(args.input, args.fps), *_weight_inputs(choice, pruner)]
        check_outputs([export_spec(fmt, path) for fmt, path in targets.items()], inputs, args.overwrite)

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
            choice, pruner=pruner, device=args.device, target_size=args.target_size or choice.target_size, dtype=args.dtype
        )
        if pipe.notice and not args.quiet:
            print(f"pacegeo: note: {pipe.notice}", file=sys.stderr)

        # 5. Inference (memory preflight first).
        rec = pipe.reconstruct(
            prepared, keep=keep, seed=args.seed, check_memory=not args.no_memory_check,
            progress=False if args.quiet else None,
        )

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
        memory = f"{_fmt_bytes(run_peak)} (process RSS, whole run; {_fmt_bytes(rec.peak_memory)} by the end of inference)"
    else:
        memory = f"{_fmt_bytes(rec.peak_memory)} ({rec.peak_memory_kind}, inference); host {_fmt_bytes(run_peak)} (process RSS, whole run)"
    print(f"peak memory: {memory}; preflight estimate {_fmt_bytes(rec.memory_estimate)}")
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
        from pacegeo.io.outputs import OutputSpec, check_outputs
        from pacegeo.localize import MAP_SUFFIX
        from pacegeo.options import check_count, check_keep, check_seed
        from pacegeo.io.inputs import check_input, input_paths, prepare_inputs
        from pacegeo.models import resolve_model

        keep = check_keep(args.keep)
        if str(args.pruner).lower() == "none" and keep < 1.0:
            raise InputError(f"--keep {keep:g} needs a pruner; drop --pruner none or use --keep 1")
        for name in ("frames", "stride", "overlap"):
            check_count(getattr(args, name), name)
        check_count(args.chunk, "chunk", minimum=2)
        check_seed(args.seed)
        if args.overlap is not None and args.chunk is None:
            raise InputError("--overlap needs --chunk")
        if args.overlap is not None and args.overlap >= args.chunk:
            raise InputError(f"--overlap must be smaller than --chunk ({args.chunk}), got {args.overlap}")
        if args.target_size is not None and (args.target_size < 14 or args.target_size % 14):
            raise InputError(f"--target-size must be a positive multiple of 14, got {args.target_size}")

        # 2. Input and model, 3. output, before any work.
        description = check_input(args.input)
        choice = resolve_model(args.model)
        output = Path(args.output)
        spec = OutputSpec(output, suffixes=(MAP_SUFFIX,), what="map")
        check_outputs([spec], [*input_paths(args.input), *_weight_inputs(choice, args.pruner)], args.overwrite)

        # 4. Images, weights.
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
        store.save(output, overwrite=args.overwrite)

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
    from pacegeo.io.decode import IMAGE_EXTENSIONS, list_image_files

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

    with _WarningHandler():
        # 1. Options; 2. the map; 3. the queries; 4. the report file; all before any work.
        from pacegeo.io.outputs import OutputSpec, check_outputs
        from pacegeo.localize import MapStore
        from pacegeo.options import check_count, check_keep, check_seed
        from pacegeo.models import resolve_model

        keep = check_keep(args.keep)
        check_count(args.top_k, "top_k")
        check_seed(args.seed)
        store = MapStore.load(args.map)
        queries = _query_files(args.queries)
        choice = resolve_model(args.model or store.model)
        report = OutputSpec(Path(args.json), suffixes=(".json",), what="report") if args.json else None
        if report is not None:
            inputs = [Path(args.map), *(Path(q) for q in args.queries), *_weight_inputs(choice, args.pruner)]
            check_outputs([report], inputs, args.overwrite)

        # 5. The map's model (or --model), then localization.
        from pacegeo.pipeline import Pipeline

        pipe = Pipeline.from_pretrained(
            choice, pruner=args.pruner, device=args.device, target_size=store.target_size, dtype=args.dtype
        )
        if pipe.notice and not args.quiet:
            print(f"pacegeo: note: {pipe.notice}", file=sys.stderr)
        results = pipe.localize(queries, store=store, top_k=args.top_k, keep=keep, seed=args.seed,
                                progress=False if args.quiet else None)
        if report is not None:
            from pacegeo.io.export import json_into
            from pacegeo.io.outputs import OutputSet

            data = {
                "map": str(args.map),
                "model": store.model,
                "vpr": store.vpr_identity,
                "top_k": args.top_k,
                "keep": keep,
                "frame": "map frame: OpenCV camera-to-world, first map frame = identity, model scale",
                "queries": [loc.to_dict() for loc in results],
            }
            with OutputSet([report], inputs, args.overwrite) as outputs:
                with open(outputs.staged(report), "wb") as handle:
                    json_into(handle, data)

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
        print(f"report written: {report.path}")
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pacegeo.errors import InputError

    with _WarningHandler():
        # 1. viser, the options and the port, before anything is read.
        from pacegeo import viewer
        from pacegeo.options import check_count, check_seed

        viewer.import_viser()
        if not 0 <= args.conf_percentile < 100:
            raise InputError(f"--conf-percentile must be in [0, 100), got {args.conf_percentile:g}")
        check_count(args.max_points, "max_points")
        check_seed(args.seed)
        viewer.check_port(args.host, args.port)

        # 2. The scene: an npz as it is, or a folder of images / a video reconstructed here.
        path = Path(args.input).expanduser()
        if not path.exists():
            raise InputError(f"input not found: {path}")
        reconstruct = None
        if path.is_file() and path.suffix.lower() == ".npz":
            given = [flag for flag, name in _VIEW_RECONSTRUCT_OPTIONS if getattr(args, name) is not None]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                raise InputError(f"{', '.join(given)} only {verb} to a folder of images or a video; "
                                 f"{path.name} holds a finished reconstruction")
            scene = viewer.load_npz(path)
        else:
            from pacegeo.io.images import IMAGE_EXTENSIONS
            from pacegeo.io.video import is_video_file

            if path.is_file() and not (is_video_file(path) or path.suffix.lower() in IMAGE_EXTENSIONS):
                raise InputError(f"{path} is not an .npz scene (pacegeo reconstruct ... --export npz), "
                                 "a folder of images or a video")
            scene, reconstruct = _view_reconstruction(args, path)

        # 3. The viewer, until Ctrl-C.
        def ready(url: str) -> None:
            print(f"viewer at {url} (Ctrl-C to stop)", flush=True)

        source = args.points_from or ("depth" if "depth" in scene.points else next(iter(scene.points)))
        viewer.serve(
            scene, args.host, args.port, ready=ready, reconstruct=reconstruct, conf_percentile=args.conf_percentile,
            max_points=args.max_points or viewer.DEFAULT_MAX_POINTS, source=source, seed=args.seed,
        )
    print("viewer stopped")
    return 0


_VIEW_RECONSTRUCT_OPTIONS = (
    ("--keep", "keep"), ("--model", "model"), ("--pruner", "pruner"), ("--device", "device"),
    ("--frames", "frames"), ("--stride", "stride"), ("--fps", "fps"),
)


def _view_reconstruction(args: argparse.Namespace, path):
    """Reconstruct ``path`` for ``pacegeo view``: the scene, and a function re-running it at another keep."""
    from pacegeo import viewer
    from pacegeo.errors import InputError
    from pacegeo.options import check_count, check_keep, check_positive_number
    from pacegeo.pipeline import DEFAULT_KEEP, Pipeline, check_input, resolve_model

    pruner = args.pruner or "auto"
    keep = check_keep(args.keep if args.keep is not None else (1.0 if pruner.lower() == "none" else DEFAULT_KEEP))
    if pruner.lower() == "none" and keep < 1.0:
        raise InputError(f"--keep {keep:g} needs a pruner; drop --pruner none or use --keep 1")
    for name in ("frames", "stride"):
        check_count(getattr(args, name), name)
    check_positive_number(args.fps, "fps")
    description = check_input(path, args.fps)
    choice = resolve_model(args.model or "auto")
    progress = False if args.quiet else None
    pipe = Pipeline.from_pretrained(choice, pruner=pruner, device=args.device or "auto")
    if pipe.notice and not args.quiet:
        print(f"pacegeo: note: {pipe.notice}", file=sys.stderr)
    prepared = pipe.prepare(path, frames=args.frames, stride=args.stride, fps=args.fps, progress=progress)

    def run(k: float, progress: bool | None = False):
        rec = pipe.reconstruct(prepared, keep=k, seed=args.seed, progress=progress)
        return viewer.scene_from_reconstruction(rec, name=description)

    scene = run(keep, progress)
    if not args.quiet:
        print(f"reconstructed {len(scene)} frames from {description} (keep {keep:g})")
    return scene, (run if pipe.pruner is not None else None)



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
    _one_line_errors(p)

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
        "view",
        help="show a reconstruction (points, cameras) in an interactive 3D viewer in the browser",
        description=(
            "Serve an interactive 3D viewer (viser) of a scene written by pacegeo reconstruct --export npz, "
            "or of a folder of images or a video reconstructed first (then a keep slider re-runs it). "
            "Needs viser: pip install \"pacegeo[viewer]\"."
        ),
    )
    p.add_argument("input", help="scene .npz (pacegeo reconstruct --export npz), folder of images, or video file")
    p.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--conf-percentile", type=float, default=50.0, metavar="P",
                   help="initially drop the lowest P percent of points by confidence (default 50; a slider changes it)")
    p.add_argument("--max-points", type=int, default=None, metavar="N",
                   help="initially show at most N points (default 1,000,000; seeded random subset)")
    p.add_argument("--points-from", choices=("depth", "pointmap"), default=None,
                   help="points from depth + cameras (default) or from the point head")
    p.add_argument("--keep", type=float, default=None, metavar="K",
                   help="folder/video input: fraction of patch tokens each frame keeps, in (0, 1] (default 0.3)")
    p.add_argument("--model", default=None, help="folder/video input: " + MODEL_HELP)
    p.add_argument("--pruner", default=None, help="folder/video input: " + PRUNER_HELP)
    p.add_argument("--device", default=None, help="folder/video input: " + DEVICE_HELP)
    _add_frame_selection(p)
    p.add_argument("--fps", type=float, metavar="F", help="video input: frames sampled per second of video (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of any randomness (point subsets, random pruning)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes")
    p.set_defaults(func=_cmd_view)
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
        print(f"pacegeo: error: {err.cli_message()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pacegeo: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        from pacegeo.errors import is_memory_error

        if os.environ.get("PACEGEO_DEBUG"):
            raise
        if is_memory_error(err):
            print("pacegeo: error: out of memory; try fewer frames (--frames/--stride) or a lower --keep", file=sys.stderr)
            return 2
        if isinstance(err, OSError):
            where = f" ({err.filename})" if getattr(err, "filename", None) else ""
            print(f"pacegeo: error: {err.strerror or str(err) or type(err).__name__}{where}", file=sys.stderr)
            return 2
        # a bug: one line, the traceback on request
        print(f"pacegeo: internal error: {type(err).__name__}: {err} (set PACEGEO_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
