"""Conversion of SSAMBA's original checkpoints: a state dict with the released key names and shapes converts strictly,
and the converted model computes what the original forward computes (checked against a plain-PyTorch re-implementation
of SSAMBA/Vim's forward pass written here: bimamba v2 mixers with divide_out, Add->LayerNorm->Mixer blocks, layer
pairing over the reversed sequence, the double final norm, mean pooling, LayerNorm+Linear head)."""

import math

import pytest
import torch
import torch.nn.functional as F

from mamba_zoo.convert_ssamba_original_to_hf import convert_checkpoint

D, DEPTH, N, D_CONV, EXPAND = 32, 4, 8, 4, 2
FDIM, TDIM, PATCH = 32, 64, 16  # pretraining spectrogram 32 mel x 64 frames -> 2 x 4 patches
DT_RANK = math.ceil(D / 16)


def original_state_dict(seed=0, num_labels=None, num_patches=8):
    """Random tensors under SSAMBA's released key names (DataParallel `module.` prefix) and shapes."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    d_inner = EXPAND * D
    sd = {
        "module.v.patch_embed.proj.weight": rnd(D, 1, PATCH, PATCH, scale=0.05),
        "module.v.patch_embed.proj.bias": rnd(D),
        "module.v.cls_token": rnd(1, 1, D),
        "module.v.pos_embed": rnd(1, num_patches + 1, D),
        "module.v.head.weight": rnd(1000, D),
        "module.v.head.bias": rnd(1000),
        "module.v.norm_f.weight": 1 + rnd(D),
        "module.v.norm_f.bias": rnd(D),
    }
    for i in range(DEPTH):
        p = f"module.v.layers.{i}."
        sd[p + "norm.weight"] = 1 + rnd(D)
        sd[p + "norm.bias"] = rnd(D)
        sd[p + "mixer.in_proj.weight"] = rnd(2 * d_inner, D)
        sd[p + "mixer.out_proj.weight"] = rnd(D, d_inner)
        for s in ("", "_b"):
            sd[p + f"mixer.conv1d{s}.weight"] = rnd(d_inner, 1, D_CONV)
            sd[p + f"mixer.conv1d{s}.bias"] = rnd(d_inner)
            sd[p + f"mixer.x_proj{s}.weight"] = rnd(DT_RANK + 2 * N, d_inner)
            sd[p + f"mixer.dt_proj{s}.weight"] = rnd(d_inner, DT_RANK)
            sd[p + f"mixer.dt_proj{s}.bias"] = rnd(d_inner) - 2.0
            sd[p + ("mixer.A_log" if s == "" else "mixer.A_b_log")] = torch.log(
                torch.arange(1, N + 1, dtype=torch.float32).repeat(d_inner, 1)) + rnd(d_inner, N, scale=0.1)
            sd[p + f"mixer.D{s}"] = 1 + rnd(d_inner)
    if num_labels is None:
        sd["module.mask_embed"] = rnd(1, 1, D)
        sd["module.p_input_fdim"] = torch.tensor(FDIM)
        sd["module.p_input_tdim"] = torch.tensor(TDIM)
        for head in ("cpredlayer", "gpredlayer"):
            sd[f"module.{head}.0.weight"] = rnd(D, D)
            sd[f"module.{head}.0.bias"] = rnd(D)
            sd[f"module.{head}.2.weight"] = rnd(PATCH * PATCH, D)
            sd[f"module.{head}.2.bias"] = rnd(PATCH * PATCH)
    else:
        sd["module.mlp_head.0.weight"] = 1 + rnd(D)
        sd["module.mlp_head.0.bias"] = rnd(D)
        sd["module.mlp_head.1.weight"] = rnd(num_labels, D)
        sd["module.mlp_head.1.bias"] = rnd(num_labels)
    return sd


# ---------------------------------------------------------------- independent re-implementation of the original


def ref_mamba_v2(sd, p, x):
    """Vim's Mamba with bimamba_type="v2" and if_devide_out=True on (B, L, D), sequential scan."""
    B, L, _ = x.shape
    xz = (x @ sd[p + "in_proj.weight"].T).transpose(1, 2)  # (B, 2*d_inner, L)

    def branch(xz, s, a_name):
        xs, z = xz.chunk(2, dim=1)
        w, b = sd[p + f"conv1d{s}.weight"], sd[p + f"conv1d{s}.bias"]
        xs = F.silu(F.conv1d(xs, w, b, padding=D_CONV - 1, groups=xs.shape[1])[..., :L])
        dbl = xs.transpose(1, 2) @ sd[p + f"x_proj{s}.weight"].T  # (B, L, R + 2N)
        dt, Bm, Cm = dbl.split([DT_RANK, N, N], dim=-1)
        delta = F.softplus(dt @ sd[p + f"dt_proj{s}.weight"].T + sd[p + f"dt_proj{s}.bias"])  # (B, L, d_inner)
        A = -torch.exp(sd[p + a_name])
        state = torch.zeros(B, xs.shape[1], N)
        ys = []
        for t in range(L):
            state = torch.exp(delta[:, t, :, None] * A) * state + delta[:, t, :, None] * Bm[:, t, None, :] * xs[:, :, t, None]
            ys.append((state * Cm[:, t, None, :]).sum(-1))
        y = torch.stack(ys, dim=-1) + xs * sd[p + f"D{s}"][None, :, None]
        return y * F.silu(z)

    out = branch(xz, "", "A_log")
    out_b = branch(xz.flip([-1]), "_b", "A_b_log")
    y = (out + out_b.flip([-1])) / 2
    return y.transpose(1, 2) @ sd[p + "out_proj.weight"].T


def ref_block(sd, i, hidden, residual):
    p = f"v.layers.{i}."
    residual = hidden if residual is None else residual + hidden
    normed = F.layer_norm(residual, (D,), sd[p + "norm.weight"], sd[p + "norm.bias"], eps=1e-5)
    return ref_mamba_v2(sd, p + "mixer.", normed), residual


def ref_forward(sd, x, fstride, tstride):
    """SSAMBA `finetuningavgtok` body (eval mode: drop path off, fused_add_norm=False), x (B, T, F)."""
    sd = {k[len("module."):]: v.double() for k, v in sd.items() if v.is_floating_point()}
    x = x.double().unsqueeze(1).transpose(2, 3)
    x = F.conv2d(x, sd["v.patch_embed.proj.weight"], sd["v.patch_embed.proj.bias"], stride=(fstride, tstride))
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["v.cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["v.pos_embed"]
    hidden, residual = x, None
    for i in range(DEPTH // 2):
        hf, rf = ref_block(sd, 2 * i, hidden, residual)
        hb, rb = ref_block(sd, 2 * i + 1, hidden.flip([1]), None if residual is None else residual.flip([1]))
        hidden, residual = hf + hb.flip([1]), rf + rb.flip([1])
    residual = residual + hidden
    hidden = F.layer_norm(residual, (D,), sd["v.norm_f.weight"], sd["v.norm_f.bias"], eps=1e-5)
    hidden = F.layer_norm(hidden, (D,), sd["v.norm_f.weight"], sd["v.norm_f.bias"], eps=1e-5)
    pooled = hidden[:, 1:].mean(1)
    logits = None
    if "mlp_head.1.weight" in sd:
        logits = F.layer_norm(pooled, (D,), sd["mlp_head.0.weight"], sd["mlp_head.0.bias"]) @ sd["mlp_head.1.weight"].T
        logits = logits + sd["mlp_head.1.bias"]
    return hidden, logits


# ---------------------------------------------------------------- tests


def test_convert_pretrained_checkpoint_matches_original_forward(tmp_path, capsys):
    sd = original_state_dict(seed=0)
    path = tmp_path / "ssamba_tiny_5.pth"
    torch.save(sd, path)
    model = convert_checkpoint(path, tmp_path / "out")
    printed = capsys.readouterr().out
    assert "module.v.head.weight" not in printed and "v.head.weight" in printed  # unused keys are listed
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.state_size, config.time_step_rank) == (D, DEPTH, N, 2)
    assert (config.num_mel_bins, config.max_length, config.patch_size, config.mask_patch_count) == (FDIM, TDIM, 16, 5)
    assert config.norm_type == "layernorm" and config.bidirectional_mixer and config.bidirectional_layer_pairing
    x = torch.randn(2, TDIM, FDIM)
    expected, _ = ref_forward(sd, x, 16, 16)
    from mamba_zoo import SSAMBAModel

    base = SSAMBAModel.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        ours = base(x).last_hidden_state
    torch.testing.assert_close(ours.double(), expected, rtol=1e-4, atol=1e-4)
    assert (tmp_path / "out" / "preprocessor_config.json").exists()
    # the SSAST heads came along
    torch.testing.assert_close(model.discriminative_head[2].weight, sd["module.cpredlayer.2.weight"])
    torch.testing.assert_close(model.ssamba.embeddings.mask_token, sd["module.mask_embed"])


def test_convert_finetuned_checkpoint_logits_match(tmp_path):
    # fine-tuned at stride 10 on 32 mel x 36 frames: 2 x 3 patches
    sd = original_state_dict(seed=1, num_labels=5, num_patches=6)
    path = tmp_path / "ssamba_ft.pth"
    torch.save(sd, path)
    model = convert_checkpoint(path, frequency_stride=10, time_stride=10, max_length=36, num_mel_bins=32)
    x = torch.randn(3, 36, 32)
    _, expected = ref_forward(sd, x, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits.double(), expected, rtol=1e-4, atol=1e-4)


def test_conversion_is_strict(tmp_path):
    sd = original_state_dict()
    sd["module.v.layers.0.mixer.extra"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="unexpected keys: .*layers.0.mixer.extra"):
        convert_checkpoint(tmp_path / "bad.pth", mask_patch_count=5)
    sd = original_state_dict()
    del sd["module.v.layers.1.mixer.D_b"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="missing keys: .*layers.1.mixer.D_b"):
        convert_checkpoint(tmp_path / "missing.pth", mask_patch_count=5)
    sd = original_state_dict(num_labels=3, num_patches=6)
    torch.save(sd, tmp_path / "ft.pth")
    with pytest.raises(ValueError, match="--frequency-stride"):
        convert_checkpoint(tmp_path / "ft.pth")  # geometry of a fine-tuned checkpoint is not in its weights


def test_cli_entry_point(tmp_path):
    from transformers import AutoConfig

    from mamba_zoo.convert_ssamba_original_to_hf import main

    torch.save(original_state_dict(), tmp_path / "ssamba_tiny_6.pth")
    main(["--checkpoint", str(tmp_path / "ssamba_tiny_6.pth"), "--output", str(tmp_path / "cli")])
    assert AutoConfig.from_pretrained(tmp_path / "cli").mask_patch_count == 6  # from the file name
