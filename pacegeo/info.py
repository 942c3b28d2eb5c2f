"""``pacegeo info``: what this installation can run and where model weights would come from."""

import platform

import torch

from pacegeo import __version__


def checkpoint_kinds() -> dict[str, str]:
    """What each format of a bundled file that is not a backbone is, for the listing."""
    from pacegeo.pruning.checkpoint import PRUNER_FORMAT
    from pacegeo.pruning.come import COME_FORMAT
    from pacegeo.vpr.extract import VPR_FORMAT
    from pacegeo.vpr.prompt import PROMPT_FORMAT
    from pacegeo.vpr.student import STUDENT_FORMAT
    from pacegeo.vpr.ternary import TERNARY_FORMAT

    return {
        PRUNER_FORMAT: "pruner",
        VPR_FORMAT: "VPR head",
        TERNARY_FORMAT: "ternary VPR extractor",
        STUDENT_FORMAT: "distilled VPR student",
        PROMPT_FORMAT: "prompt-tuned VPR extractor",
        COME_FORMAT: "Co-Me-style merging predictor (peer method)",
    }


def default_device() -> str:
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def describe() -> str:
    from pacegeo.hub import HUB_MODELS, bundled_models, checkpoints_dir, hub_offline, is_available_locally, read_metadata

    CHECKPOINT_KINDS = checkpoint_kinds()

    lines = [
        f"pacegeo {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
        f"device: {default_device()}",
        f"hub: {'offline (HF_HUB_OFFLINE=1)' if hub_offline() else 'online'}",
        "",
        "models:",
    ]
    for name, path in bundled_models().items():
        meta = read_metadata(path)
        summary = meta.get("summary", "bundled backbone")
        lines.append(f"  {name:<14} bundled: {path} ({summary})")
    for name, model in HUB_MODELS.items():
        where = "in the local HF cache" if is_available_locally(name) else "not cached; downloaded on first use when online"
        lines.append(f"  {name:<14} hub {model.repo_id} [{model.licence}]: {where}")
        lines.append(f"  {'':<14} {model.description}")
    if not bundled_models():
        lines.append(f"  (no bundled checkpoints found in {checkpoints_dir()})")
    extras = [(path, read_metadata(path)) for path in sorted(checkpoints_dir().glob("*.safetensors"))]
    extras = [(path, meta) for path, meta in extras if meta.get("format") in CHECKPOINT_KINDS]
    if extras:
        lines += ["", "pruners, place-recognition models and peer methods:"]
        for path, meta in extras:
            kind = CHECKPOINT_KINDS[meta["format"]]
            backbone = meta.get("backbone") or meta.get("teacher_backbone", "?")
            lines.append(f"  {path.stem:<26} {kind} for {backbone}: {path}")
    lines += ["", "training-free pruning (--pruner training-free) works with every model above."]
    return "\n".join(lines)
