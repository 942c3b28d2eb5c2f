#!/usr/bin/env bash
# GPU benchmark of pruning on VGGT-1B (random weights, bf16, 518x392): latency, peak memory,
# speed-up and its ratio to the FLOP ideal for N in {32, 100, 300, 1000} x keep in {1, 0.5, 0.3, 0.2}.
# Results in eval/results/gpu/bench.{json,md}. Extra arguments go to eval/gpu_bench.py
# (e.g. --budget 900 to allow the slowest cells, --frames 32 100).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python3 eval/gpu_bench.py --device cuda "$@"
