"""Training-time waveform augmentation that varies the *voice* and the *channel* of a clip.

Voice: speed perturbation (pitch and tempo together, as Kaldi's 0.9/1.0/1.1), pitch shift at constant
duration (phase vocoder + resampling) and vocal tract length perturbation (VTLP, a warp of the
spectrum's frequency axis). Channel: room reverberation, band limiting (telephone band), codec-like degradation (8 kHz
round trip, mu-law, coarse quantisation) and background noise at a chosen SNR. :class:`WaveformAugmenter`
chains them with probabilities and ranges, from its own seeded generator.

Contract of every function here:

* input: ``audio``, float32 (or convertible) mono samples in [-1, 1], a 1-D array of shape ``(num_samples,)``,
  non-empty and finite (else ``ValueError``); ``sampling_rate`` a positive integer in Hz where needed;
  ``rng`` a ``numpy.random.Generator`` where the function is random.
* output: float32 array of shape ``(num_samples,)`` (the *same length* as the input) at the *same
  sampling rate*, finite, with peak ``max(abs(output)) <= 1``. Where processing (filter overshoot,
  added noise) pushes the peak above 1, the whole output is scaled down to peak 1 (never up, never
  clipped), so the waveform's shape is kept.

The signal helpers (noise, rooms, polyphase resampling, RMS, silence trimming) are those of
:mod:`mamba_zoo.corpora.augment`, which synthesises the corpora; this module adds the voice transforms and
the training-time chain. Only numpy and scipy are used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Integral, Real

import numpy as np
from scipy.signal import butter, istft, sosfiltfilt, stft

from .augment import (
    add_noise,
    apply_reverb,
    background_noise,
    resample,
    rms,
    room_impulse_response,
    trim_silence,
)

__all__ = [
    "CODEC_KINDS",
    "EXCITATION_KINDS",
    "WaveformAugmenter",
    "band_limit",
    "codec_simulation",
    "mu_law_quantize",
    "pitch_shift",
    "source_filter_resynthesis",
    "speed_perturb",
    "vocal_tract_length_perturbation",
    "vtlp_warp",
]

# A speed or pitch ratio is applied as the rational up/down of a polyphase resampler; its denominator is
# capped here: the ratio's relative error is ~2e-5 for a typical value and at most 0.25 % (0.04 semitone).
_MAX_RATIO_DENOMINATOR = 200

# STFT analysis window of the phase vocoder and of VTLP, in seconds (rounded to a power of two of
# samples: 256 at 8 kHz, 512 at 16 and 22.05 kHz, 1024 at 44.1 kHz); hop is a quarter window (75 % overlap).
_STFT_SECONDS = 0.032

# VTLP boundary frequency as a fraction of the sampling rate: Jaitly & Hinton (2013) use F_hi = 4800 Hz
# for 16 kHz audio, i.e. 0.3 * sampling_rate (0.6 of Nyquist); it scales with the sampling rate here.
VTLP_BOUNDARY_FRACTION = 0.3

# Telephone band used by the GSM-like codec branch and by WaveformAugmenter's default band limit, Hz.
TELEPHONE_BAND_HZ = (300.0, 3400.0)

# Branches of codec_simulation, drawn uniformly.
CODEC_KINDS = ("narrowband_mulaw", "mulaw", "gsm_like")


# ------------------------------------------------------------------------------------------ helpers


def _check_audio(audio: np.ndarray, name: str = "audio") -> np.ndarray:
    """Return ``audio`` as a float32 1-D array, raising ValueError if it is not 1-D, empty or non-finite."""
    array = np.asarray(audio)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D mono samples of shape (num_samples,), got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"{name} is empty (0 samples).")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}.")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains non-finite samples (NaN or inf).")
    return array


def _check_sampling_rate(sampling_rate: int) -> int:
    """Return ``sampling_rate`` as an int, raising ValueError unless it is a positive whole number of Hz."""
    if (
        isinstance(sampling_rate, bool)
        or not isinstance(sampling_rate, Real)
        or not np.isfinite(sampling_rate)
        or sampling_rate != int(sampling_rate)
    ):
        raise ValueError(f"sampling_rate must be a positive whole number of Hz, got {sampling_rate!r}.")
    if sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be positive, got {sampling_rate}.")
    return int(sampling_rate)


def _check_rng(rng: np.random.Generator) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}."
        )
    return rng


def _finish(audio: np.ndarray) -> np.ndarray:
    """float32 output; if its peak exceeds 1 the whole signal is scaled down to peak 1 (never up)."""
    audio = np.asarray(audio, dtype=np.float32)
    peak = float(np.abs(audio).max(initial=0.0))
    if peak > 1.0:
        audio = (audio / np.float32(peak)).astype(np.float32)
    return audio


def _match_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Crop the end of ``audio`` or pad it at the end with zeros to ``length`` samples (time 0 stays put)."""
    if len(audio) >= length:
        return audio[:length]
    return np.concatenate([audio, np.zeros(length - len(audio), dtype=audio.dtype)])


def _as_ratio(value: float) -> Fraction:
    """``value`` as a fraction p/q with q <= _MAX_RATIO_DENOMINATOR (the up/down of a polyphase resampler)."""
    ratio = Fraction(float(value)).limit_denominator(_MAX_RATIO_DENOMINATOR)
    if ratio <= 0:
        raise ValueError(f"ratio {value} is too small to resample by.")
    return ratio


def _stft_size(sampling_rate: int) -> tuple[int, int]:
    """(window length, hop) in samples of the STFTs here: ~32 ms rounded to a power of two, 75 % overlap."""
    n_fft = int(2 ** round(np.log2(_STFT_SECONDS * sampling_rate)))
    n_fft = max(n_fft, 16)
    return n_fft, n_fft // 4


def _stft(audio: np.ndarray, sampling_rate: int) -> np.ndarray:
    """Complex STFT, shape ``(n_fft // 2 + 1, num_frames)``, hann window, zero-padded boundaries."""
    n_fft, hop = _stft_size(sampling_rate)
    if len(audio) < n_fft:  # scipy shortens the window of a too-short signal; pad instead
        audio = np.concatenate([audio, np.zeros(n_fft - len(audio), dtype=audio.dtype)])
    _, _, spectrum = stft(audio.astype(np.float64), window="hann", nperseg=n_fft, noverlap=n_fft - hop)
    return spectrum


def _istft(spectrum: np.ndarray, sampling_rate: int) -> np.ndarray:
    """Inverse of :func:`_stft` (weighted overlap-add); the first sample is time 0 of the analysed signal."""
    n_fft, hop = _stft_size(sampling_rate)
    _, audio = istft(spectrum, window="hann", nperseg=n_fft, noverlap=n_fft - hop)
    return audio


def _resample_by(audio: np.ndarray, ratio: Fraction) -> np.ndarray:
    """Resample so that the result is ``1 / ratio`` as long; played at the same rate it is ``ratio`` x faster."""
    return resample(audio, orig_sr=ratio.numerator, target_sr=ratio.denominator)


def _energy_centroid(audio: np.ndarray) -> float:
    """Sample index of the centre of mass of the signal energy (the middle of the array for silence)."""
    energy = np.square(audio, dtype=np.float64)
    total = energy.sum()
    if total <= 0:
        return (len(audio) - 1) / 2
    return float(np.dot(np.arange(len(audio), dtype=np.float64), energy) / total)


# ------------------------------------------------------------------------------------- voice transforms


def speed_perturb(audio: np.ndarray, factor: float) -> np.ndarray:
    """Kaldi-style speed perturbation: play ``audio`` ``factor`` x faster, pitch and tempo together.

    The clip is resampled (polyphase, :func:`mamba_zoo.corpora.augment.resample`) to ``len / factor``
    samples and read at the original rate, so every frequency is multiplied by ``factor`` and every
    duration divided by it (``factor`` 1.1: 10 % faster and higher; 0.9: slower and lower; 1.0: unchanged).
    ``factor`` is applied as a fraction with denominator <= 200 (exact for 0.9 and 1.1).

    **Length.** The result is fitted back to ``len(audio)`` samples *centred on the content*: it is placed
    so that its energy centroid (centre of mass of the squared samples) lands where the input's was, then
    zero-padded (factor > 1, the content got shorter) or cropped (factor < 1, longer) on both sides as
    needed. The placement is clamped so that padding never cuts content and cropping never leaves a gap.
    A word in the middle of a clip stays in the middle; slowing down cuts only what no longer fits, from
    both ends (a word near an edge is shifted inwards rather than cut).

    Args:
        audio: mono samples in [-1, 1], shape ``(num_samples,)``.
        factor: speed ratio, > 0 (0.9 / 1.0 / 1.1 are the usual Kaldi values).

    Returns:
        float32 array of shape ``(num_samples,)``, peak <= 1.
    """
    audio = _check_audio(audio)
    if not isinstance(factor, Real) or not np.isfinite(factor) or factor <= 0:
        raise ValueError(f"speed factor must be a positive finite number, got {factor!r}.")
    ratio = _as_ratio(factor)
    if ratio == 1:
        return _finish(audio.copy())
    fast = _resample_by(audio, ratio)
    length = len(audio)
    offset = int(round(_energy_centroid(audio) - _energy_centroid(fast)))  # where fast[0] lands in the output
    if len(fast) <= length:
        offset = min(max(offset, 0), length - len(fast))
    else:
        offset = min(max(offset, length - len(fast)), 0)
    output = np.zeros(length, dtype=np.float32)
    start, stop = max(offset, 0), min(offset + len(fast), length)
    output[start:stop] = fast[start - offset : stop - offset]
    return _finish(output)


def _phase_vocoder_stretch(audio: np.ndarray, sampling_rate: int, stretch: float) -> np.ndarray:
    """Time-stretch ``audio`` to ~``stretch`` x its duration keeping its pitch (phase vocoder).

    The STFT is read at fractional frame positions ``0, 1/stretch, 2/stretch, ...``; each output frame takes
    the magnitude linearly interpolated between its two neighbouring analysis frames and a phase that
    accumulates the measured per-hop phase advance of each bin (expected advance + wrapped deviation), so
    partials keep their instantaneous frequency. Returns ~``stretch * len(audio)`` samples, time 0 aligned.
    """
    spectrum = _stft(audio, sampling_rate)
    n_fft, hop = _stft_size(sampling_rate)
    num_bins, num_frames = spectrum.shape
    positions = np.arange(0.0, num_frames, 1.0 / stretch)
    # two silent frames after the last one, so the right neighbour of every position exists
    padded = np.concatenate([spectrum, np.zeros((num_bins, 2), dtype=spectrum.dtype)], axis=1)
    left = positions.astype(int)
    weight = positions - left
    magnitude = (1 - weight) * np.abs(padded[:, left]) + weight * np.abs(padded[:, left + 1])
    expected = 2 * np.pi * hop * np.arange(num_bins)[:, None] / n_fft  # phase advance of each bin per hop
    deviation = np.angle(padded[:, left + 1]) - np.angle(padded[:, left]) - expected
    deviation -= 2 * np.pi * np.round(deviation / (2 * np.pi))
    advance = expected + deviation
    phase = np.angle(spectrum[:, :1]) + np.concatenate(
        [np.zeros((num_bins, 1)), np.cumsum(advance[:, :-1], axis=1)], axis=1
    )
    return _istft(magnitude * np.exp(1j * phase), sampling_rate)


def pitch_shift(audio: np.ndarray, sampling_rate: int, semitones: float) -> np.ndarray:
    """Shift the pitch by ``semitones`` keeping the duration (phase vocoder + resampling).

    With ratio ``r = 2 ** (semitones / 12)`` (as a fraction with denominator <= 200), the clip is first
    time-stretched to ``r`` x its duration by a phase vocoder (hann-windowed STFT of ~32 ms, 75 % overlap,
    phase accumulation), which keeps the pitch, then resampled to ``1 / r`` of that length (polyphase),
    which scales every frequency by ``r`` and restores the duration. Time 0 stays put; the last few samples
    are cropped or zero-padded so the length is exactly that of the input. Formants move with the pitch
    (no envelope preservation), as in the usual pitch-shift augmentation.

    Args:
        audio: mono samples in [-1, 1], shape ``(num_samples,)``.
        sampling_rate: Hz.
        semitones: shift, positive up, negative down (+12 doubles every frequency). 0 returns the input
            through an STFT round trip (equal to it up to ~1e-6).

    Returns:
        float32 array of shape ``(num_samples,)``, peak <= 1.
    """
    audio = _check_audio(audio)
    sampling_rate = _check_sampling_rate(sampling_rate)
    if not isinstance(semitones, Real) or not np.isfinite(semitones):
        raise ValueError(f"semitones must be a finite number, got {semitones!r}.")
    ratio = _as_ratio(2.0 ** (float(semitones) / 12.0))
    stretched = _phase_vocoder_stretch(audio, sampling_rate, float(ratio))
    shifted = _resample_by(stretched.astype(np.float32), ratio)
    return _finish(_match_length(shifted, len(audio)))


def vtlp_warp(
    frequencies_hz: np.ndarray, alpha: float, sampling_rate: int, boundary_hz: float | None = None
) -> np.ndarray:
    """The piecewise-linear VTLP frequency warp of Jaitly & Hinton (2013), ``f -> f'``, in Hz.

    With ``S`` the sampling rate, ``F_hi`` the boundary and ``f0 = F_hi * min(alpha, 1) / alpha``::

        f' = alpha * f                                                  if f <= f0
        f' = S/2 - (S/2 - F_hi * min(alpha, 1)) / (S/2 - f0) * (S/2 - f)  otherwise

    i.e. frequencies are scaled by ``alpha`` up to ``f0`` and the rest of the band is mapped linearly so
    that Nyquist stays at Nyquist (continuous, increasing, 0 -> 0). ``boundary_hz`` defaults to
    ``0.3 * sampling_rate``: the paper's F_hi = 4800 Hz for 16 kHz audio, scaled to the sampling rate.

    Args:
        frequencies_hz: any shape, in [0, S/2].
        alpha: warp factor (> 0; about 0.9..1.1; > 1 moves energy up, like a shorter vocal tract).
        sampling_rate: Hz.
        boundary_hz: F_hi in Hz, in (0, S/2); default ``VTLP_BOUNDARY_FRACTION * sampling_rate``.

    Returns:
        warped frequencies in Hz, same shape, float64.
    """
    sampling_rate = _check_sampling_rate(sampling_rate)
    if not isinstance(alpha, Real) or not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}.")
    nyquist = sampling_rate / 2
    boundary = VTLP_BOUNDARY_FRACTION * sampling_rate if boundary_hz is None else float(boundary_hz)
    if not 0 < boundary < nyquist:
        raise ValueError(f"boundary_hz must lie in (0, {nyquist}) Hz (Nyquist), got {boundary_hz}.")
    bend_out = boundary * min(alpha, 1.0)  # f' at the bend
    bend_in = bend_out / alpha  # f at the bend, <= boundary < Nyquist
    frequencies = np.asarray(frequencies_hz, dtype=np.float64)
    upper = nyquist - (nyquist - bend_out) / (nyquist - bend_in) * (nyquist - frequencies)
    return np.where(frequencies <= bend_in, alpha * frequencies, upper)


def vocal_tract_length_perturbation(
    audio: np.ndarray,
    sampling_rate: int,
    alpha: float,
    boundary_hz: float | None = None,
    phase_iterations: int = 4,
) -> np.ndarray:
    """VTLP (Jaitly & Hinton 2013) on the waveform: warp the STFT magnitude's frequency axis by ``alpha``.

    The magnitude of each STFT frame (hann window of ~32 ms, 75 % overlap) is resampled along frequency
    (linear interpolation between bins) so that the energy found at ``f`` in the input is found at
    ``vtlp_warp(f)`` in the output: below the bend at ``0.3 * sampling_rate * min(alpha, 1) / alpha``
    (4.8 kHz / alpha at 16 kHz for alpha > 1, 4.8 kHz for alpha < 1) every frequency is multiplied by
    ``alpha`` (a formant at 1000 Hz moves to 1100 Hz for alpha 1.1); above it the rest of the band is
    squeezed or stretched so that Nyquist stays at Nyquist. As in the paper's warp of the spectrogram,
    the harmonics move with the formants.

    Phase: the input's phase is kept as the phase of the warped magnitude, and the result is
    resynthesised by inverse STFT (weighted overlap-add), then cropped to the input length. Kept phase
    alone (``phase_iterations=0``) is only partly consistent with the moved magnitude: overlap-add pulls
    energy back towards the input frequencies (measured on band noise at 1 kHz, alpha 1.1 moves it by
    ~1.076 rather than 1.1; harmonic sounds land between 1.12 and 1.18, depending on the pitch). So by
    default a few Griffin-Lim iterations start from the kept phase (re-analyse the resynthesis, keep its
    phase, impose the warped magnitude again); 4 bring the shift to within ~0.015 of ``alpha`` at about
    three times the cost (~15 ms per second of 16 kHz audio). ``alpha = 1`` is the identity warp: the
    output equals the input up to the STFT round trip (~1e-6).

    Args:
        audio: mono samples in [-1, 1], shape ``(num_samples,)``.
        sampling_rate: Hz.
        alpha: warp factor, about 0.9..1.1 (> 0); > 1 moves energy up (a shorter vocal tract).
        boundary_hz: F_hi of :func:`vtlp_warp` in Hz (default 0.3 * sampling_rate, 4.8 kHz at 16 kHz).
        phase_iterations: Griffin-Lim iterations after the kept phase (>= 0; 0 keeps the input's phase).

    Returns:
        float32 array of shape ``(num_samples,)``, peak <= 1.
    """
    audio = _check_audio(audio)
    sampling_rate = _check_sampling_rate(sampling_rate)
    if not isinstance(phase_iterations, Integral) or phase_iterations < 0:
        raise ValueError(f"phase_iterations must be a non-negative integer, got {phase_iterations!r}.")
    spectrum = _stft(audio, sampling_rate)
    num_bins = spectrum.shape[0]
    bin_hz = np.linspace(0.0, sampling_rate / 2, num_bins)
    # Output bin g takes the magnitude at the input frequency that warps onto it, f = warp^-1(g),
    # as a fractional bin index between two input bins.
    source_bin = np.interp(bin_hz, vtlp_warp(bin_hz, alpha, sampling_rate, boundary_hz), bin_hz) / bin_hz[1]
    lower = np.minimum(source_bin.astype(int), num_bins - 2)
    weight = (source_bin - lower)[:, None]
    magnitude = np.abs(spectrum)
    warped = (1 - weight) * magnitude[lower] + weight * magnitude[lower + 1]
    phase = np.angle(spectrum)
    for _ in range(phase_iterations):
        estimate = _match_length(_istft(warped * np.exp(1j * phase), sampling_rate), len(audio))
        phase = np.angle(_stft(estimate, sampling_rate))
    output = _istft(warped * np.exp(1j * phase), sampling_rate)
    return _finish(_match_length(output, len(audio)))


# ----------------------------------------------------------------------------------- channel transforms


def band_limit(
    audio: np.ndarray, sampling_rate: int, low_hz: float | None = 300.0, high_hz: float | None = 3400.0, order: int = 4
) -> np.ndarray:
    """Band-pass ``audio`` between ``low_hz`` and ``high_hz`` (telephone: 300-3400 Hz), zero phase.

    A Butterworth filter of ``order`` (in second-order sections) is run forwards and backwards
    (``scipy.signal.sosfiltfilt``): no delay, no phase distortion, and the magnitude response squared,
    so the edges are -6 dB points and the attenuation outside the band is doubled (order 4, 300-3400 Hz:
    about 80 dB down at 100 Hz; at 6 kHz about 80 dB at 16 kHz sampling, 59 dB at 22.05 kHz, 47 dB at
    44.1 kHz, the bilinear transform's skirts being steeper near Nyquist). ``low_hz=None`` makes it a
    low-pass at ``high_hz``, ``high_hz=None`` a high-pass at ``low_hz``; one edge is required.

    Args:
        audio: mono samples in [-1, 1], shape ``(num_samples,)``.
        sampling_rate: Hz.
        low_hz: lower edge in Hz (> 0) or None.
        high_hz: upper edge in Hz (< sampling_rate / 2) or None.
        order: Butterworth order per direction (>= 1).

    Returns:
        float32 array of shape ``(num_samples,)``, peak <= 1.
    """
    audio = _check_audio(audio)
    sampling_rate = _check_sampling_rate(sampling_rate)
    nyquist = sampling_rate / 2
    if low_hz is None and high_hz is None:
        raise ValueError("band_limit needs low_hz, high_hz or both; got neither.")
    if low_hz is not None and not 0 < low_hz < nyquist:
        raise ValueError(f"low_hz must lie in (0, {nyquist}) Hz (Nyquist), got {low_hz}.")
    if high_hz is not None and not 0 < high_hz < nyquist:
        raise ValueError(f"high_hz must lie in (0, {nyquist}) Hz (Nyquist), got {high_hz}.")
    if low_hz is not None and high_hz is not None and low_hz >= high_hz:
        raise ValueError(f"low_hz must be below high_hz, got {low_hz} >= {high_hz}.")
    if not isinstance(order, Integral) or order < 1:
        raise ValueError(f"order must be a positive integer, got {order!r}.")
    if low_hz is None:
        sos = butter(order, high_hz, btype="lowpass", fs=sampling_rate, output="sos")
    elif high_hz is None:
        sos = butter(order, low_hz, btype="highpass", fs=sampling_rate, output="sos")
    else:
        sos = butter(order, [low_hz, high_hz], btype="bandpass", fs=sampling_rate, output="sos")
    padlen = min(3 * (2 * len(sos) + 1), len(audio) - 1)  # scipy's default, shortened for very short clips
    filtered = sosfiltfilt(sos, audio.astype(np.float64), padlen=padlen)
    return _finish(filtered)


def mu_law_quantize(audio: np.ndarray, bits: int = 8, mu: float = 255.0) -> np.ndarray:
    """Mu-law companding and quantisation to ``bits`` bits (G.711-like at 8 bits), then expansion.

    ``y = sign(x) ln(1 + mu |x|) / ln(1 + mu)`` is rounded to ``2 ** bits`` uniform levels over [-1, 1] and
    mapped back; the error is small for quiet samples and larger for loud ones (about constant SNR).
    Samples beyond [-1, 1] are clipped first, as a codec would.

    Args:
        audio: mono samples, shape ``(num_samples,)``.
        bits: code size (2..16).
        mu: compression parameter (> 0; 255 in G.711).

    Returns:
        float32 array of shape ``(num_samples,)``, peak <= 1.
    """
    audio = _check_audio(audio)
    if not isinstance(bits, Integral) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer in [2, 16], got {bits!r}.")
    if not mu > 0:
        raise ValueError(f"mu must be positive, got {mu}.")
    x = np.clip(audio.astype(np.float64), -1.0, 1.0)
    compressed = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    steps = 2**bits - 1
    code = np.round((compressed + 1) / 2 * steps)
    compressed = code / steps * 2 - 1
    return _finish(np.sign(compressed) * np.expm1(np.abs(compressed) * np.log1p(mu)) / mu)


def _uniform_quantize(audio: np.ndarray, bits: int) -> np.ndarray:
    """Linear PCM at ``bits`` bits: round to ``2 ** (bits - 1)`` steps per unit, clip to [-1, 1]."""
    scale = 2.0 ** (bits - 1)
    return np.clip(np.round(audio.astype(np.float64) * scale) / scale, -1.0, 1.0)


def codec_simulation(
    audio: np.ndarray, sampling_rate: int, rng: np.random.Generator, kind: str | None = None
) -> np.ndarray:
    """A codec- or channel-like degradation, one of :data:`CODEC_KINDS` drawn uniformly from ``rng``.

    * ``"narrowband_mulaw"``: telephone transport, a round trip through 8 kHz (polyphase
      :func:`mamba_zoo.corpora.augment.resample` down to 8000 Hz and back, which removes everything above
      4 kHz; skipped when ``sampling_rate <= 8000``) followed by 8-bit mu-law (:func:`mu_law_quantize`).
    * ``"mulaw"``: 8-bit mu-law alone, at the original bandwidth.
    * ``"gsm_like"``: the 300-3400 Hz telephone band (:func:`band_limit`) followed by coarse linear
      quantisation at a depth drawn from 6..8 bits; a cheap stand-in for a low-rate mobile codec's
      band limit and quantisation noise (it does not model GSM's LPC coding itself). On audio sampled
      at or below 6800 Hz the upper band edge is dropped (high-pass only).

    Args:
        audio: mono samples in [-1, 1], shape ``(num_samples,)``.
        sampling_rate: Hz.
        rng: draws the branch (and the bit depth of ``gsm_like``).
        kind: force one branch instead of drawing it (``rng`` is then used only by ``gsm_like``).

    Returns:
        float32 array of shape ``(num_samples,)``, peak <= 1.
    """
    audio = _check_audio(audio)
    sampling_rate = _check_sampling_rate(sampling_rate)
    rng = _check_rng(rng)
    if kind is None:
        kind = CODEC_KINDS[int(rng.integers(len(CODEC_KINDS)))]
    if kind == "narrowband_mulaw":
        if sampling_rate > 8000:
            narrow = resample(audio, sampling_rate, 8000)
            audio = _match_length(resample(narrow, 8000, sampling_rate), len(audio))
        return mu_law_quantize(_finish(audio), bits=8)
    if kind == "mulaw":
        return mu_law_quantize(audio, bits=8)
    if kind == "gsm_like":
        low, high = TELEPHONE_BAND_HZ
        high = high if high < sampling_rate / 2 else None
        bits = int(rng.integers(6, 9))
        return _finish(_uniform_quantize(band_limit(audio, sampling_rate, low, high), bits))
    raise ValueError(f"Unknown codec kind {kind!r}; choose one of {CODEC_KINDS} or None (random).")


# ----------------------------------------------------------------------------------- source-filter resynthesis

# Kinds of new excitation for source_filter_resynthesis, drawn uniformly when not given.
EXCITATION_KINDS = ("contour", "monotone", "breathy")
# Analysis frame of the LPC vocoder (seconds); hop is half of it (Hann windows at 50 % overlap add up to 1).
_LPC_FRAME_SECONDS = 0.025
# Pitch search range of the voicing analysis, Hz, and the normalised autocorrelation above which a frame is voiced.
_PITCH_RANGE_HZ = (60.0, 400.0)
_VOICING_THRESHOLD = 0.35


def _autocorrelation(frames: np.ndarray, lags: int) -> np.ndarray:
    """Autocorrelation of each frame ``(num_frames, frame)`` at lags ``0 .. lags`` (zero-padded FFT)."""
    n_fft = 1 << int(np.ceil(np.log2(2 * frames.shape[1])))
    return np.fft.irfft(np.abs(np.fft.rfft(frames, n_fft, axis=1)) ** 2, n_fft, axis=1)[:, : lags + 1]


def _lpc_analysis(frames: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Autocorrelation LPC of windowed frames ``(num_frames, frame)``: coefficients ``(num_frames, order + 1)``
    with ``a[:, 0] = 1`` and the prediction-error energy per frame ``(num_frames,)`` (Levinson-Durbin, vectorised over
    frames; a tiny white-noise floor keeps silent frames well-posed)."""
    num_frames = frames.shape[0]
    ac = _autocorrelation(frames, order)
    ac[:, 0] = ac[:, 0] * (1 + 1e-6) + 1e-9
    a = np.zeros((num_frames, order + 1))
    a[:, 0] = 1.0
    error = ac[:, 0].copy()
    for i in range(1, order + 1):
        reflection = -(ac[:, i] + np.einsum("fj,fj->f", a[:, 1:i], ac[:, i - 1:0:-1])) / error
        a[:, 1:i] = a[:, 1:i] + reflection[:, None] * a[:, i - 1:0:-1]
        a[:, i] = reflection
        error = error * (1 - reflection**2)
    return a, np.maximum(error, 0.0)


def _pitch_track(frames: np.ndarray, sampling_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """F0 (Hz) and voicing (bool) per windowed frame from the normalised autocorrelation peak in _PITCH_RANGE_HZ."""
    frame = frames.shape[1]
    ac = _autocorrelation(frames, frame - 1)
    low = max(1, int(sampling_rate / _PITCH_RANGE_HZ[1]))
    high = min(frame - 1, int(sampling_rate / _PITCH_RANGE_HZ[0]))
    if high <= low:
        return np.full(len(frames), 100.0), np.zeros(len(frames), dtype=bool)
    lags = low + np.argmax(ac[:, low:high + 1], axis=1)
    peak = ac[np.arange(len(frames)), lags] / np.maximum(ac[:, 0], 1e-12)
    return sampling_rate / lags, peak > _VOICING_THRESHOLD


def _pulse_train(f0: np.ndarray, sampling_rate: int, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-power impulses at the per-sample frequency ``f0`` (Hz), each period jittered by a relative ``jitter``."""
    excitation = np.zeros(len(f0))
    position = 0.0
    while position < len(f0):
        index = int(position)
        period = sampling_rate / f0[index] * (1.0 + jitter * rng.standard_normal())
        period = max(period, 2.0)
        excitation[index] = np.sqrt(period)
        position += period
    return excitation


def source_filter_resynthesis(
    audio: np.ndarray, sampling_rate: int, rng: np.random.Generator, kind: str | None = None,
    f0_range_hz: tuple[float, float] = (70.0, 220.0),
) -> np.ndarray:
    """Keep the vocal-tract filter of ``audio`` and replace its voice source: an LPC vocoder (what formant and LPC
    synthesisers do) that varies the *source* the way VTLP and pitch shift vary the filter and the pitch.

    Each 25 ms Hann frame (hop 12.5 ms) gets an all-pole filter of order ``2 + sampling_rate / 1000`` and a gain from
    autocorrelation LPC, and a voicing decision and F0 from its autocorrelation peak (60-400 Hz). A new excitation
    is built for the whole clip, filtered frame by frame and overlap-added:

    * ``"contour"``: impulses following the clip's own F0 contour scaled by a factor in [0.7, 1.4], 1 % jitter;
      white noise in unvoiced frames;
    * ``"monotone"``: impulses at one F0 drawn from ``f0_range_hz`` for the whole clip (a robotic, flat voice),
      3 % jitter; noise in unvoiced frames;
    * ``"breathy"``: the ``"contour"`` pulses mixed with aspiration noise (noise share 0.3-0.7) everywhere.

    The result has the input's RMS (then peak <= 1 as everywhere here). Words stay intelligible: the formant
    envelope, its timing and the voiced/unvoiced pattern are kept; the glottal source, the harmonic fine structure
    and (for ``"monotone"``) the intonation are new.

    Args:
        audio: mono samples in [-1, 1], shape ``(num_samples,)``.
        sampling_rate: Hz.
        rng: draws the kind (unless given), the F0 factor or value, jitter and noise.
        kind: one of :data:`EXCITATION_KINDS`, or None to draw it.
        f0_range_hz: (low, high) of the ``"monotone"`` F0.

    Returns:
        float32 array of shape ``(num_samples,)``, peak <= 1.
    """
    from scipy.signal import lfilter

    audio = _check_audio(audio)
    sampling_rate = _check_sampling_rate(sampling_rate)
    rng = _check_rng(rng)
    if kind is None:
        kind = EXCITATION_KINDS[int(rng.integers(len(EXCITATION_KINDS)))]
    if kind not in EXCITATION_KINDS:
        raise ValueError(f"Unknown excitation kind {kind!r}; choose one of {EXCITATION_KINDS} or None (random).")
    f0_low, f0_high = _range("f0_range_hz", f0_range_hz, lower=0.0, strictly_above=True)
    num_samples = len(audio)
    frame = max(8, int(round(_LPC_FRAME_SECONDS * sampling_rate)) // 2 * 2)
    hop = frame // 2
    order = min(2 + sampling_rate // 1000, frame - 2)
    num_frames = 1 + int(np.ceil(max(num_samples - frame, 0) / hop))
    padded = np.concatenate([np.zeros(hop), audio.astype(np.float64),
                             np.zeros((num_frames - 1) * hop + frame - num_samples)])
    num_frames += 1  # the leading half frame of zeros keeps the first samples under two windows
    window = np.hanning(frame + 1)[:frame]  # periodic Hann: shifted copies at hop = frame / 2 sum to 1
    starts = np.arange(num_frames) * hop
    windowed = np.stack([padded[s:s + frame] for s in starts]) * window
    a, error = _lpc_analysis(windowed, order)
    f0, voiced = _pitch_track(windowed, sampling_rate)

    # per-sample F0 and voicing, held over each hop
    total = len(padded)
    f0_samples = np.repeat(f0, hop)[:total]
    f0_samples = np.concatenate([f0_samples, np.full(total - len(f0_samples), f0[-1])])
    voiced_samples = np.repeat(voiced, hop)[:total]
    voiced_samples = np.concatenate([voiced_samples, np.zeros(total - len(voiced_samples), dtype=bool)])
    noise = rng.standard_normal(total)
    if kind == "monotone":
        pulses = _pulse_train(np.full(total, rng.uniform(f0_low, f0_high)), sampling_rate, 0.03, rng)
    else:
        pulses = _pulse_train(np.clip(f0_samples * rng.uniform(0.7, 1.4), 50.0, 500.0), sampling_rate, 0.01, rng)
    excitation = np.where(voiced_samples, pulses, noise)
    if kind == "breathy":
        share = rng.uniform(0.3, 0.7)
        excitation = np.sqrt(1 - share) * excitation + np.sqrt(share) * noise

    # filter frame by frame with each frame's all-pole model and gain, overlap-add
    window_power = float(np.sum(window**2))
    output = np.zeros(total + frame)
    for i, start in enumerate(starts):
        gain = np.sqrt(error[i] / window_power)
        output[start:start + frame] += lfilter([gain], a[i], excitation[start:start + frame]) * window
    output = output[hop:hop + num_samples]
    level = rms(audio)
    out_level = rms(output)
    if out_level > 0 and level > 0:
        output = output * (level / out_level)
    return _finish(output)


# ------------------------------------------------------------------------------------------- the chain


def _range(name: str, value, lower: float | None = None, strictly_above: bool = False) -> tuple[float, float]:
    """Validate a (low, high) range: two finite numbers, low <= high, both above ``lower`` if given."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}.") from None
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    if low > high:
        raise ValueError(f"{name} must be ordered (low <= high), got {value!r}.")
    if lower is not None and (low <= lower if strictly_above else low < lower):
        relation = ">" if strictly_above else ">="
        raise ValueError(f"{name} must be {relation} {lower}, got {value!r}.")
    return low, high


@dataclass
class WaveformAugmenter:
    """A seeded chain of voice and channel augmentations, each applied with its own probability.

    ``augmenter(audio, sampling_rate)`` applies, in this fixed order:

    1. speed perturbation (:func:`speed_perturb`) by a factor drawn uniformly from ``speed_factors`` (always;
       include 1.0 to leave some clips at their speed, as Kaldi's 0.9/1.0/1.1);
    2. with ``p_pitch``, :func:`pitch_shift` by semitones uniform in ``pitch_semitones``;
    3. with ``p_vtlp``, :func:`vocal_tract_length_perturbation` with alpha uniform in ``vtlp_alpha``; then, with
       ``p_resynthesis`` (default 0: off, and then no random number is drawn for it, so chains without it are
       unchanged), :func:`source_filter_resynthesis` with a random excitation kind;
    4. with ``p_reverb``, a synthetic room (:func:`mamba_zoo.corpora.augment.room_impulse_response`,
       RT60 uniform in ``rt60_seconds``), its tail cropped at the end of the clip;
    5. with ``p_band_limit``, :func:`band_limit` to ``band_hz`` (an upper edge at or above Nyquist is
       dropped), then, independently, with ``p_codec``, :func:`codec_simulation`;
    6. with ``p_noise``, background noise (:func:`mamba_zoo.corpora.augment.background_noise`: coloured
       noise, hum, fluctuation) at an SNR uniform in ``snr_db``, relative to the RMS of the clip with its
       leading and trailing silence trimmed (the speech level, as corpora quote SNRs).

    The random draws come from the augmenter's own ``numpy.random.default_rng(seed)``, so two augmenters
    with the same settings and seed give identical outputs on the same sequence of inputs (and different
    seeds differ). Give each data-loader worker its own seed. Each call returns float32 audio of the
    input's length at its sampling rate, peak <= 1.
    """

    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)
    p_pitch: float = 0.3
    pitch_semitones: tuple[float, float] = (-2.0, 2.0)
    p_vtlp: float = 0.5
    vtlp_alpha: tuple[float, float] = (0.9, 1.1)
    p_resynthesis: float = 0.0
    p_reverb: float = 0.3
    rt60_seconds: tuple[float, float] = (0.1, 0.6)
    p_noise: float = 0.5
    snr_db: tuple[float, float] = (5.0, 30.0)
    p_band_limit: float = 0.2
    band_hz: tuple[float, float] = TELEPHONE_BAND_HZ
    p_codec: float = 0.1
    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("p_pitch", "p_vtlp", "p_resynthesis", "p_reverb", "p_noise", "p_band_limit", "p_codec"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}.")
            setattr(self, name, float(value))
        try:
            factors = tuple(float(f) for f in self.speed_factors)
        except (TypeError, ValueError):
            raise ValueError(f"speed_factors must be a sequence of numbers, got {self.speed_factors!r}.") from None
        if not factors:
            raise ValueError("speed_factors must not be empty (use (1.0,) for no speed perturbation).")
        if not all(np.isfinite(f) and f > 0 for f in factors):
            raise ValueError(f"speed_factors must all be positive finite numbers, got {self.speed_factors!r}.")
        self.speed_factors = factors
        self.pitch_semitones = _range("pitch_semitones", self.pitch_semitones)
        self.vtlp_alpha = _range("vtlp_alpha", self.vtlp_alpha, lower=0.0, strictly_above=True)
        self.rt60_seconds = _range("rt60_seconds", self.rt60_seconds, lower=0.0, strictly_above=True)
        self.snr_db = _range("snr_db", self.snr_db)
        self.band_hz = _range("band_hz", self.band_hz, lower=0.0, strictly_above=True)
        if self.band_hz[0] == self.band_hz[1]:
            raise ValueError(f"band_hz must have low < high, got {self.band_hz!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, Integral) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}.")
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, audio: np.ndarray, sampling_rate: int) -> np.ndarray:
        """Augment one clip: ``audio`` of shape ``(num_samples,)`` in [-1, 1] at ``sampling_rate`` Hz ->
        float32 of shape ``(num_samples,)`` at the same rate, peak <= 1. Raises ValueError for empty,
        non-1-D or non-finite audio."""
        audio = _check_audio(audio)
        sampling_rate = _check_sampling_rate(sampling_rate)
        rng = self.rng

        factor = self.speed_factors[int(rng.integers(len(self.speed_factors)))]
        if factor != 1.0:
            audio = speed_perturb(audio, factor)
        if rng.random() < self.p_pitch:
            audio = pitch_shift(audio, sampling_rate, rng.uniform(*self.pitch_semitones))
        if rng.random() < self.p_vtlp:
            audio = vocal_tract_length_perturbation(audio, sampling_rate, rng.uniform(*self.vtlp_alpha))
        if self.p_resynthesis > 0 and rng.random() < self.p_resynthesis:
            audio = source_filter_resynthesis(audio, sampling_rate, rng)
        if rng.random() < self.p_reverb:
            rir = room_impulse_response(sampling_rate, rng.uniform(*self.rt60_seconds), rng)
            audio = _finish(apply_reverb(audio, rir)[: len(audio)])
        if rng.random() < self.p_band_limit:
            low, high = self.band_hz
            if low < sampling_rate / 2:  # else the whole band lies above Nyquist: leave the clip as is
                audio = band_limit(audio, sampling_rate, low, high if high < sampling_rate / 2 else None)
        if rng.random() < self.p_codec:
            audio = codec_simulation(audio, sampling_rate, rng)
        if rng.random() < self.p_noise:
            noise = background_noise(len(audio), sampling_rate, rng)
            speech_level = rms(trim_silence(audio, sampling_rate)[0])
            audio = _finish(add_noise(audio, noise, rng.uniform(*self.snr_db), reference_rms=speech_level))
        return _finish(audio)

    def describe(self) -> str:
        """One line of the settings, for a model card, e.g. ``speed x{0.9, 1, 1.1}; pitch p=0.3 -2..2 st; ...``."""

        def span(values: tuple[float, float], unit: str = "") -> str:
            return f"{values[0]:g}..{values[1]:g}{unit}"

        speeds = ", ".join(f"{f:g}" for f in self.speed_factors)
        return (
            f"speed x{{{speeds}}}; "
            f"pitch p={self.p_pitch:g} {span(self.pitch_semitones, ' st')}; "
            f"VTLP p={self.p_vtlp:g} alpha {span(self.vtlp_alpha)}; "
            + (f"source-filter resynthesis p={self.p_resynthesis:g}; " if self.p_resynthesis > 0 else "")
            + f"reverb p={self.p_reverb:g} RT60 {span(self.rt60_seconds, ' s')}; "
            f"band-limit p={self.p_band_limit:g} {span(self.band_hz, ' Hz')}; "
            f"codec p={self.p_codec:g}; "
            f"noise p={self.p_noise:g} SNR {span(self.snr_db, ' dB')}; "
            f"seed {self.seed}"
        )
