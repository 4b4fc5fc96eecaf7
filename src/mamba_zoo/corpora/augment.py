"""Signal-level variety for synthesized speech: noise at a chosen SNR, room reverberation, time shift, gain.

Every function takes float32 mono audio in [-1, 1] and, where it is random, a ``numpy.random.Generator``,
so a clip is a pure function of its seed.
"""

from __future__ import annotations

from functools import lru_cache
from math import gcd

import numpy as np
from scipy.signal import fftconvolve, firwin, resample_poly

__all__ = [
    "NOISE_COLORS",
    "add_noise",
    "apply_reverb",
    "background_noise",
    "colored_noise",
    "fit_to_length",
    "hum",
    "resample",
    "rms",
    "rms_dbfs",
    "room_impulse_response",
    "scale_to_peak_dbfs",
    "trim_silence",
]

# Spectral slope of each noise colour: power ~ f ** exponent.
NOISE_COLORS: dict[str, float] = {"white": 0.0, "pink": -1.0, "brown": -2.0, "blue": 1.0}


def rms(audio: np.ndarray) -> float:
    """Root mean square of ``audio`` (0.0 for an empty array)."""
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def rms_dbfs(audio: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a full-scale sine is -3 dBFS); -inf for silence."""
    value = rms(audio)
    return 20 * np.log10(value) if value > 0 else float("-inf")


@lru_cache(maxsize=8)
def _resampling_filter(up: int, down: int) -> np.ndarray:
    """The anti-aliasing FIR filter ``resample_poly`` designs by default (Kaiser, beta 5), kept for reuse."""
    max_rate = max(up, down)
    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling (22050 -> 16000 Hz is up 320, down 441), as ``scipy.signal.resample_poly``."""
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"Sampling rates must be positive, got orig_sr={orig_sr}, target_sr={target_sr}.")
    if orig_sr == target_sr:
        return audio.astype(np.float32, copy=False)
    divisor = gcd(int(orig_sr), int(target_sr))
    up, down = target_sr // divisor, orig_sr // divisor
    audio = np.asarray(audio, dtype=np.float32)
    return resample_poly(audio, up, down, window=_resampling_filter(up, down).astype(np.float32)).astype(np.float32)


def trim_silence(
    audio: np.ndarray, sampling_rate: int, threshold_db: float = -45.0, margin_seconds: float = 0.015
) -> tuple[np.ndarray, int]:
    """Cut leading and trailing stretches quieter than ``threshold_db`` below the loudest 10 ms frame.

    Returns the trimmed audio and the index of its first sample in the input.
    """
    frame = max(1, int(0.01 * sampling_rate))
    num_frames = len(audio) // frame
    if num_frames == 0:
        return audio, 0
    energy = np.square(audio[: num_frames * frame].reshape(num_frames, frame), dtype=np.float64).mean(axis=1)
    if energy.max() <= 0:
        return audio[:0], 0
    loud = np.nonzero(energy >= energy.max() * 10 ** (threshold_db / 10))[0]
    margin = int(margin_seconds * sampling_rate)
    start = max(0, loud[0] * frame - margin)
    end = min(len(audio), (loud[-1] + 1) * frame + margin)
    return audio[start:end], start


def colored_noise(num_samples: int, rng: np.random.Generator, color: str = "white") -> np.ndarray:
    """Gaussian noise with power spectrum ~ f**slope (see :data:`NOISE_COLORS`), scaled to unit RMS."""
    if color not in NOISE_COLORS:
        raise ValueError(f"Unknown noise color {color!r}; choose one of {sorted(NOISE_COLORS)}.")
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0  # keep DC finite; it is removed below
    spectrum *= freqs ** (NOISE_COLORS[color] / 2)
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n=num_samples)
    return (noise / max(rms(noise), 1e-12)).astype(np.float32)


def hum(num_samples: int, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum: 50 or 60 Hz plus a few decaying harmonics with random phases, unit RMS."""
    t = np.arange(num_samples) / sampling_rate
    base = rng.choice([50.0, 60.0])
    signal = sum(
        rng.uniform(0.3, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi))
        for k in range(1, 6)
    )
    return (signal / max(rms(signal), 1e-12)).astype(np.float32)


def background_noise(num_samples: int, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A random background: coloured noise, sometimes with hum, sometimes slowly modulated; unit RMS."""
    color = rng.choice(list(NOISE_COLORS), p=[0.3, 0.35, 0.25, 0.1])
    noise = colored_noise(num_samples, rng, color)
    if rng.random() < 0.3:
        noise = noise + rng.uniform(0.3, 2.0) * hum(num_samples, sampling_rate, rng)
    if rng.random() < 0.3:  # fluctuating level, like a fan or traffic
        t = np.arange(num_samples) / sampling_rate
        noise = noise * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 3.0) * t + rng.uniform(0, 2 * np.pi)))
    return (noise / max(rms(noise), 1e-12)).astype(np.float32)


def add_noise(speech: np.ndarray, noise: np.ndarray, snr_db: float, reference_rms: float | None = None) -> np.ndarray:
    """Add ``noise`` scaled so that speech power / noise power equals ``snr_db``.

    ``reference_rms`` is the speech level the SNR refers to (default: RMS of ``speech``); pass the level of
    the voiced part when ``speech`` is padded with silence, as SNRs of speech corpora are usually quoted.
    """
    if noise.shape != speech.shape:
        raise ValueError(f"noise shape {noise.shape} must equal speech shape {speech.shape}.")
    level = rms(speech) if reference_rms is None else reference_rms
    scale = level / max(rms(noise), 1e-12) / 10 ** (snr_db / 20)
    return (speech + scale * noise).astype(np.float32)


def room_impulse_response(sampling_rate: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """A simple synthetic room: direct path, a few early reflections, and an exponentially decaying
    noise tail whose energy falls by 60 dB after ``rt60`` seconds."""
    if rt60 <= 0:
        raise ValueError(f"rt60 must be positive seconds, got {rt60}.")
    length = int(rt60 * sampling_rate)
    t = np.arange(length) / sampling_rate
    tail = rng.standard_normal(length) * np.exp(-6.9078 * t / rt60)  # 60 dB amplitude decay = ln(1000)
    tail[: int(0.002 * sampling_rate)] = 0.0  # the diffuse tail starts after the direct path
    rir = 0.5 * tail / max(np.abs(tail).max(), 1e-12)
    for _ in range(rng.integers(2, 6)):  # early reflections within the first 30 ms
        delay = rng.integers(int(0.002 * sampling_rate), int(0.03 * sampling_rate))
        rir[delay] += rng.uniform(-0.6, 0.6)
    rir[0] = 1.0
    return rir.astype(np.float32)


def apply_reverb(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with ``rir`` (direct path at index 0), keep the reverberant tail, match the input peak."""
    wet = fftconvolve(audio, rir)
    peak_in, peak_out = np.abs(audio).max(initial=0.0), np.abs(wet).max(initial=0.0)
    return (wet * (peak_in / peak_out if peak_out > 0 else 1.0)).astype(np.float32)


def scale_to_peak_dbfs(audio: np.ndarray, peak_dbfs: float) -> np.ndarray:
    """Scale so that the largest absolute sample sits at ``peak_dbfs`` (e.g. -6 dB = 0.5)."""
    peak = np.abs(audio).max(initial=0.0)
    if peak == 0:
        return audio.astype(np.float32)
    return (audio * (10 ** (peak_dbfs / 20) / peak)).astype(np.float32)


def fit_to_length(audio: np.ndarray, length: int, rng: np.random.Generator, shift: bool = True) -> tuple[np.ndarray, int]:
    """Place ``audio`` in a zero window of ``length`` samples at a random offset (time shift).

    Without ``shift`` it is centred. Audio longer than the window is cut to it (keeping the start, where a
    word's onset is). Returns the window and the offset of ``audio[0]`` in it (negative never happens).
    """
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}.")
    window = np.zeros(length, dtype=np.float32)
    if len(audio) >= length:
        window[:] = audio[:length]
        return window, 0
    room = length - len(audio)
    offset = int(rng.integers(0, room + 1)) if shift else room // 2
    window[offset : offset + len(audio)] = audio
    return window, offset
