"""Command-line interface: a thin layer over the library.

Every sub-command parses its arguments, calls library code and turns a
:class:`pacegeo.errors.PacegeoError` into one line on stderr and exit code 2.
Heavy imports happen inside the command functions so that ``pacegeo --help`` is fast. One module
per group of sub-commands (:mod:`~pacegeo.cli.reconstruct`, :mod:`~pacegeo.cli.maps`,
:mod:`~pacegeo.cli.view`, :mod:`~pacegeo.cli.tools`), each adding its parsers with
``add_<command>_parser``; :mod:`~pacegeo.cli.common` holds what they share.
"""

import argparse
import os
import sys

from pacegeo import __version__
from pacegeo.errors import PacegeoError


def build_parser() -> argparse.ArgumentParser:
    from pacegeo.cli import maps, reconstruct, tools, view

    parser = argparse.ArgumentParser(
        prog="pacegeo",
        description="Fast feed-forward 3D reconstruction with token pruning.",
    )
    parser.add_argument("--version", action="version", version=f"pacegeo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    tools.add_info_parser(sub)
    tools.add_synth_parser(sub)
    reconstruct.add_reconstruct_parser(sub)
    maps.add_map_parser(sub)
    maps.add_localize_parser(sub)
    view.add_view_parser(sub)
    tools.add_estimate_parser(sub)
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
