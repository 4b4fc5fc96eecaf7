"""Synthesis engines of the corpora: Festival, SAM and Pico beside espeak-ng, voice-disjoint splits across engines, the
held-out-engine split, and clear errors when an engine is missing."""

from __future__ import annotations

import numpy as np
import pytest

from mamba_zoo.corpora import (
    HELDOUT_SPLIT,
    EngineUnavailableError,
    corpus_voices,
    engine_of,
    engine_voices,
    load_keywords,
    load_transcribed,
    split_voices,
)
from mamba_zoo.corpora import festival as festival_module
from mamba_zoo.corpora import pico as pico_module
from mamba_zoo.corpora import sam as sam_module
from mamba_zoo.corpora.builders import ClipSpec, _pick_voice, render_clip
from mamba_zoo.corpora.festival import FestivalRequest, festival_available, synthesize_festival
from mamba_zoo.corpora.pico import PicoRequest, pico_available, synthesize_pico
from mamba_zoo.corpora.sam import SamRequest, sam_available, synthesize_sam

needs_festival = pytest.mark.skipif(not festival_available(), reason="Festival is not installed (see .ci/run)")
needs_sam = pytest.mark.skipif(not sam_available(), reason="Node.js + sam-js are not installed (see .ci/run)")
needs_pico = pytest.mark.skipif(not pico_available(), reason="ttspico is not installed (see .ci/run)")


def f0(result) -> float:
    """Cepstral pitch (60..400 Hz) of the loudest 64 ms of a SynthResult."""
    audio, sr, frame = result.audio.astype(np.float64), result.sampling_rate, 1024
    energy = [np.sum(audio[i:i + frame] ** 2) for i in range(0, len(audio) - frame, 256)]
    start = int(np.argmax(energy)) * 256
    spectrum = np.log(np.abs(np.fft.rfft(audio[start:start + frame] * np.hanning(frame), 4096)) + 1e-6)
    cepstrum = np.fft.irfft(spectrum)
    quefrencies = np.arange(sr // 400, sr // 60)
    return sr / quefrencies[np.argmax(cepstrum[quefrencies])]


def test_engine_of_names_the_engine_from_the_prefix():
    assert engine_of("en-us+f3") == "espeak-ng"
    assert engine_of("festival:kal_diphone") == "festival"
    assert engine_of("sam:elf") == "sam"
    assert all(engine_of(v) == "festival" for v in engine_voices("festival"))
    assert len(engine_voices("sam")) == 12 and len(engine_voices("festival")) == 3


def test_default_voices_are_exactly_the_espeak_split():
    assert corpus_voices() == split_voices(None, 0)
    assert corpus_voices(seed=3) == split_voices(None, 3)


@pytest.mark.parametrize("engines, heldout", [(("espeak-ng", "festival"), ("sam",)),
                                              (("espeak-ng", "sam"), ("festival",))])
def test_splits_are_voice_disjoint_across_engines_and_the_heldout_engine_is_nowhere_else(engines, heldout):
    splits = corpus_voices(engines=engines, heldout_engines=heldout, seed=1)
    assert set(splits) == {"train", "validation", "test", HELDOUT_SPLIT}
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(splits[a]) & set(splits[b]), (a, b)
    assert {engine_of(v) for v in splits[HELDOUT_SPLIT]} == set(heldout)
    assert sorted(splits[HELDOUT_SPLIT]) == sorted(engine_voices(heldout[0]))
    for name in ("train", "validation", "test"):
        assert not {engine_of(v) for v in splits[name]} & set(heldout)
    # espeak-ng timbres never cross splits, whichever engines come along
    variants = {name: {v.split("+")[1] for v in splits[name] if engine_of(v) == "espeak-ng"}
                for name in ("train", "validation", "test")}
    assert not variants["train"] & variants["test"] and not variants["train"] & variants["validation"]


def test_engines_with_few_voices_train_only_and_large_ones_are_split():
    splits = corpus_voices(engines=("espeak-ng", "festival", "sam"))
    festival = set(engine_voices("festival"))
    assert festival <= set(splits["train"])  # 3 voices: too few to hold one out
    sam_voices = {name: [v for v in members if engine_of(v) == "sam"] for name, members in splits.items()}
    assert sam_voices["validation"] and sam_voices["test"] and len(sam_voices["train"]) >= 6


def test_bad_engine_arguments_name_the_problem():
    with pytest.raises(ValueError, match="unknown engines \\['flite'\\]"):
        corpus_voices(engines=("espeak-ng", "flite"))
    with pytest.raises(ValueError, match="cannot both train and be held out"):
        corpus_voices(engines=("espeak-ng", "sam"), heldout_engines=("sam",))
    with pytest.raises(ValueError, match="too few voices"):
        corpus_voices(engines=("festival",))
    with pytest.raises(ValueError, match="repeats an engine"):
        corpus_voices(engines=("espeak-ng", "espeak-ng"))


def test_pick_voice_gives_each_engine_an_equal_share():
    rng = np.random.default_rng(0)
    names = engine_voices("festival") + [f"en+m{i}" for i in range(1, 8)] * 20
    picks = [engine_of(_pick_voice(rng, names)) for _ in range(2000)]
    assert 0.45 < picks.count("festival") / len(picks) < 0.55
    # one engine: the same draw as before engines existed (corpora keep their bytes)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    espeak = [f"en+m{i}" for i in range(1, 8)]
    assert [_pick_voice(a, espeak) for _ in range(20)] == [espeak[b.integers(len(espeak))] for _ in range(20)]


@pytest.mark.parametrize("engine", ["festival", "sam"])
def test_a_missing_engine_is_a_clear_error_before_anything_renders(engine, monkeypatch, tmp_path):
    module = festival_module if engine == "festival" else sam_module
    program = "festival" if engine == "festival" else "node"
    real_which = module.shutil.which
    monkeypatch.setattr(module.shutil, "which", lambda name: None if name == program else real_which(name))
    heldout = ("sam",) if engine == "festival" else ("festival",)
    with pytest.raises(EngineUnavailableError, match=rf"not installed[\s\S]*apt-get install") as info:
        load_keywords(num_per_class=2, engines=("espeak-ng", engine), heldout_engines=(), cache_dir=tmp_path,
                      progress=False, num_workers=0)
    assert engine in str(info.value)
    assert not list(tmp_path.iterdir())  # nothing half-built was cached
    del heldout


@needs_festival
def test_festival_is_deterministic_and_follows_rate_and_pitch():
    requests = [FestivalRequest("turn left now.", voice, rate, pitch)
                for voice in ("kal_diphone", "cmu_us_slt_arctic_hts") for rate, pitch in ((175, 50), (120, 50),
                                                                                         (175, 90))]
    first, second = synthesize_festival(requests), synthesize_festival(list(reversed(requests)))[::-1]
    for a, b in zip(first, second):
        assert np.array_equal(a.audio, b.audio) and a.word_starts == b.word_starts
    for voice_results in (first[:3], first[3:]):
        normal, slow, high = voice_results
        assert len(normal.word_starts) == 3 and normal.word_starts == sorted(normal.word_starts)
        assert len(slow.audio) > 1.25 * len(normal.audio)  # 175 -> 120 words per minute
    assert not np.array_equal(first[2].audio, first[0].audio)  # diphone pitch (HTS voices ignore pitch)


@needs_festival
def test_festival_pitch_moves_the_fundamental():
    normal, high = synthesize_festival([FestivalRequest("aaah.", "kal_diphone", 175, 50),
                                        FestivalRequest("aaah.", "kal_diphone", 175, 100)])

    assert f0(high) > 1.2 * f0(normal)  # half an octave up asked for (1.41x)


@needs_sam
def test_sam_is_deterministic_with_exact_word_onsets():
    requests = [SamRequest("go left", "elf"), SamRequest("go left", "deep", 120, 20), SamRequest("stop", "sam")]
    first, second = synthesize_sam(requests), synthesize_sam(requests)
    for a, b in zip(first, second):
        assert np.array_equal(a.audio, b.audio) and a.word_starts == b.word_starts
    assert first[0].word_starts[0] == 0 and first[0].word_starts[1] > 0.1 * first[0].sampling_rate
    assert len(first[1].audio) > len(first[0].audio)  # slower
    assert first[0].audio.dtype == np.int16 and np.abs(first[0].audio).max() > 1000


@needs_festival
@needs_sam
def test_multi_engine_corpora_render_the_same_bytes_whatever_the_workers(tmp_path):
    options = dict(num_per_class=3, engines=("espeak-ng", "festival"), heldout_engines=("sam",), progress=False)
    a = load_keywords(cache_dir=tmp_path / "a", num_workers=0, **options)
    b = load_keywords(cache_dir=tmp_path / "b", num_workers=2, **options)
    assert set(a) == {"train", "validation", "test", HELDOUT_SPLIT}
    for split in a:
        assert a[split]["voice"] == b[split]["voice"]
        for x, y in zip(a[split].with_format("numpy")["audio"], b[split].with_format("numpy")["audio"]):
            assert np.array_equal(x["array"], y["array"])
    assert {engine_of(v) for v in a[HELDOUT_SPLIT]["voice"] if v} == {"sam"}
    assert "festival" in {engine_of(v) for v in a["train"]["voice"] if v}
    assert not {engine_of(v) for v in a["test"]["voice"] if v} - {"espeak-ng"}
    # transcribed corpora: word onsets for every word, whichever engine spoke
    t = load_transcribed(num_train=4, num_eval=2, engines=("espeak-ng", "festival"), heldout_engines=("sam",),
                         cache_dir=tmp_path / "t", progress=False, num_workers=0)
    for split in t:
        for row in t[split]:
            assert len(row["word_starts"]) == len(row["text"].split())


@needs_festival
def test_render_clip_keeps_the_length_and_level_contracts_for_festival():
    spec = ClipSpec(text="yes", voice="festival:ked_diphone", seed=4, sampling_rate=16000, length=16000,
                    peak_dbfs=-6.0)
    clip = render_clip(spec)
    assert clip.audio.shape == (16000,) and clip.audio.dtype == np.float32
    assert 0.3 < np.abs(clip.audio).max() <= 0.99
    assert np.array_equal(render_clip(spec).audio, clip.audio)


def test_engine_weights_set_the_shares_and_are_validated():
    from mamba_zoo.corpora.builders import _check_engine_weights

    rng = np.random.default_rng(1)
    names = engine_voices("festival") + [f"en+m{i}" for i in range(1, 8)]
    weights = _check_engine_weights([3, 1], ["espeak-ng", "festival"])
    assert weights == {"espeak-ng": 0.75, "festival": 0.25}
    picks = [engine_of(_pick_voice(rng, names, weights)) for _ in range(4000)]
    assert 0.22 < picks.count("festival") / len(picks) < 0.28
    # a split whose engines have no weight (several held-out engines) draws them in equal shares
    heldout = engine_voices("sam") + engine_voices("festival")
    picks = [engine_of(_pick_voice(rng, heldout, weights={"espeak-ng": 1.0})) for _ in range(2000)]
    assert 0.45 < picks.count("sam") / len(picks) < 0.55
    for bad in ([1], [1, 0], [1, float("nan")]):
        with pytest.raises(ValueError, match="one positive weight per engine"):
            load_keywords(num_per_class=1, engines=("espeak-ng", "festival"), engine_weights=bad)


def test_pico_voices_are_named_and_go_to_training_only():
    assert engine_of("pico:en-US") == "pico" and engine_voices("pico") == ["pico:en-US", "pico:en-GB"]
    splits = corpus_voices(engines=("espeak-ng", "pico"), heldout_engines=("sam",))
    assert sorted(v for v in splits["train"] if engine_of(v) == "pico") == ["pico:en-GB", "pico:en-US"]
    assert all(engine_of(v) == "espeak-ng" for name in ("validation", "test") for v in splits[name])


def test_a_missing_pico_is_a_clear_error_before_anything_renders(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "ttspico", None)  # `import ttspico` raises ImportError
    assert "pip install ttspico" in pico_module.pico_missing_reason()
    with pytest.raises(EngineUnavailableError, match=r"pico:en-US[\s\S]*pip install ttspico"):
        load_keywords(num_per_class=2, engines=("espeak-ng", "pico"), cache_dir=tmp_path, progress=False,
                      num_workers=0)
    assert not list(tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="pip install ttspico"):
        synthesize_pico([PicoRequest("yes", "en-US")])
    assert "unknown Pico voice" in pico_module.pico_missing_reason("de-DE")


@needs_pico
def test_pico_is_deterministic_with_exact_word_onsets_and_follows_rate_and_pitch():
    requests = [PicoRequest("go left now.", "en-US"), PicoRequest("go left now.", "en-GB"),
                PicoRequest("go left now.", "en-US", 120, 50), PicoRequest("aaah.", "en-US", 175, 50),
                PicoRequest("aaah.", "en-US", 175, 100)]
    # an engine that has spoken carries state into its next utterance: the same request twice, and in the
    # reverse order, must still give the same samples
    first, second = synthesize_pico(requests + requests[:1]), synthesize_pico(list(reversed(requests)))[::-1]
    assert np.array_equal(first[0].audio, first[-1].audio)
    for a, b in zip(first, second):
        assert np.array_equal(a.audio, b.audio) and a.word_starts == b.word_starts
    normal, british, slow = first[:3]
    assert normal.sampling_rate == 16000 and normal.audio.dtype == np.int16
    assert len(normal.word_starts) == 3 and normal.word_starts[0] == 0
    assert np.all(np.diff(normal.word_starts) > 0.1 * normal.sampling_rate)
    # the pause between words is the gap alone: the quiet stretch before each onset is about WORD_GAP_SECONDS
    start = normal.word_starts[1]
    gap = int(pico_module.WORD_GAP_SECONDS * normal.sampling_rate)
    assert np.all(normal.audio[start - gap:start] == 0) and np.abs(normal.audio[start:start + 800]).max() > 50
    assert not np.array_equal(normal.audio[:len(british.audio)], british.audio[:len(normal.audio)])
    assert len(slow.audio) > 1.25 * len(normal.audio)  # 175 -> 120 words per minute
    assert 3000 < np.abs(normal.audio).max() < 32767  # loud, and never clipped

    assert f0(first[4]) > 1.2 * f0(first[3])  # half an octave up asked for (1.41x)


@needs_pico
def test_render_clip_keeps_the_length_and_level_contracts_for_pico(tmp_path):
    spec = ClipSpec(text="stop", voice="pico:en-GB", seed=3, sampling_rate=16000, length=16000, peak_dbfs=-6.0,
                    snr_db=20.0)
    clip = render_clip(spec)
    assert clip.audio.shape == (16000,) and clip.audio.dtype == np.float32
    assert 0.3 < np.abs(clip.audio).max() <= 0.99
    assert np.array_equal(render_clip(spec).audio, clip.audio)
    options = dict(num_per_class=2, engines=("espeak-ng", "pico"), progress=False)
    a = load_keywords(cache_dir=tmp_path / "a", num_workers=0, **options)
    b = load_keywords(cache_dir=tmp_path / "b", num_workers=2, **options)
    assert "pico" in {engine_of(v) for v in a["train"]["voice"] if v}
    for x, y in zip(a["train"].with_format("numpy")["audio"], b["train"].with_format("numpy")["audio"]):
        assert np.array_equal(x["array"], y["array"])


@needs_sam
@pytest.mark.parametrize("load, sizes, size_arg, base_len, large_len", [
    (load_keywords, dict(num_per_class=2, num_eval_per_class=1), "num_heldout_per_class", 12, 36),
    (load_transcribed, dict(num_train=2, num_eval=1), "num_heldout", 1, 3),
])
def test_a_larger_heldout_split_keeps_the_other_splits_and_is_validated(tmp_path, load, sizes, size_arg, base_len,
                                                                       large_len):
    options = dict(heldout_engines=("sam",), progress=False, num_workers=0, **sizes)
    base = load(cache_dir=tmp_path / "a", **options)
    large = load(cache_dir=tmp_path / "b", **{size_arg: 3}, **options)
    assert len(base[HELDOUT_SPLIT]) == base_len and len(large[HELDOUT_SPLIT]) == large_len
    for split in ("train", "validation", "test"):
        assert base[split]["id"] == large[split]["id"] and base[split]["voice"] == large[split]["voice"]
        for x, y in zip(base[split].with_format("numpy")["audio"], large[split].with_format("numpy")["audio"]):
            assert np.array_equal(x["array"], y["array"])
    # the same size as the default is the same corpus (and cache entry)
    same = load(cache_dir=tmp_path / "a", **{size_arg: 1}, **options)
    assert same[HELDOUT_SPLIT]["voice"] == base[HELDOUT_SPLIT]["voice"]
    assert len(list((tmp_path / "a").iterdir())) == 1
    with pytest.raises(ValueError, match="pass heldout_engines"):
        load(**{size_arg: 3}, cache_dir=tmp_path / "c", **sizes)
    with pytest.raises(ValueError, match=size_arg):
        load(**{size_arg: 0}, heldout_engines=("sam",), cache_dir=tmp_path / "c", **sizes)
