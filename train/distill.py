"""Stage 1 of pruner training: distil the frozen backbone's global attention into the token scorer.

For every clip the unpruned backbone gives each patch token a target importance: the attention mass
it receives in the global-attention layers, averaged over heads, queries and layers and normalised
per frame (see :mod:`pacegeo.pruning.distill` for why). The scorer learns to predict it from the
DINO patch features alone with a per-frame KL divergence between the target and the softmax of its
logits. The backbone is frozen and outside the optimiser.

    # the bundled backbone, on SynthRooms clips rendered on the fly (CPU or GPU)
    python train/distill.py --model pacegeo-tiny --minutes 20 --out runs/pruner-distill
    # VGGT-1B on your own images (GPU; any folder of related photos, no labels needed)
    accelerate launch train/distill.py --model vggt-1b --images my_photos/ --size 518 --frames 8 \
        --minutes 120 --out runs/vggt1b-distill

Writes ``<out>/pruner.safetensors`` (scorer + untrained restoration, backbone fingerprint in the
metadata), ``<out>/log.csv``; resumes from ``--init`` (a pruner file).
"""

import argparse
import csv
import random
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from pacegeo.data.stream import StreamConfig, SynthClipStream
from pacegeo.errors import PacegeoError
from pacegeo.hub import load_backbone, read_metadata, resolve_weights
from pacegeo.pace import PaceVGGT, load_pruner, save_pruner
from pacegeo.precision import DTYPE_CHOICES, mixed_precision_name, resolve_dtype
from pacegeo.pruning import ScorerConfig, TokenScorer
from pacegeo.pruning.distill import attention_targets, distillation_loss, topk_overlap


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


def parse_args(argv=None):
    p = training_parser(__doc__.split("\n\n")[0], out="runs/pruner-distill", minutes=20.0, batch=4, lr=1e-3,
                        images_help="folder of images to train on (default: SynthRooms clips)",
                        init_help="pruner checkpoint to continue from")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        accelerator, backbone, pace, (height, width) = setup_training(args)
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    scorer = pace.scorer
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=args.lr, weight_decay=0.01)
    scorer, optimizer = accelerator.prepare(scorer, optimizer)
    seed = args.seed * 7919 + accelerator.process_index
    batches = training_batches(args.images or None, height, width, args.frames, args.batch, seed, args.min_frames)
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "log.csv", "a", newline="")
    writer = csv.writer(log)
    prior = int(read_metadata(args.init).get("distill_steps", "0")) if args.init else 0
    step, t0 = prior, time.time()
    agg = backbone.aggregator
    while time.time() - t0 < args.minutes * 60 and (args.max_steps is None or step - prior < args.max_steps):
        images = next(batches)["images"].to(accelerator.device)
        grid = (images.shape[-2] // 14, images.shape[-1] // 14)
        with torch.no_grad(), accelerator.autocast():
            target = attention_targets(backbone, images).float()
            feats = agg.embed(images).float()
        logits = scorer(feats, grid)
        loss = distillation_loss(logits, target)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        step += 1
        overlap = topk_overlap(logits.detach(), target, 0.3)
        if accelerator.is_main_process:
            writer.writerow([step, round((time.time() - t0) / 60, 2), round(loss.item(), 5), round(overlap, 4)])
            log.flush()
            if step % 25 == 0:
                accelerator.print(f"step {step} | KL {loss.item():.4f} | top-30% overlap with target {overlap:.3f}")
    if accelerator.is_main_process:
        pace.scorer = accelerator.unwrap_model(scorer)
        path = save_pruner(pace, args.out / "pruner.safetensors",
                           extra={"distill_steps": str(step), "stage": "distill", "train_data": args.images or "synthrooms"})
        accelerator.print(f"done: {step} distillation steps; pruner in {path}")
    accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
