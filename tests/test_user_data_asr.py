"""Bring your own data to the ASR recipes (`training/train_ctc.py`, `training/train_decoder_asr.py`): a 2-step run of
each script through every loading mode of `training/data_loading.py` (an audio folder with metadata.csv, a
save_to_disk DatasetDict, a Hub dataset from the offline cache, a stream), and the clear errors of the data flags.

The data are a few generated tone "utterances" (`tests/user_data_utils.py`); models are tiny and evaluate two clips."""

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "tests"))
import train_ctc as ctc  # noqa: E402
import train_decoder_asr as decoder_asr  # noqa: E402
from user_data_utils import (  # noqa: E402
    make_dataset,
    offline_hf_cache,
    place_in_hf_datasets_cache,
    transcribed_examples,
    write_audio_folder,
)

HUB_NAME = "tiny-org/tiny-speech"
TINY_CTC = ["--hidden_size", "16", "--num_hidden_layers", "1", "--subsampling_conv_channels", "8",
            "--per_device_train_batch_size", "2", "--max_steps", "2", "--max_eval_samples", "2", "--skip_long_form"]
TINY_ASR = ["--hidden_size", "16", "--num_layers", "1", "--subsampling_channels", "8", "--state_size", "4",
            "--per_device_train_batch_size", "2", "--max_steps", "2", "--max_eval_samples", "2"]


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same tiny corpus in every layout: examples, audio folders, a saved DatasetDict, a Hub-cache copy."""
    from datasets import DatasetDict

    root = tmp_path_factory.mktemp("user-data")
    train, dev, test = transcribed_examples(6, seed=0), transcribed_examples(3, seed=1), transcribed_examples(3, seed=2)
    write_audio_folder(root / "folder" / "train", train, metadata=True)
    write_audio_folder(root / "folder" / "dev", dev, metadata=True)
    DatasetDict(train=make_dataset(train), validation=make_dataset(dev), test=make_dataset(test)).save_to_disk(
        root / "saved")
    # a Hub dataset whose evaluation split is called "dev", and whose transcripts have a letter beyond a-z
    accented = [{**e, "text": e["text"].replace("o", "ó")} for e in train]
    place_in_hf_datasets_cache(root / "hf", HUB_NAME, {"train": make_dataset(accented), "dev": make_dataset(dev)})
    return {"root": root, "train": train, "dev": dev, "test": test, "accented": accented}


def characters(texts):
    return {c for t in texts for c in t if c != " "}


def ctc_vocabulary(out: Path) -> set:
    return set(json.loads((out / "vocab.json").read_text())) - {"<pad>", "<unk>", "|"}


def assert_rates(rates: dict):
    assert all(math.isfinite(rates[k]) and rates[k] >= 0 for k in ("wer", "cer")), rates


@pytest.fixture()
def hub_runs(data, tmp_path, monkeypatch):
    """Both scripts trained on `--dataset_name HUB_NAME`, loaded from datasets' cache with the Hub offline (a fresh
    process with HF_HOME / HF_HUB_OFFLINE=1 is tested in test_data_loading.py). Returns {script: output dir}."""
    offline_hf_cache(monkeypatch, data["root"] / "hf")
    hub = ["--dataset_name", HUB_NAME, "--eval_split_name", "dev"]
    outputs = {"train_ctc.py": tmp_path / "ctc", "train_decoder_asr.py": tmp_path / "asr"}
    ctc.main(TINY_CTC + hub + ["--output_dir", str(outputs["train_ctc.py"])])
    decoder_asr.main(TINY_ASR + hub + ["--output_dir", str(outputs["train_decoder_asr.py"])])
    return outputs


def hub_output(hub_runs, script: str) -> Path:
    return hub_runs[script]


# ---------------------------------------------------------------------------------------------- train_ctc


def test_ctc_audio_folder_with_metadata(tmp_path, data):
    out = tmp_path / "ctc"
    results = ctc.main(TINY_CTC + ["--train_dir", str(data["root"] / "folder" / "train"),
                                   "--eval_dir", str(data["root"] / "folder" / "dev"), "--output_dir", str(out)])
    assert results["steps"] == 2 and results["num_train"] == len(data["train"])
    assert results["split_names"] == {"train": "train", "validation": "validation"}  # --eval_dir: no test split
    assert results["validation_utterances"] == 2 and "test" not in results  # --max_eval_samples 2
    assert_rates(results["validation"])
    assert results["dataset"].startswith("the audio folder") and "training_engines" not in results
    written = json.loads((out / "eval_results.json").read_text())
    assert written["validation"]["wer"] == results["validation"]["wer"]
    assert ctc_vocabulary(out) == characters(e["text"] for e in data["train"])
    assert "trained with `training/train_ctc.py` on the audio folder" in (out / "README.md").read_text()


def test_ctc_saved_dataset_dict_with_duration_limit_and_augmentation(tmp_path, data):
    """--dataset_path: every split used; --max_duration_in_seconds drops the long training clips before training;
    --waveform_augment_copies works on user data (map-style)."""
    out = tmp_path / "ctc"
    results = ctc.main(TINY_CTC + ["--dataset_path", str(data["root"] / "saved"), "--max_duration_in_seconds", "0.9",
                                   "--waveform_augment_copies", "1", "--output_dir", str(out)])
    short = [e for e in data["train"] if len(e["audio"]) <= 0.9 * 16000]
    assert 0 < len(short) < len(data["train"])  # the limit drops some clips, not all
    assert results["num_train"] == len(short) and results["num_train_too_long"] == len(data["train"]) - len(short)
    assert results["split_names"] == {"train": "train", "validation": "validation", "test": "test"}
    assert (results["validation_utterances"], results["test_utterances"]) == (2, 2)
    assert_rates(results["validation"])
    assert_rates(results["test"])
    assert results["waveform_augment_copies"] == 1 and results["steps"] == 2
    assert ctc_vocabulary(out) == characters(e["text"] for e in short)


def test_ctc_hub_dataset_from_the_offline_cache(hub_runs, data):
    out = hub_output(hub_runs, "train_ctc.py")
    results = json.loads((out / "eval_results.json").read_text())
    assert results["dataset"] == HUB_NAME and results["num_train"] == len(data["accented"])
    assert results["split_names"] == {"train": "train", "validation": "dev"}
    assert results["validation_utterances"] == 2 and results["steps"] == 2
    assert_rates(results["validation"])
    assert ctc_vocabulary(out) == characters(e["text"] for e in data["accented"]) and "ó" in ctc_vocabulary(out)
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


def test_ctc_streaming_builds_the_vocabulary_from_the_first_transcripts(tmp_path, data):
    """--streaming: the vocabulary from the first --vocabulary_samples transcripts; a test folder and no validation
    split (no evaluation during training, the test split decoded after it)."""
    out = tmp_path / "ctc"
    results = ctc.main(TINY_CTC + ["--train_dir", str(data["root"] / "folder" / "train"),
                                   "--test_dir", str(data["root"] / "folder" / "dev"), "--streaming",
                                   "--vocabulary_samples", "2", "--output_dir", str(out)])
    assert results["steps"] == 2 and results["num_train"] is None and results["dataset"].endswith(", streamed")
    assert results["split_names"] == {"train": "train", "test": "test"} and "validation" not in results
    assert results["test_utterances"] == 2
    assert_rates(results["test"])
    assert ctc_vocabulary(out) == characters(e["text"] for e in data["train"][:2])  # the stream's first 2 only
    assert "streamed training utterances" in (out / "README.md").read_text()


def test_ctc_data_errors_name_the_flag(tmp_path, data):
    folder = ["--train_dir", str(data["root"] / "folder" / "train"), "--output_dir", str(tmp_path / "ctc")]
    with pytest.raises(ValueError, match="--text_column_name"):
        ctc.main(TINY_CTC + folder + ["--text_column_name", "transcript"])
    with pytest.raises(ValueError, match="--streaming needs --max_steps"):
        ctc.main(folder + ["--streaming"])
    with pytest.raises(ValueError, match="--waveform_augment_copies needs map-style data"):
        ctc.main(TINY_CTC + folder + ["--streaming", "--waveform_augment_copies", "1"])


# ---------------------------------------------------------------------------------------------- train_decoder_asr


def assert_decoder_outputs(out: Path, result: dict, role: str):
    assert result["steps"] == 2 and math.isfinite(result[f"{role}_wer"]) and math.isfinite(result[f"{role}_cer"])
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(result))
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "README.md"):
        assert (out / name).is_file(), name


def test_decoder_asr_audio_folder_with_metadata(tmp_path, data):
    out = tmp_path / "asr"
    result = decoder_asr.main(TINY_ASR + ["--train_dir", str(data["root"] / "folder" / "train"),
                                          "--eval_dir", str(data["root"] / "folder" / "dev"), "--output_dir", str(out)])
    assert_decoder_outputs(out, result, "validation")  # no test split: the validation split is decoded
    assert result["num_train"] == len(data["train"]) and result["validation_utterances"] == 2
    assert result["split_names"] == {"train": "train", "validation": "validation"} and "test_wer" not in result
    assert "kind" not in result and result["dataset"].startswith("the audio folder")


def test_decoder_asr_saved_dataset_dict(tmp_path, data):
    out = tmp_path / "asr"
    result = decoder_asr.main(TINY_ASR + ["--dataset_path", str(data["root"] / "saved"), "--max_train_samples", "4",
                                          "--output_dir", str(out)])
    assert_decoder_outputs(out, result, "test")  # a test split: decoded instead of validation
    assert result["num_train"] == 4 and result["test_utterances"] == 2 and "validation_wer" not in result
    assert result["split_names"] == {"train": "train", "test": "test"}


def test_decoder_asr_hub_dataset_from_the_offline_cache(hub_runs, data):
    out = hub_output(hub_runs, "train_decoder_asr.py")
    result = json.loads((out / "results.json").read_text())
    assert result["dataset"] == HUB_NAME and result["num_train"] == len(data["accented"]) and result["steps"] == 2
    assert result["split_names"] == {"train": "train", "validation": "dev"}
    assert math.isfinite(result["validation_wer"]) and result["validation_utterances"] == 2
    vocabulary = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert "ó" in vocabulary  # a character of the transcripts beyond the default a-z
    assert (out / "model.safetensors").is_file()


def test_decoder_asr_streaming(tmp_path, data):
    out = tmp_path / "asr"
    result = decoder_asr.main(TINY_ASR + ["--train_dir", str(data["root"] / "folder" / "train"),
                                          "--eval_dir", str(data["root"] / "folder" / "dev"), "--streaming",
                                          "--output_dir", str(out)])
    assert_decoder_outputs(out, result, "validation")
    assert result["num_train"] is None and result["dataset"].endswith(", streamed")
    assert "streamed training utterances" in (out / "README.md").read_text()


def test_decoder_asr_data_errors_name_the_flag(tmp_path, data):
    folder = ["--train_dir", str(data["root"] / "folder" / "train"), "--output_dir", str(tmp_path / "asr")]
    with pytest.raises(ValueError, match="--text_column_name"):
        decoder_asr.main(TINY_ASR + folder + ["--text_column_name", "transcript"])
    with pytest.raises(ValueError, match="--streaming needs --max_steps"):
        decoder_asr.main(folder + ["--streaming", "--num_train_epochs", "1"])
