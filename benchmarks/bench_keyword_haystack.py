#!/usr/bin/env python
"""Audio needle in a haystack: keywords hidden in 1, 5 and 30-minute recordings, found by the keyword-search frame
classifier (`training/train_keyword_search.py`) reading each recording whole, in one pass.

A haystack is a row of one-second background clips from the keyword corpus's test voices (noise alone and
non-keyword words, `_silence_` / `_unknown_`), with `--needles_per_minute` keyword clips (test voices, never heard in
training) put in at random seconds. `keyword_search.find_keywords` returns events; a detection counts when its label
matches and its centre lies within 0.25 s of the needle's second (`match_events`). Shorter lengths are scored over as
many recordings as it takes to match the longest one's needles (30 one-minute recordings against one of 30 minutes),
so every F1 rests on the same number of needles. Each length runs in a fresh process: time per recording, real-time
factor, peak resident set and its growth over the process before the search (model loaded).

    python training/train_keyword_search.py                      # the checkpoint (outputs/ssamba-keyword-search)
    python benchmarks/bench_keyword_haystack.py                   # 1, 5, 30 minutes
    python benchmarks/bench_keyword_haystack.py --checkpoint DIR --minutes 1,5 --threads 1

Prints the table and F1(longest) - F1(1 min) (target: within 5 points).

AST, for comparison, cannot read such a recording whole: its position embeddings are laid out for `max_length`
1024 frames (10.24 s), and its attention is quadratic in the tokens (a 30-minute spectrogram has about 216k 16x16
patch tokens at stride 10); it would need windows.
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
sys.path.insert(0, str(ROOT / "training"))



def haystack(bank, minutes: float, needles_per_minute: float, seed: int):
    """`(audio, reference events)`: background seconds with keyword needles at random seconds."""
    import numpy as np

    rng = np.random.default_rng(seed)
    seconds = int(round(minutes * 60))
    count = max(1, int(round(needles_per_minute * minutes)))
    needle_seconds = set(rng.choice(seconds, size=count, replace=False).tolist())
    audio = np.empty(seconds * 16000, dtype=np.float32)
    events = []
    for second in range(seconds):
        if second in needle_seconds:
            label = bank.keyword_labels[rng.integers(len(bank.keyword_labels))]
            clips = bank.keywords[label]
            clip = clips[rng.integers(len(clips))]
            events.append({"label": bank.label_names[label], "start": float(second), "end": float(second + 1)})
        else:
            clip = bank.background[rng.integers(len(bank.background))][1]
        audio[second * 16000:(second + 1) * 16000] = clip
    return audio, events


def run_one(checkpoint: str, minutes: float, needles_per_minute: float, threads: int, seed: int,
            threshold: float | None = None, min_duration: float | None = None, repeats: int = 1) -> dict:
    import torch

    from mamba_zoo import SSAMBAFeatureExtractor, SSAMBAForAudioFrameClassification
    from mamba_zoo.corpora import load_keywords
    from mamba_zoo.keyword_search import detection_settings, find_keywords, match_recordings
    from common import parse_engines
    from train_keyword_search import ClipBank

    torch.set_num_threads(threads)
    results = json.loads((Path(checkpoint) / "results.json").read_text())
    model = SSAMBAForAudioFrameClassification.from_pretrained(checkpoint).eval()
    extractor = SSAMBAFeatureExtractor.from_pretrained(checkpoint)
    engines = ",".join(results["training_engines"])
    corpus = load_keywords(split="test", num_per_class=results.get("num_per_class", 200),
                           engines=parse_engines(engines)[0], engine_weights=results.get("engine_weights"),
                           heldout_engines=tuple(results.get("heldout_engines", ())),
                           seed=results.get("corpus_seed", 0), progress=False)
    bank = ClipBank(corpus, corpus.features["label"].names)
    warm = haystack(bank, 4 / 60, needles_per_minute, seed)[0]
    find_keywords(warm, model, extractor, sampling_rate=16000)  # warm the kernels, short and long paths
    with forced_long_input_paths():
        find_keywords(warm, model, extractor, sampling_rate=16000)
    settings = detection_settings(model, threshold, min_duration)  # None: the checkpoint's own (validation-tuned)
    recordings = [haystack(bank, minutes, needles_per_minute, seed + 1000 * r) for r in range(repeats)]
    before = rss_mb()  # model and recordings in memory (the same total audio for every length)
    predicted, seconds = [], 0.0
    for audio, _ in recordings:
        started = time.perf_counter()
        predicted.append(find_keywords(audio, model, extractor, sampling_rate=16000, **settings))
        seconds += time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    scores = match_recordings(predicted, [needles for _, needles in recordings])
    return {"minutes": minutes, "recordings": repeats, "needles": scores["reference"],
            "detections": scores["predicted"],
            "f1": round(scores["f1"], 4), "precision": round(scores["precision"], 4),
            "recall": round(scores["recall"], 4), **settings, "seconds": round(seconds / repeats, 2),
            "real_time_factor": round(seconds / repeats / (60 * minutes), 4), "rss_before_mb": round(before),
            "peak_mb": round(peak), "growth_mb": round(peak - before)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "outputs" / "ssamba-keyword-search"))
    parser.add_argument("--minutes", default="1,5,30")
    parser.add_argument("--needles_per_minute", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=None,
                        help="detection threshold (default: the checkpoint's, tuned on validation scenes)")
    parser.add_argument("--min_duration", type=float, default=None,
                        help="shortest event kept, seconds (default: the checkpoint's)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args.checkpoint, args.one, args.needles_per_minute, args.threads, args.seed,
                                 args.threshold, args.min_duration, args.repeats or 1)))
        return
    if not (Path(args.checkpoint) / "results.json").is_file():
        sys.exit(f"No keyword-search checkpoint at {args.checkpoint}: run python training/train_keyword_search.py "
                 "first (or pass --checkpoint).")
    rows = []
    print("| recording | recordings | needles | detection F1 | precision | recall | seconds per recording | real-time factor "
          "| peak RSS | growth |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    durations = [float(m) for m in args.minutes.split(",")]
    for minutes in durations:
        repeats = max(1, int(round(max(durations) / minutes)))  # every length scores as many needles
        row, error = run_fresh(__file__, ["--one", str(minutes), "--repeats", str(repeats), "--checkpoint",
                                          args.checkpoint, "--needles_per_minute", str(args.needles_per_minute),
                                          "--threads", str(args.threads), "--seed", str(args.seed)]
                               + ([] if args.min_duration is None else ["--min_duration", str(args.min_duration)])
                               + ([] if args.threshold is None else ["--threshold", str(args.threshold)]))
        if row is None:
            print(f"| {minutes:g} min | failed: {error} |")
            continue
        rows.append(row)
        print(f"| {minutes:g} min | {row['recordings']} | {row['needles']} | {row['f1']:.3f} | {row['precision']:.3f} "
              f"| {row['recall']:.3f} | {row['seconds']} | {row['real_time_factor']} | {row['peak_mb']} MB "
              f"| {row['growth_mb']} MB |", flush=True)
    if len(rows) >= 2:
        print(f"F1 at {rows[-1]['minutes']:g} min minus F1 at {rows[0]['minutes']:g} min: "
              f"{100 * (rows[-1]['f1'] - rows[0]['f1']):+.1f} points (target: within 5)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
