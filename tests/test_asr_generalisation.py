"""The ASR recipes (`training/train_ctc.py`, `training/train_decoder_asr.py`) and synthesis engines: `--engines` /
`--heldout_engines` reach the corpus loader, the `heldout_engine` split (engines never heard in training) is decoded
like test and reported overall and per engine in the results JSON and the model card, `--heldout_engines ""` means no
such split, and the CTC recipe's seeded waveform augmentation repeats to the bit.

The corpus loader is replaced by a tiny in-memory corpus (tones with digit transcripts, voice names of each engine), so
these tests need no synthesiser and build nothing."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import common  # noqa: E402
import train_ctc as ctc  # noqa: E402
import train_decoder_asr as decoder_asr  # noqa: E402

VOICE_OF = {"espeak-ng": "en-us+m1", "festival": "festival:kal_diphone", "sam": "sam:elf", "pico": "pico:en-US"}
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fake_corpus(monkeypatch):
    """Replace `mamba_zoo.corpora.load_transcribed` with a tiny in-memory corpus shaped like the real one (columns
    audio / text / voice / id, a `heldout_engine` split when `heldout_engines` is given); returns the list of the
    keyword arguments of every call."""
    from datasets import Dataset, DatasetDict

    import mamba_zoo.corpora

    calls = []

    def split(name, n, engines, seed):
        rng = np.random.default_rng([seed, len(name), n])
        audio, text, voice = [], [], []
        for i in range(n):
            digits = rng.integers(0, 10, size=int(rng.integers(1, 3)))
            samples = int(rng.integers(5600, 9600))  # variable lengths, 0.35-0.6 s
            t = np.arange(samples) / 16000
            wave = sum(np.sin(2 * np.pi * (300 + 90 * d) * t) * (np.arange(samples) // (samples // len(digits)) == k)
                       for k, d in enumerate(digits))
            audio.append({"array": (0.3 * wave + 0.01 * rng.standard_normal(samples)).astype(np.float32),
                          "sampling_rate": 16000})
            text.append(" ".join(WORDS[d] for d in digits))
            voice.append(VOICE_OF[engines[i % len(engines)]])
        return Dataset.from_dict({"audio": audio, "text": text, "voice": voice,
                                  "id": [f"{name}-{i:05d}" for i in range(n)]})

    def load_transcribed(kind="digits", split_name=None, num_train=2000, num_eval=200, seed=0, engines=("espeak-ng",),
                         heldout_engines=(), engine_weights=None, **kwargs):
        calls.append({"kind": kind, "num_train": num_train, "num_eval": num_eval, "seed": seed,
                      "engines": tuple(engines), "heldout_engines": tuple(heldout_engines),
                      "engine_weights": engine_weights})
        splits = {"train": split("train", num_train, list(engines), seed),
                  "validation": split("validation", num_eval, ["espeak-ng"], seed),
                  "test": split("test", num_eval, ["espeak-ng"], seed)}
        if heldout_engines:
            splits[mamba_zoo.corpora.HELDOUT_SPLIT] = split("heldout", num_eval, list(heldout_engines), seed)
        return DatasetDict(splits)

    monkeypatch.setattr(mamba_zoo.corpora, "load_transcribed", load_transcribed)
    return calls


TINY_CTC = ["--num_train", "16", "--num_eval", "4", "--hidden_size", "32", "--num_hidden_layers", "2",
            "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--skip_long_form"]
TINY_ASR = ["--num_train", "16", "--num_eval", "4", "--hidden_size", "32", "--num_layers", "2",
            "--per_device_train_batch_size", "4", "--max_steps", "2"]
TIMING = ("train_seconds", "train_cpu_seconds", "total_seconds", "total_cpu_seconds")


# ---------------------------------------------------------------------------------------------- flags


def test_engine_flags_default_to_espeak_festival_and_pico_with_sam_held_out():
    _, data_args, _, _ = ctc.parse_args([])
    assert (data_args.engines, data_args.heldout_engines, data_args.waveform_augment_copies) == (
        "espeak-ng:3,festival:1,pico:1", "sam", 0)
    assert data_args.num_heldout == 600
    _, data_args, _, _ = decoder_asr.parse_args([])
    assert (data_args.engines, data_args.heldout_engines) == ("espeak-ng:3,festival:1,pico:1", "sam")
    for parse in (ctc.parse_args, decoder_asr.parse_args):
        _, data_args, _, _ = parse(["--engines", "espeak-ng:3,festival:1", "--heldout_engines", ""])
        assert (data_args.engines, data_args.heldout_engines) == ("espeak-ng:3,festival:1", "")
        assert common.parse_engines(data_args.engines) == (("espeak-ng", "festival"), (3.0, 1.0))
        assert common.parse_engines(data_args.heldout_engines) == ((), None)
    _, data_args, _, _ = ctc.parse_args(["--waveform_augment_copies", "2", "--waveform_augment_resynthesis", "0.5"])
    assert (data_args.waveform_augment_copies, data_args.waveform_augment_resynthesis) == (2, 0.5)
    assert ctc.parse_args([])[1].waveform_augment_resynthesis == 0.0


# ---------------------------------------------------------------------------------------------- train_ctc


def test_ctc_reports_each_heldout_engine(tmp_path, fake_corpus, capsys):
    out = tmp_path / "ctc"
    results = ctc.main(TINY_CTC + ["--engines", "espeak-ng", "--heldout_engines", "festival,sam",
                                   "--output_dir", str(out)])
    assert fake_corpus == [{"kind": "digits", "num_train": 16, "num_eval": 4, "seed": 0, "engines": ("espeak-ng",),
                            "heldout_engines": ("festival", "sam"), "engine_weights": None}]
    written = json.loads((out / "eval_results.json").read_text())
    assert written["steps"] == 2 and written["training_engines"] == ["espeak-ng"]
    assert written["heldout_engines"] == ["festival", "sam"] and written["heldout_engine_utterances"] == 4
    for key in ("heldout_engine_wer", "heldout_engine_cer", "heldout_engine_wer_festival", "heldout_engine_wer_sam"):
        assert 0 <= written[key] == results[key], key
    assert written["waveform_augment_copies"] == 0
    card = (out / "README.md").read_text()
    assert "Training engines: espeak-ng. Held-out engines: festival, sam, never heard in training" in card
    assert f"| heldout_engine (festival, sam: never heard in training) | {100 * written['heldout_engine_wer']:.2f}% |" \
        in card
    assert "| heldout_engine, sam only |" in card
    assert "heldout_engine (festival, sam, never heard in training): WER" in capsys.readouterr().out


def test_ctc_without_heldout_engines_has_no_heldout_split(tmp_path, fake_corpus):
    out = tmp_path / "ctc"
    results = ctc.main(TINY_CTC + ["--heldout_engines", "", "--num_train", "8", "--output_dir", str(out)])
    assert fake_corpus[0]["engines"] == ("espeak-ng", "festival", "pico") and fake_corpus[0]["heldout_engines"] == ()
    written = json.loads((out / "eval_results.json").read_text())
    assert written["training_engines"] == ["espeak-ng", "festival", "pico"] and written["heldout_engines"] == []
    assert not any(key.startswith("heldout_engine_") for key in written) and "heldout_engine_wer" not in results
    card = (out / "README.md").read_text()
    assert "Training engines: espeak-ng, festival, pico." in card and "Held-out engines" not in card
    # --eval_only on another corpus keeps the engines the checkpoint trained on, and says when "held out" is not
    results = ctc.main(TINY_CTC + ["--num_train", "8", "--engines", "espeak-ng", "--heldout_engines", "festival,sam",
                                   "--eval_only", "--output_dir", str(out)])
    assert results["training_engines"] == ["espeak-ng", "festival", "pico"] and "heldout_engine_wer_sam" in results
    card = (out / "README.md").read_text()
    assert "include engines heard in training (festival)" in card and "never heard in training)" not in card


def test_ctc_waveform_augmentation_repeats_to_the_bit(tmp_path, fake_corpus, monkeypatch):
    copies_made = []

    def spy(clips, sampling_rate, copies, seed, **kwargs):
        made = common.augmented_copies(clips, sampling_rate, copies, seed, **kwargs)
        copies_made.append((clips, made, copies, seed))
        return made

    monkeypatch.setattr(ctc, "augmented_copies", spy)
    runs = [ctc.main(TINY_CTC + ["--waveform_augment_copies", "1", "--output_dir", str(tmp_path / name)])
            for name in ("a", "b")]
    a, b = ({k: v for k, v in run.items() if k not in TIMING} for run in runs)
    assert a == b
    assert a["waveform_augment_copies"] == 1 and "heldout_engine_wer" in a
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    ctc.main(TINY_CTC + ["--output_dir", str(tmp_path / "plain")])  # the copies are drawn: without them, another model
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != (tmp_path / "plain" / "model.safetensors").read_bytes()
    assert len(copies_made) == 2  # the run without copies made none
    (clips, made, copies, seed), _ = copies_made
    assert (copies, seed, len(made), len(made[0])) == (1, 0, 1, 16)
    assert len({len(c) for c in clips}) > 1  # variable-length utterances ...
    assert all(x.shape == c.shape and x.dtype == np.float32 for x, c in zip(made[0], clips))  # ... keep their length
    assert sum(not np.array_equal(x, c) for x, c in zip(made[0], clips)) > len(clips) // 2
    assert "Voice and channel augmentation: 1 seeded copies of every training utterance" in \
        (tmp_path / "a" / "README.md").read_text()


def test_ctc_dataset_draws_among_the_original_and_its_copies():
    import torch

    audio = [np.zeros(5, np.float32), np.zeros(7, np.float32)]
    views = [[np.full(5, k, np.float32), np.full(7, k, np.float32)] for k in (1, 2)]
    dataset = ctc.AudioTextDataset(audio, ["one", "two"], views=views)
    torch.manual_seed(0)
    drawn = [int(dataset[i % 2]["audio"][0]) for i in range(60)]
    assert set(drawn) == {0, 1, 2} and all(len(dataset[i]["audio"]) == len(audio[i]) for i in range(2))
    torch.manual_seed(0)
    assert drawn == [int(dataset[i % 2]["audio"][0]) for i in range(60)]  # the same seed, the same draws
    assert ctc.AudioTextDataset(audio, ["one", "two"])[1]["audio"] is audio[1]  # no views: the original


# ---------------------------------------------------------------------------------------------- train_decoder_asr


def test_decoder_asr_decodes_the_heldout_engine_like_test(tmp_path, fake_corpus, monkeypatch, capsys):
    decoded = []
    transcribe = decoder_asr.transcribe

    def spy(model, processor, audio, **kwargs):
        decoded.append((len(audio), kwargs))
        return transcribe(model, processor, audio, **kwargs)

    monkeypatch.setattr(decoder_asr, "transcribe", spy)
    out = tmp_path / "asr"
    result = decoder_asr.main(TINY_ASR + ["--output_dir", str(out)])
    assert fake_corpus[0]["engines"] == ("espeak-ng", "festival", "pico") and fake_corpus[0]["heldout_engines"] == ("sam",)
    assert decoded == [(4, {"num_beams": 4}), (4, {"num_beams": 4})]  # test, then heldout_engine: the same settings
    written = json.loads((out / "results.json").read_text())
    assert written["steps"] == 2 and written == json.loads(json.dumps(result))
    assert (written["training_engines"], written["heldout_engines"]) == (["espeak-ng", "festival", "pico"], ["sam"])
    assert 0 <= written["heldout_engine_wer"] and 0 <= written["heldout_engine_cer"]
    assert not any(key.startswith("heldout_engine_wer_") for key in written)  # one held-out engine: no breakdown
    card = (out / "README.md").read_text()
    assert "Training engines: espeak-ng, festival, pico. Held-out engines: sam, never heard in training" in card
    assert f"| heldout_engine (sam: never heard in training) | {written['heldout_engine_wer']:.2f}% |" in card
    assert "heldout_engine (sam, never heard in training): WER" in capsys.readouterr().out


def test_decoder_asr_reports_each_heldout_engine_and_none_without_them(tmp_path, fake_corpus, monkeypatch):
    """(Decoding is stubbed: the run above covers it.) Several held-out engines get one WER each; none, no split."""
    monkeypatch.setattr(decoder_asr, "transcribe",
                        lambda model, processor, audio, **kw: ["one two" if len(a) % 2 else "three" for a in audio])
    out = tmp_path / "asr"
    result = decoder_asr.main(TINY_ASR + ["--max_steps", "1", "--engines", "espeak-ng",
                                          "--heldout_engines", "festival,sam", "--output_dir", str(out)])
    assert {"heldout_engine_wer_festival", "heldout_engine_wer_sam"} <= set(result)
    assert "| heldout_engine, festival only |" in (out / "README.md").read_text()
    result = decoder_asr.main(TINY_ASR + ["--max_steps", "1", "--heldout_engines", "", "--output_dir", str(out)])
    assert fake_corpus[-1]["heldout_engines"] == () and result["heldout_engines"] == []
    assert not any(key.startswith("heldout_engine_") for key in result)
    assert "Held-out engines" not in (out / "README.md").read_text()
