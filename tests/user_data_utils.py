"""Small generated datasets in every layout a user may have (for the bring-your-own-data tests of the training scripts).

Clips are tones + noise, different per class / per word, so the data is not constant; nothing needs a speech engine.

- `write_audio_folder(root, examples)`: WAV files in `datasets`' audiofolder layout (label folders, or a metadata.csv
  with `file_name` + the other columns);
- `make_dataset(examples)`: an in-memory `datasets.Dataset` with an `Audio` column ({bytes, path} cells, as a Hub
  parquet file holds them), built without torchcodec;
- `place_in_hf_datasets_cache(hf_home, name, splits)`: a `DatasetDict` written where `load_dataset(name)` finds it
  with `HF_HUB_OFFLINE=1` (the layout `datasets` leaves after loading a Hub dataset once).
"""

from __future__ import annotations

import glob
import io
import os
import shutil
from pathlib import Path

import numpy as np

SAMPLING_RATE = 16000


def tone_clip(seed: int, frequency: float, seconds: float = 1.0, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    clip = 0.3 * np.sin(2 * np.pi * frequency * t) + 0.05 * rng.standard_normal(t.shape)
    return clip.astype(np.float32)


def wav_bytes(clip: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, clip, sampling_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def classification_examples(num_per_class: int, labels=("down", "up"), seed: int = 0, seconds: float = 1.0,
                            sampling_rate: int = SAMPLING_RATE) -> list[dict]:
    """`[{"audio": clip, "label": name}]`, a tone per class."""
    return [{"audio": tone_clip(seed * 1000 + 10 * c + i, 300 + 400 * c, seconds, sampling_rate), "label": name}
            for c, name in enumerate(labels) for i in range(num_per_class)]


def transcribed_examples(count: int, seed: int = 0, sampling_rate: int = SAMPLING_RATE) -> list[dict]:
    """`[{"audio": clip, "text": "one two"}]`: one 0.4 s tone per word."""
    words = ["one", "two", "three", "four"]
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(count):
        chosen = [words[k] for k in rng.integers(0, len(words), size=int(rng.integers(1, 4)))]
        clip = np.concatenate([tone_clip(seed * 100 + i * 10 + j, 300 + 300 * words.index(w), 0.4, sampling_rate)
                               for j, w in enumerate(chosen)])
        examples.append({"audio": clip, "text": " ".join(chosen)})
    return examples


def write_audio_folder(root, examples: list[dict], sampling_rate: int = SAMPLING_RATE, metadata: bool = False) -> Path:
    """WAV files under `root`: in label folders (`root/<label>/<i>.wav`) when the examples have a `label` and
    `metadata` is False, else flat with a `metadata.csv` (`file_name` + every other column)."""
    import csv

    import soundfile

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, example in enumerate(examples):
        if "label" in example and not metadata:
            path = root / str(example["label"]) / f"{i:05d}.wav"
        else:
            path = root / f"{i:05d}.wav"
            rows.append({"file_name": path.name, **{k: v for k, v in example.items() if k != "audio"}})
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, example["audio"], sampling_rate, subtype="PCM_16")
    if rows:
        with open(root / "metadata.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root


def make_dataset(examples: list[dict], sampling_rate: int = SAMPLING_RATE, label_names=None):
    """A `datasets.Dataset` with an `Audio` column of WAV bytes (+ `label` as a ClassLabel, or `text`)."""
    from datasets import Audio, ClassLabel, Dataset, Features, Value

    columns = {"audio": [{"bytes": wav_bytes(e["audio"], sampling_rate), "path": f"{i:05d}.wav"}
                         for i, e in enumerate(examples)]}
    features = {"audio": Audio(sampling_rate=sampling_rate)}
    if "label" in examples[0]:
        names = list(label_names or sorted({e["label"] for e in examples}))
        columns["label"] = [names.index(e["label"]) for e in examples]
        features["label"] = ClassLabel(names=names)
    if "text" in examples[0]:
        columns["text"] = [e["text"] for e in examples]
        features["text"] = Value("string")
    plain = Dataset.from_dict({"audio": columns["audio"], **{k: v for k, v in columns.items() if k != "audio"}})
    return plain.cast(Features(features))  # a cast, not an encode: no torchcodec needed


def place_in_hf_datasets_cache(hf_home, name: str, splits: dict) -> Path:
    """Write `splits` ({split: Dataset}) where `datasets.load_dataset(name)` finds them offline (`HF_HOME=hf_home`,
    `HF_HUB_OFFLINE=1`): `datasets/<org>___<name>/default/0.0.0/<hash>/<name>-<split>.arrow` + `dataset_info.json`."""
    from datasets import DatasetInfo, SplitDict, SplitInfo

    short = name.split("/")[-1]
    root = Path(hf_home, "datasets", "___".join(name.split("/")), "default", "0.0.0", "0123456789abcdef")
    root.mkdir(parents=True, exist_ok=True)
    infos = SplitDict(dataset_name=short)
    features = None
    for split, dataset in splits.items():
        staging = root.parent / f"staging-{split}"
        dataset.save_to_disk(staging)
        shutil.copy(glob.glob(os.path.join(staging, "*.arrow"))[0], root / f"{short}-{split}.arrow")
        shutil.rmtree(staging)
        infos.add(SplitInfo(name=split, num_examples=len(dataset), dataset_name=short))
        features = dataset.features
    DatasetInfo(features=features, config_name="default", dataset_name=short, splits=infos).write_to_directory(root)
    return root


def offline_hf_cache(monkeypatch, hf_home) -> None:
    """In this process, as `HF_HOME=hf_home HF_HUB_OFFLINE=1` would set it at import: `datasets` reads its cache from
    `hf_home/datasets` and never calls the Hub (the environment variables are read when `datasets` is imported, so a
    test that already imported it patches the resolved values)."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(hf_home, "datasets"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
