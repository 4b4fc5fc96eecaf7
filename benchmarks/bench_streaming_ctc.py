#!/usr/bin/env python
"""Streaming MambaForCTC (`mamba_zoo.streaming_ctc.MambaCTCStreamer`) against offline decoding of the same checkpoint:
WER on the test voices (and the held-out engine), real-time factor on 1 thread, and per-chunk compute time.

The test utterances (1-4 s digit strings) are joined into one stream per split (0.3 s of silence between them) and
fed in 20 ms pieces, as from a microphone; the streamed transcript is scored against the joined references. Offline =
the whole stream through the model at once (greedy). Each streaming setting is (chunk, left context, right context)
seconds; the algorithmic latency is chunk + right context, plus the compute time of a chunk.

    python training/train_ctc.py                                   # the checkpoint (outputs/mamba-ctc-digits)
    python benchmarks/bench_streaming_ctc.py [--checkpoint DIR] [--settings 0.64:2.56:1.28,0.32:2.56:1.28]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))


def joined_stream(audio: list, texts: list, gap_seconds: float = 0.3, rate: int = 16000):
    gap = np.zeros(int(gap_seconds * rate), dtype=np.float32)
    pieces = []
    for clip in audio:
        pieces += [np.asarray(clip, dtype=np.float32), gap]
    return np.concatenate(pieces), " ".join(texts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "outputs" / "mamba-ctc-digits"))
    parser.add_argument("--settings", default="0.64:2.56:1.28,0.32:2.56:1.28,0.64:2.56:2.56,0.64:2.56:0.64,"
                                               "0.64:2.56:0.32", help="chunk:left:right seconds, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--piece_seconds", type=float, default=0.02)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import jiwer

    import data_loading
    from common import parse_engines
    from mamba_zoo import MambaCTCProcessor, MambaForCTC, normalize_transcript
    from mamba_zoo.corpora import load_transcribed
    from mamba_zoo.streaming_ctc import MambaCTCStreamer

    results = json.loads((Path(args.checkpoint) / "eval_results.json").read_text())
    model = MambaForCTC.from_pretrained(args.checkpoint).eval()
    processor = MambaCTCProcessor.from_pretrained(args.checkpoint)
    engines = ",".join(results.get("training_engines") or ["espeak-ng"])
    corpus = load_transcribed("digits", num_train=results.get("num_train", 2000), num_eval=200,
                              engines=parse_engines(engines)[0], engine_weights=results.get("engine_weights"),
                              heldout_engines=tuple(results.get("heldout_engines") or ()), progress=False)
    rows = []
    print("| split | decoding | chunk / left / right s | WER | CER | real-time factor "
          "| compute per chunk (mean / max ms) |")
    print("|---|---|---|---|---|---|---|")
    for split in [s for s in ("test", "heldout_engine") if s in corpus]:
        audio, texts, _ = data_loading.decode_split(corpus[split], 16000)
        stream, reference = joined_stream(audio, [normalize_transcript(t) for t in texts])
        reference = normalize_transcript(reference)
        with torch.no_grad():
            features = processor.feature_extractor(stream, sampling_rate=16000, return_tensors="pt")
            started = time.perf_counter()
            logits = model(input_features=features["input_features"]).logits
            offline_seconds = time.perf_counter() - started
        offline = normalize_transcript(processor.batch_decode(logits.argmax(-1))[0])
        seconds = len(stream) / 16000
        row = {"split": split, "decoding": "offline", "wer": jiwer.wer(reference, offline),
               "cer": jiwer.cer(reference, offline), "rtf": offline_seconds / seconds}
        rows.append(row)
        print(f"| {split} | offline | - | {100 * row['wer']:.1f}% | {100 * row['cer']:.1f}% | {row['rtf']:.4f} | - |",
              flush=True)
        piece = int(args.piece_seconds * 16000)
        for setting in args.settings.split(","):
            chunk, left, right = (float(x) for x in setting.split(":"))
            streamer = MambaCTCStreamer(model, processor, chunk_seconds=chunk, left_context_seconds=left,
                                        right_context_seconds=right)
            chunk_times, text = [], ""
            started = time.perf_counter()
            for i in range(0, len(stream), piece):
                t0 = time.perf_counter()
                windows_before = streamer.last_window
                text += streamer.accept(stream[i:i + piece])
                if streamer.last_window is not windows_before:
                    chunk_times.append(time.perf_counter() - t0)
            text += streamer.finish()
            total = time.perf_counter() - started
            hypothesis = normalize_transcript(text)
            row = {"split": split, "decoding": "streaming", "chunk": chunk, "left": left, "right": right,
                   "wer": jiwer.wer(reference, hypothesis), "cer": jiwer.cer(reference, hypothesis),
                   "rtf": total / seconds, "chunk_ms_mean": 1000 * float(np.mean(chunk_times)),
                   "chunk_ms_max": 1000 * float(np.max(chunk_times)), "latency_s": chunk + right}
            rows.append(row)
            print(f"| {split} | streaming | {chunk} / {left} / {right} | {100 * row['wer']:.1f}% | "
                  f"{100 * row['cer']:.1f}% | {row['rtf']:.4f} | {row['chunk_ms_mean']:.0f} / "
                  f"{row['chunk_ms_max']:.0f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
