"""``pacegeo info``, ``pacegeo synth`` and ``pacegeo estimate``."""

from __future__ import annotations

import argparse

from pacegeo.cli.common import (
    DTYPE_HELP,
    one_line_errors,
    parse_size,
)


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


def _cmd_estimate(args: argparse.Namespace) -> int:
    import json

    from pacegeo.estimate import EstimateRequest, format_report, parse_bytes, run_estimate

    memory = parse_bytes(args.memory) if args.memory is not None else None
    request = EstimateRequest(model=args.model, frames=args.frames, keep=args.keep, size=args.size,
                              device=args.device, dtype=args.dtype, memory=memory)
    report = run_estimate(request)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def add_info_parser(sub) -> None:
    """The ``pacegeo info`` sub-command."""
    p = sub.add_parser("info", help="print version, device, torch and available models")
    p.set_defaults(func=_cmd_info)


def add_synth_parser(sub) -> None:
    """The ``pacegeo synth`` sub-command."""
    p = sub.add_parser("synth", help="generate SynthRooms RGB-D scenes in the ScanNet raw layout")
    p.add_argument("-o", "--output", required=True, help="output folder (one sub-folder per scene)")
    p.add_argument("--scenes", type=int, default=1, help="number of scenes (default 1)")
    p.add_argument("--frames", type=int, default=64, help="frames per scene (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first scene; scene i uses seed+i")
    p.add_argument("--size", type=parse_size, default=(640, 480), help="WIDTHxHEIGHT (default 640x480)")
    p.add_argument("--preview", action="store_true", help="also write preview.png, a contact sheet")
    p.add_argument("--overwrite", action="store_true", help="replace scenes that already exist")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)
    one_line_errors(p)


def add_estimate_parser(sub) -> None:
    """The ``pacegeo estimate`` sub-command."""
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
    p.add_argument("--size", type=parse_size, default=None, metavar="WxH",
                   help="model input in pixels, multiples of 14 (default: the model's width at 4:3, 518x392 for vggt-1b)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="where the run would happen (default cuda)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help=DTYPE_HELP)
    p.add_argument("--memory", default=None, metavar="SIZE",
                   help="memory of the device, e.g. 80GiB, 24GB (default: what is free on this machine's device)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (peak_bytes, fits, max_frames, min_keep and the details)")
    p.set_defaults(func=_cmd_estimate)
    one_line_errors(p)

