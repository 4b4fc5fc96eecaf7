"""Score a keyword checkpoint on clips of any synthesis engine, one accuracy per engine.

    python training/evaluate_keyword_engines.py --checkpoint outputs/ssamba-keywords --engines pico,sam

The clips are the `heldout_engine` split of the embedded keyword corpus built with those engines held out (the
same 12 classes and channel conditions as training; every voice of each engine). Name only engines the checkpoint
never heard in training (its `results.json` says which it did, and the script refuses those): a number on an engine
heard in training says nothing about generalisation. Prints a table and writes `--output` (JSON) when given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from finetune_audio_classification import accuracy_by_engine, engine_list, parse_engines  # noqa: E402

import mamba_zoo  # noqa: E402,F401  (registers SSAMBA with the Auto* classes)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a keyword classifier saved with save_pretrained")
    parser.add_argument("--engines", default="sam", help="engines to score, comma-separated (never heard in training)")
    parser.add_argument("--training_engines", default=None,
                        help="the corpus' training engines (default: the checkpoint's results.json, else "
                             "espeak-ng:3,festival:1); they only shape which clips the other splits get, so passing "
                             "the same value for several checkpoints scores them all on the same clips")
    parser.add_argument("--num_per_class", type=int, default=200, help="as in training: sets the held-out split's size")
    parser.add_argument("--num_heldout_per_class", type=int, default=200,
                        help="clips per class of the scored engines (default 200: 2400 clips; the recipes' own "
                             "held-out split has num_per_class // 4); more clips, less sampling noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--output", default=None, help="write the accuracies here as JSON")
    return parser.parse_args(argv)


def trained_engines(checkpoint: Path) -> str | None:
    results = checkpoint / "results.json"
    if results.is_file():
        return json.loads(results.read_text()).get("training_engines")
    return None


def accuracy_by_engine_and_class(predictions: np.ndarray, labels: np.ndarray, voices, id2label) -> dict:
    """``{engine: {class name: accuracy over that engine's clips of that class}}`` (noise-only clips, whose voice
    is empty, belong to no engine)."""
    from mamba_zoo.corpora import engine_of

    engines = np.asarray([engine_of(v) if v else "" for v in voices])
    by_class = {}
    for engine in sorted(set(engines) - {""}):
        spoken = engines == engine
        by_class[engine] = {
            id2label[int(c)]: round(float((predictions[spoken & (labels == c)] == c).mean()), 3)
            for c in np.unique(labels[spoken])}
    return by_class


def main(argv=None) -> dict:
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from mamba_zoo.corpora import HELDOUT_SPLIT, load_keywords

    args = parse_args(argv)
    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise SystemExit(f"{checkpoint} is not a saved model (no config.json); pass --checkpoint DIR.")
    recorded = trained_engines(checkpoint)
    training = args.training_engines or recorded or "espeak-ng:3,festival:1"
    scored = engine_list(args.engines)
    heard = sorted(set(scored) & (set(engine_list(training)) | set(engine_list(recorded or ""))))
    if heard:
        raise SystemExit(f"{checkpoint} was trained on {heard} ({recorded or training}); score only engines it never "
                         "heard.")
    engines, weights = parse_engines(training)
    corpus = load_keywords(num_per_class=args.num_per_class, num_heldout_per_class=args.num_heldout_per_class,
                           seed=args.seed, engines=engines,
                           engine_weights=weights, heldout_engines=scored)
    clips = corpus[HELDOUT_SPLIT]
    model = AutoModelForAudioClassification.from_pretrained(checkpoint).eval()
    extractor = AutoFeatureExtractor.from_pretrained(checkpoint)
    names = clips.features["label"].names
    to_model = np.asarray([model.config.label2id[name] for name in names])
    start = time.perf_counter()
    predictions = []
    rows = clips.with_format("numpy")
    for first in range(0, len(rows), args.batch_size):
        batch = rows[first:first + args.batch_size]["audio"]
        inputs = extractor([a["array"] for a in batch], sampling_rate=extractor.sampling_rate, return_tensors="pt")
        with torch.no_grad():
            predictions.append(model(**inputs).logits.argmax(-1).numpy())
    labels = to_model[np.asarray(clips["label"])]
    predictions = np.concatenate(predictions)
    voices = list(clips["voice"])
    result = accuracy_by_engine(predictions, labels, voices)
    result["accuracy_by_class"] = accuracy_by_engine_and_class(predictions, labels, voices, model.config.id2label)
    result.update(checkpoint=str(checkpoint), training_engines=training, clips=len(clips),
                  seconds=round(time.perf_counter() - start, 1))
    print("| engine | accuracy |\n|---|---|")
    for key, value in result.items():
        if key.startswith("accuracy_") and key != "accuracy_by_class":
            print(f"| {key[len('accuracy_'):]} | {value:.4f} |")
    print(f"| all {len(clips)} clips | {result['accuracy']:.4f} |")
    for engine, by_class in result["accuracy_by_class"].items():
        print(f"{engine} by class: " + ", ".join(f"{name} {value:.2f}" for name, value in by_class.items()))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
