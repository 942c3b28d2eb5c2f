"""Train the VPR descriptor head (and its token scorer) on SynthRooms places; the backbone is frozen.

GSV-Cities-style batches: P places x 4 views, Multi-Similarity loss with its miner
(pytorch-metric-learning; ``pip install pytorch-metric-learning``). Places are rendered from
procedurally generated rooms (:mod:`pacegeo.vpr.places`): views within ``view_radius`` metres and
``view_angle`` degrees of a place centre are the same place; places of one room are at least 1 m
apart (or look 45 degrees apart), places of different rooms are different.

Because the backbone is frozen, its encoder features are computed once for every rendered view
(at the pruning point and at the output; with ``--augment``, of the view after one colour jitter)
and training runs on these caches:

1. the head (:class:`pacegeo.vpr.head.WeightedOTHead`) with the MS loss; with probability
   ``--token-drop`` a batch keeps only a random ``[0.3, 1]`` fraction of each image's tokens, so
   the head gets used to pruned inputs; the head with the best recall@1 on held-out validation
   rooms (checked every 100 steps) is kept;
2. the token scorer (:class:`pacegeo.pruning.TokenScorer`) by self-distillation: it learns to
   predict, from the early features, the kept head's token importance (KL between the per-image
   distributions).

``--joint`` trains the two together instead: every head step is also a scorer step on the head's
current importance, and after a short warm-up the head's pruned batches keep the tokens the scorer
ranks highest (stage 2 then continues the scorer). On the validation rooms it did not beat the
two-stage recipe (see the VPR model card), which stays the default.

At the end the whole extractor (with real pruning) is evaluated on held-out rooms at
keep 1.0 / 0.5 / 0.3 and written as a VPR checkpoint (head + scorer; the backbone is referenced by
name and fingerprint, and :func:`pacegeo.vpr.load_vpr` refuses any other backbone). The bundled
head is made with:

    python train/vpr.py --backbone pacegeo-tiny --random-backbone-if-missing --out checkpoints/pacegeo-tiny-vpr.safetensors

Runs on CPU in a few minutes; ``accelerate launch train/vpr.py ...`` uses a GPU when present.
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from pacegeo.backbone import VGGT, pacegeo_tiny
from pacegeo.errors import CheckpointError, PacegeoError
from pacegeo.hub import backbone_fingerprint, load_backbone, resolve_weights, save_backbone
from pacegeo.pruning.budget import keep_count
from pacegeo.pruning.scorer import ScorerConfig, TokenScorer
from pacegeo.training.setup import add_place_options, metric_learning, parse_hw
from pacegeo.vpr.extract import DescriptorExtractor, distillation_loss, distillation_target, save_vpr
from pacegeo.vpr.head import GeMConfig, GeMHead, WeightedOTConfig, WeightedOTHead
from pacegeo.vpr.index import DescriptorIndex, recall_at_1
from pacegeo.vpr.places import (
    VIEWS_PER_BATCH_PLACE,
    PlaceConfig,
    images_to_tensor,
    photometric_jitter,
    sample_places,
    training_places,
    validation_places,
)
from pacegeo.vpr.recall import recall_at_n


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="pacegeo-tiny", help="backbone name or path (frozen)")
    p.add_argument("--record-backbone", default=None,
                   help="backbone name written into the checkpoint (default: --backbone); use it when "
                   "training on a pinned copy of a bundled backbone that is being updated")
    p.add_argument("--random-backbone-if-missing", action="store_true",
                   help="if the backbone cannot be found, use a randomly initialised pacegeo-tiny (seeded)")
    p.add_argument("--out", type=Path, default=Path("checkpoints/pacegeo-tiny-vpr.safetensors"))
    p.add_argument("--log", type=Path, default=None, help="JSON log (default: runs/vpr/<out stem>.log.json)")
    add_place_options(p, augment=0.0)
    p.add_argument("--head-steps", type=int, default=800)
    p.add_argument("--scorer-steps", type=int, default=400)
    p.add_argument("--minutes", type=float, default=8.0,
                   help="wall-clock cap on training (head 75%%, scorer 25%%), data preparation not included")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--clusters", type=int, default=16)
    p.add_argument("--cluster-dim", type=int, default=64)
    p.add_argument("--global-dim", type=int, default=256)
    p.add_argument("--hidden", type=int, default=128, help="hidden width of the head's token MLPs")
    p.add_argument("--out-dim", type=int, default=0, help="> 0: final linear layer to this size")
    p.add_argument("--prune-after", type=int, default=None, help="encoder blocks before pruning")
    p.add_argument("--token-drop", type=float, default=0.5, help="probability that a batch uses random token subsets")
    p.add_argument("--scorer-hidden", type=int, default=64)
    p.add_argument("--joint", action="store_true",
                   help="train the scorer jointly with the head, which then learns on the tokens the scorer keeps "
                        "(default: head on random token subsets, then the scorer)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load_frozen_backbone(name: str, allow_random: bool, seed: int) -> tuple[VGGT, str, str]:
    """The frozen backbone, its fingerprint (:func:`pacegeo.hub.backbone_fingerprint`) and a note."""
    try:
        path = resolve_weights(name)
        note = ""
    except CheckpointError as err:
        if not allow_random:
            raise
        print(f"backbone {name!r} not found ({err}); using a random pacegeo-tiny (seed {seed}): "
              "retrain this head once the trained backbone exists")
        torch.manual_seed(seed)
        path = save_backbone(VGGT(pacegeo_tiny()), Path("runs/vpr") / f"pacegeo-tiny-random-seed{seed}.safetensors")
        print(f"random backbone written to {path} (pass it to eval/vpr.py --model)")
        note = f"random-init pacegeo-tiny (seed {seed})"
    model = load_backbone(path)
    for param in model.parameters():
        param.requires_grad_(False)
    return model, backbone_fingerprint(model), note


@torch.no_grad()
def cache_features(extractor: DescriptorExtractor, images: torch.Tensor, batch: int = 64):
    """Early scoring features ``[M, N, C]``, final patch features ``[M, N, C]`` and cls ``[M, C]``."""
    early_feats, finals, clss = [], [], []
    for s in range(0, images.shape[0], batch):
        early = extractor.early_tokens(images[s : s + batch])
        early_feats.append(extractor.scoring_features(early))
        tokens, cls = extractor.finish(early)
        finals.append(tokens)
        clss.append(cls if cls is not None else tokens.new_zeros(tokens.shape[0], tokens.shape[-1]))
    return torch.cat(early_feats), torch.cat(finals), torch.cat(clss)


def random_subset(tokens: torch.Tensor, keep: float, generator: torch.Generator) -> torch.Tensor:
    """A random ``keep`` fraction of every image's tokens (grid order kept): ``[B, N, C] -> [B, k, C]``."""
    b, n, c = tokens.shape
    k = keep_count(keep, n)
    idx = torch.rand(b, n, generator=generator).argsort(dim=-1)[:, :k].sort(dim=-1).values
    return torch.gather(tokens, 1, idx[..., None].expand(b, k, c))


JOINT_WARMUP = 100  # head steps on random subsets before the scorer picks them


def scorer_subset(tokens: torch.Tensor, logits: torch.Tensor, keep: float) -> torch.Tensor:
    """The ``keep`` fraction of every image's tokens that ``logits`` rank highest (grid order kept)."""
    b, n, c = tokens.shape
    idx = logits.topk(keep_count(keep, n), dim=-1).indices.sort(dim=-1).values
    return torch.gather(tokens, 1, idx[..., None].expand(b, idx.shape[1], c))


def scorer_step(scorer, optimizer, accelerator, early, head, final, cls, grid_hw) -> float:
    """One self-distillation step of the scorer: early features -> the head's token importance."""
    with torch.no_grad():
        head.eval()
        target = distillation_target(head.token_importance(final, cls))
        head.train()
    loss = distillation_loss(scorer(early[:, None], grid_hw)[:, 0], target)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    optimizer.step()
    return loss.item()


def evaluate(extractor: DescriptorExtractor, place_set, keeps, scorings) -> list[dict]:
    """Recall on a rendered place set for every keep and scoring rule."""
    db_images, q_images = images_to_tensor(place_set.database), images_to_tensor(place_set.queries)
    extractor.fit(db_images)
    rows = []
    for scoring in scorings:
        extractor.scoring = scoring
        for keep in keeps:
            if keep == 1.0 and scoring != scorings[0]:
                continue
            start = time.perf_counter()
            db = extractor.describe(db_images, keep)
            qs = extractor.describe(q_images, keep)
            ms = 1000 * (time.perf_counter() - start) / (len(db) + len(qs))
            index = DescriptorIndex(db.shape[1])
            index.add(db)
            _, ids = index.search(qs, 20)
            rec = recall_at_n(ids, place_set.positives)
            rows.append({"scoring": scoring if keep < 1 else "-", "keep": keep, "ms_per_image": round(ms, 2),
                         **{f"R@{n}": round(v, 4) for n, v in rec.items()}})
    return rows


def print_rows(title: str, rows: list[dict]) -> None:
    print(title)
    print(f"  {'scoring':16s} {'keep':>5s} {'R@1':>6s} {'R@5':>6s} {'R@10':>6s} {'ms/img':>7s}")
    for r in rows:
        print(f"  {r['scoring']:16s} {r['keep']:5.2f} {r['R@1']:6.3f} {r['R@5']:6.3f} {r['R@10']:6.3f} {r['ms_per_image']:7.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        height, width = parse_hw(args.size)
        distances, losses, miners = metric_learning()
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    accelerator = Accelerator()
    set_seed(args.seed)
    device = accelerator.device
    t0 = time.perf_counter()
    backbone, fingerprint, backbone_note = load_frozen_backbone(args.backbone, args.random_backbone_if_missing, args.seed)
    backbone = backbone.to(device)
    encoder = backbone.aggregator.patch_embed
    has_cls = hasattr(encoder, "prepare_tokens")
    embed_dim = backbone.config.aggregator.embed_dim
    head_config = WeightedOTConfig(
        in_dim=embed_dim,
        num_clusters=args.clusters,
        cluster_dim=args.cluster_dim,
        global_dim=args.global_dim,
        hidden_dim=args.hidden,
        out_dim=args.out_dim,
        global_source="cls" if has_cls else "gem",
    )
    head = WeightedOTHead(head_config).to(device)
    extractor = DescriptorExtractor.from_backbone(backbone, head, prune_after=args.prune_after).to(device).eval()
    grid_hw = (height // 14, width // 14)

    # -- data -------------------------------------------------------------------------------------
    cfg = PlaceConfig(width=width, height=height)
    images = training_places(args.train_scenes, args.places_per_scene, args.views, cfg, seed=args.seed)  # [P, V, H, W, 3]
    num_places, views = images.shape[:2]
    val_set = validation_places(args.val_scenes, args.val_queries, cfg, seed=args.seed)
    print(f"rendered {num_places} places x {views} views from {args.train_scenes} rooms, "
          f"validation {len(val_set.database)} db / {len(val_set.queries)} queries ({time.perf_counter() - t0:.0f} s)")
    jitter_rng = torch.Generator().manual_seed(args.seed)
    views_in = photometric_jitter(images_to_tensor(images), args.augment, jitter_rng)
    early, final, cls = cache_features(extractor, views_in.to(device))
    n_tok, c = final.shape[1], final.shape[2]
    early = early.reshape(num_places, views, n_tok, c)
    final = final.reshape(num_places, views, n_tok, c)
    cls = cls.reshape(num_places, views, c)
    val_db = cache_features(extractor, images_to_tensor(val_set.database).to(device))
    val_q = cache_features(extractor, images_to_tensor(val_set.queries).to(device))
    print(f"cached encoder features ({time.perf_counter() - t0:.0f} s)")
    train_start = time.perf_counter()
    head_deadline = train_start + 60 * args.minutes * 0.75  # the scorer gets the rest
    deadline = train_start + 60 * args.minutes

    def val_recall() -> float:
        head.eval()
        with torch.no_grad():
            db = head(val_db[1], val_db[2] if has_cls else None)
            qs = head(val_q[1], val_q[2] if has_cls else None)
        head.train()
        return recall_at_1(db, qs, val_set.positives)

    scorer = TokenScorer(ScorerConfig(in_dim=embed_dim, hidden=args.scorer_hidden)).to(device)
    s_opt = torch.optim.AdamW(scorer.parameters(), lr=2e-3, weight_decay=1e-4)
    scorer, s_opt = accelerator.prepare(scorer, s_opt)

    # -- 1. head (and, jointly, the scorer) ------------------------------------------------------
    loss_fn = losses.MultiSimilarityLoss(alpha=1.0, beta=50.0, base=0.0, distance=distances.DotProductSimilarity())
    miner = miners.MultiSimilarityMiner(epsilon=0.1, distance=distances.CosineSimilarity())
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 50) * (1.0 - 0.8 * min(1.0, s / max(1, args.head_steps)))
    )
    head, optimizer = accelerator.prepare(head, optimizer)
    raw_head = accelerator.unwrap_model(head)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    log = {"args": {k: str(v) for k, v in vars(args).items()}, "head": [], "scorer": []}
    best_r1 = val_recall()
    best_state, best_step = copy.deepcopy(raw_head.state_dict()), 0
    print(f"step 0: validation R@1 {best_r1:.3f} (untrained head)")
    head.train()
    step = 0
    for step in range(1, args.head_steps + 1):
        places, picks = sample_places(rng, num_places, views, args.places_per_batch)
        full = final[places[:, None], picks].reshape(-1, n_tok, c)
        cl = cls[places[:, None], picks].reshape(-1, c) if has_cls else None
        tok = full
        if rng.uniform() < args.token_drop:
            keep = float(rng.uniform(0.3, 1.0))
            if not args.joint or step <= JOINT_WARMUP:
                tok = random_subset(full, keep, gen)
            else:  # the tokens the scorer would keep: the head learns on what pruning will give it
                with torch.no_grad():
                    logits = scorer(early[places[:, None], picks].reshape(-1, n_tok, c)[:, None], grid_hw)[:, 0]
                tok = scorer_subset(full, logits, keep)
        labels = torch.as_tensor(places, device=device).repeat_interleave(VIEWS_PER_BATCH_PLACE)
        desc = head(tok, cl)
        loss = loss_fn(desc, labels, miner(desc, labels))
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        sched.step()
        if args.joint:  # the scorer follows the head's current token importance
            scorer_step(scorer, s_opt, accelerator, early[places[:, None], picks].reshape(-1, n_tok, c),
                        raw_head, full, cl, grid_hw)
        if step % 100 == 0 or step == args.head_steps:
            r1 = val_recall()
            if r1 > best_r1:
                best_r1, best_state, best_step = r1, copy.deepcopy(raw_head.state_dict()), step
            log["head"].append({"step": step, "loss": loss.item(), "val_R@1": r1})
            print(f"head step {step}: loss {loss.item():.4f}, validation R@1 {r1:.3f} ({time.perf_counter() - t0:.0f} s)")
        if time.perf_counter() > head_deadline:
            print(f"head stage stopped at step {step} (time budget)")
            break
    raw_head.load_state_dict(best_state)
    raw_head.eval()
    log["best_head_step"] = best_step
    print(f"keeping the head of step {best_step} (validation R@1 {best_r1:.3f})")

    # -- 2. scorer by self-distillation -----------------------------------------------------------
    flat_final, flat_early = final.reshape(-1, n_tok, c), early.reshape(-1, n_tok, c)
    flat_cls = cls.reshape(-1, c) if has_cls else None
    with torch.no_grad():
        targets = torch.cat([
            distillation_target(raw_head.token_importance(flat_final[s : s + 256], None if flat_cls is None else flat_cls[s : s + 256]))
            for s in range(0, flat_final.shape[0], 256)
        ])
    k_half = keep_count(0.5, n_tok)
    for s_step in range(1, args.scorer_steps + 1):
        idx = torch.as_tensor(rng.choice(flat_early.shape[0], min(128, flat_early.shape[0]), replace=False))
        logits = scorer(flat_early[idx][:, None], grid_hw)[:, 0]
        loss = distillation_loss(logits, targets[idx])
        s_opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        s_opt.step()
        if s_step % 100 == 0 or s_step == args.scorer_steps:
            top_pred = logits.topk(k_half, dim=-1).indices
            top_true = targets[idx].topk(k_half, dim=-1).indices
            overlap = np.mean([len(np.intersect1d(a, b)) / k_half for a, b in zip(top_pred.cpu().numpy(), top_true.cpu().numpy())])
            log["scorer"].append({"step": s_step, "kl": loss.item(), "top50_overlap": float(overlap)})
            print(f"scorer step {s_step}: KL {loss.item():.4f}, top-50% overlap with the head's importance {overlap:.3f}")
        if time.perf_counter() > deadline:
            print(f"scorer stage stopped at step {s_step} (time budget)")
            break
    raw_scorer = accelerator.unwrap_model(scorer).eval()

    # -- 3. evaluation with real pruning, and export ------------------------------------------------
    extractor = DescriptorExtractor.from_backbone(backbone, raw_head, scorer=raw_scorer, prune_after=extractor.prune_after).eval()
    rows = evaluate(extractor, val_set, (1.0, 0.5, 0.3), ("learned", "distinctiveness", "grid"))
    print_rows(f"held-out rooms ({len(val_set.queries)} queries), trained head", rows)
    gem_rows = evaluate(DescriptorExtractor.from_backbone(backbone, GeMHead(GeMConfig(embed_dim))).eval(),
                        val_set, (1.0, 0.5, 0.3), ("distinctiveness",))
    print_rows("same rooms, GeM (training-free)", gem_rows)
    log["validation"] = {"trained": rows, "gem": gem_rows}
    extra = {
        "train_args": json.dumps({k: str(v) for k, v in vars(args).items()}),
        "train_size": f"{height}x{width}",
        "validation": json.dumps(rows),
        "backbone_note": backbone_note,
    }
    if accelerator.is_main_process:
        save_vpr(extractor, args.out, backbone=args.record_backbone or args.backbone,
                 backbone_fingerprint=fingerprint, extra=extra)
        log_path = args.log or Path("runs/vpr") / (args.out.stem + ".log.json")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(json.dumps(log, indent=1))
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) and {log_path} "
              f"in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
