# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Processor for MambaForCTC: `MambaCTCFeatureExtractor` + a character `Wav2Vec2CTCTokenizer`.

The tokenizer follows Wav2Vec2's CTC conventions: `<pad>` (id 0) is the CTC blank, `|` is the word delimiter
(spaces in text), `<unk>` stands for characters outside the vocabulary. `build_ctc_vocabulary` /
`MambaCTCProcessor.from_transcripts` make the vocabulary from a dataset's transcripts.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Iterable, Optional, Union

import numpy as np
import torch
from transformers import Wav2Vec2CTCTokenizer
from transformers.processing_utils import ProcessorMixin

from .feature_extraction_mamba_ctc import MambaCTCFeatureExtractor


PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
WORD_DELIMITER = "|"


def normalize_transcript(text: str) -> str:
    """Lowercase, keep letters, digits, apostrophes and spaces (other characters become spaces), collapse spaces."""
    text = re.sub(r"[^\w' ]|_", " ", text.lower())
    return re.sub(r"\s+", " ", text).strip()


def build_ctc_vocabulary(texts: Iterable[str], normalize: bool = True) -> dict[str, int]:
    """Character vocabulary for a `Wav2Vec2CTCTokenizer`: `<pad>` = 0 (the CTC blank), `<unk>` = 1, `|` = 2 (word
    delimiter, replaces the space), then every other character of `texts` in sorted order.

    Args:
        texts: transcripts (e.g. a dataset's `text` column).
        normalize: apply `normalize_transcript` first (the same normalisation must be used for the labels).
    """
    characters = set()
    for text in texts:
        characters.update(normalize_transcript(text) if normalize else text)
    characters.discard(" ")
    characters -= {PAD_TOKEN, UNK_TOKEN, WORD_DELIMITER}
    vocab = {PAD_TOKEN: 0, UNK_TOKEN: 1, WORD_DELIMITER: 2}
    for char in sorted(characters):
        vocab[char] = len(vocab)
    if len(vocab) == 3:
        raise ValueError("The transcripts contain no characters; cannot build a vocabulary.")
    return vocab


def ctc_tokenizer_from_vocabulary(vocab: dict[str, int], **kwargs) -> Wav2Vec2CTCTokenizer:
    """A `Wav2Vec2CTCTokenizer` over `vocab` (no bos/eos tokens, so `len(tokenizer) == len(vocab)`)."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = os.path.join(tmp, "vocab.json")
        with open(vocab_file, "w", encoding="utf-8") as handle:
            json.dump(vocab, handle, ensure_ascii=False)
        kwargs = {"unk_token": UNK_TOKEN, "pad_token": PAD_TOKEN, "word_delimiter_token": WORD_DELIMITER,
                  "bos_token": None, "eos_token": None, **kwargs}
        return Wav2Vec2CTCTokenizer(vocab_file, **kwargs)


class MambaCTCProcessor(ProcessorMixin):
    r"""
    Wraps a [`MambaCTCFeatureExtractor`] and a character [`Wav2Vec2CTCTokenizer`] into one processor.

    `processor(audio=..., sampling_rate=16000, text=...)` returns `input_features`, `attention_mask` and (with text)
    `labels`; `processor.batch_decode(predicted_ids)` decodes greedy CTC ids (repeats collapsed, blanks removed);
    `processor.decode_beams(logits)` runs pyctcdecode's beam search (optionally with a KenLM n-gram model).
    """

    attributes = ["feature_extractor", "tokenizer"]
    feature_extractor_class = "AutoFeatureExtractor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, feature_extractor, tokenizer):
        super().__init__(feature_extractor, tokenizer)

    @classmethod
    def from_transcripts(
        cls,
        texts: Iterable[str],
        feature_extractor: Optional[MambaCTCFeatureExtractor] = None,
        **tokenizer_kwargs,
    ) -> "MambaCTCProcessor":
        """Build the processor for a dataset: the vocabulary from its transcripts (`build_ctc_vocabulary`) and a
        default `MambaCTCFeatureExtractor` unless one is given."""
        tokenizer = ctc_tokenizer_from_vocabulary(build_ctc_vocabulary(texts), **tokenizer_kwargs)
        return cls(feature_extractor or MambaCTCFeatureExtractor(), tokenizer)

    def __call__(self, audio=None, text=None, sampling_rate: Optional[int] = None, return_tensors=None, **kwargs):
        """
        Args:
            audio: one waveform `(num_samples,)` or a list of them (see `MambaCTCFeatureExtractor.__call__`).
            text: transcript(s); normalised with `normalize_transcript` and tokenized to character ids.
            sampling_rate: the audio's sampling rate (checked).
            return_tensors: `"pt"`, `"np"` or `None`.
            kwargs: passed to the feature extractor (`padding`, `max_length`, ...).

        Returns:
            audio only: the feature extractor's `BatchFeature`; text only: the tokenizer's encoding; both: the features
            with `labels` (`input_ids` of the text; padded with -100 when `return_tensors` is set and the batch has
            several lengths).
        """
        if audio is None and text is None:
            raise ValueError("Pass `audio`, `text` or both.")
        inputs = None
        if audio is not None:
            inputs = self.feature_extractor(audio, sampling_rate=sampling_rate, return_tensors=return_tensors, **kwargs)
        if text is None:
            return inputs
        texts = [normalize_transcript(t) for t in ([text] if isinstance(text, str) else text)]
        encodings = self.tokenizer(texts if not isinstance(text, str) else texts[0])
        if inputs is None:
            return encodings
        labels = encodings["input_ids"]
        if return_tensors is not None:
            labels = [labels] if isinstance(text, str) else labels
            labels = self.pad_labels(labels)
            labels = labels.numpy() if return_tensors == "np" else labels
        inputs["labels"] = labels
        return inputs

    @staticmethod
    def pad_labels(labels: list[list[int]], pad_value: int = -100) -> torch.Tensor:
        """Right-pad label id lists to `(batch, longest)` with -100 (ignored by the CTC loss)."""
        longest = max((len(ids) for ids in labels), default=0)
        padded = torch.full((len(labels), longest), pad_value, dtype=torch.long)
        for row, ids in enumerate(labels):
            padded[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        return padded

    def batch_decode(self, *args, **kwargs):
        """Greedy CTC decoding of `(batch, frames)` argmax ids: see `Wav2Vec2CTCTokenizer.batch_decode`."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        """Greedy CTC decoding of one `(frames,)` id sequence (`output_char_offsets=True` for timestamps)."""
        return self.tokenizer.decode(*args, **kwargs)

    def ctc_labels(self) -> list[str]:
        """The vocabulary in id order as pyctcdecode labels: blank -> "", word delimiter -> " "."""
        id_to_token = {i: t for t, i in self.tokenizer.get_vocab().items()}
        labels = []
        for i in range(len(id_to_token)):
            token = id_to_token[i]
            if i == self.tokenizer.pad_token_id:
                labels.append("")
            elif token == self.tokenizer.word_delimiter_token:
                labels.append(" ")
            elif token == self.tokenizer.unk_token:
                labels.append("⁇")
            else:
                labels.append(token)
        return labels

    def build_beam_decoder(self, kenlm_model_path: Optional[str] = None, unigrams: Optional[list[str]] = None,
                           **kwargs):
        """A `pyctcdecode.BeamSearchDecoderCTC` over this vocabulary, optionally with a KenLM n-gram model
        (`kenlm_model_path`, needs the `kenlm` package). Pass it to `pipeline(..., decoder=...)` or use
        `decode_beams`."""
        try:  # optional; imported here because importing it logs a notice when kenlm is missing
            import pyctcdecode
        except ImportError as error:
            raise ImportError(
                "Beam search needs pyctcdecode: `pip install pyctcdecode` (and `kenlm` for an n-gram LM)."
            ) from error
        return pyctcdecode.build_ctcdecoder(self.ctc_labels(), kenlm_model_path=kenlm_model_path,
                                            unigrams=unigrams, **kwargs)

    def decode_beams(self, logits: Union[torch.Tensor, np.ndarray], logit_lengths=None, beam_width: int = 16,
                     decoder=None, **decode_kwargs) -> list[str]:
        """Beam-search CTC decoding with pyctcdecode.

        Args:
            logits: `(batch, frames, vocab)` (or `(frames, vocab)`) model logits.
            logit_lengths: `(batch,)` valid frames per sample (e.g. from `model._get_feat_extract_output_lengths`);
                all frames by default.
            beam_width: beams kept per step.
            decoder: a decoder from `build_beam_decoder` (built without an LM when omitted).

        Returns:
            One transcript per sample.
        """
        decoder = decoder or self.build_beam_decoder()
        if isinstance(logits, torch.Tensor):
            logits = logits.detach().float().cpu().numpy()
        if logits.ndim == 2:
            logits = logits[None]
        log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        texts = []
        for row, sample in enumerate(log_probs):
            length = sample.shape[0] if logit_lengths is None else int(logit_lengths[row])
            texts.append(decoder.decode(sample[:length], beam_width=beam_width, **decode_kwargs))
        return texts

    @property
    def model_input_names(self):
        return self.feature_extractor.model_input_names + ["labels"]


__all__ = ["MambaCTCProcessor", "build_ctc_vocabulary", "ctc_tokenizer_from_vocabulary", "normalize_transcript"]
