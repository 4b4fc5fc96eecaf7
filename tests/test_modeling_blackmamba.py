"""BlackMambaForCausalLM: config validation, save/load, cached == uncached generation (greedy, sampling, beam), padding,
pipeline, LoRA merge parity, expert dispatch and load balancing, gradient checkpointing, remote-code loading."""

import json

import pytest
import torch

from mamba_zoo import BlackMambaConfig, BlackMambaForCausalLM, BlackMambaModel
from mamba_zoo.mamba_cache import MambaZooCache
from mamba_zoo.moe_layers import SwitchMoE


def tiny_config(**overrides):
    kwargs = dict(
        vocab_size=61, hidden_size=32, num_hidden_layers=4, state_size=8, ffn_hidden_size=40, num_experts=4,
        pad_token_id=1, bos_token_id=0, eos_token_id=0,
    )
    kwargs.update(overrides)
    return BlackMambaConfig(**kwargs)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = BlackMambaForCausalLM(tiny_config(**overrides)).eval()
    # break the symmetry of freshly initialised routers/experts so that routing actually varies
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "router" in name or "linear_fc" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


# ---------------------------------------------------------------------------------------------- config


def test_config_defaults_presets_and_layer_types():
    config = BlackMambaConfig()
    assert config.num_hidden_layers == 36 and config.layer_types[:3] == ["mamba", "moe", "mamba"]
    assert config.vocab_size == 50304 and config.hidden_act == "gelu" and config.tie_word_embeddings
    small = BlackMambaConfig.from_preset("blackmamba-1.5b")
    assert (small.num_hidden_layers, small.hidden_size, small.ffn_hidden_size) == (30, 1152, 3072)
    assert BlackMambaConfig(layer_types=["mamba", "mlp", "mamba"]).num_hidden_layers == 3
    # transformers' legacy spelling of a mamba layer is accepted and kept as ours
    assert BlackMambaConfig(layer_types=["linear_attention", "moe"]).layer_types == ["mamba", "moe"]


def test_config_reads_layer_norm_epsilon_as_layer_norm_eps(tmp_path):
    """`layer_norm_eps` is the field (as in every mamba-zoo config); configs saved as `layer_norm_epsilon` still load,
    and the old key is not written again."""
    BlackMambaConfig(num_hidden_layers=2).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["layer_norm_epsilon"] = 3e-6
    del data["layer_norm_eps"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = BlackMambaConfig.from_pretrained(tmp_path)
    assert config.layer_norm_eps == config.layer_norm_epsilon == 3e-6
    assert BlackMambaModel(config).norm_f.eps == 3e-6
    assert BlackMambaConfig(num_hidden_layers=2, layer_norm_epsilon=2e-6).layer_norm_eps == 2e-6
    config.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert saved["layer_norm_eps"] == 3e-6 and "layer_norm_epsilon" not in saved


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layer_types=["mamba", "moe"], num_hidden_layers=3), "layer_types has 2 entries"),
        (dict(layer_types=["mamba", "attention"]), "Unknown layer type"),
        (dict(layer_types=["moe", "moe"]), "at least one 'mamba'"),
        (dict(num_experts=0), "num_experts"),
        (dict(hidden_act="not-an-activation"), "hidden_act"),
        (dict(router_aux_loss_coef=-1.0), "router_aux_loss_coef"),
        (dict(time_step_rank=0), "time_step_rank"),
        (dict(kernel_backend="gpu"), "kernel_backend"),
    ],
)
def test_bad_config_values_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlackMambaConfig(**kwargs)
    with pytest.raises(ValueError, match="Unknown BlackMamba preset"):
        BlackMambaConfig.from_preset("blackmamba-9b")


# ---------------------------------------------------------------------------------------------- forward contracts


def test_outputs_tuples_hidden_states_and_tied_head():
    model = tiny_model()
    assert model.lm_head.weight is model.backbone.embeddings.weight
    ids = torch.randint(2, 61, (2, 9))
    out = model(ids, labels=ids, output_hidden_states=True, output_router_logits=True)
    assert out.logits.shape == (2, 9, 61)
    assert len(out.hidden_states) == 5 and all(h.shape == (2, 9, 32) for h in out.hidden_states)
    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (18, 4)
    assert out.aux_loss is not None and isinstance(out.cache, MambaZooCache)
    plain = model(ids, labels=ids, use_cache=False)
    assert torch.allclose(out.loss, plain.loss + model.config.router_aux_loss_coef * out.aux_loss, atol=1e-6)
    as_tuple = model(ids, labels=ids, use_cache=False, return_dict=False)
    assert torch.allclose(as_tuple[0], plain.loss) and torch.allclose(as_tuple[1], plain.logits)
    assert model(ids, logits_to_keep=1, use_cache=False).logits.shape == (2, 1, 61)
    # the expert load of the latest forward, one row per MoE layer
    load = model.expert_load()
    assert load.shape == (2, 4) and load.sum(1).tolist() == [18, 18]


def test_mlp_layers_and_inputs_embeds():
    model = tiny_model(layer_types=["mamba", "mlp", "mamba", "moe"])
    ids = torch.randint(2, 61, (1, 7))
    embeds = model.get_input_embeddings()(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, model(ids).logits)
    assert "backbone.layers.1.mixer.linear_fc1.weight" in model.state_dict()
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=embeds)


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    ids = torch.randint(2, 61, (2, 11))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "blackmamba"
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, BlackMambaForCausalLM)
    assert loaded.lm_head.weight is loaded.backbone.embeddings.weight
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert isinstance(BlackMambaModel.from_pretrained(tmp_path), BlackMambaModel)


# ---------------------------------------------------------------------------------------------- cached decoding


def test_stepwise_cached_logits_equal_full_forward():
    model = tiny_model()
    ids = torch.randint(2, 61, (2, 13))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :6], use_cache=True)
        cache, pieces = out.cache, [out.logits]
        for t in range(6, 13):
            step = model(ids[:, t:t + 1], cache=cache)
            pieces.append(step.logits)
        stepped = torch.cat(pieces, dim=1)
    assert rel_err(stepped, full) < 1e-5
    assert cache.get_seq_length() == 13
    # older argument names of the cache are accepted
    with torch.no_grad():
        model(ids[:, :1], cache_params=model.backbone.make_cache())


def test_generate_uses_the_cache_and_matches_uncached():
    model = tiny_model()
    prompt = torch.randint(2, 61, (2, 6))
    lengths = []
    hook = model.backbone.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append((args[0] if args else kwargs["input_ids"]).shape[1]),
        with_kwargs=True,
    )
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8)
        assert lengths == [6] + [1] * 7, lengths  # prefill, then one token per step
        uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8, use_cache=False)
    hook.remove()
    assert torch.equal(cached, uncached)

    with torch.no_grad():
        beams = model.generate(prompt, max_new_tokens=6, num_beams=3, do_sample=False, min_new_tokens=6)
        beams_uncached = model.generate(prompt, max_new_tokens=6, num_beams=3, do_sample=False, min_new_tokens=6,
                                        use_cache=False)
        assert torch.equal(beams, beams_uncached)
        torch.manual_seed(3)
        sampled = model.generate(prompt, max_new_tokens=6, do_sample=True, top_k=10, num_return_sequences=2)
        torch.manual_seed(3)
        sampled_uncached = model.generate(prompt, max_new_tokens=6, do_sample=True, top_k=10, num_return_sequences=2,
                                          use_cache=False)
    assert sampled.shape[0] == 4 and torch.equal(sampled, sampled_uncached)


def test_left_padded_batch_generates_like_single_prompts():
    model = tiny_model()
    a, b = torch.randint(2, 61, (1, 7)), torch.randint(2, 61, (1, 4))
    batch = torch.full((2, 7), model.config.pad_token_id)
    batch[0], batch[1, 3:] = a[0], b[0]
    mask = torch.tensor([[1] * 7, [0] * 3 + [1] * 4])
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    with torch.no_grad():
        together = model.generate(batch, attention_mask=mask, **kwargs)
        alone_a = model.generate(a, **kwargs)
        alone_b = model.generate(b, **kwargs)
    assert torch.equal(together[0, 7:], alone_a[0, 7:])
    assert torch.equal(together[1, 7:], alone_b[0, 4:])


def _word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|padding|>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|padding|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|padding|>",
                                   bos_token="<|endoftext|>")


def test_text_generation_pipeline():
    from transformers import pipeline

    words = [f"w{i}" for i in range(59)]
    tokenizer = _word_tokenizer(words)
    model = tiny_model()
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    result = generator("w1 w2 w3", max_new_tokens=4, min_new_tokens=4, do_sample=False)
    text = result[0]["generated_text"]
    assert text.startswith("w1 w2 w3") and len(text.split()) >= 5


# ---------------------------------------------------------------------------------------------- training-related


def test_lora_on_router_experts_and_mixers_merges_exactly():
    peft = pytest.importorskip("peft")
    model = tiny_model()
    ids = torch.randint(2, 61, (2, 10))
    targets = ["router", "linear_fc1", "linear_fc2", "in_proj", "x_proj", "dt_proj", "out_proj"]
    with torch.no_grad():
        before = model(ids, use_cache=False).logits
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    wrapped = {name.split(".")[-1] for name, m in lora.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(targets)
    with torch.no_grad():
        adapted = lora(input_ids=ids, use_cache=False).logits
    lora.train()
    lora(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in lora.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads)
    lora.eval()
    with torch.no_grad():
        merged = lora.merge_and_unload()(ids, use_cache=False).logits
    assert rel_err(adapted, before) > 1e-4  # the adapters are not bypassed
    assert rel_err(adapted, merged) < 1e-5


def test_experts_run_once_per_batch():
    """The MoE dispatch sorts tokens by expert: each expert runs at most once per forward, whatever the batch size."""
    model = tiny_model()
    calls = []
    for layer in model.backbone.layers:
        if isinstance(layer.mixer, SwitchMoE):
            for expert in layer.mixer.local_experts:
                expert.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        model(torch.randint(2, 61, (4, 25)), use_cache=False)
    assert len(calls) <= 2 * 4 and sum(calls) == 2 * 100


def test_aux_loss_balances_expert_load():
    """From a router that sends nearly every token to expert 0, a few steps with the load-balancing loss spread the
    load; the same steps without it leave it collapsed."""
    ids = torch.randint(2, 61, (8, 16))

    def train(coef):
        model = tiny_model(seed=1, num_hidden_layers=2, sinkhorn_in_training=False, router_aux_loss_coef=coef)
        router = model.backbone.layers[1].mixer.router
        with torch.no_grad():
            router.bias.copy_(torch.tensor([4.0, -2.0, -2.0, -2.0]))
        model.train()
        for p in model.parameters():
            p.requires_grad_(False)
        router.requires_grad_(True)
        optimizer = torch.optim.Adam(router.parameters(), lr=0.05)
        for _ in range(30):
            optimizer.zero_grad()
            model(ids, labels=ids, output_router_logits=True).loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            out = model(ids, output_router_logits=True)
        return model.expert_load()[0], out.aux_loss.item()

    load_off, aux_off = train(0.0)
    load_on, aux_on = train(1.0)
    assert load_off.max() > 0.75 * ids.numel()
    assert load_on.max() < 0.5 * ids.numel() and (load_on > 0).sum() >= 3
    assert aux_on < aux_off


def test_gradient_checkpointing_gives_same_gradients():
    model = tiny_model().train()
    model.config.sinkhorn_in_training = False
    for layer in model.backbone.layers:
        if isinstance(layer.mixer, SwitchMoE):
            layer.mixer.sinkhorn_in_training = False
    ids = torch.randint(2, 61, (2, 9))
    model(ids, labels=ids).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model(ids, labels=ids).loss.backward()
    for name, grad in plain.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, atol=1e-6, rtol=1e-5)


def test_remote_code_checkpoint_loads_without_mamba_zoo(tmp_path):
    from remote_code_utils import run_without_mamba_zoo

    model = tiny_model()
    ids = torch.randint(2, 61, (1, 8))
    model.save_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        torch.save({"ids": ids, "logits": model(ids).logits, "generated": expected}, tmp_path / "expected.pt")
    run_without_mamba_zoo(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        ref = torch.load({str(tmp_path / 'expected.pt')!r})
        with torch.no_grad():
            torch.testing.assert_close(model(ref["ids"]).logits, ref["logits"], atol=1e-5, rtol=1e-4)
            generated = model.generate(ref["ids"], max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert torch.equal(generated, ref["generated"]), (generated, ref["generated"])
        """,
        hf_home=str(tmp_path / "hf_home"),
    )
