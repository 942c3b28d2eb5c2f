"""Resumable per-scene results, sharding over processes, summary tables and frontier plots."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from pacegeo.errors import InputError

logger = logging.getLogger("pacegeo.evaluation")


def run_name(model: str, pruner: str, keep: float) -> str:
    """Folder name of one run: ``<model>_<pruner>_keep<k>`` (e.g. ``vggt-1b_none_keep1``)."""
    return f"{model}_{pruner}_keep{keep:g}"


def run_dir(out: str | os.PathLike, model: str, pruner: str, keep: float) -> Path:
    return Path(out) / run_name(model, pruner, keep)


def scene_file(run: Path, scene: str) -> Path:
    """Per-scene JSON path; ``/`` in scene names (``chess/seq-03``) becomes ``__``."""
    return run / (scene.replace("/", "__").replace(os.sep, "__") + ".json")


def to_jsonable(value: Any) -> Any:
    """Numpy/torch scalars and arrays to Python; NaN and infinities to None (strict JSON)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()] if value.ndim else to_jsonable(value.item())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def write_json(path: Path, obj: Any) -> None:
    """Write strict JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


class Sharding:
    """Splits scenes across the processes of an ``accelerate launch`` (one process: no split).

    Process ``index`` of ``count`` handles ``items[index::count]``.
    """

    def __init__(self) -> None:
        from accelerate import Accelerator

        # cpu=True on machines without CUDA, so that `torchrun --nproc_per_node N` (or accelerate's
        # multi-CPU launch) still splits the scenes (gloo); with CUDA each process gets its GPU.
        self._accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.index = int(self._accelerator.process_index)
        self.count = int(self._accelerator.num_processes)

    @property
    def device(self) -> torch.device:
        return self._accelerator.device

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def shard(self, items: Sequence) -> list:
        return list(items)[self.index :: self.count]

    def wait(self) -> None:
        self._accelerator.wait_for_everyone()


def progress(items: Iterable, desc: str, total: int | None = None, enabled: bool = True):
    """tqdm progress bar over scenes (disabled on non-main processes)."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, unit="scene", disable=not enabled, dynamic_ncols=True)


@dataclass(frozen=True)
class Column:
    """One metric column of the summary table.

    Attributes:
        key: metric key in the per-scene JSON ``metrics`` dict.
        header: table header.
        fmt: format spec for the mean.
        lower_is_better: direction (for the frontier plot's axis label).
    """

    key: str
    header: str
    fmt: str = ".4f"
    lower_is_better: bool = True


@dataclass
class RunSummary:
    """Scene means of one run (model, pruner, keep)."""

    run: str
    model: str
    pruner: str
    keep: float
    scenes: int
    means: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def collect_runs(out: str | os.PathLike, protocol: str) -> list[RunSummary]:
    """Scene means of every run folder under ``out`` whose JSON files belong to ``protocol``.

    NaN / missing values are left out of a mean; ``counts`` says how many scenes entered it.
    """
    rows = []
    for run in sorted(p for p in Path(out).iterdir() if p.is_dir()):
        records = []
        for path in sorted(run.glob("*.json")):
            try:
                rec = read_json(path)
            except (OSError, ValueError):
                logger.warning("skipping unreadable result %s", path)
                continue
            if isinstance(rec, dict) and rec.get("protocol") == protocol and "metrics" in rec:
                records.append(rec)
        if not records:
            continue
        first = records[0]
        keys = sorted({k for r in records for k, v in r["metrics"].items() if isinstance(v, (int, float)) or v is None})
        means, counts = {}, {}
        for key in keys:
            vals = [r["metrics"].get(key) for r in records]
            vals = [float(v) for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
            counts[key] = len(vals)
            means[key] = float(np.mean(vals)) if vals else float("nan")
        rows.append(
            RunSummary(run.name, first["model"], first["pruner"], float(first["keep"]), len(records), means, counts)
        )
    rows.sort(key=lambda r: (r.model, r.pruner != "none", r.pruner, -r.keep))
    return rows


def _baseline_latency(row: RunSummary, rows: list[RunSummary]) -> float:
    """Latency of the same model without pruning (else the same pruner at keep 1)."""
    for cand in rows:
        if cand.model == row.model and cand.pruner == "none":
            return cand.means.get("latency_ms", float("nan"))
    for cand in rows:
        if cand.model == row.model and cand.pruner == row.pruner and cand.keep == 1.0:
            return cand.means.get("latency_ms", float("nan"))
    return float("nan")


def _fmt(value: float, fmt: str) -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, fmt)


def write_summary(
    out: str | os.PathLike,
    protocol: str,
    columns: Sequence[Column],
    title: str,
    notes: Sequence[str] = (),
) -> list[RunSummary]:
    """Write ``summary.md`` (one row per run, scene means) and ``summary.json`` under ``out``.

    A latency column and a speed-up column (latency of the same model without pruning, or of the
    same pruner at keep 1, divided by this run's latency) are appended.
    """
    rows = collect_runs(out, protocol)
    header = ["model", "pruner", "keep", "scenes"] + [c.header for c in columns] + ["latency ms", "speed-up"]
    lines = [f"# {title}", ""]
    lines += [f"{n}" for n in notes]
    if notes:
        lines.append("")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
    for r in rows:
        lat = r.means.get("latency_ms", float("nan"))
        base = _baseline_latency(r, rows)
        speed = base / lat if math.isfinite(base) and math.isfinite(lat) and lat > 0 else float("nan")
        cells = [r.model, r.pruner, f"{r.keep:g}", str(r.scenes)]
        cells += [_fmt(r.means.get(c.key, float("nan")), c.fmt) for c in columns]
        cells += [_fmt(lat, ".1f"), _fmt(speed, ".2f") + ("x" if math.isfinite(speed) else "")]
        lines.append("| " + " | ".join(cells) + " |")
    if not rows:
        lines.append("| " + " | ".join(["(no results)"] + [""] * (len(header) - 1)) + " |")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    write_json(
        out / "summary.json",
        {
            "protocol": protocol,
            "columns": [c.__dict__ for c in columns],
            "runs": [r.__dict__ for r in rows],
        },
    )
    return rows


def plot_frontier(
    rows: Sequence[RunSummary], columns: Sequence[Column], path: str | os.PathLike, title: str
) -> Path:
    """Quality-latency frontier: one panel per column, one point per run (model, pruner, keep).

    Runs of the same model and pruner are joined by a line in order of keep and labelled with
    their keep value. The x axis is the mean forward latency (ms).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(5.2 * len(columns), 4.2), squeeze=False)
    groups: dict[tuple[str, str], list[RunSummary]] = {}
    for r in rows:
        groups.setdefault((r.model, r.pruner), []).append(r)
    for ax, col in zip(axes[0], columns):
        for (model, pruner), runs in groups.items():
            runs = sorted(runs, key=lambda r: r.keep)
            xs = np.array([r.means.get("latency_ms", np.nan) for r in runs], dtype=float)
            ys = np.array([r.means.get(col.key, np.nan) for r in runs], dtype=float)
            ok = np.isfinite(xs) & np.isfinite(ys)
            if not ok.any():
                continue
            ax.plot(xs[ok], ys[ok], marker="o", label=f"{model} / {pruner}")
            for r, x, y, good in zip(runs, xs, ys, ok):
                if good:
                    ax.annotate(f"keep {r.keep:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("forward latency (ms)")
        ax.set_ylabel(col.header + (" (lower is better)" if col.lower_is_better else " (higher is better)"))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def check_root(root: str | os.PathLike, what: str) -> Path:
    """The dataset root as a Path, or a one-line :class:`InputError` when it is missing."""
    path = Path(root).expanduser()
    if not path.exists():
        raise InputError(f"{what} root not found: {path}")
    if not path.is_dir():
        raise InputError(f"{what} root is not a folder: {path}")
    return path
