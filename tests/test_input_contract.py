"""The input contract of every family (issue 17): bad input is a clear ValueError/TypeError that names the problem and
the fix (never a stack trace from inside torch, never a silently wrong answer), and valid input of another precision
gives the float32 answer.

Padding masks (`sequence_utils.check_attention_mask`, one helper for all): the shape of the input, 0/1 values, no
empty row, right padding (BlackMamba: left padding too). Token ids inside the vocabulary. Floating features cast to
the model's dtype, integer features a TypeError. Plus the loss keywords (`shift_labels`), the CTC label and
`ctc_zero_infinity` conventions, `input_values` for CTC, construction on the meta device, SSAST's discriminative
accuracy and the deprecation warning of the cache argument's old names.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from mamba_zoo import (
    BlackMambaConfig,
    BlackMambaForCausalLM,
    MambaASRConfig,
    MambaCTCConfig,
    MambaDecoderOnlyASR,
    MambaForCTC,
    MambaMixer,
    SSAMBAConfig,
    SSAMBAForAudioClassification,
    SSAMBAForPreTraining,
)
from mamba_zoo.mamba_cache import MambaZooCache
from mamba_zoo.modeling_ssamba import discriminative_accuracy
from mamba_zoo.sequence_utils import check_attention_mask, check_token_ids, floating_input, mask_padding
from zoo_cases import CASES


def right_mask(lengths, length):
    return (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()


def left_mask(lengths, length):
    return right_mask(lengths, length).flip(-1)


# ------------------------------------------------------------------------------------------------ tiny models


def _ssamba_config(**overrides):
    return SSAMBAConfig(hidden_size=32, num_hidden_layers=2, num_mel_bins=32, max_length=48, patch_size=8,
                        frequency_stride=8, time_stride=8, drop_path_rate=0.0, **overrides)


def ssamba():
    torch.manual_seed(0)
    return SSAMBAForAudioClassification(_ssamba_config(num_labels=3)).eval()


def ssamba_pretraining():
    torch.manual_seed(0)
    return SSAMBAForPreTraining(_ssamba_config(mask_patch_count=6)).eval()


def ctc(**overrides):
    torch.manual_seed(0)
    kwargs = dict(vocab_size=16, num_mel_bins=80, hidden_size=32, num_hidden_layers=2, subsampling_conv_channels=8,
                  intermediate_size=64, state_size=8, apply_spec_augment=False, hidden_dropout=0.0, final_dropout=0.0)
    kwargs.update(overrides)
    return MambaForCTC(MambaCTCConfig(**kwargs)).eval()


def madeon(speech_input="units"):
    torch.manual_seed(0)
    speech = (dict(speech_input="units", num_units=20, unit_token_offset=40) if speech_input == "units"
              else dict(speech_input="features", num_units=0, unit_token_offset=0, num_mel_bins=20))
    config = MambaASRConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, expand=2, state_size=8,
                            speech_prefix="parallel", **speech)
    return MambaDecoderOnlyASR(config).eval()


def blackmamba():
    torch.manual_seed(0)
    config = BlackMambaConfig(vocab_size=61, hidden_size=32, num_hidden_layers=4, state_size=8, ffn_hidden_size=40,
                              num_experts=4, pad_token_id=1, bos_token_id=0, eos_token_id=0)
    return BlackMambaForCausalLM(config).eval()


def madeon_inputs(speech_input="units"):
    g = torch.Generator().manual_seed(1)
    text = torch.randint(6, 40, (2, 5), generator=g)
    text[:, 0] = 5
    inputs = {"input_ids": text, "attention_mask": right_mask([5, 3], 5)}
    if speech_input == "units":
        inputs["speech_ids"] = torch.randint(40, 60, (2, 9), generator=g)
        inputs["speech_attention_mask"] = right_mask([9, 6], 9)
    else:
        inputs["input_features"] = torch.randn(2, 24, 20, generator=g)
        inputs["speech_attention_mask"] = right_mask([24, 17], 24)
    return inputs


# One entry per (family, mask argument): build(model) -> (model, inputs without the mask, mask name, (batch, length)).
def _ssamba_case():
    return ssamba(), {"input_values": torch.randn(2, 48, 32)}, "attention_mask", (2, 48)


def _ctc_case():
    return ctc(), {"input_features": torch.randn(2, 40, 80)}, "attention_mask", (2, 40)


def _madeon_text_case():
    inputs = madeon_inputs()
    del inputs["attention_mask"]
    return madeon(), inputs, "attention_mask", (2, 5)


def _madeon_units_case():
    inputs = madeon_inputs()
    del inputs["speech_attention_mask"]
    return madeon(), inputs, "speech_attention_mask", (2, 9)


def _madeon_features_case():
    inputs = madeon_inputs("features")
    del inputs["speech_attention_mask"]
    return madeon("features"), inputs, "speech_attention_mask", (2, 24)


def _blackmamba_case():
    return blackmamba(), {"input_ids": torch.randint(2, 61, (2, 11)), "use_cache": False}, "attention_mask", (2, 11)


MASK_CASES = {
    "ssamba": _ssamba_case,
    "ctc": _ctc_case,
    "madeon-text": _madeon_text_case,
    "madeon-speech-units": _madeon_units_case,
    "madeon-speech-features": _madeon_features_case,
    "blackmamba": _blackmamba_case,
}
RIGHT_PADDING_ONLY = [name for name in MASK_CASES if name != "blackmamba"]


# ------------------------------------------------------------------------------------------------ 1. attention masks


@pytest.mark.parametrize("mask,match", [
    (torch.ones(2, 7), r"shape \(batch, length\) = \(2, 8\).*\(2, 7\)"),
    (torch.ones(8), r"shape \(batch, length\) = \(2, 8\)"),
    (torch.tensor([[1.0] * 8, [1.0] * 4 + [0.5] * 4]), "binary"),
    (torch.tensor([[1] * 8, [2] * 8]), "binary"),
    (torch.tensor([[1] * 8, [0] * 8]), "all-zero rows \\[1\\]"),
    (torch.tensor([[1] * 8, [0] * 3 + [1] * 5]), "left-padded.*pad on the right"),
    (torch.tensor([[1] * 8, [1, 1, 0, 1, 1, 0, 0, 0]]), "between real positions"),
])
def test_check_attention_mask_rejects(mask, match):
    with pytest.raises(ValueError, match=match):
        check_attention_mask(mask, 2, 8)


def test_check_attention_mask_accepts():
    for mask in (right_mask([8, 3], 8), right_mask([8, 3], 8).bool(), right_mask([8, 3], 8).float(),
                 torch.ones(2, 8, dtype=torch.int32)):
        assert check_attention_mask(mask, 2, 8) is mask
    assert check_attention_mask(None, 2, 8) is None
    assert check_attention_mask(left_mask([8, 3], 8), 2, 8, allow_left_padding=True) is not None
    with pytest.raises(TypeError, match="torch.Tensor"):
        check_attention_mask([[1, 1]], 1, 2)


def test_mask_padding_rejects_a_mask_of_another_length():
    """The layer-level helper no longer returns its input unchanged when the mask does not fit."""
    with pytest.raises(ValueError, match=r"\(batch, L=6\)"):
        mask_padding(torch.randn(2, 6, 4), torch.ones(2, 5))
    mixer = MambaMixer(16, d_state=4, layer_idx=0).eval()
    with pytest.raises(ValueError, match="attention_mask"):
        mixer(torch.randn(2, 6, 16), attention_mask=torch.ones(2, 3))


@pytest.mark.parametrize("name", list(MASK_CASES))
def test_mask_of_the_wrong_length_raises(name):
    model, inputs, key, (batch, length) = MASK_CASES[name]()
    for bad in (torch.ones(batch, length - 1, dtype=torch.long), torch.ones(batch, length + 3, dtype=torch.long)):
        with pytest.raises(ValueError, match=rf"{key} must have shape \(batch, length\) = \({batch}, {length}\)"):
            model(**inputs, **{key: bad})


def test_blackmamba_short_mask_is_no_longer_silently_ignored():
    model, inputs, _, _ = _blackmamba_case()
    with torch.no_grad(), pytest.raises(ValueError, match="shape"):
        model(**inputs, attention_mask=right_mask([10, 6], 10))


def test_ctc_50_frame_mask_on_100_frames_raises():
    with pytest.raises(ValueError, match=r"\(2, 100\).*\(2, 50\)"):
        ctc()(torch.randn(2, 100, 80), attention_mask=torch.ones(2, 50, dtype=torch.long))


@pytest.mark.parametrize("name", list(MASK_CASES))
def test_non_binary_mask_raises(name):
    model, inputs, key, (batch, length) = MASK_CASES[name]()
    mask = torch.ones(batch, length)
    mask[1, -2:] = 0.5
    with pytest.raises(ValueError, match=f"{key} must be binary"):
        model(**inputs, **{key: mask})


@pytest.mark.parametrize("name", list(MASK_CASES))
def test_all_zero_mask_row_raises(name):
    model, inputs, key, (batch, length) = MASK_CASES[name]()
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1] = 0
    with pytest.raises(ValueError, match=rf"{key} has all-zero rows \[1\].*Remove empty samples"):
        model(**inputs, **{key: mask})


def test_ctc_empty_sample_is_not_a_zero_loss():
    model = ctc(ctc_zero_infinity=True)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1] = 0
    with pytest.raises(ValueError, match="all-zero rows"):
        model(torch.randn(2, 40, 80), attention_mask=mask, labels=torch.tensor([[3, 4], [5, 6]]))


@pytest.mark.parametrize("name", RIGHT_PADDING_ONLY)
def test_left_padding_raises_where_only_right_padding_is_right(name):
    model, inputs, key, (batch, length) = MASK_CASES[name]()
    with pytest.raises(ValueError, match=rf"{key} rows \[1\] are left-padded.*pad on the right"):
        model(**inputs, **{key: left_mask([length, length - 2], length)})


def test_blackmamba_still_takes_left_padding():
    model, inputs, _, _ = _blackmamba_case()
    ids = inputs["input_ids"]
    with torch.no_grad():
        padded = model(ids, attention_mask=left_mask([11, 7], 11), use_cache=False).logits
        alone = model(ids[1:, 4:], use_cache=False).logits
    torch.testing.assert_close(padded[1, 4:], alone[0], rtol=1e-4, atol=1e-5)


def test_blackmamba_cached_step_takes_the_full_length_mask():
    """transformers' convention: a cached step may carry the mask of past + new tokens; only the new columns count."""
    model = blackmamba()
    ids = torch.randint(2, 61, (2, 8))
    with torch.no_grad():
        prefill = model(ids[:, :7], use_cache=True)
        reference = model(ids[:, 7:], cache=prefill.cache).logits
        prefill = model(ids[:, :7], use_cache=True)
        stepped = model(ids[:, 7:], cache=prefill.cache, attention_mask=torch.ones(2, 8, dtype=torch.long)).logits
        prefill = model(ids[:, :7], use_cache=True)
        with pytest.raises(ValueError, match=r"\(2, 1\) or, with a cache holding 7 tokens, \(2, 8\)"):
            model(ids[:, 7:], cache=prefill.cache, attention_mask=torch.ones(2, 5, dtype=torch.long))
    assert torch.equal(stepped, reference)


# ------------------------------------------------------------------------------------------------ 2. CTC labels


def test_ctc_zero_infinity_defaults_to_false_like_wav2vec2():
    from transformers import Wav2Vec2Config

    assert MambaCTCConfig().ctc_zero_infinity is False
    assert Wav2Vec2Config().ctc_zero_infinity is False
    model = ctc()
    labels = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]])  # 11 labels, 16 frames -> 4 logit frames
    assert torch.isinf(model(torch.randn(1, 16, 80), labels=labels).loss)
    model.config.ctc_zero_infinity = True
    assert model(torch.randn(1, 16, 80), labels=labels).loss.item() == 0.0


def test_ctc_negative_label_other_than_minus_100_raises():
    model = ctc()
    x = torch.randn(2, 40, 80)
    with pytest.raises(ValueError, match=r"-5.*\[0, vocab_size=16\).*-100.*pad_token_id"):
        model(x, labels=torch.tensor([[3, -5, 4], [5, 6, -100]]))
    with pytest.raises(ValueError, match="16"):
        model(x, labels=torch.tensor([[3, 16, 4], [5, 6, -100]]))
    with pytest.raises(ValueError, match=r"\(batch=2, target_length\)"):
        model(x, labels=torch.tensor([3, 4, 5]))
    # -100 and the blank pad id both pad
    with torch.no_grad():
        a = model(x, labels=torch.tensor([[3, 4, -100], [5, 6, -100]])).loss
        b = model(x, labels=torch.tensor([[3, 4, 0], [5, 6, 0]])).loss
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------ 3. shift_labels


def test_blackmamba_shift_labels_reach_the_loss():
    model = blackmamba()
    ids = torch.randint(2, 61, (2, 9))
    shift = torch.randint(2, 61, (2, 9))
    shift[0, 3:] = -100
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
        by_labels = model(ids, labels=ids, use_cache=False).loss
        by_shift = model(ids, labels=ids, shift_labels=shift, use_cache=False).loss
        only_shift = model(ids, shift_labels=shift, use_cache=False).loss
    expected = F.cross_entropy(logits.reshape(-1, 61), shift.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(by_shift, expected)
    torch.testing.assert_close(only_shift, expected)
    # shift_labels equal to the shifted labels give the plain loss
    same = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, labels=ids, shift_labels=same, use_cache=False).loss, by_labels)
    assert not torch.allclose(by_shift, by_labels)


def test_madeon_shift_labels_reach_the_loss():
    model = madeon()
    inputs = madeon_inputs()
    labels = inputs["input_ids"].clone()
    labels[:, 0] = -100
    shift = torch.randint(6, 40, (2, 5))
    shift[1, 2:] = -100
    with torch.no_grad():
        logits = model(**inputs).logits
        by_labels = model(**inputs, labels=labels).loss
        by_shift = model(**inputs, labels=labels, shift_labels=shift).loss
        only_shift = model(**inputs, shift_labels=shift).loss
    expected = F.cross_entropy(logits.reshape(-1, 60), shift.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(by_shift, expected)
    torch.testing.assert_close(only_shift, expected)
    assert not torch.allclose(by_shift, by_labels)
    same = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs, shift_labels=same).loss, by_labels)
        with pytest.raises(ValueError, match="shift_labels must be"):
            model(**inputs, shift_labels=shift[:, :3])


# ------------------------------------------------------------------------------------------------ 4. meta device


META_CASES = [(c.model_class, c.make_config) for c in CASES] + [
    (SSAMBAForPreTraining, lambda: SSAMBAConfig(hidden_size=32, num_hidden_layers=2, num_mel_bins=32, max_length=48,
                                                mask_patch_count=2)),
]


@pytest.mark.parametrize("model_class,make_config", META_CASES, ids=[c.name for c in CASES] + ["ssamba-pretraining"])
@pytest.mark.parametrize("drop_path_rate", [0.0, 0.1])
def test_every_family_builds_on_the_meta_device(model_class, make_config, drop_path_rate):
    config = make_config()
    if hasattr(config, "drop_path_rate"):
        config.drop_path_rate = drop_path_rate
    with torch.device("meta"):
        model = model_class(config)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_ctc_drop_path_rates_rise_linearly():
    model = ctc(drop_path_rate=0.3, num_hidden_layers=4)
    rates = [layer.drop_path.drop_prob for layer in model.model.layers]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


# ------------------------------------------------------------------------------------------------ 5. SSAST accuracy


def test_discriminative_accuracy_normalises_rows_before_the_column_argmax():
    # scores[i, j] = <true patch i, prediction j>. Column 1: raw 9 (row 0) beats 0 (row 1), but after each row's
    # softmax row 1 has 0.993 against row 0's 0.269: SSAST counts prediction 1 as right, the raw argmax did not.
    scores = torch.tensor([[[10.0, 9.0], [-5.0, 0.0]]])
    raw = (scores.argmax(dim=1) == torch.arange(2)).float().mean()
    assert raw.item() == 0.5
    assert discriminative_accuracy(scores).item() == 1.0

    # the original loop (SSAST ast_models.py / SSAMBA both_models.py, `mpc`) on random clips
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 6, 6, generator=g) * torch.rand(4, 6, 1, generator=g) * 10
    correct = 0
    for total in scores:
        correct += torch.sum(torch.eq(torch.argmax(torch.nn.Softmax(dim=-1)(total), dim=0), torch.arange(0, 6)))
    assert discriminative_accuracy(scores).item() == pytest.approx(correct.item() / (4 * 6))


# ------------------------------------------------------------------------------------------------ 6. dtypes


# name -> () -> (model, inputs, key of the floating input), for every family with floating input features
FLOAT_ENTRIES = {
    "ssamba": lambda: (ssamba(), {"input_values": torch.randn(2, 48, 32), "attention_mask": right_mask([48, 30], 48)},
                       "input_values"),
    "ssamba-pretraining": lambda: (
        ssamba_pretraining(),
        {"input_values": torch.randn(2, 48, 32), "mask_index": torch.tensor([[0, 3, 5, 8, 9, 20], [1, 2, 4, 6, 7, 23]]),
         "generative_mask_index": torch.tensor([[1, 2, 4, 6, 7, 23], [0, 3, 5, 8, 9, 20]])},
        "input_values"),
    "ctc": lambda: (ctc(), {"input_features": torch.randn(2, 40, 80), "attention_mask": right_mask([40, 27], 40)},
                    "input_features"),
    "ctc-conmamba": lambda: (ctc(block_type="conmamba"), {"input_features": torch.randn(2, 40, 80)}, "input_features"),
    "madeon-features": lambda: (madeon("features"), madeon_inputs("features"), "input_features"),
    "blackmamba-embeds": lambda: (blackmamba(), {"inputs_embeds": torch.randn(2, 7, 32), "use_cache": False},
                                  "inputs_embeds"),
}


def _outputs(output):
    return [v for v in output.to_tuple() if torch.is_tensor(v)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(FLOAT_ENTRIES))
def test_floating_inputs_of_any_precision_give_the_float32_answer(name, dtype):
    torch.manual_seed(1)
    model, inputs, key = FLOAT_ENTRIES[name]()
    rounded = inputs[key].to(dtype)
    with torch.no_grad():
        expected = _outputs(model(**{**inputs, key: rounded.float()}))
        got = _outputs(model(**{**inputs, key: rounded}))
    assert len(expected) == len(got) > 0
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(FLOAT_ENTRIES))
def test_integer_features_raise_a_type_error(name):
    model, inputs, key = FLOAT_ENTRIES[name]()
    with pytest.raises(TypeError, match=f"{key} must be a floating-point tensor"):
        model(**{**inputs, key: inputs[key].long()})


def test_floating_input_helper():
    x = torch.randn(2, 3, dtype=torch.float64)
    assert floating_input(x, torch.float32, "x").dtype == torch.float32
    with pytest.raises(TypeError, match="floating-point"):
        floating_input(torch.ones(2, dtype=torch.int32), torch.float32, "x")
    with pytest.raises(TypeError, match="floating-point"):
        floating_input([1.0], torch.float32, "x")


# ------------------------------------------------------------------------------------------------ 7. input_values


def test_ctc_accepts_input_values_as_an_alias():
    model = ctc()
    x, mask = torch.randn(2, 40, 80), right_mask([40, 22], 40)
    with torch.no_grad():
        reference = model(x, attention_mask=mask).logits
        assert torch.equal(model(input_values=x, attention_mask=mask).logits, reference)
        assert torch.equal(model.model(input_values=x, attention_mask=mask).last_hidden_state,
                           model.model(x, attention_mask=mask).last_hidden_state)
        loss = model(input_values=x, attention_mask=mask, labels=torch.tensor([[3, 4], [5, -100]])).loss
        assert torch.isfinite(loss)
    for module in (model, model.model):
        with pytest.raises(ValueError, match="not both"):
            module(input_features=x, input_values=x)
        with pytest.raises(ValueError, match="needs input_features"):
            module(attention_mask=mask)


# ------------------------------------------------------------------------------------------------ 8. token ids


@pytest.mark.parametrize("bad", [61, -1, 1000])
def test_blackmamba_out_of_range_ids_raise(bad):
    model = blackmamba()
    ids = torch.randint(2, 61, (2, 5))
    ids[1, 2] = bad
    with pytest.raises(ValueError, match=rf"input_ids holds id {bad}, outside the vocabulary \[0, 61\)"):
        model(ids)


@pytest.mark.parametrize("key", ["input_ids", "speech_ids"])
@pytest.mark.parametrize("bad", [60, -100])
def test_madeon_out_of_range_ids_raise(key, bad):
    model = madeon()
    inputs = madeon_inputs()
    inputs[key] = inputs[key].clone()
    inputs[key][0, 1] = bad
    with pytest.raises(ValueError, match=rf"{key} holds id {bad}, outside the vocabulary \[0, 60\)"):
        model(**inputs)


def test_check_token_ids_helper():
    assert check_token_ids(torch.tensor([[0, 9]]), 10) is not None
    with pytest.raises(TypeError, match="integer"):
        check_token_ids(torch.tensor([[0.0, 1.0]]), 10)


# ------------------------------------------------------------------------------------------------ 9. cache names


@pytest.mark.parametrize("old_name", ["cache_params", "past_key_values"])
def test_old_cache_names_warn_and_still_work(old_name):
    model = blackmamba()
    ids = torch.randint(2, 61, (1, 4))
    with torch.no_grad():
        reference = model(ids, cache=model.backbone.make_cache()).logits
        with pytest.warns(FutureWarning, match=rf"`{old_name}` is deprecated.*pass `cache=`"):
            out = model(ids, **{old_name: model.backbone.make_cache()})
    assert torch.equal(out.logits, reference)

    asr = madeon()
    inputs = madeon_inputs()
    with torch.no_grad(), pytest.warns(FutureWarning, match=rf"`{old_name}`.*`cache=`"):
        out = asr(**inputs, use_cache=True, **{old_name: asr.make_cache()})
    assert out.cache.has_state(0)

    mixer = MambaMixer(16, d_state=4, layer_idx=0).eval()
    cache = MambaZooCache([1])
    with torch.no_grad(), pytest.warns(FutureWarning, match=f"`{old_name}`"):
        mixer(torch.randn(1, 4, 16), **{old_name: cache})
    assert cache.has_state(0)


def _our_cache_warnings(records):
    return [str(r.message) for r in records if "deprecated for mamba-zoo models" in str(r.message)]


def test_the_new_name_and_generate_do_not_warn():
    """transformers 5.25's generate() renames `past_key_values`/`cache_params` to `cache` at its entry and hands the
    models `cache` (it warns itself for the old names): our warning never fires on the generate() path."""
    model, asr = blackmamba(), madeon()
    inputs = madeon_inputs()
    with warnings.catch_warnings(record=True) as records, torch.no_grad():
        warnings.simplefilter("always")
        model(torch.randint(2, 61, (1, 4)), cache=model.backbone.make_cache())
        model.generate(torch.randint(2, 61, (2, 4)), max_new_tokens=3, do_sample=False)
        model.generate(torch.randint(2, 61, (2, 4)), max_new_tokens=3, do_sample=False, num_beams=2)
        asr.generate(speech_ids=inputs["speech_ids"], speech_attention_mask=inputs["speech_attention_mask"],
                     max_new_tokens=3, do_sample=False)
        asr.generate(speech_ids=inputs["speech_ids"], speech_attention_mask=inputs["speech_attention_mask"],
                     max_new_tokens=3, do_sample=False, use_cache=False)
    assert _our_cache_warnings(records) == []


# ------------------------------------------------------------------------------------------------ labels of the decoders


@pytest.mark.parametrize("bad", [61, -5])
def test_blackmamba_labels_outside_the_vocabulary_raise(bad):
    model = blackmamba()
    ids = torch.randint(2, 61, (2, 6))
    labels = ids.clone()
    labels[1, 3] = bad
    with pytest.raises(ValueError, match=rf"labels hold {bad}: ids must be in \[0, vocab_size=61\).*-100"):
        model(ids, labels=labels, use_cache=False)
    with pytest.raises(ValueError, match=rf"shift_labels hold {bad}"):
        model(ids, shift_labels=labels, use_cache=False)


@pytest.mark.parametrize("bad", [60, -5])
def test_madeon_labels_outside_the_vocabulary_raise(bad):
    model = madeon()
    inputs = madeon_inputs()
    labels = inputs["input_ids"].clone()
    labels[0, 2] = bad
    with pytest.raises(ValueError, match=rf"labels hold {bad}: ids must be in \[0, vocab_size=60\)"):
        model(**inputs, labels=labels)
    with pytest.raises(ValueError, match=rf"shift_labels hold {bad}"):
        model(**inputs, shift_labels=labels)


def test_blackmamba_generate_tells_how_to_fix_a_mask_inferred_from_pad_tokens():
    """generate() infers a mask from pad_token_id tokens inside a prompt; a hole is not padding for an SSM."""
    model = blackmamba()
    ids = torch.randint(2, 61, (1, 6))
    ids[0, 3] = model.config.pad_token_id
    with torch.no_grad(), pytest.raises(ValueError, match="pass attention_mask explicitly"):
        model.generate(ids, max_new_tokens=2)
    with torch.no_grad():
        assert model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2).shape == (1, 8)
