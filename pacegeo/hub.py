"""Finding and loading backbone weights.

One resolver takes a model *name* or *path*:

* ``"vggt-1b"``: the official checkpoint on the Hugging Face hub (``facebook/VGGT-1B``), taken from
  the local HF cache when present; downloaded only when the hub is online (``HF_HUB_OFFLINE`` unset);
* ``"pacegeo-tiny"`` or any other ``<name>`` with a ``<name>.safetensors`` in the bundled
  ``checkpoints/`` folder (or ``$PACEGEO_CHECKPOINTS``);
* ``"hf://<org>/<repo>"`` or ``"<org>/<repo>"``: another hub repository holding ``model.safetensors``
  or ``model.pt``;
* a local ``.safetensors`` / ``.pt`` / ``.pth`` file, or a folder holding one (plus an optional
  ``config.json``).

pacegeo's own checkpoints are safetensors files whose metadata holds the architecture
(``config``, JSON of :class:`pacegeo.backbone.VGGTConfig`). Files without it (the official
``model.pt``) are taken to be VGGT-1B. Loading is strict: an error names the missing, unexpected
and mis-shaped keys. ``track_head.*`` keys are skipped with a log message because pacegeo does
not build the track head.
"""

import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from pacegeo.backbone import VGGT, VGGTConfig, config_from_dict, config_to_dict, vggt_1b
from pacegeo.errors import CheckpointError, is_memory_error, option
from pacegeo.io.outputs import save_tensors

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "pacegeo-backbone/1"
WEIGHT_FILES = ("model.safetensors", "model.pt", "pytorch_model.bin")


@dataclass(frozen=True)
class HubModel:
    """A model known by name that lives on the Hugging Face hub."""

    repo_id: str
    filenames: tuple[str, ...]
    description: str
    licence: str
    config: Callable[[], VGGTConfig] = vggt_1b  # the architecture (known without the weights)


HUB_MODELS = {
    "vggt-1b": HubModel(
        "facebook/VGGT-1B",
        ("model.safetensors", "model.pt"),
        "official VGGT (1.26B parameters, 518 px), best quality on real photos",
        "non-commercial (VGGT licence)",
    ),
}


def model_config(name_or_path: str | Path) -> VGGTConfig:
    """The architecture of a model without loading (or downloading) its weights: the preset of a
    hub model name (``vggt-1b``), else the config recorded in a checkpoint's metadata."""
    text = str(name_or_path)
    if text.lower() in HUB_MODELS and not Path(text).expanduser().exists():
        return HUB_MODELS[text.lower()].config()
    return _config_for(resolve_weights(text))


def checkpoints_dir() -> Path:
    """Folder of bundled checkpoints: ``$PACEGEO_CHECKPOINTS``; in an installed package its
    ``pacegeo/checkpoints`` data folder; in a source checkout the top-level ``checkpoints/``."""
    env = os.environ.get("PACEGEO_CHECKPOINTS")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent
    installed = package / "checkpoints"
    return installed if installed.is_dir() else package.parent / "checkpoints"


def bundled_models() -> dict[str, Path]:
    """Names of bundled backbone checkpoints and their files."""
    folder = checkpoints_dir()
    found = {}
    if folder.is_dir():
        for path in sorted(folder.glob("*.safetensors")):
            meta = read_metadata(path)
            if meta.get("format") == CHECKPOINT_FORMAT:
                found[path.stem] = path
    return found


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_file(repo_id: str, filenames: tuple[str, ...], cache_dir: str | Path | None, what: str) -> Path:
    """First of ``filenames`` found for ``repo_id``: local cache first, then a download if online."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    offline = hub_offline()
    for local_only in (True, False):
        if not local_only and offline:
            break
        for filename in filenames:
            try:
                path = hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=local_only)
                return Path(path)
            except (LocalEntryNotFoundError, EntryNotFoundError):
                continue
            except Exception as err:  # network failures, gated repos, HTTP errors
                if local_only:
                    continue
                raise CheckpointError(
                    f"could not download {what} from the hub ({type(err).__name__}: {str(err).splitlines()[0]}); "
                    f"download {repo_id}/{filenames[0]} on a connected machine and pass its path as {option('model')}"
                ) from None
    hint = (
        f"run `huggingface-cli download {repo_id} {filenames[0]}` on a machine with network access "
        f"(the file lands in the Hugging Face cache), or pass the downloaded file's path"
    )
    if offline:
        raise CheckpointError(f"{what} is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1); {hint}")
    raise CheckpointError(f"{what} was not found on the hub repository {repo_id}; {hint}")


def resolve_weights(name_or_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Path of the weight file for a model name, hub id or local path (see module docstring)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for filename in WEIGHT_FILES:
            if (path / filename).is_file():
                return path / filename
        candidates = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.pt"))
        if len(candidates) == 1:
            return candidates[0]
        raise CheckpointError(f"no weight file ({', '.join(WEIGHT_FILES)}) in folder {path}")
    bundled = bundled_models()
    if text in bundled:
        return bundled[text]
    if text.lower() in HUB_MODELS:
        model = HUB_MODELS[text.lower()]
        return _hub_file(model.repo_id, model.filenames, cache_dir, f"the {text} weights ({model.repo_id})")
    repo = text[len("hf://") :] if text.startswith("hf://") else text
    if repo.count("/") == 1 and not text.endswith((".pt", ".pth", ".safetensors")):
        return _hub_file(repo, WEIGHT_FILES, cache_dir, f"hub model {repo}")
    known = sorted(set(bundled) | set(HUB_MODELS))
    if os.sep in text or text.startswith(("~", ".")) or text.lower().endswith((".safetensors", ".pt", ".pth", ".bin")):
        raise CheckpointError(f"model checkpoint {text} not found (known model names: {', '.join(known)})")
    raise CheckpointError(f"model {text!r} is neither a file nor a known model name (known: {', '.join(known)})")


def is_available_locally(name: str, cache_dir: str | Path | None = None) -> bool:
    """Whether a named model's weights can be loaded without network access."""
    if name in bundled_models():
        return True
    model = HUB_MODELS.get(name.lower())
    if model is None:
        return Path(name).expanduser().exists()
    from huggingface_hub import try_to_load_from_cache

    for filename in model.filenames:
        hit = try_to_load_from_cache(model.repo_id, filename, cache_dir=cache_dir)
        if isinstance(hit, str) and Path(hit).is_file():
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Reading and writing checkpoints


#: Largest safetensors header :func:`read_metadata` reads (the format's own limit).
MAX_HEADER_BYTES = 100_000_000


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (empty for other formats or unreadable files)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    # The header is read directly (8-byte little-endian length, then JSON): no memory map, so a
    # process short of address space still finds out what a file is.
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 2 <= size <= MAX_HEADER_BYTES:
                return {}
            header = json.loads(handle.read(size))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pt``/``.pth``/``.bin`` file, as float32 where floating."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            with warnings.catch_warnings():  # torch's advice on unsafe loading is not for our users
                warnings.simplefilter("ignore")
                state = torch.load(str(path), map_location="cpu", weights_only=True)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or type(err).__name__}") from None
    except Exception as err:
        if is_memory_error(err):
            raise CheckpointError(f"not enough memory to read checkpoint {path}") from None
        kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch weights (tensors only)"
        raise CheckpointError(f"cannot read checkpoint {path}: not a valid {kind} file (corrupt, truncated or another format)") from None
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict")
    clean = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = key[len("module.") :] if key.startswith("module.") else key
        clean[key] = value.float() if value.is_floating_point() else value
    return clean


def _summarise(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_backbone_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly load ``state`` into ``model``; ``track_head.*`` keys are skipped (logged).

    Raises :class:`CheckpointError` naming missing, unexpected and mis-shaped keys.
    """
    track = [k for k in state if k.startswith("track_head.")]
    if track:
        logger.info("skipping %d track_head.* tensors of %s: pacegeo does not build the track head", len(track), source)
        state = {k: v for k, v in state.items() if not k.startswith("track_head.")}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mis_shaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_summarise(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_summarise(unexpected)})")
        if mis_shaped:
            parts.append(f"{len(mis_shaped)} mis-shaped ({_summarise(mis_shaped, 3)})")
        raise CheckpointError(f"{source} does not match the model architecture: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def check_finite(state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` when a floating tensor of ``state`` holds NaN or infinity."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{source} holds NaN or infinite weights in {len(bad)} tensor(s) ({_summarise(bad, 3)}): the file is corrupt"
        )


def backbone_fingerprint(model: torch.nn.Module) -> str:
    """A short identity of a backbone's weights, stable under float16 storage.

    Hashes every tensor's name, shape and first 4096 values rounded to float16, so a checkpoint
    saved in float16 and loaded back as float32 keeps its fingerprint.
    """
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(f"{key}:{tuple(value.shape)}".encode())
        head = value.detach().flatten()[:4096].to("cpu", torch.float16)
        digest.update(head.numpy().tobytes())
    return digest.hexdigest()[:16]


def _config_for(path: Path) -> VGGTConfig:
    meta = read_metadata(path)
    if "config" in meta:
        try:
            return config_from_dict(json.loads(meta["config"]))
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"checkpoint {path} has an unreadable architecture config: {err}") from None
    sidecar = path.parent / "config.json"
    if sidecar.is_file():
        try:
            kwargs = json.loads(sidecar.read_text() or "{}")
        except ValueError:
            kwargs = {}
        if isinstance(kwargs, dict) and "aggregator" in kwargs:
            return config_from_dict(kwargs)
    # Files without an architecture record (the official model.pt / model.safetensors) are VGGT-1B.
    return vggt_1b()


def load_backbone(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
) -> VGGT:
    """Resolve, build and strictly load a backbone; returns it in eval mode, float32, on ``device``."""
    path = resolve_weights(name_or_path, cache_dir=cache_dir)
    config = _config_for(path)
    state = read_state_dict(path)
    with torch.device("meta"):
        model = VGGT(config)
    model = model.to_empty(device="cpu")
    load_backbone_state_dict(model, state, source=str(path))
    check_finite(state, str(path))
    # Non-persistent buffers are not in the state dict: rebuild them after to_empty().
    model.aggregator.reset_buffers()
    return model.to(device).eval()


def save_backbone(model: VGGT, path: str | Path, half: bool = False, extra: dict[str, str] | None = None) -> Path:
    """Write ``model`` as safetensors with its config (and ``extra`` strings) in the metadata.

    Written atomically (:func:`pacegeo.io.outputs.save_tensors`): an interrupted save leaves no
    half-written checkpoint.
    """
    state = {k: v.half() if half and v.is_floating_point() else v for k, v in model.state_dict().items()}
    meta = {"format": CHECKPOINT_FORMAT, "config": json.dumps(config_to_dict(model.config))}
    meta.update(extra or {})
    return save_tensors(state, path, meta)
