import json
import os
from pathlib import Path

# Hub code reads HF_HUB_OFFLINE once, at import: set it before anything imports huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from helpers import TARGET

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PACEGEO_SHARED", REPO_ROOT.parent / "shared"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: needs --runslow (covered by a benchmark)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared data folder not found at {SHARED} (required in CI)")
        pytest.skip(f"shared data folder not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny tensors: avoids OpenMP spin-waiting on a busy machine.

    Use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A random tiny backbone saved with ``TARGET`` px "crop" preprocessing in its metadata."""
    from pacegeo.backbone import VGGT, tiny
    from pacegeo.hub import save_backbone

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_backbone(VGGT(tiny()).eval(), path, extra={"preprocess": json.dumps({"target_size": TARGET, "mode": "crop"})})
