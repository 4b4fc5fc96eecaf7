"""Tests of the embedded espeak-ng corpora (mamba_zoo.corpora). Tiny corpora, a temporary cache."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")
pytest.importorskip("datasets")
sf = pytest.importorskip("soundfile")

from mamba_zoo.corpora import (  # noqa: E402
    COMMANDS,
    DIGITS,
    ENGLISH_ACCENTS,
    SILENCE_LABEL,
    UNKNOWN_LABEL,
    export_audio_dataset,
    list_variants,
    load_keywords,
    load_speakers,
    load_text_corpus,
    load_transcribed,
    load_unlabeled_audio,
    parse_voice,
    split_voices,
    synthesize,
)
from mamba_zoo.corpora import builders  # noqa: E402
from mamba_zoo.corpora.__main__ import main as cli_main  # noqa: E402
from mamba_zoo.corpora.augment import add_noise, colored_noise, rms, trim_silence  # noqa: E402

SMALL = dict(num_per_class=4, num_eval_per_class=2, progress=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus_cache")


@pytest.fixture(scope="module")
def keywords(cache):
    return load_keywords(seed=0, cache_dir=cache, num_workers=2, **SMALL)


def _arrays(dataset):
    return [np.asarray(a["array"], dtype=np.float32) for a in dataset.with_format("numpy")["audio"]]


# ----------------------------------------------------------------------------------------------- synth


def test_synthesize_returns_speech_with_one_event_per_word():
    for text in ["yes", "three one four one five", "did alice see the lamp?"]:
        result = synthesize(text, "en-us+f3")
        assert result.sampling_rate == 22050
        assert result.audio.dtype == np.int16 and result.audio.size > 0.2 * result.sampling_rate
        assert len(result.word_starts) == len(text.split())
        assert result.word_starts == sorted(result.word_starts)
        assert np.abs(result.audio).max() > 1000  # not silence


def test_synthesize_is_a_pure_function():
    """espeak-ng keeps state between utterances; synthesize reloads it, so order does not matter."""
    # m1: plain; klatt2: Klatt engine (espeak's random generator); Reed: speechPlayer engine (C rand())
    for voice in ("en+m1", "en+klatt2", "en+Reed"):
        first = synthesize("hello there", voice, seed=3).audio
        synthesize("something else entirely", "en+f5", rate=300, seed=9)
        again = synthesize("hello there", voice, seed=3).audio
        np.testing.assert_array_equal(first, again)


def test_voices_and_parameters_change_the_sound():
    base = synthesize("seven", "en-us+m1").audio
    assert not np.array_equal(base, synthesize("seven", "en-us+f3").audio)
    assert not np.array_equal(base, synthesize("seven", "en-gb-scotland+m1").audio)
    slow, fast = synthesize("seven", "en-us+m1", rate=100).audio, synthesize("seven", "en-us+m1", rate=300).audio
    assert len(slow) > 1.5 * len(fast)


def test_every_english_accent_speaks_differently():
    sounds = {accent: synthesize("the water is under the bridge", f"{accent}+m3").audio for accent in ENGLISH_ACCENTS}
    assert len(sounds) == 8 and all(len(a) > 11025 for a in sounds.values())
    assert len({a.tobytes() for a in sounds.values()}) == len(sounds)


def test_voice_list_and_parsing():
    assert {"m1", "f3", "klatt"} <= set(list_variants())
    assert parse_voice("en-US+f3").name == "en-us+f3"
    assert parse_voice("en-029").variant is None


@pytest.mark.parametrize("voice", ["xx+m1", "en+nosuch", "fr+m1", 3])
def test_unknown_voice_raises(voice):
    with pytest.raises(ValueError, match="voice"):
        parse_voice(voice)


def test_bad_synth_arguments_raise():
    with pytest.raises(ValueError, match="rate"):
        synthesize("yes", rate=10)
    with pytest.raises(ValueError, match="non-empty"):
        synthesize("   ")


# --------------------------------------------------------------------------------------------- augment


def test_add_noise_hits_the_requested_snr():
    rng = np.random.default_rng(0)
    speech = np.sin(np.linspace(0, 200, 16000)).astype(np.float32) * 0.3
    noise = colored_noise(16000, rng, "pink")
    mixed = add_noise(speech, noise, snr_db=10.0)
    measured = 20 * np.log10(rms(speech) / rms(mixed - speech))
    assert abs(measured - 10.0) < 0.05


def test_trim_silence_finds_the_sound():
    audio = np.zeros(22050, np.float32)
    audio[5000:9000] = 0.5 * np.sin(np.arange(4000) * 0.3)
    trimmed, start = trim_silence(audio, 22050)
    assert 4500 <= start <= 5000 and 4000 <= len(trimmed) <= 5000


# -------------------------------------------------------------------------------------------- keywords


def test_keywords_classes_balanced_and_labelled(keywords):
    names = keywords["train"].features["label"].names
    assert names == list(COMMANDS) + [SILENCE_LABEL, UNKNOWN_LABEL]
    for split, per_class in (("train", 4), ("validation", 2), ("test", 2)):
        counts = Counter(keywords[split]["label"])
        assert sorted(counts) == list(range(12)) and set(counts.values()) == {per_class}
    train = keywords["train"]
    for label, text in zip(train["label"], train["text"]):
        name = names[label]
        if name == SILENCE_LABEL:
            assert text == ""
        elif name == UNKNOWN_LABEL:
            assert text and text not in COMMANDS
        else:
            assert text == name


def test_keywords_audio_is_16k_one_second_and_never_silent(keywords):
    for split in ("train", "validation", "test"):
        rates = {int(a["sampling_rate"]) for a in keywords[split].with_format("numpy")["audio"]}
        assert rates == {16000}
        for array in _arrays(keywords[split]):
            assert array.shape == (16000,)
            assert np.isfinite(array).all() and np.abs(array).max() <= 1.0
            assert rms(array) > 1e-4  # energy check: -80 dBFS


def test_keyword_speech_is_louder_than_its_background(keywords):
    """Spoken clips have a loud part (the word) well above their quietest part (noise only)."""
    train = keywords["train"]
    for array, text in zip(_arrays(train), train["text"]):
        if not text:
            continue
        frames = np.sqrt(np.mean(array[: 16000 // 160 * 160].reshape(-1, 160) ** 2, axis=1))
        assert frames.max() > 3 * np.percentile(frames, 10), text


def test_keyword_splits_are_voice_disjoint(keywords):
    voices = {split: set(keywords[split]["voice"]) - {""} for split in ("train", "validation", "test")}
    variants = {split: {v.split("+")[1] for v in vs} for split, vs in voices.items()}
    assert not variants["train"] & variants["test"]
    assert not variants["train"] & variants["validation"]
    assert not variants["validation"] & variants["test"]
    assert len(voices["train"]) >= 10  # many voices, not one


def test_split_voices_covers_all_voices_without_overlap():
    splits = split_voices(seed=0)
    all_voices = [v for members in splits.values() for v in members]
    assert len(all_voices) == len(set(all_voices)) == 8 * 81
    test_variants = {v.split("+")[1] for v in splits["test"]}
    assert not test_variants & {v.split("+")[1] for v in splits["train"]}
    assert 8 <= len(test_variants) <= 16


def test_keywords_deterministic_same_bytes_whatever_the_workers(keywords, tmp_path):
    rebuilt = load_keywords(seed=0, cache_dir=tmp_path / "other", num_workers=0, **SMALL)
    for split in ("train", "test"):
        for a, b in zip(_arrays(keywords[split]), _arrays(rebuilt[split])):
            assert a.tobytes() == b.tobytes()
        assert keywords[split]["text"] == rebuilt[split]["text"]
    tiny = dict(num_per_class=1, num_eval_per_class=1, commands=["yes", "no"], progress=False, num_workers=0)
    seed0, seed1 = (load_keywords("train", seed=s, cache_dir=tmp_path / "seeds", **tiny) for s in (0, 1))
    assert [a.tobytes() for a in _arrays(seed0)] != [a.tobytes() for a in _arrays(seed1)]


def test_keywords_cache_is_reused(keywords, cache, monkeypatch):
    def no_rendering(*args, **kwargs):
        raise AssertionError("the cached corpus was rendered again")

    monkeypatch.setattr(builders, "_render_all", no_rendering)
    start = time.perf_counter()
    again = load_keywords(seed=0, cache_dir=cache, num_workers=2, **SMALL)
    assert time.perf_counter() - start < 1.0
    assert again["train"]["id"] == keywords["train"]["id"]
    assert _arrays(again["train"])[3].tobytes() == _arrays(keywords["train"])[3].tobytes()
    assert len([p for p in cache.iterdir() if p.name.startswith("keywords-")]) == 1


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MAMBA_ZOO_CACHE", str(tmp_path / "env_cache"))
    load_keywords(split="test", num_per_class=1, num_eval_per_class=1, progress=False, num_workers=0,
                  commands=["yes", "no"])
    assert any(p.name.startswith("keywords-") for p in (tmp_path / "env_cache").iterdir())


def test_keywords_with_digits_has_22_classes(cache):
    test = load_keywords(split="test", include_digits=True, num_per_class=1, num_eval_per_class=2,
                         cache_dir=cache, num_workers=2, progress=False)
    names = test.features["label"].names
    assert len(names) == 22 and set(DIGITS) <= set(names)
    unknown = test.features["label"].str2int(UNKNOWN_LABEL)
    assert not {t for t, l in zip(test["text"], test["label"]) if l == unknown} & set(DIGITS)


def test_every_class_exports_as_a_wav_that_soundfile_reads(keywords, tmp_path):
    manifest = export_audio_dataset({"test": keywords["test"]}, tmp_path, progress=False)
    names = keywords["test"].features["label"].names
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == sorted(names)
    for name in names:
        path = next((tmp_path / "test" / name).glob("*.wav"))
        audio, rate = sf.read(path, dtype="float32")
        assert rate == 16000 and audio.shape == (16000,) and rms(audio) > 1e-4
    assert len(manifest.read_text().splitlines()) == 1 + len(keywords["test"])


# --------------------------------------------------------------------------------------------- others


def test_transcribed_text_matches_spoken_words(cache):
    for kind in ("digits", "sentences"):
        data = load_transcribed(kind, num_train=6, num_eval=3, cache_dir=cache, num_workers=0, progress=False)
        voices = {split: {v.split("+")[1] for v in data[split]["voice"]} for split in data}
        assert not voices["train"] & voices["test"]
        for split in data:
            for example in data[split].with_format("numpy"):
                words = str(example["text"]).split()
                assert words and all(w.isalpha() and w.islower() for w in words)
                if kind == "digits":
                    assert set(words) <= set(DIGITS)
                starts = example["word_starts"]
                duration = len(example["audio"]["array"]) / example["audio"]["sampling_rate"]
                # espeak reported one onset per word of the transcript, in order, inside the clip
                assert len(starts) == len(words)
                assert np.all(np.diff(starts) > 0) and 0 < starts[0] and starts[-1] < duration
                assert example["audio"]["sampling_rate"] == 16000 and rms(example["audio"]["array"]) > 1e-4


def test_speakers_label_is_the_voice_and_sentences_are_split(cache):
    data = load_speakers(num_speakers=3, num_sentences=5, cache_dir=cache, num_workers=0, progress=False)
    names = data["train"].features["label"].names
    assert len(names) == 3
    for split in data:
        assert all(names[label] == voice for label, voice in zip(data[split]["label"], data[split]["voice"]))
        assert set(Counter(data[split]["label"]).values()) == {len(set(data[split]["text"]))}
    assert not set(data["train"]["text"]) & set(data["test"]["text"])
    assert not set(data["train"]["text"]) & set(data["validation"]["text"])


def test_text_corpus_and_unlabeled_audio(cache):
    text = load_text_corpus(num_sentences=200, kind="arithmetic", seed=0)
    line = text["train"][0]["text"]
    assert (" plus " in line or " minus " in line) and line.endswith(".")
    assert load_text_corpus(num_sentences=200, seed=0)["train"]["text"] == load_text_corpus(num_sentences=200, seed=0)["train"]["text"]
    unlabeled = load_unlabeled_audio(seed=0, cache_dir=cache, num_workers=2, num_per_class=4, num_eval_per_class=2, progress=False)
    assert unlabeled.column_names == ["audio"] and len(unlabeled) == 12 * 4


def test_text_corpus_facts_are_fixed_per_entity():
    """kind="facts": every statement about an entity gives the same answer in every split (memorisable), the
    answers differ between entities, and the entities are the given words."""
    import re

    words = ["vabonu", "kisa", "mapeniko", "fobiso", "lusafo", "rero"]
    corpus = load_text_corpus(num_sentences=600, kind="facts", seed=3, words=words)
    patterns = {"home": r"the (\w+) lives near the (\w+)\.", "adj": r"the (\w+) is (\w+)\.", "owner": r"(\w+) owns the (\w+)\."}
    answers = {}
    for split in ("train", "validation", "test"):
        for line in corpus[split]["text"]:
            matches = [(rel, re.fullmatch(p, line)) for rel, p in patterns.items() if re.fullmatch(p, line)]
            assert len(matches) == 1, line
            rel, m = matches[0]
            entity, answer = (m.group(2), m.group(1)) if rel == "owner" else (m.group(1), m.group(2))
            assert entity in words
            assert answers.setdefault((entity, rel), answer) == answer, line
    assert len(answers) == 3 * len(words)
    assert len({answers[(w, "home")] + answers[(w, "adj")] + answers[(w, "owner")] for w in words}) > 1
    assert load_text_corpus(num_sentences=600, kind="facts", seed=3, words=words)["train"]["text"] == corpus["train"]["text"]
    with pytest.raises(ValueError, match="Unknown kind"):
        load_text_corpus(kind="fact")


def test_fact_answer_span_marks_the_recallable_answer():
    from mamba_zoo.corpora.vocabulary import fact_answer_span, fact_book, make_fact

    text = "the vabonu lives near the river."
    start, end = fact_answer_span(text)
    assert text[start:end] == "river"
    text = "the kisa is cold."
    assert text[slice(*fact_answer_span(text))] == "cold"
    assert fact_answer_span("emma owns the kisa.") is None  # the owner precedes its entity
    rng = np.random.default_rng(0)
    book = fact_book(rng, ["vabonu", "kisa"])
    facts = dict(book)
    for _ in range(30):
        line = make_fact(rng, book)
        span = fact_answer_span(line)
        if span is None:
            assert " owns the " in line
            continue
        entity = line.split()[1]
        expected = facts[entity]["home"] if " lives near " in line else facts[entity]["adj"]
        assert line[span[0]:span[1]] == expected


def test_command_line_writes_wavs_and_manifest(cache, tmp_path):
    out = tmp_path / "kw"
    assert cli_main(["keywords", "--out", str(out), "--num-per-class", "4", "--num-eval-per-class", "2",
                     "--cache-dir", str(cache), "--num-workers", "2", "--no-progress"]) == 0
    header, *rows = (out / "manifest.csv").read_text().splitlines()
    assert header.startswith("path,split,id") and len(rows) == 12 * 8
    first = rows[0].split(",")[0]
    audio, rate = sf.read(out / first)
    assert rate == 16000 and len(audio) == 16000


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"voices": ["en+m1", "en+nosuch", "en+f3"]}, "Unknown voice"),
        ({"voices": ["en+m1", "en-us+m1"]}, "at least 3 distinct variants"),
        ({"commands": []}, "commands is empty"),
        ({"unknown_words": []}, "unknown_words is empty"),
        ({"commands": ["yes", "7"]}, "letters"),
        ({"sampling_rate": 0}, "sampling_rate"),
        ({"sampling_rate": -16000}, "sampling_rate"),
        ({"num_per_class": 0}, "num_per_class"),
        ({"noise_snr_db": (30, 10)}, "noise_snr_db"),
        ({"split": "dev"}, "Unknown split"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_keywords_bad_input_raises(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        load_keywords(**{"num_per_class": 1, "num_eval_per_class": 1, "progress": False, "cache_dir": tmp_path, **kwargs})


def test_other_builders_bad_input_raises(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        load_transcribed("poems", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="word list is empty|words is empty"):
        load_transcribed("sentences", words=[], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="sampling_rate"):
        load_transcribed("digits", sampling_rate=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="distinct voices"):
        load_speakers(voices=["en+m1", "en+m1"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="Unknown voice"):
        load_speakers(voices=["en+m1", "zz+f3"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="words is empty"):
        load_text_corpus(words=[])
