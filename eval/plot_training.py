"""Plot a training run's curves from its ``log.csv`` (and ``val.jsonl`` when present).

    python eval/plot_training.py runs/pacegeo-tiny --out checkpoints/pacegeo-tiny-curve.png
"""

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np


def smooth(values: np.ndarray, window: int = 25) -> np.ndarray:
    if len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="run folders (log.csv, val.jsonl), concatenated in order")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, vals, segment_starts = {}, [], []
    for run in args.runs:
        with open(run / "log.csv") as f:
            for i, row in enumerate(csv.DictReader(f)):
                if i == 0:
                    segment_starts.append(int(row["step"]))
                rows[int(row["step"])] = row  # a resumed run overwrites the steps it repeats
        if (run / "val.jsonl").exists():
            vals += [json.loads(line) for line in (run / "val.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        print("error: no rows in the logs", file=sys.stderr)
        return 2
    steps = np.array(sorted(rows))
    panels = [("loss", "total loss"), ("cam_rot_deg", "train rotation error (deg)"), ("depth_reg", "train depth L1 (scene units)")]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(16, 3.4))
    for ax, (key, title) in zip(axes, panels):
        y = np.array([float(rows[s][key]) for s in steps])
        ax.plot(steps, y, color="0.8", lw=0.5)
        ax.plot(steps[len(steps) - len(smooth(y)):], smooth(y), color="C0")
        if key == "cam_rot_deg":  # the identity pose's error on the same clips, where logged
            has = np.array([bool(rows[s].get("cam_rot_identity_deg")) for s in steps])
            if has.any():
                yi = np.array([float(rows[s]["cam_rot_identity_deg"]) for s in steps[has]])
                ax.plot(steps[has][len(yi) - len(smooth(yi)):], smooth(yi), color="C3", label="identity poses")
                ax.legend(fontsize=7)
        for start in segment_starts[1:]:
            ax.axvline(start, color="0.6", lw=0.6, ls=":")
        ax.set_ylim(0, float(np.percentile(y, 99.5)) * 1.1)  # early spikes would flatten the rest
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    ax = axes[-1]
    if vals:
        vs = [v["step"] for v in vals]
        ax.plot(vs, [v["rot_err_med"] / v["rot_err_identity_med"] for v in vals], "o-", label="rotation err / identity")
        ax.plot(vs, [v["abs_rel"] / v["abs_rel_constant"] for v in vals], "s-", label="AbsRel / constant")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.legend(fontsize=7)
    ax.set_title("held-out validation (ratio to baseline)", fontsize=9)
    ax.set_xlabel("step")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
