"""The transformers contract, checked the same way over every model class of the zoo.

Each case builds a tiny random model and a batch of inputs; every check below runs on every case:
save/load round trip (safetensors), `return_dict=False` tuples, hidden-state outputs, batch equivalence, determinism
in eval, gradient checkpointing (reentrant and not), `_init_weights` covering every parameter, loading on the meta
device / with a device map, `inputs_embeds` and resized vocabularies for text models.
"""

from __future__ import annotations

import pytest
import torch

import mamba_zoo
from zoo_cases import CASES, Case, build as _build


def _main_output(outputs) -> torch.Tensor:
    if isinstance(outputs, tuple):
        return outputs[0]
    for key in ("logits", "last_hidden_state"):
        if getattr(outputs, key, None) is not None:
            return getattr(outputs, key)
    raise AssertionError(f"no logits/last_hidden_state in {type(outputs).__name__}")


def _close(a, b, tol=1e-5):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item() < tol


pytestmark = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


def test_every_case_is_exported_and_auto_registered(case):
    from transformers import AutoConfig

    config = case.make_config()
    assert hasattr(mamba_zoo, case.model_class.__name__)
    assert type(AutoConfig.for_model(config.model_type)) is type(config)


def test_save_load_round_trip_identical_outputs(case, tmp_path):
    model, inputs = _build(case)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    reloaded = case.model_class.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(_main_output(model(**inputs)), _main_output(reloaded(**inputs)))


def test_return_dict_false_gives_the_same_tuple(case):
    model, inputs = _build(case)
    with torch.no_grad():
        as_dict = model(**inputs, return_dict=True)
        as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    expected = [v for v in as_dict.to_tuple() if isinstance(v, torch.Tensor)]
    got = [v for v in as_tuple if isinstance(v, torch.Tensor)]
    assert len(expected) == len(got) and all(torch.equal(a, b) for a, b in zip(expected, got))


def test_hidden_states_one_per_layer_plus_embeddings(case):
    model, inputs = _build(case)
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
    hidden_states = outputs.hidden_states
    assert hidden_states is not None and len(hidden_states) == case.num_hidden_states(model.config)
    assert all(h.shape[0] == 3 and h.shape[-1] == model.config.hidden_size for h in hidden_states)
    assert all(torch.isfinite(h).all() for h in hidden_states)


def test_batch_equivalence_and_determinism_in_eval(case):
    model, inputs = _build(case)
    with torch.no_grad():
        batched = _main_output(model(**inputs))
        again = _main_output(model(**inputs))
        single = _main_output(model(**{k: v[1:2] for k, v in inputs.items()}))
    assert torch.equal(batched, again)
    assert _close(batched[1:2], single, tol=1e-5)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(case, use_reentrant):
    model, inputs = _build(case)
    model.train()

    def gradients():
        model.zero_grad()
        torch.manual_seed(0)
        _main_output(model(**inputs)).float().pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert model.is_gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6, rtol=1e-4), name


def test_init_weights_covers_every_parameter(case):
    model, _ = _build(case)
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float("nan"))
    for module in model.modules():
        module.__dict__.pop("_is_hf_initialized", None)
    for param in model.parameters():
        param.__dict__.pop("_is_hf_initialized", None)
    model.init_weights()
    left = [n for n, p in model.named_parameters() if torch.isnan(p).any()]
    assert not left, f"_init_weights leaves these uninitialised: {left}"


def test_meta_device_construction_and_device_map_loading(case, tmp_path):
    model, inputs = _build(case)
    with torch.device("meta"):
        on_meta = case.model_class(case.make_config())
    assert all(p.device.type == "meta" for p in on_meta.parameters())
    model.save_pretrained(tmp_path)
    mapped = case.model_class.from_pretrained(tmp_path, device_map="cpu").eval()
    with torch.no_grad():
        assert torch.equal(_main_output(model(**inputs)), _main_output(mapped(**inputs)))


def test_inputs_embeds_and_resized_vocabulary_for_text_models(case):
    if not case.is_text_model:
        pytest.skip("audio-only model: no token embeddings")
    model, inputs = _build(case)
    embeddings = model.get_input_embeddings()
    with torch.no_grad():
        reference = _main_output(model(**inputs))
        embedded = dict(inputs, inputs_embeds=embeddings(inputs["input_ids"]))
        embedded.pop("input_ids")
        assert _close(_main_output(model(**embedded)), reference)
    old_vocab = model.config.vocab_size
    model.resize_token_embeddings(old_vocab + 7)
    assert model.config.vocab_size == old_vocab + 7
    assert model.get_input_embeddings().weight.shape[0] == old_vocab + 7
    with torch.no_grad():
        resized = _main_output(model(**inputs))
    if hasattr(model, "lm_head"):
        assert resized.shape[-1] == old_vocab + 7
        if model.config.tie_word_embeddings:
            assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_bf16_autocast_on_cpu_runs_and_stays_close_to_fp32(case):
    model, inputs = _build(case)
    with torch.no_grad():
        reference = _main_output(model(**inputs)).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = _main_output(model(**inputs)).float()
    assert torch.isfinite(mixed).all()
    # bf16 has 8 mantissa bits; the scan itself accumulates in float32, so the drift stays at the percent level
    assert _close(mixed, reference, tol=5e-2)


def test_saved_auto_map_names_every_model_class_of_the_family(case, tmp_path):
    """A checkpoint saved by any class of a family loads through every Auto* model factory of that family with
    trust_remote_code (e.g. AutoModel on a classifier, AutoModelForAudioClassification on a converted pretraining
    checkpoint), not only through the class that saved it."""
    import json

    model, _ = _build(case)
    model.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    expected = {name: f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
                for name, cls in mamba_zoo.AUTO_CLASSES[type(model.config)].items() if name.startswith("AutoModel")}
    assert {k: v for k, v in auto_map.items() if k.startswith("AutoModel")} == expected
    assert auto_map["AutoConfig"].endswith(f".{type(model.config).__name__}")
    assert "AutoModel" in expected and len(expected) >= 2
