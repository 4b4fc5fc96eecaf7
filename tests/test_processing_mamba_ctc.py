"""Tests for MambaCTCFeatureExtractor (frames, normalisation, bad audio) and MambaCTCProcessor (vocabulary,
tokenizer round trip, labels, save/load)."""

import math

import numpy as np
import pytest
import torch

from mamba_zoo import MambaCTCFeatureExtractor, MambaCTCProcessor, build_ctc_vocabulary, normalize_transcript


@pytest.fixture(scope="module")
def extractor():
    return MambaCTCFeatureExtractor()


def noise(num_samples, seed=0, scale=0.1):
    return (np.random.default_rng(seed).standard_normal(num_samples) * scale).astype(np.float32)


# ------------------------------------------------------------------------------------------------ features


@pytest.mark.parametrize("num_samples", [1600, 1601, 1759, 1760, 1761, 16000, 16001, 64000])
def test_frame_count_is_ceil_of_hop(extractor, num_samples):
    features = extractor(noise(num_samples), sampling_rate=16000, return_tensors="np")["input_features"]
    assert features.shape == (1, math.ceil(num_samples / 160), 80)
    assert features.dtype == np.float32 and np.isfinite(features).all()


def test_minimum_length_is_the_shared_rule(extractor):
    """0.1 s (1600 samples at 16 kHz), as for every audio family (before: any non-empty clip, down to 1 sample)."""
    with pytest.raises(ValueError, match=r"^Audio is too short: 1599 samples \(99\.9 ms at 16000 Hz\)"):
        extractor(noise(1599), sampling_rate=16000)


def test_utterance_normalisation_and_gain_invariance(extractor):
    audio = noise(24000)
    features = extractor(audio, sampling_rate=16000)["input_features"][0]
    np.testing.assert_allclose(features.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(features.std(0), 1, atol=1e-3)
    louder = extractor(audio * 7.5, sampling_rate=16000)["input_features"][0]
    np.testing.assert_allclose(louder, features, atol=1e-3)


def test_batch_padding_matches_single_and_masks(extractor):
    a, b = noise(16000, 1), noise(7000, 2)
    batch = extractor([a, b], sampling_rate=16000, return_tensors="pt")
    assert batch["input_features"].shape == (2, 100, 80)
    assert batch["attention_mask"].tolist()[1] == [1] * 44 + [0] * 56
    single = extractor(b, sampling_rate=16000, return_tensors="pt")["input_features"][0]
    assert torch.equal(batch["input_features"][1, :44], single)
    assert torch.all(batch["input_features"][1, 44:] == 0)
    # a batch is a list of clips; a 2-D array is one (multi-channel) clip, mixed down; torch tensors are accepted
    as_list = extractor([a, a], sampling_rate=16000, return_tensors="pt")["input_features"]
    as_stereo = extractor(np.stack([a, a], axis=1), sampling_rate=16000, return_tensors="pt")["input_features"]
    as_tensor = extractor(torch.from_numpy(a), sampling_rate=16000, return_tensors="pt")["input_features"]
    assert as_list.shape == (2, 100, 80) and as_stereo.shape == (1, 100, 80)
    assert torch.equal(as_list[0], as_tensor[0]) and torch.equal(as_stereo[0], as_tensor[0])


def test_integer_pcm_is_scaled(extractor):
    audio = noise(16000, 3, scale=0.2)
    reference = extractor(audio, sampling_rate=16000)["input_features"][0]
    int16 = np.round(audio * 32767).astype(np.int16)
    np.testing.assert_allclose(extractor(int16, sampling_rate=16000)["input_features"][0], reference, atol=1e-2)
    int32 = np.round(audio.astype(np.float64) * (2**31 - 1)).astype(np.int32)
    np.testing.assert_allclose(extractor(int32, sampling_rate=16000)["input_features"][0], reference, atol=1e-3)
    uint8 = np.round(audio * 127 + 128).astype(np.uint8)
    assert np.isfinite(extractor(uint8, sampling_rate=16000)["input_features"][0]).all()


@pytest.mark.parametrize("audio, kwargs, message", [
    (np.zeros(0, dtype=np.float32), {}, "empty"),
    (np.array([0.1, np.nan, 0.2] * 200, dtype=np.float32), {}, "NaN or infinite"),
    (np.array([0.1, np.inf] * 200, dtype=np.float32), {}, "NaN or infinite"),
    ([np.zeros((1, 2, 1600), dtype=np.float32)], {}, "^Audio clip 0 must be mono"),
    (np.zeros((1, 2, 1600), dtype=np.float32), {}, "mono"),
    (np.zeros((100, 1600), dtype=np.float32), {}, "list of 1-D clips"),
    (np.zeros(1600, dtype=np.float32), {"sampling_rate": 8000}, "16000 Hz"),
    (np.array(["a", "b"]), {}, "dtype"),
    ([], {}, "empty batch"),
])
def test_bad_audio_raises_clear_errors(extractor, audio, kwargs, message):
    kwargs = {"sampling_rate": 16000, **kwargs}
    with pytest.raises(ValueError, match=message):
        extractor(audio, **kwargs)


def test_silence_is_finite(extractor):
    features = extractor(np.zeros(8000, dtype=np.float32), sampling_rate=16000)["input_features"][0]
    assert np.isfinite(features).all() and np.all(features == 0)
    # the mel energies are floored before the log: silence gives the floor, never -inf
    raw = MambaCTCFeatureExtractor(do_normalize=False)(np.zeros(8000, dtype=np.float32), sampling_rate=16000)
    np.testing.assert_allclose(raw["input_features"][0], np.log(1e-10), rtol=1e-6)


def test_feature_extractor_save_load(tmp_path, extractor):
    extractor.save_pretrained(tmp_path)
    from transformers import AutoFeatureExtractor

    loaded = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert isinstance(loaded, MambaCTCFeatureExtractor)
    audio = noise(5000)
    np.testing.assert_array_equal(loaded(audio, sampling_rate=16000)["input_features"][0],
                                  extractor(audio, sampling_rate=16000)["input_features"][0])


# ------------------------------------------------------------------------------------------------ tokenizer


def test_vocabulary_from_transcripts():
    vocab = build_ctc_vocabulary(["Three one, FOUR!", "don't stop"])
    assert list(vocab)[:3] == ["<pad>", "<unk>", "|"]
    assert vocab["<pad>"] == 0
    assert set(vocab) - {"<pad>", "<unk>", "|"} == set("threonfudsp'")
    assert sorted(vocab.values()) == list(range(len(vocab)))
    with pytest.raises(ValueError, match="no characters"):
        build_ctc_vocabulary(["", "  ", "!!"])


def test_normalize_transcript():
    assert normalize_transcript("  Hello,   World! It's  ") == "hello world it's"


def test_tokenizer_round_trip_and_ctc_decoding():
    processor = MambaCTCProcessor.from_transcripts(["zero one two three four five six seven eight nine"])
    tokenizer = processor.tokenizer
    assert len(tokenizer) == len(tokenizer.get_vocab())  # no extra bos/eos tokens
    assert tokenizer.pad_token_id == 0 and tokenizer.word_delimiter_token == "|"

    text = "three three seven zero"
    ids = processor(text=text)["input_ids"]
    assert tokenizer.decode(ids, group_tokens=False) == text
    assert processor(text="Three, THREE seven zero!")["input_ids"] == ids  # normalised first
    # CTC decoding: repeats collapse, blanks (pad) separate genuine doubles and are dropped
    frame_ids = []
    for token in ids:
        frame_ids += [token, token, 0]
    assert processor.decode(frame_ids) == text
    assert processor.batch_decode(torch.tensor([frame_ids, frame_ids])) == [text, text]
    # unknown characters map to <unk>
    assert tokenizer.unk_token_id in processor(text="xyz")["input_ids"]


def test_processor_audio_and_text_give_padded_labels():
    processor = MambaCTCProcessor.from_transcripts(["one two three"])
    batch = processor(audio=[noise(16000), noise(8000)], text=["one", "two three"], sampling_rate=16000,
                      return_tensors="pt")
    assert set(batch) == {"input_features", "attention_mask", "labels"}
    assert batch["labels"].shape == (2, 9)
    assert batch["labels"][0, 3:].eq(-100).all() and batch["labels"][1].ne(-100).all()
    with pytest.raises(ValueError, match="audio"):
        processor()


def test_processor_reads_a_stereo_array_as_one_clip():
    """Before: MambaCTCProcessor read a (samples, 2) stereo array as 16000 two-sample clips."""
    processor = MambaCTCProcessor.from_transcripts(["one two three"])
    left, right = noise(16000, 4), noise(16000, 5)
    stereo = processor(audio=np.stack([left, right], axis=1), sampling_rate=16000, return_tensors="pt")
    mono = processor(audio=(left + right) / 2, sampling_rate=16000, return_tensors="pt")
    assert stereo["input_features"].shape == (1, 100, 80)
    torch.testing.assert_close(stereo["input_features"], mono["input_features"], atol=1e-4, rtol=0)


def test_processor_save_load(tmp_path):
    from transformers import AutoProcessor, AutoTokenizer

    processor = MambaCTCProcessor.from_transcripts(["one two three"])
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, MambaCTCProcessor)
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert isinstance(loaded.feature_extractor, MambaCTCFeatureExtractor)
    assert AutoTokenizer.from_pretrained(tmp_path).get_vocab() == processor.tokenizer.get_vocab()


def test_beam_search_needs_pyctcdecode_or_works():
    processor = MambaCTCProcessor.from_transcripts(["one two"])
    labels = processor.ctc_labels()
    assert labels[0] == "" and labels[processor.tokenizer.convert_tokens_to_ids("|")] == " "
    try:
        import pyctcdecode  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pyctcdecode"):
            processor.build_beam_decoder()


def test_long_recordings_are_featurised_in_blocks_with_the_same_numbers(monkeypatch):
    """The STFT runs a block of frames at a time (memory O(block) for hours of audio): identical features to one call."""
    from mamba_zoo import MambaCTCFeatureExtractor, feature_extraction_mamba_ctc

    audio = (0.1 * np.random.default_rng(5).standard_normal(16000 * 3 + 91)).astype(np.float32)
    extractor = MambaCTCFeatureExtractor()
    monkeypatch.setattr(feature_extraction_mamba_ctc, "FBANK_BLOCK_FRAMES", 10**6)
    whole = extractor(audio, sampling_rate=16000, return_tensors="np")["input_features"]
    monkeypatch.setattr(feature_extraction_mamba_ctc, "FBANK_BLOCK_FRAMES", 41)
    blocks = extractor(audio, sampling_rate=16000, return_tensors="np")["input_features"]
    assert whole.shape == (1, extractor.num_frames(len(audio)), 80)
    np.testing.assert_array_equal(blocks, whole)
