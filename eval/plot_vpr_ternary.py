"""Plot recall@1 of the ternary VPR extractor against its activation keep, one line per place
set, with the full-precision teacher (``trained`` head) as a dashed reference, from ``eval/vpr.py``
JSON records (token keep 1.0 rows).

    python eval/plot_vpr_ternary.py eval/results/vpr_ternary_synthrooms600000.json \
        eval/results/vpr_ternary_7scenes.json eval/results/vpr_ternary_corridor.json \
        --out eval/results/vpr_ternary_sparsity.png
"""

import argparse
import json
import sys
from pathlib import Path


def curve(records: list[dict]) -> tuple[list[float], list[float], float | None]:
    """(activation keeps, ternary R@1 at each, teacher R@1) of one result file at token keep 1."""
    rows = sorted((r for r in records if r["head"] == "ternary" and r["keep"] == 1.0), key=lambda r: -r["activation_keep"])
    teacher = [r["R@1"] for r in records if r["head"] == "trained" and r["keep"] == 1.0]
    return [r["activation_keep"] for r in rows], [r["R@1"] for r in rows], teacher[0] if teacher else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, nargs="+", help="eval/vpr.py JSON files with ternary rows")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.4), dpi=110)
    for i, path in enumerate(args.results):
        records = json.loads(path.read_text())
        keeps, r1, teacher = curve(records)
        if not keeps:
            print(f"error: {path} has no ternary rows at token keep 1.0", file=sys.stderr)
            return 1
        dataset = records[0]["dataset"]
        label = "SynthRooms places" if dataset.startswith("synthrooms:") else dataset.split(":")[-1]
        color = f"C{i}"
        ax.plot(keeps, r1, "o-", color=color, label=f"{label} ({records[0]['num_queries']} q)")
        if teacher is not None:
            ax.axhline(teacher, color=color, ls="--", lw=1)
    ax.set_xlabel("activation keep (fraction of inputs per ternary layer)")
    ax.set_ylabel("R@1")
    ax.set_title("ternary encoder; dashed: full-precision teacher", fontsize=9)
    ax.invert_xaxis()
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
