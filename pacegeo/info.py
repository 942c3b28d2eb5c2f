"""``pacegeo info``: what this installation can run and where model weights would come from."""

import platform

import torch

from pacegeo import __version__


def default_device() -> str:
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def describe() -> str:
    from pacegeo.hub import HUB_MODELS, bundled_models, checkpoints_dir, hub_offline, is_available_locally, read_metadata

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
    extras = sorted(checkpoints_dir().glob("*-pruner.safetensors")) + sorted(checkpoints_dir().glob("*-vpr.safetensors"))
    if extras:
        lines += ["", "pruners and place-recognition heads:"]
        for path in extras:
            meta = read_metadata(path)
            kind = "VPR head" if path.stem.endswith("-vpr") else f"pruner ({meta.get('stage', 'trained')})"
            lines.append(f"  {path.stem:<22} {kind} for {meta.get('backbone', '?')}: {path}")
    lines += ["", "training-free pruning (--pruner training-free) works with every model above."]
    return "\n".join(lines)
