"""Tests for MambaForCTC: config validation, padding equivalence, save/load, CTC loss conventions, gradient
checkpointing, Trainer compatibility, the ASR pipeline (chunking, timestamps) and remote-code loading."""

import math

import numpy as np
import pytest
import torch

from mamba_zoo import MambaCTCConfig, MambaCTCModel, MambaCTCProcessor, MambaForCTC

from remote_code_utils import run_without_mamba_zoo


TRANSCRIPTS = ["zero one two three four five six seven eight nine"]


def tiny_config(**kwargs) -> MambaCTCConfig:
    defaults = dict(
        vocab_size=16, num_mel_bins=80, hidden_size=32, num_hidden_layers=2, subsampling_conv_channels=8,
        intermediate_size=64, state_size=8, conv_module_kernel_size=7, mamba2_head_dim=16, mamba2_chunk_size=8,
        kernel_backend="reference",  # tiny sequences: the plain PyTorch scan is fastest; one test uses the CPU kernel
    )
    defaults.update(kwargs)
    return MambaCTCConfig(**defaults)


def tiny_model(seed=0, **kwargs) -> MambaForCTC:
    torch.manual_seed(seed)
    model = MambaForCTC(tiny_config(**kwargs))
    with torch.no_grad():  # move off the init constants so that parity checks cannot pass by accident
        model.lm_head.weight.normal_(0, 0.5)
    return model.eval()


# ------------------------------------------------------------------------------------------------ config


def test_config_defaults_and_logit_ratio():
    config = MambaCTCConfig()
    assert config.model_type == "mamba_ctc"
    assert config.inputs_to_logits_ratio == 640  # hop 160 x 4x subsampling
    assert config.time_step_rank == math.ceil(config.hidden_size / 16)
    assert config.pad_token_id == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(block_type="transformer"), "block_type"),
    (dict(mixer_type="s4"), "mixer_type"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(conv_module_kernel_size=4), "odd"),
    (dict(ctc_loss_reduction="avg"), "ctc_loss_reduction"),
    (dict(vocab_size=8, pad_token_id=8), "pad_token_id"),
    (dict(mixer_type="mamba2", hidden_size=40, mamba2_head_dim=32), "divisible"),
    (dict(final_dropout=1.0), "final_dropout"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MambaCTCConfig(**kwargs)


# ------------------------------------------------------------------------------------------------ model


@pytest.mark.parametrize("kwargs", [dict(kernel_backend="auto"), dict(block_type="conmamba"), dict(mixer_type="mamba2")],
                         ids=["mamba-fused-cpu-kernel", "conmamba", "mamba2"])
def test_padding_never_changes_another_sample(kwargs):
    model = tiny_model(**kwargs)
    lengths = [45, 29, 8]
    features = [torch.randn(n, 80) for n in lengths]
    batch = torch.full((3, 45, 80), 50.0)  # garbage in the padding
    mask = torch.zeros(3, 45, dtype=torch.long)
    for i, f in enumerate(features):
        batch[i, : len(f)], mask[i, : len(f)] = f, 1
    with torch.no_grad():
        logits = model(batch, attention_mask=mask).logits
        assert logits.shape == (3, math.ceil(45 / 4), 16)
        for i, f in enumerate(features):
            single = model(f[None]).logits[0]
            assert single.shape[0] == math.ceil(len(f) / 4)
            torch.testing.assert_close(logits[i, : single.shape[0]], single, atol=1e-5, rtol=1e-4)
            # padded frames predict the blank, so greedy decoding of the batch equals decoding alone
            assert torch.all(logits[i, single.shape[0]:].argmax(-1) == model.config.pad_token_id)


def test_outputs_tuple_and_hidden_states():
    model = tiny_model()
    x = torch.randn(2, 20, 80)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        as_tuple = model(x, output_hidden_states=True, return_dict=False)
        base = model.model(x, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (2, 5, 32) for h in out.hidden_states)
    assert torch.equal(as_tuple[0], out.logits) and len(as_tuple[1]) == len(out.hidden_states)
    assert base.last_hidden_state.shape == (2, 5, 32)
    with pytest.raises(ValueError, match="num_mel_bins"):
        model(torch.randn(2, 20, 40))


def test_init_weights_follow_mamba_ssm():
    model = tiny_model()
    mixer = model.model.layers[0].mixer
    expected_A = torch.log(torch.arange(1, 9, dtype=torch.float32)).expand_as(mixer.A_log)
    torch.testing.assert_close(mixer.A_log.data, expected_A)
    torch.testing.assert_close(mixer.A_b_log.data, expected_A)
    assert torch.all(mixer.D == 1) and torch.all(mixer.D_b == 1)
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6


@pytest.mark.parametrize("block_type", ["mamba", "conmamba"])
def test_save_load_identical_outputs(tmp_path, block_type):
    model = tiny_model(block_type=block_type)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    from transformers import AutoModelForCTC

    loaded = AutoModelForCTC.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MambaForCTC)
    x = torch.randn(2, 33, 80)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_ctc_loss_conventions():
    model = tiny_model()
    x = torch.randn(2, 40, 80)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 24:] = 0
    labels = torch.tensor([[3, 4, 5, -100], [6, 7, 8, 9]])
    out = model(x, attention_mask=mask, labels=labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)

    # the loss is torch's CTC with blank = pad_token_id over the valid frames, mean reduction
    log_probs = out.logits.log_softmax(-1).transpose(0, 1)
    expected = torch.nn.functional.ctc_loss(
        log_probs, torch.tensor([3, 4, 5, 6, 7, 8, 9]), torch.tensor([10, 6]), torch.tensor([3, 4]), blank=0,
        reduction="mean", zero_infinity=True,
    )
    torch.testing.assert_close(out.loss, expected)

    model.config.ctc_loss_reduction = "none"
    assert model(x, attention_mask=mask, labels=labels).loss.shape == (2,)
    with pytest.raises(ValueError, match="vocab_size"):
        model(x, labels=torch.tensor([[16, 1], [1, 1]]))


def test_ctc_loss_finite_on_too_short_inputs():
    """8 frames -> 2 logit frames cannot emit 6 labels: infinite loss, zeroed with ctc_zero_infinity (off by default,
    as Wav2Vec2; recipes that want it set it)."""
    model = tiny_model(ctc_zero_infinity=True)
    model.train()
    x = torch.randn(1, 8, 80, requires_grad=True)
    labels = torch.tensor([[3, 4, 5, 6, 7, 8]])
    out = model(x, labels=labels)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.config.ctc_zero_infinity = False
    assert torch.isinf(model(x, labels=labels).loss)


def test_gradient_checkpointing_matches():
    model = tiny_model(block_type="conmamba", hidden_dropout=0.0, final_dropout=0.0, apply_spec_augment=False)
    model.train()
    x = torch.randn(2, 24, 80)
    labels = torch.tensor([[3, 4], [5, 6]])
    model(x, labels=labels).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    model(x, labels=labels).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_spec_augment_only_in_training():
    model = tiny_model(mask_time_prob=0.5, mask_time_length=2, mask_feature_prob=0.3, mask_feature_length=4)
    x = torch.randn(1, 40, 80)
    model.train()
    masked = model.model._mask_input_features(x, None)
    assert (masked == 0).any() and not torch.equal(masked, x)
    model.eval()
    assert torch.equal(model.model._mask_input_features(x, None), x)


def test_trainer_compatibility():
    assert MambaForCTC.accepts_loss_kwargs is False
    assert MambaForCTC.main_input_name == "input_features"
    model = tiny_model()
    model.freeze_feature_encoder()
    assert not any(p.requires_grad for p in model.model.subsampling.parameters())


def test_auto_classes():
    from transformers import AutoConfig, AutoModel, AutoModelForCTC

    kwargs = {k: v for k, v in tiny_config().to_dict().items() if k not in ("model_type", "transformers_version")}
    config = AutoConfig.for_model("mamba_ctc", **kwargs)
    assert isinstance(config, MambaCTCConfig)
    assert isinstance(AutoModel.from_config(config), MambaCTCModel)
    assert isinstance(AutoModelForCTC.from_config(config), MambaForCTC)


# ------------------------------------------------------------------------------------------------ pipeline


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("mamba-ctc")
    processor = MambaCTCProcessor.from_transcripts(TRANSCRIPTS)
    # the reference scan keeps the remote-code subprocess from compiling numba kernels (its copy has no cache)
    model = tiny_model(vocab_size=len(processor.tokenizer), kernel_backend="reference")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path, model, processor


def test_pipeline_transcribes_and_chunks(saved_checkpoint):
    from transformers import pipeline

    path, model, processor = saved_checkpoint
    from mamba_zoo import MambaASRPipeline

    # with mamba-zoo installed, the checkpoint's pipeline class is passed explicitly (or: trust_remote_code=True)
    asr = pipeline("automatic-speech-recognition", model=str(path), pipeline_class=MambaASRPipeline)
    assert asr.type == "ctc"
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(16000 * 4) * 0.1).astype(np.float32)

    result = asr({"raw": audio, "sampling_rate": 16000})
    inputs = processor(audio=audio, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ids = model(**inputs).logits.argmax(-1)
    assert result["text"] == processor.batch_decode(ids)[0]

    # 1 s chunks, 0.25 s strides: every chunk is a multiple of inputs_to_logits_ratio and the stitched logit count
    # equals the unchunked one, so the decoded output has the same number of characters' slots
    chunked = asr(audio, chunk_length_s=1.0, stride_length_s=0.25)
    assert isinstance(chunked["text"], str) and len(chunked["text"]) > 0

    words = asr(audio, return_timestamps="word")["chunks"]
    chars = asr(audio, return_timestamps="char")["chunks"]
    assert len(chars) >= len(words) > 0
    for chunk in chars:
        start, end = chunk["timestamp"]
        assert 0 <= start <= end <= 4.0 + 0.04
        # timestamps are multiples of one logit frame (640 samples = 40 ms)
        assert abs(start / 0.04 - round(start / 0.04)) < 1e-6


def test_chunked_pipeline_equals_unchunked_on_identity_like_model(saved_checkpoint):
    """Stitching is exact when the model's per-frame output does not depend on context: a model whose logits come
    from the subsampling only (no Mamba layers) must give the same tokens chunked and unchunked, except where the
    per-chunk feature normalisation changes them; here normalisation is off to test the stitching alone."""
    from transformers import pipeline

    path, _, processor = saved_checkpoint
    torch.manual_seed(1)
    model = MambaForCTC(tiny_config(vocab_size=len(processor.tokenizer), num_hidden_layers=1)).eval()
    model.model.layers[0].mixer.out_proj.weight.data.zero_()  # the block adds nothing: per-frame model
    processor.feature_extractor.do_normalize = False
    try:
        asr = pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
                       feature_extractor=processor.feature_extractor)
        audio = (np.random.default_rng(1).standard_normal(16000 * 6) * 0.1).astype(np.float32)
        with torch.no_grad():
            full = model(**processor(audio=audio, sampling_rate=16000, return_tensors="pt")).logits.argmax(-1)[0]
        expected = processor.decode(full)
        assert asr(audio, chunk_length_s=2.0, stride_length_s=0.5)["text"] == expected
    finally:
        processor.feature_extractor.do_normalize = True


def test_beam_search_with_pyctcdecode(saved_checkpoint):
    pytest.importorskip("pyctcdecode")
    _, _, processor = saved_checkpoint
    vocab = processor.tokenizer.get_vocab()
    # peaked logits: "one two" with blanks between repeats
    text_ids = [vocab[c] for c in "one|two"]
    frames = []
    for token in text_ids:
        frames += [token, 0]
    logits = torch.full((1, len(frames), len(vocab)), -10.0)
    logits[0, torch.arange(len(frames)), torch.tensor(frames)] = 10.0
    assert processor.batch_decode(logits.argmax(-1))[0] == "one two"
    assert processor.decode_beams(logits, beam_width=4) == ["one two"]


def test_pipeline_with_beam_decoder(saved_checkpoint):
    pytest.importorskip("pyctcdecode")
    from transformers import pipeline

    path, model, processor = saved_checkpoint
    from mamba_zoo import MambaASRPipeline

    asr = pipeline("automatic-speech-recognition", model=str(path), decoder=processor.build_beam_decoder(),
                   pipeline_class=MambaASRPipeline)
    assert asr.type == "ctc_with_lm"
    audio = (np.random.default_rng(2).standard_normal(16000) * 0.1).astype(np.float32)
    assert isinstance(asr(audio)["text"], str)


def test_remote_code_pipeline_without_mamba_zoo(saved_checkpoint, tmp_path):
    path, model, processor = saved_checkpoint
    audio = (np.random.default_rng(3).standard_normal(16000 * 2) * 0.1).astype(np.float32)
    np.save(tmp_path / "audio.npy", audio)
    with torch.no_grad():
        expected = model(**processor(audio=audio, sampling_rate=16000, return_tensors="pt")).logits
    torch.save(expected, tmp_path / "expected.pt")
    run_without_mamba_zoo(
        f"""
        import numpy as np, torch
        from transformers import AutoModelForCTC, AutoProcessor, pipeline
        model = AutoModelForCTC.from_pretrained({str(path)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        processor = AutoProcessor.from_pretrained({str(path)!r}, trust_remote_code=True)
        audio = np.load({str(tmp_path / 'audio.npy')!r})
        with torch.no_grad():
            logits = model(**processor(audio=audio, sampling_rate=16000, return_tensors="pt")).logits
        torch.testing.assert_close(logits, torch.load({str(tmp_path / 'expected.pt')!r}), atol=1e-5, rtol=1e-4)
        asr = pipeline("automatic-speech-recognition", model={str(path)!r}, trust_remote_code=True)
        print(asr(audio, chunk_length_s=1.0, stride_length_s=0.2)["text"])
        """,
        hf_home=str(tmp_path / "hf_home"),
    )


def test_lora_trains_and_merges():
    peft = pytest.importorskip("peft")
    model = tiny_model(kernel_backend="reference")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["in_proj", "out_proj", "x_proj"],
                                                      modules_to_save=["lm_head"]))
    x, labels = torch.randn(2, 40, 80), torch.tensor([[3, 4, 5], [6, 7, -100]])
    lora.train()
    lora(input_features=x, labels=labels).loss.backward()
    assert any(p.grad is not None for n, p in lora.named_parameters() if "lora_A" in n)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # make the adapters matter
    lora.eval()
    with torch.no_grad():
        adapted = lora(input_features=x).logits
        merged = lora.merge_and_unload()(x).logits
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("num_subsampling_layers", [2, 3])
def test_long_inputs_run_the_subsampler_in_time_blocks(monkeypatch, num_subsampling_layers):
    """Without gradients a long unpadded input goes through the conv subsampler a block of output frames at a time
    (the wide first-layer activations stay O(block)): same encoder output as one pass, for frame counts that leave
    partial blocks and odd lengths at every layer; padded batches and training keep the one-pass path."""
    from mamba_zoo import modeling_mamba_ctc

    torch.manual_seed(num_subsampling_layers)
    config = MambaCTCConfig(vocab_size=16, hidden_size=32, num_hidden_layers=1, num_mel_bins=20,
                            num_subsampling_layers=num_subsampling_layers)
    model = MambaForCTC(config).eval()
    calls = []
    original = modeling_mamba_ctc.MambaCTCSubsampling._forward_in_time_blocks
    monkeypatch.setattr(modeling_mamba_ctc.MambaCTCSubsampling, "_forward_in_time_blocks",
                        lambda self, x: calls.append(x.shape) or original(self, x))
    for frames in (203, 257):
        features = torch.randn(1, frames, 20)
        with torch.no_grad():
            one_pass = model(input_features=features).logits
            monkeypatch.setattr(modeling_mamba_ctc, "SUBSAMPLING_BLOCK_OUTPUTS", 5)
            blocked = model(input_features=features).logits
            padded = model(input_features=torch.cat([features, features]),
                           attention_mask=(torch.arange(frames)[None] < torch.tensor([[frames], [frames - 50]])).long())
            monkeypatch.setattr(modeling_mamba_ctc, "SUBSAMPLING_BLOCK_OUTPUTS", 512)
        torch.testing.assert_close(blocked, one_pass, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(padded.logits[:1], one_pass, rtol=1e-5, atol=1e-5)
    assert len(calls) == 2  # the blocked calls only, never the padded batch
    model.train()
    monkeypatch.setattr(modeling_mamba_ctc, "SUBSAMPLING_BLOCK_OUTPUTS", 5)
    model(input_features=torch.randn(1, 203, 20)).logits.sum().backward()  # training: the one-pass path
    assert len(calls) == 2
