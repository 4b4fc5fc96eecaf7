# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Audio input checks and conversions shared by the feature extractors and processors of mamba-zoo.

`validate_waveform` turns one clip into a clean float32 mono `(num_samples,)` array or raises a `ValueError` that
names the problem and the fix; `check_sampling_rate` is its sampling-rate check on its own (for a whole batch);
`read_audio_file` and `resample_audio` decode files and change the sampling rate without ffmpeg or torchaudio.

This module is imported relatively (`from .audio_utils import ...`), so `save_pretrained` of a feature extractor or
processor copies it next to the module that uses it and checkpoints load with `trust_remote_code=True` without
mamba-zoo. Only numpy is needed at import time; scipy and soundfile are imported when used (inside `try` blocks, so
transformers' remote-code import check does not require them).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np


def check_sampling_rate(sampling_rate: Optional[int], expected_rate: int, owner: str = "The model") -> None:
    """Raise a `ValueError` if `sampling_rate` (the audio's rate, Hz) is given and differs from `expected_rate`.

    `None` means "not stated" and passes (callers decide whether to warn). The message names both rates and how to
    resample. `owner` is the name of what expects the rate (e.g. a feature extractor class).
    """
    if sampling_rate is not None and int(sampling_rate) != int(expected_rate):
        raise ValueError(
            f"{owner} expects audio sampled at {expected_rate} Hz, got sampling_rate={sampling_rate} Hz. Resample "
            f"first, e.g. `resample_audio(audio, {sampling_rate}, {expected_rate})` from mamba_zoo.audio_utils "
            f"(scipy.signal.resample_poly) or datasets' cast_column('audio', Audio(sampling_rate={expected_rate}))."
        )


def _to_numpy(waveform: Any, name: str) -> np.ndarray:
    """numpy view of a numpy array, torch tensor (any device, grad or not) or (nested) list of numbers."""
    if hasattr(waveform, "detach") and hasattr(waveform, "cpu"):  # torch tensor, without importing torch
        waveform = waveform.detach().cpu()
        if waveform.is_floating_point():
            waveform = waveform.float()  # bfloat16 / float16 have no (exact) numpy counterpart
        waveform = waveform.numpy()
    try:
        return np.asarray(waveform)
    except (ValueError, TypeError) as error:  # ragged nested lists
        raise ValueError(
            f"{name} could not be read as an array of samples ({error}); pass one 1-D array of samples per clip."
        ) from error


def pcm_to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM `(...)` -> float64 in [-1, 1), as audio readers (soundfile, torchaudio) scale it.

    Signed integers are divided by `2 ** (bits - 1)` (int16 / 32768, int32 / 2**31); unsigned integers are offset
    binary, `(x - 2 ** (bits - 1)) / 2 ** (bits - 1)` (uint8: `(x - 128) / 128`). Float input is returned as float64
    unchanged in value.
    """
    samples = np.asarray(samples)
    if not np.issubdtype(samples.dtype, np.integer):
        return samples.astype(np.float64)
    half_range = float(2 ** (8 * samples.dtype.itemsize - 1))
    offset = half_range if np.issubdtype(samples.dtype, np.unsignedinteger) else 0.0
    return (samples.astype(np.float64) - offset) / half_range


def validate_waveform(
    waveform: Any,
    sampling_rate: Optional[int] = None,
    expected_rate: Optional[int] = None,
    *,
    min_samples: int = 1,
    min_samples_reason: str = "the minimum length",
    name: str = "audio",
    owner: str = "The model",
) -> np.ndarray:
    """Check one mono clip and return it as a new C-contiguous float32 array of shape `(num_samples,)`.

    Args:
        waveform: the clip's samples, shape `(num_samples,)`: a numpy array, a torch tensor (any device) or a list
            of numbers. Float samples are expected in [-1, 1] (kept as they are, cast to float32); integer PCM is
            scaled to [-1, 1) with `pcm_to_float` (int16 / 32768, uint8 (x - 128) / 128, ...).
        sampling_rate: the clip's rate in Hz, checked against `expected_rate` when both are given (see
            `check_sampling_rate`); `None` skips the check.
        expected_rate: the rate the model expects, Hz.
        min_samples: fewest samples accepted (after the empty check); `min_samples_reason` says why in the error,
            e.g. `"one 25 ms analysis window at 16 kHz"`.
        name: how the clip is called in error messages, e.g. `"audio"` or `"Audio clip 3"`.
        owner: what expects `expected_rate`, for the sampling-rate error.

    Returns:
        `np.ndarray` float32 `(num_samples,)`, finite, never a view of the input.

    Raises:
        ValueError: wrong sampling rate; non-numeric dtype (str, object, bool, complex); not 1-D (multi-channel:
            mix down first); empty; NaN or infinite samples; fewer than `min_samples` samples. Each message names
            the clip (`name`), the problem and the fix.
    """
    if expected_rate is not None:
        check_sampling_rate(sampling_rate, expected_rate, owner)
    array = _to_numpy(waveform, name)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(
            f"{name} is not numeric (dtype {array.dtype}); pass float samples in [-1, 1] or integer PCM samples."
        )
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be mono, one 1-D array of shape (num_samples,) per clip; got shape {array.shape}. Mix "
            "multi-channel audio down first, e.g. `audio.mean(axis=channel_axis)`."
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty (0 samples); drop the clip or pass its samples.")
    if np.issubdtype(array.dtype, np.integer):
        array = pcm_to_float(array)
    array = array.astype(np.float32, order="C")  # always a copy: the caller's buffer is never aliased
    finite = np.isfinite(array)
    if not finite.all():
        first = int(np.argmin(finite))
        raise ValueError(
            f"{name} contains NaN or infinite samples ({int(array.size - finite.sum())} of {array.size}, first at "
            f"index {first}); clean or drop the clip."
        )
    if array.size < min_samples:
        raise ValueError(
            f"{name} has {array.size} samples, shorter than {min_samples_reason}: at least {min_samples} samples are "
            "needed; pad it with zeros or drop the clip."
        )
    return array


def resample_audio(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly) of a mono float clip.

    `audio` `(num_samples,)` at `orig_rate` Hz -> float32 `(ceil(num_samples * target_rate / orig_rate),)` at
    `target_rate` Hz; equal rates return the clip as float32 without resampling. Raises `ValueError` for rates that
    are not positive.
    """
    if int(orig_rate) <= 0 or int(target_rate) <= 0:
        raise ValueError(f"Sampling rates must be positive, got orig_rate={orig_rate}, target_rate={target_rate}.")
    if int(orig_rate) == int(target_rate):
        return np.asarray(audio, dtype=np.float32)
    from math import gcd

    try:  # in a try block so that remote-code loading does not require scipy unless resampling is used
        from scipy.signal import resample_poly
    except ImportError as error:
        raise ImportError("Resampling audio needs scipy: `pip install scipy`.") from error

    g = gcd(int(orig_rate), int(target_rate))
    up, down = int(target_rate) // g, int(orig_rate) // g
    return resample_poly(np.asarray(audio, dtype=np.float32), up, down).astype(np.float32)


def read_audio_file(path_or_bytes, sampling_rate: int) -> np.ndarray:
    """Decode a WAV/FLAC/OGG file (a path or the file's bytes) with soundfile, mix it down to mono (mean over
    channels) and resample it to `sampling_rate` Hz. Returns float32 `(num_samples,)` in [-1, 1]."""
    import io

    try:  # optional dependency, only needed to decode files
        import soundfile
    except ImportError as error:
        raise ImportError("Reading audio files needs soundfile: `pip install soundfile`.") from error

    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    audio, file_rate = soundfile.read(source, dtype="float32", always_2d=True)  # (num_samples, channels)
    return resample_audio(audio.mean(axis=1), file_rate, sampling_rate)


__all__ = ["check_sampling_rate", "pcm_to_float", "read_audio_file", "resample_audio", "validate_waveform"]
