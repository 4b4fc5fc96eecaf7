# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Processor of MambaDecoderOnlyASR: audio (+ transcript) -> model inputs, generated ids -> text.

- Audio: mamba-zoo's one audio-input rule (`audio_utils.validate_audio`).
- Features: transformers' `Speech2TextFeatureExtractor` filter banks (kaldi-style 80-bin log-mel, 25 ms / 10 ms, mel
  energies floored at float32 eps before the log; numpy path, no torchaudio needed), then per-utterance mean/variance
  normalisation with a floored standard deviation (`audio_utils.normalize_utterance`): transformers' own
  normalisation divides a constant bin by 0, so a silent clip gave NaN/inf features (and NaN loss and gradients).
- Text: a character tokenizer in a joint vocabulary `[specials | characters | <unit_0> .. <unit_{K-1}>]`, stored as a
  plain `tokenizer.json` (loads with `AutoTokenizer` anywhere).
- Speech units (MADEON's discrete speech tokens): k-means centroids over frame features (`fit_unit_tokenizer`), each
  frame assigned to its nearest centroid, consecutive repeats removed. The centroids are saved in
  `processor_config.json` with the processor.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from transformers import BatchFeature, PreTrainedTokenizerFast, ProcessorMixin, Speech2TextFeatureExtractor

from .audio_utils import normalize_utterance, validate_audio

SPECIAL_TOKENS = ["<pad>", "<sos>", "<eos>", "<unk>", "<speech>", "<generatetext>"]
DEFAULT_CHARACTERS = " abcdefghijklmnopqrstuvwxyz'"


def build_tokenizer(characters: str = DEFAULT_CHARACTERS, num_units: int = 0) -> PreTrainedTokenizerFast:
    """A character tokenizer over `[<pad> <sos> <eos> <unk> <speech> <generatetext> | characters | units]`.

    Ids 0..5 are the specials (matching `MambaASRConfig`'s defaults), then one id per character, then `num_units`
    speech units `<unit_k>`.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    characters = list(dict.fromkeys(characters))
    if any(len(c) != 1 for c in characters):
        raise ValueError("characters must be single characters.")
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + characters + [f"<unit_{k}>" for k in range(num_units)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<sos>", eos_token="<eos>", unk_token="<unk>",
        additional_special_tokens=["<speech>", "<generatetext>"], padding_side="right",
    )


def kmeans(points: torch.Tensor, num_clusters: int, iterations: int = 25, seed: int = 0) -> torch.Tensor:
    """Plain k-means (k-means++ seeding, Lloyd iterations) on `(n, dim)` points -> centroids `(num_clusters, dim)`."""
    if points.shape[0] < num_clusters:
        raise ValueError(f"k-means needs at least {num_clusters} frames, got {points.shape[0]}.")
    generator = torch.Generator().manual_seed(seed)
    points = points.float()
    centroids = points[torch.randint(points.shape[0], (1,), generator=generator)]
    closest = torch.cdist(points, centroids).squeeze(1) ** 2
    for _ in range(1, num_clusters):
        index = torch.multinomial(closest / closest.sum(), 1, generator=generator)
        centroids = torch.cat([centroids, points[index]])
        closest = torch.minimum(closest, ((points - points[index]) ** 2).sum(-1))
    for _ in range(iterations):
        assignment = torch.cdist(points, centroids).argmin(-1)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=num_clusters).float()
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
    return centroids


class MambaASRProcessor(ProcessorMixin):
    r"""
    Turns audio (+ transcripts) into `MambaDecoderOnlyASR` inputs and generated ids into text.

    Args:
        feature_extractor (`Speech2TextFeatureExtractor`): log-mel frames `(frames, 80)` + frame attention mask.
        tokenizer (`PreTrainedTokenizerFast`): the joint character (+ unit) vocabulary, see `build_tokenizer`.
        speech_input (`str`, defaults to `"features"`): `"features"` returns `input_features`; `"units"` returns
            discrete `speech_ids` (needs `unit_centroids`).
        unit_centroids (`list[list[float]]`, *optional*): k-means centroids `(num_units, feature_dim)`.
        deduplicate_units (`bool`, defaults to `True`): remove consecutive repeated units (MADEON's de-duplication).

    Call: `processor(audio=..., text=..., sampling_rate=16000)` returns a `BatchFeature` with
    `input_features (batch, frames, 80)` or `speech_ids (batch, Ls)`, `speech_attention_mask`, and with text
    `input_ids (batch, T)` = `<generatetext> chars <eos>` right-padded, `attention_mask`, `labels` (padding = -100).
    """

    def __init__(self, feature_extractor=None, tokenizer=None, speech_input: str = "features",
                 unit_centroids: Optional[Sequence[Sequence[float]]] = None, deduplicate_units: bool = True, **kwargs):
        if speech_input not in ("features", "units"):
            raise ValueError(f"speech_input must be 'features' or 'units', got {speech_input!r}.")
        if speech_input == "units" and unit_centroids is None:
            raise ValueError("speech_input='units' needs unit_centroids (fit them with fit_unit_tokenizer).")
        self.speech_input = speech_input
        self.unit_centroids = None if unit_centroids is None else [list(map(float, row)) for row in unit_centroids]
        self.deduplicate_units = deduplicate_units
        super().__init__(feature_extractor, tokenizer, **kwargs)

    @classmethod
    def from_scratch(cls, characters: str = DEFAULT_CHARACTERS, num_units: int = 0, speech_input: str = "features",
                     unit_centroids=None, num_mel_bins: int = 80) -> "MambaASRProcessor":
        """A new processor: feature extractor, character tokenizer with `num_units` unit tokens."""
        feature_extractor = Speech2TextFeatureExtractor(
            feature_size=num_mel_bins, num_mel_bins=num_mel_bins, sampling_rate=16000, padding_value=0.0,
            do_ceptral_normalize=True, normalize_means=True, normalize_vars=True, return_attention_mask=True,
        )
        return cls(feature_extractor, build_tokenizer(characters, num_units), speech_input=speech_input,
                   unit_centroids=unit_centroids)

    # ------------------------------------------------------------------------------------------------ vocabulary

    @property
    def unit_token_offset(self) -> int:
        """Vocabulary id of `<unit_0>`."""
        unit_id = self.tokenizer.convert_tokens_to_ids("<unit_0>")
        if unit_id is None or unit_id == self.tokenizer.unk_token_id:
            return len(self.tokenizer)
        return unit_id

    @property
    def num_units(self) -> int:
        return 0 if self.unit_centroids is None else len(self.unit_centroids)

    def model_config_kwargs(self) -> dict:
        """The `MambaASRConfig` fields that must agree with this processor."""
        tok = self.tokenizer
        return {
            "vocab_size": len(tok), "speech_input": self.speech_input, "num_units": self.num_units,
            "unit_token_offset": self.unit_token_offset if self.num_units else 0,
            "num_mel_bins": self.feature_extractor.num_mel_bins, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "speech_token_id": tok.convert_tokens_to_ids("<speech>"),
            "generate_text_token_id": tok.convert_tokens_to_ids("<generatetext>"),
        }

    # ------------------------------------------------------------------------------------------------ units

    def fit_unit_tokenizer(self, audio, num_units: int, sampling_rate: int = 16000, max_frames: int = 200_000,
                           iterations: int = 25, seed: int = 0) -> "MambaASRProcessor":
        """Fit `num_units` k-means centroids on the frame features of `audio` (a list of clips); afterwards the
        processor emits `speech_ids`. The tokenizer must have been built with `num_units` unit tokens."""
        unit_offset = self.tokenizer.convert_tokens_to_ids(f"<unit_{num_units - 1}>")
        if unit_offset is None or unit_offset == self.tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has fewer than {num_units} unit tokens; build it with build_tokenizer(num_units=...).")
        frames = np.concatenate(self._frame_features(audio, sampling_rate), axis=0)
        if frames.shape[0] > max_frames:
            frames = frames[np.random.default_rng(seed).choice(frames.shape[0], max_frames, replace=False)]
        centroids = kmeans(torch.from_numpy(frames), num_units, iterations=iterations, seed=seed)
        self.unit_centroids = centroids.tolist()
        self.speech_input = "units"
        return self

    def _frame_features(self, audio, sampling_rate) -> list[np.ndarray]:
        """One clip or a list of clips -> per clip `(frames, num_mel_bins)` float32 features: the feature extractor's
        filter banks, normalised per utterance as it is configured to (`do_ceptral_normalize`, `normalize_means`,
        `normalize_vars`) but with a floored standard deviation, so silence gives finite features (0)."""
        fe = self.feature_extractor
        features = []
        for clip in validate_audio(audio, sampling_rate, fe.sampling_rate, owner=type(self).__name__):
            fbank = np.asarray(fe._extract_fbank_features(clip), dtype=np.float32)  # (frames, bins), floored log-mel
            if getattr(fe, "do_ceptral_normalize", True):
                fbank = normalize_utterance(fbank, getattr(fe, "normalize_means", True),
                                            getattr(fe, "normalize_vars", True))
            features.append(fbank)
        return features

    def speech_to_units(self, frame_features: list[np.ndarray]) -> list[list[int]]:
        """Frame features -> unit indices `0..K-1` (nearest centroid), consecutive repeats removed."""
        if self.unit_centroids is None:
            raise ValueError("This processor has no unit tokenizer; call fit_unit_tokenizer first.")
        centroids = torch.tensor(self.unit_centroids, dtype=torch.float32)
        units = []
        for frames in frame_features:
            assignment = torch.cdist(torch.from_numpy(frames), centroids).argmin(-1)
            if self.deduplicate_units:
                assignment = torch.unique_consecutive(assignment)
            units.append(assignment.tolist())
        return units

    # ------------------------------------------------------------------------------------------------ call

    def __call__(self, audio=None, text=None, sampling_rate: Optional[int] = None, return_tensors: str = "pt",
                 **kwargs) -> BatchFeature:
        """audio: one clip `(samples,)` or a list of clips (16 kHz mono); text: a transcript or a list of them."""
        if audio is None and text is None:
            raise ValueError("Pass audio, text or both.")
        data = {}
        if audio is not None:
            frame_features = self._frame_features(audio, sampling_rate)
            if self.speech_input == "features":
                lengths = [f.shape[0] for f in frame_features]
                padded = np.zeros((len(frame_features), max(lengths), frame_features[0].shape[1]), dtype=np.float32)
                for i, f in enumerate(frame_features):
                    padded[i, :f.shape[0]] = f
                data["input_features"] = padded
            else:
                offset = self.unit_token_offset
                units = self.speech_to_units(frame_features)
                lengths = [len(u) for u in units]
                padded = np.full((len(units), max(lengths)), self.tokenizer.pad_token_id, dtype=np.int64)
                for i, u in enumerate(units):
                    padded[i, :len(u)] = np.asarray(u) + offset
                data["speech_ids"] = padded
            data["speech_attention_mask"] = (np.arange(max(lengths))[None] < np.asarray(lengths)[:, None]).astype(np.int64)
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if audio is not None and len(texts) != data["speech_attention_mask"].shape[0]:
                raise ValueError(f"Got {len(texts)} transcripts for {data['speech_attention_mask'].shape[0]} audio clips.")
            start = self.tokenizer.convert_tokens_to_ids("<generatetext>")
            ids = [[start] + self.tokenizer(self.normalize_text(t), add_special_tokens=False)["input_ids"]
                   + [self.tokenizer.eos_token_id] for t in texts]
            length = max(len(i) for i in ids)
            input_ids = np.full((len(ids), length), self.tokenizer.pad_token_id, dtype=np.int64)
            labels = np.full((len(ids), length), -100, dtype=np.int64)
            for i, row in enumerate(ids):
                input_ids[i, :len(row)] = row
                labels[i, 1:len(row)] = row[1:]
            data["input_ids"] = input_ids
            data["attention_mask"] = (labels != -100).astype(np.int64)
            data["attention_mask"][:, 0] = 1
            data["labels"] = labels
        return BatchFeature(data, tensor_type=return_tensors)

    @staticmethod
    def normalize_text(text: str) -> str:
        """Lower-case and collapse whitespace (the transcript convention of the training corpora)."""
        return " ".join(text.lower().split())

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        """Generated ids `(batch, len)` -> transcripts (special and unit tokens dropped)."""
        if isinstance(sequences, torch.Tensor):
            sequences = sequences.tolist()
        limit = self.unit_token_offset
        cleaned = [[i for i in row if 0 <= i < limit] for row in sequences]
        texts = self.tokenizer.batch_decode(cleaned, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    def decode(self, sequence, **kwargs) -> str:
        return self.batch_decode([sequence if not isinstance(sequence, torch.Tensor) else sequence.tolist()])[0]

    @property
    def model_input_names(self):
        speech = ["input_features"] if self.speech_input == "features" else ["speech_ids"]
        return speech + ["speech_attention_mask", "input_ids", "attention_mask"]


__all__ = ["MambaASRProcessor", "build_tokenizer", "kmeans"]
