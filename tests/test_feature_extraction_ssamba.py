"""SSAMBAFeatureExtractor: kaldi fbank semantics (against an independent re-implementation of kaldi's algorithm),
normalisation presets, padding/attention mask, silence, cropping long clips before the fbank, and clear errors or
documented conversions for bad input (the shared rule itself: test_audio_utils.py)."""

import math
import tracemalloc

import numpy as np
import pytest

from mamba_zoo import SSAMBAFeatureExtractor
from mamba_zoo.feature_extraction_ssamba import SSAMBA_FEATURE_PRESETS


def kaldi_fbank(waveform, sample_rate=16000, num_mel_bins=128, frame_length_ms=25.0, frame_shift_ms=10.0,
                low_freq=20.0, preemph=0.97):
    """Kaldi `compute-fbank-feats` defaults as used by SSAST (hanning window, snip_edges, no dither, no energy),
    written from kaldi's feature-window.cc / mel-computations.cc, loops for clarity."""
    window_size = int(sample_rate * frame_length_ms / 1000)
    shift = int(sample_rate * frame_shift_ms / 1000)
    fft_size = 1 << (window_size - 1).bit_length()
    num_frames = 1 + (len(waveform) - window_size) // shift
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / (window_size - 1)) for n in range(window_size)])

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    nyquist = sample_rate / 2
    mel_low, mel_high = mel(low_freq), mel(nyquist)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    fft_freqs = np.arange(fft_size // 2) * sample_rate / fft_size
    banks = np.zeros((num_mel_bins, fft_size // 2 + 1))
    for b in range(num_mel_bins):
        left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
        for k, f in enumerate(fft_freqs):
            m = mel(f)
            if left < m < right:
                banks[b, k] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)

    features = np.zeros((num_frames, num_mel_bins))
    for t in range(num_frames):
        frame = waveform[t * shift: t * shift + window_size].astype(np.float64).copy()
        frame -= frame.mean()
        for i in range(window_size - 1, 0, -1):
            frame[i] -= preemph * frame[i - 1]
        frame[0] -= preemph * frame[0]
        frame *= window
        spectrum = np.abs(np.fft.rfft(frame, n=fft_size)) ** 2
        energies = banks @ spectrum
        features[t] = np.log(np.maximum(energies, np.finfo(np.float32).eps))
    return features


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(0)
    t = np.arange(12000) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def test_fbank_matches_kaldi_reference(clip):
    fe = SSAMBAFeatureExtractor(num_mel_bins=128, max_length=100, do_normalize=False)
    ours = fe(clip, sampling_rate=16000)["input_values"][0]
    reference = kaldi_fbank(clip)
    frames = reference.shape[0]
    assert frames == 1 + (12000 - 400) // 160
    # the fbank itself
    assert np.abs(ours[:frames] - reference).max() < 1e-4
    # zero padding up to max_length, before normalisation
    assert np.all(ours[frames:] == 0)


def test_normalisation_presets_and_dc_invariance(clip):
    fe = SSAMBAFeatureExtractor.from_preset("speechcommands")
    preset = SSAMBA_FEATURE_PRESETS["speechcommands"]
    assert (fe.max_length, fe.mean, fe.std) == (128, preset["mean"], preset["std"])
    raw = SSAMBAFeatureExtractor(max_length=128, do_normalize=False)(clip, sampling_rate=16000)["input_values"][0]
    normed = fe(clip, sampling_rate=16000)["input_values"][0]
    np.testing.assert_allclose(normed, (raw - preset["mean"]) / (2 * preset["std"]), rtol=1e-5, atol=1e-5)
    # SSAST subtracts the waveform mean first; per-frame DC removal makes that a no-op
    shifted = fe(clip + 0.2, sampling_rate=16000)["input_values"][0]
    assert np.abs(shifted - normed).max() < 1e-3
    assert SSAMBAFeatureExtractor.from_preset("audioset").max_length == 1024
    assert SSAMBAFeatureExtractor.from_preset("esc50").max_length == 512
    with pytest.raises(ValueError, match="Unknown preset"):
        SSAMBAFeatureExtractor.from_preset("librispeech")


def test_batch_shapes_truncation_and_attention_mask(clip):
    fe = SSAMBAFeatureExtractor.from_preset("speechcommands")
    long_clip = np.tile(clip, 3)  # 36000 samples -> 223 frames, truncated to 128
    out = fe([clip, long_clip], sampling_rate=16000, return_tensors="np", return_attention_mask=True)
    assert out["input_values"].shape == (2, 128, 128) and out["input_values"].dtype == np.float32
    assert out["attention_mask"][0].sum() == 73 and out["attention_mask"][1].sum() == 128
    single = fe(clip, sampling_rate=16000, return_tensors="np")["input_values"][0]
    np.testing.assert_array_equal(out["input_values"][0], single)
    # a batch is a list of clips; a 2-D array is one (multi-channel) clip, mixed down to mono
    assert fe([clip, clip * 0.5], sampling_rate=16000)["input_values"].shape == (2, 128, 128)
    stereo = fe(np.stack([clip, clip * 0.5]), sampling_rate=16000)["input_values"]
    np.testing.assert_allclose(stereo, fe(clip * 0.75, sampling_rate=16000)["input_values"], atol=1e-5)


def test_integer_pcm_is_scaled_like_audio_readers(clip):
    fe = SSAMBAFeatureExtractor.from_preset("speechcommands")
    as_int16 = np.round(clip * 32767).astype(np.int16)
    from_int = fe(as_int16, sampling_rate=16000)["input_values"]
    from_float = fe(as_int16.astype(np.float32) / 32768, sampling_rate=16000)["input_values"]
    np.testing.assert_allclose(from_int, from_float, atol=1e-5)
    as_int32 = as_int16.astype(np.int32) << 16
    np.testing.assert_allclose(fe(as_int32, sampling_rate=16000)["input_values"], from_float, atol=1e-4)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.array([0.1, np.nan] * 400, dtype=np.float32), "NaN or infinite"),
        (np.array([0.1, np.inf] * 400, dtype=np.float32), "NaN or infinite"),
        (np.zeros((16, 16000), dtype=np.float32), "list of 1-D clips"),
        (np.zeros((2, 2, 16000), dtype=np.float32), "mono"),
        (np.zeros(100, dtype=np.float32), r"too short: 100 samples \(6.2 ms at 16000 Hz\)"),
        (np.array(["a"] * 500), "numeric"),
    ],
)
def test_bad_input_raises_clear_errors(bad, match):
    fe = SSAMBAFeatureExtractor.from_preset("speechcommands")
    with pytest.raises(ValueError, match=match):
        fe(bad, sampling_rate=16000)


def test_wrong_sampling_rate_and_multichannel_in_list():
    fe = SSAMBAFeatureExtractor.from_preset("speechcommands")
    with pytest.raises(ValueError, match="16000 Hz, got sampling_rate=44100"):
        fe(np.zeros(44100, dtype=np.float32), sampling_rate=44100)
    with pytest.raises(ValueError, match="^Audio clip 0 must be mono"):
        fe([np.zeros((1, 2, 16000), dtype=np.float32)], sampling_rate=16000)


def test_silence_gives_finite_features_equal_to_the_floor():
    """Kaldi floors the mel energies at float32 eps before the log: digital silence gives log(eps) in every frame,
    finite after normalisation too, never -inf."""
    raw = SSAMBAFeatureExtractor(max_length=128, do_normalize=False)
    silent = raw(np.zeros(16000, np.float32), sampling_rate=16000)["input_values"][0]
    frames = 1 + (16000 - 400) // 160
    np.testing.assert_array_equal(silent[:frames], np.float32(np.log(np.finfo(np.float32).eps)))
    assert np.all(silent[frames:] == 0)  # padding
    normed = SSAMBAFeatureExtractor.from_preset("speechcommands")(np.zeros(16000, np.float32), sampling_rate=16000)
    assert np.isfinite(normed["input_values"]).all()


def test_long_clip_is_cropped_before_the_fbank(clip):
    """Only the samples the first max_length frames read are featurised: identical features, and a long clip costs
    no more than a short one (before: a 10-minute clip computed all 60 000 frames, +821 MiB)."""
    fe = SSAMBAFeatureExtractor.from_preset("speechcommands")  # max_length 128
    assert fe.samples_for_max_length() == 400 + 160 * 127
    ten_seconds = np.tile(clip, 14)[:160000]
    uncropped = fe._extract_fbank_features(ten_seconds, fe.max_length)  # every frame, then the first 128 kept
    expected = (uncropped - fe.mean) / (fe.std * 2)
    np.testing.assert_array_equal(fe(ten_seconds, sampling_rate=16000)["input_values"][0], expected)

    lengths = []
    original = fe._extract_fbank_features
    def spy(waveform, max_length, **kwargs):
        lengths.append(len(waveform))
        return original(waveform, max_length, **kwargs)

    fe._extract_fbank_features = spy
    try:
        out = fe([ten_seconds, clip], sampling_rate=16000, return_attention_mask=True)
    finally:
        del fe._extract_fbank_features
    assert lengths == [fe.samples_for_max_length(), clip.size]
    assert out["attention_mask"].sum(-1).tolist() == [128, 73]

    long_clip = np.tile(clip, 240)  # 3 minutes
    tracemalloc.start()
    try:
        fe(long_clip, sampling_rate=16000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB for a 3-minute clip"


def test_save_load_round_trip(tmp_path, clip):
    from transformers import AutoFeatureExtractor

    fe = SSAMBAFeatureExtractor.from_preset("esc50")
    fe.save_pretrained(tmp_path)
    text = (tmp_path / "preprocessor_config.json").read_text()
    assert "mel_filters" not in text and len(text) < 2000
    loaded = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert isinstance(loaded, SSAMBAFeatureExtractor)
    np.testing.assert_array_equal(loaded(clip, sampling_rate=16000)["input_values"],
                                  fe(clip, sampling_rate=16000)["input_values"])


def test_long_recordings_are_featurised_in_blocks_with_the_same_numbers(monkeypatch):
    """Filter banks are computed a block of frames at a time (memory O(block) for hours of audio): identical to one
    call over all frames, for blocks that do not divide the frame count, and with max_length cutting inside a block."""
    from mamba_zoo import feature_extraction_ssamba

    audio = (0.1 * np.random.default_rng(4).standard_normal(16000 * 3 + 77)).astype(np.float32)
    extractor = SSAMBAFeatureExtractor(max_length=250)
    monkeypatch.setattr(feature_extraction_ssamba, "FBANK_BLOCK_FRAMES", 10**6)
    whole = extractor(audio, sampling_rate=16000, return_tensors="np")["input_values"]
    monkeypatch.setattr(feature_extraction_ssamba, "FBANK_BLOCK_FRAMES", 37)
    blocks = extractor(audio, sampling_rate=16000, return_tensors="np")["input_values"]
    np.testing.assert_array_equal(blocks, whole)
    assert np.abs(whole[0, 200:250]).sum() > 0  # real frames up to max_length, none lost at block edges
