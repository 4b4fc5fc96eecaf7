"""Tests for the shared layers: parity with transformers' Mamba/Mamba2 mixers, cached decoding, bidirectional
reversal within lengths, LoRA visibility, MoE dispatch and load balancing."""

import pytest
import torch
from torch import nn

from mamba_zoo import cpu_inference
from mamba_zoo.cpu_inference import cpu_inference_applies
from mamba_zoo.mamba_cache import MambaZooCache
from mamba_zoo.mamba_layers import DropPath, Mamba2Mixer, MambaBlock, MambaMixer, RMSNormGated
from mamba_zoo.moe_layers import SwitchMoE, load_balancing_loss
from mamba_zoo.sequence_utils import reversal_index
from zoo_cases import randomize


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _randomize(module, seed=0):
    """Give every parameter fresh random values so that no parity check passes by accident on init constants:
    N(0, 0.3^2), norm weights included (A_log in [-0.5, 1.5))."""
    randomize(module, seed, std=0.3, norm_weights_around_one=False)


# ---------------------------------------------------------------------------------------------- transformers parity


def test_mamba_mixer_matches_transformers_state_dict():
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer as HFMambaMixer

    config = MambaConfig(hidden_size=32, state_size=8, expand=2, conv_kernel=4, num_hidden_layers=1)
    torch.manual_seed(0)
    hf = HFMambaMixer(config, layer_idx=0).eval()
    _randomize(hf, seed=1)
    ours = MambaMixer(d_model=32, d_state=8, d_conv=4, expand=2, dt_rank=config.time_step_rank, layer_idx=0).eval()
    missing, unexpected = ours.load_state_dict(hf.state_dict(), strict=True)
    assert not missing and not unexpected

    x = torch.randn(2, 37, 32)
    with torch.no_grad():
        expected = hf(x)
        for backend in ("reference", "cpu"):
            ours.backend = backend
            assert rel_err(ours(x), expected) < 1e-5, backend


def test_mamba2_mixer_matches_transformers_state_dict():
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMamba2Mixer

    config = Mamba2Config(
        hidden_size=32, state_size=16, expand=2, head_dim=16, num_heads=4, n_groups=2, chunk_size=8,
        conv_kernel=4, num_hidden_layers=1, use_bias=False, use_conv_bias=True,
    )
    torch.manual_seed(0)
    hf = HFMamba2Mixer(config, layer_idx=0).eval()
    _randomize(hf, seed=2)
    with torch.no_grad():
        hf.A_log.copy_(torch.rand(4))
    ours = Mamba2Mixer(d_model=32, d_state=16, expand=2, headdim=16, ngroups=2, chunk_size=8, layer_idx=0).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    x = torch.randn(2, 29, 32)
    with torch.no_grad():
        assert rel_err(ours(x), hf(x)) < 1e-5


# ---------------------------------------------------------------------------------------------- bidirectional


def _plain_bidirectional(mixer: MambaMixer, x: torch.Tensor) -> torch.Tensor:
    """Independent statement of Vim v2: forward branch + flip(branch_b(flip(xz))), computed with the reference scan
    by running two unidirectional mixers that share in/out projections."""
    fwd = MambaMixer(mixer.d_model, mixer.d_state, mixer.d_conv, mixer.expand, dt_rank=mixer.dt_rank, backend="reference")
    bwd = MambaMixer(mixer.d_model, mixer.d_state, mixer.d_conv, mixer.expand, dt_rank=mixer.dt_rank, backend="reference")
    sd = mixer.state_dict()
    fwd.load_state_dict({k: v for k, v in sd.items() if "_b" not in k})
    bwd.load_state_dict({
        "in_proj.weight": sd["in_proj.weight"], "out_proj.weight": sd["out_proj.weight"],
        "conv1d.weight": sd["conv1d_b.weight"], "conv1d.bias": sd["conv1d_b.bias"],
        "x_proj.weight": sd["x_proj_b.weight"], "dt_proj.weight": sd["dt_proj_b.weight"],
        "dt_proj.bias": sd["dt_proj_b.bias"], "A_log": sd["A_b_log"], "D": sd["D_b"],
    })
    # out_proj is linear and bias-free: out_proj(a + b) / 2 == (out_proj(a) + out_proj(b)) / 2
    y = fwd(x) + bwd(x.flip(1)).flip(1)
    return y / 2 if mixer.divide_out else y


@pytest.mark.parametrize("divide_out", [False, True])
def test_bidirectional_mixer_matches_two_plain_branches(divide_out):
    torch.manual_seed(0)
    mixer = MambaMixer(24, d_state=8, bidirectional=True, divide_out=divide_out).eval()
    _randomize(mixer, seed=3)
    x = torch.randn(3, 19, 24)
    with torch.no_grad():
        assert rel_err(mixer(x), _plain_bidirectional(mixer, x)) < 1e-5


@pytest.mark.parametrize("mixer_cls", [MambaMixer, Mamba2Mixer])
def test_bidirectional_padding_never_changes_other_positions(mixer_cls):
    torch.manual_seed(0)
    kwargs = dict(headdim=8, d_state=8, chunk_size=4) if mixer_cls is Mamba2Mixer else dict(d_state=8)
    mixer = mixer_cls(16, bidirectional=True, divide_out=True, **kwargs).eval()
    a, b = torch.randn(1, 11, 16), torch.randn(1, 7, 16)
    batch = torch.zeros(2, 11, 16)
    batch[0], batch[1, :7] = a[0], b[0]
    batch[1, 7:] = torch.randn(4, 16) * 100  # garbage in the padding
    mask = torch.tensor([[1] * 11, [1] * 7 + [0] * 4])
    with torch.no_grad():
        out = mixer(batch, attention_mask=mask)
        assert rel_err(out[0], mixer(a)[0]) < 1e-5
        assert rel_err(out[1, :7], mixer(b)[0]) < 1e-5


def test_left_padding_is_rejected_by_bidirectional_mixer():
    mixer = MambaMixer(16, d_state=4, bidirectional=True)
    with pytest.raises(ValueError, match="right-padded"):
        mixer(torch.randn(1, 5, 16), attention_mask=torch.tensor([[0, 1, 1, 1, 1]]))


def test_reversal_index_is_an_involution_within_lengths():
    lengths = torch.tensor([5, 2, 0, 7])
    index = reversal_index(lengths, 7)
    assert index[0].tolist() == [4, 3, 2, 1, 0, 5, 6]
    assert index[1].tolist() == [1, 0, 2, 3, 4, 5, 6]
    assert index[2].tolist() == list(range(7))
    assert torch.equal(index.gather(1, index), torch.arange(7).expand(4, 7))


# ---------------------------------------------------------------------------------------------- fused inference path


def _numba_available():
    from mamba_zoo.cpu_scan_kernels import is_available

    return is_available()


@pytest.mark.skipif(not _numba_available(), reason="the fused CPU kernels need numba")
@pytest.mark.parametrize("bidirectional,divide_out", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("length", [1, 5, 37])
def test_mixer_inference_path_matches_reference(bidirectional, divide_out, length):
    """Without grad the mixer runs the time-major fused kernels (the backward branch walks time in reverse through
    the reversal index, never flipping): same outputs as the reference backend, with and without padding and
    reverse_lengths."""
    torch.manual_seed(length)
    mixer = MambaMixer(24, d_state=8, bidirectional=bidirectional, divide_out=divide_out).eval()
    _randomize(mixer, seed=5)
    x = torch.randn(3, length, 24)
    lengths = torch.tensor([length, max(1, length - 3), max(1, length // 2)])
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    cases = [{}, {"attention_mask": mask}]
    if bidirectional:
        cases += [{"reverse_lengths": torch.tensor([length, length // 3, 0])},
                  {"attention_mask": mask, "reverse_lengths": (lengths + 1) // 2}]
    for kwargs in cases:
        mixer.backend = "auto"
        assert cpu_inference_applies(mixer, x) is False  # grad enabled and parameters require grad
        with torch.no_grad():
            assert cpu_inference_applies(mixer, x)
            fast = mixer(x, **kwargs)
        with torch.inference_mode():
            fast_im = mixer(x, **kwargs)
        mixer.backend = "reference"
        with torch.no_grad():
            assert not cpu_inference_applies(mixer, x)
            ref = mixer(x, **kwargs)
        mixer.backend = "auto"
        slow = mixer(x, **kwargs)  # the autograd path on the cpu kernels
        assert rel_err(fast, ref) < 1e-5, kwargs
        assert torch.equal(fast, fast_im)
        assert rel_err(slow.detach(), ref) < 1e-5, kwargs


@pytest.mark.skipif(not _numba_available(), reason="the fused CPU kernels need numba")
def test_mixer_inference_path_is_used_only_without_grad(monkeypatch):
    from mamba_zoo import cpu_scan_kernels

    calls = []
    original = cpu_scan_kernels.selective_scan_inference_time_major

    def counting(*args, **kwargs):
        calls.append(kwargs.get("channel_major", False))
        return original(*args, **kwargs)

    monkeypatch.setattr(cpu_scan_kernels, "selective_scan_inference_time_major", counting)
    from mamba_zoo import kernel_backends

    kernel_backends.cpu_kernels.cache_clear()
    try:
        mixer = MambaMixer(16, d_state=4, bidirectional=True)
        x = torch.randn(2, 9, 16)
        with torch.no_grad():
            mixer(x)
        assert calls == [False, False]  # both branches, time-major
        calls.clear()
        out = mixer(x)
        out.sum().backward()  # training: the autograd kernels, gradients reach the parameters
        assert calls == [] and mixer.A_b_log.grad is not None and mixer.conv1d_b.weight.grad is not None
        for p in mixer.parameters():
            p.requires_grad_(False)
        mixer(x)  # nothing requires grad: the fused path even with grad mode on
        assert calls == [False, False]
    finally:
        kernel_backends.cpu_kernels.cache_clear()


def _reverse_rows(x, lengths):
    """Each row of `x` (batch, L, D) reversed within its first lengths[b] steps, written plainly."""
    out = x.clone()
    for b, n in enumerate(lengths.tolist()):
        out[b, :n] = x[b, :n].flip(0)
    return out


@pytest.mark.parametrize("mixer_class", [MambaMixer, Mamba2Mixer])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_mixer_reverse_equals_flipped_call(mixer_class, bidirectional):
    """reverse=True (Vim's odd layers, MADEON's serial prefixing) == reverse(mixer(reverse(x))) with each row reversed
    within its length, or within `reverse_lengths` when given (later positions keep their order), on the autograd path
    (gradients included) and on the no-grad path (for MambaMixer the fused one, which walks time backwards instead)."""
    torch.manual_seed(1)
    extra = {"headdim": 8, "chunk_size": 4} if mixer_class is Mamba2Mixer else {}
    mixer = mixer_class(16, d_state=4, bidirectional=bidirectional, **extra).eval()
    _randomize(mixer, seed=8)
    x = torch.randn(3, 11, 16)
    lengths = torch.tensor([11, 7, 2])
    prefix = torch.tensor([4, 7, 1])
    mask = (torch.arange(11)[None, :] < lengths[:, None]).long()
    cases = (({}, torch.full((3,), 11)), ({"attention_mask": mask}, lengths),
             ({"attention_mask": mask, "reverse_lengths": prefix}, prefix), ({"reverse_lengths": prefix}, prefix))
    for kwargs, rows in cases:
        mixer.backend = "reference"
        with torch.no_grad():
            expected = _reverse_rows(mixer(_reverse_rows(x, rows), **kwargs), rows)
        mixer.backend = "auto"
        x_grad = x.clone().requires_grad_(True)
        trained = mixer(x_grad, reverse=True, **kwargs)
        trained.pow(2).sum().backward()
        with torch.no_grad():
            fast = mixer(x, reverse=True, **kwargs)
        assert rel_err(trained.detach(), expected) < 1e-5, kwargs
        assert rel_err(fast, expected) < 1e-5, kwargs
        assert not torch.allclose(fast, mixer(x, **kwargs).detach(), atol=1e-3)  # the direction matters
        assert x_grad.grad is not None and torch.isfinite(x_grad.grad).all()


@pytest.mark.skipif(not _numba_available(), reason="the fused CPU kernels need numba")
def test_inference_workspace_reuses_buffers_and_changes_nothing():
    """Inside `inference_workspace()` the no-grad mixers write their intermediates into shared buffers: outputs equal
    those from fresh tensors (to float32 rounding: the buffered projections call `torch.addmm(out=)` on contiguous
    rows where `nn.Linear` may take another GEMM path, which on some CPUs rounds a rank-1 `dt_proj` one ulp apart), the
    second mixer reuses the first one's buffers, and the context frees them."""
    from mamba_zoo.cpu_inference import _ACTIVE_WORKSPACE, inference_workspace

    torch.manual_seed(2)
    mixers = [MambaMixer(16, d_state=4, bidirectional=True).eval() for _ in range(2)]
    for i, mixer in enumerate(mixers):
        _randomize(mixer, seed=10 + i)
    x = torch.randn(2, 13, 16)
    with torch.no_grad():
        plain = [mixer(x) for mixer in mixers]
        with inference_workspace() as workspace:
            first = mixers[0](x)
            pointers = {name: buf.data_ptr() for name, buf in workspace._buffers.items()}
            second = mixers[1](x)
            assert set(pointers) == {"xz", "y", "conv", "dt"}
            assert {name: buf.data_ptr() for name, buf in workspace._buffers.items()} == pointers
            with inference_workspace() as inner:
                assert inner is workspace  # nested uses share the outer workspace
    assert _ACTIVE_WORKSPACE.get() is None
    torch.testing.assert_close(first, plain[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(second, plain[1], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(first, second, atol=1e-3)  # two different mixers: a mix-up of buffers would show
    assert first.data_ptr() not in pointers.values()  # the output is the caller's own tensor


@pytest.mark.skipif(not _numba_available(), reason="the fused CPU kernels need numba")
def test_inference_workspace_calls_wrapped_projections():
    """A hooked projection (or a LoRA-wrapped one) is still called as a module inside the workspace."""
    from mamba_zoo.cpu_inference import inference_workspace

    mixer = MambaMixer(16, d_state=4, bidirectional=True).eval()
    seen = []
    mixer.in_proj.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    mixer.dt_proj_b.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    with torch.no_grad(), inference_workspace():
        mixer(torch.randn(2, 5, 16))
    assert seen == [torch.Size([2, 5, 64]), torch.Size([2, 5, 32])]


@pytest.mark.skipif(not _numba_available(), reason="the fused CPU kernels need numba")
def test_inference_path_runs_long_batches_in_row_chunks(monkeypatch):
    """Batches over INFERENCE_CHUNK_TOKENS tokens run a few rows at a time, with the same outputs (padding and
    reverse included)."""
    torch.manual_seed(3)
    mixer = MambaMixer(16, d_state=4, bidirectional=True).eval()
    _randomize(mixer, seed=12)
    x = torch.randn(5, 9, 16)
    mask = (torch.arange(9)[None, :] < torch.tensor([9, 4, 9, 1, 6])[:, None]).long()
    calls = []
    default_chunk = cpu_inference.INFERENCE_CHUNK_TOKENS
    original = cpu_inference._forward_rows
    monkeypatch.setattr(cpu_inference, "_forward_rows", lambda m, h, *a: calls.append(h.shape[0]) or original(m, h, *a))
    for kwargs in ({}, {"attention_mask": mask}, {"attention_mask": mask, "reverse": True}):
        with torch.no_grad():
            whole = mixer(x, **kwargs)
            monkeypatch.setattr(cpu_inference, "INFERENCE_CHUNK_TOKENS", 18)  # 2 rows of 9 tokens
            calls.clear()
            chunked = mixer(x, **kwargs)
            monkeypatch.setattr(cpu_inference, "INFERENCE_CHUNK_TOKENS", default_chunk)
        assert calls == [2, 2, 1]
        assert rel_err(chunked, whole) < 1e-6, kwargs  # matmuls of other row counts may round differently


@pytest.mark.skipif(not _numba_available(), reason="the fused CPU kernels need numba")
@pytest.mark.parametrize("bidirectional,divide_out,bias", [(False, False, False), (True, False, True),
                                                          (True, True, False)])
@pytest.mark.parametrize("chunk", [2, 7, 40])
def test_long_sequences_run_in_time_chunks_with_carried_state(monkeypatch, bidirectional, divide_out, bias, chunk):
    """A sequence longer than INFERENCE_TIME_CHUNK runs each branch chunk by chunk along time (the forward branch
    from the start, the backward branch from the end), carrying the scan state and the conv window: the result is
    the reference backend's, for chunks shorter than the conv window, uneven last chunks and biased projections.
    Padded batches keep the one-pass path."""
    torch.manual_seed(chunk)
    mixer = MambaMixer(16, d_state=4, bidirectional=bidirectional, divide_out=divide_out, bias=bias).eval()
    _randomize(mixer, seed=chunk + 1)
    x = torch.randn(2, 45, 16)
    mask = (torch.arange(45)[None, :] < torch.tensor([45, 30])[:, None]).long()
    chunk_calls = []
    original = cpu_inference._branch_chunk
    monkeypatch.setattr(cpu_inference, "_branch_chunk", lambda m, h, start, end, *a: chunk_calls.append((start, end))
                        or original(m, h, start, end, *a))
    monkeypatch.setattr(cpu_inference, "INFERENCE_TIME_CHUNK", chunk)
    monkeypatch.setattr(cpu_inference, "TIME_CHUNK_TOKENS", 2 * chunk)  # chunks of `chunk` steps for 2 rows
    with torch.no_grad():
        chunked = mixer(x)
        whole_mask = mixer(x, attention_mask=torch.ones(2, 45, dtype=torch.long))
        chunked_reverse = mixer(x, reverse=True)
        padded = mixer(x, attention_mask=mask)
    starts = list(range(0, 45, chunk))
    forward = [(s, min(s + chunk, 45)) for s in starts]
    backward = forward[::-1]
    calls = forward + backward if bidirectional else forward
    calls_reverse = backward + forward if bidirectional else backward
    assert chunk_calls == calls * 2 + calls_reverse  # the unpadded calls and the all-ones mask; never the padded batch
    mixer.backend = "reference"
    with torch.no_grad():
        reference = mixer(x)
        reference_reverse = mixer(x, reverse=True)
        reference_padded = mixer(x, attention_mask=mask)
    assert rel_err(chunked, reference) < 1e-5
    assert rel_err(chunked_reverse, reference_reverse) < 1e-5
    assert rel_err(chunked_reverse, chunked) > 1e-3  # reversal matters: the test can tell the walks apart
    assert torch.equal(chunked, whole_mask)
    assert rel_err(padded, reference_padded) < 1e-5


@pytest.mark.parametrize("bidirectional,divide_out,bias", [(False, False, False), (True, False, True),
                                                          (True, True, False)])
@pytest.mark.parametrize("chunk", [2, 7, 40])
def test_mamba2_long_sequences_run_in_time_chunks_with_carried_state(monkeypatch, bidirectional, divide_out, bias,
                                                                     chunk):
    """Mamba-2 over a sequence longer than INFERENCE_TIME_CHUNK (no gradients): each branch chunk by chunk along time
    with its SSD state and conv window carried, the branch walking backward first (its output kept for the gated norm,
    which reads the sum of both), the forward walk finishing each chunk: equal to the one-pass forward, with layer-level
    reversal, chunks shorter than the conv window and uneven last chunks (SSD chunk size 8). Padded batches and
    anything needing gradients keep the one-pass path."""
    torch.manual_seed(chunk)
    mixer = Mamba2Mixer(16, d_state=4, headdim=8, chunk_size=8, bidirectional=bidirectional, divide_out=divide_out,
                        bias=bias).eval()
    _randomize(mixer, seed=chunk + 2)
    x = torch.randn(2, 45, 16)
    mask = (torch.arange(45)[None, :] < torch.tensor([45, 30])[:, None]).long()
    with torch.no_grad():
        whole, whole_reverse, whole_padded = mixer(x), mixer(x, reverse=True), mixer(x, attention_mask=mask)
    chunk_calls = []
    original = Mamba2Mixer._branch_chunk
    monkeypatch.setattr(Mamba2Mixer, "_branch_chunk", lambda self, h, start, end, suffix, backward, *a, **k:
                        chunk_calls.append((start, end, suffix)) or original(self, h, start, end, suffix, backward,
                                                                             *a, **k))
    monkeypatch.setattr(cpu_inference, "INFERENCE_TIME_CHUNK", chunk)
    monkeypatch.setattr(cpu_inference, "TIME_CHUNK_TOKENS", 2 * chunk)  # chunks of `chunk` steps for 2 rows
    with torch.no_grad():
        chunked = mixer(x)
        chunked_mask = mixer(x, attention_mask=torch.ones(2, 45, dtype=torch.long))
        chunked_reverse = mixer(x, reverse=True)
        padded = mixer(x, attention_mask=mask)
    with_grad = mixer(x)
    handle = mixer.out_proj.register_forward_hook(lambda *args: None)  # a hook expects one call: one pass
    with torch.no_grad():
        hooked = mixer(x)
    handle.remove()
    spans = [(s, min(s + chunk, 45)) for s in range(0, 45, chunk)]
    forward = [span + ("",) for span in spans]
    if bidirectional:
        calls = [span + ("_b",) for span in spans[::-1]] + forward
        calls_reverse = [span + ("",) for span in spans[::-1]] + [span + ("_b",) for span in spans]
    else:
        calls, calls_reverse = forward, [span + ("",) for span in spans[::-1]]
    assert chunk_calls == calls * 2 + calls_reverse  # never the padded batch, the call with gradients or the hooked one
    assert rel_err(chunked, whole) < 1e-5 and rel_err(chunked_mask, whole) < 1e-5
    assert rel_err(chunked_reverse, whole_reverse) < 1e-5 and rel_err(chunked_reverse, chunked) > 1e-3
    assert torch.equal(padded, whole_padded) and rel_err(with_grad.detach(), whole) < 1e-5
    assert torch.equal(hooked, whole)


@pytest.mark.skipif(not _numba_available(), reason="the fused CPU kernels need numba")
def test_inference_scan_kernel_carries_initial_state():
    """Scanning [0, k) and then [k, L) from the first part's last state equals one scan over [0, L), forwards and
    (reversal index) backwards; the state shape is checked."""
    from mamba_zoo.cpu_scan_kernels import selective_scan_inference_time_major as scan

    g = torch.Generator().manual_seed(11)
    batch, length, dim, n_state, k = 2, 23, 12, 4, 9
    u, delta, z = (torch.randn(batch, length, dim, generator=g) for _ in range(3))
    B, C = (torch.randn(batch, length, n_state, generator=g) for _ in range(2))
    A = -torch.rand(dim, n_state, generator=g) * 2
    kw = dict(A=A, D=torch.randn(dim, generator=g), delta_softplus=True, return_last_state=True)
    whole, last = scan(u, delta, B=B, C=C, z=z, **kw)
    first, state = scan(u[:, :k], delta[:, :k], B=B[:, :k], C=C[:, :k], z=z[:, :k], **kw)
    second, last_two = scan(u[:, k:], delta[:, k:], B=B[:, k:], C=C[:, k:], z=z[:, k:], initial_state=state, **kw)
    assert rel_err(torch.cat([first, second], 1), whole) < 1e-6 and rel_err(last_two, last) < 1e-6
    assert rel_err(second, scan(u[:, k:], delta[:, k:], B=B[:, k:], C=C[:, k:], z=z[:, k:], **kw)[0]) > 1e-3
    flip = lambda n: torch.arange(n - 1, -1, -1).expand(batch, n)  # noqa: E731
    whole_b, last_b = scan(u, delta, B=B, C=C, z=z, index=flip(length), **kw)
    tail, state = scan(u[:, k:], delta[:, k:], B=B[:, k:], C=C[:, k:], z=z[:, k:], index=flip(length - k), **kw)
    head, last_head = scan(u[:, :k], delta[:, :k], B=B[:, :k], C=C[:, :k], z=z[:, :k], index=flip(k),
                           initial_state=state, **kw)
    assert rel_err(torch.cat([head, tail], 1), whole_b) < 1e-6 and rel_err(last_head, last_b) < 1e-6
    with pytest.raises(ValueError, match="initial_state"):
        scan(u, delta, B=B, C=C, z=z, initial_state=state[:, :3], **kw)


# ---------------------------------------------------------------------------------------------- cached decoding


def _mixers_for_cache_test():
    return [
        ("mamba", MambaMixer(16, d_state=8, layer_idx=0)),
        ("mamba-bi", MambaMixer(16, d_state=8, bidirectional=True, layer_idx=0)),
        ("mamba2", Mamba2Mixer(16, d_state=8, headdim=8, ngroups=2, chunk_size=4, layer_idx=0)),
        ("mamba2-bi", Mamba2Mixer(16, d_state=8, headdim=8, chunk_size=4, bidirectional=True, layer_idx=0)),
    ]


@pytest.mark.parametrize("name,mixer", _mixers_for_cache_test())
def test_cached_stepping_equals_full_forward(name, mixer):
    """Prefill a prefix (the backward branch reverses only the prefix), then step the rest token by token: every
    output equals the full-sequence forward whose backward branch reverses the same prefix."""
    torch.manual_seed(0)
    _randomize(mixer, seed=4)
    mixer.eval()
    if isinstance(mixer, Mamba2Mixer):
        with torch.no_grad():
            mixer.A_log.copy_(torch.rand_like(mixer.A_log))
            if mixer.bidirectional:
                mixer.A_b_log.copy_(torch.rand_like(mixer.A_b_log))
    batch, prefix, total = 2, 9, 15
    x = torch.randn(batch, total, 16)
    lengths = torch.full((batch,), prefix)
    kwargs = {"reverse_lengths": lengths} if mixer.bidirectional else {}
    with torch.no_grad():
        full = mixer(x, **kwargs)
        cache = MambaZooCache([2 if mixer.bidirectional else 1])
        pieces = [mixer(x[:, :prefix], cache=cache, **kwargs)]
        for t in range(prefix, total):
            pieces.append(mixer(x[:, t:t + 1], cache=cache))
        stepped = torch.cat(pieces, dim=1)
    assert rel_err(stepped, full) < 1e-5
    assert cache.get_seq_length() == total


def test_cache_beam_reorder_and_reset():
    mixer = MambaMixer(16, d_state=4, layer_idx=0).eval()
    cache = MambaZooCache([1])
    with torch.no_grad():
        mixer(torch.randn(3, 5, 16), cache=cache)
        state = cache.get_recurrent_state(0).clone()
        cache.reorder_cache(torch.tensor([2, 2, 0]))
        assert torch.equal(cache.get_recurrent_state(0), state[[2, 2, 0]])
        cache.reset()
        assert cache.get_recurrent_state(0) is None and cache.get_seq_length() == 0


def test_old_cache_argument_name_is_accepted():
    mixer = MambaMixer(16, d_state=4, layer_idx=0).eval()
    cache = MambaZooCache([1])
    with torch.no_grad():
        mixer(torch.randn(1, 4, 16), cache_params=cache)
    assert cache.has_state(0)


# ---------------------------------------------------------------------------------------------- LoRA, blocks, norms


def test_lora_on_every_projection_changes_cpu_output():
    peft = pytest.importorskip("peft")

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = MambaMixer(16, d_state=4, backend="cpu")

        def forward(self, x):
            return self.mixer(x)

    torch.manual_seed(0)
    x = torch.randn(2, 10, 16)
    for target in ("in_proj", "x_proj", "dt_proj", "out_proj"):
        model = Wrapper().eval()
        with torch.no_grad():
            before = model(x)
        lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=[target], init_lora_weights=False))
        with torch.no_grad():
            after = lora(x)
        # fp32 noise is ~1e-7; a bypassed adapter would leave the output unchanged
        assert rel_err(after, before) > 1e-5, f"LoRA on {target} was bypassed"
        # the adapter receives gradients through the cpu kernel
        lora(x).square().mean().backward()
        grads = [p.grad for n, p in lora.named_parameters() if "lora_" in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), target
        # and the adapted output is exactly what the merged weights compute
        with torch.no_grad():
            merged = lora.merge_and_unload()(x)
        assert rel_err(after, merged) < 1e-5, target


def test_mamba_block_residual_stream_and_gradient_checkpointing():
    torch.manual_seed(0)
    block = MambaBlock(16, MambaMixer(16, d_state=4), norm_type="layernorm", drop_path=0.0)
    x, r = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    h, res = block(x, r)
    assert torch.allclose(res, x + r)
    assert torch.allclose(h, block.mixer(block.norm(x + r)), atol=1e-6)
    h0, res0 = block(x)
    assert torch.equal(res0, x)
    # gradient checkpointing gives the same gradients
    block.train()
    x.requires_grad_(True)
    sum(t.sum() for t in block(x, r)).backward()
    g_plain = x.grad.clone()
    x.grad = None
    block.gradient_checkpointing = True
    from functools import partial
    import torch.utils.checkpoint as cp

    block._gradient_checkpointing_func = partial(cp.checkpoint, use_reentrant=False)
    sum(t.sum() for t in block(x, r)).backward()
    assert torch.allclose(x.grad, g_plain, atol=1e-6)


def test_drop_path_drops_whole_samples_and_rescales():
    torch.manual_seed(0)
    dp = DropPath(0.5).train()
    out = dp(torch.ones(200, 3, 4))
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()
    assert 60 < (per_sample[:, 0] == 0).sum() < 140
    assert torch.equal(dp.eval()(torch.ones(3, 4)), torch.ones(3, 4))


def test_gated_rmsnorm_grouped_matches_manual():
    norm = RMSNormGated(12, eps=1e-5, group_size=4)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(12))
    x, z = torch.randn(3, 12), torch.randn(3, 12)
    g = (x * torch.nn.functional.silu(z)).view(3, 3, 4)
    expected = (g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5)).view(3, 12) * norm.weight
    assert torch.allclose(norm(x, z), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------- MoE


def test_switch_moe_matches_per_token_loop():
    torch.manual_seed(0)
    moe = SwitchMoE(16, 24, num_experts=4).eval()
    x = torch.randn(3, 7, 16)
    out, logits = moe(x)
    tokens = x.reshape(-1, 16)
    expected = []
    for tok in tokens:
        p = torch.sigmoid(moe.router(tok))
        e = int(p.argmax())
        h = moe.local_experts[e].linear_fc1(tok)
        gate, up = h.chunk(2)
        expected.append(p[e] * moe.local_experts[e].linear_fc2(torch.nn.functional.gelu(gate) * up))
    assert torch.allclose(out.reshape(-1, 16), torch.stack(expected), atol=1e-5)
    assert logits.shape == (21, 4)
    assert int(moe.last_expert_counts.sum()) == 21


def test_load_balancing_loss_is_one_when_balanced_and_larger_when_collapsed():
    balanced = torch.eye(4).repeat(8, 1) * 10
    collapsed = torch.full((32, 4), -10.0)
    collapsed[:, 0] = 10
    assert abs(load_balancing_loss([balanced], 4).item() - 1.0) < 0.05
    assert load_balancing_loss([collapsed], 4).item() > 3.9


def test_sinkhorn_routing_balances_training_assignment():
    torch.manual_seed(0)
    moe = SwitchMoE(8, 8, num_experts=4, sinkhorn_in_training=True).train()
    with torch.no_grad():
        moe.router.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))  # a router that prefers expert 0
    moe(torch.randn(1, 400, 8))
    assert moe.last_expert_counts.max() < 200
    moe.eval()
    moe(torch.randn(1, 400, 8))
    assert moe.last_expert_counts[0] > 300


def test_bad_input_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="d_model=16"):
        MambaMixer(16, d_state=4)(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="headdim"):
        Mamba2Mixer(16, headdim=7)


def test_conv_bias_flag_is_honoured_and_matches_transformers():
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer as HFMambaMixer

    config = MambaConfig(hidden_size=16, state_size=4, num_hidden_layers=1, use_conv_bias=False)
    torch.manual_seed(0)
    hf = HFMambaMixer(config, layer_idx=0).eval()
    _randomize(hf, seed=5)
    ours = MambaMixer(16, d_state=4, dt_rank=config.time_step_rank, conv_bias=False, bidirectional=False).eval()
    assert ours.conv1d.bias is None
    ours.load_state_dict(hf.state_dict(), strict=True)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        assert rel_err(ours(x), hf(x)) < 1e-5
    assert MambaMixer(16, d_state=4, conv_bias=False, bidirectional=True).conv1d_b.bias is None
