# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""The one audio-input rule of mamba-zoo's three audio families (SSAMBA, MambaForCTC, MADEON), and the audio reading
their pipelines share.

`validate_audio(audio, sampling_rate, expected_rate, owner=...)` is the rule; every feature extractor and processor
calls it (`SSAMBAFeatureExtractor`, `MambaCTCFeatureExtractor`, `MambaASRProcessor`), and the pipelines apply it to
what `load_audio` reads. It returns one clean float32 mono `(num_samples,)` array per clip or raises a `ValueError`
that names the clip, the problem and the fix:

- sampling rate: `sampling_rate` other than the model's raises (resample first: `resample_audio`); a missing
  `sampling_rate` logs transformers' feature-extractor warning ("It is strongly recommended to pass the
  `sampling_rate` argument ...") and the audio is taken to be at the model's rate. Pipelines resample
  `{"raw" | "array", "sampling_rate"}` dicts (scipy) and files (soundfile) to the model's rate themselves.
- one clip or a batch: a numpy array or torch tensor is ONE clip; a batch is a list (or tuple) of clips; a list of
  numbers is one clip.
- layout: a clip is 1-D `(num_samples,)`. A 2-D clip `(samples, channels)` or `(channels, samples)` whose smaller
  dimension is at most `MAX_CHANNELS` (8) is mixed down to mono (mean over channels) with a warning (one channel:
  silently squeezed); a 2-D array with no such dimension, or any other rank, raises (a batch is a list of 1-D clips).
- dtype: float samples are expected in [-1, 1] and cast to float32 (float64, float16, bfloat16; numpy or torch, any
  device, with or without grad); integer PCM is scaled as audio readers do (`pcm_to_float`: int16 / 2**15,
  int32 / 2**31, uint8 (x - 128) / 128); bool, complex, str and object arrays raise.
- content: empty clips and clips with NaN or infinite samples raise; silence (all zeros) is valid and gives finite
  features in every family (the mel energies are floored before the log and constant feature bins are not divided
  by a zero standard deviation, see `normalize_utterance`).
- length: at least `MIN_AUDIO_SECONDS` (0.1 s = 1600 samples at 16 kHz, `min_audio_samples`). It is the shortest
  clip every family's default front end turns into at least one model frame (MADEON's two stride-2 convolutions need
  7 fbank frames = 85 ms); the error names the length in samples and milliseconds.

`read_audio_file` decodes WAV/FLAC/OGG paths or bytes with soundfile and `resample_audio` resamples with scipy: neither
needs ffmpeg or torchaudio. `load_audio` is the pipelines' reader built on them.

This module is imported relatively (`from .audio_utils import ...`), so `save_pretrained` of a feature extractor or
processor copies it next to the module that uses it and checkpoints load with `trust_remote_code=True` without
mamba-zoo. Only numpy is needed at import time; scipy, soundfile and transformers' logging are imported inside `try`
blocks (transformers' remote-code import check does not require them).
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import numpy as np

try:  # transformers' logging (its verbosity settings apply); plain logging where transformers is absent
    from transformers.utils.logging import get_logger
except ImportError:  # pragma: no cover
    from logging import getLogger as get_logger

logger = get_logger(__name__)

MIN_AUDIO_SECONDS = 0.1  # the one minimum length of the rule (see the module docstring)
MAX_CHANNELS = 8  # a 2-D clip with at most this many channels (7.1 audio) is mixed down to mono
CMVN_STD_FLOOR = 1e-3  # per-utterance normalisation divides by at least this (log-mel units)


def min_audio_samples(sampling_rate: int) -> int:
    """Fewest samples the rule accepts at `sampling_rate` Hz: `MIN_AUDIO_SECONDS` (1600 samples at 16 kHz)."""
    return math.ceil(round(MIN_AUDIO_SECONDS * int(sampling_rate), 6))


def warn_missing_sampling_rate(owner: str) -> None:
    """The warning transformers' feature extractors log when `sampling_rate` is not passed (same text)."""
    logger.warning(
        f"It is strongly recommended to pass the `sampling_rate` argument to `{owner}()`. "
        "Failing to do so can result in silent errors that might be hard to debug."
    )


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


def _channel_axis(array: np.ndarray, name: str) -> Optional[int]:
    """The channel axis of a 2-D clip (`None` for 1-D); raises for other ranks and for 2-D arrays without a small
    (<= MAX_CHANNELS) dimension."""
    if array.ndim == 1:
        return None
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be mono: one clip is a 1-D array of shape (num_samples,), got shape {array.shape}. Pass a "
            "batch as a list of 1-D clips, and mix multi-channel audio down first, e.g. "
            "`audio.mean(axis=channel_axis)`."
        )
    if min(array.shape) > MAX_CHANNELS:
        raise ValueError(
            f"{name} has shape {array.shape}: a 2-D array is read as one multi-channel clip, (samples, channels) or "
            f"(channels, samples) with at most {MAX_CHANNELS} channels, and neither dimension is that small. Pass a "
            "batch as a list of 1-D clips (e.g. `list(array)`), or mix the channels down first."
        )
    return 0 if array.shape[0] <= array.shape[1] else 1


def validate_waveform(
    waveform: Any,
    sampling_rate: Optional[int] = None,
    expected_rate: Optional[int] = None,
    *,
    min_samples: int = 1,
    max_samples: Optional[int] = None,
    name: str = "Audio",
    owner: str = "The model",
    copy: bool = True,
) -> np.ndarray:
    """The rule for ONE clip (see the module docstring): a new C-contiguous float32 mono array `(num_samples,)`.

    Args:
        waveform: the clip: a numpy array, a torch tensor (any device, grad or not) or a list of numbers; 1-D, or 2-D
            multi-channel (`(samples, channels)` or `(channels, samples)`, at most `MAX_CHANNELS` channels: mixed down
            to mono with a warning). Float samples in [-1, 1] are cast to float32; integer PCM is scaled with
            `pcm_to_float`.
        sampling_rate: the clip's rate in Hz, checked against `expected_rate` when both are given (see
            `check_sampling_rate`); `None` skips the check.
        expected_rate: the rate the model expects, Hz (also used to state lengths in milliseconds in errors).
        min_samples: fewest samples accepted (counted before `max_samples` cropping).
        max_samples: keep only the first `max_samples` samples (cropped before any conversion, so a long clip is never
            copied whole; the dropped samples are not checked either). For callers whose features of a longer clip
            would be truncated anyway.
        name: how the clip is called in errors and warnings, e.g. `"Audio"` or `"Audio clip 3"`.
        owner: what expects `expected_rate`, for the sampling-rate error.
        copy: `False` for callers that only read the clip (feature extractors): a clip that is already C-contiguous
            float32 mono is returned as is (a view), so a long recording is not held twice.

    Returns:
        `np.ndarray` float32 `(num_samples,)`, finite, never a view of the input (unless `copy=False`).

    Raises:
        ValueError: wrong sampling rate; non-numeric dtype (str, object, bool, complex); not 1-D or 2-D multi-channel;
            empty; NaN or infinite samples; fewer than `min_samples` samples. Each message names the clip (`name`),
            the problem and the fix.
    """
    if expected_rate is not None:
        check_sampling_rate(sampling_rate, expected_rate, owner)
    array = _to_numpy(waveform, name)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(
            f"{name} is not numeric (dtype {array.dtype}); pass float samples in [-1, 1] or integer PCM samples."
        )
    channel_axis = _channel_axis(array, name)
    shape = array.shape
    if array.size == 0:
        raise ValueError(f"{name} is empty (0 samples); drop the clip or pass its samples.")
    time_axis = 0 if channel_axis is None else 1 - channel_axis
    num_samples = array.shape[time_axis]
    if max_samples is not None and num_samples > max_samples:
        array = array[:max_samples] if time_axis == 0 else array[:, :max_samples]
    if np.issubdtype(array.dtype, np.integer):
        array = pcm_to_float(array)
    if channel_axis is not None:
        channels = array.shape[channel_axis]
        if channels > 1:
            layout = "(channels, samples)" if channel_axis == 0 else "(samples, channels)"
            logger.warning(
                f"{owner}: {name} has shape {shape}, read as {layout} with {channels} channels and mixed down "
                "to mono (the mean of the channels). Pass mono 1-D clips to silence this warning; a batch is a list of "
                "1-D clips, not a 2-D array."
            )
        array = array.mean(axis=channel_axis, dtype=np.float64)
    # by default a copy: the caller's buffer is not aliased (nor, with copy=False, a read-only one: torch warns on it)
    array = array.astype(np.float32, order="C", copy=copy or not array.flags.writeable)
    # a float64 sum of float32 samples overflows only through inf or NaN: no mask as long as the clip unless one fails
    if not np.isfinite(np.add.reduce(array, dtype=np.float64)):
        finite = np.isfinite(array)
        first = int(np.argmin(finite))
        raise ValueError(
            f"{name} contains NaN or infinite samples ({int(array.size - finite.sum())} of {array.size}, first at "
            f"index {first}); clean or drop the clip."
        )
    if num_samples < min_samples:
        rate = expected_rate or sampling_rate
        length = f" ({num_samples / rate * 1000:.1f} ms at {rate} Hz)" if rate else ""
        needed = f" ({min_samples / rate * 1000:.0f} ms)" if rate else ""
        raise ValueError(
            f"{name} is too short: {num_samples} samples{length}; at least {min_samples} samples{needed} are needed. "
            "Pad it with zeros or drop the clip."
        )
    return array


def split_clips(audio: Any, owner: str = "The model") -> tuple[list, bool]:
    """`(clips, is_batch)`: a numpy array or torch tensor is one clip, a list/tuple of arrays, tensors or lists is a
    batch, a list of numbers is one clip. Raises a `ValueError` for no audio, an empty batch and non-audio types
    (paths, bytes, dicts: read them with `read_audio_file` / `resample_audio`, or use the model's pipeline)."""
    if audio is None:
        raise ValueError(f"No audio given to {owner}.")
    if hasattr(audio, "shape") and hasattr(audio, "dtype"):  # numpy array or torch tensor
        return [audio], False
    if isinstance(audio, (list, tuple)):
        if len(audio) == 0:
            raise ValueError(f"Got an empty batch of audio (no clips) for {owner}; pass at least one clip.")
        if any(isinstance(x, (list, tuple)) or getattr(x, "ndim", 0) >= 1 for x in audio):
            return list(audio), True
        return [audio], False
    raise ValueError(
        f"{owner} takes audio samples: one clip as a 1-D numpy array or torch tensor (or a list of numbers), or a "
        f"batch as a list of clips; got {type(audio).__name__}. Decode audio files with `read_audio_file(path, "
        "sampling_rate)` and resample dicts with `resample_audio` (mamba_zoo.audio_utils), or use the model's "
        "pipeline, which reads paths, bytes and {\"array\", \"sampling_rate\"} dicts."
    )


def validate_audio(
    audio: Any,
    sampling_rate: Optional[int],
    expected_rate: int,
    *,
    owner: str = "The model",
    max_samples: Optional[int] = None,
    copy: bool = True,
) -> list[np.ndarray]:
    """THE audio-input rule (module docstring): one clip or a batch of clips -> a list of float32 mono `(samples,)`.

    Args:
        audio: one clip (a numpy array or torch tensor, 1-D or 2-D multi-channel; or a list of numbers) or a batch (a
            list or tuple of clips).
        sampling_rate: the audio's rate in Hz; a rate other than `expected_rate` raises (resample first). `None` logs
            transformers' "pass `sampling_rate`" warning and takes the audio to be at `expected_rate`.
        expected_rate: the model's rate, Hz.
        owner: the class applying the rule (named in messages), e.g. `"SSAMBAFeatureExtractor"`.
        max_samples: crop every clip to its first `max_samples` samples before converting it (see `validate_waveform`).
        copy: `False` for callers that only read the clips: clips already float32 C-contiguous mono are not copied.

    Returns:
        one float32 `(num_samples,)` array per clip (a list of one for a single clip).
    """
    if sampling_rate is None:
        warn_missing_sampling_rate(owner)
    else:
        check_sampling_rate(sampling_rate, expected_rate, owner)
    clips, is_batch = split_clips(audio, owner)
    min_samples = min_audio_samples(expected_rate)
    return [
        validate_waveform(clip, expected_rate=expected_rate, min_samples=min_samples, max_samples=max_samples,
                          name=f"Audio clip {i}" if is_batch else "Audio", owner=owner, copy=copy)
        for i, clip in enumerate(clips)
    ]


def normalize_utterance(features: np.ndarray, normalize_means: bool = True, normalize_vars: bool = True) -> np.ndarray:
    """Per-utterance mean/variance normalisation of `(frames, bins)` features (float64 inside, float32 out).

    A bin whose standard deviation is below `CMVN_STD_FLOOR` is divided by the floor instead: a constant bin (digital
    silence, or a one-frame clip) becomes exactly 0 instead of 0/0 = NaN, and rounding noise is not amplified."""
    if len(features) > NORMALIZE_BLOCK_FRAMES:
        return _normalize_utterance_in_blocks(np.asarray(features), normalize_means, normalize_vars)
    features = np.asarray(features, dtype=np.float64)
    if normalize_means:
        features = features - features.mean(axis=0, keepdims=True)
    if normalize_vars:
        features = features / np.maximum(features.std(axis=0, keepdims=True), CMVN_STD_FLOOR)
    return features.astype(np.float32)


# Longer utterances are normalised a block of frames at a time (float64 copies O(block), not O(frames)).
NORMALIZE_BLOCK_FRAMES = 8192


def _normalize_utterance_in_blocks(features: np.ndarray, normalize_means: bool, normalize_vars: bool) -> np.ndarray:
    """`normalize_utterance` of a long `(frames, bins)` array with float64 statistics summed block by block (equal to
    the one-pass result up to the float64 summation order)."""
    frames = len(features)
    blocks = [slice(start, start + NORMALIZE_BLOCK_FRAMES) for start in range(0, frames, NORMALIZE_BLOCK_FRAMES)]
    mean = np.zeros((1, features.shape[1]))
    if normalize_means:
        mean = sum(features[b].astype(np.float64).sum(axis=0, keepdims=True) for b in blocks) / frames
    scale = np.ones((1, features.shape[1]))
    if normalize_vars:
        variance = sum(((features[b].astype(np.float64) - mean) ** 2).sum(axis=0, keepdims=True) for b in blocks)
        scale = np.maximum(np.sqrt(variance / frames), CMVN_STD_FLOOR)
    out = np.empty(features.shape, dtype=np.float32)
    for b in blocks:
        out[b] = (features[b].astype(np.float64) - mean) / scale
    return out


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


def load_audio(inputs: Any, sampling_rate: int, owner: str = "The pipeline") -> Optional[np.ndarray]:
    """The audio reader of mamba-zoo's pipelines: one pipeline input -> a float32 mono `(num_samples,)` clip at
    `sampling_rate` Hz that passed the rule (`validate_audio`), without ffmpeg or torchaudio.

    - a path (str or `os.PathLike`) or the bytes of a WAV/FLAC/OGG file: decoded with soundfile, mixed down to mono
      and resampled (`read_audio_file`). A missing file raises `FileNotFoundError`; a file soundfile cannot decode goes
      to transformers' ffmpeg decoding (returns `None`) when ffmpeg is installed, else raises a `ValueError`.
    - a `{"raw" | "array": samples, "sampling_rate": rate}` dict (as `datasets` rows hold them): the samples are
      checked at their own rate, then resampled with scipy (`resample_audio`). Other keys are ignored here.
    - samples (a numpy array, torch tensor or list of numbers): taken to be at `sampling_rate` (transformers' pipeline
      convention) and checked.
    - `None` is returned for inputs left to transformers: http(s) URLs and torchcodec `AudioDecoder`s.
    """
    if isinstance(inputs, str) and inputs.startswith(("http://", "https://")):
        return None
    if type(inputs).__name__ == "AudioDecoder":  # torchcodec: transformers decodes it
        return None
    if isinstance(inputs, (str, os.PathLike, bytes, bytearray)):
        is_path = not isinstance(inputs, (bytes, bytearray))
        if is_path and not os.path.isfile(inputs):
            raise FileNotFoundError(f"{owner}: no audio file at {os.fspath(inputs)!r}.")
        try:
            audio = read_audio_file(os.fspath(inputs) if is_path else bytes(inputs), sampling_rate)
        except (ImportError, RuntimeError, TypeError) as error:  # no soundfile, or a format it cannot decode
            import shutil

            if shutil.which("ffmpeg") is not None:
                return None
            what = f"the audio file {os.fspath(inputs)!r}" if is_path else f"{len(inputs)} bytes of audio"
            raise ValueError(
                f"{owner} could not decode {what} with soundfile ({type(error).__name__}: {error}), and ffmpeg "
                "(transformers' decoder) is not installed. Convert it to WAV, FLAC or OGG, or install ffmpeg."
            ) from error
        return validate_audio(audio, sampling_rate, sampling_rate, owner=owner)[0]
    if isinstance(inputs, dict):
        samples = inputs.get("raw") if inputs.get("raw") is not None else inputs.get("array")
        if samples is None or inputs.get("sampling_rate") is None:
            raise ValueError(
                f"{owner}: an audio dict needs the samples under \"raw\" (or \"array\") and their rate under "
                f"\"sampling_rate\", e.g. {{\"raw\": audio, \"sampling_rate\": 16000}}; got the keys {sorted(inputs)}."
            )
        clip = validate_waveform(samples, name="Audio", owner=owner)
        audio = resample_audio(clip, int(inputs["sampling_rate"]), sampling_rate)
        return validate_audio(audio, sampling_rate, sampling_rate, owner=owner)[0]
    return validate_audio(inputs, sampling_rate, sampling_rate, owner=owner)[0]


__all__ = [
    "CMVN_STD_FLOOR",
    "MAX_CHANNELS",
    "MIN_AUDIO_SECONDS",
    "check_sampling_rate",
    "load_audio",
    "min_audio_samples",
    "normalize_utterance",
    "pcm_to_float",
    "read_audio_file",
    "resample_audio",
    "split_clips",
    "validate_audio",
    "validate_waveform",
    "warn_missing_sampling_rate",
]
