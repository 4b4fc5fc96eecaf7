# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Bring your own data: the one way every training script loads a dataset, decodes its audio and feeds the Trainer.

Sources (at most one; none = the script's embedded corpus, which goes through the same code path):

| flags | what | how |
|---|---|---|
| `--dataset_name NAME [--dataset_config_name C]` | the Hub, or its offline cache | `datasets.load_dataset`; with `HF_HUB_OFFLINE=1` a dataset loaded once before comes from the cache |
| `--train_dir D [--eval_dir E] [--test_dir T]` | folders of audio files | the `audiofolder` layout (below) |
| `--dataset_path P` | `save_to_disk` folders | `datasets.load_from_disk` (a `DatasetDict`, or one `Dataset` = train) |
| `--streaming` (with any of them) | data never held whole | `datasets.IterableDataset`; training then needs `--max_steps` |

Flag names follow transformers' example scripts (`run_audio_classification.py`, `run_speech_recognition_ctc.py`):
`--audio_column_name`, `--train_split_name`, `--eval_split_name`, `--max_train_samples`, `--max_eval_samples`, and
in the scripts that use them `--label_column_name`, `--text_column_name`, `--max_length_seconds`. A split name may
join several with `+` (`train+validation`).

**Audio folders** follow `datasets`' audiofolder convention: every audio file (`.wav .flac .ogg .mp3 .opus .aiff
.au`) under the folder is one example; with a `metadata.csv` or `metadata.jsonl` (a `file_name` column relative to
the folder, plus any other columns, e.g. `text` or `label`) its columns are attached, else the label is the name of
each file's parent folder (a `ClassLabel`, names sorted) when the files sit at one depth in more than one folder.
They are read here rather than by `datasets`' own builder, which encodes audio through torchcodec on the way in.

**Audio decoding without torchcodec.** `datasets` 5.x decodes `Audio` columns with torchcodec, whose wheels do not
load with the CPU build of torch. So an `Audio` column is always cast to `Audio(decode=False)` (file bytes and path)
and decoded here with soundfile (`decode_audio`): WAV, FLAC, OGG/Vorbis and, with libsndfile >= 1.1, MP3. It then
works the same whether or not torchcodec is installed; the clip is mixed to mono and resampled to the model's rate.
A cell that is not audio raises an error naming the column and the row.

**Features on the fly.** Nothing is decoded or featurised before training: `OnTheFlyDataset` (map-style data) and
`OnTheFlyStream` (streaming) call the script's `prepare(row, index)` when the Trainer's DataLoader asks for an item,
in its worker processes with `--dataloader_num_workers N`. Memory does not grow with the dataset: a 20k-clip folder
trains in the memory of a 2k-clip one (`benchmarks/bench_data_memory.py`).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au")
METADATA_FILENAMES = ("metadata.csv", "metadata.jsonl")


@dataclass
class DatasetSourceArguments:
    """Where the data comes from (shared by every training script; none given = the embedded corpus)."""

    dataset_name: Optional[str] = field(default=None, metadata={
        "help": "a dataset for datasets.load_dataset: a Hub id (or, with HF_HUB_OFFLINE=1, one in the local cache) or "
                "a local folder of data files"})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "its configuration (load_dataset)"})
    dataset_path: Optional[str] = field(default=None, metadata={
        "help": "a dataset saved with save_to_disk (a DatasetDict, or one Dataset used as the train split)"})
    streaming: bool = field(default=False, metadata={
        "help": "read the data as a stream (datasets.IterableDataset), never whole; needs --max_steps"})
    train_split_name: str = field(default="train", metadata={"help": "training split ('a+b' joins splits)"})
    eval_split_name: str = field(default="validation", metadata={"help": "evaluation split (skipped if absent)"})
    test_split_name: str = field(default="test", metadata={"help": "test split, evaluated at the end if present"})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "keep the first N training examples"})
    max_eval_samples: Optional[int] = field(default=None, metadata={
        "help": "keep the first N examples of every evaluation split"})
    dataset_cache_dir: Optional[str] = field(default=None, metadata={"help": "datasets' cache folder (load_dataset)"})


@dataclass
class AudioDatasetArguments(DatasetSourceArguments):
    """A `DatasetSourceArguments` for audio: folders of audio files and the audio column."""

    train_dir: Optional[str] = field(default=None, metadata={
        "help": "a folder of training audio files (audiofolder layout: label = parent folder name, or a metadata.csv/"
                "metadata.jsonl with file_name + other columns)"})
    eval_dir: Optional[str] = field(default=None, metadata={"help": "a folder of evaluation audio files"})
    test_dir: Optional[str] = field(default=None, metadata={"help": "a folder of test audio files"})
    audio_column_name: str = field(default="audio", metadata={"help": "the column holding the audio"})


@dataclass
class TranscribedAudioDatasetArguments(AudioDatasetArguments):
    """An `AudioDatasetArguments` for speech recognition: the transcript column, a duration limit, and where a
    stream's vocabulary comes from."""

    text_column_name: str = field(default="text", metadata={"help": "the column holding the transcripts"})
    max_duration_in_seconds: Optional[float] = field(default=None, metadata={
        "help": "drop training clips longer than this (read from each file's header before training, nothing "
                "decoded; lazily with --streaming). Default: keep all"})
    vocabulary_samples: int = field(default=10000, metadata={
        "help": "with --streaming: the characters of the vocabulary come from this many transcripts at the start of "
                "the stream (map-style data: from all training transcripts)"})


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def user_source(args: DatasetSourceArguments) -> Optional[str]:
    """Which source flag the user gave (`None`: the embedded corpus); more than one is an error."""
    given = [name for name in ("dataset_name", "dataset_path", "train_dir") if getattr(args, name, None)]
    evaluation_folders = getattr(args, "eval_dir", None) or getattr(args, "test_dir", None)
    if getattr(args, "train_dir", None) is None and evaluation_folders:
        raise ValueError("--eval_dir / --test_dir need --train_dir (the training audio folder).")
    if len(given) > 1:
        raise ValueError(f"Give one data source, not {' and '.join('--' + g for g in given)}.")
    return given[0] if given else None


def load_splits(args: DatasetSourceArguments, embedded: Optional[Callable[[], Any]] = None) -> dict:
    """`{split name: datasets.Dataset or IterableDataset}` from the source in `args` (or `embedded()`, a DatasetDict,
    when none is given). Audio columns come back undecoded (`Audio(decode=False)`); `--max_*_samples` applied; with
    `--streaming` every split is an `IterableDataset`. The training split must exist; others are optional."""
    import datasets

    source = user_source(args)
    if source is None:
        if embedded is None:
            raise ValueError("This script has no embedded corpus: pass --dataset_name, --train_dir or --dataset_path.")
        splits = dict(embedded())
    elif source == "dataset_path":
        loaded = datasets.load_from_disk(args.dataset_path)
        splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {args.train_split_name: loaded}
    elif source == "train_dir":
        splits = {args.train_split_name: load_audio_folder(args.train_dir)}
        for split, directory in ((args.eval_split_name, args.eval_dir), (args.test_split_name, args.test_dir)):
            if directory:
                splits[split] = load_audio_folder(directory, labels_like=splits[args.train_split_name])
    else:
        loaded = datasets.load_dataset(args.dataset_name, args.dataset_config_name, cache_dir=args.dataset_cache_dir,
                                       streaming=args.streaming)
        splits = dict(loaded) if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)) \
            else {args.train_split_name: loaded}

    for name in (args.train_split_name, args.eval_split_name, args.test_split_name):
        if "+" in name:
            splits[name] = _join_splits(splits, name)
    if args.train_split_name not in splits:
        raise ValueError(f"No split {args.train_split_name!r} in the data (it has {sorted(splits)}): pass "
                         "--train_split_name.")
    audio_column = getattr(args, "audio_column_name", None)
    result = {}
    for name, split in splits.items():
        if audio_column is not None and isinstance(split.features, dict) and \
                isinstance(split.features.get(audio_column), datasets.Audio):
            split = split.cast_column(audio_column, datasets.Audio(decode=False))
        limit = args.max_train_samples if name == args.train_split_name else args.max_eval_samples
        if limit is not None:
            split = split.take(limit) if isinstance(split, datasets.IterableDataset) \
                else split.select(range(min(limit, len(split))))
        if args.streaming and isinstance(split, datasets.Dataset):
            split = split.to_iterable_dataset()
        result[name] = split
    return result


def _join_splits(splits: dict, name: str):
    import datasets

    parts = name.split("+")
    missing = [p for p in parts if p not in splits]
    if missing:
        raise ValueError(f"No split {missing[0]!r} in the data (it has {sorted(splits)}).")
    return datasets.concatenate_datasets([splits[p] for p in parts])


def require_column(split, column: str, flag: str) -> None:
    """A clear error when `column` is not in `split` (the flag that names it, and the columns there are)."""
    names = list(split.features) if split.features is not None else None
    if names is not None and column not in names:
        raise ValueError(f"The data has no column {column!r} (columns: {names}); pass {flag} to name the right one.")


def load_audio_folder(directory: str, labels_like=None):
    """A folder of audio files in `datasets`' audiofolder layout -> `datasets.Dataset` with an `audio` column
    (`Audio(decode=False)`: path only, nothing read), the metadata columns, or a `label` `ClassLabel` from the parent
    folder names. `labels_like`: a split whose label names this one must reuse (evaluation folders)."""
    import datasets

    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"No audio folder at {directory!r}.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise ValueError(f"No audio files ({', '.join(AUDIO_EXTENSIONS)}) under {directory!r}.")
    metadata = next((root / m for m in METADATA_FILENAMES if (root / m).is_file()), None)
    columns: dict[str, list] = {}
    features = {"audio": datasets.Audio(decode=False)}
    if metadata is not None:
        rows = _read_metadata(metadata)
        by_file = {}
        for row in rows:
            if "file_name" not in row:
                raise ValueError(f"{metadata} needs a file_name column (paths relative to {directory!r}).")
            by_file[os.path.normpath(row["file_name"])] = row
        paths, kept = [], []
        for name, row in by_file.items():
            path = root / name
            if not path.is_file():
                raise FileNotFoundError(f"{metadata} names {name!r}, which is not a file under {directory!r}.")
            paths.append(path)
            kept.append(row)
        columns = {k: [r.get(k) for r in kept] for k in kept[0] if k != "file_name"}
        table = datasets.Dataset.from_dict(columns)  # infers the metadata columns' types
        features.update(table.features)
        files = paths
    else:
        parents = {p.parent for p in files}
        depths = {len(p.relative_to(root).parts) for p in files}
        if len(parents) > 1 and len(depths) == 1:
            names = list(labels_like.features["label"].names) if labels_like is not None and \
                isinstance(labels_like.features.get("label"), datasets.ClassLabel) else sorted(p.name for p in parents)
            unknown = sorted({p.parent.name for p in files} - set(names))
            if unknown:
                raise ValueError(f"{directory!r} has label folders {unknown} that the training folder does not have.")
            columns["label"] = [names.index(p.parent.name) for p in files]
            features["label"] = datasets.ClassLabel(names=names)
    columns = {"audio": [{"bytes": None, "path": str(p.resolve())} for p in files], **columns}
    # a cast, not `from_dict(features=...)`: encoding an Audio column would need torchcodec
    return datasets.Dataset.from_dict(columns).cast(datasets.Features(features))


def _read_metadata(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # csv gives strings: numbers back to numbers, as datasets' csv reader would
        for key, value in row.items():
            if key != "file_name":
                row[key] = _number_or_text(value)
    return rows


def _number_or_text(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except (TypeError, ValueError):
            pass
    return value


# ----------------------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------------------


def decode_audio(cell, sampling_rate: int, column: str = "audio", row=None) -> np.ndarray:
    """One audio cell -> float32 mono `(samples,)` at `sampling_rate`, finite and non-empty.

    Accepts what `datasets` rows hold: `{"bytes", "path"}` (an undecoded `Audio` column or an audio folder), `{"array",
    "sampling_rate"}` (a decoded one, or the embedded corpora), a file path, a file's bytes, or a torchcodec
    `AudioDecoder`. Anything else, an unreadable file, or empty / NaN audio raises a `ValueError` naming the column and
    the row."""
    from mamba_zoo.audio_utils import read_audio_file, resample_audio, validate_waveform

    where = f"column {column!r}" + ("" if row is None else f", row {row}")
    if isinstance(cell, dict) and cell.get("array") is not None:
        if cell.get("sampling_rate") is None:
            raise ValueError(f"Audio ({where}) has samples but no sampling_rate: store {{'array', 'sampling_rate'}}.")
        array = validate_waveform(cell["array"], name=f"Audio ({where})")
        return resample_audio(array, int(cell["sampling_rate"]), sampling_rate)
    try:
        if isinstance(cell, dict) and (cell.get("bytes") or cell.get("path")):
            audio = read_audio_file(cell.get("bytes") or cell["path"], sampling_rate)
        elif isinstance(cell, (bytes, bytearray)) or (isinstance(cell, (str, os.PathLike)) and os.path.isfile(cell)):
            audio = read_audio_file(bytes(cell) if isinstance(cell, (bytes, bytearray)) else os.fspath(cell),
                                    sampling_rate)
        elif type(cell).__name__ == "AudioDecoder":  # torchcodec, where it works: decode it as it is
            samples = cell.get_all_samples()
            audio = resample_audio(samples.data.float().mean(0).numpy(), int(samples.sample_rate), sampling_rate)
        else:
            shown = repr(cell) if not isinstance(cell, (list, np.ndarray)) else f"a {type(cell).__name__} of numbers"
            raise ValueError(
                f"Cannot read audio: {where} holds {shown[:80]}, which is not audio (an Audio cell, an "
                "{'array', 'sampling_rate'} dict, a file path or a file's bytes). Pass --audio_column_name to name "
                "the audio column.")
    except (RuntimeError, OSError, TypeError) as error:  # soundfile: missing or undecodable file
        raise ValueError(f"Cannot read audio from {where}: {type(error).__name__}: {error}. Fix or drop the row.") \
            from error
    return validate_waveform(audio, name=f"Audio ({where})")


def label_names(split, column: str) -> list[str]:
    """The class names of a `ClassLabel` column; for a column of strings, its sorted distinct values (map-style data
    only: a stream cannot be scanned up front)."""
    import datasets

    feature = split.features.get(column) if split.features is not None else None
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if isinstance(split, datasets.IterableDataset):
        raise ValueError(f"Streaming needs the label column {column!r} to be a ClassLabel (class names known before "
                         "reading the data); cast it with datasets' cast_column, or train without --streaming.")
    return sorted({str(v) for v in split[column]})


# ----------------------------------------------------------------------------------------------------------------------
# On-the-fly datasets for the Trainer
# ----------------------------------------------------------------------------------------------------------------------


class OnTheFlyDataset(torch.utils.data.Dataset):
    """A map-style `datasets.Dataset` whose rows become training items only when asked for: `prepare(row, index)` runs
    in `__getitem__` (so in the DataLoader's workers). Rows are read in numpy format (arrays, not Python lists)."""

    def __init__(self, source, prepare: Callable[[dict, int], dict]):
        self.source = source.with_format("numpy") if hasattr(source, "with_format") else source
        self.prepare = prepare

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        return self.prepare(self.source[int(index)], int(index))


class OnTheFlyStream(torch.utils.data.IterableDataset):
    """The streaming twin of `OnTheFlyDataset`: `prepare(row, None)` on each row of a `datasets.IterableDataset`
    (which shards itself over DataLoader workers)."""

    def __init__(self, source, prepare: Callable[[dict, Optional[int]], dict]):
        self.source, self.prepare = source, prepare

    def __iter__(self):
        for row in self.source:
            yield self.prepare(row, None)

    def set_epoch(self, epoch: int):  # the Trainer reshuffles a stream between epochs through this
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)


def on_the_fly(source, prepare: Callable[[dict, Optional[int]], dict]):
    """`OnTheFlyStream` for a `datasets.IterableDataset`, else `OnTheFlyDataset`."""
    import datasets

    if isinstance(source, datasets.IterableDataset):
        return OnTheFlyStream(source, prepare)
    return OnTheFlyDataset(source, prepare)


def check_streaming_training(args: DatasetSourceArguments, training_args) -> None:
    """A stream has no length, so the Trainer cannot count epochs: training on one needs `--max_steps`."""
    if args.streaming and (training_args.max_steps is None or training_args.max_steps <= 0):
        raise ValueError("--streaming needs --max_steps (a stream has no length, so epochs cannot be counted).")


# ----------------------------------------------------------------------------------------------------------------------
# Helpers the recipes share
# ----------------------------------------------------------------------------------------------------------------------


def is_stream(split) -> bool:
    """Whether `split` is a `datasets.IterableDataset` (no length, read in order)."""
    import datasets

    return isinstance(split, datasets.IterableDataset)


def column_texts(split, column: str, limit: int) -> list[str]:
    """One column's values as strings, only that column read: all of a map-style split's, the first `limit` of a
    stream's (the transcripts a recipe builds its vocabulary from)."""
    import itertools

    if is_stream(split):
        return [str(row[column]) for row in itertools.islice(split.select_columns([column]), limit)]
    return [str(value) for value in split[column]]


def describe_source(args: DatasetSourceArguments) -> Optional[str]:
    """The user's data source in words, for logs and model cards (None: the embedded corpus)."""
    source = user_source(args)
    if source is None:
        return None
    if source == "dataset_name":
        name = args.dataset_name + (f" ({args.dataset_config_name})" if args.dataset_config_name else "")
    elif source == "dataset_path":
        name = f"the dataset saved at {args.dataset_path}"
    else:
        name = f"the audio folder {args.train_dir}"
    return name + (", streamed" if args.streaming else "")


def decode_split(split, sampling_rate: int, audio_column: str = "audio", text_column: str = "text"):
    """An evaluation split (map-style, or a stream read once) in memory: `(audio, text, voices)`, every clip decoded at
    `sampling_rate` (`decode_audio`); `voices` from the `voice` column, or None without one."""
    columns = [audio_column, text_column]
    has_voice = split.features is not None and "voice" in split.features
    if has_voice:
        columns.append("voice")
    rows = split.select_columns(columns)
    audio, text, voices = [], [], []
    for index, row in enumerate(rows if is_stream(split) else rows.with_format("numpy")):
        audio.append(decode_audio(row[audio_column], sampling_rate, audio_column, index))
        text.append(str(row[text_column]))
        if has_voice:
            voices.append(str(row["voice"]))
    return audio, text, (voices if has_voice else None)


def clip_seconds(cell, column: str = "audio") -> float:
    """A clip's duration without decoding it: its file header (soundfile.info, for `{bytes, path}` cells, paths and
    bytes), or an in-memory array's length; decoded only when the header cannot be read."""
    import io

    import soundfile

    if isinstance(cell, dict) and cell.get("array") is not None:
        return len(cell["array"]) / float(cell["sampling_rate"])
    source = (cell.get("bytes") or cell.get("path")) if isinstance(cell, dict) else cell
    try:
        info = soundfile.info(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        if info.frames > 0:
            return info.frames / info.samplerate
    except (RuntimeError, TypeError, OSError):  # soundfile: no readable header (decoded below instead)
        pass
    return len(decode_audio(cell, 16000, column)) / 16000


def drop_long_clips(split, audio_column: str, max_seconds: Optional[float]):
    """`split` without clips longer than `max_seconds` (None: all kept). Map-style: `Dataset.filter`, one pass reading
    each clip's header before training (nothing decoded or kept); a stream: the same test, lazily."""
    if max_seconds is None:
        return split
    keep = lambda cell: clip_seconds(cell, audio_column) <= max_seconds  # noqa: E731
    if is_stream(split):
        return split.filter(keep, input_columns=[audio_column])
    return split.filter(keep, input_columns=[audio_column], desc=f"training clips <= {max_seconds:g} s")
