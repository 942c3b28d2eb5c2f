"""Train a pruner for a backbone in one command: stage 1 (attention distillation), then stage 2
(camera/depth/point-map fine-tuning), backbone frozen throughout.

    # the bundled backbone on SynthRooms clips (CPU works; a GPU is faster)
    python train/pruner.py --model pacegeo-tiny --distill-minutes 6 --finetune-minutes 30 --out runs/tiny-pruner
    # VGGT-1B on your own photos (GPU; any folder of related photos, no labels needed)
    accelerate launch train/pruner.py --model vggt-1b --images my_photos/ --size 518 --frames 8 \
        --distill-minutes 120 --finetune-minutes 240 --out runs/vggt1b-pruner

Writes ``<out>/distill/`` and ``<out>/finetune/`` (each with its ``pruner.safetensors`` and
``log.csv``) and copies the final pruner to ``<out>/pruner.safetensors``, ready for
``pacegeo reconstruct --pruner``. Options not listed here take the defaults of the two stages
(``train/distill.py --help``, ``train/finetune.py --help``).
"""

import argparse
import shutil
from pathlib import Path

from pacegeo.training import distill, finetune


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pacegeo-tiny")
    p.add_argument("--images", default=None, help="folder of related photos (default: SynthRooms clips with ground truth)")
    p.add_argument("--out", type=Path, default=Path("runs/pruner"))
    p.add_argument("--size", default=None, help="HxW, or a width W at 3:4 (default: the model's own width at 3:4)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (SynthRooms: the longest clip)")
    p.add_argument("--distill-minutes", type=float, default=20.0)
    p.add_argument("--finetune-minutes", type=float, default=60.0)
    p.add_argument("--max-steps", type=int, default=None, help="cap on the steps of each stage")
    p.add_argument("--coverage", type=float, default=4.0, help="learned_coverage of the pruner (see finetune --coverage)")
    p.add_argument("--weight-camera", type=float, default=10.0, help="see finetune --weight-camera")
    p.add_argument("--weight-relative", type=float, default=0.5, help="see finetune --weight-relative")
    p.add_argument("--no-camera-correction", action="store_true", help="leave out the restoration's camera-token correction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default="auto", help="autocast dtype of both stages (see distill --dtype)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    shared = ["--model", args.model, "--frames", str(args.frames), "--seed", str(args.seed), "--dtype", args.dtype]
    for flag, value in (("--images", args.images), ("--size", args.size), ("--threads", args.threads),
                        ("--max-steps", args.max_steps)):
        if value is not None:
            shared += [flag, str(value)]
    stage1 = args.out / "distill"
    code = distill.main(shared + ["--minutes", str(args.distill_minutes), "--out", str(stage1)])
    if code:
        return code
    stage2 = args.out / "finetune"
    code = finetune.main(shared + ["--init", str(stage1 / "pruner.safetensors"), "--minutes", str(args.finetune_minutes),
                                   "--coverage", str(args.coverage), "--weight-camera", str(args.weight_camera),
                                   "--weight-relative", str(args.weight_relative), "--out", str(stage2)]
                           + ([] if args.no_camera_correction else ["--camera-correction"]))
    if code:
        return code
    final = args.out / "pruner.safetensors"
    shutil.copyfile(stage2 / "pruner.safetensors", final)
    print(f"pruner for {args.model} in {final}")
    return 0

