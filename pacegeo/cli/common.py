"""What the sub-commands share: option helps, one-line errors, warnings on stderr, sizes."""

from __future__ import annotations

import argparse
import sys

def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` (e.g. ``640x480``) into ``(width, height)``."""
    try:
        w, h = text.lower().split("x")
        width, height = int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}") from None
    return width, height


class WarningHandler:
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


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` report usage errors as one ``pacegeo: error: ...`` line (exit code 2)."""

    def error(message: str):
        parser.exit(2, f"pacegeo: error: {message} (see {parser.prog} --help)\n")

    parser.error = error
    return parser


def fmt_bytes(value: int) -> str:
    if value >= 1024**3:
        return f"{value / 1024**3:.2f} GiB"
    return f"{value / 1024**2:.0f} MiB"


def weight_inputs(choice, pruner) -> list:
    """Weight files a run reads (the model's, and the pruner's when it names a file): outputs must
    not replace them."""
    from pathlib import Path

    paths = [choice.path]
    if pruner is not None and Path(str(pruner)).expanduser().is_file():
        paths.append(Path(str(pruner)).expanduser())
    return paths


MODEL_HELP = "auto (VGGT-1B if cached, else the bundled pacegeo-tiny), vggt-1b, pacegeo-tiny, or a checkpoint path"


PRUNER_HELP = "auto (trained pruner if bundled, else training-free), training-free, random, grid, none, or a pruner checkpoint"


DEVICE_HELP = "auto (CUDA if available), cpu, cuda or cuda:N"


DTYPE_HELP = ("autocast dtype: auto (bf16 on CUDA, fp16 on older GPUs; on the CPU bf16 where it has native bf16 "
              "matrix instructions, else float32), float32, bfloat16 or float16")


def add_frame_selection(p: argparse.ArgumentParser) -> None:
    """``--frames N`` / ``--stride K``, mutually exclusive."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--frames", type=int, metavar="N", help="use N frames spread evenly over the input")
    group.add_argument("--stride", type=int, metavar="K", help="use every K-th frame")
