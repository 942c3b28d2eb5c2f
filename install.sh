#!/usr/bin/env bash
# Installs pacegeo and everything it needs on a fresh Debian/Ubuntu machine (CPU build of PyTorch).
# Idempotent: steps already done are skipped.
set -euo pipefail
cd "$(dirname "$0")"

# open3d needs the system library libusb-1.0.
if ! ldconfig -p 2>/dev/null | grep -q libusb-1.0; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q libusb-1.0-0 >/dev/null; }
fi

# Headless Chromium for the viewer's screenshot test (tests/test_viewer.py skips without it).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; } \
        || echo "install.sh: chromium not installed; the viewer's screenshot test will be skipped" >&2
fi

PY=${PYTHON:-python3}
# A CPU build of torch: an unpinned `torch` would pull a multi-GB CUDA build. Keep an existing torch.
if ! $PY -c "import torch" >/dev/null 2>&1; then
    $PY -m pip install -q "torch==2.13.0"
fi
# Editable, with every optional feature (synth rendering, place recognition, video, viewer) and the test tools.
$PY -m pip install -q -e ".[all,dev]"
