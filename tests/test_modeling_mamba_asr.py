"""MambaDecoderOnlyASR (MADEON): layout, speech prefixing, padding, caching, generation, save/load, remote code."""

import json

import pytest
import torch

from mamba_zoo import MambaASRConfig, MambaASRModel, MambaDecoderOnlyASR, MambaZooCache
from remote_code_utils import run_without_mamba_zoo

VOCAB, UNIT_OFFSET, NUM_UNITS, MELS = 60, 40, 20, 20
VARIANTS = [(sp, mixer) for sp in ("none", "parallel", "serial") for mixer in ("mamba", "mamba2")]


def tiny_config(speech_prefix="parallel", mixer_type="mamba", speech_input="units", **overrides):
    speech = (dict(speech_input="units", num_units=NUM_UNITS, unit_token_offset=UNIT_OFFSET) if speech_input == "units"
              else dict(speech_input="features", num_mel_bins=MELS))
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, expand=2, state_size=8, mamba2_head_dim=16,
                  mamba2_chunk_size=8, speech_prefix=speech_prefix, mixer_type=mixer_type, tie_word_embeddings=False,
                  initializer_range=0.2, **speech)
    kwargs.update(overrides)
    return MambaASRConfig(**kwargs)


def tiny_model(*args, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = MambaDecoderOnlyASR(tiny_config(*args, **kwargs)).eval()
    if model.config.mixer_type == "mamba2":  # make the SSM decay matter in a short test sequence
        with torch.no_grad():
            for layer in model.model.layers:
                for name in ("A_log", "A_b_log"):
                    if hasattr(layer.mixer, name):
                        getattr(layer.mixer, name).copy_(torch.rand_like(getattr(layer.mixer, name)))
    return model


def speech_batch(speech_input="units", lengths=(12, 7, 9), seed=1):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    if speech_input == "units":
        speech = {"speech_ids": torch.randint(UNIT_OFFSET, VOCAB, (len(lengths), int(lengths.max())), generator=generator)}
    else:
        lengths = lengths * 4 + 3
        speech = {"input_features": torch.randn(len(lengths), int(lengths.max()), MELS, generator=generator)}
    mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).long()
    return speech, mask, lengths


def text_batch(batch, lengths=(6, 4, 5), seed=2):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, UNIT_OFFSET, (batch, max(lengths)), generator=generator)
    ids[:, 0] = 5
    lengths = torch.tensor(lengths)
    return ids, (torch.arange(max(lengths))[None] < lengths[:, None]).long(), lengths


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides,match", [
    (dict(speech_prefix="both"), "speech_prefix"),
    (dict(mixer_type="s4"), "mixer_type"),
    (dict(speech_input="units", num_units=0), "num_units"),
    (dict(num_units=30), "inside the vocabulary"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(use_bias=True), "use_bias"),
    (dict(generate_text_token_id=99), "generate_text_token_id"),
    (dict(ctc_loss_weight=1.5), "ctc_loss_weight"),
    (dict(ctc_upsample=0), "ctc_upsample"),
])
def test_config_rejects_bad_fields(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


# ---------------------------------------------------------------------------------------------- layout and padding


@pytest.mark.parametrize("speech_prefix,mixer_type", VARIANTS)
@pytest.mark.parametrize("speech_input", ["units", "features"])
def test_padding_never_changes_another_sample(speech_prefix, mixer_type, speech_input):
    """Batched (right-padded speech and text) logits equal each sample run alone without padding."""
    model = tiny_model(speech_prefix, mixer_type, speech_input)
    speech, speech_mask, speech_lengths = speech_batch(speech_input)
    ids, text_mask, text_lengths = text_batch(3)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=text_mask, speech_attention_mask=speech_mask, **speech).logits
        for b in range(3):
            alone = {k: v[b:b + 1, :speech_lengths[b]] for k, v in speech.items()}
            single = model(input_ids=ids[b:b + 1, :text_lengths[b]], **alone).logits
            torch.testing.assert_close(batched[b, :text_lengths[b]], single[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("speech_prefix", ["none", "parallel", "serial"])
def test_speech_prefix_is_bidirectional_and_text_is_causal(speech_prefix):
    """With SP, an early speech position sees later speech; without SP it does not. Text is always causal."""
    model = tiny_model(speech_prefix)
    speech, _, _ = speech_batch(lengths=(10,))
    ids, _, _ = text_batch(1, lengths=(6,))
    changed_speech = {"speech_ids": speech["speech_ids"].clone()}
    changed_speech["speech_ids"][0, -1] = UNIT_OFFSET + (int(speech["speech_ids"][0, -1]) - UNIT_OFFSET + 1) % NUM_UNITS
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True, **speech).hidden_states[-1]
        hidden_changed = model(input_ids=ids, output_hidden_states=True, **changed_speech).hidden_states[-1]
        early_speech_moved = (hidden[0, 2:5] - hidden_changed[0, 2:5]).abs().max() > 1e-4
        assert bool(early_speech_moved) == (speech_prefix != "none")
        later_text = ids.clone()
        later_text[0, 4] = 7 if int(ids[0, 4]) != 7 else 8
        logits = model(input_ids=ids, **speech).logits
        logits_changed = model(input_ids=later_text, **speech).logits
    torch.testing.assert_close(logits[:, :4], logits_changed[:, :4])
    assert (logits[:, 4:] - logits_changed[:, 4:]).abs().max() > 1e-4


def test_loss_is_next_token_cross_entropy_on_text_only():
    model = tiny_model()
    speech, speech_mask, _ = speech_batch()
    ids, text_mask, _ = text_batch(3)
    labels = ids.masked_fill(text_mask == 0, -100)
    labels[:, 0] = -100
    out = model(input_ids=ids, attention_mask=text_mask, speech_attention_mask=speech_mask, labels=labels, **speech)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1),
                                                 ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    assert out.logits.shape == (3, ids.shape[1], VOCAB)  # logits only for the text positions
    out.loss.backward()
    assert model.model.embeddings.weight.grad[UNIT_OFFSET:].abs().sum() > 0  # speech units get gradients
    assert not model.accepts_loss_kwargs


def _ctc_nll(log_probs: torch.Tensor, target: list[int], blank: int) -> float:
    """-log p(target | frames) by the CTC forward recursion over the blank-extended target, in float64 Python: the
    reference for torch's ctc_loss. log_probs `(T, V)`."""
    import math

    extended = [blank]
    for token in target:
        extended += [token, blank]
    alpha = [-math.inf] * len(extended)
    alpha[0] = float(log_probs[0, blank])
    if len(extended) > 1:
        alpha[1] = float(log_probs[0, extended[1]])

    def logsumexp(values):
        top = max(values)
        return top if top == -math.inf else top + math.log(sum(math.exp(v - top) for v in values))

    for t in range(1, log_probs.shape[0]):
        previous = alpha
        alpha = []
        for s, token in enumerate(extended):
            options = [previous[s]] + ([previous[s - 1]] if s >= 1 else [])
            if s >= 2 and token != blank and token != extended[s - 2]:
                options.append(previous[s - 2])
            alpha.append(logsumexp(options) + float(log_probs[t, token]))
    return -logsumexp(alpha[-2:] if len(extended) > 1 else alpha[-1:])


@pytest.mark.parametrize("speech_input", ["units", "features"])
def test_ctc_auxiliary_loss_spells_the_transcript_from_the_speech_prefix(speech_input):
    """loss = (1 - w) * CE + w * CTC, where CTC (checked against the plain forward recursion) scores the labels' text
    tokens (not <generatetext>, <eos> or padding) from `ctc_upsample` frames per speech state; its gradient reaches the
    speech prefix (embeddings or features, and the speech states only through the prefix)."""
    weight = 0.3
    model = tiny_model(speech_input=speech_input, ctc_loss_weight=weight, ctc_upsample=2, seed=3)
    speech, speech_mask, _ = speech_batch(speech_input, lengths=(12, 7, 9), seed=4)
    ids, text_mask, text_lengths = text_batch(3, seed=5)
    ids[torch.arange(3), text_lengths - 1] = model.config.eos_token_id
    labels = ids.masked_fill(text_mask == 0, -100)
    labels[:, 0] = -100
    if speech_input == "features":
        speech = {"input_features": speech["input_features"].clone().requires_grad_(True)}
    out = model(input_ids=ids, attention_mask=text_mask, speech_attention_mask=speech_mask, labels=labels, **speech)
    cross_entropy = model.loss_function(out.logits, labels)
    torch.testing.assert_close(out.loss, (1 - weight) * cross_entropy + weight * out.ctc_loss)

    speech_lengths = model.model(input_ids=ids, attention_mask=text_mask, speech_attention_mask=speech_mask,
                                 **speech).speech_lengths
    log_probs = torch.log_softmax(out.ctc_logits.detach().double(), -1)
    assert out.ctc_logits.shape == (3, 2 * int(speech_lengths.max()), VOCAB)
    expected = []
    for b in range(3):
        target = [int(t) for t in ids[b, 1:text_lengths[b] - 1]]  # between <generatetext> and <eos>
        frames = 2 * int(speech_lengths[b])
        expected.append(_ctc_nll(log_probs[b, :frames], target, model.config.pad_token_id) / len(target))
    torch.testing.assert_close(out.ctc_loss.double(), torch.tensor(sum(expected) / 3, dtype=torch.float64),
                               rtol=1e-4, atol=1e-5)

    out.ctc_loss.backward()
    if speech_input == "units":
        assert model.model.embeddings.weight.grad[UNIT_OFFSET:].abs().sum() > 0
    else:
        grad = speech["input_features"].grad
        for b, length in enumerate(speech_mask.sum(-1)):
            assert grad[b, :length].abs().sum() > 0 and grad[b, length:].abs().sum() == 0  # not through padding
    assert model.ctc_head.weight.grad.abs().sum() > 0
    assert model.lm_head.weight.grad is None or model.lm_head.weight.grad.abs().sum() == 0  # CTC skips the LM head


def test_without_ctc_weight_there_is_no_ctc_head_and_the_loss_is_cross_entropy():
    model = tiny_model()
    assert model.ctc_head is None and not any("ctc" in name for name in model.state_dict())
    speech, speech_mask, _ = speech_batch()
    ids, text_mask, _ = text_batch(3)
    labels = ids.masked_fill(text_mask == 0, -100)
    out = model(input_ids=ids, attention_mask=text_mask, speech_attention_mask=speech_mask, labels=labels, **speech)
    assert out.ctc_loss is None and out.ctc_logits is None
    torch.testing.assert_close(out.loss, model.loss_function(out.logits, labels))


def test_speech_embedding_masking_only_in_training():
    model = tiny_model(speech_mask_prob=0.5, speech_mask_length=3)
    speech, speech_mask, _ = speech_batch()
    ids, text_mask, _ = text_batch(3)
    inputs = dict(input_ids=ids, attention_mask=text_mask, speech_attention_mask=speech_mask, **speech)
    with torch.no_grad():
        first, second = model(**inputs).logits, model(**inputs).logits
        torch.testing.assert_close(first, second)
        model.train()
        torch.manual_seed(3)
        masked = model(**inputs).logits
    assert (masked - first).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------- caching, generation


@pytest.mark.parametrize("speech_prefix,mixer_type", VARIANTS)
def test_cached_stepping_equals_full_forward(speech_prefix, mixer_type):
    """Prefill speech + `<generatetext>` (samples of different lengths), then step text tokens one at a time."""
    model = tiny_model(speech_prefix, mixer_type)
    speech, speech_mask, _ = speech_batch()
    ids, _, _ = text_batch(3, lengths=(5, 5, 5))
    with torch.no_grad():
        full = model(input_ids=ids, speech_attention_mask=speech_mask, **speech).logits
        cache = model.make_cache()
        steps = [model(input_ids=ids[:, :1], speech_attention_mask=speech_mask, cache=cache, use_cache=True, **speech).logits]
        for t in range(1, ids.shape[1]):
            steps.append(model(input_ids=ids[:, t:t + 1], cache=cache).logits)
    assert isinstance(cache, MambaZooCache)
    assert cache.states_per_layer == [2 if speech_prefix == "parallel" else 1] * 3
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("speech_prefix,mixer_type,num_beams", [
    ("parallel", "mamba", 1), ("parallel", "mamba", 3), ("serial", "mamba2", 1), ("none", "mamba2", 3),
])
def test_cached_and_uncached_generation_give_identical_tokens(speech_prefix, mixer_type, num_beams):
    model = tiny_model(speech_prefix, mixer_type, speech_input="features")
    speech, speech_mask, _ = speech_batch("features")
    kwargs = dict(speech_attention_mask=speech_mask, max_new_tokens=8, num_beams=num_beams, do_sample=False,
                  eos_token_id=None, **speech)
    with torch.no_grad():
        cached = model.generate(**kwargs)
        uncached = model.generate(use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert cached.shape == (3, 9) and (cached[:, 0] == model.config.generate_text_token_id).all()
    assert len(set(cached[:, 1:].flatten().tolist())) > 1  # a non-degenerate decoding


def test_generate_rejects_missing_speech_and_step_with_speech():
    model = tiny_model()
    with pytest.raises(ValueError, match="speech prefix"):
        model.generate(max_new_tokens=2)
    speech, _, _ = speech_batch(lengths=(4,))
    cache = model.make_cache()
    with torch.no_grad():
        model(input_ids=torch.tensor([[5]]), cache=cache, use_cache=True, **speech)
        with pytest.raises(ValueError, match="already holds"):
            model(input_ids=torch.tensor([[7]]), cache=cache, **speech)
    with pytest.raises(ValueError, match="input_features"):
        model(input_ids=torch.tensor([[5]]), input_features=torch.randn(1, 20, MELS))


def test_generate_without_a_length_is_not_cut_at_transformers_20_tokens(tmp_path, monkeypatch):
    """A transcript is characters: generate() with no max_new_tokens / max_length (call or generation config) runs up
    to default_max_new_tokens, not transformers' 20 tokens in all; anything the caller or the saved generation config
    says wins, and so does a saved checkpoint's own setting."""
    model = tiny_model(seed=5)
    speech, mask, _ = speech_batch(lengths=(6,))
    monkeypatch.setattr(MambaDecoderOnlyASR, "default_max_new_tokens", 30)
    kwargs = dict(speech_attention_mask=mask, eos_token_id=None, do_sample=False, **speech)
    assert model.generate(**kwargs).shape == (1, 31)  # <generatetext> + 30 (transformers alone: 20 in all)
    assert model.generate(**kwargs, max_new_tokens=4).shape == (1, 5)
    assert model.generate(**kwargs, max_length=9).shape == (1, 9)
    model.generation_config.max_new_tokens = 12
    model.save_pretrained(tmp_path)
    loaded = MambaDecoderOnlyASR.from_pretrained(tmp_path).eval()
    assert loaded.generate(**kwargs).shape == (1, 13)


# ---------------------------------------------------------------------------------------------- contracts


def test_save_load_round_trip_tuple_outputs_and_hidden_states(tmp_path):
    model = tiny_model("serial", "mamba2", "features")
    speech, speech_mask, _ = speech_batch("features")
    ids, text_mask, _ = text_batch(3)
    inputs = dict(input_ids=ids, attention_mask=text_mask, speech_attention_mask=speech_mask, **speech)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "mamba_asr"
    assert config["custom_pipelines"]["automatic-speech-recognition"]["impl"] == "pipeline_mamba_asr.MambaASRPipeline"
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "pipeline_mamba_asr.py").exists()
    # the pipeline's relative imports travel with it (processing -> audio_utils), even without a saved processor
    assert (tmp_path / "processing_mamba_asr.py").exists() and (tmp_path / "audio_utils.py").exists()
    loaded = MambaDecoderOnlyASR.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = model(**inputs)
        got = loaded(**inputs, output_hidden_states=True)
        as_tuple = loaded(**inputs, return_dict=False)
    torch.testing.assert_close(got.logits, expected.logits)
    torch.testing.assert_close(as_tuple[0], expected.logits)
    assert len(got.hidden_states) == model.config.num_hidden_layers + 1
    base = MambaASRModel.from_pretrained(tmp_path)  # the backbone alone loads from the same checkpoint
    assert base.config.num_hidden_layers == 3


def test_tied_embeddings_by_default():
    config = tiny_config(tie_word_embeddings=True)
    model = MambaDecoderOnlyASR(config)
    assert model.lm_head.weight.data_ptr() == model.model.embeddings.weight.data_ptr()


def test_gradient_checkpointing_gives_the_same_gradients():
    speech, speech_mask, _ = speech_batch()
    ids, text_mask, _ = text_batch(3)
    labels = ids.masked_fill(text_mask == 0, -100)
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("parallel").train()
        if checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
            assert model.model.layers[0].gradient_checkpointing
        model(input_ids=ids, attention_mask=text_mask, speech_attention_mask=speech_mask, labels=labels, **speech).loss.backward()
        grads.append(model.model.layers[1].mixer.A_b_log.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_remote_code_load_without_mamba_zoo(tmp_path):
    model = tiny_model("parallel", "mamba", "features")
    model.save_pretrained(tmp_path / "ckpt")
    speech, speech_mask, _ = speech_batch("features", lengths=(6,))
    ids, _, _ = text_batch(1, lengths=(4,))
    torch.save({"speech": speech["input_features"], "ids": ids}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(input_ids=ids, **speech).logits
        expected_tokens = model.generate(**speech, max_new_tokens=4, eos_token_id=None)
    torch.save({"logits": expected, "tokens": expected_tokens}, tmp_path / "expected.pt")
    run_without_mamba_zoo(f"""
        import torch
        from transformers import AutoModelForSpeechSeq2Seq
        model = AutoModelForSpeechSeq2Seq.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "MambaDecoderOnlyASR", type(model)
        assert not type(model).__module__.startswith("mamba_zoo")
        inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
        expected = torch.load({str(tmp_path / 'expected.pt')!r})
        with torch.no_grad():
            logits = model(input_ids=inputs["ids"], input_features=inputs["speech"]).logits
            tokens = model.generate(input_features=inputs["speech"], max_new_tokens=4, eos_token_id=None)
        torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=1e-4)
        assert torch.equal(tokens, expected["tokens"])
    """, hf_home=str(tmp_path / "hf_home"))
