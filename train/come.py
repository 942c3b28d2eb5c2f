"""Train the confidence predictor of Co-Me-style merging (:mod:`pacegeo.pruning.come`) for a backbone.

    python train/come.py --model pacegeo-tiny --layer 1 --minutes 5 --out checkpoints/pacegeo-tiny-come.safetensors
    # VGGT-1B (a GPU; Co-Me merges after encoder block 14 of 24):
    accelerate launch train/come.py --model vggt-1b --layer 14 --size 518 --frames 8 --minutes 60 \
        --out checkpoints/vggt-1b-come.safetensors

Data: SynthRooms clips (training seeds), target the backbone's own depth confidence per patch
(:mod:`pacegeo.training.confidence`); validation: pair accuracy on clips of seeds 600000+.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from pacegeo.errors import PacegeoError
from pacegeo.hub import load_backbone
from pacegeo.pruning.come import CoMeConfig, save_confidence
from pacegeo.training.confidence import train_confidence
from pacegeo.training.setup import model_size, synth_batches

VAL_SEED = 600_000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pacegeo-tiny")
    p.add_argument("--layer", type=int, required=True, help="encoder blocks before merging")
    p.add_argument("--block", type=int, default=3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--size", default=None, help="HxW or W (default: the checkpoint's training width)")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-clips", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        backbone = load_backbone(args.model).eval().requires_grad_(False)
        height, width = model_size(args.model, args.size)
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = CoMeConfig(in_dim=backbone.config.aggregator.embed_dim, layer=args.layer, block=args.block, hidden=args.hidden)
    val = [next(synth_batches(height, width, args.frames, 1, VAL_SEED + i, min_frames=args.frames))["images"]
           for i in range(args.val_clips)]
    batches = synth_batches(height, width, args.frames, args.batch, args.seed, min_frames=2)
    predictor, history = train_confidence(backbone, config, batches, val, args.steps, args.minutes, args.lr, args.seed)
    recipe = {k: str(v) for k, v in vars(args).items()}
    save_confidence(predictor, args.out, backbone, extra={"recipe": json.dumps(recipe), "history": json.dumps(history)})
    best = max(h["val_pair_accuracy"] for h in history)
    print(f"wrote {args.out} (validation pair accuracy {best:.4f}, {history[-1]['step']} steps, {history[-1]['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
