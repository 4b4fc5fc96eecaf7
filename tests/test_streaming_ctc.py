"""Streaming MambaForCTC: window bookkeeping against the offline model on the same windows, the full-context case equal
to offline decoding, CTC collapse across chunks, bounded state, clear errors."""

import numpy as np
import pytest
import torch

from mamba_zoo import MambaCTCConfig, MambaCTCProcessor, MambaForCTC
from mamba_zoo.streaming_ctc import MambaCTCStreamer


@pytest.fixture(scope="module")
def model_and_processor():
    processor = MambaCTCProcessor.from_transcripts(["one two three four five six seven eight nine zero"])
    torch.manual_seed(0)
    config = MambaCTCConfig(vocab_size=len(processor.tokenizer), hidden_size=32, num_hidden_layers=2,
                            subsampling_conv_channels=8, intermediate_size=64, state_size=8,
                            pad_token_id=processor.tokenizer.pad_token_id, apply_spec_augment=False)
    model = MambaForCTC(config).eval()
    with torch.no_grad():  # a sharper head than the init: labels change from frame to frame
        model.lm_head.weight.mul_(20)
    return model, processor


def _audio(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (t * 3 % 1 > 0.5) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32)


def _offline_ids(model, processor, audio):
    features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt")["input_features"]
    with torch.no_grad():
        return model(input_features=features).logits[0].argmax(-1).tolist()


def _collapse(frame_ids, blank):
    out, last = [], None
    for label in frame_ids:
        if label != last and label != blank:
            out.append(label)
        last = label
    return out


def test_full_context_streaming_equals_offline_decoding(model_and_processor):
    model, processor = model_and_processor
    audio = _audio(3.3)
    streamer = MambaCTCStreamer(model, processor, chunk_seconds=0.64, left_context_seconds=10,
                                right_context_seconds=10)
    pieces = [audio[i:i + 1234] for i in range(0, len(audio), 1234)]
    text = "".join(streamer.accept(piece) for piece in pieces) + streamer.finish()
    offline = processor.batch_decode(torch.tensor([_offline_ids(model, processor, audio)]))[0]
    assert len(offline) > 3 and text == offline


def test_each_chunk_emits_its_frames_of_the_windowed_forward(model_and_processor, monkeypatch):
    """With bounded contexts every chunk's labels are those of the offline model run on the chunk's window (its
    frames only), and the emitted ids are one CTC collapse of all chunks' frames."""
    model, processor = model_and_processor
    audio = _audio(4.0, seed=1)
    streamer = MambaCTCStreamer(model, processor, chunk_seconds=0.4, left_context_seconds=0.8,
                                right_context_seconds=0.24)
    assert (streamer.chunk, streamer.left, streamer.right) == (6400, 12800, 3840)  # 40 ms frames
    windows, frames = [], []
    original = streamer._emit
    monkeypatch.setattr(streamer, "_emit", lambda ids: (windows.append(streamer.last_window), frames.extend(ids),
                                                         original(ids)))
    for i in range(0, len(audio), 800):
        streamer.accept(audio[i:i + 800])
        assert len(streamer._audio) <= streamer.left + streamer.chunk + streamer.right + 800  # bounded state
    ids_before_finish = list(streamer._ids)
    streamer.finish()
    assert len(windows) == 10  # 4 s = 10 chunks of 0.4 s
    emitted = 0
    for start, stop, first, last in windows:
        expected = _offline_ids(model, processor, audio[start:stop])[first:last]
        assert frames[emitted:emitted + len(expected)] == expected
        assert start + first * 640 == emitted * 640  # the chunk's frames follow the previous chunk's
        emitted += len(expected)
    assert emitted == 100  # every 40 ms frame of the stream, once
    assert _collapse(frames, processor.tokenizer.pad_token_id)[:len(ids_before_finish)] == ids_before_finish
    assert windows[-1][1] == len(audio) and windows[3][0] == 3 * 6400 - 12800  # chunk 4 reads 0.8 s back


def test_collapse_runs_across_chunk_boundaries(model_and_processor):
    model, processor = model_and_processor
    streamer = MambaCTCStreamer(model, processor)
    blank = processor.tokenizer.pad_token_id
    a, b = 5, 7
    streamer._emit([a, a])
    streamer._emit([a, blank, a, b])  # "a" continues across the boundary: one label, then a new one after a blank
    streamer._emit([b, b, blank])
    assert streamer._ids == [a, a, b]


def test_incremental_text_equals_decoding_all_ids(model_and_processor):
    """The text grown chunk by chunk equals the tokenizer's decode of every id so far, whatever the pieces: word
    delimiters at the edges (stripped), several in a row, the unknown token."""
    model, processor = model_and_processor
    tokenizer = processor.tokenizer
    streamer = MambaCTCStreamer(model, processor)
    rng = np.random.default_rng(0)
    labels = [i for i in range(len(tokenizer)) if i != tokenizer.pad_token_id]
    delimiter = tokenizer.convert_tokens_to_ids(tokenizer.word_delimiter_token)
    for piece in range(40):
        frames = rng.choice(labels + [tokenizer.pad_token_id, delimiter, delimiter], size=int(rng.integers(0, 9)))
        streamer._emit([int(f) for f in frames])
        assert streamer.text == tokenizer.decode(streamer._ids, group_tokens=False)
    assert len(streamer._ids) > 60 and " " in streamer.text


def test_short_streams_pieces_and_errors(model_and_processor):
    model, processor = model_and_processor
    streamer = MambaCTCStreamer(model, processor)
    assert streamer.accept(_audio(0.05)) == ""  # nothing final yet
    assert isinstance(streamer.finish(), str)  # 50 ms: decoded with zeros after its end
    assert streamer.text == "" and streamer.buffered_seconds == 0
    with pytest.raises(ValueError, match="16000"):
        streamer.accept(_audio(0.5), sampling_rate=8000)
    with pytest.raises(ValueError, match="NaN"):
        streamer.accept(np.full(800, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="chunk_seconds"):
        MambaCTCStreamer(model, processor, chunk_seconds=0)
