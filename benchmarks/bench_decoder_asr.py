#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Decoding speed of MambaDecoderOnlyASR vs a transformers decoder-only Transformer (Llama) with KV cache.

For speech prefixes of 1 s to 60 s, both models (same width, depth and about the same parameter count, random
weights) prefill the prefix and then generate text tokens greedily with their caches. Reported per prefix length:
prefill seconds, decoding tokens/s (from the difference of two `generate` runs with different `max_new_tokens`, so
prefill cancels out) and the cache size after the prefix. Mamba's cache has a fixed size and its per-token cost does not
depend on the prefix; the KV cache grows with it. Everything is measured side by side in one process.

    python benchmarks/bench_decoder_asr.py                    # default training size (d=128, 6 layers)
    python benchmarks/bench_decoder_asr.py --hidden_size 384 --num_layers 16 --expand 4   # the paper's size
    python benchmarks/bench_decoder_asr.py --ctc_weight 0.5 --num_beams 4 --general_path   # the recipe's decoding

`--ctc_weight W --num_beams K` decode Mamba as the recipe's checkpoints do by default (joint CTC/attention scores, beam
search; the model gets a CTC head); the Llama decodes greedily either way. `--general_path` adds a Mamba column with
the fused CPU decoding kernels off (`cpu_decode.DECODE_KERNELS`, `ctc_prefix_scoring.CPU_KERNEL`), same process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mamba_zoo import MambaASRConfig, MambaDecoderOnlyASR, cpu_decode, ctc_prefix_scoring  # noqa: E402

FRAMES_PER_SECOND = 100  # 10 ms fbank hop


def cache_megabytes(cache) -> float:
    total = 0
    for layer in cache.layers:
        for name in ("conv_states", "recurrent_states", "keys", "values"):
            value = getattr(layer, name, None)
            tensors = list(value.values()) if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
            total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return total / 2**20


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fused_kernels(on: bool) -> None:
    cpu_decode.DECODE_KERNELS = on
    ctc_prefix_scoring.CPU_KERNEL = on


@torch.no_grad()
def bench_mamba(model, seconds: float, new_tokens: int, repeats: int, ctc_weight: float = 0.0,
                num_beams: int = 1) -> dict:
    features = torch.randn(1, int(seconds * FRAMES_PER_SECOND), model.config.num_mel_bins)
    common = dict(input_features=features, do_sample=False, eos_token_id=None, pad_token_id=0,
                  ctc_weight=ctc_weight, num_beams=num_beams)
    model.generate(**common, max_new_tokens=2)  # warm-up
    short = timed(lambda: model.generate(**common, max_new_tokens=1), repeats)
    long = timed(lambda: model.generate(**common, max_new_tokens=new_tokens + 1), repeats)
    cache = model.make_cache()
    model(input_ids=torch.tensor([[model.config.generate_text_token_id]]), input_features=features, cache=cache,
          use_cache=True)
    prefix = int(model.model.subsampler.output_lengths(torch.tensor(features.shape[1]))) + 2
    return {"prefix_tokens": prefix, "prefill_s": short, "tokens_per_s": new_tokens / max(long - short, 1e-9),
            "cache_mb": cache_megabytes(cache)}


@torch.no_grad()
def bench_llama(model, prefix: int, new_tokens: int, repeats: int) -> dict:
    embeds = torch.randn(1, prefix, model.config.hidden_size) * 0.02
    common = dict(inputs_embeds=embeds, do_sample=False, eos_token_id=None, pad_token_id=0)
    model.generate(**common, max_new_tokens=2)  # warm-up
    short = timed(lambda: model.generate(**common, max_new_tokens=1), repeats)
    long = timed(lambda: model.generate(**common, max_new_tokens=new_tokens + 1), repeats)
    out = model(inputs_embeds=embeds, use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return {"prefill_s": short, "tokens_per_s": new_tokens / max(long - short, 1e-9), "cache_mb": cache_megabytes(cache)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", default="1,5,15,30,60")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=6)
    parser.add_argument("--expand", type=int, default=2)
    parser.add_argument("--num_subsampling_layers", type=int, default=3)
    parser.add_argument("--speech_prefix", default="parallel", choices=["none", "parallel", "serial"])
    parser.add_argument("--mixer_type", default="mamba", choices=["mamba", "mamba2"])
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ctc_weight", type=float, default=0.0, help="joint CTC/attention weight for Mamba")
    parser.add_argument("--num_beams", type=int, default=1, help="beams for Mamba")
    parser.add_argument("--general_path", action="store_true", help="also Mamba with the fused kernels off")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab = 34
    mamba = MambaDecoderOnlyASR(MambaASRConfig(
        vocab_size=vocab, speech_input="features", hidden_size=args.hidden_size, num_hidden_layers=args.num_layers,
        expand=args.expand, speech_prefix=args.speech_prefix, mixer_type=args.mixer_type,
        num_subsampling_layers=args.num_subsampling_layers, mamba2_head_dim=32,
        ctc_loss_weight=0.3 if args.ctc_weight > 0 else 0.0,
    )).eval()
    mamba_params = sum(p.numel() for p in mamba.parameters())
    # a Llama of the same width and depth, MLP width chosen to match the parameter count
    per_layer = (mamba_params - sum(p.numel() for p in mamba.model.subsampler.parameters()) - vocab * args.hidden_size) / args.num_layers
    intermediate = max(int((per_layer - 4 * args.hidden_size**2 - 2 * args.hidden_size) / (3 * args.hidden_size)), 8)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=args.hidden_size, intermediate_size=intermediate, num_hidden_layers=args.num_layers,
        num_attention_heads=max(args.hidden_size // 32, 1), num_key_value_heads=max(args.hidden_size // 32, 1),
        max_position_embeddings=8192, tie_word_embeddings=True, attn_implementation="sdpa",
    )).eval()
    llama_params = sum(p.numel() for p in llama.parameters())
    print(f"MambaDecoderOnlyASR ({args.mixer_type}, SP={args.speech_prefix}): {mamba_params / 1e6:.2f}M parameters; "
          f"Llama (sdpa, KV cache): {llama_params / 1e6:.2f}M; threads {torch.get_num_threads()}; "
          f"{args.new_tokens} new tokens, median of {args.repeats}; Mamba decodes with ctc_weight {args.ctc_weight:g}, "
          f"{args.num_beams} beam(s), Llama greedily")
    general = " Mamba tok/s, kernels off |" if args.general_path else ""
    print("\n| audio s | prefix tokens | Mamba prefill s | Mamba tok/s | Mamba cache MB | Llama prefill s | "
          f"Llama tok/s | Llama KV MB | Mamba/Llama tok/s |{general}")
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if args.general_path else ""))
    for seconds in [float(s) for s in args.seconds.split(",")]:
        m = bench_mamba(mamba, seconds, args.new_tokens, args.repeats, args.ctc_weight, args.num_beams)
        l = bench_llama(llama, m["prefix_tokens"], args.new_tokens, args.repeats)
        line = (f"| {seconds:g} | {m['prefix_tokens']} | {m['prefill_s']:.3f} | {m['tokens_per_s']:.1f} | "
                f"{m['cache_mb']:.3f} | {l['prefill_s']:.3f} | {l['tokens_per_s']:.1f} | {l['cache_mb']:.3f} | "
                f"{m['tokens_per_s'] / l['tokens_per_s']:.2f} |")
        if args.general_path:
            fused_kernels(False)
            try:
                off = bench_mamba(mamba, seconds, args.new_tokens, args.repeats, args.ctc_weight, args.num_beams)
            finally:
                fused_kernels(True)
            line += f" {off['tokens_per_s']:.1f} |"
        print(line, flush=True)


if __name__ == "__main__":
    main()
