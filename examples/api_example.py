"""Reconstruct the example sequence with the Python API and write every export.

    python examples/api_example.py                      # examples/synthrooms-16, keep 0.3
    python examples/api_example.py my_photos/ --keep 0.5 --out my_output

The same as ``pacegeo reconstruct examples/synthrooms-16 --keep 0.3 -o example_output/scene.ply
--export glb,colmap,npz,cameras --preview example_output/preview.png``, written out step by step.
"""

import argparse
from pathlib import Path

import numpy as np

from pacegeo import Pipeline

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", nargs="?", default=HERE / "synthrooms-16", type=Path, help="folder of images or a video")
    parser.add_argument("--keep", type=float, default=0.3, help="fraction of patch tokens kept per frame")
    parser.add_argument("--model", default="auto", help="auto, vggt-1b, pacegeo-tiny or a checkpoint path")
    parser.add_argument("--out", default=Path("example_output"), type=Path, help="output folder")
    args = parser.parse_args()

    # 1. Load a backbone and a pruner. "auto" takes VGGT-1B when its weights are cached locally,
    #    otherwise the bundled pacegeo-tiny; pipe.notice says what that means.
    pipe = Pipeline.from_pretrained(model=args.model, pruner="auto", device="auto")
    if pipe.notice:
        print("note:", pipe.notice)

    # 2. Reconstruct. Dense maps are at the model's input resolution; cameras are OpenCV
    #    world-to-camera with the first camera as the world frame.
    rec = pipe.reconstruct(args.input, keep=args.keep, progress=True)
    h, w = rec.inference_hw
    print(f"{len(rec)} frames at {w}x{h}: depth {rec.depth.shape}, extrinsics {rec.extrinsics.shape}")
    print(f"kept {rec.kept_per_frame[-1]} of {rec.tokens_per_frame} patch tokens per frame")
    print("seconds per stage:", {k: round(v, 3) for k, v in rec.timings.items() if "/" not in k})

    # 3. A confidence-filtered, coloured point cloud as numpy arrays (default filter: the least
    #    confident half is dropped, as on the command line).
    xyz, rgb = rec.point_cloud()
    print(f"{len(xyz):,} points; scene extent {np.ptp(xyz, axis=0).round(2)} (model units)")
    print("camera centres:\n", rec.camera_centers.round(3))

    # 4. Exports: all of them appear together or none does; none may replace an input.
    args.out.mkdir(parents=True, exist_ok=True)
    rec.export(
        {
            "ply": args.out / "scene.ply",  # binary PLY with RGB
            "glb": args.out / "scene.glb",  # points + camera frustums, glTF (y up)
            "colmap": args.out / "scene_colmap",  # COLMAP text model
            "npz": args.out / "scene.npz",  # every array
            "cameras": args.out / "scene_cameras.json",  # per frame: extrinsic, intrinsic, size, centre
            "preview": args.out / "preview.png",  # three rendered views
        },
        overwrite=True,
    )
    print("wrote:", ", ".join(str(p) for p in rec.files_written))


if __name__ == "__main__":
    main()
