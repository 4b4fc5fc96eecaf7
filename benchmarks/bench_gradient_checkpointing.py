#!/usr/bin/env python
"""Peak memory and time of one training step (forward + backward) of SSAMBA-tiny with and without gradient
checkpointing, side by side.

SSAMBA-tiny as released (24 bidirectional Mamba layers, D 192), 1024 frames x 128 mel bins (AudioSet length),
fine-tuning patches (16x16, stride 10 -> 12 x 101 = 1212 tokens), batch 2, fp32, CPU. Each setting runs in its own
subprocess; peak memory = growth of the process' resident set over the step (the kernel's high-water mark is reset
through /proc/self/clear_refs first), after one warm-up step.

    python benchmarks/bench_gradient_checkpointing.py [--frames 1024] [--batch 2] [--layers 24]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _worker(args) -> dict:
    import torch

    from mamba_zoo import SSAMBAConfig, SSAMBAForAudioClassification

    torch.set_num_threads(args.threads)
    config = SSAMBAConfig.from_preset("tiny", num_hidden_layers=args.layers, max_length=args.frames,
                                      frequency_stride=10, time_stride=10, num_labels=12)
    model = SSAMBAForAudioClassification(config).train()
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    x = torch.randn(args.batch, args.frames, 128)
    labels = torch.randint(0, 12, (args.batch,))

    def step():
        model.zero_grad(set_to_none=True)
        model(input_values=x, labels=labels).loss.backward()

    step()  # warm-up (numba cache load, allocator)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS")
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mib": (_status("VmHWM") - before) / 2**20,
            "tokens": model.config.num_patches}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpointing", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.checkpointing is not None:
        print(json.dumps(_worker(args)))
        return

    rows = {}
    for checkpointing in (0, 1):
        command = [sys.executable, __file__, "--frames", str(args.frames), "--batch", str(args.batch),
                   "--layers", str(args.layers), "--threads", str(args.threads), "--checkpointing", str(checkpointing)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        rows[checkpointing] = json.loads(result.stdout.strip().splitlines()[-1])
    plain, ckpt = rows[0], rows[1]
    print(f"SSAMBA-tiny ({args.layers} layers), batch {args.batch}, {args.frames} frames = {plain['tokens']} tokens, "
          f"one fwd+bwd step, fp32 CPU, {args.threads} threads")
    print(f"{'setting':<28}{'time (s)':>10}{'peak RSS growth (MiB)':>24}")
    print(f"{'no checkpointing':<28}{plain['seconds']:>10.2f}{plain['peak_mib']:>24.0f}")
    print(f"{'gradient checkpointing':<28}{ckpt['seconds']:>10.2f}{ckpt['peak_mib']:>24.0f}")
    print(f"memory ratio (plain / checkpointed): {plain['peak_mib'] / max(ckpt['peak_mib'], 1e-9):.2f}x; "
          f"time ratio (checkpointed / plain): {ckpt['seconds'] / plain['seconds']:.2f}x")


if __name__ == "__main__":
    main()
