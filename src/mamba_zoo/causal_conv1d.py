"""Causal depthwise 1-D convolution, the short convolution in every Mamba block.

Same API as Dao-AILab's ``causal-conv1d`` package:

* :func:`causal_conv1d_fn` convolves a whole sequence: each channel ``d`` is convolved with its
  own filter ``weight[d]`` of ``width`` taps, with ``width - 1`` zeros padded on the left, so the
  output at time ``t`` only sees inputs ``t - width + 1 .. t``.
* :func:`causal_conv1d_update` advances one decoding step, keeping the last ``width`` inputs
  in a rolling ``conv_state``.

Backends (see :mod:`kernel_backends`): ``"cuda"`` uses the ``causal_conv1d`` package (imported lazily, only for
CUDA tensors); ``"cpu"`` and ``"reference"`` are both plain PyTorch (``F.conv1d`` with ``groups=dim`` is already a
fused kernel on CPU).
"""

import torch
import torch.nn.functional as F

from .kernel_backends import cuda_kernels, resolve_backend


_ACTIVATIONS = (None, "silu", "swish")


def _check_activation(activation):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}.")


def _check_weight_bias(weight, bias, dim):
    if weight.dim() != 2 or weight.shape[0] != dim:
        raise ValueError(
            f"weight must have shape (dim={dim}, width), got {tuple(weight.shape)}; "
            "for an nn.Conv1d depthwise weight of shape (dim, 1, width) pass weight.squeeze(1)."
        )
    if bias is not None and tuple(bias.shape) != (dim,):
        raise ValueError(f"bias must have shape (dim={dim},), got {tuple(bias.shape)}.")


def causal_conv1d_fn(x, weight, bias=None, activation=None, backend="auto"):
    """Causal depthwise convolution over a whole sequence.

    Args:
        x: ``(batch, dim, L)`` input.
        weight: ``(dim, width)`` one filter per channel.
        bias: optional ``(dim,)``.
        activation: ``None``, ``"silu"`` or ``"swish"`` (the same thing).
        backend: ``"auto"``, ``"cuda"``, ``"cpu"`` or ``"reference"``.

    Returns:
        ``(batch, dim, L)``: ``out[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - width + 1 + k])``
        with ``x`` taken as zero before ``t = 0``.
    """
    if x.dim() != 3:
        raise ValueError(
            f"x must have shape (batch, dim, L), got {tuple(x.shape)}; "
            "transpose a (batch, L, dim) tensor with x.transpose(1, 2)."
        )
    _check_weight_bias(weight, bias, x.shape[1])
    _check_activation(activation)

    if resolve_backend("causal_conv1d", x, weight, bias, backend=backend) == "cuda":
        cuda_fn, _ = cuda_kernels("causal_conv1d")
        channel_last = x.stride(1) == 1 and x.stride(2) != 1
        if channel_last and (x.shape[1] % 8 or x.stride(0) % 8 or x.stride(2) % 8):
            # causal-conv1d reads a channel-last view only with 8-aligned channels and strides (a Mamba-2 in_proj
            # slice of another width is not): give it a channel-first copy instead of an error
            x = x.contiguous()
        return cuda_fn(x, weight, bias, activation=activation)

    width = weight.shape[1]
    seqlen = x.shape[-1]
    out = F.conv1d(x, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype),
                   padding=width - 1, groups=x.shape[1])[..., :seqlen]
    if activation is not None:
        out = F.silu(out)
    return out


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, backend="auto"):
    """One decoding step of :func:`causal_conv1d_fn`.

    Args:
        x: ``(batch, dim)`` the new input.
        conv_state: ``(batch, dim, width)`` the last ``width`` inputs, oldest first. Updated IN
            PLACE: shifted left by one and ``x`` written to the last slot. Start from zeros.
        weight: ``(dim, width)``.
        bias: optional ``(dim,)``.
        activation: ``None``, ``"silu"`` or ``"swish"``.
        backend: ``"auto"``, ``"cuda"``, ``"cpu"`` or ``"reference"``.

    Returns:
        ``(batch, dim)`` the output at this step.
    """
    if x.dim() != 2:
        raise ValueError(
            f"x must have shape (batch, dim), got {tuple(x.shape)}; "
            "for a (batch, dim, 1) step pass x.squeeze(-1)."
        )
    batch, dim = x.shape
    _check_weight_bias(weight, bias, dim)
    width = weight.shape[1]
    if tuple(conv_state.shape) != (batch, dim, width):
        raise ValueError(
            f"conv_state must have shape (batch={batch}, dim={dim}, width={width}), got "
            f"{tuple(conv_state.shape)}; allocate it with torch.zeros(batch, dim, width)."
        )
    _check_activation(activation)

    resolved = resolve_backend("causal_conv1d", x, conv_state, weight, bias, backend=backend)
    cuda_update = cuda_kernels("causal_conv1d")[1] if resolved == "cuda" else None
    if cuda_update is not None:  # None: the package's update did not import; the PyTorch step runs instead
        return cuda_update(x, conv_state, weight, bias, activation=activation)

    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    out = torch.sum(conv_state * weight.to(conv_state.dtype), dim=-1)
    if bias is not None:
        out = out + bias.to(out.dtype)
    if activation is not None:
        out = F.silu(out)
    return out.to(x.dtype)
