# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""The fused no-grad CPU decoding steps (`mamba_zoo.cpu_decode`) against the general path they replace: the linear
kernel against `F.linear`, the add + RMSNorm kernel against `RMSNorm`, the Mamba step against the mixer's PyTorch
step, and whole-model cached generation with the kernels on and off; plus the cases that must not take them."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mamba_zoo import cpu_decode
from mamba_zoo.cpu_decode import add_rms_norm_decode, decode_linear, mamba_mixer_decode_step
from mamba_zoo.mamba_cache import MambaZooCache
from mamba_zoo.mamba_layers import Mamba2Mixer, MambaBlock, MambaMixer, RMSNorm

pytest.importorskip("numba")


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.fixture
def kernels_off(monkeypatch):
    """A context switch: `with kernels_off(): ...` runs the general path."""
    import contextlib

    @contextlib.contextmanager
    def off():
        monkeypatch.setattr(cpu_decode, "DECODE_KERNELS", False)
        try:
            yield
        finally:
            monkeypatch.setattr(cpu_decode, "DECODE_KERNELS", True)

    return off


def _count_kernel_calls(monkeypatch, name):
    calls = []
    original = getattr(cpu_decode, name)

    def counting(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(cpu_decode, name, counting)
    return calls


# ---------------------------------------------------------------------------------------------- linear and norm


@pytest.mark.parametrize("in_features,out_features,bias", [(48, 40, True), (256, 1024, False), (300, 257, True)])
@pytest.mark.parametrize("rows", [1, 3])
def test_decode_linear_equals_linear(in_features, out_features, bias, rows, monkeypatch):
    """Serial (small) and parallel (large, out_features not a multiple of the task block) kernels equal F.linear."""
    torch.manual_seed(in_features + rows)
    linear = nn.Linear(in_features, out_features, bias=bias)
    x = torch.randn(rows, 1, in_features)
    serial = _count_kernel_calls(monkeypatch, "_gemv_serial_kernel")
    parallel = _count_kernel_calls(monkeypatch, "_gemv_parallel_kernel")
    with torch.no_grad():
        out = decode_linear(linear, x)
    assert out.shape == (rows, 1, out_features)
    assert rel_err(out, F.linear(x, linear.weight, linear.bias)) < 1e-6
    assert len(serial) + len(parallel) == 1
    assert (len(parallel) == 1) == (in_features * out_features >= cpu_decode._PARALLEL_MIN_ELEMENTS)


def test_decode_linear_defers_to_wrappers_hooks_grad_and_large_batches(monkeypatch):
    """A subclass (as a LoRA wrapper is), a hooked layer, a call needing gradients and a batch above DECODE_MAX_ROWS
    all take the module's own call."""
    calls = _count_kernel_calls(monkeypatch, "_gemv_serial_kernel")

    class Shifted(nn.Linear):
        def forward(self, x):
            return super().forward(x) + 1.0

    torch.manual_seed(0)
    x = torch.randn(1, 8)
    shifted = Shifted(8, 4)
    with torch.no_grad():
        assert torch.allclose(decode_linear(shifted, x), F.linear(x, shifted.weight, shifted.bias) + 1.0)
    hooked = nn.Linear(8, 4)
    hooked.register_forward_hook(lambda module, args, output: output * 0)
    with torch.no_grad():
        assert decode_linear(hooked, x).abs().max() == 0
    plain = nn.Linear(8, 4)
    out = decode_linear(plain, x)  # grad mode on, weight requires grad
    assert out.requires_grad
    with torch.no_grad():
        decode_linear(plain, torch.randn(cpu_decode.DECODE_MAX_ROWS + 1, 8))
    assert calls == []
    with torch.no_grad():
        decode_linear(plain, x)
    assert calls == [1]


def test_decode_linear_sees_weight_changes():
    """The cached weight view follows in-place updates and replaced storage (`.data = ...`)."""
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    x = torch.randn(1, 16)
    with torch.no_grad():
        decode_linear(linear, x)
        linear.weight.mul_(-2.0)
        assert rel_err(decode_linear(linear, x), F.linear(x, linear.weight, linear.bias)) < 1e-6
        linear.weight.data = torch.randn(8, 16)
        assert rel_err(decode_linear(linear, x), F.linear(x, linear.weight, linear.bias)) < 1e-6


@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm_equals_block_norm(with_residual):
    torch.manual_seed(1)
    norm = RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(24))
    hidden, residual = torch.randn(2, 1, 24) * 3, torch.randn(2, 1, 24)
    with torch.no_grad():
        normed, new_residual = add_rms_norm_decode(norm, hidden, residual if with_residual else None)
    expected_residual = hidden + residual if with_residual else hidden
    assert rel_err(new_residual, expected_residual) < 1e-7
    assert rel_err(normed, norm(expected_residual)) < 1e-6
    assert add_rms_norm_decode(nn.LayerNorm(24), hidden, None) is None  # only RMSNorm
    assert add_rms_norm_decode(norm, hidden, None) is None  # grad mode on, weight requires grad


# ---------------------------------------------------------------------------------------------- the Mamba step


def _random_mixer(bidirectional=False, divide_out=False, conv_bias=True, seed=0, mamba2=False):
    torch.manual_seed(seed)
    kwargs = dict(d_state=8, d_conv=4, bidirectional=bidirectional, divide_out=divide_out, conv_bias=conv_bias,
                  layer_idx=0)
    if mamba2:  # 8 heads in 2 groups
        mixer = Mamba2Mixer(32, headdim=8, ngroups=2, chunk_size=4, **kwargs).eval()
    else:
        mixer = MambaMixer(32, **kwargs).eval()
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            if "A" in name and "log" in name:
                p.copy_(torch.rand_like(p) * 2 - 1)  # decays that differ per channel (head) and state
            elif name.startswith("D"):
                p.copy_(torch.randn_like(p))
            else:
                p.add_(torch.randn_like(p) * 0.2)
    return mixer


@pytest.mark.parametrize("mamba2", [False, True], ids=["mamba", "mamba2"])
@pytest.mark.parametrize("bidirectional,divide_out,conv_bias", [(False, False, True), (False, False, False),
                                                                 (True, False, True), (True, True, True)])
def test_mamba_step_equals_general_step(bidirectional, divide_out, conv_bias, mamba2, kernels_off, monkeypatch):
    """Prefill, then step 6 tokens with the fused kernels and with the general PyTorch step from copies of the same
    cache: outputs and both branches' conv and SSM states agree to float32 rounding at every step."""
    mixer = _random_mixer(bidirectional, divide_out, conv_bias, mamba2=mamba2)
    calls = _count_kernel_calls(monkeypatch, "_mamba2_step_kernel" if mamba2 else "_mamba_step_kernel")
    batch, prefix, steps = 3, 7, 6
    x = torch.randn(batch, prefix + steps, 32)
    states = 2 if bidirectional else 1
    with torch.no_grad():
        fused_cache, general_cache = MambaZooCache([states]), MambaZooCache([states])
        mixer(x[:, :prefix], cache=fused_cache)
        with kernels_off():
            mixer(x[:, :prefix], cache=general_cache)
        for t in range(prefix, prefix + steps):
            fused = mixer(x[:, t:t + 1], cache=fused_cache)
            with kernels_off():
                general = mixer(x[:, t:t + 1], cache=general_cache)
            assert fused.shape == (batch, 1, 32)
            assert rel_err(fused, general) < 2e-6
    for state_idx in range(states):
        fused_state, general_state = (c.get_recurrent_state(0, state_idx) for c in (fused_cache, general_cache))
        assert rel_err(fused_state, general_state) < 2e-6
        # the windows hold in_proj outputs: the matrix-vector kernel rounds differently from torch's GEMM
        assert rel_err(fused_cache.get_conv_state(0, state_idx), general_cache.get_conv_state(0, state_idx)) < 1e-6
    assert len(calls) == steps * states
    assert fused_cache.get_seq_length() == general_cache.get_seq_length() == prefix + steps


def test_mamba_step_declines_what_it_does_not_serve(monkeypatch):
    """No cached state yet, several tokens, a padded step, reverse_lengths, a wrapped x_proj, or gradients: the
    general path runs (None here)."""
    mixer = _random_mixer()
    cache = MambaZooCache([1])
    x = torch.randn(2, 1, 32)
    with torch.no_grad():
        assert mamba_mixer_decode_step(mixer, x, None, None, cache) is None  # nothing prefilled
        mixer(torch.randn(2, 5, 32), cache=cache)
        assert mamba_mixer_decode_step(mixer, torch.randn(2, 2, 32), None, None, cache) is None
        assert mamba_mixer_decode_step(mixer, x, torch.tensor([[1], [0]]), None, cache) is None
        assert mamba_mixer_decode_step(mixer, x, None, torch.tensor([1, 1]), cache) is None
        assert mamba_mixer_decode_step(mixer, x, torch.ones(2, 1), None, cache) is not None

        class Wrapped(nn.Linear):
            pass

        wrapped = Wrapped(mixer.d_inner, mixer.x_proj.out_features, bias=False)
        wrapped.weight = mixer.x_proj.weight
        mixer.x_proj = wrapped
        assert mamba_mixer_decode_step(mixer, x, None, None, cache) is None
    assert mamba_mixer_decode_step(_random_mixer(), x, None, None, cache) is None  # grad mode, params need grad


def test_mamba_step_follows_a_changed_a_log(kernels_off):
    """A = -exp(A_log) is cached per parameter value: an in-place change of A_log is seen by the next step."""
    mixer = _random_mixer()
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        caches = [MambaZooCache([1]), MambaZooCache([1])]
        for cache in caches:
            mixer(x[:, :4], cache=cache)
        mixer(x[:, 4:5], cache=caches[0])  # caches A
        with kernels_off():
            mixer(x[:, 4:5], cache=caches[1])
        mixer.A_log.mul_(0.5)
        fused = mixer(x[:, 5:6], cache=caches[0])
        with kernels_off():
            general = mixer(x[:, 5:6], cache=caches[1])
    assert rel_err(fused, general) < 2e-6


def test_block_uses_the_fused_norm_only_without_drop_path(monkeypatch):
    calls = _count_kernel_calls(monkeypatch, "_add_rms_norm_kernel")
    torch.manual_seed(0)
    block = MambaBlock(32, _random_mixer(), drop_path=0.5).train()
    hidden, residual = torch.randn(1, 1, 32), torch.randn(1, 1, 32)
    with torch.no_grad():
        block(hidden, residual)
        assert calls == []
        block.eval()
        out, new_residual = block(hidden, residual)
    assert calls == [1]
    assert rel_err(new_residual, hidden + residual) < 1e-7


# ---------------------------------------------------------------------------------------------- whole models


def test_blackmamba_generation_with_and_without_kernels(kernels_off, monkeypatch):
    """Greedy cached generation of a tiny random BlackMamba: same tokens and (to rounding) same scores with the fused
    kernels as with the general path, and the fused step actually ran."""
    from test_modeling_blackmamba import tiny_model

    model = tiny_model(seed=3)
    calls = _count_kernel_calls(monkeypatch, "_mamba_step_kernel")
    prompt = torch.randint(2, 61, (2, 9))
    kwargs = dict(max_new_tokens=12, do_sample=False, output_scores=True, return_dict_in_generate=True,
                  pad_token_id=1, eos_token_id=None)
    fused = model.generate(prompt, **kwargs)
    assert calls
    with kernels_off():
        general = model.generate(prompt, **kwargs)
    assert torch.equal(fused.sequences, general.sequences)
    for a, b in zip(fused.scores, general.scores):
        assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("mixer_type", ["mamba", "mamba2"])
def test_madeon_generation_with_and_without_kernels(mixer_type, kernels_off, monkeypatch):
    """MADEON (bidirectional speech prefixing, so both branches step), Mamba-1 and Mamba-2: same transcripts and
    scores."""
    from test_modeling_mamba_asr import NUM_UNITS, tiny_model

    model = tiny_model("parallel", mixer_type, seed=5)
    calls = _count_kernel_calls(monkeypatch, "_mamba2_step_kernel" if mixer_type == "mamba2" else "_mamba_step_kernel")
    speech_ids = torch.randint(0, NUM_UNITS, (2, 11))
    kwargs = dict(max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True)
    fused = model.generate(speech_ids=speech_ids, **kwargs)
    assert calls
    with kernels_off():
        general = model.generate(speech_ids=speech_ids, **kwargs)
    assert torch.equal(fused.sequences, general.sequences)
    for a, b in zip(fused.scores, general.scores):
        assert rel_err(a, b) < 1e-5
