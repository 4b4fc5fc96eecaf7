"""Causal depthwise 1-D convolution, the short convolution in every Mamba block.

Same API as Dao-AILab's ``causal-conv1d`` package:

* :func:`causal_conv1d_fn` convolves a whole sequence: each channel ``d`` is convolved with its
  own filter ``weight[d]`` of ``width`` taps, with ``width - 1`` zeros padded on the left, so the
  output at time ``t`` only sees inputs ``t - width + 1 .. t``.
* :func:`causal_conv1d_update` advances one decoding step, keeping the last ``width`` inputs
  in a rolling ``conv_state``.

Backends: ``"cuda"`` uses the ``causal_conv1d`` package (imported lazily, only when the tensors
are on CUDA); ``"cpu"`` and ``"reference"`` are both plain PyTorch (``F.conv1d`` with
``groups=dim`` is already a fused kernel on CPU). ``"auto"`` picks ``cuda`` when it can.
"""

import logging

import torch
import torch.nn.functional as F


logger = logging.getLogger(__name__)

_BACKENDS = ("auto", "cuda", "cpu", "reference")
_ACTIVATIONS = (None, "silu", "swish")
_warned_fallback = False


def _load_cuda_kernels():
    """Return ``(causal_conv1d_fn, causal_conv1d_update)`` from the package, or ``None``."""
    try:
        from causal_conv1d import causal_conv1d_fn as cuda_fn
        from causal_conv1d import causal_conv1d_update as cuda_update
    except ImportError:
        return None
    return cuda_fn, cuda_update


def _resolve_backend(backend, tensor):
    """Map ``backend`` to ``"cuda"`` or ``"reference"`` for ``tensor``; log a fallback once."""
    global _warned_fallback
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}.")
    if backend in ("cpu", "reference"):
        return "reference"
    kernels_available = tensor.is_cuda and _load_cuda_kernels() is not None
    if backend == "cuda":
        if not kernels_available:
            raise ValueError(
                "backend='cuda' needs CUDA tensors and the `causal_conv1d` package "
                "(pip install causal-conv1d); use backend='auto' to fall back to PyTorch."
            )
        return "cuda"
    if kernels_available:
        return "cuda"
    if tensor.is_cuda and not _warned_fallback:
        logger.info("causal_conv1d package not available; using the PyTorch causal convolution.")
        _warned_fallback = True
    return "reference"


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

    if _resolve_backend(backend, x) == "cuda":
        cuda_fn, _ = _load_cuda_kernels()
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

    if _resolve_backend(backend, x) == "cuda":
        _, cuda_update = _load_cuda_kernels()
        return cuda_update(x, conv_state, weight, bias, activation=activation)

    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    out = torch.sum(conv_state * weight.to(conv_state.dtype), dim=-1)
    if bias is not None:
        out = out + bias.to(out.dtype)
    if activation is not None:
        out = F.silu(out)
    return out.to(x.dtype)
