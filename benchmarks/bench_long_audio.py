#!/usr/bin/env python
"""Long audio on the CPU: time and peak memory of one recording of 1, 5 and 30 minutes through MambaForCTC and SSAMBA.

Each (model, duration) runs in a fresh process: build the model (random weights of the recipe's size: what is measured
is the forward, not what it says), generate the recording (speech-like noise bursts, 16 kHz float32, kept in memory
as a user's decoded file would be), warm the kernels on a 2 s clip, then time features + forward without gradients.

- `ctc`: `train_ctc.py`'s default MambaForCTC (width 96, 4 bidirectional blocks, 4x conv subsampling), CTC logits
  for every frame.
- `ctc-mamba2`: the same MambaForCTC with Mamba-2 (SSD) mixers (`mixer_type="mamba2"`, head dim 32).
- `ssamba`: the main job's SSAMBA (width 128, 8 layers, frame tokens of all mels x 4 frames), the whole recording as
  one token sequence (`interpolate_pos_encoding=True`), frame-level hidden states.
- `ssamba-tiny`: SSAMBA-tiny (width 192, 24 layers, 16x16 patches).
- `ast-tiny`: the Transformer SSAMBA replaces, at SSAMBA-tiny's token count: transformers' `ASTModel` (width 192, 12
  layers, 3 heads, sdpa attention, 16x16 patches), built with position embeddings for the recording's length (AST
  cannot read past `max_length`), so the whole recording is one attention sequence. A row that runs past `--timeout`
  seconds or out of memory is reported as failed.

Peak memory is the process's peak resident set (`ru_maxrss`); "growth" is that peak minus the resident set just
before the timed call (model, recording and warm-up already in memory), i.e. what the forward itself needs.

    python benchmarks/bench_long_audio.py                          # ctc and ssamba at 1, 5, 30 minutes
    python benchmarks/bench_long_audio.py --models ssamba-tiny --minutes 1,5 --threads 2
    python benchmarks/bench_long_audio.py --models ctc-mamba2,ast-tiny --timeout 420   # Mamba-2; the Transformer

Prints a table (seconds, seconds per audio minute, peak, growth) and, per model, the growth at the longest duration
(target < 300 MB) and the time ratio longest / shortest against the duration ratio (linear: equal).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from fresh_process import forced_long_input_paths, rss_mb, run_fresh  # noqa: E402
SAMPLING_RATE = 16000



def recording(minutes: float, seed: int = 0):
    """Noise bursts with a pitch-like carrier and pauses, generated a second at a time (no large temporaries)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    seconds = int(round(minutes * 60))
    audio = np.empty(seconds * SAMPLING_RATE, dtype=np.float32)
    t = np.arange(SAMPLING_RATE, dtype=np.float32) / SAMPLING_RATE
    for s in range(seconds):
        carrier = np.sin(2 * np.pi * rng.uniform(100, 300) * t) * (t * rng.uniform(2, 5) % 1 > 0.4)
        audio[s * SAMPLING_RATE:(s + 1) * SAMPLING_RATE] = 0.2 * carrier + 0.02 * rng.standard_normal(SAMPLING_RATE)
    return audio


def build(model_name: str, frames: int):
    """(model, featurise(audio) -> model kwargs, read(outputs) -> the per-frame tensor); `frames`: the recording's
    filter-bank frames (AST's grid is fixed when it is built)."""
    import torch

    import mamba_zoo  # noqa: F401
    from mamba_zoo import (MambaCTCConfig, MambaCTCFeatureExtractor, MambaForCTC, SSAMBAConfig,
                           SSAMBAFeatureExtractor, SSAMBAModel)

    torch.manual_seed(0)
    if model_name in ("ctc", "ctc-mamba2"):
        mixer = {"mixer_type": "mamba2"} if model_name == "ctc-mamba2" else {}
        model = MambaForCTC(MambaCTCConfig(vocab_size=32, hidden_size=96, num_hidden_layers=4,
                                           subsampling_conv_channels=32, intermediate_size=384, **mixer)).eval()
        extractor = MambaCTCFeatureExtractor()

        def featurise(audio):
            features = extractor(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt")
            return {"input_features": features["input_features"]}

        return model, featurise, lambda out: out.logits
    if model_name in ("ssamba", "ssamba-tiny"):
        shape = (dict(hidden_size=128, num_hidden_layers=8, patch_size=(128, 4), frequency_stride=128, time_stride=4)
                 if model_name == "ssamba"
                 else dict(hidden_size=192, num_hidden_layers=24))
        model = SSAMBAModel(SSAMBAConfig(max_length=128, drop_path_rate=0.0, **shape)).eval()

        def featurise(audio):
            extractor = SSAMBAFeatureExtractor()
            extractor.max_length = extractor.num_frames(len(audio))
            values = extractor(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt")["input_values"]
            return {"input_values": values, "interpolate_pos_encoding": True}

        return model, featurise, lambda out: out.last_hidden_state
    if model_name == "ast-tiny":
        from transformers import ASTConfig, ASTModel

        extractor = SSAMBAFeatureExtractor(max_length=frames)  # the same kaldi filter banks as AST's own extractor
        model = ASTModel(ASTConfig(
            hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768, max_length=frames,
            num_mel_bins=128, patch_size=16, frequency_stride=16, time_stride=16, attn_implementation="sdpa")).eval()

        def featurise(audio):
            return {"input_values": extractor(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt")["input_values"]}

        return model, featurise, lambda out: out.last_hidden_state
    raise ValueError(f"unknown model {model_name!r}: ctc, ctc-mamba2, ssamba, ssamba-tiny or ast-tiny")


def run_one(model_name: str, minutes: float, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    audio = recording(minutes)
    model, featurise, read = build(model_name, 1 + (len(audio) - 400) // 160)
    if model_name != "ast-tiny":  # (AST reads only its own length and has no kernels to compile)
        with torch.no_grad():
            read(model(**featurise(recording(2 / 60, seed=1))))  # compile / warm the kernels, short and long paths
            with forced_long_input_paths():
                read(model(**featurise(recording(2 / 60, seed=1))))
    before = rss_mb()
    started = time.perf_counter()
    with torch.no_grad():
        inputs = featurise(audio)
        featurised = time.perf_counter()
        frames = read(model(**inputs))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model_name, "minutes": minutes, "seconds": round(seconds, 2),
            "feature_seconds": round(featurised - started, 2), "output_frames": int(frames.shape[1]),
            "seconds_per_audio_minute": round(seconds / minutes, 3), "rss_before_mb": round(before),
            "peak_mb": round(peak), "growth_mb": round(peak - before)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ctc,ssamba")
    parser.add_argument("--minutes", default="1,5,30")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds per row (a fresh process) before it is reported as timed out")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "MINUTES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], float(args.one[1]), args.threads)))
        return
    rows = []
    print("| model | audio | seconds | s per audio minute | features s | output frames | peak RSS | growth |")
    print("|---|---|---|---|---|---|---|---|")
    for model_name in args.models.split(","):
        for minutes in (float(m) for m in args.minutes.split(",")):
            row, error = run_fresh(__file__, ["--one", model_name, str(minutes), "--threads", str(args.threads)],
                                   timeout=args.timeout)
            if row is None:
                print(f"| {model_name} | {minutes:g} min | failed: {error} |")
                continue
            rows.append(row)
            print(f"| {model_name} | {minutes:g} min | {row['seconds']} | {row['seconds_per_audio_minute']} | "
                  f"{row['feature_seconds']} | {row['output_frames']} | {row['peak_mb']} MB | {row['growth_mb']} MB |",
                  flush=True)
    for model_name in args.models.split(","):
        mine = [r for r in rows if r["model"] == model_name]
        if len(mine) >= 2:
            short, long = mine[0], mine[-1]
            print(f"{model_name}: growth at {long['minutes']:g} min {long['growth_mb']} MB (target < 300); time "
                  f"{long['seconds'] / short['seconds']:.1f}x for {long['minutes'] / short['minutes']:.0f}x the audio")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
