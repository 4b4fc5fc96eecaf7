# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""SSAMBA feature extractor: SSAST/SSAMBA's kaldi-compatible log-mel filter banks, built on transformers'
`ASTFeatureExtractor`, with input checks; plus an audio-classification pipeline that decodes files without ffmpeg."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from transformers import ASTFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.pipelines.audio_classification import AudioClassificationPipeline
from transformers.utils import logging

from .audio_utils import check_sampling_rate, read_audio_file, resample_audio, validate_waveform

try:
    import soundfile
except ImportError:  # optional: only needed to decode audio files without ffmpeg
    soundfile = None

logger = logging.get_logger(__name__)

# Normalisation statistics and target lengths of the datasets SSAST/SSAMBA fine-tune on (their recipes' values).
SSAMBA_FEATURE_PRESETS: dict[str, dict[str, float | int]] = {
    "audioset": {"mean": -4.2677393, "std": 4.5689974, "max_length": 1024},
    "esc50": {"mean": -6.6268077, "std": 5.358466, "max_length": 512},
    "speechcommands": {"mean": -6.845978, "std": 5.5654526, "max_length": 128},
}

_MIN_SAMPLES = 400  # one 25 ms analysis window at 16 kHz
_MAX_CHANNELS = 8


def to_float_waveform(waveform: Any, name: str = "audio") -> np.ndarray:
    """One clip `(num_samples,)` as float32 samples in [-1, 1] (a new array), at least one 25 ms window long.

    `audio_utils.validate_waveform` with SSAMBA's minimum length (400 samples): integer PCM is scaled as audio
    readers do (int16 / 2**15, int32 / 2**31, uint8 (x - 128) / 128), since the filter banks are defined on float
    waveforms. Raises a `ValueError` for empty, non-finite, multi-channel, too short or non-numeric input.
    """
    return validate_waveform(
        waveform, name=name, min_samples=_MIN_SAMPLES, min_samples_reason="one 25 ms analysis window at 16 kHz"
    )


class SSAMBAFeatureExtractor(ASTFeatureExtractor):
    r"""Log-mel filter banks as SSAST/SSAMBA compute them, padded/truncated to `max_length` frames and normalised.

    Features = kaldi `fbank` (25 ms Hann ("hanning") windows every 10 ms, 512-point FFT, per-frame DC removal,
    pre-emphasis 0.97, power spectrum, 128 kaldi mel bins 20 Hz - Nyquist, natural log, no dither), zero-padded to
    `max_length` frames, then `(x - mean) / (2 * std)`. transformers' `ASTFeatureExtractor` computes this with
    torchaudio's kaldi implementation when torchaudio is installed and with an equivalent numpy path otherwise (tested
    against an independent re-implementation of kaldi's algorithm). SSAST also subtracts the waveform mean first; the
    per-frame DC removal makes that a no-op.

    Input handling (a clear `ValueError`, never silent garbage): `sampling_rate` other than 16000 raises; empty,
    NaN/inf or multi-channel clips raise; integer PCM is converted to float (`to_float_waveform`). A single 2-D array
    is a batch of clips `(batch, samples)` as in transformers; one that looks like `(samples, channels)` raises.

    Args:
        preset: optional dataset preset, `"audioset"`, `"esc50"` or `"speechcommands"` (mean, std, max_length).
        other args: as `ASTFeatureExtractor` (`num_mel_bins=128`, `max_length`, `mean`, `std`, `do_normalize`,
            `return_attention_mask`: return a `(batch, max_length)` frame mask, 0 on padded frames).
    Returns `input_values` `(batch, max_length, num_mel_bins)` float32.
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(self, preset: str | None = None, **kwargs):
        if preset is not None:
            if preset not in SSAMBA_FEATURE_PRESETS:
                raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(SSAMBA_FEATURE_PRESETS)}.")
            kwargs = {**SSAMBA_FEATURE_PRESETS[preset], **kwargs}
        kwargs.setdefault("sampling_rate", 16000)
        with warnings.catch_warnings():
            # kaldi's 128-bin mel bank at 16 kHz has empty low-frequency filters (the same in torchaudio): expected
            warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
            super().__init__(**kwargs)
        if self.sampling_rate != 16000:
            logger.warning("SSAMBA checkpoints were trained on 16 kHz audio; sampling_rate=%s", self.sampling_rate)

    @classmethod
    def from_preset(cls, preset: str, **kwargs) -> "SSAMBAFeatureExtractor":
        """`SSAMBAFeatureExtractor.from_preset("speechcommands")` etc."""
        return cls(preset=preset, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        for key in ("mel_filters", "window", "preset"):
            output.pop(key, None)
        return output

    def _extract_fbank_features(self, waveform: np.ndarray, max_length: int) -> np.ndarray:
        """Kaldi fbank `(max_length, num_mel_bins)`, zero-padded/truncated. Without torchaudio this is a vectorised
        numpy version of `ASTFeatureExtractor`'s numpy path (all frames in one FFT call; same numbers)."""
        if getattr(self, "mel_filters", None) is None:  # torchaudio installed: transformers' kaldi path
            return super()._extract_fbank_features(waveform, max_length)
        waveform = np.asarray(waveform, dtype=np.float64).reshape(-1)
        frames = np.lib.stride_tricks.sliding_window_view(waveform, _MIN_SAMPLES)[::160]  # (n, 400): snip_edges
        frames = frames - frames.mean(axis=1, keepdims=True)  # per-frame DC removal
        emphasised = frames.copy()
        emphasised[:, 1:] -= 0.97 * frames[:, :-1]
        emphasised[:, 0] *= 1 - 0.97
        power = np.abs(np.fft.rfft(emphasised * self.window, n=512, axis=1)) ** 2  # (n, 257)
        fbank = np.log(np.maximum(power @ self.mel_filters, 1.192092955078125e-07)).astype(np.float32)
        output = np.zeros((max_length, fbank.shape[1]), dtype=np.float32)
        frames_kept = min(max_length, fbank.shape[0])
        output[:frames_kept] = fbank[:frames_kept]
        return output

    def _split_batch(self, raw_speech) -> tuple[list, bool]:
        if isinstance(raw_speech, np.ndarray) or (hasattr(raw_speech, "numpy") and hasattr(raw_speech, "shape")):
            array = np.asarray(raw_speech.numpy() if hasattr(raw_speech, "numpy") else raw_speech)
            if array.ndim == 1:
                return [array], False
            if array.ndim == 2:
                if array.shape[1] <= _MAX_CHANNELS < array.shape[0]:
                    raise ValueError(
                        f"Got a 2-D array of shape {array.shape}, which looks like (samples, channels) multi-channel "
                        "audio. Mix it down to mono first (e.g. `audio.mean(axis=1)`); a 2-D array is read as a batch "
                        "(batch, samples)."
                    )
                return list(array), True
            raise ValueError(f"Only mono audio is supported: got an array of shape {array.shape}.")
        if isinstance(raw_speech, (list, tuple)):
            if len(raw_speech) == 0:
                raise ValueError("Got an empty batch (no clips).")
            if isinstance(raw_speech[0], (np.ndarray, list, tuple)) or hasattr(raw_speech[0], "shape"):
                return list(raw_speech), True
            return [np.asarray(raw_speech)], False
        raise ValueError(f"raw_speech must be a numpy array, a list of floats or a list of arrays, got {type(raw_speech)}.")

    def __call__(
        self,
        raw_speech,
        sampling_rate: int | None = None,
        return_tensors=None,
        return_attention_mask: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        """raw_speech: one clip (1-D samples) or a batch (list of 1-D arrays, or a `(batch, samples)` array), mono.

        Returns a `BatchFeature` with `input_values` `(batch, max_length, num_mel_bins)` (and `attention_mask`
        `(batch, max_length)` when requested)."""
        check_sampling_rate(sampling_rate, self.sampling_rate, owner=type(self).__name__)
        clips, is_batched = self._split_batch(raw_speech)
        clips = [to_float_waveform(clip, name=f"clip {i}" if is_batched else "audio") for i, clip in enumerate(clips)]
        for i, clip in enumerate(clips):
            peak = float(np.abs(clip).max())
            if peak > 1.0 + 1e-3:
                logger.warning_once(
                    f"Clip {i} has samples up to {peak:.1f}: float audio is expected in [-1, 1] (int16 values stored as "
                    "floats give shifted log-mel features). Divide by 32768 if these are 16-bit PCM values."
                )
        features = super().__call__(clips, sampling_rate=sampling_rate or self.sampling_rate, return_tensors=None)
        values = [np.asarray(v, dtype=np.float32) for v in features["input_values"]]
        data = {"input_values": np.stack(values)}
        if return_attention_mask if return_attention_mask is not None else self.return_attention_mask:
            mask = np.zeros((len(clips), self.max_length), dtype=np.int32)
            for i, clip in enumerate(clips):
                frames = 1 + (clip.size - 400) // 160
                mask[i, :min(frames, self.max_length)] = 1
            data["attention_mask"] = mask
        return BatchFeature(data, tensor_type=return_tensors)


class SoundfileAudioClassificationPipeline(AudioClassificationPipeline):
    """transformers' audio-classification pipeline, decoding files with soundfile (no ffmpeg needed) and resampling
    `{"raw"/"array", "sampling_rate"}` dicts with scipy (no torchaudio needed). Anything soundfile cannot decode goes
    to the stock ffmpeg path, so behaviour is unchanged for every other input."""

    def preprocess(self, inputs):
        target_rate = self.feature_extractor.sampling_rate
        if soundfile is not None and isinstance(inputs, (str, bytes, bytearray)) and not (
            isinstance(inputs, str) and inputs.startswith(("http://", "https://"))
        ):
            try:
                inputs = read_audio_file(inputs, target_rate)
            except (RuntimeError, soundfile.LibsndfileError if hasattr(soundfile, "LibsndfileError") else RuntimeError):
                pass
        if isinstance(inputs, dict) and "sampling_rate" in inputs and ("raw" in inputs or "array" in inputs):
            # `datasets` rows may hold the samples as a list; decode and resample here (no torchaudio needed)
            array = inputs["raw"] if inputs.get("raw") is not None else inputs["array"]
            if hasattr(array, "numpy"):
                array = array.cpu().numpy()
            array = to_float_waveform(array)
            inputs = resample_audio(array, inputs["sampling_rate"], target_rate)
        return super().preprocess(inputs)


__all__ = [
    "SSAMBAFeatureExtractor",
    "SSAMBA_FEATURE_PRESETS",
    "SoundfileAudioClassificationPipeline",
    "read_audio_file",
    "resample_audio",
    "to_float_waveform",
]
