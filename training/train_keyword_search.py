#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Keyword search in long recordings: train an SSAMBA frame classifier on scenes built from the embedded keyword
corpus, then find the keywords (with timestamps) in held-out scenes and in scenes of an engine never heard in
training.

A scene is `--scene_seconds` one-second keyword-corpus clips in a row: with probability `--keyword_share` a command
word ("yes", "stop", ...), else background (`_silence_`: noise alone, or `_unknown_`: another word). Every output
column (40 ms: frame tokens of all mel bins x 4 frames) is labelled with the class of the clip it falls in, so the
model learns where each keyword is. The model has no absolute position embeddings (`use_position_embeddings=False`),
so it reads a 30-minute recording in one pass as it read its 8-second training scenes (`keyword_search.find_keywords`;
benchmarks/bench_keyword_haystack.py measures that).

Training scenes are drawn fresh for every step from a seeded generator (the same command gives the same model); the
recipe is fixed-length (`--max_steps`).

    python training/train_keyword_search.py                     # 400 steps
    python training/train_keyword_search.py --max_steps 50 --num_per_class 20 --output_dir /tmp/kws   # smoke test

Writes the model, its feature extractor, `results.json` (column accuracy and detection precision / recall / F1 on
test scenes and held-out-engine scenes) and a model card to `--output_dir`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TrainingBudgetCallback, max_train_minutes_field, parse_engines, parse_script_args  # noqa: E402

import mamba_zoo  # noqa: E402,F401
from mamba_zoo import SSAMBAConfig, SSAMBAFeatureExtractor, SSAMBAForAudioFrameClassification  # noqa: E402
from mamba_zoo.corpora import HELDOUT_SPLIT  # noqa: E402
from mamba_zoo.keyword_search import (  # noqa: E402
    BACKGROUND_LABELS,
    SMOOTHING_SECONDS,
    events_from_probabilities,
    frame_probabilities,
    match_recordings,
)

SAMPLING_RATE = 16000
HOP_SECONDS = 0.01
FRAMES_PER_TOKEN = 4


@dataclass
class SceneArguments:
    num_per_class: int = field(default=200, metadata={"help": "keyword corpus: training clips per class"})
    engines: str = field(default="espeak-ng:3,festival:1", metadata={
        "help": "training engines of the keyword corpus (python -m mamba_zoo.corpora engines lists them)"})
    heldout_engines: str = field(default="sam", metadata={
        "help": "engines never heard in training: their scenes are scored as heldout_engine ('' for none)"})
    scene_seconds: int = field(default=8, metadata={"help": "one-second clips per training scene"})
    keyword_share: float = field(default=0.3, metadata={"help": "share of a scene's clips that are keywords"})
    num_eval_scenes: int = field(default=100, metadata={"help": "test (and held-out engine) scenes scored"})
    hidden_size: int = field(default=128, metadata={"help": "model width"})
    num_hidden_layers: int = field(default=8, metadata={"help": "model depth"})
    threshold: float = field(default=0.5, metadata={"help": "detection threshold of find_keywords"})
    threads: Optional[int] = field(default=None, metadata={"help": "torch intra-op threads"})
    max_train_minutes: Optional[float] = max_train_minutes_field()


TRAINING_DEFAULTS = dict(
    output_dir="outputs/ssamba-keyword-search", max_steps=400, per_device_train_batch_size=16, learning_rate=1e-3,
    weight_decay=0.01, warmup_steps=0.1, lr_scheduler_type="cosine", logging_steps=50, save_strategy="no",
    eval_strategy="no", report_to=[], seed=0, dataloader_num_workers=0, disable_tqdm=False,
)


class ClipBank:
    """A corpus split's clips grouped by class: `keywords[label]` and `background` (silence and unknown words)."""

    def __init__(self, split, label_names: list[str]):
        arrays = split.with_format("numpy")
        self.label_names = label_names
        self.keywords: dict[int, list[np.ndarray]] = {}
        self.background: list[tuple[int, np.ndarray]] = []
        for row in arrays:
            audio = np.asarray(row["audio"]["array"], dtype=np.float32)[:SAMPLING_RATE]
            audio = np.pad(audio, (0, SAMPLING_RATE - len(audio)))
            label = int(row["label"])
            if label_names[label] in BACKGROUND_LABELS:
                self.background.append((label, audio))
            else:
                self.keywords.setdefault(label, []).append(audio)
        self.keyword_labels = sorted(self.keywords)


def make_scene(bank: ClipBank, rng: np.random.Generator, seconds: int, keyword_share: float):
    """`(audio (seconds * 16000,), slot labels (seconds,), reference events)`: one clip per second."""
    audio, slots, events = [], [], []
    for second in range(seconds):
        if rng.random() < keyword_share:
            label = bank.keyword_labels[rng.integers(len(bank.keyword_labels))]
            clips = bank.keywords[label]
            clip = clips[rng.integers(len(clips))]
            events.append({"label": bank.label_names[label], "start": float(second), "end": float(second + 1)})
        else:
            label, clip = bank.background[rng.integers(len(bank.background))]
        audio.append(clip)
        slots.append(label)
    return np.concatenate(audio), np.asarray(slots), events


def column_labels(slots: np.ndarray, num_columns: int) -> np.ndarray:
    """The class of the one-second clip each output column starts in."""
    starts = np.arange(num_columns) * FRAMES_PER_TOKEN * HOP_SECONDS
    return slots[np.minimum((starts + 1e-9).astype(int), len(slots) - 1)]


class SceneStream(torch.utils.data.Dataset):
    """Training scenes: item i is scene i of the seeded generator (a fresh scene for every step of the run)."""

    def __init__(self, bank: ClipBank, extractor: SSAMBAFeatureExtractor, length: int, seconds: int,
                 keyword_share: float, seed: int):
        self.bank, self.extractor, self.length = bank, extractor, length
        self.seconds, self.keyword_share, self.seed = seconds, keyword_share, seed

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, index])
        audio, slots, _ = make_scene(self.bank, rng, self.seconds, self.keyword_share)
        audio = audio * np.float32(10 ** (rng.uniform(-10, 3) / 20))  # level varies across scenes
        values = self.extractor(np.clip(audio, -1, 1), sampling_rate=SAMPLING_RATE, return_tensors="pt")
        values = values["input_values"][0]
        num_columns = (values.shape[0] - FRAMES_PER_TOKEN) // FRAMES_PER_TOKEN + 1
        return {"input_values": values, "labels": torch.from_numpy(column_labels(slots, num_columns)).long()}


def score_scenes(model, extractor, bank: ClipBank, count: int, seconds: int, keyword_share: float, seed: int,
                 threshold: float) -> dict:
    """Detection P/R/F1 (`find_keywords`' events, pooled over `count` scenes) and column accuracy, from one forward
    per scene."""
    rng = np.random.default_rng(seed)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    predicted, reference, correct, total = [], [], 0, 0
    for _ in range(count):
        audio, slots, events = make_scene(bank, rng, seconds, keyword_share)
        probabilities, times = frame_probabilities(audio, model, extractor, SAMPLING_RATE)
        predicted.append(events_from_probabilities(probabilities, times, labels, threshold=threshold,
                                                   smoothing_seconds=SMOOTHING_SECONDS))
        reference.append(events)
        columns = probabilities.argmax(-1)
        correct += int((columns == column_labels(slots, len(columns))).sum())
        total += len(columns)
    scores = match_recordings(predicted, reference)
    return {"precision": round(scores["precision"], 4), "recall": round(scores["recall"], 4),
            "f1": round(scores["f1"], 4), "column_accuracy": round(correct / total, 4), "scenes": count,
            "keywords": sum(map(len, reference))}


def write_card(output_dir: Path, result: dict) -> None:
    rows = [f"| {name} | {r['f1']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['column_accuracy']:.3f} |"
            for name, r in (("test voices", result["test"]), (f"{HELDOUT_SPLIT} ({', '.join(result['heldout_engines'])})",
                                                                result.get(HELDOUT_SPLIT))) if r]
    lines = [
        "---", "library_name: transformers", "tags: [mamba-zoo, ssamba, keyword-spotting, audio-frame-classification]",
        "---", "", "# SSAMBA keyword search (frame classifier)", "",
        "Finds spoken commands (`yes no up down left right on off stop go`) with timestamps in recordings of any "
        "length: `mamba_zoo.keyword_search.find_keywords(audio, model, feature_extractor)`. Trained by "
        "`training/train_keyword_search.py` on scenes of one-second clips from mamba-zoo's embedded keyword corpus "
        f"(training engines: {', '.join(result['training_engines'])}; test voices never heard in training).", "",
        f"Model: SSAMBA width {result['hidden_size']}, {result['num_hidden_layers']} layers, frame tokens (all mel bins "
        "x 4 frames, 40 ms per output column), no absolute position embeddings. "
        f"{result['steps']} steps of {result['batch_size']} scenes of {result['scene_seconds']} s, "
        f"{result['train_minutes']} min.", "",
        "| scenes | detection F1 | precision | recall | column accuracy |", "|---|---|---|---|---|", *rows, "",
        "A detection is right when its label matches and its centre lies within 0.25 s of the keyword's one-second "
        "clip. Long recordings: `python benchmarks/bench_keyword_haystack.py`.",
    ]
    (output_dir / "README.md").write_text("\n".join(lines) + "\n")


def parse_args(argv=None):
    """`(SceneArguments, TrainingArguments)` with the recipe's defaults for the Trainer flags not passed."""
    from transformers import TrainingArguments

    return parse_script_args((SceneArguments, TrainingArguments), TRAINING_DEFAULTS, argv,
                             description=__doc__.split("\n\n")[0])


def main(argv=None):
    from transformers import Trainer, set_seed

    args, training_args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(training_args.seed)
    from mamba_zoo.corpora import load_keywords

    engines, weights = parse_engines(args.engines)
    heldout = parse_engines(args.heldout_engines)[0]
    corpus = load_keywords(num_per_class=args.num_per_class, engines=engines, engine_weights=weights,
                           heldout_engines=heldout, seed=training_args.seed)
    label_names = corpus["train"].features["label"].names
    train_bank = ClipBank(corpus["train"], label_names)
    extractor = SSAMBAFeatureExtractor(preset="speechcommands")
    frames = extractor.max_length = extractor.num_frames(args.scene_seconds * SAMPLING_RATE)
    config = SSAMBAConfig(
        hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers, num_mel_bins=128, max_length=frames,
        patch_size=(128, FRAMES_PER_TOKEN), frequency_stride=128, time_stride=FRAMES_PER_TOKEN,
        use_position_embeddings=False, drop_path_rate=0.1, num_labels=len(label_names),
        id2label=dict(enumerate(label_names)), label2id={name: i for i, name in enumerate(label_names)},
    )
    model = SSAMBAForAudioFrameClassification(config)
    steps = training_args.max_steps
    scenes = SceneStream(train_bank, extractor, steps * training_args.per_device_train_batch_size * max(
        1, training_args.world_size), args.scene_seconds, args.keyword_share, training_args.seed)
    budget = TrainingBudgetCallback(args.max_train_minutes)
    trainer = Trainer(model=model, args=training_args, train_dataset=scenes, callbacks=[budget])
    started = time.time()
    trainer.train()
    train_minutes = round((time.time() - started) / 60, 2)
    model.eval()
    result = {
        "hidden_size": args.hidden_size, "num_hidden_layers": args.num_hidden_layers, "steps": trainer.state.global_step,
        "batch_size": training_args.per_device_train_batch_size, "scene_seconds": args.scene_seconds,
        "train_minutes": train_minutes, **budget.summary(), "training_engines": list(engines),
        "heldout_engines": list(heldout), "engine_weights": list(weights) if weights else None,
        "num_per_class": args.num_per_class, "corpus_seed": training_args.seed, "threshold": args.threshold,
        "test": score_scenes(model, extractor, ClipBank(corpus["test"], label_names), args.num_eval_scenes,
                             args.scene_seconds, args.keyword_share, training_args.seed + 1, args.threshold),
    }
    if HELDOUT_SPLIT in corpus:
        result[HELDOUT_SPLIT] = score_scenes(model, extractor, ClipBank(corpus[HELDOUT_SPLIT], label_names),
                                             args.num_eval_scenes, args.scene_seconds, args.keyword_share,
                                             training_args.seed + 2, args.threshold)
    print(json.dumps(result), flush=True)
    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        trainer.save_model(output_dir)
        extractor.save_pretrained(output_dir)
        (output_dir / "results.json").write_text(json.dumps(result, indent=2))
        write_card(output_dir, result)
        print(f"test scenes: detection F1 {result['test']['f1']:.3f}, column accuracy "
              f"{result['test']['column_accuracy']:.3f}" + (
                  f"; {HELDOUT_SPLIT}: F1 {result[HELDOUT_SPLIT]['f1']:.3f}" if HELDOUT_SPLIT in result else ""))
    return result


if __name__ == "__main__":
    main()
