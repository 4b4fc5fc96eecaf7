#!/usr/bin/env python
"""Memory and throughput of SSAMBA fine-tuning on a user's audio folder: features on the fly (training/data_loading.py)
at two dataset sizes, against the earlier path that decoded and featurised every clip into RAM before training.

One epoch of `training/finetune_audio_classification.py` (the main job's fine-tuning model: width 128, 8 bidirectional
layers, frame tokens of 4 frames; batch 32; SpecAugment) on generated audio folders of N clips (12 classes, 1 s, 16 kHz
WAV: tones, chirps and noise bands per class) with a fixed 240-clip evaluation folder. Each run is a fresh process;
peak memory = the process' peak resident set (`ru_maxrss`), throughput = the Trainer's training clips per second.

    python benchmarks/bench_data_memory.py                       # 2k and 20k clips on the fly, 2k precomputed
    python benchmarks/bench_data_memory.py --sizes 500 5000 --threads 2 --data_root /tmp/bench_folders

Prints a table and the two ratios the issue asks for: peak RSS(20k) - peak RSS(2k) (target < 300 MB), and on-the-fly
throughput / precomputed throughput at the small size (target >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 12
SAMPLING_RATE = 16000


def write_folder(root: Path, count: int, seed: int) -> Path:
    """`count` 1 s clips in label folders (`root/class_k/i.wav`), the same bytes for the same arguments."""
    import numpy as np
    import soundfile

    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    t = np.arange(SAMPLING_RATE) / SAMPLING_RATE
    for i in range(count):
        label = i % CLASSES
        base = 200 * (1 + label) * (1 + 0.05 * rng.standard_normal())
        sweep = base * (1 + 0.3 * (label % 3 - 1) * t)  # rising, flat or falling
        clip = 0.3 * np.sin(2 * np.pi * np.cumsum(sweep) / SAMPLING_RATE) + 0.05 * rng.standard_normal(t.shape)
        folder = root / f"class_{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / f"{i:06d}.wav", clip.astype(np.float32), SAMPLING_RATE, subtype="PCM_16")
    done.write_text(str(count))
    return root


def worker(args) -> dict:
    """One fine-tuning epoch in this process; prints a JSON line with peak RSS and throughput."""
    import torch

    sys.path.insert(0, str(ROOT / "training"))
    import finetune_audio_classification as finetune
    from transformers import TrainingArguments

    torch.set_num_threads(args.threads)
    if args.mode == "precomputed":
        finetune.on_the_fly = precomputed_items  # the path before on-the-fly features, kept here as the baseline
    model_args = finetune.ModelArguments(hidden_size=128, num_hidden_layers=8, patch_frames=4, drop_path_rate=0.0,
                                         bidirectional_layer_pairing=False)
    data_args = finetune.DataArguments(train_dir=args.train_dir, eval_dir=args.eval_dir)
    training_args = TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=1, per_device_train_batch_size=32, per_device_eval_batch_size=64,
        learning_rate=3e-3, warmup_steps=0.05, lr_scheduler_type="cosine", eval_strategy="no", save_strategy="no",
        report_to=[], logging_steps=50, dataloader_num_workers=args.workers, disable_tqdm=True, seed=0,
    )
    started = time.perf_counter()
    results = finetune.run(model_args, data_args, training_args)
    return {"mode": args.mode, "clips": results["train_clips"], "steps": results["train_steps"],
            "clips_per_second": results["train_samples_per_second"],
            "validation_accuracy": results["validation_accuracy"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "wall_seconds": time.perf_counter() - started}


def precomputed_items(source, prepare):
    """Every clip decoded and turned into a spectrogram before training, all kept in one tensor (the earlier path);
    SpecAugment still per item."""
    import torch

    from data_loading import decode_audio
    from finetune_audio_classification import compute_features

    rows = list(source.with_format("numpy"))
    clips = [decode_audio(r[prepare.audio_column], prepare.feature_extractor.sampling_rate, prepare.audio_column, i)
             for i, r in enumerate(rows)]
    features = compute_features(clips, prepare.feature_extractor)
    labels = torch.tensor([prepare.label_ids(r[prepare.label_column]) for r in rows])
    del rows, clips

    class Precomputed(torch.utils.data.Dataset):
        def __len__(self):
            return len(features)

        def __getitem__(self, i):
            x = features[i].clone()
            return {"input_values": prepare.spec_augment(x) if prepare.augment else x, "labels": labels[i]}

    return Precomputed()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[2000, 20000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--data_root", default="/tmp/mamba_zoo_bench_data_memory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="--dataloader_num_workers of the on-the-fly runs")
    parser.add_argument("--mode", choices=["on_the_fly", "precomputed"], help=argparse.SUPPRESS)
    parser.add_argument("--train_dir", help=argparse.SUPPRESS)
    parser.add_argument("--eval_dir", help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(worker(args)), flush=True)
        return

    root = Path(args.data_root)
    small, large = args.sizes
    evaluation = write_folder(root / "eval-240", 240, seed=1)
    runs = [("on_the_fly", small), ("on_the_fly", large), ("precomputed", small)]
    rows = []
    for mode, size in runs:
        train = write_folder(root / f"train-{size}", size, seed=0)
        command = [sys.executable, __file__, "--mode", mode, "--train_dir", str(train), "--eval_dir", str(evaluation),
                   "--output_dir", str(root / f"out-{mode}-{size}"), "--threads", str(args.threads),
                   "--workers", str(args.workers if mode == "on_the_fly" else 0)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "0"})
        if done.returncode != 0:
            sys.exit(f"{mode} {size} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"done: {rows[-1]}", flush=True)

    print(f"\nSSAMBA fine-tuning, one epoch, batch 32, {args.threads} threads, "
          f"{args.workers} DataLoader workers (on the fly)")
    print("| features | training clips | steps | clips/s | peak RSS | validation accuracy |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode'].replace('_', ' ')} | {r['clips']} | {r['steps']} | {r['clips_per_second']:.1f} | "
              f"{r['peak_rss_mb']:.0f} MB | {r['validation_accuracy']:.3f} |")
    growth = rows[1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    speed = rows[0]["clips_per_second"] / rows[2]["clips_per_second"]
    print(f"\npeak RSS growth from {small} to {large} clips (on the fly): {growth:+.0f} MB (target < 300 MB)")
    print(f"on-the-fly / precomputed throughput at {small} clips: {speed:.2f}x (target >= 0.80)")


if __name__ == "__main__":
    main()
