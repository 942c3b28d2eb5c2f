"""Evaluation: what the protocol scripts (``eval/scannet.py``, ``eval/sevenscenes.py``) share.

* building the model and the token pruner from the command line (:func:`add_model_args`,
  :func:`build_model`);
* a timed forward pass (:func:`timed_forward`): only the model call is timed, with
  ``torch.cuda.synchronize()`` around it on CUDA; the autocast dtype of
  :func:`pacegeo.precision.resolve_dtype` ("auto") for pruned and unpruned models alike;
* turning model outputs into numpy predictions (:class:`Prediction`);
* preparing frames for the model: preprocessing plus ground truth (depth, intrinsics) resampled
  onto the model-input pixel grid (:func:`prepare_frames`);
* resumable per-scene JSON results (:func:`run_dir`, :func:`write_json`), a summary table
  (:func:`write_summary`) and a quality-latency frontier plot (:func:`plot_frontier`);
* sharding scenes across processes with ``accelerate`` (:class:`Sharding`): process ``i`` of ``n``
  handles ``scenes[i::n]``, so ``accelerate launch eval/scannet.py ...`` spreads scenes over GPUs;
* the driver of a protocol script (:func:`run_script`, :class:`ProtocolRun`): one model evaluated at
  every keep on this process's scenes, resumable per-scene results, then the summary; a script
  adds only its own frame selection and metrics.

Conventions: cameras are OpenCV (x right, y down, z forward); ``extrinsics`` are world-to-camera
``[S, 3, 4]``; ``cam_to_world`` are ``[S, 4, 4]``; depth is z-depth, 0 marks invalid pixels;
pixel ``(u, v)`` has its centre at image coordinate ``(u, v)``.

Library-style code: it logs and raises; only the script driver prints, as the scripts do.
"""

from pacegeo.evaluation.frames import (
    PreparedFrames,
    Prediction,
    outputs_to_prediction,
    prepare_frames,
    pruning_stats,
    resample_depth,
    timed_forward,
)
from pacegeo.evaluation.models import (
    PROTOCOL_SEED,
    PRUNERS,
    EvalModel,
    add_model_args,
    build_model,
    default_input_size,
    keep_value,
    load_eval_backbone,
    parse_keeps,
    resolve_device,
    warmup_passes,
)
from pacegeo.evaluation.protocol import ProtocolRun, run_script
from pacegeo.evaluation.results import (
    Column,
    RunSummary,
    Sharding,
    check_root,
    collect_runs,
    plot_frontier,
    progress,
    read_json,
    run_dir,
    run_name,
    scene_file,
    to_jsonable,
    write_json,
    write_summary,
)

__all__ = [
    "PROTOCOL_SEED", "PRUNERS", "Column", "EvalModel", "PreparedFrames", "Prediction", "ProtocolRun", "RunSummary",
    "Sharding", "add_model_args", "build_model", "check_root", "collect_runs", "default_input_size", "keep_value",
    "load_eval_backbone", "outputs_to_prediction", "parse_keeps", "plot_frontier", "prepare_frames", "progress",
    "pruning_stats", "read_json", "resample_depth", "resolve_device", "run_dir", "run_name", "run_script",
    "scene_file", "timed_forward", "to_jsonable", "warmup_passes", "write_json", "write_summary",
]
