"""The driver of a protocol script: one model at every keep on this process's scenes, then the summary."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pacegeo.errors import PacegeoError

logger = logging.getLogger("pacegeo.evaluation")

from pacegeo.evaluation.frames import PreparedFrames, Prediction, outputs_to_prediction, pruning_stats, timed_forward
from pacegeo.evaluation.models import build_model, parse_keeps, resolve_device, warmup_passes
from pacegeo.evaluation.results import Column, Sharding, plot_frontier, progress, run_dir, scene_file, write_json, write_summary


def run_script(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    """Parse ``argv`` and call ``run``; a :class:`PacegeoError` becomes one ``error:`` line on stderr
    and exit code 2."""
    args = parser.parse_args(argv)
    try:
        return run(args)
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


class ProtocolRun:
    """One model (``--model``, ``--pruner``) evaluated at every ``--keep`` on this process's scenes.

    Building it parses the keeps, starts the sharding, picks the device, seeds torch and numpy with
    ``--seed`` and builds the model. A script then prints its header, calls :meth:`evaluate` for
    each of the :meth:`pending` scenes of its :meth:`shard` and ends with :meth:`finish`.
    Results go to ``<out>/<model>_<pruner>_keep<k>/<scene>.json``; a scene whose files all exist is
    skipped, so an interrupted run resumes.
    """

    def __init__(self, args: argparse.Namespace, protocol: str) -> None:
        self.protocol = protocol
        self.keeps = parse_keeps(args.keep, args.pruner)
        self.shards = Sharding()
        self.device = resolve_device(args.device, self.shards.device)
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        self.model = build_model(args.model, args.pruner, self.device, args.size, args.seed)
        self.out = Path(args.out)
        self.runs = {k: run_dir(self.out, self.model.label, self.model.pruner, k) for k in self.keeps}
        self._warmup = warmup_passes(args.warmup, self.device)
        self._warmed: set[float] = set()

    @property
    def is_main(self) -> bool:
        return self.shards.is_main

    @property
    def keep_text(self) -> str:
        """The keep values as the headers print them (``1 0.5 0.3``)."""
        return " ".join(f"{k:g}" for k in self.keeps)

    def shard(self, scenes: Sequence[str]) -> list[str]:
        """This process's share of the scene names."""
        return self.shards.shard(scenes)

    def pending(self, scenes: Sequence[str], unit: str):
        """The scenes that miss a result for some keep, under a progress bar (main process only).

        A line first says how many scenes are done already; ``unit`` names a scene in it (``scene``,
        ``sequence``).
        """
        todo = [s for s in scenes if any(not scene_file(self.runs[k], s).exists() for k in self.keeps)]
        skipped = len(scenes) - len(todo)
        if skipped:
            print(f"[{self.shards.index}] resuming: {skipped} {unit}(s) already done")
        return progress(todo, self.protocol, enabled=self.is_main)

    def evaluate(
        self, scene: str, prepared: PreparedFrames, config: dict, score: Callable[[Prediction], dict]
    ) -> None:
        """Forward ``prepared`` at each keep whose result for ``scene`` is missing, score and save it.

        ``score(prediction)`` returns the protocol's ``{"metrics": {...}, "errors": [...], ...}``; each
        error is printed as a warning, the forward latency is added to the metrics, and the record
        (protocol, scene, model, pruner, keep, frames, input size, device, ``config``, pruning
        statistics, then the score's entries) is written as JSON. The first timed pass of each keep
        follows ``--warmup`` untimed ones.

        Every record also holds the run's fidelity to the unpruned model on the same frames
        (:func:`pacegeo.fidelity.fidelity`: ``rot_dev_med``, ``trans_dev_med``, ``depth_dev_med``,
        ``points_dev``; zeros at keep 1): the keep-1 prediction is computed once per scene (untimed
        when keep 1 is not among the keeps).
        """
        from pacegeo.fidelity import fidelity

        reference: Prediction | None = None
        for keep in sorted(self.keeps, reverse=True):
            path = scene_file(self.runs[keep], scene)
            if path.exists():
                continue
            outputs, latency = timed_forward(
                self.model, prepared.images, keep, warmup=0 if keep in self._warmed else self._warmup
            )
            self._warmed.add(keep)
            prediction = outputs_to_prediction(outputs, prepared.image_hw)
            if keep >= 1.0:
                reference = prediction
            elif reference is None:
                with torch.inference_mode():
                    reference = outputs_to_prediction(timed_forward(self.model, prepared.images, 1.0)[0], prepared.image_hw)
            result = score(prediction)
            result["metrics"]["latency_ms"] = latency
            result["metrics"].update(fidelity(prediction.depth, prediction.extrinsics, prediction.intrinsics,
                                              reference.depth, reference.extrinsics, reference.intrinsics))
            for err in result["errors"]:
                print(f"warning: {scene} keep {keep:g}: {err}", file=sys.stderr)
            record = {
                "protocol": self.protocol,
                "scene": scene,
                "model": self.model.label,
                "pruner": self.model.pruner,
                "keep": keep,
                "frames": prepared.names,
                "input_hw": list(prepared.image_hw),
                "device": str(self.device),
                "config": config,
                "pruning": pruning_stats(outputs),
                **result,
            }
            write_json(path, record)
            del outputs

    def finish(self, columns: Sequence[Column], frontier: Sequence[Column], name: str, notes: Sequence[str]) -> None:
        """Wait for every process; the main one writes and prints the summary and plots the frontier.

        ``name`` titles the table (``<name> evaluation``) and the plot (``<name>: quality vs latency``).
        """
        self.shards.wait()
        if self.is_main:
            rows = write_summary(self.out, self.protocol, columns, f"{name} evaluation", notes)
            plot_frontier(rows, frontier, self.out / "frontier.png", f"{name}: quality vs latency")
            print((self.out / "summary.md").read_text())
            print(f"wrote {self.out / 'summary.md'}, {self.out / 'summary.json'}, {self.out / 'frontier.png'}")
