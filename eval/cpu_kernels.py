"""Throughput of the kernels a VGGT-class forward spends its time in, float32 against bfloat16, on
this machine's CPU: what bounds the CPU speed-up of ``--dtype auto`` (bf16) over float32.

Shapes are VGGT-1B's at 518x392 (1,041 tokens per frame, width 1024, 16 heads of 64): the MLP and
projection matmuls of one block, frame attention (one frame) and global attention (4 frames), and a
3x3 convolution of the DPT head. bf16 runs the way the pipeline runs it: under CPU autocast with
float32 weights (:func:`pacegeo.precision.autocast`), attention through
``scaled_dot_product_attention``.

    python eval/cpu_kernels.py --json eval/results/cpu_kernels.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pacegeo.precision import cpu_flags, autocast, cpu_has_native_bf16


def _seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def kernels(tokens: int = 1041, width: int = 1024, heads: int = 16, frames: int = 4):
    """(name, FLOPs, float32 callable factory) for each measured kernel."""
    x = torch.randn(tokens * frames, width)
    mlp = torch.nn.Linear(width, 4 * width)
    q_frame = torch.randn(1, heads, tokens, width // heads)
    q_global = torch.randn(1, heads, tokens * frames, width // heads)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1)
    feat = torch.randn(1, 256, 148, 196)  # a DPT fusion level at 518x392 (quarter resolution, 4 frames ~ 2x this)
    return [
        ("linear 1024->4096", 2 * x.shape[0] * width * 4 * width, lambda: mlp(x)),
        ("sdpa frame (1041 tokens)", 4 * heads * tokens**2 * (width // heads),
         lambda: F.scaled_dot_product_attention(q_frame, q_frame, q_frame)),
        ("sdpa global (4164 tokens)", 4 * heads * (tokens * frames) ** 2 * (width // heads),
         lambda: F.scaled_dot_product_attention(q_global, q_global, q_global)),
        ("conv3x3 256ch 148x196", 2 * 256 * 256 * 9 * 148 * 196, lambda: conv(feat)),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    rows = []
    with torch.no_grad():
        for name, flops, fn in kernels():
            fp32 = _seconds(fn, args.repeats)
            with autocast("cpu", torch.bfloat16):
                bf16 = _seconds(fn, args.repeats)
            rows.append({"kernel": name, "flops": flops, "float32_s": fp32, "bfloat16_s": bf16,
                         "float32_tflops": flops / fp32 / 1e12, "bfloat16_tflops": flops / bf16 / 1e12,
                         "bf16_speedup": fp32 / bf16})
            print(f"{name:28s} float32 {flops / fp32 / 1e12:6.3f} TFLOP/s   bf16 {flops / bf16 / 1e12:6.3f} TFLOP/s"
                  f"   bf16 speed-up {fp32 / bf16:4.2f}x")
    flags = sorted(f for f in cpu_flags() if f.startswith(("amx", "avx512_bf16", "avx512f")))
    report = {"cpu": _cpu_model(), "bf16_flags": flags, "native_bf16": cpu_has_native_bf16(),
              "torch": torch.__version__, "threads": args.threads, "kernels": rows}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
