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
