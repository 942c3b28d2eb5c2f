"""Distil the VPR extractor into a ternary-weight encoder with activation sparsity (TAT-VPR style).

Teacher: the bundled full-precision extractor (``--teacher``, default ``pacegeo-tiny-vpr``: the
``pacegeo-tiny`` DINO encoder, its OT head and token scorer). Student: a copy whose transformer-block
``nn.Linear`` layers are ternary (:mod:`pacegeo.vpr.ternary`); patch embedding, positional
embedding, class/register tokens stay the teacher's, frozen, so their output is computed once per
image and cached.

Data: SynthRooms places rendered as ``train/vpr.py`` does (training rooms 10000.., validation rooms
20000.., 112 x 154 px).

1. **token distillation**: per batch of ``--distill-batch`` views, one activation keep drawn
   uniformly from ``[--min-activation-keep, 1]`` for every ternary layer; loss = MSE between the
   student's and the frozen teacher's layer-normalised tokens after the last block (what the head
   sees) plus the same at the pruning point (what the token scorer sees). Trained: the latent
   ternary weights and the float norms, LayerScales and biases of the blocks and the final norm.
   The state with the lowest validation MSE (mean over activation keep 1 and the minimum) is kept.
2. **retrieval fine-tuning**: the head (initialised from the teacher's) and the last encoder block
   with the Multi-Similarity loss and miner (pytorch-metric-learning, as ``train/vpr.py``), P places
   x 4 views per batch, an activation keep drawn per batch as above, and with probability
   ``--token-drop`` a random ``[0.3, 1]`` fraction of the patch tokens kept after the pruning point.
   The state with the best validation R@1 (mean over activation keep 1.0, 0.7, 0.4) is kept.

Deterministic for a given seed when the step counts, not ``--minutes``, end the stages. The bundled
file is made with:

    OMP_NUM_THREADS=1 python train/vpr_ternary.py --threads 1 --out checkpoints/pacegeo-tiny-vpr-ternary.safetensors
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pacegeo.errors import PacegeoError
from pacegeo.pruning.budget import keep_count
from pacegeo.training.setup import add_place_options, metric_learning, parse_hw
from pacegeo.vpr.extract import load_vpr, read_vpr_metadata, resolve_vpr
from pacegeo.vpr.index import recall_at_1
from pacegeo.vpr.places import (
    VIEWS_PER_BATCH_PLACE,
    PlaceConfig,
    images_to_tensor,
    sample_places,
    training_places,
    validation_places,
)
from pacegeo.vpr.ternary import TernaryExtractor, save_ternary_vpr, ternary_from_teacher

VAL_ACTIVATION_KEEPS = (1.0, 0.7, 0.4)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="pacegeo-tiny-vpr", help="full-precision VPR checkpoint (its backbone is loaded)")
    p.add_argument("--out", type=Path, default=Path("checkpoints/pacegeo-tiny-vpr-ternary.safetensors"))
    p.add_argument("--log", type=Path, default=None, help="JSON log (default: runs/vpr/<out stem>.log.json)")
    add_place_options(p)
    p.add_argument("--distill-steps", type=int, default=500)
    p.add_argument("--distill-batch", type=int, default=32)
    p.add_argument("--distill-lr", type=float, default=5e-4)
    p.add_argument("--early-weight", type=float, default=1.0, help="weight of the pruning-point MSE")
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--finetune-lr", type=float, default=5e-5)
    p.add_argument("--token-drop", type=float, default=0.5)
    p.add_argument("--min-activation-keep", type=float, default=0.4)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--minutes", type=float, default=13.0,
                   help="wall-clock cap on training (distillation 70%%, fine-tuning the rest), data preparation not included")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


@torch.no_grad()
def prepared_tokens(extractor, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Tokens before the first block (cls, registers, patches): ``[M, 3, H, W] -> [M, P, C]``."""
    return torch.cat([extractor.encoder.prepare_tokens((images[s : s + batch] - extractor._mean) / extractor._std)
                      for s in range(0, images.shape[0], batch)])


def run_blocks(extractor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepared tokens ``[B, P, C]`` -> (normalised tokens at the pruning point, normalised output tokens)."""
    for block in extractor.blocks[: extractor.prune_after]:
        tokens = block(tokens)
    early = extractor.encoder.norm(tokens)
    for block in extractor.blocks[extractor.prune_after :]:
        tokens = block(tokens)
    return early, extractor.encoder.norm(tokens)


@torch.no_grad()
def teacher_targets(teacher, prep: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    outs = [run_blocks(teacher, prep[s : s + batch]) for s in range(0, prep.shape[0], batch)]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def set_activation_keep(student: TernaryExtractor, keep: float) -> None:
    for layer in student.ternary_layers().values():
        layer.keep_activations = keep


def random_token_subset(tokens: torch.Tensor, num_special: int, keep: float, gen: torch.Generator) -> torch.Tensor:
    """Keep the special tokens and a random ``keep`` fraction of the patch tokens (grid order kept)."""
    special, patches = tokens[:, :num_special], tokens[:, num_special:]
    b, n, c = patches.shape
    idx = torch.rand(b, n, generator=gen).argsort(dim=-1)[:, : keep_count(keep, n)].sort(dim=-1).values
    return torch.cat((special, torch.gather(patches, 1, idx[..., None].expand(-1, -1, c))), dim=1)


@torch.no_grad()
def descriptors(extractor, prep: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Unpruned descriptors from prepared tokens."""
    out = []
    for s in range(0, prep.shape[0], batch):
        _, final = run_blocks(extractor, prep[s : s + batch])
        out.append(extractor.head(final[:, extractor.num_special :], final[:, 0]))
    return torch.cat(out)


def trainable(module: torch.nn.Module, on: bool) -> None:
    for param in module.parameters():
        param.requires_grad_(on)


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
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    teacher_meta = read_vpr_metadata(resolve_vpr(args.teacher))
    teacher = load_vpr(args.teacher).eval()  # refuses a backbone other than the one its head was trained on
    trainable(teacher, False)
    student = ternary_from_teacher(teacher)
    trainable(student, False)

    # -- data -------------------------------------------------------------------------------------
    cfg = PlaceConfig(width=width, height=height)
    images = training_places(args.train_scenes, args.places_per_scene, args.views, cfg, seed=args.seed)  # [P, V, H, W, 3]
    num_places, views = images.shape[:2]
    val_set = validation_places(args.val_scenes, args.val_queries, cfg, seed=args.seed)
    prep = prepared_tokens(teacher, images_to_tensor(images))
    del images
    t_early, t_final = teacher_targets(teacher, prep)
    val_prep_db = prepared_tokens(teacher, images_to_tensor(val_set.database))
    val_prep_q = prepared_tokens(teacher, images_to_tensor(val_set.queries))
    val_prep = torch.cat((val_prep_db, val_prep_q))
    v_early, v_final = teacher_targets(teacher, val_prep)
    n_db = len(val_prep_db)
    teacher_r1 = recall_at_1(descriptors(teacher, val_prep_db), descriptors(teacher, val_prep_q), val_set.positives)
    prep_seconds = time.perf_counter() - t0
    print(f"{num_places} places x {views} views from {args.train_scenes} rooms, validation {n_db} db / "
          f"{len(val_prep_q)} queries; teacher validation R@1 {teacher_r1:.3f} ({prep_seconds:.0f} s)", flush=True)
    log = {"args": {k: str(v) for k, v in vars(args).items()}, "teacher_val_R@1": teacher_r1, "distill": [], "finetune": []}
    keeps_lo = args.min_activation_keep

    def val_mse() -> dict[float, float]:
        student.eval()
        out = {}
        with torch.no_grad():
            for keep in (1.0, keeps_lo):
                set_activation_keep(student, keep)
                err = []
                for s in range(0, val_prep.shape[0], 64):
                    early, final = run_blocks(student, val_prep[s : s + 64])
                    err.append(F.mse_loss(final, v_final[s : s + 64]) + args.early_weight * F.mse_loss(early, v_early[s : s + 64]))
                out[keep] = float(torch.stack(err).mean())
        set_activation_keep(student, 1.0)
        return out

    def val_recall() -> dict[float, float]:
        student.eval()
        out = {}
        for keep in VAL_ACTIVATION_KEEPS:
            set_activation_keep(student, keep)
            out[keep] = recall_at_1(descriptors(student, val_prep_db), descriptors(student, val_prep_q), val_set.positives)
        set_activation_keep(student, 1.0)
        return out

    train_start = time.perf_counter()
    deadline_1 = train_start + 60 * args.minutes * 0.7
    deadline = train_start + 60 * args.minutes

    # -- 1. token distillation --------------------------------------------------------------------
    params = [p for name, p in student.encoder.named_parameters()
              if name.startswith(("blocks.", "norm."))]
    trainable(student.encoder, False)
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=args.distill_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / args.distill_steps))))
    flat = prep.shape[0]
    mse = val_mse()
    best = (np.mean(list(mse.values())), copy.deepcopy(student.encoder.state_dict()), 0)
    print(f"distill step 0: validation MSE {mse[1.0]:.4f} (keep 1) {mse[keeps_lo]:.4f} (keep {keeps_lo})", flush=True)
    step = 0
    for step in range(1, args.distill_steps + 1):
        student.train()
        set_activation_keep(student, float(rng.uniform(keeps_lo, 1.0)))
        idx = torch.as_tensor(rng.choice(flat, args.distill_batch, replace=False))
        early, final = run_blocks(student, prep[idx])
        loss = F.mse_loss(final, t_final[idx]) + args.early_weight * F.mse_loss(early, t_early[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sched.step()
        stop = time.perf_counter() > deadline_1
        if step % args.eval_every == 0 or step == args.distill_steps or stop:
            mse = val_mse()
            score = float(np.mean(list(mse.values())))
            if score < best[0]:
                best = (score, copy.deepcopy(student.encoder.state_dict()), step)
            log["distill"].append({"step": step, "loss": loss.item(), "val_mse": {str(k): v for k, v in mse.items()}})
            print(f"distill step {step}: loss {loss.item():.4f}, validation MSE {mse[1.0]:.4f} (keep 1) "
                  f"{mse[keeps_lo]:.4f} (keep {keeps_lo}) ({time.perf_counter() - t0:.0f} s)", flush=True)
        if stop:
            print(f"distillation stopped at step {step} (time budget)")
            break
    student.encoder.load_state_dict(best[1])
    log["distill_best_step"], log["distill_steps_run"] = best[2], step
    distill_seconds = time.perf_counter() - train_start
    print(f"keeping the encoder of distillation step {best[2]} ({distill_seconds:.0f} s)", flush=True)

    # -- 2. retrieval fine-tuning: head + last block ----------------------------------------------
    loss_fn = losses.MultiSimilarityLoss(alpha=1.0, beta=50.0, base=0.0, distance=distances.DotProductSimilarity())
    miner = miners.MultiSimilarityMiner(epsilon=0.1, distance=distances.CosineSimilarity())
    trainable(student, False)
    last = student.blocks[-1]
    trainable(last, True)
    trainable(student.head, True)
    optimizer = torch.optim.AdamW(list(student.head.parameters()) + list(last.parameters()), lr=args.finetune_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20) * (1.0 - 0.8 * min(1.0, s / args.finetune_steps)))
    prep_pv = prep.reshape(num_places, views, *prep.shape[1:])
    rec = val_recall()
    best = (float(np.mean(list(rec.values()))), copy.deepcopy(student.state_dict()), 0)
    print("fine-tune step 0: validation R@1 " + ", ".join(f"{v:.3f} (act {k})" for k, v in rec.items()), flush=True)
    log["finetune"].append({"step": 0, "val_R@1": {str(k): v for k, v in rec.items()}})
    ft_start = time.perf_counter()
    step = 0
    for step in range(1, args.finetune_steps + 1):
        student.train()
        set_activation_keep(student, float(rng.uniform(keeps_lo, 1.0)))
        places, picks = sample_places(rng, num_places, views, args.places_per_batch)
        tokens = prep_pv[places[:, None], picks].reshape(-1, *prep.shape[1:])
        with torch.no_grad():
            for block in student.blocks[: student.prune_after]:
                tokens = block(tokens)
        if rng.uniform() < args.token_drop:
            tokens = random_token_subset(tokens, student.num_special, float(rng.uniform(0.3, 1.0)), gen)
        for block in student.blocks[student.prune_after :]:
            tokens = block(tokens)
        normed = student.encoder.norm(tokens)
        desc = student.head(normed[:, student.num_special :], normed[:, 0])
        labels = torch.as_tensor(places).repeat_interleave(VIEWS_PER_BATCH_PLACE)
        loss = loss_fn(desc, labels, miner(desc, labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sched.step()
        stop = time.perf_counter() > deadline
        if step % args.eval_every == 0 or step == args.finetune_steps or stop:
            rec = val_recall()
            score = float(np.mean(list(rec.values())))
            if score > best[0]:
                best = (score, copy.deepcopy(student.state_dict()), step)
            log["finetune"].append({"step": step, "loss": loss.item(), "val_R@1": {str(k): v for k, v in rec.items()}})
            print(f"fine-tune step {step}: loss {loss.item():.4f}, validation R@1 "
                  + ", ".join(f"{v:.3f} (act {k})" for k, v in rec.items()) + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
        if stop:
            print(f"fine-tuning stopped at step {step} (time budget)")
            break
    student.load_state_dict(best[1])
    student.eval()
    trainable(student, False)
    set_activation_keep(student, 1.0)
    log["finetune_best_step"], log["finetune_steps_run"] = best[2], step
    finetune_seconds = time.perf_counter() - ft_start
    rec = val_recall()
    print(f"keeping fine-tune step {best[2]}: validation R@1 " + ", ".join(f"{v:.3f} (act {k})" for k, v in rec.items())
          + f" (teacher {teacher_r1:.3f})")
    log.update(val_R1={str(k): v for k, v in rec.items()}, prep_seconds=round(prep_seconds, 1),
               distill_seconds=round(distill_seconds, 1), finetune_seconds=round(finetune_seconds, 1))

    # -- export -----------------------------------------------------------------------------------
    extra = {
        "teacher": str(args.teacher),
        "train_args": json.dumps({k: str(v) for k, v in vars(args).items()}),
        "train_size": f"{height}x{width}",
        "distill_best_step": str(log["distill_best_step"]),
        "finetune_best_step": str(log["finetune_best_step"]),
        "validation_R@1": json.dumps({"teacher": teacher_r1, "ternary": log["val_R1"]}),
    }
    save_ternary_vpr(student, args.out, backbone=teacher_meta["backbone"],
                     backbone_fingerprint=teacher_meta["backbone_fingerprint"], extra=extra)
    log_path = args.log or Path("runs/vpr") / (args.out.stem + ".log.json")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log["total_seconds"] = round(time.perf_counter() - t0, 1)
    log_path.write_text(json.dumps(log, indent=1))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, weight bytes {student.weight_bytes()}) and {log_path} "
          f"in {log['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
