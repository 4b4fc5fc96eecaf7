# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Streaming transcription with a (bidirectional) `MambaForCTC`: audio goes in as it arrives, text comes out a chunk
at a time, with bounded look-ahead and bounded memory.

`MambaCTCStreamer(model, processor, chunk_seconds=0.64, left_context_seconds=2.56, right_context_seconds=1.28)`
keeps at most `left + chunk + right` seconds of audio. Whenever a chunk and its right context have arrived, it
featurises the window `[chunk start - left context, chunk end + right context)`, runs the encoder over it, and emits
the greedy CTC labels of the chunk's own encoder frames (collapsed across chunk boundaries as one CTC sequence). A
bidirectional model so sees `right_context_seconds` of the future (the algorithmic latency is chunk + right context)
and `left_context_seconds` of the past. Features are normalised over the window (the model was trained with
per-utterance normalisation; a window is the nearest thing a stream has).

    streamer = MambaCTCStreamer(model, processor)
    for piece in microphone_pieces:          # any sizes, 16 kHz float
        print(streamer.accept(piece), end="")  # the new text (may be "")
    print(streamer.finish())                  # the rest, without right context

State: the audio window, the collapsed label ids emitted so far (the transcript), and the last frame's label.
Compute per chunk is constant: the real-time factor does not depend on how long the stream runs. The text grows by
the new labels' characters only (`tokenizer.decode` of the whole id list at every chunk would cost O(transcript) of
Python per chunk); it equals `tokenizer.decode(ids, group_tokens=False)` of the ids so far.
"""

from __future__ import annotations

import numpy as np
import torch

from .audio_utils import check_sampling_rate, min_audio_samples, validate_waveform


class MambaCTCStreamer:
    """Chunked streaming greedy CTC decoding with left and right context (see the module docstring).

    Args:
        model: a `MambaForCTC` (eval mode is set).
        processor: its `MambaCTCProcessor` (feature extractor + tokenizer).
        chunk_seconds / left_context_seconds / right_context_seconds: rounded to whole encoder frames
            (`hop_length * 2 ** num_subsampling_layers` samples: 40 ms at 16 kHz with 4x subsampling).
    """

    def __init__(self, model, processor, chunk_seconds: float = 0.64, left_context_seconds: float = 2.56,
                 right_context_seconds: float = 1.28):
        self.model = model.eval()
        self.processor = processor
        extractor = processor.feature_extractor
        self.sampling_rate = extractor.sampling_rate
        self.frame_samples = extractor.hop_length * 2 ** model.config.num_subsampling_layers
        if chunk_seconds <= 0 or left_context_seconds < 0 or right_context_seconds < 0:
            raise ValueError(
                f"chunk_seconds must be positive and the contexts non-negative, got {chunk_seconds}, "
                f"{left_context_seconds}, {right_context_seconds}."
            )
        self.chunk = self._frames(chunk_seconds, minimum=1) * self.frame_samples
        self.left = self._frames(left_context_seconds) * self.frame_samples
        self.right = self._frames(right_context_seconds) * self.frame_samples
        self.blank_id = processor.tokenizer.pad_token_id
        self.reset()

    def _frames(self, seconds: float, minimum: int = 0) -> int:
        return max(minimum, int(round(seconds * self.sampling_rate / self.frame_samples)))

    def reset(self) -> None:
        """Forget the stream: a new one starts with the next `accept`."""
        self._audio = np.zeros(0, dtype=np.float32)
        self._audio_start = 0  # stream sample index of self._audio[0]
        self._next = 0  # stream sample index where the next chunk starts (a multiple of frame_samples)
        self._ids: list[int] = []
        self._last = None
        self._characters = ""  # the emitted labels' characters, before the tokenizer's final strip / clean-up
        self._text = ""
        self.last_window = None  # (window start, window end, first emitted frame, end frame), for inspection

    @property
    def buffered_seconds(self) -> float:
        return len(self._audio) / self.sampling_rate

    @property
    def text(self) -> str:
        """The transcript so far."""
        return self._text

    def accept(self, audio, sampling_rate: int | None = None) -> str:
        """Append `audio` (1-D float, the model's rate) to the stream; returns the text that became final."""
        if sampling_rate is not None:
            check_sampling_rate(sampling_rate, self.sampling_rate, type(self).__name__)
        piece = validate_waveform(audio, expected_rate=self.sampling_rate, min_samples=1, name="Audio piece",
                                  owner=type(self).__name__)
        self._audio = np.concatenate([self._audio, piece])
        before = self._text
        while self._audio_start + len(self._audio) >= self._next + self.chunk + self.right:
            self._decode_window(self._next + self.chunk)
        return self._text[len(before):]

    def finish(self) -> str:
        """Decode what is left (no right context beyond the end) and start a new stream; returns the new text."""
        before = self._text
        end = self._audio_start + len(self._audio)
        if end > self._next:
            self._decode_window(end, final=True)
        text = self._text[len(before):]
        self.reset()
        return text

    @torch.no_grad()
    def _decode_window(self, emit_end: int, final: bool = False) -> None:
        """Encode `[next - left, emit_end + right)` (clipped to the buffer) and emit the frames of `[next, emit_end)`."""
        stream_end = self._audio_start + len(self._audio)
        start = max(self._audio_start, self._next - self.left)
        stop = stream_end if final else min(stream_end, emit_end + self.right)
        window = self._audio[start - self._audio_start:stop - self._audio_start]
        shortest = min_audio_samples(self.sampling_rate)  # the feature extractor's minimum clip
        if len(window) < shortest:  # a stream shorter than that: zeros after its end
            window = np.pad(window, (0, shortest - len(window)))
        features = self.processor.feature_extractor(window, sampling_rate=self.sampling_rate, return_tensors="pt")
        logits = self.model(input_features=features["input_features"]).logits[0]
        first = (self._next - start) // self.frame_samples
        last = min(logits.shape[0], -(-(min(emit_end, stop) - start) // self.frame_samples))
        self.last_window = (start, stop, first, last)
        self._emit(logits[first:last].argmax(-1).tolist())
        self._next = emit_end if not final else stream_end
        keep_from = max(self._audio_start, self._next - self.left)  # drop what no future window reads
        self._audio = self._audio[keep_from - self._audio_start:]
        self._audio_start = keep_from

    def _emit(self, frame_ids: list[int]) -> None:
        """Greedy CTC collapse across calls: a label repeated in consecutive frames is one label; blanks separate."""
        new = []
        for label in frame_ids:
            if label != self._last and label != self.blank_id:
                new.append(label)
            self._last = label
        if not new:
            return
        self._ids.extend(new)
        tokenizer = self.processor.tokenizer
        # what Wav2Vec2CTCTokenizer.decode(ids, group_tokens=False) does, for the new ids only: the word delimiter
        # becomes a space, the rest are their tokens; strip, lower case and clean-up apply to the whole text
        self._characters += "".join(tokenizer.replace_word_delimiter_char if token == tokenizer.word_delimiter_token
                                    else token for token in tokenizer.convert_ids_to_tokens(new))
        text = self._characters.strip()
        if getattr(tokenizer, "do_lower_case", False):
            text = text.lower()
        if tokenizer.clean_up_tokenization_spaces:
            text = tokenizer.clean_up_tokenization(text)
        self._text = text


__all__ = ["MambaCTCStreamer"]
