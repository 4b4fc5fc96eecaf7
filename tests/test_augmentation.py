"""Tests of the training-time voice and channel augmentation (mamba_zoo.corpora.voice_augmentation)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import butter, lfilter, sosfiltfilt, welch

from mamba_zoo.corpora.voice_augmentation import (
    CODEC_KINDS,
    EXCITATION_KINDS,
    WaveformAugmenter,
    band_limit,
    codec_simulation,
    mu_law_quantize,
    pitch_shift,
    source_filter_resynthesis,
    speed_perturb,
    vocal_tract_length_perturbation,
    vtlp_warp,
)

from mamba_zoo.corpora.augment import rms  # noqa: E402

SR = 16000


# ----------------------------------------------------------------------------------------------- signals


def speech_like(seed: int, sampling_rate: int = SR, seconds: float = 1.0, peak: float = 0.9) -> np.ndarray:
    """A voiced-speech stand-in: harmonics of a wobbling f0 under three formants, syllable-like envelope.

    Never silent (the envelope has a floor), float32, peak ``peak``.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * sampling_rate)
    t = np.arange(n) / sampling_rate
    f0_mean = rng.uniform(100, 220)
    f0 = f0_mean * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sampling_rate
    formants = rng.uniform([500, 1200, 2300], [900, 1800, 3000])
    signal = np.zeros(n)
    for k in range(1, int(0.45 * sampling_rate / (1.03 * f0_mean))):
        amp = sum(np.exp(-(((k * f0_mean) - f) / 150) ** 2) for f in formants) + 0.02
        signal += amp * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    envelope = 0.15 + sum(
        np.exp(-(((t - c) / rng.uniform(0.05, 0.12)) ** 2)) for c in rng.uniform(0.1, 0.9, size=3) * seconds
    )
    audio = signal * envelope
    return (peak * audio / np.abs(audio).max()).astype(np.float32)


def tone(freq: float, seconds: float = 1.0, sampling_rate: int = SR, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def tone_burst(freq: float, start: float, stop: float, seconds: float = 1.0) -> np.ndarray:
    """A tone between ``start`` and ``stop`` seconds (5 ms ramps), silence elsewhere."""
    t = np.arange(int(seconds * SR)) / SR
    gate = np.clip(np.minimum(t - start, stop - t) / 0.005, 0, 1)
    return (0.5 * gate * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def band_noise(seed: int, low: float, high: float, seconds: float = 1.0) -> np.ndarray:
    """Gaussian noise band-passed to [low, high] Hz (a formant-like band), peak 0.5."""
    noise = np.random.default_rng(seed).standard_normal(int(seconds * SR))
    band = sosfiltfilt(butter(4, [low, high], btype="bandpass", fs=SR, output="sos"), noise)
    return (0.5 * band / np.abs(band).max()).astype(np.float32)


def peak_hz(audio: np.ndarray, sampling_rate: int = SR) -> float:
    """Frequency of the largest Hann-windowed spectral peak, refined by a parabola through its log magnitude."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio)))) + 1e-12
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sampling_rate / len(audio)


def centroid_hz(audio: np.ndarray, low: float = 0.0, high: float = 4000.0) -> float:
    """Power-weighted mean frequency of ``audio`` between ``low`` and ``high`` Hz (Welch PSD)."""
    freqs, power = welch(audio, SR, nperseg=2048)
    band = (freqs >= low) & (freqs <= high)
    return float(np.sum(freqs[band] * power[band]) / np.sum(power[band]))


def active_span(audio: np.ndarray, threshold_db: float = -20.0) -> tuple[float, float]:
    """First and last instant (s) of the 5 ms frames within ``threshold_db`` of the loudest."""
    frame = int(0.005 * SR)
    energy = np.square(audio[: len(audio) // frame * frame].reshape(-1, frame)).mean(axis=1)
    loud = np.nonzero(energy >= energy.max() * 10 ** (threshold_db / 10))[0]
    return loud[0] * frame / SR, (loud[-1] + 1) * frame / SR


def all_on(**overrides) -> WaveformAugmenter:
    """An augmenter that applies every step (speed never 1.0)."""
    settings = dict(
        speed_factors=(0.9, 1.1), p_pitch=1.0, p_vtlp=1.0, p_reverb=1.0, p_noise=1.0, p_band_limit=1.0, p_codec=1.0
    )
    settings.update(overrides)
    return WaveformAugmenter(**settings)


# Every transform with a non-identity setting, as f(audio, sampling_rate) -> audio.
TRANSFORMS = {
    "speed_0.9": lambda x, sr: speed_perturb(x, 0.9),
    "speed_1.1": lambda x, sr: speed_perturb(x, 1.1),
    "pitch_+2": lambda x, sr: pitch_shift(x, sr, 2.0),
    "pitch_-3.5": lambda x, sr: pitch_shift(x, sr, -3.5),
    "vtlp_0.9": lambda x, sr: vocal_tract_length_perturbation(x, sr, 0.9),
    "vtlp_1.1": lambda x, sr: vocal_tract_length_perturbation(x, sr, 1.1),
    "vtlp_1.1_kept_phase": lambda x, sr: vocal_tract_length_perturbation(x, sr, 1.1, phase_iterations=0),
    "band_300_3400": lambda x, sr: band_limit(x, sr, 300.0, 3400.0),
    "lowpass_3400": lambda x, sr: band_limit(x, sr, None, 3400.0),
    "highpass_300": lambda x, sr: band_limit(x, sr, 300.0, None),
    **{f"codec_{kind}": (lambda x, sr, kind=kind: codec_simulation(x, sr, np.random.default_rng(0), kind=kind))
       for kind in CODEC_KINDS},
    "codec_random": lambda x, sr: codec_simulation(x, sr, np.random.default_rng(1)),
    **{f"resynthesis_{kind}": (lambda x, sr, kind=kind: source_filter_resynthesis(x, sr, np.random.default_rng(0),
                                                                                  kind=kind))
       for kind in EXCITATION_KINDS},
    "augmenter_all_on": lambda x, sr: all_on(seed=5)(x, sr),
    "augmenter_all_on_resynthesis": lambda x, sr: all_on(seed=6, p_resynthesis=1.0)(x, sr),
}


# ----------------------------------------------------------------------------------- contracts, all transforms


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("sampling_rate", [8000, 16000, 22050])
def test_length_dtype_peak_contract(name, sampling_rate):
    # Odd length, full-scale peak: the output keeps the length, is float32, finite, and peak <= 1.
    audio = speech_like(seed=sampling_rate, sampling_rate=sampling_rate, seconds=0.6, peak=1.0)[:-7]
    out = TRANSFORMS[name](audio, sampling_rate)
    assert out.shape == audio.shape
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert np.abs(out).max() <= 1.0
    assert np.abs(out).max() > 0.01  # not silenced


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("length", [1, 7, 300, 700])
def test_length_contract_on_short_clips(name, length):
    audio = speech_like(seed=length, seconds=0.05)[:length] if length > 1 else np.array([0.3], np.float32)
    out = TRANSFORMS[name](audio, SR)
    assert out.shape == audio.shape and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and np.abs(out).max() <= 1.0


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("seed", [0, 1])
def test_every_transform_changes_the_audio(name, seed):
    audio = speech_like(seed)
    out = TRANSFORMS[name](audio, SR)
    relative_change = np.sqrt(np.mean((out - audio) ** 2) / np.mean(audio**2))
    assert relative_change > 0.005, f"{name} left the audio (nearly) unchanged: {relative_change:.2e}"


@pytest.mark.parametrize(
    "name, transform",
    [
        ("band_300_3400", lambda x, sr: band_limit(x, sr, 300.0, 3400.0)),
        ("reverb_and_noise_only", lambda x, sr: WaveformAugmenter(
            speed_factors=(1.0,), p_pitch=0, p_vtlp=0, p_reverb=1, p_noise=1, snr_db=(30, 30),
            p_band_limit=0, p_codec=0, seed=2)(x, sr)),
        *[(f"codec_{kind}", lambda x, sr, kind=kind: codec_simulation(x, sr, np.random.default_rng(0), kind=kind))
          for kind in CODEC_KINDS],
    ],
)
@pytest.mark.parametrize("sampling_rate", [8000, 16000, 22050])
def test_rate_contract_channel_transforms_keep_a_tone_at_its_frequency(name, transform, sampling_rate):
    # Read at the input's sampling rate, a 1 kHz tone is still at 1 kHz after every channel transform.
    audio = tone(1000.0, seconds=0.5, sampling_rate=sampling_rate)
    out = transform(audio, sampling_rate)
    assert out.shape == audio.shape
    assert peak_hz(out, sampling_rate) == pytest.approx(1000.0, rel=0.003)


# ------------------------------------------------------------------------------------------ identities


def test_identity_settings_return_the_input():
    audio = speech_like(seed=3)
    np.testing.assert_array_equal(speed_perturb(audio, 1.0), audio)
    np.testing.assert_allclose(pitch_shift(audio, SR, 0.0), audio, atol=1e-4)
    np.testing.assert_allclose(vocal_tract_length_perturbation(audio, SR, 1.0), audio, atol=1e-4)
    np.testing.assert_allclose(vocal_tract_length_perturbation(audio, SR, 1.0, phase_iterations=0), audio, atol=1e-4)


def test_augmenter_with_every_step_off_is_the_identity():
    audio = speech_like(seed=4)
    off = WaveformAugmenter(speed_factors=(1.0,), p_pitch=0, p_vtlp=0, p_reverb=0, p_noise=0, p_band_limit=0, p_codec=0)
    for _ in range(3):
        np.testing.assert_array_equal(off(audio, SR), audio)


# ------------------------------------------------------------------------------------------ speed


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.25])
def test_speed_perturb_scales_a_tone_frequency(factor):
    out = speed_perturb(tone(220.0), factor)
    assert peak_hz(out) == pytest.approx(220.0 * factor, rel=0.003)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_rescales_the_content_around_its_centre(factor):
    # A burst from 0.3 to 0.7 s lasts 0.4 / factor s afterwards and stays centred on 0.5 s (documented fit).
    audio = tone_burst(300.0, 0.3, 0.7)
    start, stop = active_span(speed_perturb(audio, factor))
    assert stop - start == pytest.approx(0.4 / factor, abs=0.011)
    assert (start + stop) / 2 == pytest.approx(0.5, abs=0.006)


def test_speed_perturb_crops_around_the_content_when_slower():
    # Content near the end of the clip is kept when slowing down makes it longer than the clip.
    audio = tone_burst(300.0, 0.55, 0.95)
    start, stop = active_span(speed_perturb(audio, 0.9))
    assert stop - start == pytest.approx(0.4 / 0.9, abs=0.011)
    assert stop <= 1.0 and start < 0.55


# ------------------------------------------------------------------------------------------ pitch


@pytest.mark.parametrize("semitones", [12.0, -12.0, 2.0, -5.0])
def test_pitch_shift_moves_a_sine_by_the_right_ratio(semitones):
    audio = tone(220.0)
    out = pitch_shift(audio, SR, semitones)
    assert out.shape == audio.shape
    assert peak_hz(out) == pytest.approx(220.0 * 2 ** (semitones / 12), rel=0.005)


@pytest.mark.parametrize("semitones", [4.0, -4.0])
def test_pitch_shift_keeps_the_duration_and_timing(semitones):
    audio = tone_burst(440.0, 0.3, 0.7)
    start, stop = active_span(pitch_shift(audio, SR, semitones))
    assert start == pytest.approx(0.3, abs=0.02)
    assert stop == pytest.approx(0.7, abs=0.02)


def test_pitch_shift_at_another_sampling_rate():
    audio = tone(300.0, sampling_rate=8000)
    assert peak_hz(pitch_shift(audio, 8000, 7.0), 8000) == pytest.approx(300.0 * 2 ** (7 / 12), rel=0.005)


# ------------------------------------------------------------------------------------------ VTLP


def test_vtlp_warp_is_the_papers_piecewise_linear_map():
    freqs = np.linspace(0, SR / 2, 1001)
    for alpha in (0.9, 0.95, 1.05, 1.1):
        warped = vtlp_warp(freqs, alpha, SR)
        bend = 4800.0 * min(alpha, 1.0) / alpha  # F_hi = 4800 Hz at 16 kHz
        below = freqs <= bend
        np.testing.assert_allclose(warped[below], alpha * freqs[below])
        assert warped[0] == 0.0 and warped[-1] == pytest.approx(SR / 2)
        assert np.all(np.diff(warped) > 0)
        # linear above the bend, continuous at it
        above = freqs[~below]
        slope = np.diff(warped[~below]) / np.diff(above)
        np.testing.assert_allclose(slope, slope[0])
        assert vtlp_warp(np.array([bend]), alpha, SR)[0] == pytest.approx(4800.0 * min(alpha, 1.0))
    np.testing.assert_allclose(vtlp_warp(freqs, 1.0, SR), freqs)
    # the boundary scales with the sampling rate: 2.4 kHz at 8 kHz
    assert vtlp_warp(np.array([2400.0 / 1.1]), 1.1, 8000)[0] == pytest.approx(2400.0)


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_vtlp_moves_a_formant_band_by_alpha(alpha):
    audio = band_noise(seed=0, low=900, high=1100)
    ratio = centroid_hz(vocal_tract_length_perturbation(audio, SR, alpha)) / centroid_hz(audio)
    assert ratio == pytest.approx(alpha, abs=0.01)


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_vtlp_moves_the_formant_of_a_voiced_sound(alpha):
    # Harmonics of 150 Hz under one formant at 1 kHz: the formant (spectral centroid below 4 kHz) moves.
    t = np.arange(SR) / SR
    vowel = sum(np.exp(-((k * 150 - 1000) / 200) ** 2) * np.sin(2 * np.pi * k * 150 * t + k) for k in range(1, 46))
    vowel = (0.5 * vowel / np.abs(vowel).max()).astype(np.float32)
    ratio = centroid_hz(vocal_tract_length_perturbation(vowel, SR, alpha)) / centroid_hz(vowel)
    assert ratio == pytest.approx(alpha, abs=0.02)


def test_vtlp_with_kept_phase_only_moves_energy_the_right_way():
    # The literal method (input phase, no iterations) moves a band the right way, by less than alpha.
    audio = band_noise(seed=1, low=900, high=1100)
    before = centroid_hz(audio)
    up = centroid_hz(vocal_tract_length_perturbation(audio, SR, 1.1, phase_iterations=0))
    down = centroid_hz(vocal_tract_length_perturbation(audio, SR, 0.9, phase_iterations=0))
    assert 1.04 * before < up < 1.12 * before
    assert 0.88 * before < down < 0.96 * before


def test_vtlp_leaves_the_top_of_the_band_near_nyquist():
    # Above the bend the band is squeezed towards Nyquist, not scaled by alpha: a band at 7 kHz moves
    # to vtlp_warp(7 kHz) ~ 7.11 kHz for alpha 1.1, where plain scaling would put it at 7.7 kHz.
    audio = band_noise(seed=2, low=6800, high=7200)
    out = vocal_tract_length_perturbation(audio, SR, 1.1)
    expected = vtlp_warp(np.array([centroid_hz(audio, 6000, 8000)]), 1.1, SR)[0]
    assert centroid_hz(out, 6000, 8000) == pytest.approx(expected, abs=40.0)


# ------------------------------------------------------------------------------------------ channel


def _attenuation_db(out: np.ndarray, ref: np.ndarray, freq: float) -> float:
    freqs, p_out = welch(out, SR, nperseg=1024)
    _, p_ref = welch(ref, SR, nperseg=1024)
    k = int(np.argmin(np.abs(freqs - freq)))
    return float(10 * np.log10(p_out[k] / p_ref[k]))


def test_band_limit_removes_energy_outside_the_telephone_band():
    noise = (0.2 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    out = band_limit(noise, SR, 300.0, 3400.0)
    # > 20 dB is the requirement; order 4 run twice gives ~80 dB at 16 kHz (a first-order filter gives ~21)
    assert _attenuation_db(out, noise, 100.0) < -60.0
    assert _attenuation_db(out, noise, 6000.0) < -60.0
    assert abs(_attenuation_db(out, noise, 1000.0)) < 1.0


def test_band_limit_with_one_edge():
    noise = (0.2 * np.random.default_rng(1).standard_normal(SR)).astype(np.float32)
    lowpass = band_limit(noise, SR, None, 3400.0)
    highpass = band_limit(noise, SR, 300.0, None)
    assert abs(_attenuation_db(lowpass, noise, 100.0)) < 1.0 and _attenuation_db(lowpass, noise, 6000.0) < -20.0
    assert _attenuation_db(highpass, noise, 100.0) < -20.0 and abs(_attenuation_db(highpass, noise, 6000.0)) < 1.0


def test_band_limit_is_zero_phase():
    # A tone in the pass band comes out aligned with the input (no filter delay).
    audio = tone(1000.0)
    out = band_limit(audio, SR, 300.0, 3400.0)
    middle = slice(2000, -2000)
    np.testing.assert_allclose(out[middle], audio[middle], atol=0.01)


def test_codec_narrowband_round_trip_removes_the_top_band():
    noise = (0.2 * np.random.default_rng(2).standard_normal(SR)).astype(np.float32)
    out = codec_simulation(noise, SR, np.random.default_rng(0), kind="narrowband_mulaw")
    assert _attenuation_db(out, noise, 6000.0) < -30.0
    assert abs(_attenuation_db(out, noise, 1000.0)) < 1.5


def test_codec_mulaw_quantises_to_256_levels():
    audio = speech_like(seed=6)
    out = codec_simulation(audio, SR, np.random.default_rng(0), kind="mulaw")
    np.testing.assert_array_equal(out, mu_law_quantize(audio))
    assert len(np.unique(out)) <= 256
    error = np.abs(out - audio)
    assert 0 < error.max() < 0.025  # half a mu-law step near the 0.9 peak is ~0.0197


def test_codec_gsm_like_is_band_limited_and_coarse():
    noise = (0.2 * np.random.default_rng(3).standard_normal(SR)).astype(np.float32)
    out = codec_simulation(noise, SR, np.random.default_rng(0), kind="gsm_like")
    assert _attenuation_db(out, noise, 100.0) < -20.0 and _attenuation_db(out, noise, 6000.0) < -20.0
    assert len(np.unique(out)) <= 2**8 + 1


def test_codec_draws_every_kind():
    audio = speech_like(seed=7)
    outputs = {codec_simulation(audio, SR, np.random.default_rng(seed)).tobytes() for seed in range(12)}
    by_kind = {codec_simulation(audio, SR, np.random.default_rng(0), kind=kind).tobytes() for kind in CODEC_KINDS[:2]}
    assert by_kind <= outputs  # both deterministic branches were drawn
    assert len(outputs) >= 3


# ------------------------------------------------------------------------------------------ the augmenter


def test_augmenter_is_deterministic_per_seed():
    clips = [speech_like(seed) for seed in range(6)]
    first, second, other = WaveformAugmenter(seed=11), WaveformAugmenter(seed=11), WaveformAugmenter(seed=12)
    outputs_first = [first(clip, SR) for clip in clips]
    outputs_second = [second(clip, SR) for clip in clips]
    outputs_other = [other(clip, SR) for clip in clips]
    for a, b in zip(outputs_first, outputs_second):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(outputs_first, outputs_other))
    # the stream moves on: the same clip twice is augmented differently
    repeat = WaveformAugmenter(seed=11)
    assert not np.array_equal(repeat(clips[0], SR), repeat(clips[0], SR))


def test_augmenter_default_settings_and_describe():
    augmenter = WaveformAugmenter()
    assert augmenter.speed_factors == (0.9, 1.0, 1.1)
    assert (augmenter.p_pitch, augmenter.pitch_semitones) == (0.3, (-2.0, 2.0))
    assert (augmenter.p_vtlp, augmenter.vtlp_alpha) == (0.5, (0.9, 1.1))
    assert (augmenter.p_reverb, augmenter.rt60_seconds) == (0.3, (0.1, 0.6))
    assert (augmenter.p_noise, augmenter.snr_db) == (0.5, (5.0, 30.0))
    assert (augmenter.p_band_limit, augmenter.p_codec, augmenter.seed) == (0.2, 0.1, 0)
    text = augmenter.describe()
    for piece in ["speed x{0.9, 1, 1.1}", "pitch p=0.3 -2..2 st", "VTLP p=0.5 alpha 0.9..1.1",
                  "reverb p=0.3 RT60 0.1..0.6 s", "band-limit p=0.2 300..3400 Hz", "codec p=0.1",
                  "noise p=0.5 SNR 5..30 dB", "seed 0"]:
        assert piece in text
    assert "p=0.7" in WaveformAugmenter(p_noise=0.7).describe()


def test_augmenter_noise_step_respects_the_snr():
    # Noise only, SNR fixed at 10 dB: the added signal is 10 dB below the (trimmed) speech level.
    audio = speech_like(seed=8, peak=0.5)
    noisy = WaveformAugmenter(speed_factors=(1.0,), p_pitch=0, p_vtlp=0, p_reverb=0, p_noise=1, snr_db=(10, 10),
                              p_band_limit=0, p_codec=0)(audio, SR)
    snr = 10 * np.log10(np.mean(audio.astype(np.float64) ** 2) / np.mean((noisy - audio).astype(np.float64) ** 2))
    assert snr == pytest.approx(10.0, abs=0.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(p_pitch=-0.1), "p_pitch"),
        (dict(p_noise=1.5), "p_noise"),
        (dict(p_codec="0.1"), "p_codec"),
        (dict(p_vtlp=float("nan")), "p_vtlp"),
        (dict(pitch_semitones=(2.0, -2.0)), "pitch_semitones.*ordered"),
        (dict(vtlp_alpha=(1.1, 0.9)), "vtlp_alpha.*ordered"),
        (dict(vtlp_alpha=(0.0, 1.1)), "vtlp_alpha"),
        (dict(rt60_seconds=(0.0, 0.5)), "rt60_seconds"),
        (dict(rt60_seconds=(0.6, 0.1)), "rt60_seconds.*ordered"),
        (dict(snr_db=(30.0, 5.0)), "snr_db.*ordered"),
        (dict(snr_db=(5.0,)), "snr_db"),
        (dict(band_hz=(3400.0, 300.0)), "band_hz"),
        (dict(band_hz=(300.0, 300.0)), "band_hz"),
        (dict(speed_factors=()), "speed_factors"),
        (dict(speed_factors=(0.9, -1.0)), "speed_factors"),
        (dict(speed_factors=(0.0, 1.0)), "speed_factors"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
    ],
)
def test_augmenter_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WaveformAugmenter(**kwargs)


BAD_AUDIO = [
    (np.zeros(0, np.float32), "empty"),
    (np.zeros((2, 100), np.float32), "1-D"),
    (np.float32(0.5), "1-D"),
    (np.array([0.1, np.nan, 0.2], np.float32), "non-finite"),
    (np.array([0.1, np.inf, 0.2], np.float32), "non-finite"),
]


@pytest.mark.parametrize("audio, message", BAD_AUDIO)
@pytest.mark.parametrize("name", ["augmenter_all_on", "speed_1.1", "pitch_+2", "vtlp_1.1", "band_300_3400",
                                  "codec_random"])
def test_bad_audio_raises_value_error_naming_the_problem(audio, message, name):
    with pytest.raises(ValueError, match=message):
        TRANSFORMS[name](audio, SR)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: speed_perturb(x, 0.0), "speed factor"),
        (lambda x: speed_perturb(x, -1.1), "speed factor"),
        (lambda x: speed_perturb(x, float("nan")), "speed factor"),
        (lambda x: pitch_shift(x, SR, float("inf")), "semitones"),
        (lambda x: pitch_shift(x, 0, 2.0), "sampling_rate"),
        (lambda x: pitch_shift(x, 16000.5, 2.0), "sampling_rate"),
        (lambda x: vocal_tract_length_perturbation(x, SR, 0.0), "alpha"),
        (lambda x: vocal_tract_length_perturbation(x, SR, 1.1, boundary_hz=9000.0), "boundary_hz"),
        (lambda x: vocal_tract_length_perturbation(x, SR, 1.1, phase_iterations=-1), "phase_iterations"),
        (lambda x: band_limit(x, SR, None, None), "neither"),
        (lambda x: band_limit(x, SR, 3400.0, 300.0), "below high_hz"),
        (lambda x: band_limit(x, SR, 300.0, 8000.0), "high_hz"),
        (lambda x: band_limit(x, SR, 0.0, 3400.0), "low_hz"),
        (lambda x: codec_simulation(x, SR, np.random.default_rng(0), kind="opus"), "codec kind"),
        (lambda x: codec_simulation(x, SR, 0), "rng"),
        (lambda x: mu_law_quantize(x, bits=1), "bits"),
        (lambda x: WaveformAugmenter()(x, -16000), "sampling_rate"),
    ],
)
def test_function_arguments_are_validated(call, message):
    with pytest.raises(ValueError, match=message):
        call(speech_like(seed=9, seconds=0.1))


# ------------------------------------------------------------------------------- source-filter resynthesis


def pulse_vowel(seed: int) -> np.ndarray:
    """A source-filter vowel: impulses at a wobbling F0 (90-200 Hz) through three formant resonators (100 Hz
    bandwidth), 1 s, peak 0.8: the signal model that LPC resynthesis assumes."""
    rng = np.random.default_rng(seed)
    f0 = rng.uniform(90, 200) * (1 + 0.1 * np.sin(2 * np.pi * 2 * np.arange(SR) / SR))
    audio, position = np.zeros(SR), 0.0
    while position < SR:
        audio[int(position)] = 1.0
        position += SR / f0[int(position)]
    for formant in rng.uniform([500, 1100, 2300], [900, 1700, 3000]):
        radius = np.exp(-np.pi * 100 / SR)
        audio = lfilter([1 - radius], [1, -2 * radius * np.cos(2 * np.pi * formant / SR), radius**2], audio)
    return (0.8 * audio / np.abs(audio).max()).astype(np.float32)


def gliding_vowel(f0_start: float, f0_end: float, seconds: float = 1.0) -> np.ndarray:
    """Harmonics of an F0 gliding from ``f0_start`` to ``f0_end`` Hz under fixed formants at 700 / 1200 / 2600 Hz."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = np.linspace(f0_start, f0_end, len(t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    audio = np.zeros(len(t))
    for k in range(1, int(0.45 * SR / f0_end)):
        freq = k * f0
        amp = sum(np.exp(-((freq - f) / 120) ** 2) for f in (700, 1200, 2600)) + 0.01
        audio += amp * np.sin(k * phase)
    return (0.8 * audio / np.abs(audio).max()).astype(np.float32)


def frame_f0(audio: np.ndarray) -> np.ndarray:
    """F0 (Hz) of 64 ms frames (hop 32 ms) of a voiced signal from the real-cepstrum peak between 70 and 400 Hz
    (the period of a pulse train under a smooth filter stands out there, whatever the formants)."""
    frame, f0 = int(0.064 * SR), []
    low, high = SR // 400, SR // 70
    for start in range(0, len(audio) - frame, frame // 2):
        x = audio[start:start + frame] * np.hanning(frame)
        cepstrum = np.fft.irfft(np.log(np.abs(np.fft.rfft(x)) + 1e-9))
        f0.append(SR / (low + np.argmax(cepstrum[low:high])))
    return np.asarray(f0[1:-1])  # away from the edges


@pytest.mark.parametrize("kind", EXCITATION_KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resynthesis_keeps_the_formants_and_replaces_the_source(kind, seed):
    """On a source-filter vowel the spectral envelope (formant centroid below 4 kHz) stays within 10 %; the waveform
    itself is new."""
    audio = pulse_vowel(seed)
    out = source_filter_resynthesis(audio, SR, np.random.default_rng(seed + 1), kind=kind)
    assert centroid_hz(out) == pytest.approx(centroid_hz(audio), rel=0.10)
    assert abs(np.corrcoef(audio, out)[0, 1]) < 0.5
    # the input's level, unless the (peakier) pulse excitation needed scaling down to peak 1
    assert rms(out) == pytest.approx(rms(audio), rel=0.02) or (
        np.abs(out).max() == pytest.approx(1.0) and 0.3 * rms(audio) < rms(out) < rms(audio))


def test_resynthesis_monotone_flattens_the_intonation_and_contour_follows_it():
    """An F0 glide of 110 -> 190 Hz: the "monotone" source holds one F0 (within the jitter), the "contour" source
    follows the glide, scaled by one factor."""
    vowel = gliding_vowel(110.0, 190.0)
    monotone = frame_f0(source_filter_resynthesis(vowel, SR, np.random.default_rng(2), kind="monotone"))
    contour = frame_f0(source_filter_resynthesis(vowel, SR, np.random.default_rng(2), kind="contour"))
    original = frame_f0(vowel)
    assert np.ptp(original) > 60

    def share_near_median(values, tolerance):  # robust to the estimator's occasional octave error
        return np.mean(np.abs(values / np.median(values) - 1) < tolerance)

    assert share_near_median(monotone, 0.05) > 0.8
    assert share_near_median(original, 0.05) < 0.5  # the glide is not flat
    factor = contour / original
    assert share_near_median(factor, 0.08) > 0.8 and 0.65 < np.median(factor) < 1.45


def test_resynthesis_keeps_noise_as_noise_in_its_band():
    """An unvoiced (noise) band is re-excited with noise: same band, new samples."""
    audio = band_noise(seed=4, low=2000, high=3000)
    out = source_filter_resynthesis(audio, SR, np.random.default_rng(3), kind="contour")
    assert centroid_hz(out, 0, 8000) == pytest.approx(centroid_hz(audio, 0, 8000), rel=0.1)


def test_resynthesis_is_seeded_and_draws_every_kind():
    audio = speech_like(seed=5)
    first = source_filter_resynthesis(audio, SR, np.random.default_rng(9))
    np.testing.assert_array_equal(first, source_filter_resynthesis(audio, SR, np.random.default_rng(9)))
    assert not np.array_equal(first, source_filter_resynthesis(audio, SR, np.random.default_rng(10)))
    with pytest.raises(ValueError, match="excitation kind"):
        source_filter_resynthesis(audio, SR, np.random.default_rng(0), kind="whisper")
    with pytest.raises(ValueError, match="f0_range_hz"):
        source_filter_resynthesis(audio, SR, np.random.default_rng(0), f0_range_hz=(0.0, 100.0))


def test_augmenter_resynthesis_step_is_off_by_default_and_described():
    assert WaveformAugmenter().p_resynthesis == 0.0
    assert "resynthesis" not in WaveformAugmenter().describe()
    assert "source-filter resynthesis p=0.4" in WaveformAugmenter(p_resynthesis=0.4).describe()
    with pytest.raises(ValueError, match="p_resynthesis"):
        WaveformAugmenter(p_resynthesis=1.5)
    # only the resynthesis step on: the output is a resynthesis (formants kept, waveform new)
    only = WaveformAugmenter(speed_factors=(1.0,), p_pitch=0, p_vtlp=0, p_resynthesis=1.0, p_reverb=0, p_noise=0,
                             p_band_limit=0, p_codec=0, seed=1)
    audio = pulse_vowel(seed=6)
    out = only(audio, SR)
    assert abs(np.corrcoef(audio, out)[0, 1]) < 0.5
    assert centroid_hz(out) == pytest.approx(centroid_hz(audio), rel=0.10)
