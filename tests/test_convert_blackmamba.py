"""Conversion of released BlackMamba checkpoints: a small state dict with the original key names is converted, and the
converted model is checked against an independent plain-PyTorch statement of the original forward pass."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mamba_zoo.convert_blackmamba_original_to_hf import (
    blackmamba_config_from_original,
    convert_blackmamba_checkpoint,
    main,
)

ORIGINAL_CONFIG = dict(
    num_layers=5, hidden_size=24, state_size=4, conv_dimension=4, vocab_size=53, expansion_factor=2,
    mamba_moe_layers=["r", "4", "r", "1", "r"], ffn_hidden_size=20, add_bias_linear=False, swiglu=True,
    max_sequence_length=2048,
)


def original_state_dict(config, seed=0):
    """Random tensors under the released key names and shapes (Megatron/BlackMamba layout)."""
    g = torch.Generator().manual_seed(seed)
    H, F_, N, K = config["hidden_size"], config["ffn_hidden_size"], config["state_size"], config["conv_dimension"]
    D = config["expansion_factor"] * H
    R = math.ceil(H / 16)

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {"embedding.word_embeddings.weight": rnd(config["vocab_size"], H, scale=1.0)}
    for i, code in enumerate(config["mamba_moe_layers"]):
        p = f"decoder.layers.{i}."
        sd[p + "norm.weight"] = 1 + rnd(H)
        if code == "r":
            sd.update({
                p + "mixer.in_proj.weight": rnd(2 * D, H),
                p + "mixer.conv1d.weight": rnd(D, 1, K), p + "mixer.conv1d.bias": rnd(D),
                p + "mixer.x_proj.weight": rnd(R + 2 * N, D),
                p + "mixer.dt_proj.weight": rnd(D, R), p + "mixer.dt_proj.bias": rnd(D) - 3,
                p + "mixer.A_log": torch.log(torch.rand(D, N, generator=g) * 3 + 0.5),
                p + "mixer.D": 1 + rnd(D),
                p + "mixer.out_proj.weight": rnd(H, D),
            })
        elif code == "1":
            sd[p + "mixer.linear_fc1.weight"] = rnd(2 * F_, H)
            sd[p + "mixer.linear_fc2.weight"] = rnd(H, F_)
        else:
            sd[p + "mixer.router.weight"] = rnd(int(code), H, scale=1.0)
            sd[p + "mixer.router.bias"] = rnd(int(code))
            for e in range(int(code)):
                sd[p + f"mixer.local_experts.{e}.linear_fc1.weight"] = rnd(2 * F_, H)
                sd[p + f"mixer.local_experts.{e}.linear_fc2.weight"] = rnd(H, F_)
    sd["decoder.final_layernorm.weight"] = 1 + rnd(H)
    sd["decoder.final_layernorm.bias"] = rnd(H)
    return sd


def original_forward(sd, config, input_ids):
    """The released forward pass, restated in plain PyTorch with loops (no mamba-zoo code): pre-norm RMSNorm blocks
    with the residual carried separately, the Mamba layer with a sequential selective scan, the sigmoid top-1 switch MLP
    (GELU(gate) * up experts scaled by the raw sigmoid probability), final LayerNorm with bias, tied output layer."""
    H = config["hidden_size"]
    N, K = config["state_size"], config["conv_dimension"]
    R = math.ceil(H / 16)
    hidden = sd["embedding.word_embeddings.weight"][input_ids]  # (B, L, H)
    residual = None
    for i, code in enumerate(config["mamba_moe_layers"]):
        p = f"decoder.layers.{i}."
        residual = hidden if residual is None else hidden + residual
        x = residual * torch.rsqrt(residual.pow(2).mean(-1, keepdim=True) + 1e-5) * sd[p + "norm.weight"]
        if code == "r":
            B_, L, _ = x.shape
            xz = x @ sd[p + "mixer.in_proj.weight"].T
            u, z = xz.chunk(2, dim=-1)  # (B, L, D)
            u = F.conv1d(u.transpose(1, 2), sd[p + "mixer.conv1d.weight"], sd[p + "mixer.conv1d.bias"],
                         padding=K - 1, groups=u.shape[-1])[..., :L].transpose(1, 2)
            u = F.silu(u)
            dbc = u @ sd[p + "mixer.x_proj.weight"].T
            dt, Bm, Cm = dbc.split([R, N, N], dim=-1)
            dt = F.softplus(dt @ sd[p + "mixer.dt_proj.weight"].T + sd[p + "mixer.dt_proj.bias"])
            A = -torch.exp(sd[p + "mixer.A_log"])
            state = torch.zeros(B_, u.shape[-1], N)
            ys = []
            for t in range(L):
                state = torch.exp(dt[:, t, :, None] * A) * state + (dt[:, t] * u[:, t])[:, :, None] * Bm[:, t, None, :]
                ys.append((state * Cm[:, t, None, :]).sum(-1) + sd[p + "mixer.D"] * u[:, t])
            y = torch.stack(ys, dim=1) * F.silu(z)
            hidden = y @ sd[p + "mixer.out_proj.weight"].T
        elif code == "1":
            gate, up = (x @ sd[p + "mixer.linear_fc1.weight"].T).chunk(2, dim=-1)
            hidden = (F.gelu(gate) * up) @ sd[p + "mixer.linear_fc2.weight"].T
        else:
            out = torch.zeros_like(x)
            for b in range(x.shape[0]):
                for t in range(x.shape[1]):
                    probs = torch.sigmoid(x[b, t] @ sd[p + "mixer.router.weight"].T + sd[p + "mixer.router.bias"])
                    e = int(probs.argmax())
                    gate, up = (x[b, t] @ sd[p + f"mixer.local_experts.{e}.linear_fc1.weight"].T).chunk(2)
                    out[b, t] = probs[e] * ((F.gelu(gate) * up) @ sd[p + f"mixer.local_experts.{e}.linear_fc2.weight"].T)
            hidden = out
    residual = hidden + residual
    normed = F.layer_norm(residual, (H,), sd["decoder.final_layernorm.weight"], sd["decoder.final_layernorm.bias"], 1e-5)
    return normed @ sd["embedding.word_embeddings.weight"].T


def write_original(tmp_path, config=ORIGINAL_CONFIG, sd=None):
    sd = original_state_dict(config) if sd is None else sd
    torch.save({"model": sd, "iteration": 1000}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(config))
    return sd


def test_converted_model_matches_independent_original_forward(tmp_path):
    sd = write_original(tmp_path)
    sd["output_layer.weight"] = sd["embedding.word_embeddings.weight"].clone()  # tied head, as saved by some exports
    torch.save({"model": sd}, tmp_path / "pytorch_model.bin")
    model = convert_blackmamba_checkpoint(str(tmp_path / "pytorch_model.bin"), str(tmp_path / "config.json"))
    assert model.config.layer_types == ["mamba", "moe", "mamba", "mlp", "mamba"]
    assert model.config.num_experts == 4 and model.config.gated_mlp and model.config.hidden_act == "gelu"
    input_ids = torch.randint(0, 53, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = original_forward(sd, ORIGINAL_CONFIG, input_ids)
        ours = model(input_ids, use_cache=False).logits
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_command_line_writes_safetensors_config_and_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sd = write_original(tmp_path)
    vocab = {"<|endoftext|>": 0, "<|padding|>": 1, **{f"w{i}": i + 2 for i in range(51)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.save(str(tmp_path / "tokenizer.json"))
    out = tmp_path / "hf"
    main(["--checkpoint", str(tmp_path / "pytorch_model.bin"), "--config", str(tmp_path / "config.json"),
          "--output", str(out), "--tokenizer", str(tmp_path / "tokenizer.json")])
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token_id == 1 and tokenizer.eos_token_id == 0
    ids = tokenizer(["w3 w4 w5 w6"], return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original_forward(sd, ORIGINAL_CONFIG, ids), atol=1e-4, rtol=1e-4)


def test_mismatched_or_unsupported_checkpoints_raise(tmp_path):
    sd = original_state_dict(ORIGINAL_CONFIG)
    with pytest.raises(ValueError, match="not supported"):
        blackmamba_config_from_original({**ORIGINAL_CONFIG, "mamba_moe_layers": ["r", "r8", "r", "1", "r"]}, sd)
    with pytest.raises(ValueError, match="num_layers"):
        blackmamba_config_from_original({**ORIGINAL_CONFIG, "num_layers": 4}, sd)
    with pytest.raises(ValueError, match="router has 4 experts"):
        blackmamba_config_from_original({**ORIGINAL_CONFIG, "mamba_moe_layers": ["r", "8", "r", "1", "r"]}, sd)
    with pytest.raises(ValueError, match="embedding"):
        blackmamba_config_from_original({**ORIGINAL_CONFIG, "hidden_size": 32}, sd)
    extra = dict(sd, **{"decoder.layers.0.mixer.unexpected": torch.zeros(1)})
    write_original(tmp_path, sd=extra)
    with pytest.raises(ValueError, match="Unused keys: \\['backbone.layers.0.mixer.unexpected'\\]"):
        convert_blackmamba_checkpoint(str(tmp_path / "pytorch_model.bin"), str(tmp_path / "config.json"))
    torch.save({"state_dict": sd}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="'model' state dict"):
        convert_blackmamba_checkpoint(str(tmp_path / "pytorch_model.bin"), str(tmp_path / "config.json"))
