"""Write a corpus out as 16-bit WAV files plus a CSV manifest (the command line uses this)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

__all__ = ["export_audio_dataset", "export_text_dataset"]


def _safe_name(name: str) -> str:
    """A folder name for a class or voice: letters, digits and ``-_.+`` kept, the rest made ``_``."""
    cleaned = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)
    return cleaned or "_"


def export_audio_dataset(dataset_dict, out_dir: str | os.PathLike, group_by: str | None = "label", progress: bool = True) -> Path:
    """Write every clip of a ``DatasetDict`` (or ``{split: Dataset}``) as ``OUT/split[/group]/id.wav``.

    ``group_by`` names a column whose value becomes a folder (``"label"`` uses the class name, as
    Speech Commands does; None writes all clips of a split in one folder). A ``manifest.csv`` lists
    ``path`` (relative to ``out_dir``), ``split``, ``id``, ``duration_s``, ``sampling_rate`` and every
    other column except ``audio``. Returns the manifest path.
    """
    import soundfile as sf
    from datasets import ClassLabel
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for split, dataset in dataset_dict.items():
        if "audio" not in dataset.column_names:
            raise ValueError(f"Split {split!r} has no 'audio' column; use export_text_dataset for text.")
        if group_by is not None and group_by not in dataset.column_names:
            raise ValueError(f"group_by={group_by!r} is not a column of split {split!r} ({dataset.column_names}).")
        label_feature = dataset.features.get("label")
        metadata = dataset.select_columns([c for c in dataset.column_names if c != "audio"])
        audio_view = dataset.with_format("numpy", columns=["audio"])
        for index in tqdm(range(len(dataset)), desc=f"writing {split}", unit="clip", disable=not progress):
            audio = audio_view[index]["audio"]
            array, sampling_rate = np.asarray(audio["array"], dtype=np.float32), int(audio["sampling_rate"])
            values = dict(metadata[index])
            if isinstance(label_feature, ClassLabel):
                values["label"] = label_feature.int2str(int(values["label"]))
            clip_id = str(values.pop("id", f"{split}-{index:05d}"))
            folder = out / split
            if group_by is not None:
                folder = folder / _safe_name(str(values[group_by]))
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{_safe_name(clip_id)}.wav"
            sf.write(path, array, sampling_rate, subtype="PCM_16")
            if "word_starts" in values:
                values["word_starts"] = " ".join(f"{t:.3f}" for t in values["word_starts"])
            rows.append(
                {
                    "path": path.relative_to(out).as_posix(), "split": split, "id": clip_id,
                    "duration_s": round(len(array) / sampling_rate, 4), "sampling_rate": sampling_rate, **values,
                }
            )
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        fields = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def export_text_dataset(dataset_dict, out_dir: str | os.PathLike) -> Path:
    """Write a text ``DatasetDict`` as ``OUT/split.txt`` (one row per line) and a ``manifest.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "split", "num_lines"])
        for split, dataset in dataset_dict.items():
            path = out / f"{split}.txt"
            path.write_text("".join(f"{line}\n" for line in dataset["text"]))
            writer.writerow([path.name, split, len(dataset)])
    return manifest
