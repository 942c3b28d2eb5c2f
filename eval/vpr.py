"""Visual place recognition: recall@1/5/10/20 of global descriptors, at several token budgets.

    # a folder pair with VPR-Bench ground truth ([q, [refs]] rows)
    python eval/vpr.py --database data/vpr/corridor/ref --queries data/vpr/corridor/query \
        --gt data/vpr/corridor/ground_truth_new.npy --json out/vpr-corridor.json
    # index pairing (query i <-> ref i) when there is no ground-truth file and no UTM names
    python eval/vpr.py --database data/vpr/gardenspoint-mini/ref --queries data/vpr/gardenspoint-mini/query \
        --json out/vpr-gardens.json
    # a SynthRooms place set, rendered once into the folder (database/, queries/, ground_truth.npy)
    python eval/vpr.py --synthrooms out/synthrooms-places --json out/vpr-synth.json
    # a posed 7-Scenes sequence: first half database, second half queries, positives by pose
    python eval/vpr.py --sevenscenes ../shared/data/7scenes-redkitchen --json out/vpr-7scenes.json

Ground truth: ``--gt`` (an ``.npy`` object array: VPR-Bench rows or one list per query), else UTM
coordinates in the file names (``@east@north@...``, positives within ``--radius`` m), else index
pairing. Recall@N counts a query as found if any of its first N retrieved database images is
correct; queries without a positive stay in the denominator. Retrieval is exact inner-product
search (faiss ``IndexFlatIP``) on L2-normalised descriptors.

Heads: ``trained`` (the VPR checkpoint ``--vpr``; its learned token scorer by default), ``ternary``
(the ternary-weight extractor ``--ternary``, :mod:`pacegeo.vpr.ternary`; one row per token keep and
per activation keep of ``--activation-keep``, record key ``activation_keep``), ``student``
(the distilled student ``--student``, :mod:`pacegeo.vpr.student`: its own small encoder and head, no
backbone; it has no learned scorer, so ``keep < 1`` ranks its tokens by distinctiveness), ``prompt``
(the prompt-tuned extractor ``--prompt``, :mod:`pacegeo.vpr.prompt`: prompt pool and
local-feature-enhancement head on the frozen backbone; no token pruning, so it gives rows at
``keep 1`` only), ``gem``
and ``vlad`` (training-free; VLAD fits its vocabulary on the database images, unpruned, before
timing; both rank tokens by the training-free distinctiveness rule by default), and ``pixels``
(no model: each image as 64x48 grey levels, zero-mean, unit-norm; one row at keep 1), the baseline
a trained head must beat. ``ms_per_image``
is the descriptor-extraction time per image (database and queries, batches of ``--batch``,
image loading excluded). The ternary head has no ternary or sparse kernel (dense float matmuls plus
the top-k selection of activations), so its time is no faster than the float encoder's.

JSON output: one record per (head, keep) with ``R@1 R@5 R@10 R@20`` (fractions), ``R@1_ci95``
(a 95% bootstrap interval over queries), ``head``,
``keep``, ``scoring``, ``activation_keep`` (ternary head only), ``checkpoint`` (trained and
prompt heads: the file's stem; ``--vpr`` may name several VPR checkpoints, one set of rows each),
``ms_per_image``, ``params`` and
``weight_bytes`` (encoder, head and scorer; packed sizes where a model stores its weights packed), ``dataset``, ``model``, ``size``, ``num_database``,
``num_queries``, ``gt`` (ground-truth style) and ``descriptor_dim``.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pacegeo.errors import PacegeoError
from pacegeo.hub import load_backbone
from pacegeo.io.decode import list_image_files
from pacegeo.io.images import load_images
from pacegeo.vpr.extract import SCORINGS, DescriptorExtractor, load_vpr, read_vpr_metadata, resolve_vpr
from pacegeo.vpr.head import GeMConfig, GeMHead, VLADConfig, VLADHead
from pacegeo.vpr.index import DescriptorIndex
from pacegeo.vpr.prompt import load_prompt, read_prompt_metadata
from pacegeo.vpr.recall import DEFAULT_NS, positives_for_folders, recall_at_n
from pacegeo.vpr.student import load_student

HEADS = ("trained", "ternary", "student", "prompt", "gem", "vlad", "pixels")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("data")
    src.add_argument("--database", type=Path, help="folder of map (reference) images")
    src.add_argument("--queries", type=Path, help="folder of query images")
    src.add_argument("--gt", type=Path, default=None, help=".npy ground truth (positives per query)")
    src.add_argument("--radius", type=float, default=25.0, help="UTM ground truth: positive radius in metres")
    src.add_argument("--dataset", default=None, help="name in the records (default: the folders' parent)")
    src.add_argument("--synthrooms", type=Path, default=None,
                     help="evaluate a SynthRooms place set in this folder (rendered first if missing)")
    src.add_argument("--synth-scenes", type=int, default=6, help="SynthRooms rooms (seeds S, S+1, ...)")
    src.add_argument("--synth-scene-seed", type=int, default=30_000,
                     help="S: first room seed of the place set (VPR training rooms are 10000+, validation rooms 20000+; default 30000)")
    src.add_argument("--synth-queries", type=int, default=30, help="queries per SynthRooms room")
    src.add_argument("--synth-size", default="168x224", help="HxW of the rendered views")
    src.add_argument("--synth-seed", type=int, default=0)
    src.add_argument("--sevenscenes", type=Path, default=None,
                     help="a posed 7-Scenes sequence folder as a place set: its first half is the database, "
                          "its second half the queries (see sevenscenes_places)")
    m = p.add_argument_group("model")
    m.add_argument("--model", default=None,
                   help="backbone name or path (default: the one the VPR checkpoint names; pacegeo-tiny otherwise)")
    m.add_argument("--vpr", nargs="+", default=["pacegeo-tiny-vpr"],
                   help="VPR checkpoint(s) for --head trained (one set of rows each)")
    m.add_argument("--prompt", default="pacegeo-tiny-vpr-prompt",
                   help="prompt-tuned extractor (pacegeo.vpr.prompt) for --head prompt: a path or a bundled name")
    m.add_argument("--ternary", default="pacegeo-tiny-vpr-ternary", help="ternary VPR checkpoint for --head ternary")
    m.add_argument("--activation-keep", nargs="+", type=float, default=[1.0],
                   help="ternary head: fractions of input activations each ternary layer keeps per token (one row each)")
    m.add_argument("--student", default="pacegeo-tiny-vpr-student",
                   help="distilled student (pacegeo.vpr.student) for --head student: a path or a bundled name")
    m.add_argument("--head", nargs="+", default=list(HEADS), choices=HEADS)
    m.add_argument("--keep", nargs="+", type=float, default=[1.0, 0.5, 0.3])
    m.add_argument("--scoring", default="auto", choices=("auto",) + SCORINGS,
                   help="token ranking when keep < 1 (auto: learned for the trained head, distinctiveness otherwise)")
    m.add_argument("--size", type=int, default=224, help="image width after resizing (multiple of 14)")
    m.add_argument("--vlad-clusters", type=int, default=16)
    m.add_argument("--batch", type=int, default=16)
    m.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    m.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, required=True, help="output records")
    args = p.parse_args(argv)
    if args.synthrooms is None and args.sevenscenes is None and (args.database is None or args.queries is None):
        p.error("give --database and --queries, --synthrooms DIR or --sevenscenes DIR")
    return args


def build_synthrooms(folder: Path, args) -> None:
    """Render a SynthRooms place set into ``folder`` (database/, queries/, ground_truth.npy,
    places.json) unless it is already there."""
    from PIL import Image

    from pacegeo.vpr.places import PlaceConfig, make_place_set

    if (folder / "ground_truth.npy").is_file():
        seeds = json.loads((folder / "places.json").read_text())["scene_seeds"]
        if seeds[0] != args.synth_scene_seed or len(seeds) != args.synth_scenes:
            raise SystemExit(f"error: {folder} holds rooms {seeds[0]}..{seeds[-1]}, not the {args.synth_scenes} "
                             f"rooms from {args.synth_scene_seed} asked for; choose another folder")
        print(f"using the SynthRooms place set in {folder} (rooms {seeds[0]}..{seeds[-1]})")
        return
    height, width = (int(v) for v in args.synth_size.lower().split("x"))
    cfg = PlaceConfig(width=width, height=height)
    seeds = [args.synth_scene_seed + i for i in range(args.synth_scenes)]
    start = time.perf_counter()
    places = make_place_set(seeds, args.synth_queries, cfg, seed=args.synth_seed)
    tmp = folder.with_name(folder.name + ".tmp")
    for sub in ("database", "queries"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(places.database):
        Image.fromarray(img).save(tmp / "database" / f"{i:06d}.png")
    for i, img in enumerate(places.queries):
        Image.fromarray(img).save(tmp / "queries" / f"{i:06d}.png")
    gt = np.empty((len(places.positives), 2), dtype=object)
    for q, pos in enumerate(places.positives):
        gt[q, 0], gt[q, 1] = q, [int(i) for i in pos]
    np.save(tmp / "ground_truth.npy", gt, allow_pickle=True)
    meta = {
        "scene_seeds": seeds,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "database_scene": places.database_scene.tolist(),
        "query_scene": places.query_scene.tolist(),
        "database_cam_to_world": places.database_poses.tolist(),
        "query_cam_to_world": places.query_poses.tolist(),
    }
    (tmp / "places.json").write_text(json.dumps(meta))
    os.replace(tmp, folder)
    no_pos = sum(len(p) == 0 for p in places.positives)
    print(f"rendered a SynthRooms place set into {folder}: {len(places.database)} database views, "
          f"{len(places.queries)} queries ({no_pos} without a positive) in {time.perf_counter() - start:.0f} s")


#: 7-Scenes place positives: camera centres within this distance (m) and optical axes within this angle (deg).
SEVENSCENES_RADIUS, SEVENSCENES_ANGLE = 0.5, 30.0


def sevenscenes_places(folder: Path) -> tuple[list[Path], list[Path], list[list[int]]]:
    """A real place set from one posed 7-Scenes sequence: the first half of its frames is the
    database, the second half (the camera coming back through the room) the queries. A database
    frame is a positive of a query when their camera centres are within ``SEVENSCENES_RADIUS`` and
    their optical axes within ``SEVENSCENES_ANGLE``; queries without a positive are left out."""
    from pacegeo.data.sevenscenes import read_sevenscenes_sequence

    seq = read_sevenscenes_sequence(folder, load_depth=False)
    poses = np.asarray(seq.poses, np.float64)
    half = len(poses) // 2
    centres, axes = poses[:, :3, 3], poses[:, :3, 2]
    db, queries, positives = [r.image_path for r in seq.records[:half]], [], []
    for q in range(half, len(poses)):
        near = np.linalg.norm(centres[:half] - centres[q], axis=1) <= SEVENSCENES_RADIUS
        aligned = np.degrees(np.arccos(np.clip(axes[:half] @ axes[q], -1.0, 1.0))) <= SEVENSCENES_ANGLE
        hits = np.flatnonzero(near & aligned)
        if hits.size:
            queries.append(seq.records[q].image_path)
            positives.append(hits.tolist())
    return db, queries, positives


def pixel_descriptors(images: torch.Tensor, size: tuple[int, int] = (48, 64)) -> torch.Tensor:
    """The raw-pixel baseline: each image as grey levels at ``size`` (H, W), zero-mean, unit-norm."""
    grey = images.float().mean(dim=1, keepdim=True)
    small = torch.nn.functional.interpolate(grey, size=size, mode="area").flatten(1)
    small = small - small.mean(dim=1, keepdim=True)
    return torch.nn.functional.normalize(small, dim=1)


def recall1_interval(ids: np.ndarray, positives, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of R@1 over queries."""
    hits = np.array([int(ids[q, 0]) in set(np.asarray(positives[q]).tolist()) for q in range(len(ids))], dtype=float)
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, len(hits), size=(n_boot, len(hits)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def model_size(extractor: torch.nn.Module | None) -> tuple[int, int]:
    """Parameters and bytes of the weights a descriptor needs (encoder, head, scorer): what the
    module reports through ``weight_bytes()`` when it stores its weights packed, else the tensors'
    own sizes. Buffers that are not weights (normalisation constants) are not counted."""
    if extractor is None:
        return 0, 0
    params = sum(p.numel() for p in extractor.parameters())
    packed = getattr(extractor, "weight_bytes", None)
    nbytes = packed() if callable(packed) else sum(p.numel() * p.element_size() for p in extractor.parameters())
    return int(params), int(nbytes)


def timed_describe(extractor: DescriptorExtractor, images: torch.Tensor, keep: float, batch: int) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    desc = extractor.describe(images, keep, batch_size=batch)
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return desc, time.perf_counter() - start


def score_row(db: torch.Tensor, qs: torch.Tensor, db_files, positives, row: dict) -> dict:
    """Recall of query descriptors ``qs`` against ``db`` (R@N and a bootstrap interval of R@1)."""
    index = DescriptorIndex(db.shape[1])
    index.add(db, names=[f.name for f in db_files])
    _, ids = index.search(qs, max(DEFAULT_NS))
    recall = recall_at_n(ids, positives, DEFAULT_NS)
    low, high = recall1_interval(np.asarray(ids), positives)
    row.update({f"R@{n}": round(v, 4) for n, v in recall.items()}, **{"R@1_ci95": [round(low, 4), round(high, 4)]},
               descriptor_dim=int(db.shape[1]))
    act = f" act {row['activation_keep']:4.2f}" if "activation_keep" in row else ""
    label = row.get("checkpoint", row["head"]) if row["head"] == "trained" else row["head"]
    print(f"  {label:8s} keep {row['keep']:4.2f}{act} ({row['scoring']:15s}) R@1 {row['R@1']:.3f} "
          f"[{low:.3f}, {high:.3f}]  R@5 {row['R@5']:.3f}  R@10 {row['R@10']:.3f}  R@20 {row['R@20']:.3f}  "
          f"{row['ms_per_image']:7.2f} ms/img", flush=True)
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.synthrooms is not None:
            build_synthrooms(args.synthrooms, args)
            args.database, args.queries = args.synthrooms / "database", args.synthrooms / "queries"
            args.gt = args.gt or args.synthrooms / "ground_truth.npy"
            dataset = args.dataset or f"synthrooms:{args.synthrooms.name}"
        elif args.sevenscenes is None:
            dataset = args.dataset or args.database.resolve().parent.name
        if args.sevenscenes is not None:
            db_files, q_files, positives = sevenscenes_places(args.sevenscenes)
            dataset, gt_style = args.dataset or f"7scenes:{args.sevenscenes.name}", "poses"
        else:
            db_files, q_files = list_image_files(args.database), list_image_files(args.queries)
            positives, gt_style = positives_for_folders(db_files, q_files, args.gt, args.radius)
        db_images = load_images(db_files, mode="crop", target_size=args.size, strict=True).images.to(args.device)
        q_images = load_images(q_files, mode="crop", target_size=args.size, strict=True).images.to(args.device)
        print(f"{dataset}: {len(db_files)} database / {len(q_files)} query images at "
              f"{tuple(db_images.shape[-2:])} / {tuple(q_images.shape[-2:])}, ground truth: {gt_style}")

        backbone = None
        model_name = args.model
        if args.model is not None or any(h not in ("trained", "ternary", "student", "prompt", "pixels") for h in args.head):
            model_name = args.model or "pacegeo-tiny"
            backbone = load_backbone(model_name, device=args.device)
        records = []
        jobs = [(h, v) for h in args.head for v in (args.vpr if h == "trained" else [None])]
        for head_name, vpr in jobs:
            checkpoint = {}
            if head_name == "pixels":  # no model: one row at keep 1
                start = time.perf_counter()
                db, qs = pixel_descriptors(db_images.cpu()), pixel_descriptors(q_images.cpu())
                seconds = time.perf_counter() - start
                records.append(score_row(db, qs, db_files, positives, dict(
                    dataset=dataset, model="none", head="pixels", keep=1.0, scoring="none", params=0, weight_bytes=0,
                    ms_per_image=round(1000 * seconds / (len(db) + len(qs)), 3))))
                continue
            if head_name == "ternary":  # self-contained: its own encoder, head and scorer
                from pacegeo.vpr.ternary import load_ternary_vpr, read_ternary_metadata

                meta = read_ternary_metadata(resolve_vpr(args.ternary))
                extractor = load_ternary_vpr(args.ternary, device=args.device)
                name = f"{Path(resolve_vpr(args.ternary)).stem} (ternary, from {meta['backbone']})"
                default_scoring = "learned" if extractor.scorer is not None else "distinctiveness"
            elif head_name == "trained":
                meta = read_vpr_metadata(resolve_vpr(vpr))
                extractor = load_vpr(vpr, backbone=backbone, device=args.device)
                name = model_name or meta["backbone"]
                default_scoring = "learned" if extractor.scorer is not None else "distinctiveness"
                checkpoint = {"checkpoint": resolve_vpr(vpr).stem}
            elif head_name == "prompt":  # prompts and head on the frozen backbone; keep 1 only
                extractor = load_prompt(args.prompt, backbone=backbone, device=args.device)
                name = model_name or read_prompt_metadata(resolve_vpr(args.prompt))["backbone"]
                default_scoring = "distinctiveness"  # unused: no pruning
                checkpoint = {"checkpoint": resolve_vpr(args.prompt).stem}
            elif head_name == "student":  # its own encoder: no backbone
                extractor = load_student(args.student, device=args.device)
                name = str(args.student)
                default_scoring = "distinctiveness"
            else:
                dim = backbone.config.aggregator.embed_dim
                head = GeMHead(GeMConfig(dim)) if head_name == "gem" else VLADHead(VLADConfig(dim, args.vlad_clusters))
                extractor = DescriptorExtractor.from_backbone(backbone, head).to(args.device).eval()
                name = model_name
                default_scoring = "distinctiveness"
            extractor.scoring = default_scoring if args.scoring == "auto" else args.scoring
            if head_name == "vlad":
                extractor.fit(db_images, batch_size=args.batch)
            params, weight_bytes = model_size(extractor)
            for keep in args.keep:
                if head_name == "prompt" and keep < 1:
                    print(f"  prompt   keep {keep:4.2f}: skipped (the prompt-tuned extractor does not prune tokens)")
                    continue
                for act in args.activation_keep if head_name == "ternary" else [None]:
                    extra = {}
                    if act is not None:
                        extractor.keep_activations = act
                        extra = {"activation_keep": act}
                    db, t_db = timed_describe(extractor, db_images, keep, args.batch)
                    qs, t_q = timed_describe(extractor, q_images, keep, args.batch)
                    records.append(score_row(db, qs, db_files, positives, dict(
                        dataset=dataset, model=str(name), head=head_name, keep=keep,
                        scoring=extractor.scoring if keep < 1 else "none", params=params, weight_bytes=weight_bytes,
                        ms_per_image=round(1000 * (t_db + t_q) / (len(db) + len(qs)), 3), **extra, **checkpoint)))
        for rec in records:
            rec.update(size=list(db_images.shape[-2:]), num_database=len(db_files), num_queries=len(q_files), gt=gt_style,
                       device=str(args.device), threads=torch.get_num_threads())
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(records, indent=1))
    print(f"wrote {len(records)} records to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
