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

After training, the detection settings (threshold x shortest event) are chosen on validation scenes (voices heard
neither in training nor in test) by detection F1 and saved with the model (`config.keyword_search`), so that
`find_keywords` uses them; `--threshold` / `--min_duration` fix either one instead.

Writes the model, its feature extractor, `results.json` (the tuning grid, column accuracy and detection precision /
recall / F1 on test scenes and held-out-engine scenes) and a model card to `--output_dir`.
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
    DEFAULT_DETECTION,
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
    threshold: Optional[float] = field(default=None, metadata={
        "help": "detection threshold of find_keywords (default: tuned on validation scenes)"})
    min_duration: Optional[float] = field(default=None, metadata={
        "help": "shortest detection kept, seconds (default: tuned on validation scenes)"})
    num_tune_scenes: int = field(default=100, metadata={
        "help": "validation scenes the detection settings are tuned on (0: keep find_keywords' defaults)"})
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


TUNING_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
TUNING_MIN_DURATIONS = (0.1, 0.2, 0.3, 0.4, 0.5)


def scene_outputs(model, extractor, bank: ClipBank, count: int, seconds: int, keyword_share: float, seed: int):
    """`count` seeded scenes through the model, one forward each: `[(probabilities, times, slots, events)]`."""
    rng = np.random.default_rng(seed)
    outputs = []
    for _ in range(count):
        audio, slots, events = make_scene(bank, rng, seconds, keyword_share)
        probabilities, times = frame_probabilities(audio, model, extractor, SAMPLING_RATE)
        outputs.append((probabilities, times, slots, events))
    return outputs


def detection_scores(outputs, labels: list[str], threshold: float, min_duration: float) -> dict:
    """Detection P/R/F1 (pooled over the scenes) and column accuracy of `scene_outputs` at these settings."""
    predicted = [events_from_probabilities(probabilities, times, labels, threshold=threshold,
                                           min_duration=min_duration, smoothing_seconds=SMOOTHING_SECONDS)
                 for probabilities, times, _, _ in outputs]
    scores = match_recordings(predicted, [events for *_, events in outputs])
    correct = sum(int((p.argmax(-1) == column_labels(slots, len(p))).sum()) for p, _, slots, _ in outputs)
    total = sum(len(p) for p, *_ in outputs)
    return {"precision": round(scores["precision"], 4), "recall": round(scores["recall"], 4),
            "f1": round(scores["f1"], 4), "column_accuracy": round(correct / max(total, 1), 4),
            "scenes": len(outputs), "keywords": scores["reference"]}


def tune_detection(outputs, labels: list[str], threshold: Optional[float] = None,
                   min_duration: Optional[float] = None) -> dict:
    """The (threshold, min_duration) of the grid with the best detection F1 on `outputs` (validation scenes; the
    first of equal ones), either value fixed when given: `{"threshold", "min_duration", "f1", "grid"}`."""
    grid = []
    for t in (TUNING_THRESHOLDS if threshold is None else (threshold,)):
        for d in (TUNING_MIN_DURATIONS if min_duration is None else (min_duration,)):
            grid.append({"threshold": t, "min_duration": d, **detection_scores(outputs, labels, t, d)})
    best = max(grid, key=lambda row: row["f1"])  # max keeps the first of equal rows
    return {"threshold": best["threshold"], "min_duration": best["min_duration"], "f1": best["f1"],
            "grid": [{k: row[k] for k in ("threshold", "min_duration", "f1", "precision", "recall")} for row in grid]}


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
        f"Detection settings saved with the model (`config.keyword_search`, `find_keywords`' defaults): threshold "
        f"{result['threshold']}, shortest event {result['min_duration']} s"
        + (f", chosen by detection F1 ({result['detection_tuning']['validation_f1']:.3f}) on "
           f"{result['detection_tuning']['scenes']} validation scenes (voices in neither training nor test)."
           if result["detection_tuning"]["validation_f1"] is not None else "."), "",
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
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    scenes_of = lambda split, seed: scene_outputs(  # noqa: E731
        model, extractor, ClipBank(corpus[split], label_names), args.num_eval_scenes if split != "validation"
        else args.num_tune_scenes, args.scene_seconds, args.keyword_share, seed)
    if args.num_tune_scenes > 0:
        tuning = tune_detection(scenes_of("validation", training_args.seed + 3), labels, args.threshold,
                                args.min_duration)
    else:
        tuning = {"threshold": DEFAULT_DETECTION["threshold"] if args.threshold is None else args.threshold,
                  "min_duration": DEFAULT_DETECTION["min_duration"] if args.min_duration is None
                  else args.min_duration, "f1": None, "grid": []}
    settings = {"threshold": tuning["threshold"], "min_duration": tuning["min_duration"]}
    model.config.keyword_search = settings  # saved with the model: find_keywords' defaults for this checkpoint
    result = {
        "hidden_size": args.hidden_size, "num_hidden_layers": args.num_hidden_layers, "steps": trainer.state.global_step,
        "batch_size": training_args.per_device_train_batch_size, "scene_seconds": args.scene_seconds,
        "train_minutes": train_minutes, **budget.summary(), "training_engines": list(engines),
        "heldout_engines": list(heldout), "engine_weights": list(weights) if weights else None,
        "num_per_class": args.num_per_class, "corpus_seed": training_args.seed, **settings,
        "detection_tuning": {"scenes": args.num_tune_scenes, "validation_f1": tuning["f1"], "grid": tuning["grid"]},
        "test": detection_scores(scenes_of("test", training_args.seed + 1), labels, **settings),
    }
    if HELDOUT_SPLIT in corpus:
        result[HELDOUT_SPLIT] = detection_scores(scenes_of(HELDOUT_SPLIT, training_args.seed + 2), labels, **settings)
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
