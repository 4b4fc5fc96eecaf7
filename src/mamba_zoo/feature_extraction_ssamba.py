# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""SSAMBA feature extractor: SSAST/SSAMBA's kaldi-compatible log-mel filter banks, built on transformers'
`ASTFeatureExtractor`, with mamba-zoo's audio-input rule (`audio_utils.validate_audio`); plus the audio-classification
pipeline of SSAMBA checkpoints, which reads files with soundfile and resamples with scipy (no ffmpeg, no torchaudio).

The pipeline class lives in this module so that it travels with the feature extractor: `save_pretrained` copies this
file into the checkpoint, whose `config.custom_pipelines` names it (`SSAMBAConfig`), and
`pipeline("audio-classification", model=path, trust_remote_code=True)` builds it with or without mamba-zoo installed
(with mamba-zoo installed, `pipeline_class=SoundfileAudioClassificationPipeline` does the same without remote code).
Importing mamba_zoo registers nothing globally: other models keep transformers' own pipeline."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from transformers import ASTFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.pipelines.audio_classification import AudioClassificationPipeline
from transformers.utils import logging

from .audio_utils import load_audio, read_audio_file, resample_audio, validate_audio

logger = logging.get_logger(__name__)

# Normalisation statistics and target lengths of the datasets SSAST/SSAMBA fine-tune on (their recipes' values).
SSAMBA_FEATURE_PRESETS: dict[str, dict[str, float | int]] = {
    "audioset": {"mean": -4.2677393, "std": 4.5689974, "max_length": 1024},
    "esc50": {"mean": -6.6268077, "std": 5.358466, "max_length": 512},
    "speechcommands": {"mean": -6.845978, "std": 5.5654526, "max_length": 128},
}

_WINDOW = 400  # kaldi frame: 25 ms at 16 kHz
_HOP = 160  # 10 ms at 16 kHz
FBANK_BLOCK_FRAMES = 1024  # frames featurised per numpy call (10 s of audio; its float64 temporaries ~20 MB)


class SSAMBAFeatureExtractor(ASTFeatureExtractor):
    r"""Log-mel filter banks as SSAST/SSAMBA compute them, padded/truncated to `max_length` frames and normalised.

    Features = kaldi `fbank` (25 ms Hann ("hanning") windows every 10 ms, 512-point FFT, per-frame DC removal,
    pre-emphasis 0.97, power spectrum, 128 kaldi mel bins 20 Hz - Nyquist, natural log, no dither), zero-padded to
    `max_length` frames, then `(x - mean) / (2 * std)`. transformers' `ASTFeatureExtractor` computes this with
    torchaudio's kaldi implementation when torchaudio is installed and with an equivalent numpy path otherwise (tested
    against an independent re-implementation of kaldi's algorithm). SSAST also subtracts the waveform mean first; the
    per-frame DC removal makes that a no-op.

    Input handling: mamba-zoo's audio-input rule (`audio_utils.validate_audio`, the same for all audio families): a
    clear `ValueError` for a wrong `sampling_rate`, empty, NaN/inf, too short (< 0.1 s) or non-numeric audio; a
    warning for a missing `sampling_rate`; integer PCM scaled to float; an array or tensor is one clip (a 2-D
    multi-channel clip is mixed down to mono with a warning) and a batch is a list of clips. Silence gives finite
    features (the mel energies are floored at float32 eps before the log). Only the samples that the first
    `max_length` frames read are used: a long clip is cropped before its filter banks are computed.

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

    def _extract_fbank_features(self, waveform: np.ndarray, max_length: int, out: np.ndarray | None = None
                                ) -> np.ndarray:
        """Kaldi fbank `(max_length, num_mel_bins)`, zero-padded/truncated. Without torchaudio this is a vectorised
        numpy version of `ASTFeatureExtractor`'s numpy path (a block of frames per FFT call; same numbers), written
        into `out` when given."""
        if getattr(self, "mel_filters", None) is None:  # torchaudio installed: transformers' kaldi path
            return super()._extract_fbank_features(waveform, max_length)
        waveform = np.asarray(waveform).reshape(-1)  # each block's frames are converted to float64 on their own
        all_frames = np.lib.stride_tricks.sliding_window_view(waveform, _WINDOW)[::_HOP]  # (n, 400) view: snip_edges
        output = np.zeros((max_length, self.mel_filters.shape[1]), dtype=np.float32) if out is None else out
        output[:] = 0
        frames_kept = min(max_length, all_frames.shape[0])
        # a block of frames at a time: the float64 frame copies and spectra stay O(block) for long recordings
        for start in range(0, frames_kept, FBANK_BLOCK_FRAMES):
            frames = all_frames[start:min(start + FBANK_BLOCK_FRAMES, frames_kept)].astype(np.float64)
            frames = frames - frames.mean(axis=1, keepdims=True)  # per-frame DC removal
            emphasised = frames.copy()
            emphasised[:, 1:] -= 0.97 * frames[:, :-1]
            emphasised[:, 0] *= 1 - 0.97
            power = np.abs(np.fft.rfft(emphasised * self.window, n=512, axis=1)) ** 2  # (block, 257)
            output[start:start + len(frames)] = np.log(np.maximum(power @ self.mel_filters, 1.192092955078125e-07))
        return output

    def features_of_validated(self, clips: list[np.ndarray]) -> np.ndarray:
        """`(len(clips), max_length, num_mel_bins)` normalised filter banks of clips already checked by
        `audio_utils.validate_audio` (float32 mono at the extractor's rate; `__call__` does that first). Callers that
        validated a long recording themselves use this to avoid a second copy of it."""
        if getattr(self, "mel_filters", None) is None:  # torchaudio installed: transformers' own path
            features = super().__call__(clips, sampling_rate=self.sampling_rate, return_tensors=None)
            return np.stack([np.asarray(v, dtype=np.float32) for v in features["input_values"]])
        # filter banks written straight into the batch, normalised in place: one copy of the features
        values = np.empty((len(clips), self.max_length, self.mel_filters.shape[1]), dtype=np.float32)
        for i, clip in enumerate(clips):
            self._extract_fbank_features(clip, self.max_length, out=values[i])
        if self.do_normalize:  # ASTFeatureExtractor.normalize, (x - mean) / (2 * std), in place
            values -= self.mean
            values /= self.std * 2
        return values

    def num_frames(self, num_samples: int) -> int:
        """Filter-bank frames of a clip of `num_samples` samples (snip-edges framing, 25 ms windows every 10 ms)."""
        return 1 + (int(num_samples) - _WINDOW) // _HOP

    @property
    def frame_seconds(self) -> float:
        """Seconds between consecutive frames (the hop)."""
        return _HOP / self.sampling_rate

    def samples_for_max_length(self) -> int:
        """Samples that the first `max_length` frames read (snip-edges framing: `window + hop * (max_length - 1)`,
        48 400 at 16 kHz and 300 frames); later samples cannot change the features."""
        window = max(_WINDOW, int(self.sampling_rate * 0.025))
        hop = max(_HOP, int(self.sampling_rate * 0.010))
        return window + hop * (self.max_length - 1)

    def __call__(
        self,
        raw_speech,
        sampling_rate: int | None = None,
        return_tensors=None,
        return_attention_mask: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        """raw_speech: one clip (a 1-D array, tensor or list of numbers; a 2-D clip is mixed down to mono with a
        warning) or a batch (a list of clips), see `audio_utils.validate_audio`.

        Returns a `BatchFeature` with `input_values` `(batch, max_length, num_mel_bins)` (and `attention_mask`
        `(batch, max_length)` when requested)."""
        clips = validate_audio(raw_speech, sampling_rate, self.sampling_rate, owner=type(self).__name__,
                               max_samples=self.samples_for_max_length(), copy=False)  # only read
        for i, clip in enumerate(clips):
            peak = max(float(clip.max()), -float(clip.min()))  # no temporary as long as the clip
            if peak > 1.0 + 1e-3:
                logger.warning_once(
                    f"Clip {i} has samples up to {peak:.1f}: float audio is expected in [-1, 1] (int16 values stored as "
                    "floats give shifted log-mel features). Divide by 32768 if these are 16-bit PCM values."
                )
        data = {"input_values": self.features_of_validated(clips)}
        if return_attention_mask if return_attention_mask is not None else self.return_attention_mask:
            mask = np.zeros((len(clips), self.max_length), dtype=np.int32)
            for i, clip in enumerate(clips):
                mask[i, :min(self.num_frames(clip.size), self.max_length)] = 1
            data["attention_mask"] = mask
        return BatchFeature(data, tensor_type=return_tensors)


class SoundfileAudioClassificationPipeline(AudioClassificationPipeline):
    """The audio-classification pipeline of SSAMBA checkpoints: transformers' `AudioClassificationPipeline`, reading
    inputs with `audio_utils.load_audio` (paths and bytes decoded with soundfile, `{"raw"/"array", "sampling_rate"}`
    dicts resampled with scipy, arrays checked by the audio-input rule), so neither ffmpeg nor torchaudio is needed.
    URLs (and files soundfile cannot decode, when ffmpeg is installed) take transformers' own route.

    Built by `pipeline("audio-classification", model=path, trust_remote_code=True)` from the checkpoint's
    `config.custom_pipelines`, or by `pipeline(..., pipeline_class=SoundfileAudioClassificationPipeline)`; it is never
    registered for the task globally."""

    def preprocess(self, inputs):
        audio = load_audio(inputs, self.feature_extractor.sampling_rate, owner=type(self).__name__)
        return super().preprocess(inputs if audio is None else audio)


__all__ = [
    "SSAMBAFeatureExtractor",
    "SSAMBA_FEATURE_PRESETS",
    "SoundfileAudioClassificationPipeline",
    "read_audio_file",
    "resample_audio",
]
