"""``pacegeo map`` and ``pacegeo localize``: build a localization map, place queries in it."""

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


def _cmd_map(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from pacegeo.errors import InputError

    started = time.perf_counter()
    with WarningHandler():
        # 1. Options, before anything is read.
        from pacegeo.io.outputs import OutputSpec, check_outputs
        from pacegeo.localize import MAP_SUFFIX
        from pacegeo.options import check_count, check_keep, check_seed
        from pacegeo.io.inputs import check_input, input_paths, prepare_inputs
        from pacegeo.models import resolve_model
        from pacegeo.sequence import check_chunking

        keep = check_keep(args.keep)
        if str(args.pruner).lower() == "none" and keep < 1.0:
            raise InputError(f"--keep {keep:g} needs a pruner; drop --pruner none or use --keep 1")
        for name in ("frames", "stride"):
            check_count(getattr(args, name), name)
        check_chunking(args.chunk, args.overlap)
        check_seed(args.seed)
        if args.target_size is not None and (args.target_size < 14 or args.target_size % 14):
            raise InputError(f"--target-size must be a positive multiple of 14, got {args.target_size}")

        # 2. Input and model, 3. output, before any work.
        description = check_input(args.input)
        choice = resolve_model(args.model)
        output = Path(args.output)
        spec = OutputSpec(output, suffixes=(MAP_SUFFIX,), what="map")
        check_outputs([spec], [*input_paths(args.input), *weight_inputs(choice, args.pruner)], args.overwrite)

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
    print(f"map written: {output} ({fmt_bytes(output.stat().st_size)})")
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

    with WarningHandler():
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
            inputs = [Path(args.map), *(Path(q) for q in args.queries), *weight_inputs(choice, args.pruner)]
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


def add_map_parser(sub) -> None:
    """The ``pacegeo map`` sub-command."""
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
    add_frame_selection(p)
    p.add_argument("--target-size", type=int, default=None, metavar="PX",
                   help="inference width, a multiple of 14 (default: the model's)")
    p.add_argument("--overwrite", action="store_true", help="replace the map file if it exists")
    p.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")
    p.add_argument("--seed", type=int, default=0, help="seed of any randomness (random pruning)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, notes or summary")
    p.set_defaults(func=_cmd_map)
    one_line_errors(p)


def add_localize_parser(sub) -> None:
    """The ``pacegeo localize`` sub-command."""
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
    one_line_errors(p)

