"""Distil a small place-recognition student (pacegeo.vpr.student) from the bundled VPR teacher.

SynthRooms place batches as in ``train/vpr.py`` (P places x 4 views; training rooms 10000..,
validation rooms 20000..). The teacher (backbone + head, ``--teacher``) is frozen; its descriptors
and final tokens are computed once for every rendered view. The student (its own small ViT and
head, from scratch) is trained on the images with, by ``--ablation``:

* ``ms``: the Multi-Similarity loss with its miner (pytorch-metric-learning) on the student's
  descriptors;
* ``distill``: + relation distillation, the mean squared difference between the student's and the
  teacher's in-batch similarity matrices (``--relation-weight``);
* ``confusion``: + confusion-aware weighting: the pairs the teacher's similarities make hard
  (``pacegeo.vpr.relations.teacher_hard_pairs``) weigh ``1 + --confusion-boost`` in the relation
  term and in the MS term (whose pairs are the student miner's plus the teacher's hard pairs);
* ``full``: + feature alignment, a cross-attention module (student tokens query the teacher's tokens
  of the same image; ``--align-weight``) that is used in training only.

``--augment`` jitters the colours of the student's views in every batch (the teacher's outputs are
computed once, on the unjittered views).

The student of the last step (or with ``--select best`` the one with the best validation recall@1,
checked every ``--val-every`` steps) is written with its config and the teacher's
identity in the metadata. The bundled student is made with:

    python train/vpr_student.py --threads 1 --out checkpoints/pacegeo-tiny-vpr-student.safetensors

The run is deterministic on a given machine and thread count when it ends by ``--steps`` (not by
the ``--minutes`` cap).
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
from pacegeo.vpr.extract import file_sha256, load_vpr, read_vpr_metadata, resolve_vpr
from pacegeo.vpr.index import recall_at_1
from pacegeo.vpr.places import (
    VAL_SCENE_OFFSET,
    VIEWS_PER_BATCH_PLACE,
    PlaceConfig,
    images_to_tensor,
    photometric_jitter,
    sample_places,
    training_places,
    validation_places,
)
from pacegeo.vpr.relations import confusion_weights, multi_similarity_loss, pairs_to_mask, relation_loss
from pacegeo.vpr.student import FeatureAlignment, StudentConfig, StudentExtractor, save_student

ABLATIONS = ("ms", "distill", "confusion", "full")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="pacegeo-tiny-vpr", help="teacher VPR checkpoint (on its recorded backbone)")
    p.add_argument("--out", type=Path, default=Path("checkpoints/pacegeo-tiny-vpr-student.safetensors"))
    p.add_argument("--log", type=Path, default=None, help="JSON log (default: runs/vpr_student/<out stem>.log.json)")
    p.add_argument("--ablation", choices=ABLATIONS, default="full")
    add_place_options(p, size="168x224", train_scenes=200, augment=0.3)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock cap on training (data preparation excluded)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--relation-weight", type=float, default=10.0)
    p.add_argument("--confusion-boost", type=float, default=2.0, help="hard pairs weigh 1 + this")
    p.add_argument("--epsilon", type=float, default=0.1, help="margin of the MS miner and of the teacher's hard pairs")
    p.add_argument("--align-weight", type=float, default=1.0)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--clusters", type=int, default=16)
    p.add_argument("--cluster-dim", type=int, default=32)
    p.add_argument("--global-dim", type=int, default=128)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--select", choices=("best", "last"), default="last",
                   help="keep the student of the best validation R@1 or the last step")
    return p.parse_args(argv)


@torch.no_grad()
def teacher_outputs(teacher, images: np.ndarray, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher descriptors ``[M, D]`` and final class + patch tokens ``[M, 1 + N, C]`` (float16)."""
    descs, tokens = [], []
    flat = images.reshape(-1, *images.shape[-3:])
    for s in range(0, len(flat), batch):
        enc = teacher.encode(images_to_tensor(flat[s : s + batch]), 1.0)
        descs.append(teacher.head(enc.tokens, enc.cls))
        tokens.append(torch.cat((enc.cls[:, None], enc.tokens), dim=1).half())
    return torch.cat(descs), torch.cat(tokens)


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
    teacher_meta = read_vpr_metadata(resolve_vpr(args.teacher))
    backbone = load_backbone(teacher_meta["backbone"])
    teacher = load_vpr(args.teacher, backbone=backbone)  # refuses a backbone other than the recorded one
    for param in teacher.parameters():
        param.requires_grad_(False)

    # -- data and the teacher's outputs, once ------------------------------------------------------
    cfg = PlaceConfig(width=width, height=height)
    images = training_places(args.train_scenes, args.places_per_scene, args.views, cfg, seed=args.seed)  # [P, V, H, W, 3]
    num_places, views = images.shape[:2]
    val_set = validation_places(args.val_scenes, args.val_queries, cfg, seed=args.seed)
    t_desc, t_tok = teacher_outputs(teacher, images)
    t_desc = t_desc.reshape(num_places, views, -1)
    t_tok = t_tok.reshape(num_places, views, *t_tok.shape[1:])
    val_db, val_q = images_to_tensor(val_set.database), images_to_tensor(val_set.queries)
    teacher_val = recall_at_1(teacher.describe(val_db), teacher.describe(val_q), val_set.positives)
    prep_seconds = time.perf_counter() - t0
    print(f"{num_places} places x {views} views from {args.train_scenes} rooms, validation {len(val_db)} db / "
          f"{len(val_q)} queries; teacher validation R@1 {teacher_val:.3f} ({prep_seconds:.0f} s)", flush=True)

    # -- student ---------------------------------------------------------------------------------
    config = StudentConfig(embed_dim=args.embed_dim, num_clusters=args.clusters, cluster_dim=args.cluster_dim,
                           global_dim=args.global_dim, hidden_dim=args.hidden)
    student = StudentExtractor(config)
    align = FeatureAlignment(config.embed_dim, t_tok.shape[-1])
    n_student = sum(p.numel() for p in student.parameters())
    n_teacher = sum(p.numel() for p in teacher.parameters())
    print(f"student {n_student} parameters, teacher {n_teacher} ({n_teacher / n_student:.2f}x)")
    params = list(student.parameters()) + (list(align.parameters()) if args.ablation == "full" else [])
    optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(1.0, s / args.steps)))))
    ms_loss = losses.MultiSimilarityLoss(alpha=1.0, beta=50.0, base=0.0, distance=distances.DotProductSimilarity())
    miner = miners.MultiSimilarityMiner(epsilon=args.epsilon, distance=distances.CosineSimilarity())
    rng = np.random.default_rng(args.seed)
    jitter_rng = torch.Generator().manual_seed(args.seed)

    def validate() -> float:
        student.eval()
        r1 = recall_at_1(student.describe(val_db), student.describe(val_q), val_set.positives)
        student.train()
        return r1

    log = {"args": {k: str(v) for k, v in vars(args).items()}, "teacher_val_R@1": teacher_val, "steps": []}
    best_r1, best_state, best_step = validate(), copy.deepcopy(student.state_dict()), 0
    print(f"step 0: validation R@1 {best_r1:.3f}", flush=True)
    train_start = time.perf_counter()
    deadline = train_start + 60 * args.minutes
    student.train()
    step = 0
    for step in range(1, args.steps + 1):
        places, picks = sample_places(rng, num_places, views, args.places_per_batch)
        batch = photometric_jitter(images_to_tensor(images[places[:, None], picks]), args.augment, jitter_rng)
        labels = torch.as_tensor(places).repeat_interleave(VIEWS_PER_BATCH_PLACE)
        tokens, desc = student.tokens(batch)
        teacher_desc = t_desc[places[:, None], picks].reshape(len(labels), -1)
        terms = {}
        if args.ablation in ("ms", "distill"):
            terms["ms"] = ms_loss(desc, labels, miner(desc, labels))
        sim = desc @ desc.T
        teacher_sim = teacher_desc @ teacher_desc.T
        if args.ablation == "distill":
            terms["relation"] = args.relation_weight * relation_loss(sim, teacher_sim)
        if args.ablation in ("confusion", "full"):
            weights = confusion_weights(teacher_sim, labels, args.confusion_boost, args.epsilon)
            hard = weights > 1
            mined_pos, mined_neg = pairs_to_mask(miner(desc, labels), len(labels))
            terms["ms"] = multi_similarity_loss(sim, labels, weights * (mined_pos | hard), weights * (mined_neg | hard))
            terms["relation"] = args.relation_weight * relation_loss(sim, teacher_sim, weights)
        if args.ablation == "full":
            teacher_tokens = t_tok[places[:, None], picks].reshape(len(labels), *t_tok.shape[2:])
            terms["align"] = args.align_weight * align.loss(tokens, teacher_tokens)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sched.step()
        if step % args.val_every == 0 or step == args.steps:
            r1 = validate()
            if r1 > best_r1 or args.select == "last":
                best_r1, best_state, best_step = r1, copy.deepcopy(student.state_dict()), step
            entry = {"step": step, "val_R@1": r1, **{k: round(v.item(), 5) for k, v in terms.items()}}
            log["steps"].append(entry)
            print(f"step {step}: {json.dumps(entry)} ({time.perf_counter() - train_start:.0f} s)", flush=True)
        if time.perf_counter() > deadline:
            print(f"stopped at step {step} (time budget)")
            break
    train_seconds = time.perf_counter() - train_start
    if args.select == "last" and best_step != step:  # stopped by the time cap between checks
        best_r1, best_state, best_step = validate(), copy.deepcopy(student.state_dict()), step
    student.load_state_dict(best_state)
    student.eval()
    print(f"keeping the student of step {best_step}: validation R@1 {best_r1:.3f} (teacher {teacher_val:.3f}); "
          f"{step} steps in {train_seconds:.0f} s")

    extra = {
        "train_args": json.dumps({k: str(v) for k, v in vars(args).items()}),
        "train_size": f"{height}x{width}",
        "ablation": args.ablation,
        "steps_run": str(step),
        "best_step": str(best_step),
        "train_seconds": f"{train_seconds:.0f}",
        "validation": json.dumps({"student_R@1": best_r1, "teacher_R@1": teacher_val,
                                  "queries": len(val_q), "rooms": f"{VAL_SCENE_OFFSET}..{VAL_SCENE_OFFSET + args.val_scenes - 1}"}),
    }
    save_student(student, args.out, teacher=args.teacher, teacher_sha256=file_sha256(resolve_vpr(args.teacher)),
                 teacher_backbone=teacher_meta["backbone"],
                 teacher_backbone_fingerprint=backbone_fingerprint(backbone), extra=extra)
    log.update({"best_step": best_step, "best_val_R@1": best_r1, "train_seconds": train_seconds, "prep_seconds": prep_seconds})
    log_path = args.log or Path("runs/vpr_student") / (args.out.stem + ".log.json")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(json.dumps(log, indent=1))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) and {log_path} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
