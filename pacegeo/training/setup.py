"""What the pruner-training stages share: their common options, the accelerator and models of a
run, the training resolution and the batches (SynthRooms clips with ground truth, or clips of an
image folder for the teacher-only losses). The stages are :mod:`.distill` and :mod:`.finetune`;
``train/`` holds their command lines."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from pacegeo.errors import PacegeoError
from pacegeo.hub import load_backbone, resolve_weights
from pacegeo.pace import PaceVGGT
from pacegeo.pruning.checkpoint import load_pruner
from pacegeo.precision import DTYPE_CHOICES, mixed_precision_name, resolve_dtype
from pacegeo.pruning import ScorerConfig, TokenScorer

__all__ = ["add_place_options", "image_folder_batches", "metric_learning", "model_size", "parse_hw", "setup_training", "synth_batches",
           "training_batches", "training_parser"]


def parse_hw(size: str) -> tuple[int, int]:
    """``"HxW"`` -> ``(H, W)``, both multiples of the 14-pixel patch (:class:`PacegeoError` otherwise)."""
    try:
        height, width = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise PacegeoError(f"--size {size!r} must be HxW") from None
    if height <= 0 or width <= 0 or height % 14 or width % 14:
        raise PacegeoError(f"--size {size}: both sides must be positive multiples of 14")
    return height, width


def metric_learning():
    """The ``(distances, losses, miners)`` modules of pytorch-metric-learning, which the VPR
    trainings need (:class:`PacegeoError` with the install command when it is missing)."""
    try:
        from pytorch_metric_learning import distances, losses, miners
    except ImportError:
        raise PacegeoError("training needs pytorch-metric-learning: pip install pytorch-metric-learning") from None
    return distances, losses, miners


def add_place_options(parser: argparse.ArgumentParser, size: str = "112x154", places_per_batch: int = 24,
                      train_scenes: int = 80, augment: float | None = None) -> None:
    """The SynthRooms place options of the VPR trainings (:mod:`pacegeo.vpr.places`): view size,
    training and validation rooms, places per room, views per place, places per batch, and, for the
    trainings that jitter their views (``augment`` not None: its default), ``--augment``."""
    parser.add_argument("--size", default=size, help="HxW of rendered views, multiples of 14")
    parser.add_argument("--train-scenes", type=int, default=train_scenes)
    parser.add_argument("--places-per-scene", type=int, default=8)
    parser.add_argument("--views", type=int, default=6, help="rendered views per place (4 drawn per batch)")
    parser.add_argument("--val-scenes", type=int, default=4)
    parser.add_argument("--val-queries", type=int, default=40, help="queries per validation room")
    parser.add_argument("--places-per-batch", type=int, default=places_per_batch)
    if augment is not None:
        parser.add_argument("--augment", type=float, default=augment,
                            help="colour jitter strength of the training views (pacegeo.vpr.places.photometric_jitter); "
                                 "0: none")


def image_folder_batches(folder: str, frames: int, batch: int, target_size: int, seed: int):
    """Endless batches of ``frames`` random images of a folder (unlabelled; for distillation and the
    teacher loss of stage 2)."""
    from pacegeo.io import list_image_files, load_images

    paths = list_image_files(folder)
    if len(paths) < frames:
        raise PacegeoError(f"{folder} holds {len(paths)} images, fewer than --frames {frames}")
    rng = random.Random(seed)
    while True:
        clips = []
        for _ in range(batch):
            start = rng.randrange(0, len(paths) - frames + 1)
            clips.append(load_images(paths[start : start + frames], mode="crop", target_size=target_size).images)
        yield {"images": torch.stack(clips)}


def synth_batches(height: int, width: int, frames: int, batch: int, seed: int, min_frames: int = 2):
    """Endless batches of SynthRooms clips of ``min_frames``-``frames`` frames (one length per batch)."""
    from pacegeo.data.stream import StreamConfig, SynthClipStream  # rendering needs the synth extra

    stream = SynthClipStream(StreamConfig(height=height, width=width, frames=(min_frames, frames), max_gap=10), seed=seed)
    while True:
        yield stream.batch(batch)


def model_size(model_name: str, size: str | None) -> tuple[int, int]:
    """Training resolution ``(H, W)``: ``--size HxW``, ``--size W`` (3:4 aspect) or the checkpoint's
    own width (3:4 aspect). Image folders are loaded at width W, their height following the images.

    Raises:
        PacegeoError: ``size`` is not of either form, or not a multiple of the 14-pixel patch.
    """
    if size:
        try:
            values = [int(v) for v in size.lower().split("x")]
        except ValueError:
            values = []
        if len(values) not in (1, 2) or min(values) <= 0:
            raise PacegeoError(f"--size {size!r}: expected HxW or a width, e.g. 112x154 or 518")
        if len(values) == 1:
            values = [int(round(values[0] * 0.75 / 14)) * 14, values[0]]
        if any(v % 14 for v in values):
            raise PacegeoError(f"--size {size!r}: height and width must be multiples of 14")
        return values[0], values[1]
    from pacegeo.models import read_preprocess

    width, _ = read_preprocess(resolve_weights(model_name))
    return int(round(width * 0.75 / 14)) * 14, width


def training_batches(images: str | None, height: int, width: int, frames: int, batch: int, seed: int,
                     min_frames: int = 2):
    """Endless training batches: SynthRooms clips (with ground truth, ``min_frames``-``frames``
    frames) when ``images`` is None, else clips of ``frames`` images of that folder."""
    if images is None:
        return synth_batches(height, width, frames, batch, seed, min_frames)
    return image_folder_batches(images, frames, batch, width, seed)


def setup_training(args, **init_kwargs):
    """Threads (``--threads``), the accelerator and the seed, then the models of a pruner-training run.

    Returns ``(accelerator, backbone, pace, (height, width))``: the frozen backbone ``--model`` on the
    accelerator's device, the pruner to train around it (``--init``, loaded with ``init_kwargs``; else
    a fresh learned scorer) and the training resolution (``--size`` or the model's own).

    Raises:
        PacegeoError: the model or the pruner cannot be loaded.
    """
    if not 1 <= args.min_frames <= args.frames:
        raise PacegeoError(f"--min-frames {args.min_frames} must be between 1 and --frames {args.frames}")
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if args.threads:
        torch.set_num_threads(args.threads)
    amp = resolve_dtype(args.dtype, "cuda" if torch.cuda.is_available() else "cpu")
    accelerator = Accelerator(mixed_precision=mixed_precision_name(amp))
    set_seed(args.seed + accelerator.process_index)
    backbone = load_backbone(args.model, device=accelerator.device)
    height, width = model_size(args.model, args.size)
    if args.init:
        pace = load_pruner(args.init, backbone, amp_dtype=amp, **init_kwargs)
    else:
        pace = PaceVGGT(backbone, scorer=TokenScorer(ScorerConfig.for_backbone(backbone)), mode="learned", amp_dtype=amp)
    return accelerator, backbone, pace, (height, width)


def training_parser(description: str, *, out: str, minutes: float, batch: int, lr: float,
                    images_help: str, init_help: str) -> argparse.ArgumentParser:
    """The options every pruner-training stage shares (those :func:`setup_training` reads, the
    data, the budget and the optimiser's learning rate); a stage adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="pacegeo-tiny")
    p.add_argument("--images", default=None, help=images_help)
    p.add_argument("--init", default=None, help=init_help)
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--minutes", type=float, default=minutes)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--size", default=None, help="HxW, or a width W at 3:4 (default: the model's own width at 3:4)")
    p.add_argument("--frames", type=int, default=4,
                   help="frames per clip (SynthRooms: the longest clip; lengths are drawn from --min-frames to it)")
    p.add_argument("--min-frames", type=int, default=2, help="shortest SynthRooms clip")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="autocast dtype (pacegeo.precision.resolve_dtype; auto: bf16 on CUDA and on CPUs with native bf16)")
    return p
