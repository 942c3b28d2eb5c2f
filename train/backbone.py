"""Train a VGGT-architecture backbone from scratch on SynthRooms clips (the bundled ``pacegeo-tiny``).

Objectives are VGGT's (camera loss on the pose encoding, confidence-aware depth and point-map
regression with gradient terms, scene-scale normalisation), with a geodesic rotation term that
carries real weight and a curriculum: two or three frames with small motions and a fixed field of
view first, then longer clips, larger motions and varied intrinsics.

Data are rendered on the fly from procedurally generated scenes (no dataset on disk). Training is
time-boxed (``--minutes``), checkpoints every ``--save-every`` minutes, and resumes from the
weights alone (``--init``): the step count lives in the checkpoint metadata, so the curriculum
continues where it stopped, and the optimiser restarts with a short warm-up.

    # CPU (2 cores), continue the bundled weights for an hour:
    python train/backbone.py --init checkpoints/pacegeo-tiny.safetensors --minutes 60 --out runs/tiny
    # GPU: larger batches and resolution, same command otherwise
    accelerate launch train/backbone.py --init checkpoints/pacegeo-tiny.safetensors --minutes 20 \
        --batch 16 --size 224x308 --out runs/tiny-gpu

Writes ``<out>/last.safetensors`` (float32), ``<out>/log.csv`` and ``<out>/val.jsonl``; with
``--export PATH`` also a float16 copy for bundling.
"""

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from pacegeo.backbone import VGGT, pacegeo_tiny
from pacegeo.data.stream import StreamConfig, SynthClipBatches, SynthClipStream
from pacegeo.errors import PacegeoError
from pacegeo.hub import load_backbone, read_metadata, save_backbone
from pacegeo.precision import DTYPE_CHOICES, mixed_precision_name, resolve_dtype
from pacegeo.losses import vggt_loss
from pacegeo.metrics import depth_metrics, relative_pose_errors
from pacegeo.geometry import pose_encoding_to_extri_intri


@dataclass(frozen=True)
class Stage:
    """One curriculum stage, active from ``start_step`` (cumulative over resumed runs)."""

    start_step: int
    frames: tuple[int, int]  # min, max clip length
    max_gap: int  # largest trajectory-index gap between consecutive clip frames
    fov_deg: tuple[float, float]  # field-of-view range of rendered cameras (varies intrinsics)


CURRICULUM = (
    # Rotations between clip frames must be large enough from the start: with near-identical
    # views, predicting the identity pose is a strong local optimum the camera head collapses into.
    Stage(0, (2, 3), 8, (65.0, 65.0)),
    Stage(1500, (2, 4), 10, (55.0, 80.0)),
    # Later stages widen the baseline to what evaluation clips see (8 frames spread over a
    # 64-frame trajectory are about 9 trajectory steps apart).
    Stage(4000, (3, 6), 16, (50.0, 90.0)),
    Stage(6000, (4, 8), 20, (50.0, 90.0)),
)


def stage_at(step: int) -> Stage:
    return [s for s in CURRICULUM if s.start_step <= step][-1]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices and convolutions only.

    Biases, norms, LayerScale gammas and learned tokens are excluded: decaying the LayerScale gammas
    (initialised small) shrinks every alternating-attention block towards the identity, and the
    heads then see per-frame features only, with no cross-view information.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_token = name.endswith(("_token", "_tokens", "pos_embed"))
        (no_decay if param.ndim <= 1 or is_token else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def reset_layerscale(model: torch.nn.Module, value: float) -> int:
    """Set every LayerScale gamma of the AA stack and the camera trunk to ``value``; returns how many."""
    count = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".gamma") and not name.startswith("aggregator.patch_embed."):
                param.fill_(value)
                count += 1
    return count


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/pacegeo-tiny"))
    p.add_argument("--init", type=str, default=None, help="checkpoint to continue from (weights + step count)")
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock training budget")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps of this run")
    p.add_argument("--size", type=str, default="112x154", help="HxW, multiples of 14")
    p.add_argument("--batch", type=int, default=4, help="clips per step")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=200, help="warm-up steps of this run")
    p.add_argument("--clip-grad", type=float, default=5.0)
    p.add_argument("--weight-rot", type=float, default=5.0, help="weight of the geodesic rotation loss (radians)")
    p.add_argument("--weight-quat", type=float, default=1.0,
                   help="weight of the Huber loss on quaternion components (keeps the predicted norm near 1)")
    p.add_argument("--cosine", action="store_true",
                   help="cosine learning-rate decay to 10%% over this run's --minutes (after the warm-up)")
    p.add_argument("--scene-pool", type=int, default=48, help="scenes held in memory at a time")
    p.add_argument("--clips-per-scene", type=int, default=24, help="clips drawn before a scene is replaced")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=float, default=10.0, help="minutes between checkpoints")
    p.add_argument("--val-every", type=int, default=500, help="steps between validation runs")
    p.add_argument("--export", type=Path, default=None, help="also write a float16 copy here at each save")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="autocast dtype (pacegeo.precision.resolve_dtype; auto: bf16 on CUDA and on CPUs with native bf16)")
    p.add_argument("--reset-layerscale", type=float, default=None,
                   help="set the AA and camera-trunk LayerScale gammas to this value before training")
    p.add_argument("--reset-camera-head", action="store_true",
                   help="re-initialise the camera head before training (keeps encoder, aggregator and DPT heads)")
    p.add_argument("--workers", type=int, default=None, help="data workers rendering clips (default: 0 on CPU, all cores but two on GPU)")
    return p.parse_args(argv)


def validation_clips(height: int, width: int, count: int = 8, frames: int = 4):
    """Fixed held-out clips (seeds far from the training range) for quick progress checks."""
    cfg = StreamConfig(height=height, width=width, frames=(frames, frames), max_gap=6, fov_deg=(50.0, 90.0))
    stream = SynthClipStream(cfg, seed=10_000_000, scene_pool=count, clips_per_scene=1)
    return [stream.sample() for _ in range(count)]


@torch.no_grad()
def validate(model, clips, device) -> dict[str, float]:
    model.eval()
    rot, rot_id, absrel, absrel_const = [], [], [], []
    for clip in clips:
        images = clip["images"][None].to(device)
        out = model(images)
        ext, _ = pose_encoding_to_extri_intri(out["pose_enc"][0].float().cpu(), tuple(images.shape[-2:]))
        gt = clip["extrinsics"]
        r, _ = relative_pose_errors(ext, gt)
        identity = torch.eye(4)[:3].expand_as(gt)
        r_id, _ = relative_pose_errors(identity, gt)
        rot.append(r)
        rot_id.append(r_id)
        pred_d = out["depth"][0, ..., 0].float().cpu().numpy()
        gt_d = clip["depths"].numpy() * clip["valid"].numpy()
        absrel.append(depth_metrics(pred_d, gt_d, align="median")["abs_rel"])
        const = np.ones_like(gt_d)
        absrel_const.append(depth_metrics(const, gt_d, align="median")["abs_rel"])
    model.train()
    return {
        "rot_err_med": float(np.median(np.concatenate(rot))),
        "rot_err_identity_med": float(np.median(np.concatenate(rot_id))),
        "abs_rel": float(np.mean(absrel)),
        "abs_rel_constant": float(np.mean(absrel_const)),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    if height % 14 or width % 14:
        print(f"error: --size {args.size}: both sides must be multiples of 14", file=sys.stderr)
        return 2
    try:
        amp = resolve_dtype(args.dtype, "cuda" if torch.cuda.is_available() else "cpu")
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    accelerator = Accelerator(mixed_precision=mixed_precision_name(amp))
    set_seed(args.seed + accelerator.process_index)
    device = accelerator.device

    start_step = 0
    if args.init:
        model = load_backbone(args.init)
        start_step = int(read_metadata(args.init).get("train_steps", "0") if args.init.endswith(".safetensors") else 0)
    else:
        model = VGGT(pacegeo_tiny())
    if args.reset_layerscale:
        reset_layerscale(model, args.reset_layerscale)
    if args.reset_camera_head:
        torch.manual_seed(args.seed)
        model.camera_head = type(model.camera_head)(model.camera_head.config)
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay=0.05), lr=args.lr, betas=(0.9, 0.95))
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.csv"
    new_log = not log_path.exists()
    log_file = open(log_path, "a", newline="")
    writer = None
    val_clips = validation_clips(height, width)

    workers = args.workers if args.workers is not None else (max(2, (os.cpu_count() or 4) - 2) if torch.cuda.is_available() else 0)

    def batches_for(stage: Stage, step: int):
        """Iterator of training batches for a curriculum stage (rendered in worker processes on GPU)."""
        cfg = StreamConfig(height=height, width=width, frames=stage.frames, max_gap=stage.max_gap, fov_deg=stage.fov_deg)
        seed = args.seed * 1_000_003 + step
        if workers == 0:
            stream = SynthClipStream(cfg, seed=seed, scene_pool=args.scene_pool, clips_per_scene=args.clips_per_scene)
            while True:
                yield stream.batch(args.batch)
        data = SynthClipBatches(cfg, args.batch, seed=seed, scene_pool=args.scene_pool, clips_per_scene=args.clips_per_scene)
        yield from torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers, persistent_workers=True)

    stage = stage_at(start_step)
    batches = batches_for(stage, start_step)
    t0 = time.time()
    last_save = t0
    prior_minutes = float(read_metadata(args.init).get("train_minutes", "0")) if args.init and args.init.endswith(".safetensors") else 0.0
    step = start_step
    run_steps = 0

    def save():
        meta = {
            "train_steps": str(step),
            "train_minutes": f"{prior_minutes + (time.time() - t0) / 60:.1f}",
            "train_config": json.dumps({k: str(v) for k, v in vars(args).items()}),
            "summary": f"SynthRooms-trained, {step} steps",
            # Inference resolution: crop-mode preprocessing to this width (the training width).
            "preprocess": json.dumps({"target_size": width, "mode": "crop"}),
        }
        if accelerator.is_main_process:
            save_backbone(raw, out / "last.safetensors", extra=meta)
            if args.export:
                save_backbone(raw, args.export, half=True, extra=meta)

    while True:
        elapsed = time.time() - t0
        if elapsed > args.minutes * 60 or (args.max_steps and run_steps >= args.max_steps):
            break
        new_stage = stage_at(step)
        if new_stage != stage:
            stage = new_stage
            batches = batches_for(stage, step)
            accelerator.print(f"step {step}: curriculum stage {asdict(stage)}")
        batch = {k: v.to(device) for k, v in next(batches).items()}
        frames = batch["images"].shape[1]
        lr = args.lr * min(1.0, (run_steps + 1) / args.warmup)
        if args.cosine:
            lr *= 0.1 + 0.45 * (1.0 + math.cos(math.pi * min(1.0, elapsed / (args.minutes * 60))))
        for group in optimizer.param_groups:
            group["lr"] = lr
        with accelerator.autocast():
            outputs = model(batch["images"])
        loss, logs = vggt_loss(outputs, batch, camera_kwargs={"weight_rot": args.weight_rot, "weight_quat": args.weight_quat})
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.clip_grad)
        if not math.isfinite(loss.item()):
            accelerator.print(f"step {step}: non-finite loss, batch skipped")
            continue
        optimizer.step()
        step += 1
        run_steps += 1
        row = {"step": step, "minutes": round((prior_minutes * 60 + time.time() - t0) / 60, 2), "lr": lr,
               "frames": frames, "grad_norm": float(grad_norm), **{k: round(v, 5) for k, v in logs.items()}}
        if accelerator.is_main_process:
            if writer is None:
                writer = csv.DictWriter(log_file, fieldnames=list(row), extrasaction="ignore")
                if new_log:
                    writer.writeheader()
            writer.writerow(row)
            log_file.flush()
            if step % 25 == 0:
                accelerator.print(
                    f"step {step} | {row['minutes']:.1f} min | loss {logs['loss']:.3f} | rot {logs.get('cam_rot_deg', 0):.2f} deg (identity {logs.get('cam_rot_identity_deg', 0):.2f})"
                    f" | |q| {logs.get('cam_quat_norm', 0):.2f} | depth {logs.get('depth_reg', 0):.3f} | gnorm {float(grad_norm):.2f}"
                )
        if step % args.val_every == 0 and accelerator.is_main_process:
            metrics = validate(raw, val_clips, device)
            metrics.update(step=step, minutes=row["minutes"])
            with open(out / "val.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            accelerator.print(f"validation at step {step}: {metrics}")
        if time.time() - last_save > args.save_every * 60:
            save()
            last_save = time.time()
    save()
    accelerator.print(f"done: {run_steps} steps this run, {step} in total; weights in {out / 'last.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
