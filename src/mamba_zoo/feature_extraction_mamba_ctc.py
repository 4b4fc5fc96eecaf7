# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Log-mel filter-bank features with utterance mean/variance normalisation for MambaForCTC.

Input handling is mamba-zoo's one audio-input rule (`audio_utils.validate_audio`). This module also imports the ASR
pipeline of CTC checkpoints (`pipeline_mamba_asr.MambaASRPipeline`), so `save_pretrained` copies that file with the
feature extractor and `pipeline("automatic-speech-recognition", model=path, trust_remote_code=True)` finds it through
the checkpoint's `config.custom_pipelines` (`MambaCTCConfig`)."""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import PaddingStrategy, TensorType, logging

from .audio_utils import normalize_utterance, validate_audio
from .pipeline_mamba_asr import MambaASRPipeline  # noqa: F401  (travels with the feature extractor, see above)

logger = logging.get_logger(__name__)

FBANK_BLOCK_FRAMES = 4096  # frames featurised per STFT call (41 s of audio at a 10 ms hop)


class MambaCTCFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Log-mel filter-bank features for [`MambaForCTC`], normalised per utterance (zero mean, unit variance per mel bin
    over the utterance's own frames), right-padded with zeros, with a frame-level `attention_mask`. Silence gives
    finite features (mel energies floored at 1e-10 before the log; constant bins normalise to 0).

    Frames: a `win_length`-sample Hann window every `hop_length` samples, *centred* on sample `t * hop_length` (zero
    padding at both ends), so an utterance of `n` samples gives exactly `ceil(n / hop_length)` frames. With the
    model's 4x subsampling that is `ceil(n / 640)` logit frames, which keeps the ASR pipeline's chunk/stride arithmetic
    (`inputs_to_logits_ratio = 640`) exact. The features are independent of the input gain.

    Args:
        feature_size (`int`, defaults to 80): mel bins.
        sampling_rate (`int`, defaults to 16000): expected sampling rate; others raise (resample first).
        hop_length (`int`, defaults to 160), win_length (`int`, defaults to 400), n_fft (`int`, defaults to 512).
        f_min (`float`, defaults to 20.0), f_max (`float`, defaults to `sampling_rate / 2`).
        padding_value (`float`, defaults to 0.0): value of padded frames (the normalised mean).
        do_normalize (`bool`, defaults to `True`): utterance mean/variance normalisation.

    Returns from `__call__`: `input_features` `(batch, frames, feature_size)` and `attention_mask` `(batch, frames)`.
    """

    model_input_names = ["input_features", "attention_mask"]

    def __init__(
        self,
        feature_size: int = 80,
        sampling_rate: int = 16000,
        hop_length: int = 160,
        win_length: int = 400,
        n_fft: int = 512,
        f_min: float = 20.0,
        f_max: Optional[float] = None,
        padding_value: float = 0.0,
        do_normalize: bool = True,
        return_attention_mask: bool = True,
        **kwargs,
    ):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value,
                         return_attention_mask=return_attention_mask, **kwargs)
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) must not exceed n_fft ({n_fft}).")
        self.hop_length = hop_length
        self.win_length = win_length
        self.n_fft = n_fft
        self.f_min = f_min
        self.f_max = f_max if f_max is not None else sampling_rate / 2
        self.do_normalize = do_normalize
        # (n_fft // 2 + 1, feature_size); not serialised (to_dict drops `mel_filters`)
        self.mel_filters = mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1, num_mel_filters=feature_size, min_frequency=f_min,
            max_frequency=self.f_max, sampling_rate=sampling_rate, norm=None, mel_scale="kaldi",
            triangularize_in_mel_space=True,
        ).astype(np.float32)

    def num_frames(self, num_samples: int) -> int:
        """Feature frames of an utterance of `num_samples` samples: `ceil(num_samples / hop_length)`."""
        return math.ceil(num_samples / self.hop_length)

    def _extract_fbank_features(self, waveform: np.ndarray) -> np.ndarray:
        """`(num_samples,)` float32 -> log-mel `(ceil(num_samples / hop_length), feature_size)` float32."""
        signal = torch.from_numpy(waveform)
        pad = self.n_fft // 2  # the signal is read as if zero-padded by this much at both ends (centred frames)
        window = torch.hann_window(self.win_length, periodic=False)
        mel_filters = torch.from_numpy(self.mel_filters)
        num_frames = self.num_frames(waveform.shape[0])
        output = np.empty((num_frames, self.mel_filters.shape[1]), dtype=np.float32)
        # frame t is centred on sample t * hop_length; a block of frames at a time keeps the complex spectra
        # O(block) for long recordings (each frame reads only its own samples: the same numbers as one call)
        for start in range(0, num_frames, FBANK_BLOCK_FRAMES):
            stop = min(start + FBANK_BLOCK_FRAMES, num_frames)
            low, high = start * self.hop_length - pad, (stop - 1) * self.hop_length + self.n_fft - pad
            piece = signal[max(low, 0):min(high, len(signal))]
            if low < 0 or high > len(signal):  # only the first and last blocks reach into the zero padding
                piece = torch.nn.functional.pad(piece, (max(0, -low), max(0, high - len(signal))))
            spectrum = torch.stft(
                piece, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length, window=window,
                center=False, return_complex=True,
            )  # (n_fft // 2 + 1, frames of the piece)
            power = spectrum[:, : stop - start].abs().pow(2).T
            output[start:stop] = torch.log((power @ mel_filters).clamp_min(1e-10)).numpy()
        return output

    def _normalize(self, features: np.ndarray) -> np.ndarray:
        # the std floor keeps constant bins (digital silence) at exactly zero instead of amplifying rounding noise
        return normalize_utterance(features)

    def __call__(
        self,
        raw_speech: Union[np.ndarray, list, torch.Tensor],
        padding: Union[bool, str, PaddingStrategy] = True,
        max_length: Optional[int] = None,
        truncation: bool = False,
        pad_to_multiple_of: Optional[int] = None,
        return_tensors: Optional[Union[str, TensorType]] = None,
        sampling_rate: Optional[int] = None,
        return_attention_mask: Optional[bool] = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Featurize one clip or a batch (a list of clips), following mamba-zoo's audio-input rule
        (`audio_utils.validate_audio`): an array or tensor is one clip (a 2-D multi-channel clip is mixed down to mono
        with a warning); float in [-1, 1] or integer PCM (scaled); empty, NaN/inf, too short (< 0.1 s) or
        non-numeric audio raises `ValueError`.

        Args:
            raw_speech: one clip or a list of clips at `self.sampling_rate`.
            padding, max_length, truncation, pad_to_multiple_of: as `SequenceFeatureExtractor.pad`, in frames; pads
                to the longest utterance by default (right padding).
            return_tensors: `"pt"`, `"np"` or `None` (lists).
            sampling_rate: the audio's rate; a different rate raises `ValueError` (resample first). Strongly
                recommended: transformers' warning is logged when it is missing.
            return_attention_mask: defaults to `True`.

        Returns:
            `BatchFeature` with `input_features` `(batch, frames, feature_size)` and `attention_mask`
            `(batch, frames)` (1 = frame, 0 = padding).
        """
        features = []
        for waveform in validate_audio(raw_speech, sampling_rate, self.sampling_rate, owner=self.__class__.__name__,
                                       copy=False):  # only read: a long recording is not copied
            fbank = self._extract_fbank_features(waveform)
            features.append(self._normalize(fbank) if self.do_normalize else fbank)
            del fbank  # a long recording's un-normalised copy is not kept beside the rest
        if (return_tensors is not None and len(features) == 1 and padding in (True, "longest")
                and max_length is None and not truncation and pad_to_multiple_of is None):
            # one clip, nothing to pad: a zero-copy batch of one (padding would copy every frame)
            data = {"input_features": features[0][None]}
            if return_attention_mask is None or return_attention_mask:
                data["attention_mask"] = np.ones((1, len(features[0])), dtype=np.int32)
            return BatchFeature(data, tensor_type=return_tensors)

        padded = self.pad(
            BatchFeature({"input_features": features}),
            padding=padding,
            max_length=max_length,
            truncation=truncation,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=True if return_attention_mask is None else return_attention_mask,
        )
        padded["input_features"] = [np.asarray(f, dtype=np.float32) for f in padded["input_features"]]
        if "attention_mask" in padded:
            padded["attention_mask"] = [np.asarray(m, dtype=np.int32) for m in padded["attention_mask"]]
        if return_tensors is not None:
            padded = padded.convert_to_tensors(return_tensors)
        return padded


__all__ = ["MambaCTCFeatureExtractor"]
