"""Every family's outputs, hidden states, losses, gradients and generated tokens on fixed weights and inputs, compared
with values recorded before the layers were reorganised (issue 18): a refactor that changes what any path computes
fails here.

The recorded file holds the weights too, so a change in the order parameters are created (and so in what a seed
draws) does not matter; a renamed or missing parameter does (strict load). Regenerate only for an intended change of
behaviour, and say why in the commit: `python tests/test_golden_outputs.py --regenerate`.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from mamba_zoo import (
    BlackMambaConfig,
    BlackMambaForCausalLM,
    Mamba2Mixer,
    MambaASRConfig,
    MambaCTCConfig,
    MambaDecoderOnlyASR,
    MambaForCTC,
    MambaMixer,
    SSAMBAConfig,
    SSAMBAForAudioClassification,
    SSAMBAForPreTraining,
)

GOLDEN_PATH = os.path.join(os.path.dirname(__file__), "data", "golden_outputs.safetensors")


def _flatten(prefix: str, value, out: dict) -> None:
    if torch.is_tensor(value):
        out[prefix] = value.detach().float().contiguous()
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            _flatten(f"{prefix}.{i}", item, out)


def _model_outputs(model, inputs: dict, grad: bool, loss_key: str = "loss") -> dict:
    """Outputs of one forward (all tensor fields, hidden states included); with `grad`, also every parameter's
    gradient of the loss (or of the squared outputs when the model has no loss)."""
    model.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(grad):
        output = model(**inputs, output_hidden_states=True, return_dict=True)
    result = {}
    for key, value in output.items():
        if key not in ("cache", "past_key_values"):
            _flatten(key, value, result)
    if grad:
        loss = output[loss_key] if output.get(loss_key) is not None else sum(
            (v.float() ** 2).mean() for k, v in output.items() if torch.is_tensor(v) and v.is_floating_point()
        )
        loss.backward()
        for name, param in model.named_parameters():
            if param.grad is not None:
                result[f"grad.{name}"] = param.grad.detach().clone()
    return result


def _both_paths(model, inputs: dict, **kwargs) -> dict:
    """The no-grad forward (the fused CPU inference path) and the autograd forward + backward."""
    result = {f"nograd.{k}": v for k, v in _model_outputs(model, inputs, grad=False, **kwargs).items()}
    result.update({f"grad.{k}": v for k, v in _model_outputs(model, inputs, grad=True, **kwargs).items()})
    return result


def _right_padding_mask(lengths: list[int], length: int) -> torch.Tensor:
    return (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()


# ---------------------------------------------------------------------------------------------------------------- cases
# Each case: build(generator) -> (module, inputs), run(module, inputs) -> {name: tensor}.


def _ssamba_classification(g):
    config = SSAMBAConfig(hidden_size=32, num_hidden_layers=4, num_mel_bins=32, max_length=48, drop_path_rate=0.0,
                          num_labels=3, patch_size=8, frequency_stride=8, time_stride=8)
    model = SSAMBAForAudioClassification(config).eval()
    inputs = {"input_values": torch.randn(3, 48, 32, generator=g), "attention_mask": _right_padding_mask([48, 40, 29], 48),
              "labels": torch.tensor([0, 2, 1])}
    return model, inputs


def _ssamba_unpaired(g):
    config = SSAMBAConfig(hidden_size=32, num_hidden_layers=3, num_mel_bins=32, max_length=48, drop_path_rate=0.0,
                          num_labels=2, bidirectional_layer_pairing=False, norm_type="rmsnorm", pooling="cls",
                          patch_size=8, frequency_stride=8, time_stride=8)
    model = SSAMBAForAudioClassification(config).eval()
    return model, {"input_values": torch.randn(2, 48, 32, generator=g), "labels": torch.tensor([1, 0])}


def _ssamba_pretraining(g):
    config = SSAMBAConfig(hidden_size=32, num_hidden_layers=2, num_mel_bins=32, max_length=48, drop_path_rate=0.0,
                          patch_size=8, frequency_stride=8, time_stride=8, mask_patch_count=6)
    model = SSAMBAForPreTraining(config).eval()
    inputs = {"input_values": torch.randn(2, 48, 32, generator=g),
              "mask_index": torch.stack([torch.randperm(24, generator=g)[:6] for _ in range(2)]),
              "generative_mask_index": torch.stack([torch.randperm(24, generator=g)[:6] for _ in range(2)])}
    return model, inputs


def _ctc(block_type: str, mixer_type: str):
    def build(g):
        config = MambaCTCConfig(vocab_size=16, num_mel_bins=80, hidden_size=32, num_hidden_layers=2,
                                subsampling_conv_channels=8, intermediate_size=64, state_size=8,
                                apply_spec_augment=False, hidden_dropout=0.0, final_dropout=0.0, block_type=block_type,
                                mixer_type=mixer_type, mamba2_head_dim=16, mamba2_chunk_size=8)
        model = MambaForCTC(config).eval()
        inputs = {"input_features": torch.randn(3, 40, 80, generator=g),
                  "attention_mask": _right_padding_mask([40, 33, 21], 40),
                  "labels": torch.tensor([[3, 4, 5, 6], [7, 7, 2, -100], [9, 1, -100, -100]])}
        return model, inputs
    return build


def _madeon_config(**overrides):
    kwargs = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, expand=2, state_size=8, speech_input="units",
                  num_units=20, unit_token_offset=40, speech_prefix="parallel", mamba2_head_dim=16,
                  mamba2_chunk_size=8)
    kwargs.update(overrides)
    return MambaASRConfig(**kwargs)


def _madeon(**overrides):
    def build(g):
        config = _madeon_config(**overrides)
        model = MambaDecoderOnlyASR(config).eval()
        text = torch.randint(6, 40, (3, 5), generator=g)
        text[:, 0] = config.generate_text_token_id
        labels = text.clone()
        labels[:, 0] = -100
        labels[2, 3:] = -100
        inputs = {"input_ids": text, "attention_mask": _right_padding_mask([5, 5, 3], 5), "labels": labels,
                  "use_cache": False}
        if config.speech_input == "units":
            inputs["speech_ids"] = torch.randint(40, 60, (3, 9), generator=g)
            inputs["speech_attention_mask"] = _right_padding_mask([9, 7, 4], 9)
        else:
            inputs["input_features"] = torch.randn(3, 24, config.num_mel_bins, generator=g)
            inputs["speech_attention_mask"] = _right_padding_mask([24, 19, 12], 24)
        return model, inputs
    return build


def _run_madeon(model, inputs):
    result = _both_paths(model, inputs)
    speech = {k: inputs[k] for k in ("speech_ids", "input_features", "speech_attention_mask") if k in inputs}
    with torch.no_grad():
        generated = model.generate(**speech, max_new_tokens=5, do_sample=False, num_beams=1, min_new_tokens=5,
                                   output_scores=True, return_dict_in_generate=True)
        beams = model.generate(**speech, max_new_tokens=4, do_sample=False, num_beams=2, min_new_tokens=4)
    result["generate.greedy"] = generated.sequences.float()
    _flatten("generate.greedy_scores", generated.scores, result)  # the logits of every cached decoding step
    result["generate.beam2"] = beams.float()
    return result


def _blackmamba(g):
    config = BlackMambaConfig(vocab_size=61, hidden_size=32, num_hidden_layers=4, state_size=8, ffn_hidden_size=40,
                              num_experts=4, pad_token_id=1, bos_token_id=0, eos_token_id=0)
    model = BlackMambaForCausalLM(config).eval()
    input_ids = torch.randint(2, 61, (3, 11), generator=g)
    return model, {"input_ids": input_ids, "labels": input_ids.clone(), "use_cache": False}


def _run_blackmamba(model, inputs):
    result = _both_paths(model, inputs)
    with torch.no_grad():
        prompt = inputs["input_ids"][:, :6]
        generated = model.generate(prompt, max_new_tokens=6, do_sample=False, min_new_tokens=6, output_scores=True,
                                   return_dict_in_generate=True)
        result["generate.greedy"] = generated.sequences.float()
        _flatten("generate.greedy_scores", generated.scores, result)
        cached = model(prompt, use_cache=True, return_dict=True)
        step = model(inputs["input_ids"][:, 6:7], cache=cached.cache, use_cache=True, return_dict=True)
    result["cached_step.logits"] = step.logits.float()
    return result


def _mixer(mixer_class, **kwargs):
    def build(g):
        mixer = mixer_class(24, layer_idx=0, **kwargs)
        with torch.no_grad():  # the initialisation leaves biases at zero: fill every parameter with random values
            for param in mixer.parameters():
                param.add_(0.1 * torch.randn(param.shape, generator=g))
        inputs = {"hidden_states": torch.randn(3, 13, 24, generator=g),
                  "attention_mask": _right_padding_mask([13, 10, 6], 13)}
        return mixer, inputs
    return build


def _run_mixer(mixer, inputs, extra_calls=()):
    result = {}
    calls = [("plain", {})] + list(extra_calls)
    for name, kwargs in calls:
        for grad in (False, True):
            mixer.zero_grad(set_to_none=True)
            with torch.set_grad_enabled(grad):
                output = mixer(**inputs, **kwargs)
            tag = f"{name}.{'grad' if grad else 'nograd'}"
            result[f"{tag}.output"] = output.detach().clone()
            if grad:
                (output**2).mean().backward()
                for pname, param in mixer.named_parameters():
                    if param.grad is not None:
                        result[f"{tag}.grad.{pname}"] = param.grad.detach().clone()
    return result


def _run_mamba_mixer(mixer, inputs):
    reverse_lengths = torch.tensor([5, 9, 6])
    extra = [("reverse", {"reverse": True})]
    if mixer.bidirectional:
        extra.append(("reverse_lengths", {"reverse_lengths": reverse_lengths}))
    return _run_mixer(mixer, inputs, extra)


CASES: dict[str, tuple[Callable, Callable]] = {
    "ssamba_classification": (_ssamba_classification, _both_paths),
    "ssamba_unpaired_rms_cls": (_ssamba_unpaired, _both_paths),
    "ssamba_pretraining": (_ssamba_pretraining, _both_paths),
    "ctc_mamba": (_ctc("mamba", "mamba"), _both_paths),
    "ctc_conmamba_mamba2": (_ctc("conmamba", "mamba2"), _both_paths),
    "madeon_units_parallel": (_madeon(), _run_madeon),
    "madeon_features_serial": (_madeon(speech_input="features", num_units=0, unit_token_offset=0,
                                       speech_prefix="serial", num_mel_bins=20), _run_madeon),
    "madeon_units_parallel_mamba2": (_madeon(mixer_type="mamba2"), _run_madeon),
    "madeon_units_serial_mamba2": (_madeon(mixer_type="mamba2", speech_prefix="serial"), _run_madeon),
    "blackmamba": (_blackmamba, _run_blackmamba),
    "mixer_mamba_bidirectional": (_mixer(MambaMixer, bidirectional=True, d_state=8), _run_mamba_mixer),
    "mixer_mamba_divide_out": (_mixer(MambaMixer, bidirectional=True, divide_out=True, d_state=8), _run_mamba_mixer),
    "mixer_mamba_causal": (_mixer(MambaMixer, d_state=8), _run_mamba_mixer),
    "mixer_mamba2_bidirectional": (_mixer(Mamba2Mixer, bidirectional=True, d_state=8, headdim=12, chunk_size=4),
                                   lambda m, i: _run_mixer(m, i)),
}


def _compute(name: str, weights: dict | None = None) -> tuple[dict, dict, dict]:
    """(weights, inputs, results) of one case; with `weights`, those are loaded (strictly) instead of the seed's."""
    build, run = CASES[name]
    seed = sorted(CASES).index(name)
    torch.manual_seed(seed)
    module, inputs = build(torch.Generator().manual_seed(1000 + seed))
    if weights is not None:
        module.load_state_dict(weights, strict=True)
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    torch.manual_seed(2000 + seed)  # random masks and routing draws inside the forward
    results = run(module, inputs)
    tensor_inputs = {k: v for k, v in inputs.items() if torch.is_tensor(v)}
    return state, tensor_inputs, results


def regenerate() -> None:
    tensors = {}
    for name in CASES:
        state, inputs, results = _compute(name)
        for group, values in (("weights", state), ("inputs", inputs), ("results", results)):
            for key, value in values.items():
                tensors[f"{name}/{group}/{key}"] = value.contiguous()
    os.makedirs(os.path.dirname(GOLDEN_PATH), exist_ok=True)
    save_file(tensors, GOLDEN_PATH)
    print(f"wrote {len(tensors)} tensors to {GOLDEN_PATH}")


def _recorded(name: str, group: str) -> dict:
    prefix = f"{name}/{group}/"
    return {k[len(prefix):]: v for k, v in _GOLDEN.items() if k.startswith(prefix)}


_GOLDEN = load_file(GOLDEN_PATH) if os.path.exists(GOLDEN_PATH) else {}


@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_match_the_recorded_ones(name):
    assert _GOLDEN, f"{GOLDEN_PATH} is missing; it is recorded once with --regenerate"
    _, inputs, results = _compute(name, weights=_recorded(name, "weights"))
    recorded_inputs = _recorded(name, "inputs")
    assert sorted(inputs) == sorted(recorded_inputs)
    for key, value in inputs.items():
        assert torch.equal(value, recorded_inputs[key]), f"the case's input {key} changed: the test itself changed"
    expected = _recorded(name, "results")
    assert sorted(results) == sorted(expected), "a different set of outputs/gradients than recorded"
    for key, value in results.items():
        # float32 summation order may change where code moves; anything beyond rounding is a behaviour change
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {key}: {m}")


if __name__ == "__main__":
    if "--regenerate" in sys.argv:
        regenerate()
    else:
        print(__doc__)
