"""Bring your own data to `training/train_causal_lm.py`: a 2-step run from each source a user may have (.txt files, a
`save_to_disk` folder, a dataset in the offline `datasets` cache, a stream of .jsonl), each checking what it read
against the data, and the clear errors (no text column, a stream without --max_steps)."""

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "tests"))
import train_causal_lm as causal_lm  # noqa: E402
from user_data_utils import offline_hf_cache, place_in_hf_datasets_cache  # noqa: E402

BLOCK = 16
TINY = ["--hidden_size", "32", "--num_layers", "2", "--ffn_hidden_size", "32", "--num_experts", "2",
        "--vocab_size", "300", "--block_size", str(BLOCK), "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8", "--logging_steps", "1", "--warmup_steps", "0"]


def lines(count: int, seed: int = 0) -> list[str]:
    """`count` short distinct sentences."""
    animals, places = ["cat", "dog", "fox", "owl", "hen"], ["river", "garden", "bridge", "house"]
    return [f"the {animals[(i + seed) % 5]} sat near the {places[(3 * i + seed) % 4]} at {i + 7 * seed} o'clock."
            for i in range(count)]


def expected_blocks(tokenizer, texts: list[str]) -> int:
    """Blocks of packing `texts` at once (each text + eos), the remainder dropped."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return sum(len(i) + 1 for i in ids) // BLOCK


def check_outputs(out: Path) -> dict:
    for name in ("metrics.json", "config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["train_tokens_seen"] == 2 * 4 * BLOCK
    assert math.isfinite(metrics["validation"]["perplexity"]) and metrics["validation"]["perplexity"] > 1
    return metrics


def test_train_and_validation_txt_files(tmp_path):
    from transformers import AutoTokenizer

    train, valid = lines(40), lines(10, seed=1)
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(valid) + "\n\n")  # a blank line: no text
    out = tmp_path / "out"
    causal_lm.main(TINY + ["--output_dir", str(out), "--train_file", str(tmp_path / "train.txt"),
                           "--validation_file", str(tmp_path / "valid.txt"),
                           "--dataset_cache_dir", str(tmp_path / "cache")])
    data = check_outputs(out)["data"]
    assert (data["source"], data["streaming"], data["tokenizer_texts"]) == ("train_file", False, 40)
    assert (data["train_texts"], data["validation_texts"]) == (40, 11)  # the blank line is a row, packed as nothing
    tokenizer = AutoTokenizer.from_pretrained(out)  # trained on these lines: a line is one text, eos after each
    assert (data["train_blocks"], data["validation_blocks"]) == (expected_blocks(tokenizer, train),
                                                                 expected_blocks(tokenizer, valid))


def test_save_to_disk_folder_with_a_given_tokenizer(tmp_path):
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    train, valid = lines(40), lines(10, seed=2)
    DatasetDict({"train": Dataset.from_dict({"text": train, "id": list(range(40))}),
                 "validation": Dataset.from_dict({"text": valid, "id": list(range(10))})}).save_to_disk(tmp_path / "ds")
    causal_lm.build_tokenizer(lines(200, seed=5), 280).save_pretrained(tmp_path / "tok")
    out = tmp_path / "out"
    metrics = causal_lm.main(TINY + ["--output_dir", str(out), "--dataset_path", str(tmp_path / "ds"),
                                     "--tokenizer_name", str(tmp_path / "tok"), "--max_train_samples", "30"])
    assert check_outputs(out) == json.loads(json.dumps(metrics))
    data = metrics["data"]
    assert (data["source"], data["tokenizer"], data["tokenizer_texts"]) == ("dataset_path", str(tmp_path / "tok"), None)
    assert (data["train_texts"], data["validation_texts"]) == (30, 10)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(tokenizer)
    assert data["train_blocks"] == expected_blocks(tokenizer, train[:30])


def test_dataset_name_from_the_offline_cache(tmp_path, monkeypatch):
    from datasets import Dataset

    hf_home = tmp_path / "hf_home"
    place_in_hf_datasets_cache(hf_home, "someone/tiny-lines", {"train": Dataset.from_dict({"text": lines(40)}),
                                                               "validation": Dataset.from_dict({"text": lines(12, 3)})})
    offline_hf_cache(monkeypatch, hf_home)  # as HF_HOME / HF_HUB_OFFLINE=1 (a fresh process: test_data_loading.py)
    out = tmp_path / "out"
    causal_lm.main([*TINY, "--output_dir", str(out), "--dataset_name", "someone/tiny-lines", "--max_eval_samples", "6"])
    data = check_outputs(out)["data"]
    assert (data["source"], data["train_texts"], data["validation_texts"], data["tokenizer_texts"]) == (
        "dataset_name", 40, 6, 40)


def test_streaming_jsonl_with_another_text_column(tmp_path):
    rows = [{"content": text, "n": i} for i, text in enumerate(lines(40))]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    causal_lm.main(TINY + ["--output_dir", str(out), "--train_file", str(tmp_path / "train.jsonl"), "--streaming",
                           "--text_column_name", "content", "--tokenizer_train_samples", "10",
                           "--max_eval_samples", "8", "--dataset_cache_dir", str(tmp_path / "cache")])
    metrics = check_outputs(out)
    data = metrics["data"]
    # no validation file: the stream's first 8 texts validate; the tokenizer saw the first 10 texts only
    assert (data["source"], data["streaming"], data["text_column"], data["tokenizer_texts"]) == (
        "train_file", True, "content", 10)
    assert "train_blocks" not in data  # a stream is packed as it is read
    assert [entry["step"] for entry in metrics["routing_churn"]] == [1, 2]


def test_a_missing_text_column_names_the_flag(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in lines(10)))
    with pytest.raises(ValueError, match=r"no column 'text'.*'content'.*--text_column_name"):
        causal_lm.main(TINY + ["--output_dir", str(tmp_path / "out"), "--train_file", str(tmp_path / "train.jsonl"),
                               "--dataset_cache_dir", str(tmp_path / "cache")])


def test_streaming_needs_max_steps(tmp_path):
    (tmp_path / "train.txt").write_text("\n".join(lines(10)))
    base = ["--output_dir", str(tmp_path / "out"), "--train_file", str(tmp_path / "train.txt"), "--streaming"]
    for extra in ([], ["--num_train_epochs", "1"]):  # the script's 2000-step default does not apply to a stream
        with pytest.raises(ValueError, match="--streaming needs --max_steps"):
            causal_lm.main(base + extra)


def test_one_data_source_at_a_time(tmp_path):
    with pytest.raises(ValueError, match="Give one data source"):
        causal_lm.main(TINY + ["--output_dir", str(tmp_path), "--train_file", "a.txt", "--dataset_path", "ds"])
    with pytest.raises(ValueError, match="--validation_file needs --train_file"):
        causal_lm.main(TINY + ["--output_dir", str(tmp_path), "--validation_file", "v.txt"])
