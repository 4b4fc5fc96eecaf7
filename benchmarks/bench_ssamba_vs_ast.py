#!/usr/bin/env python
"""SSAMBA-tiny vs transformers' AST of the same width: inference time and peak memory, side by side.

Both models see the same spectrograms: 128 mel bins, non-overlapping 16x16 patches (8 frequency patches), and
`tokens / 8` time patches, batch 2, fp32, CPU (or CUDA with --device cuda). SSAMBA-tiny has the released depth (24
bidirectional Mamba layers, D 192) unless --ssamba-layers says otherwise; AST is transformers' `ASTModel` with D 192,
12 layers, 3 heads, MLP 768, `attn_implementation="sdpa"` (`--ast-attn eager`: the plain attention SSAST used).

How things are measured: every (tokens) row runs in a fresh subprocess that builds both models; after one warm-up call
each (numba JIT / cache load), the two models are timed round-robin (SSAMBA, AST, SSAMBA, AST, ...) so that load from
elsewhere hits both alike, and the best (minimum) wall time is reported. Peak memory, each model alone in a fresh
process: "MiB" = the growth of the process' resident set during one forward call (the kernel's high-water mark is reset
through /proc/self/clear_refs before the call and `VmHWM - VmRSS(before)` read after it; on CUDA:
torch.cuda.max_memory_allocated growth); "RSS MiB" = the whole process' peak resident set (imports, model, warm-up
and the call: the larger of VmHWM before the reset and after the call), what a user sees.

    python benchmarks/bench_ssamba_vs_ast.py                 # 512, 1024, 2048, 4096, 8192 tokens
    python benchmarks/bench_ssamba_vs_ast.py --long          # + 22k tokens (the SSAMBA paper's efficiency point)
    python benchmarks/bench_ssamba_vs_ast.py --plot bench.png
    python benchmarks/bench_ssamba_vs_ast.py --autocast bf16 # both models under torch.autocast(bfloat16)

``--autocast bf16`` runs both models' forward under ``torch.autocast(device, dtype=torch.bfloat16)``: their linear
layers (and AST's attention) in bfloat16 through oneDNN, where the CPU has bfloat16 instructions (AVX512-BF16, AMX);
SSAMBA's scan and convolution kernels stay float32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

DEFAULT_TOKENS = [512, 1024, 2048, 4096, 8192]
LONG_TOKENS = [22016]  # 8 x 2752 patches: ~22k tokens, 44k frames (~7.3 min of audio)


def _read_status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return None


def _peak_growth(fn):
    """(bytes the resident set grows by during fn(), the whole process' peak resident set in bytes): reset the
    high-water mark, read VmHWM after the call; the process peak is the larger of VmHWM before the reset and after."""
    import resource

    try:
        process_peak = _read_status("VmHWM")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _read_status("VmRSS")
        fn()
        peak = _read_status("VmHWM")
        return peak - before, max(process_peak, peak)
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        fn()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return after - before, after


def build(name, tokens, ssamba_layers, device, ast_attn="sdpa"):
    import torch
    from transformers import ASTConfig, ASTModel

    from mamba_zoo import SSAMBAConfig, SSAMBAModel

    frames = 16 * (tokens // 8)
    torch.manual_seed(0)
    if name == "ssamba":
        model = SSAMBAModel(SSAMBAConfig.from_preset(
            "tiny", num_hidden_layers=ssamba_layers, max_length=frames, drop_path_rate=0.0))
        with torch.inference_mode():  # warm-up on a short input: numba JIT / cache load
            model.eval()(torch.randn(2, 64, 128))
    else:
        model = ASTModel(ASTConfig(
            hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768, max_length=frames,
            num_mel_bins=128, patch_size=16, frequency_stride=16, time_stride=16, attn_implementation=ast_attn,
        ))
        assert model.config._attn_implementation == ast_attn
    return model.eval().to(device), torch.randn(2, frames, 128, device=device)


def worker(tokens, mode, ssamba_layers, threads, repeats, device, ast_attn, autocast="none"):
    """mode "time": both models, timed round-robin; mode "mem:<name>": one model alone in this process, so that no
    memory freed by the other model is reused (which would hide its allocations from the resident-set growth)."""
    import torch

    torch.set_num_threads(threads)
    names = ["ssamba", "ast"] if mode == "time" else [mode.split(":", 1)[1]]
    models = {}
    for name in names:
        models[name], x = build(name, tokens, ssamba_layers, device, ast_attn)

    def call(name):
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                                                    enabled=autocast == "bf16"):
            models[name](x)
        if device == "cuda":
            torch.cuda.synchronize()

    result = {"tokens": tokens, "frames": x.shape[1]}
    if mode != "time":
        name = names[0]
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            call(name)
            result[f"{name}_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            growth, process_peak = _peak_growth(lambda: call(name))
            result[f"{name}_peak_mib"] = growth / 2**20
            result[f"{name}_rss_mib"] = process_peak / 2**20
    else:
        for name in names:
            call(name)  # warm-up at full size
        times = {name: [] for name in names}
        for _ in range(repeats):
            for name in names:
                start = time.perf_counter()
                call(name)
                times[name].append(time.perf_counter() - start)
        for name in names:
            result[f"{name}_s"] = min(times[name])
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(n, mode, args):
    command = [sys.executable, os.path.abspath(__file__), "--_worker", str(n), "--_mode", mode, "--ssamba-layers",
               str(args.ssamba_layers), "--threads", str(args.threads), "--repeats", str(args.repeats),
               "--device", args.device, "--ast-attn", args.ast_attn, "--autocast", args.autocast]
    proc = subprocess.run(command, capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else str(proc.returncode))
    return json.loads(line[len("RESULT "):])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=None)
    parser.add_argument("--long", action="store_true", help="add the 22k-token point")
    parser.add_argument("--ssamba-layers", type=int, default=24)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ast-attn", default="sdpa", choices=["sdpa", "eager"],
                        help="AST's attention: sdpa (fused, memory-light) or eager (plain softmax(QK^T)V, as SSAST)")
    parser.add_argument("--autocast", default="none", choices=["none", "bf16"],
                        help="run both forwards under torch.autocast(bfloat16) (the scan kernels stay float32)")
    parser.add_argument("--plot", default="benchmarks/ssamba_vs_ast.png", help="PNG path ('' to skip)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--_worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_mode", default="time", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._worker is not None:
        worker(args._worker, args._mode, args.ssamba_layers, args.threads, args.repeats, args.device, args.ast_attn,
               args.autocast)
        return

    tokens = args.tokens or DEFAULT_TOKENS + (LONG_TOKENS if args.long else [])
    print(f"SSAMBA-tiny ({args.ssamba_layers} layers, D 192) vs AST (12 layers, D 192, 3 heads, {args.ast_attn}), "
          f"batch 2, {'bfloat16 autocast' if args.autocast == 'bf16' else 'fp32'}, "
          f"{args.device}, {args.threads} threads, best of {args.repeats}")
    header = (f"{'tokens':>7} {'frames':>7} | {'SSAMBA s':>9} {'AST s':>9} {'AST/SSAMBA':>10} | "
              f"{'SSAMBA MiB':>10} {'AST MiB':>9} {'AST/SSAMBA':>10} | {'SSAMBA RSS MiB':>14} {'AST RSS MiB':>11}")
    print(header + "\n" + "-" * len(header))
    rows = []
    for n in tokens:
        try:
            row = run_worker(n, "time", args)
            for name in ("ssamba", "ast"):
                row.update(run_worker(n, f"mem:{name}", args))
        except RuntimeError as error:
            print(f"{n:>7} failed: {error}")
            continue
        rows.append(row)
        print(f"{row['tokens']:>7} {row['frames']:>7} | {row['ssamba_s']:>9.3f} {row['ast_s']:>9.3f} "
              f"{row['ast_s'] / row['ssamba_s']:>9.2f}x | {row['ssamba_peak_mib']:>10.0f} {row['ast_peak_mib']:>9.0f} "
              f"{row['ast_peak_mib'] / max(row['ssamba_peak_mib'], 1e-9):>9.2f}x | "
              f"{row.get('ssamba_rss_mib', float('nan')):>14.0f} {row.get('ast_rss_mib', float('nan')):>11.0f}",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if args.plot and rows:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed: no plot (pip install matplotlib)")
            return
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        x = [r["tokens"] for r in rows]
        labels = (("ssamba", f"SSAMBA-tiny ({args.ssamba_layers} layers)"), ("ast", f"AST (12 layers, {args.ast_attn})"))
        for key, label in labels:
            axes[0].plot(x, [r[f"{key}_s"] for r in rows], "o-", label=label)
            axes[1].plot(x, [r[f"{key}_peak_mib"] for r in rows], "o-", label=label)
        for ax, title in zip(axes, ("forward time (s), batch 2", "peak memory growth (MiB)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("tokens")
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
