"""MambaASRProcessor (features / k-means units, tokenizer, bad audio, silence) and the ASR pipeline for decoder-only
ASR (installed, and as remote code without mamba-zoo). The shared audio rule itself: test_audio_utils.py; pipeline
registration per model: test_pipelines.py."""

import json

import numpy as np
import pytest
import torch
from transformers import AutomaticSpeechRecognitionPipeline, AutoProcessor, pipeline

from mamba_zoo import MambaASRConfig, MambaASRPipeline, MambaASRProcessor, MambaDecoderOnlyASR
from remote_code_utils import run_without_mamba_zoo


def clips(seconds=(1.0, 0.6, 1.4), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for s in seconds:
        t = np.arange(int(16000 * s)) / 16000
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 600) * t) * (t * 4 % 1 > 0.3)  # on/off "syllables"
        out.append((tone + 0.01 * rng.standard_normal(t.shape)).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def unit_processor():
    processor = MambaASRProcessor.from_scratch(num_units=12)
    return processor.fit_unit_tokenizer(clips(), num_units=12, iterations=5)


def tiny_asr(processor, seed=0, **overrides):
    torch.manual_seed(seed)
    config = MambaASRConfig(hidden_size=32, num_hidden_layers=2, expand=2, state_size=8, tie_word_embeddings=False,
                            initializer_range=0.2, **processor.model_config_kwargs(), **overrides)
    return MambaDecoderOnlyASR(config).eval()


# ---------------------------------------------------------------------------------------------- processor


def test_features_and_text_layout():
    processor = MambaASRProcessor.from_scratch()
    batch = processor(audio=clips(), text=["Three  one", "two", "nine eight seven"], sampling_rate=16000)
    assert batch["input_features"].shape[0] == 3 and batch["input_features"].shape[2] == 80
    assert batch["speech_attention_mask"].sum(-1).tolist() == [98, 58, 138]  # 25 ms windows, 10 ms hop
    gen, eos = processor.tokenizer.convert_tokens_to_ids(["<generatetext>", "<eos>"])
    ids, labels = batch["input_ids"], batch["labels"]
    assert (ids[:, 0] == gen).all() and (labels[:, 0] == -100).all()
    assert processor.batch_decode(ids) == ["three one", "two", "nine eight seven"]  # normalised transcripts
    assert ids[1, 4] == eos and (labels[1, 5:] == -100).all() and batch["attention_mask"][1].tolist()[:6] == [1] * 5 + [0]
    config = processor.model_config_kwargs()
    assert config["vocab_size"] == len(processor.tokenizer) and config["generate_text_token_id"] == gen


def test_unit_tokenizer_deduplicates_and_round_trips(unit_processor, tmp_path):
    batch = unit_processor(audio=clips(), sampling_rate=16000)
    ids, mask = batch["speech_ids"], batch["speech_attention_mask"]
    offset = unit_processor.unit_token_offset
    valid = ids[mask.bool()]
    assert ((valid >= offset) & (valid < offset + 12)).all()
    for row, length in zip(ids, mask.sum(-1)):
        assert (row[1:length] != row[:length - 1]).all()  # no consecutive repeats
    assert mask.sum(-1).max() < 138  # de-duplication shortens the 138-frame clip
    unit_processor.save_pretrained(tmp_path)
    assert len(json.loads((tmp_path / "processor_config.json").read_text())["unit_centroids"]) == 12
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, MambaASRProcessor) and loaded.speech_input == "units"
    assert torch.equal(loaded(audio=clips(), sampling_rate=16000)["speech_ids"], ids)


@pytest.mark.parametrize("audio,match", [
    (np.zeros((16, 16000), dtype=np.float32), "list of 1-D clips"),
    (np.zeros((1, 2, 16000), dtype=np.float32), "mono"),
    (np.full(16000, np.nan, dtype=np.float32), "NaN"),
    (np.zeros(100, dtype=np.float32), "at least"),
    ("not audio", "numpy array"),
    ([np.zeros(16000, dtype=np.float32), np.array(["a"] * 16000)], "not numeric"),
    ([], "empty"),
])
def test_bad_audio_raises_clear_errors(audio, match):
    with pytest.raises(ValueError, match=match):
        MambaASRProcessor.from_scratch()(audio=audio, sampling_rate=16000)


def test_wrong_sampling_rate_and_mismatched_text_raise():
    processor = MambaASRProcessor.from_scratch()
    with pytest.raises(ValueError, match="8000 Hz"):
        processor(audio=clips()[0], sampling_rate=8000)
    with pytest.raises(ValueError, match="transcripts"):
        processor(audio=clips(), text=["one"], sampling_rate=16000)


def test_silent_clip_gives_finite_features_loss_and_gradients():
    """Before: transformers' per-utterance normalisation divided the constant bins of a silent clip by a zero standard
    deviation: NaN/inf features, then NaN logits, loss and gradients in training, with only a numpy warning."""
    processor = MambaASRProcessor.from_scratch()
    silence = np.zeros(16000, dtype=np.float32)
    raw = processor.feature_extractor._extract_fbank_features(silence)  # mel energies floored before the log
    np.testing.assert_array_equal(raw, np.float32(np.log(np.finfo(np.float32).eps)))
    batch = processor(audio=[silence, clips()[0]], text=["", "one"], sampling_rate=16000)
    features, mask = batch["input_features"], batch["speech_attention_mask"]
    assert torch.isfinite(features).all()
    assert torch.all(features[0][mask[0].bool()] == 0)  # a constant bin normalises to 0
    model = tiny_asr(processor, kernel_backend="reference").train()
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------------------------- pipeline


def test_pipeline_end_to_end_batched_chunked_and_bad_audio(unit_processor, tmp_path):
    model = tiny_asr(unit_processor)
    model.save_pretrained(tmp_path)
    unit_processor.save_pretrained(tmp_path)
    # per model, never global: the checkpoint names its pipeline (config.custom_pipelines); with mamba-zoo installed,
    # pipeline_class= builds it without remote code (trust_remote_code=True: test_pipelines.py). Without either,
    # transformers asks for the opt-in instead of silently taking its CTC route for this decoder-only model.
    assert json.loads((tmp_path / "config.json").read_text())["custom_pipelines"]["automatic-speech-recognition"][
        "impl"] == "pipeline_mamba_asr.MambaASRPipeline"
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline("automatic-speech-recognition", model=str(tmp_path))
    asr = pipeline("automatic-speech-recognition", model=str(tmp_path), pipeline_class=MambaASRPipeline)
    assert isinstance(asr, MambaASRPipeline) and asr.type == "seq2seq"
    assert isinstance(asr.asr_processor, MambaASRProcessor) and asr.asr_processor.speech_input == "units"
    audio = clips()
    expected = []
    for clip in audio:
        inputs = unit_processor(audio=clip, sampling_rate=16000)
        expected.append(unit_processor.batch_decode(model.generate(**inputs, max_new_tokens=6))[0])
    assert [asr(clip, max_new_tokens=6)["text"] for clip in audio] == expected
    assert [out["text"] for out in asr(audio, batch_size=3, max_new_tokens=6)] == expected  # padding-safe batching
    resampled = asr({"array": audio[0][::2].copy(), "sampling_rate": 8000}, max_new_tokens=6)
    assert isinstance(resampled["text"], str)
    # a stereo 8 kHz file, by path and as bytes: mixed down and resampled exactly as scipy does it by hand
    soundfile = pytest.importorskip("soundfile")
    from scipy.signal import resample_poly

    stereo = np.stack([audio[1][::2], 0.5 * audio[1][::2]], axis=1).astype(np.float32)
    path = tmp_path / "stereo_8k.wav"
    soundfile.write(path, stereo, 8000, subtype="FLOAT")
    by_hand = resample_poly(stereo.mean(axis=1), 2, 1).astype(np.float32)
    for source in (str(path), path.read_bytes()):
        np.testing.assert_allclose(asr._load_audio(source), by_hand, rtol=0, atol=1e-6)
    inputs = unit_processor(audio=by_hand, sampling_rate=16000)
    expected_file = unit_processor.batch_decode(model.generate(**inputs, max_new_tokens=6))[0]
    assert asr(str(path), max_new_tokens=6)["text"] == expected_file
    long = np.concatenate(audio * 3)
    chunked = asr(long, chunk_length_s=1.5, return_timestamps=True, max_new_tokens=4)
    assert len(chunked["chunks"]) >= 3
    spans = [c["timestamp"] for c in chunked["chunks"]]
    assert spans[0][0] == 0 and abs(spans[-1][1] - len(long) / 16000) < 1e-6
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no audio lost
    with pytest.raises(ValueError, match="NaN"):
        asr(np.full(16000, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="list of 1-D clips"):
        asr(np.zeros((16, 16000), dtype=np.float32))
    stereo_clip = np.stack([audio[0], audio[0]], axis=1)  # (samples, 2): mixed down, as the processor does
    assert asr(stereo_clip, max_new_tokens=6)["text"] == expected[0]


def test_pipeline_joint_ctc_decoding_equals_generate(unit_processor, tmp_path):
    """`ctc_weight=` reaches generate() through the pipeline, and a saved `ctc_decoding_weight` is its default."""
    model = tiny_asr(unit_processor, seed=2, ctc_loss_weight=0.3, ctc_decoding_weight=0.5)
    model.save_pretrained(tmp_path)
    unit_processor.save_pretrained(tmp_path)
    assert (tmp_path / "ctc_prefix_scoring.py").is_file()  # remote code carries the scorer with the model
    asr = pipeline("automatic-speech-recognition", model=str(tmp_path), pipeline_class=MambaASRPipeline)
    audio = clips(seed=3)
    for clip in audio:
        inputs = unit_processor(audio=clip, sampling_rate=16000)
        for weight in (0.0, 0.8):
            expected = unit_processor.batch_decode(model.generate(**inputs, max_new_tokens=6, num_beams=2,
                                                                  ctc_weight=weight))[0]
            assert asr(clip, max_new_tokens=6, num_beams=2, ctc_weight=weight)["text"] == expected
        default = unit_processor.batch_decode(model.generate(**inputs, max_new_tokens=6, ctc_weight=0.5))[0]
        assert asr(clip, max_new_tokens=6)["text"] == default


def test_pipeline_leaves_ctc_models_alone():
    """Other models get transformers' own pipeline class (nothing is registered globally)."""
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    config = Wav2Vec2Config(vocab_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=16, conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8),
                            num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)
    model = Wav2Vec2ForCTC(config).eval()
    import tempfile, os

    with tempfile.TemporaryDirectory() as folder:
        vocab = os.path.join(folder, "vocab.json")
        with open(vocab, "w") as f:
            json.dump({"<pad>": 0, "<unk>": 1, "|": 2, "a": 3, "b": 4, "c": 5, "d": 6, "e": 7}, f)
        tokenizer = Wav2Vec2CTCTokenizer(vocab)
    asr = pipeline("automatic-speech-recognition", model=model, tokenizer=tokenizer,
                   feature_extractor=Wav2Vec2FeatureExtractor())
    assert type(asr) is AutomaticSpeechRecognitionPipeline and asr.type == "ctc"
    assert isinstance(asr(clips()[0])["text"], str)


def test_remote_code_pipeline_loads_its_processor_without_prompting(unit_processor, tmp_path):
    """F: with trust_remote_code=True the pipeline must not load the processor without it (transformers then asks
    "Do you wish to run the custom code?" on stdin): a units checkpoint needs its saved processor (unit centroids)."""
    model = tiny_asr(unit_processor, kernel_backend="reference")
    model.save_pretrained(tmp_path / "ckpt")
    unit_processor.save_pretrained(tmp_path / "ckpt")
    audio = clips()[1]
    inputs = unit_processor(audio=audio, sampling_rate=16000)
    expected = unit_processor.batch_decode(model.generate(**inputs, max_new_tokens=6))[0]
    np.save(tmp_path / "audio.npy", audio)
    result = run_without_mamba_zoo(f"""
        import sys, numpy as np
        from transformers import pipeline
        sys.stdin = None  # a prompt would fail at once instead of waiting
        asr = pipeline("automatic-speech-recognition", model={str(tmp_path / 'ckpt')!r}, trust_remote_code=True)
        assert type(asr).__name__ == "MambaASRPipeline", type(asr)
        assert type(asr.asr_processor).__name__ == "MambaASRProcessor" and asr.asr_processor.speech_input == "units"
        text = asr(np.load({str(tmp_path / 'audio.npy')!r}), max_new_tokens=6)["text"]
        assert text == {expected!r}, (text, {expected!r})
    """, hf_home=str(tmp_path / "hf_home"))
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr


def test_pipeline_from_remote_code_without_mamba_zoo(tmp_path):
    processor = MambaASRProcessor.from_scratch()
    model = tiny_asr(processor, kernel_backend="reference")  # the subprocess then compiles no numba kernels
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    audio = clips()[0]
    expected = processor.batch_decode(model.generate(**processor(audio=audio, sampling_rate=16000), max_new_tokens=6))[0]
    np.save(tmp_path / "audio.npy", audio)
    run_without_mamba_zoo(f"""
        import numpy as np
        from transformers import pipeline
        asr = pipeline("automatic-speech-recognition", model={str(tmp_path / 'ckpt')!r}, trust_remote_code=True)
        assert type(asr).__name__ == "MambaASRPipeline" and asr.type == "seq2seq", type(asr)
        text = asr(np.load({str(tmp_path / 'audio.npy')!r}), max_new_tokens=6)["text"]
        assert text == {expected!r}, (text, {expected!r})
    """, hf_home=str(tmp_path / "hf_home"))
