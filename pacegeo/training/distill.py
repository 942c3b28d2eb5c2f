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

import csv
import sys
import time

import torch

from pacegeo.errors import PacegeoError
from pacegeo.hub import read_metadata
from pacegeo.pruning.checkpoint import save_pruner
from pacegeo.pruning.distill import attention_targets, distillation_loss, topk_overlap
from pacegeo.training.setup import setup_training, training_batches, training_parser


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

