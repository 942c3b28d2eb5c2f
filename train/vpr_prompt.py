"""Train the prompt pool and local-feature-enhancement head of the prompt-tuned VPR extractor
(:mod:`pacegeo.vpr.prompt`) on SynthRooms places; the encoder stays frozen.

Batches as ``train/vpr.py``: P places x 4 views from the training rooms (seeds 10000+),
Multi-Similarity loss with its miner (pytorch-metric-learning), plus the key pull loss of the
prompt pool (its keys start at far-apart training queries); recall@1 on the validation rooms (seeds 20000+) every ``--val-every`` steps, and the
best validation state is kept. The prompt-independent part of the frozen encoder (patch embedding,
the blocks before the prompt insertion and the query class token) is computed once per rendered view;
every step runs the remaining frozen blocks with the selected prompts, so gradients reach the
prompt tokens through the frozen attention. ``--augment`` gives each training view one colour
jitter, drawn before the caching, so that the views of a place differ in colour balance and tone.

``--no-prompt`` trains the comparison at equal descriptor size instead: a
:class:`pacegeo.vpr.head.WeightedOTHead` with a final projection to ``--dim`` on the frozen
encoder's (cached) output tokens, same data, batches, steps and loss, written as a VPR checkpoint
(:func:`pacegeo.vpr.save_vpr`, no token scorer). The bundled file and the comparison:

    OMP_NUM_THREADS=1 python train/vpr_prompt.py --threads 1 --out checkpoints/pacegeo-tiny-vpr-prompt.safetensors
    OMP_NUM_THREADS=1 python train/vpr_prompt.py --threads 1 --no-prompt \
        --out checkpoints/ablation/pacegeo-tiny-vpr-ot256.safetensors
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pacegeo.errors import PacegeoError
from pacegeo.hub import backbone_fingerprint, load_backbone
from pacegeo.training.setup import add_place_options, metric_learning, parse_hw
from pacegeo.vpr.extract import DescriptorExtractor, save_vpr
from pacegeo.vpr.head import WeightedOTConfig, WeightedOTHead
from pacegeo.vpr.index import recall_at_1
from pacegeo.vpr.places import (
    VIEWS_PER_BATCH_PLACE,
    PlaceConfig,
    images_to_tensor,
    photometric_jitter,
    sample_places,
    training_places,
    validation_places,
)
from pacegeo.vpr.prompt import PromptConfig, PromptExtractor, save_prompt


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="pacegeo-tiny", help="frozen backbone name or path")
    p.add_argument("--out", type=Path, default=Path("checkpoints/pacegeo-tiny-vpr-prompt.safetensors"))
    p.add_argument("--log", type=Path, default=None, help="JSON log (default: runs/vpr_prompt/<out stem>.log.json)")
    p.add_argument("--no-prompt", action="store_true",
                   help="train the frozen-encoder WeightedOTHead with an output projection to --dim instead")
    add_place_options(p, places_per_batch=16, train_scenes=200, augment=0.3)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--minutes", type=float, default=8.0, help="wall-clock cap on the training steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--prompt-lr", type=float, default=1e-2, help="learning rate of the prompt tokens and keys")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--key-weight", type=float, default=0.1, help="weight of the prompt keys' pull loss")
    p.add_argument("--dim", type=int, default=256, help="descriptor size (both models)")
    p.add_argument("--pool", type=int, default=8, help="prompts in the pool")
    p.add_argument("--prompt-length", type=int, default=4, help="tokens per prompt")
    p.add_argument("--hidden", type=int, default=128, help="--no-prompt: hidden width of the OT head's MLPs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


@torch.no_grad()
def cache(fn, images: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, ...]:
    """``fn`` over ``images`` in batches, outputs concatenated."""
    parts = [fn(images[s : s + batch]) for s in range(0, images.shape[0], batch)]
    return tuple(torch.cat(t) for t in zip(*parts))


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        height, width = parse_hw(args.size)
        distances, losses, miners = metric_learning()
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    backbone = load_backbone(args.backbone)
    backbone.requires_grad_(False)
    fingerprint = backbone_fingerprint(backbone)
    grid_hw = (height // 14, width // 14)

    # -- data -------------------------------------------------------------------------------------
    cfg = PlaceConfig(width=width, height=height)
    images = training_places(args.train_scenes, args.places_per_scene, args.views, cfg, seed=args.seed)  # [P, V, H, W, 3]
    num_places, views = images.shape[:2]
    val_set = validation_places(args.val_scenes, args.val_queries, cfg, seed=args.seed)
    prep_render = time.perf_counter() - t0
    print(f"rendered {num_places} places x {views} views from {args.train_scenes} rooms, validation "
          f"{len(val_set.database)} db / {len(val_set.queries)} queries ({prep_render:.0f} s)", flush=True)

    if args.no_prompt:
        config = WeightedOTConfig(in_dim=backbone.config.aggregator.embed_dim, hidden_dim=args.hidden, out_dim=args.dim)
        model = DescriptorExtractor.from_backbone(backbone, WeightedOTHead(config)).eval()

        def frozen(x):  # final tokens and class token of the frozen encoder
            enc = model.encode(x)
            return enc.tokens, enc.cls

        def describe(tok, cls):
            return model.head(tok, cls), None

        groups = [{"params": list(model.head.parameters()), "lr": args.lr}]
    else:
        config = PromptConfig(embed_dim=backbone.config.aggregator.embed_dim, pool_size=args.pool,
                              prompt_length=args.prompt_length, out_dim=args.dim)
        model = PromptExtractor.from_backbone(backbone, config).eval()
        frozen = model.frozen_inputs

        def describe(start, query):
            tokens, cls, idx = model.prompted(start, query)
            return model.head(tokens, cls, grid_hw), idx

        groups = [{"params": list(model.head.parameters()), "lr": args.lr},
                  {"params": list(model.prompts.parameters()), "lr": args.prompt_lr, "weight_decay": 0.0}]
    jitter_rng = torch.Generator().manual_seed(args.seed)
    train_a, train_b = cache(frozen, photometric_jitter(images_to_tensor(images), args.augment, jitter_rng))
    train_a = train_a.reshape(num_places, views, *train_a.shape[1:])
    train_b = train_b.reshape(num_places, views, *train_b.shape[1:])
    rng = np.random.default_rng(args.seed)
    val_db = cache(frozen, images_to_tensor(val_set.database))
    val_q = cache(frozen, images_to_tensor(val_set.queries))
    if not args.no_prompt:  # keys start at far-apart training queries (a fixed random subset)
        subset = torch.as_tensor(rng.choice(num_places * views, min(1024, num_places * views), replace=False))
        picked = model.prompts.init_keys(train_b.flatten(0, 1)[subset])
        print(f"prompt keys initialised from training views {subset[picked].tolist()}")
    prep_seconds = time.perf_counter() - t0
    what = "output tokens" if args.no_prompt else "prompt-independent features"
    print(f"cached the frozen encoder's {what} ({prep_seconds:.0f} s)", flush=True)

    def train_mode() -> None:  # the frozen encoder stays in eval mode
        model.train()
        model.encoder.eval()

    def val_recall() -> tuple[float, list[int]]:
        model.eval()
        with torch.no_grad():
            db, db_idx = describe(*val_db)
            qs, q_idx = describe(*val_q)
        train_mode()
        usage = [] if db_idx is None else torch.bincount(torch.cat((db_idx, q_idx)), minlength=args.pool).tolist()
        return recall_at_1(db, qs, val_set.positives), usage

    loss_fn = losses.MultiSimilarityLoss(alpha=1.0, beta=50.0, base=0.0, distance=distances.DotProductSimilarity())
    miner = miners.MultiSimilarityMiner(epsilon=0.1, distance=distances.CosineSimilarity())
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 50) * (1.0 - 0.8 * min(1.0, s / max(1, args.steps))))
    trainable = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    log = {"args": {k: str(v) for k, v in vars(args).items()}, "steps": []}
    best_r1, usage = val_recall()
    best_state, best_step = copy.deepcopy(trainable), 0
    print(f"step 0: validation R@1 {best_r1:.3f} prompt usage {usage}", flush=True)
    train_start = time.perf_counter()
    deadline = train_start + 60 * args.minutes
    train_mode()
    step = 0
    for step in range(1, args.steps + 1):
        places, picks = sample_places(rng, num_places, views, args.places_per_batch)
        a = train_a[places[:, None], picks].flatten(0, 1)
        b = train_b[places[:, None], picks].flatten(0, 1)
        labels = torch.as_tensor(places).repeat_interleave(VIEWS_PER_BATCH_PLACE)
        desc, idx = describe(a, b)
        loss = loss_fn(desc, labels, miner(desc, labels))
        if idx is not None:
            loss = loss + args.key_weight * model.prompts.key_loss(b, idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sched.step()
        stop = time.perf_counter() > deadline
        if step % args.val_every == 0 or step == args.steps or stop:
            r1, usage = val_recall()
            if r1 > best_r1:
                best_r1, best_step = r1, step
                best_state = copy.deepcopy({k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")})
            log["steps"].append({"step": step, "loss": loss.item(), "val_R@1": r1, "prompt_usage": usage})
            print(f"step {step}: loss {loss.item():.4f}, validation R@1 {r1:.3f}, prompt usage {usage} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if stop:
            print(f"stopped at step {step} (time budget)")
            break
    train_seconds = time.perf_counter() - train_start
    model.load_state_dict({**model.state_dict(), **best_state})
    model.eval()
    print(f"keeping step {best_step} (validation R@1 {best_r1:.3f}); {train_seconds:.0f} s of training, "
          f"{prep_seconds:.0f} s of data preparation", flush=True)
    extra = {
        "train_args": json.dumps({k: str(v) for k, v in vars(args).items()}),
        "train_size": f"{height}x{width}",
        "steps_run": str(step),
        "best_step": str(best_step),
        "validation_R@1": f"{best_r1:.4f}",
        "train_seconds": f"{train_seconds:.0f}",
        "prep_seconds": f"{prep_seconds:.0f}",
    }
    if args.no_prompt:
        save_vpr(model, args.out, backbone=args.backbone, backbone_fingerprint=fingerprint, extra=extra)
    else:
        save_prompt(model, args.out, backbone=args.backbone, backbone_fingerprint=fingerprint, extra=extra)
    log.update(best_step=best_step, best_val_R1=best_r1, train_seconds=train_seconds, prep_seconds=prep_seconds)
    log_path = args.log or Path("runs/vpr_prompt") / (args.out.stem + ".log.json")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(json.dumps(log, indent=1))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) and {log_path} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
