#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""The working tree's mamba_zoo against an earlier revision's, side by side in one process: is a change slower?

`git archive` copies REV's `src/mamba_zoo` into a temporary folder as the package `mamba_zoo_base` (the library's
sibling modules import each other only as `from .module import X`, so a renamed copy works). Both packages build the
same workloads with the same weights (the base loads the current model's state dict, strictly: parameter names are
part of what must not change) and the same inputs; the script checks that both compute the same outputs, then times
them round-robin (base, current, base, current, ...) so that load from elsewhere hits both alike, and prints each
one's best and median wall time and the ratio current / base.

    python benchmarks/bench_compare_revisions.py --base HEAD~5
    python benchmarks/bench_compare_revisions.py --base 03d9db1 --rounds 7 --threads 1

Workloads: SSAMBA-tiny (24 layers, width 192) no-grad forward at 512 and 2048 tokens (the fused CPU inference path);
a bidirectional `MambaMixer` forward+backward (width 192, L 2048: the training path); `selective_scan_fn` forward +
backward (B4 D384 N16 L2048); BlackMamba cached decoding (16 tokens after a 64-token prompt); a MADEON forward.
"""

from __future__ import annotations

import argparse
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def import_base_package(revision: str, folder: Path):
    """REV's `src/mamba_zoo`, importable as `mamba_zoo_base`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src/mamba_zoo"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "src" / "mamba_zoo").rename(folder / "mamba_zoo_base")
    sys.path.insert(0, str(folder))
    return importlib.import_module("mamba_zoo_base")


def _ssamba(package, tokens):
    config = package.SSAMBAConfig(hidden_size=192, num_hidden_layers=24, num_mel_bins=128, max_length=tokens // 8 * 10,
                                  patch_size=16, frequency_stride=16, time_stride=10, drop_path_rate=0.0, num_labels=10)
    model = package.SSAMBAForAudioClassification(config).eval()
    inputs = {"input_values": torch.randn(2, config.max_length, 128, generator=torch.Generator().manual_seed(0))}

    def run():
        with torch.no_grad():
            return model(**inputs).logits
    return model, run


def _mixer(package):
    mixer = package.MambaMixer(192, d_state=16, bidirectional=True, divide_out=True)
    x = torch.randn(4, 2048, 192, generator=torch.Generator().manual_seed(0))

    def run():
        mixer.zero_grad(set_to_none=True)
        out = mixer(x)
        out.pow(2).mean().backward()
        return torch.cat([out.detach().flatten()[:1000], mixer.in_proj.weight.grad.flatten()[:1000]])
    return mixer, run


def _scan(package):
    g = torch.Generator().manual_seed(0)
    b, d, n, length = 4, 384, 16, 2048
    u, delta, z = (torch.randn(b, d, length, generator=g).requires_grad_() for _ in range(3))
    A = (-torch.rand(d, n, generator=g) - 0.5).requires_grad_()
    B, C = (torch.randn(b, n, length, generator=g).requires_grad_() for _ in range(2))
    D = torch.randn(d, generator=g).requires_grad_()

    def run():
        for t in (u, delta, z, A, B, C, D):
            t.grad = None
        out = package.selective_scan_fn(u, delta, A, B, C, D=D, z=z, delta_softplus=True, backend="cpu")
        out.sum().backward()
        return torch.cat([out.detach().flatten()[:1000], A.grad.flatten()])
    return None, run


def _blackmamba_decode(package):
    config = package.BlackMambaConfig(vocab_size=512, hidden_size=256, layer_types=["mamba", "moe"] * 4,
                                      ffn_hidden_size=512, num_experts=8, state_size=16)
    model = package.BlackMambaForCausalLM(config).eval()
    prompt = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(0))

    def run():
        with torch.no_grad():
            return model.generate(prompt, max_new_tokens=16, min_new_tokens=16, do_sample=False).float()
    return model, run


def _madeon(package):
    config = package.MambaASRConfig(vocab_size=64, hidden_size=192, num_hidden_layers=8, expand=2, speech_input="features",
                                    num_mel_bins=80, speech_prefix="parallel")
    model = package.MambaDecoderOnlyASR(config).eval()
    g = torch.Generator().manual_seed(0)
    text = torch.randint(6, 64, (4, 24), generator=g)
    text[:, 0] = config.generate_text_token_id
    inputs = {"input_features": torch.randn(4, 800, 80, generator=g), "input_ids": text, "use_cache": False}

    def run():
        with torch.no_grad():
            return model(**inputs).logits
    return model, run


WORKLOADS = {
    "SSAMBA-tiny no-grad fwd, 2 x 512 tokens": lambda p: _ssamba(p, 512),
    "SSAMBA-tiny no-grad fwd, 2 x 2048 tokens": lambda p: _ssamba(p, 2048),
    "bidirectional MambaMixer fwd+bwd, B4 D192 L2048": _mixer,
    "selective_scan_fn cpu fwd+bwd, B4 D384 N16 L2048": _scan,
    "BlackMamba generate 16 tokens after 64 (cached)": _blackmamba_decode,
    "MADEON no-grad fwd, 4 x (200 speech + 24 text)": _madeon,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git revision to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=5, help="timed calls of each side per workload")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", nargs="*", default=None, help="substrings of workload names to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import mamba_zoo as current

    with tempfile.TemporaryDirectory() as folder:
        base = import_base_package(args.base, Path(folder))
        print(f"base {args.base} vs working tree, {args.threads} thread(s), best / median of {args.rounds} rounds\n")
        print(f"| workload | base best | current best | base median | current median | current / base (best) |")
        print("|---|---|---|---|---|---|")
        for name, build in WORKLOADS.items():
            if args.only and not any(s in name for s in args.only):
                continue
            torch.manual_seed(0)
            model, run_current = build(current)
            torch.manual_seed(0)
            base_model, run_base = build(base)
            if model is not None:
                base_model.load_state_dict(model.state_dict(), strict=True)
            expected, got = run_base(), run_current()  # also the warm-up (numba JIT / cache load)
            if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
                raise SystemExit(f"{name}: the two revisions compute different outputs "
                                 f"(max difference {(got - expected).abs().max().item():.3g})")
            times = {"base": [], "current": []}
            for _ in range(args.rounds):
                for side, run in (("base", run_base), ("current", run_current)):
                    start = time.perf_counter()
                    run()
                    times[side].append(time.perf_counter() - start)
            best = {side: min(values) for side, values in times.items()}
            median = {side: statistics.median(values) for side, values in times.items()}
            print(f"| {name} | {best['base'] * 1e3:.1f} ms | {best['current'] * 1e3:.1f} ms | "
                  f"{median['base'] * 1e3:.1f} ms | {median['current'] * 1e3:.1f} ms | "
                  f"{best['current'] / best['base']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
