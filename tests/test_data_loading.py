"""training/data_loading.py: every way a user's data comes in (audio folders, save_to_disk, load_dataset by name from the
offline cache, streaming), audio decoding without torchcodec, clear errors for bad cells, lazy on-the-fly items."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("datasets")
pytest.importorskip("soundfile")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "tests"))
import data_loading as dl  # noqa: E402
from user_data_utils import (  # noqa: E402
    classification_examples,
    make_dataset,
    place_in_hf_datasets_cache,
    transcribed_examples,
    wav_bytes,
    write_audio_folder,
)


def args(**kwargs):
    return dl.AudioDatasetArguments(**kwargs)


# ---------------------------------------------------------------------------------------------------------- folders


def test_audio_folder_labels_come_from_folder_names_and_evaluation_reuses_them(tmp_path):
    write_audio_folder(tmp_path / "train", classification_examples(3, labels=("zebra", "apple", "mango")))
    write_audio_folder(tmp_path / "eval", classification_examples(2, labels=("mango", "zebra"), seed=1))
    splits = dl.load_splits(args(train_dir=str(tmp_path / "train"), eval_dir=str(tmp_path / "eval")))
    train, evaluation = splits["train"], splits["validation"]
    assert train.features["label"].names == ["apple", "mango", "zebra"]
    assert evaluation.features["label"].names == ["apple", "mango", "zebra"]  # the training ids, not its own
    assert len(train) == 9 and len(evaluation) == 4
    assert sorted(set(evaluation["label"])) == [1, 2]
    row = train.with_format("numpy")[0]
    clip = dl.decode_audio(row["audio"], 16000)
    assert clip.dtype == np.float32 and clip.shape == (16000,) and np.abs(clip).max() > 0.1


def test_audio_folder_with_an_unknown_evaluation_label_is_an_error(tmp_path):
    write_audio_folder(tmp_path / "train", classification_examples(1, labels=("a", "b")))
    write_audio_folder(tmp_path / "eval", classification_examples(1, labels=("a", "c")))
    with pytest.raises(ValueError, match=r"label folders \['c'\]"):
        dl.load_splits(args(train_dir=str(tmp_path / "train"), eval_dir=str(tmp_path / "eval")))


def test_audio_folder_metadata_columns_are_attached_by_file_name(tmp_path):
    examples = transcribed_examples(5)
    for i, e in enumerate(examples):
        e["speaker_id"] = 7 + i
    write_audio_folder(tmp_path / "asr", examples, metadata=True)
    data = dl.load_splits(args(train_dir=str(tmp_path / "asr")))["train"]
    assert data["text"] == [e["text"] for e in examples]
    assert data["speaker_id"] == [7, 8, 9, 10, 11]  # numbers stay numbers
    assert "label" not in data.column_names  # metadata given: no folder labels
    for row, example in zip(data.with_format("numpy"), examples):
        np.testing.assert_allclose(dl.decode_audio(row["audio"], 16000), example["audio"], atol=1e-4)


def test_audio_folder_metadata_errors_name_the_problem(tmp_path):
    write_audio_folder(tmp_path / "a", transcribed_examples(2), metadata=True)
    (tmp_path / "a" / "metadata.csv").write_text("file_name,text\n00000.wav,one\nmissing.wav,two\n")
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        dl.load_audio_folder(str(tmp_path / "a"))
    (tmp_path / "a" / "metadata.csv").write_text("name,text\n00000.wav,one\n")
    with pytest.raises(ValueError, match="file_name"):
        dl.load_audio_folder(str(tmp_path / "a"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No audio files"):
        dl.load_audio_folder(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="No audio folder"):
        dl.load_audio_folder(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------------------------------------------------- decoding


def test_decode_audio_reads_every_cell_kind_and_resamples(tmp_path):
    clip = classification_examples(1)[0]["audio"]
    data = wav_bytes(clip)
    path = tmp_path / "x.wav"
    path.write_bytes(data)
    for cell in ({"bytes": data, "path": None}, {"bytes": None, "path": str(path)}, str(path), data,
                 {"array": clip, "sampling_rate": 16000}):
        np.testing.assert_allclose(dl.decode_audio(cell, 16000), clip, atol=1e-4)
    at_8k = dl.decode_audio({"bytes": data, "path": "x.wav"}, 8000)
    assert at_8k.shape == (8000,)
    from scipy.signal import resample_poly

    np.testing.assert_allclose(at_8k, resample_poly(clip, 1, 2), atol=1e-3)
    stereo = tmp_path / "stereo.wav"
    import soundfile

    soundfile.write(stereo, np.stack([clip, -clip], axis=1), 16000)
    assert np.abs(dl.decode_audio(str(stereo), 16000)).max() < 1e-4  # mixed to mono: the mean of the channels


@pytest.mark.parametrize("cell, message", [
    (5, r"column 'audio', row 3 holds 5, which is not audio.*--audio_column_name"),
    ("no such file", r"holds 'no such file', which is not audio"),
    ([0.1, 0.2], r"holds a list of numbers, which is not audio"),
    ({"array": [0.1, 0.2]}, r"samples but no sampling_rate"),
    ({"array": np.full(400, np.nan), "sampling_rate": 16000}, r"row 3.*NaN"),
    ({"array": np.zeros(0), "sampling_rate": 16000}, r"row 3.*empty"),
    ({"bytes": b"not a wav file at all", "path": None}, r"Cannot read audio from column 'audio', row 3"),
])
def test_bad_cells_are_errors_that_name_the_column_and_row(cell, message):
    with pytest.raises(ValueError, match=message):
        dl.decode_audio(cell, 16000, "audio", 3)


# ---------------------------------------------------------------------------------------------------------- sources


def test_one_source_only_and_evaluation_folders_need_a_training_folder(tmp_path):
    with pytest.raises(ValueError, match="--dataset_name and --dataset_path"):
        dl.load_splits(args(dataset_name="a/b", dataset_path=str(tmp_path)))
    with pytest.raises(ValueError, match="--eval_dir / --test_dir need --train_dir"):
        dl.load_splits(args(eval_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="no embedded corpus"):
        dl.load_splits(args())


def test_save_to_disk_splits_join_limit_and_cast_audio_undecoded(tmp_path):
    from datasets import Audio, DatasetDict

    data = DatasetDict(train=make_dataset(classification_examples(3)),
                       validation=make_dataset(classification_examples(2, seed=1)))
    assert data["train"].features["audio"].decode  # decoding would need torchcodec, which is not installed here
    data.save_to_disk(tmp_path / "disk")
    splits = dl.load_splits(args(dataset_path=str(tmp_path / "disk"), train_split_name="train+validation",
                                 max_eval_samples=1))
    assert len(splits["train+validation"]) == 10
    assert len(splits["validation"]) == 1
    assert isinstance(splits["train"].features["audio"], Audio) and not splits["train"].features["audio"].decode
    assert isinstance(splits["train"][0]["audio"]["bytes"], bytes)
    with pytest.raises(ValueError, match=r"No split 'training'.*\['train', 'validation'\]"):
        dl.load_splits(args(dataset_path=str(tmp_path / "disk"), train_split_name="training"))
    make_dataset(classification_examples(1)).save_to_disk(tmp_path / "one")  # a single Dataset = the train split
    assert list(dl.load_splits(args(dataset_path=str(tmp_path / "one")))) == ["train"]


def test_streaming_gives_iterable_splits_with_their_limits(tmp_path):
    import datasets

    write_audio_folder(tmp_path / "train", classification_examples(4))
    splits = dl.load_splits(args(train_dir=str(tmp_path / "train"), streaming=True, max_train_samples=3))
    assert isinstance(splits["train"], datasets.IterableDataset)
    rows = list(splits["train"])
    assert len(rows) == 3 and dl.decode_audio(rows[0]["audio"], 16000).shape == (16000,)
    with pytest.raises(ValueError, match="ClassLabel"):
        dl.label_names(splits["train"].cast_column("label", datasets.Value("string")), "label")


def test_load_dataset_by_name_from_the_offline_cache(tmp_path):
    """`--dataset_name org/name` with HF_HUB_OFFLINE=1: the dataset left in the cache by an earlier download loads,
    map-style and streamed, and its Audio column decodes without torchcodec. In a fresh process: `datasets` reads
    HF_HOME when it is imported."""
    hf_home = tmp_path / "hf"
    place_in_hf_datasets_cache(hf_home, "mamba-zoo/tiny-keywords", {
        "train": make_dataset(classification_examples(3)), "test": make_dataset(classification_examples(1, seed=2))})
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT / 'training')!r})
        import data_loading as dl
        out = {{}}
        for streaming in (False, True):
            splits = dl.load_splits(dl.AudioDatasetArguments(dataset_name="mamba-zoo/tiny-keywords",
                                                             streaming=streaming))
            rows = list(splits["train"])
            out[str(streaming)] = {{"splits": sorted(splits), "rows": len(rows), "labels": [int(r["label"]) for r in rows],
                                   "samples": len(dl.decode_audio(rows[0]["audio"], 16000))}}
        print(json.dumps(out))
    """)
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for streaming in ("False", "True"):
        assert out[streaming] == {"splits": ["test", "train"], "rows": 6, "labels": [0, 0, 0, 1, 1, 1],
                                  "samples": 16000}


# ---------------------------------------------------------------------------------------------------------- lazy items


def test_on_the_fly_items_are_prepared_only_when_asked_for(tmp_path):
    write_audio_folder(tmp_path / "train", classification_examples(5))
    source = dl.load_splits(args(train_dir=str(tmp_path / "train")))["train"]
    calls = []

    def prepare(row, index):
        calls.append(index)
        return {"n": len(dl.decode_audio(row["audio"], 16000)), "index": index}

    items = dl.on_the_fly(source, prepare)
    assert isinstance(items, dl.OnTheFlyDataset) and len(items) == 10 and calls == []
    assert items[7] == {"n": 16000, "index": 7} and calls == [7]


def test_a_stream_is_read_once_across_dataloader_workers(tmp_path):
    import torch

    write_audio_folder(tmp_path / "train", classification_examples(4))
    source = dl.load_splits(args(train_dir=str(tmp_path / "train")))["train"].to_iterable_dataset(num_shards=2)
    items = dl.on_the_fly(source, lambda row, index: {"path": row["audio"]["path"]})
    assert isinstance(items, dl.OnTheFlyStream)
    loader = torch.utils.data.DataLoader(items, batch_size=None, num_workers=2)
    paths = [item["path"] for item in loader]
    assert len(paths) == 8 and len(set(paths)) == 8  # every clip once, none twice


def test_streaming_training_needs_max_steps():
    from types import SimpleNamespace

    with pytest.raises(ValueError, match="--streaming needs --max_steps"):
        dl.check_streaming_training(args(streaming=True), SimpleNamespace(max_steps=-1))
    dl.check_streaming_training(args(streaming=True), SimpleNamespace(max_steps=5))
    dl.check_streaming_training(args(), SimpleNamespace(max_steps=-1))


def test_missing_columns_name_the_flag(tmp_path):
    write_audio_folder(tmp_path / "train", classification_examples(1))
    source = dl.load_splits(args(train_dir=str(tmp_path / "train")))["train"]
    with pytest.raises(ValueError, match=r"no column 'sentence' \(columns: \['audio', 'label'\]\).*--text_column_name"):
        dl.require_column(source, "sentence", "--text_column_name")
