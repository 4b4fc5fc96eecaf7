"""causal_conv1d_fn / causal_conv1d_update against an explicit loop over time and taps."""

import pytest
import torch

from mamba_zoo.causal_conv1d import causal_conv1d_fn, causal_conv1d_update
from mamba_zoo.kernel_backends import KernelBackendUnavailableError


def loop_reference(x, weight, bias, activation):
    """out[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - width + 1 + k]), x = 0 before t = 0."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    out = torch.zeros_like(x)
    for t in range(length):
        for k in range(width):
            source = t - width + 1 + k
            if source >= 0:
                out[:, :, t] += weight[:, k] * x[:, :, source]
    if bias is not None:
        out = out + bias[:, None]
    if activation in ("silu", "swish"):
        out = out * torch.sigmoid(out)
    return out


@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("activation", [None, "silu", "swish"])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("length", [1, 3, 17])
def test_fn_matches_loop(width, activation, use_bias, length):
    generator = torch.Generator().manual_seed(width * 100 + length)
    x = torch.randn(2, 5, length, generator=generator)
    weight = torch.randn(5, width, generator=generator)
    bias = torch.randn(5, generator=generator) if use_bias else None
    out = causal_conv1d_fn(x, weight, bias, activation=activation)
    assert out.shape == x.shape
    torch.testing.assert_close(out, loop_reference(x, weight, bias, activation), rtol=1e-5, atol=1e-5)


def test_fn_is_causal_and_differentiable():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 12, generator=generator, requires_grad=True)
    weight = torch.randn(3, 4, generator=generator, requires_grad=True)
    out = causal_conv1d_fn(x, weight, activation="silu")
    out[:, :, 5].sum().backward()
    assert torch.all(x.grad[:, :, 6:] == 0) and torch.any(x.grad[:, :, 2:6] != 0)
    assert torch.all(x.grad[:, :, :2] == 0)
    assert weight.grad is not None and torch.any(weight.grad != 0)


@pytest.mark.parametrize("activation", [None, "silu"])
def test_update_steps_equal_fn(activation):
    generator = torch.Generator().manual_seed(2)
    batch, dim, width, length = 3, 6, 4, 11
    x = torch.randn(batch, dim, length, generator=generator)
    weight = torch.randn(dim, width, generator=generator)
    bias = torch.randn(dim, generator=generator)
    conv_state = torch.zeros(batch, dim, width)
    stepped = torch.stack(
        [causal_conv1d_update(x[:, :, t], conv_state, weight, bias, activation) for t in range(length)], dim=-1)
    torch.testing.assert_close(stepped, causal_conv1d_fn(x, weight, bias, activation), rtol=1e-5, atol=1e-5)
    # The state now holds the last `width` inputs, oldest first.
    torch.testing.assert_close(conv_state, x[:, :, -width:])


def test_update_continues_from_prefilled_state():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 9, generator=generator)
    weight = torch.randn(4, 3, generator=generator)
    full = causal_conv1d_fn(x, weight, activation="silu")
    conv_state = x[:, :, 5:8].clone()  # prefill state after 8 steps
    out = causal_conv1d_update(x[:, :, 8], conv_state, weight, activation="silu")
    torch.testing.assert_close(out, full[:, :, 8], rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise():
    x = torch.randn(2, 4, 7)
    weight = torch.randn(4, 3)
    with pytest.raises(ValueError, match="x must have shape"):
        causal_conv1d_fn(x[0], weight)
    with pytest.raises(ValueError, match="weight must have shape"):
        causal_conv1d_fn(x, weight.unsqueeze(1))
    with pytest.raises(ValueError, match="weight must have shape"):
        causal_conv1d_fn(x, torch.randn(5, 3))
    with pytest.raises(ValueError, match="bias must have shape"):
        causal_conv1d_fn(x, weight, torch.randn(3))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_fn(x, weight, activation="relu")
    with pytest.raises(ValueError, match="backend must be one of"):
        causal_conv1d_fn(x, weight, backend="triton")
    with pytest.raises(KernelBackendUnavailableError, match="backend='cuda' for causal_conv1d needs CUDA tensors"):
        causal_conv1d_fn(x, weight, backend="cuda")
    with pytest.raises(KernelBackendUnavailableError, match="backend='cuda' for causal_conv1d needs CUDA tensors"):
        causal_conv1d_update(x[:, :, 0], torch.zeros(2, 4, 3), weight, backend="cuda")
    with pytest.raises(ValueError, match="conv_state must have shape"):
        causal_conv1d_update(x[:, :, 0], torch.zeros(2, 4, 2), weight)
    with pytest.raises(ValueError, match="x must have shape"):
        causal_conv1d_update(x[:, :, :1], torch.zeros(2, 4, 3), weight)


# ---------------------------------------------------------------------------------------------- forward-only kernel


def _needs_numba():
    from mamba_zoo.cpu_scan_kernels import is_available

    if not is_available():
        pytest.skip("the fused CPU kernels need numba")


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("length", [1, 3, 17, 300])
@pytest.mark.parametrize("order", ["forward", "flip", "within-lengths"])
def test_inference_kernel_matches_loop(width, silu, use_bias, length, order):
    """Time-major kernel (input a column slice of a wider tensor, as the mixer passes it) against the loop reference,
    run along the time order `index` (reversed sequences: anti-causal convolution) with results at the original
    times."""
    _needs_numba()
    from mamba_zoo.cpu_scan_kernels import causal_conv1d_inference_time_major
    from mamba_zoo.sequence_utils import reversal_index

    g = torch.Generator().manual_seed(length * 10 + width)
    batch, dim = 3, 21
    x = torch.randn(batch, dim, length, generator=g)
    weight = torch.randn(dim, width, generator=g)
    bias = torch.randn(dim, generator=g) if use_bias else None
    if order == "forward":
        index = None
    elif order == "flip":
        index = torch.arange(length - 1, -1, -1).expand(batch, length)
    else:
        index = reversal_index(torch.randint(0, length + 1, (batch,), generator=g), length)
    activation = "silu" if silu else None
    if index is None:
        expected = loop_reference(x, weight, bias, activation)
    else:
        moved = x.gather(2, index[:, None, :].expand(-1, dim, -1))
        out_moved = loop_reference(moved, weight, bias, activation)
        expected = out_moved.gather(2, torch.argsort(index, 1)[:, None, :].expand(-1, dim, -1))
    wide = torch.randn(batch, length, 3 * dim, generator=g)
    wide[..., dim:2 * dim] = x.transpose(1, 2)
    for x_tm in (wide[..., dim:2 * dim], x.transpose(1, 2), x.transpose(1, 2).contiguous()):
        out = causal_conv1d_inference_time_major(x_tm, weight, bias, silu=silu, index=index, t_block=7)
        assert out.shape == (batch, length, dim) and out.is_contiguous()
        torch.testing.assert_close(out.transpose(1, 2), expected, rtol=1e-5, atol=1e-5)
