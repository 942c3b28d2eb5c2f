"""Stage 2 of pruner training: scorer and restoration fine-tuned on camera, depth and point-map losses.

The backbone stays frozen and outside the optimiser; only the scorer and the restoration module
learn. Every step samples a keep ratio (default 0.15-0.8) so that one pruner serves every keep at
inference. Top-k selection reaches the scorer through a straight-through mask
(``PaceVGGT.forward(soft=True)``).

Supervision: the ground truth of SynthRooms clips when training on them, plus, always, the unpruned
backbone's own outputs as teacher (pose encoding, depth and points), so any unlabelled image folder
works too (``--images``).

    python train/finetune.py --model pacegeo-tiny --init runs/pruner-distill/pruner.safetensors \
        --minutes 30 --out runs/pruner-finetune
    accelerate launch train/finetune.py --model vggt-1b --images my_photos/ --size 518 --frames 8 \
        --init runs/vggt1b-distill/pruner.safetensors --minutes 240 --out runs/vggt1b-finetune
"""

import csv
import json
import sys
import time


import numpy as np
import torch

from pacegeo.errors import PacegeoError
from pacegeo.hub import read_metadata
from pacegeo.losses import relative_pose_deviation, teacher_loss, vggt_loss
from pacegeo.pruning.checkpoint import save_pruner
from pacegeo.training.setup import setup_training, training_batches, training_parser


def finetune_history(previous: dict[str, str], args, first_step: int, last_step: int) -> list[dict]:
    """The stage-2 segments a pruner went through: the ``--init`` file's history plus this run.

    A file fine-tuned before histories were recorded contributes one entry with its step count only.
    """
    history = json.loads(previous.get("finetune_history", "[]"))
    if not history and first_step > 0:
        history = [{"steps": first_step, "recipe": "not recorded"}]
    history.append({
        "steps": last_step - first_step, "data": str(args.images or "synthrooms"),
        "frames": [args.min_frames, args.frames], "batch": args.batch, "size": args.size, "lr": args.lr,
        "keep_range": list(args.keep_range), "weight_gt": args.weight_gt, "weight_teacher": args.weight_teacher,
        "weight_camera": args.weight_camera, "weight_relative": args.weight_relative,
        "relative_baseline_weighted": args.relative_baseline_weighted,
        "camera_correction": args.camera_correction, "seed": args.seed,
    })
    return history


def parse_args(argv=None):
    p = training_parser(__doc__.split("\n\n")[0], out="runs/pruner-finetune", minutes=30.0, batch=2, lr=3e-4,
                        images_help="folder of images (teacher loss only); default SynthRooms with GT",
                        init_help="pruner checkpoint (stage 1 output, or a stage-2 one to resume)")
    p.add_argument("--keep-range", type=float, nargs=2, default=(0.15, 0.8))
    p.add_argument("--coverage", type=float, default=None,
                   help="learned_coverage of the pruner: weight of the spatial-coverage prior added to the standardised "
                        "scores (default: the --init checkpoint's)")
    p.add_argument("--weight-gt", type=float, default=1.0)
    p.add_argument("--weight-teacher", type=float, default=1.0)
    p.add_argument("--weight-relative", type=float, default=0.0,
                   help="weight of the relative-pose deviation from the teacher (rotations and translation directions)")
    p.add_argument("--relative-baseline-weighted", action="store_true",
                   help="weigh each pair's translation-direction deviation by the teacher's baseline (far pairs count more)")
    p.add_argument("--camera-correction", action="store_true",
                   help="add the restoration's camera-token correction (kept once the pruner has it)")
    p.add_argument("--weight-camera", type=float, default=1.0,
                   help="extra weight of the camera part of the teacher loss")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        extra = {} if args.coverage is None else {"learned_coverage": args.coverage}
        accelerator, backbone, pace, (height, width) = setup_training(args, mode="learned", **extra)
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.camera_correction:
        pace.restoration = pace.restoration.with_camera_correction()
    pace.train()
    optimizer = torch.optim.AdamW(pace.pruner_parameters(), lr=args.lr, weight_decay=0.01)
    optimizer = accelerator.prepare(optimizer)
    seed = args.seed * 7919 + 17 + accelerator.process_index
    use_gt = args.images is None
    batches = training_batches(args.images, height, width, args.frames, args.batch, seed, args.min_frames)
    rng = np.random.default_rng(seed)
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "log.csv", "a", newline="")
    writer = csv.writer(log)
    prior = int(read_metadata(args.init).get("finetune_steps", "0")) if args.init else 0
    step, t0 = prior, time.time()
    while time.time() - t0 < args.minutes * 60 and (args.max_steps is None or step - prior < args.max_steps):
        batch = {k: v.to(accelerator.device) for k, v in next(batches).items()}
        keep = float(rng.uniform(*args.keep_range))
        with torch.no_grad(), accelerator.autocast():
            teacher = backbone(batch["images"])
        with accelerator.autocast():
            out = pace(batch["images"], keep=keep, soft=True)
        t_loss, parts = teacher_loss(out, teacher, args.weight_camera)
        if args.weight_relative:
            relative = relative_pose_deviation(out["pose_enc"], teacher["pose_enc"],
                                               baseline_weighted=args.relative_baseline_weighted)
            t_loss = t_loss + args.weight_relative * relative
            parts["relative"] = float(relative.detach())
        loss = args.weight_teacher * t_loss
        logs = {}
        if use_gt:
            gt_loss, logs = vggt_loss(out, batch)
            loss = loss + args.weight_gt * gt_loss
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if accelerator.num_processes > 1:  # the pruner is not wrapped for data parallelism: average by hand
            for param in pace.pruner_parameters():
                if param.grad is not None:
                    param.grad = accelerator.reduce(param.grad, reduction="mean")
        accelerator.clip_grad_norm_(pace.pruner_parameters(), 1.0)
        optimizer.step()
        step += 1
        if accelerator.is_main_process:
            writer.writerow([step, round((time.time() - t0) / 60, 2), round(keep, 3), round(loss.item(), 5),
                             round(logs.get("cam_rot_deg", float("nan")), 3), round(logs.get("depth_reg", float("nan")), 5),
                             *(round(parts.get(k, float("nan")), 5) for k in ("camera", "depth", "points", "relative"))])
            log.flush()
            if step % 25 == 0:
                accelerator.print(f"step {step} | keep {keep:.2f} | loss {loss.item():.4f} | teacher camera "
                                  f"{parts['camera']:.4f} depth {parts['depth']:.4f}")
    if accelerator.is_main_process:
        previous = dict(read_metadata(args.init)) if args.init else {}
        meta = {k: v for k, v in previous.items() if k in ("distill_steps",)}
        meta.update(finetune_steps=str(step), stage="distill+finetune" if args.init else "finetune",
                    train_data=args.images or "synthrooms", keep_range=f"{args.keep_range[0]}-{args.keep_range[1]}",
                    weight_camera=str(args.weight_camera), weight_relative=str(args.weight_relative),
                    finetune_history=json.dumps(finetune_history(previous, args, prior, step)))
        path = save_pruner(pace, args.out / "pruner.safetensors", extra=meta)
        accelerator.print(f"done: {step} fine-tuning steps; pruner in {path}")
    accelerator.wait_for_everyone()
    return 0

