#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Cached decoding cost vs context length: BlackMamba (ours) vs transformers' MambaForCausalLM and LlamaForCausalLM.

All three have random weights and about the same number of parameters active per token. For every context length the
prompt is prefilled once per model (not timed as decoding), then single tokens are decoded from the cache; the models are
measured round-robin in the same process, so background load affects them alike. Reported: median per-token latency
(ms), tokens/s, and ratios. A state-space model's step cost does not depend on the context; a KV-cached transformer's
grows with it.

    python benchmarks/bench_generation.py                      # contexts 256 .. 8192, batch 1
    python benchmarks/bench_generation.py --contexts 256 1024 --steps 8 --rounds 2   # quick look
    python benchmarks/bench_generation.py --uncached           # also ours without a cache (full re-forward per token)
    python benchmarks/bench_generation.py --general_path       # also ours with the fused decoding kernels off

Ours runs its cached steps on the fused CPU decoding kernels (`mamba_zoo.cpu_decode`); `--general_path` adds a column
for the same model on its general PyTorch path (`cpu_decode.DECODE_KERNELS = False`), measured in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mamba_zoo import BlackMambaConfig, BlackMambaForCausalLM, cpu_decode  # noqa: E402

GENERAL_PATH = "blackmamba (general path)"


def active_parameters(model: BlackMambaForCausalLM) -> int:
    """Parameters of the blocks one token touches (one expert per MoE layer); embeddings and head excluded."""
    inactive = 0
    for layer_type, layer in zip(model.config.layer_types, model.backbone.layers):
        if layer_type == "moe":
            inactive += (model.config.num_experts - 1) * sum(p.numel() for p in layer.mixer.local_experts[0].parameters())
    return sum(p.numel() for p in model.backbone.layers.parameters()) - inactive


def block_parameters(model) -> int:
    """Parameters of the residual blocks (embeddings, final norm and head excluded)."""
    base = getattr(model, "backbone", None) or model.model
    return sum(p.numel() for p in base.layers.parameters())


def build_models(args):
    from transformers import LlamaConfig, LlamaForCausalLM, MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    ours = BlackMambaForCausalLM(BlackMambaConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, layer_types=["mamba", "moe"] * args.pairs,
        ffn_hidden_size=2 * args.hidden_size, num_experts=8, state_size=16,
    ))
    target = active_parameters(ours)
    # transformers Mamba: as many layers as match our active parameters (mambapy only speeds up its prefill)
    mamba_layer = MambaForCausalLM(MambaConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=1, state_size=16)).backbone.layers[0]
    mamba_layers = max(1, round(target / sum(p.numel() for p in mamba_layer.parameters())))
    mamba = MambaForCausalLM(MambaConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=mamba_layers, state_size=16,
        use_mambapy=True,
    ))
    llama_kwargs = dict(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=int(2.75 * args.hidden_size),
        num_attention_heads=max(1, args.hidden_size // 64), num_key_value_heads=max(1, args.hidden_size // 64),
        max_position_embeddings=2 * max(args.contexts) + 64, attn_implementation="sdpa",
    )
    llama_layer = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, **llama_kwargs)).model.layers[0]
    per_layer = sum(p.numel() for p in llama_layer.parameters())
    llama = LlamaForCausalLM(LlamaConfig(num_hidden_layers=max(1, round(target / per_layer)), **llama_kwargs))
    models = {"blackmamba (ours)": ours, "transformers Mamba": mamba, "transformers Llama": llama}
    for model in models.values():
        model.eval()
    return models, target


@torch.no_grad()
def prefill(model, prompt):
    out = model(prompt, use_cache=True)
    return out.cache, out.logits[:, -1:].argmax(-1)


@torch.no_grad()
def decode_steps(model, cache, token, steps: int) -> tuple[list[float], torch.Tensor]:
    """Greedy single-token steps from `cache`; returns the per-step wall times (s)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = model(token, cache=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        times.append(time.perf_counter() - start)
    return times, token


@torch.no_grad()
def uncached_step_time(model, prompt, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        logits = model(prompt, use_cache=False).logits
        times.append(time.perf_counter() - start)
        prompt = torch.cat([prompt, logits[:, -1:].argmax(-1)], dim=1)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--steps", type=int, default=16, help="decoded tokens per round and model")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin repetitions")
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=4, help="mamba+moe pairs in ours")
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--uncached", action="store_true", help="also time ours recomputing the full context per token")
    parser.add_argument("--general_path", action="store_true",
                        help="also time ours with the fused decoding kernels off (its general PyTorch path)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    models, target = build_models(args)
    if args.general_path:
        models[GENERAL_PATH] = models["blackmamba (ours)"]
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds")
    for name, model in models.items():
        if name == GENERAL_PATH:
            continue
        extra = f", {active_parameters(model) / 1e6:.2f}M active" if isinstance(model, BlackMambaForCausalLM) else ""
        print(f"  {name}: {model.config.num_hidden_layers} layers, {block_parameters(model) / 1e6:.2f}M "
              f"block parameters{extra}")

    results = []
    for context in args.contexts:
        prompt = torch.randint(2, args.vocab_size, (args.batch_size, context))
        state, prefill_s = {}, {}
        for name, model in models.items():
            start = time.perf_counter()
            state[name] = prefill(model, prompt)
            prefill_s[name] = time.perf_counter() - start
            cpu_decode.DECODE_KERNELS = name != GENERAL_PATH
            decode_steps(model, *state[name], 2)  # warm-up
        times = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                cpu_decode.DECODE_KERNELS = name != GENERAL_PATH
                step_times, token = decode_steps(model, state[name][0], state[name][1], args.steps)
                state[name] = (state[name][0], token)
                times[name].extend(step_times)
        cpu_decode.DECODE_KERNELS = True
        row = {"context": context}
        for name in models:
            ms = 1000 * statistics.median(times[name])
            row[name] = {"ms_per_token": ms, "tokens_per_s": args.batch_size * 1000 / ms, "prefill_s": prefill_s[name]}
        if args.uncached:
            row["blackmamba uncached"] = {"ms_per_token": 1000 * uncached_step_time(models["blackmamba (ours)"],
                                                                                  prompt, 3)}
        results.append(row)
        cells = "  ".join(f"{name.split()[0]} {row[name]['ms_per_token']:.2f} ms" for name in models)
        print(f"context {context:>5}: {cells}", flush=True)

    names = list(models)
    print()
    header = "| context | " + " | ".join(f"{n} ms/token (tok/s)" for n in names)
    header += " | ours vs Mamba | ours vs Llama |" + (" ours uncached ms/token |" if args.uncached else "")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in results:
        ours = row[names[0]]["ms_per_token"]
        cells = " | ".join(f"{row[n]['ms_per_token']:.2f} ({row[n]['tokens_per_s']:.0f})" for n in names)
        line = (f"| {row['context']} | {cells} | {row[names[1]]['ms_per_token'] / ours:.2f}x | "
                f"{row[names[2]]['ms_per_token'] / ours:.2f}x |")
        if args.uncached:
            line += f" {row['blackmamba uncached']['ms_per_token']:.1f} |"
        print(line)
    faster = {row["context"] for row in results if row[names[2]]["ms_per_token"] > row[names[0]]["ms_per_token"]}
    contexts = [row["context"] for row in results]
    first = next((c for i, c in enumerate(contexts) if set(contexts[i:]) <= faster), None)
    spread = [row[names[0]]["ms_per_token"] for row in results]
    summary = (f"\nours: {min(spread):.2f} to {max(spread):.2f} ms per token over contexts {contexts[0]}..{contexts[-1]} "
               f"(max/min {max(spread) / min(spread):.2f})")
    summary += f"; faster than Llama from context {first} on" if first else "; not faster than Llama at these contexts"
    print(summary)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "active_parameters": target, "results": results},
                                              indent=1))


if __name__ == "__main__":
    main()
