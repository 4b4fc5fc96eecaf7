"""SSAMBA fine-tuning and pretraining on a user's own data, through every loading mode of training/data_loading.py, as
2-step Trainer runs from the command line (flags as in transformers' run_audio_classification.py)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("datasets")
pytest.importorskip("soundfile")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "tests"))
import finetune_audio_classification as finetune  # noqa: E402
import pretrain_ssamba as pretrain  # noqa: E402
from user_data_utils import (  # noqa: E402
    classification_examples,
    make_dataset,
    offline_hf_cache,
    place_in_hf_datasets_cache,
    write_audio_folder,
)

NO_STEPS = ["--hidden_size", "16", "--num_hidden_layers", "2", "--patch_frames", "8", "--drop_path_rate", "0",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
            "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--learning_rate", "1e-2"]
TINY = [*NO_STEPS, "--max_steps", "2"]
LABELS = ("down", "go", "up")


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def check_run(output_dir: Path, results: dict, train_clips, test_clips=None):
    assert results["train_steps"] == 2 and results["train_clips"] == train_clips
    if test_clips is not None:
        assert results["test_clips"] == test_clips and 0 <= results["test_accuracy"] <= 1
    from mamba_zoo import SSAMBAForAudioClassification

    model = SSAMBAForAudioClassification.from_pretrained(output_dir)
    assert list(model.config.id2label.values()) == list(LABELS)
    assert json.loads((output_dir / "results.json").read_text()) == results


def test_audio_folders_train_validate_and_test(tmp_path):
    write_audio_folder(tmp_path / "data" / "train", classification_examples(3, LABELS))
    write_audio_folder(tmp_path / "data" / "validation", classification_examples(1, LABELS, seed=1))
    write_audio_folder(tmp_path / "data" / "test", classification_examples(2, LABELS, seed=2))
    out = tmp_path / "out"
    results = finetune.main(["--train_dir", str(tmp_path / "data" / "train"),
                             "--eval_dir", str(tmp_path / "data" / "validation"),
                             "--test_dir", str(tmp_path / "data" / "test"), "--output_dir", str(out),
                             "--dataloader_num_workers", "2", *TINY])  # featurised in two worker processes
    check_run(out, results, train_clips=9, test_clips=6)
    assert results["data_source"] == "train_dir" and 0 <= results["validation_accuracy"] <= 1
    assert "the audio folder" in (out / "README.md").read_text()


def test_save_to_disk_with_string_labels_and_renamed_columns(tmp_path):
    """Columns named as the user has them (`--audio_column_name`, `--label_column_name`); labels stored as strings
    become classes in sorted order; an evaluation label never seen in training is a clear error."""
    from datasets import DatasetDict

    def split(n, seed):
        data = make_dataset(classification_examples(n, LABELS, seed=seed))
        names = data.features["label"].names
        data = data.cast_column("label", __import__("datasets").Value("int64"))
        return data.map(lambda r: {"word": names[r["label"]]}).remove_columns("label").rename_column("audio", "speech")

    DatasetDict(train=split(2, 0), dev=split(1, 1)).save_to_disk(tmp_path / "disk")
    out = tmp_path / "out"
    results = finetune.main(["--dataset_path", str(tmp_path / "disk"), "--audio_column_name", "speech",
                             "--label_column_name", "word", "--eval_split_name", "dev", "--output_dir", str(out), *TINY])
    check_run(out, results, train_clips=6)
    assert "test_accuracy" not in results and 0 <= results["validation_accuracy"] <= 1

    with pytest.raises(ValueError, match=r"no column 'label'.*--label_column_name"):
        finetune.main(["--dataset_path", str(tmp_path / "disk"), "--audio_column_name", "speech",
                       "--output_dir", str(out), *TINY])


def test_dataset_name_from_the_offline_cache(tmp_path, monkeypatch):
    """`--dataset_name` with the Hub offline: the dataset an earlier download left in the cache (a fresh process with
    HF_HOME / HF_HUB_OFFLINE=1 is tested in test_data_loading.py)."""
    hf_home = tmp_path / "hf"
    place_in_hf_datasets_cache(hf_home, "someone/keywords", {
        "train": make_dataset(classification_examples(2, LABELS)),
        "test": make_dataset(classification_examples(1, LABELS, seed=3), label_names=LABELS)})
    offline_hf_cache(monkeypatch, hf_home)
    out = tmp_path / "out"
    results = finetune.main(["--dataset_name", "someone/keywords", "--output_dir", str(out), *TINY])
    check_run(out, results, train_clips=6, test_clips=3)
    assert results["data_source"] == "dataset_name" and "someone/keywords" in (out / "README.md").read_text()


def test_streaming_trains_max_steps_and_evaluates_the_stream(tmp_path):
    write_audio_folder(tmp_path / "train", classification_examples(3, LABELS))
    write_audio_folder(tmp_path / "test", classification_examples(1, LABELS, seed=2))
    out = tmp_path / "out"
    results = finetune.main(["--train_dir", str(tmp_path / "train"), "--test_dir", str(tmp_path / "test"),
                             "--streaming", "--output_dir", str(out), *TINY])
    check_run(out, results, train_clips="streamed", test_clips=3)
    with pytest.raises(ValueError, match="--streaming needs --max_steps"):
        finetune.main(["--train_dir", str(tmp_path / "train"), "--streaming", "--output_dir", str(out),
                       *NO_STEPS])
    with pytest.raises(ValueError, match="drop --streaming"):
        finetune.main(["--train_dir", str(tmp_path / "train"), "--streaming", "--waveform_augment_copies", "1",
                       "--output_dir", str(out), *TINY])


def test_long_training_clips_are_cut_at_a_random_offset():
    from mamba_zoo import SSAMBAFeatureExtractor

    import torch

    fe = SSAMBAFeatureExtractor.from_preset("speechcommands")  # 128 frames: about 1.3 s
    clip = np.concatenate([e["audio"] for e in classification_examples(1, ("a", "b", "c"))])  # 3 s, three tones
    items = finetune.SpectrogramItems(fe, "audio", max_samples=16000)
    torch.manual_seed(0)
    windows = {tuple(items({"audio": {"array": clip, "sampling_rate": 16000}})["input_values"][:98, 0].tolist())
               for _ in range(6)}
    assert len(windows) > 1  # different offsets
    uncut = finetune.SpectrogramItems(fe, "audio")({"audio": {"array": clip, "sampling_rate": 16000}})
    assert torch.equal(uncut["input_values"], fe(clip, sampling_rate=16000, return_tensors="pt")["input_values"][0])


def test_pretraining_on_an_audio_folder_and_a_stream(tmp_path):
    write_audio_folder(tmp_path / "unlabeled", classification_examples(3, LABELS))
    common = ["--hidden_size", "32", "--num_hidden_layers", "2", "--mask_patch_count", "8", "--max_steps", "2",
              "--per_device_train_batch_size", "4", "--report_to", "none", "--save_strategy", "no",
              "--disable_tqdm", "true"]
    folder = pretrain.main(["--train_dir", str(tmp_path / "unlabeled"), "--output_dir", str(tmp_path / "a"), *common])
    assert folder["pretraining_clips"] == 9 and folder["steps"] == 2
    stream = pretrain.main(["--train_dir", str(tmp_path / "unlabeled"), "--streaming", "--output_dir",
                            str(tmp_path / "b"), *common])
    assert stream["pretraining_clips"] == "streamed" and stream["steps"] == 2
    assert 0 <= stream["final_discriminative_accuracy"] <= 1
