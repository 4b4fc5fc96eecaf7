# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Fused no-grad CPU decoding steps: a few rows of one token each through a linear layer, an add + RMSNorm, and a
whole `MambaMixer` recurrence step (conv update + SiLU + x_proj + dt_proj + softplus + state update + D + gate).

A cached generation step sends one token per sequence through every layer. The arithmetic is small (each weight is
read once per token); what costs is per-op overhead and torch's GEMM on a single row, which reaches about 8 GB/s on
a 2-core CPU where a plain dot-product loop over the (cache-resident) weights reaches about 40 GB/s
(measured in `benchmarks/bench_generation.py --general_path`). So for `rows <= DECODE_MAX_ROWS`:

- `decode_linear(linear, x)`: `linear(x)` as a numba matrix-vector product, parallel over output blocks;
- `add_rms_norm_decode(norm, hidden_states, residual)`: a residual block's `residual + hidden_states` and its
  RMSNorm in one pass;
- `mamba_mixer_decode_step(mixer, hidden_states, ...)`: `MambaMixer.forward` for one cached token per row, with one
  kernel call per branch between the two projections, updating the cache's conv and SSM states in place;
- `mamba2_mixer_decode_step`: the same for `Mamba2Mixer` (its gated norm is the module's own call).

Each returns `None` (or calls the module as is) when its input is not for it: gradients needed, not float32 CPU, too
many rows, numba missing, `DECODE_KERNELS` off, or a module that is not the plain one (a LoRA-wrapped projection, a
module with hooks): the general path then runs, so PEFT and hooks are never bypassed. Results equal the general path
to float32 rounding (tests/test_cpu_decode.py).

Weights are read through numpy views built from their data pointers (`_weight_array`), never `Tensor.numpy()`, which
would mark a parameter's storage non-resizable for good (FSDP2 frees and re-gathers parameters by resizing them).
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from typing import Optional

import numpy as np
import torch
from torch import nn

from .cpu_inference import has_hooks
from .sequence_utils import is_unpadded

try:
    import numba
    from numba import njit, prange

    from .cpu_scan_kernels import _expf, _restore_torch_threads, _set_threads, _silu1, _softplus1
except ImportError:  # numba is optional: every function here then defers to the general path
    numba = None

__all__ = ["DECODE_KERNELS", "DECODE_MAX_ROWS", "decode_applies", "decode_linear", "add_rms_norm_decode",
           "mamba_mixer_decode_step", "mamba2_mixer_decode_step"]

# Whether decoding steps take the fused kernels (False: the general path; for A/B benchmarks and debugging).
DECODE_KERNELS = True
# The fused steps serve up to this many rows (batch x beams); larger batches take torch's GEMMs, which pay off there.
DECODE_MAX_ROWS = 16
# Weight elements below which a matrix-vector product runs on one thread (a parallel region costs a few us).
_PARALLEL_MIN_ELEMENTS = 1 << 16
# Output rows per parallel task of a matrix-vector product.
_GEMV_BLOCK = 64

_F32_MATH = {"reassoc", "contract"}  # the dot products reduce along the vector lanes

if numba is not None:
    _f32 = np.float32
    _ZERO = _f32(0.0)
    _ONE = _f32(1.0)

    @njit(fastmath=_F32_MATH)
    def _gemv_rows(weight, bias, has_bias, x, out, o_start, o_end):
        """out[r, o] = x[r] . weight[o] (+ bias[o]) for o in [o_start, o_end)."""
        rows, width = x.shape
        for o in range(o_start, o_end):
            w = weight[o]
            b = bias[o] if has_bias else _ZERO
            for r in range(rows):
                xr = x[r]
                acc = _ZERO
                for i in range(width):
                    acc += w[i] * xr[i]
                out[r, o] = acc + b

    @njit(cache=True, fastmath=_F32_MATH)
    def _gemv_serial_kernel(weight, bias, has_bias, x, out):
        _gemv_rows(weight, bias, has_bias, x, out, 0, weight.shape[0])

    @njit(parallel=True, cache=True, fastmath=_F32_MATH)
    def _gemv_parallel_kernel(weight, bias, has_bias, x, out, block):
        n_out = weight.shape[0]
        n_blocks = (n_out + block - 1) // block
        for task in prange(n_blocks):
            _gemv_rows(weight, bias, has_bias, x, out, task * block, min(n_out, task * block + block))

    @njit(cache=True, fastmath=_F32_MATH)
    def _add_rms_norm_kernel(hidden, residual, has_residual, weight, eps, residual_out, normed):
        """residual_out = hidden (+ residual); normed = weight * residual_out / sqrt(mean(residual_out^2) + eps)."""
        rows, width = hidden.shape
        for r in range(rows):
            total = _ZERO
            for i in range(width):
                v = hidden[r, i] + residual[r, i] if has_residual else hidden[r, i]
                residual_out[r, i] = v
                total += v * v
            scale = _ONE / np.sqrt(total / _f32(width) + eps)
            for i in range(width):
                normed[r, i] = weight[i] * (residual_out[r, i] * scale)

    @njit(fastmath=_F32_MATH)
    def _dot(a, b, count):
        """sum(a[:count] * b[:count]), vectorised (reassociated) on its own: the kernels that call it keep strict
        ordering elsewhere."""
        acc = _ZERO
        for i in range(count):
            acc += a[i] * b[i]
        return acc

    @njit(fastmath={"contract"}, error_model="numpy")
    def _conv_window_step(window, weight, bias, has_bias, x, out):
        """One step of a depthwise causal conv + SiLU for every channel: each window `(channels, width)` (oldest
        first) shifts in `x[c]`; `out[c] = silu(bias[c] + weight[c] . window[c])`. `x` may be longer than the
        channels (the conv input is a prefix of the projection row)."""
        channels, width = weight.shape
        for c in range(channels):
            row = window[c]
            acc = bias[c] if has_bias else _ZERO
            for k in range(width - 1):
                row[k] = row[k + 1]
                acc += weight[c, k] * row[k]
            row[width - 1] = x[c]
            out[c] = acc + weight[c, width - 1] * x[c]
        for c in range(channels):
            out[c] = _silu1(out[c])

    @njit(cache=True, fastmath={"contract"}, error_model="numpy")
    def _mamba_step_kernel(xz, conv_state, conv_weight, conv_bias, has_conv_bias, x_proj, dt_proj, dt_bias, A, D,
                           ssm_state, accumulate, out):
        """One token of one `MambaMixer` branch per row, states updated in place.

        xz: (rows, 2 * d_inner), the input projection [x | z]; conv_state: (rows, d_inner, d_conv), oldest first;
        conv_weight: (d_inner, d_conv); x_proj: (dt_rank + 2N, d_inner); dt_proj: (d_inner, dt_rank); dt_bias, D:
        (d_inner,); A: (d_inner, N) = -exp(A_log); ssm_state: (rows, d_inner, N); out: (rows, d_inner), the gated
        output, written or (accumulate) added to. Each phase is a loop over contiguous memory that LLVM vectorises
        (the exp and SiLU helpers are branch-free).
        """
        rows = xz.shape[0]
        d_inner = conv_weight.shape[0]
        n_state = A.shape[1]
        rank = dt_proj.shape[1]
        x_conv = np.empty(d_inner, dtype=np.float32)
        dt = np.empty(d_inner, dtype=np.float32)
        y = np.empty(d_inner, dtype=np.float32)
        proj = np.empty(rank + 2 * n_state, dtype=np.float32)
        for r in range(rows):
            # 1. causal conv window: shift in the new input, convolve, then SiLU
            _conv_window_step(conv_state[r], conv_weight, conv_bias, has_conv_bias, xz[r], x_conv)
            # 2. selective projection [dt_low | B | C] = x_proj @ x_conv
            for j in range(rank + 2 * n_state):
                proj[j] = _dot(x_proj[j], x_conv, d_inner)
            # 3. time steps: softplus(dt_proj @ dt_low + bias)
            for c in range(d_inner):
                dt[c] = dt_bias[c] + _dot(dt_proj[c], proj, rank)
            for c in range(d_inner):
                dt[c] = _softplus1(dt[c])
            # 4. state update and readout per channel, plus the skip
            B = proj[rank:rank + n_state]
            C = proj[rank + n_state:]
            for c in range(d_inner):
                state = ssm_state[r, c]
                step = dt[c]
                step_x = step * x_conv[c]
                for n in range(n_state):
                    state[n] = state[n] * _expf(step * A[c, n]) + step_x * B[n]
                y[c] = _dot(state, C, n_state) + D[c] * x_conv[c]
            # 5. gate with SiLU(z)
            out_row = out[r]
            for c in range(d_inner):
                gated = y[c] * _silu1(xz[r, d_inner + c])
                out_row[c] = out_row[c] + gated if accumulate else gated

    @njit(cache=True, fastmath={"contract"}, error_model="numpy")
    def _mamba2_step_kernel(xbc, dt_raw, conv_state, conv_weight, conv_bias, has_conv_bias, dt_bias, A, D,
                            ssm_state, d_inner, n_groups, accumulate, out):
        """One token of one `Mamba2Mixer` branch per row, states updated in place (ungated output).

        xbc: (rows, conv_dim), the conv input [x | B | C] with conv_dim = d_inner + 2 * n_groups * N; dt_raw: (rows,
        nheads); conv_state: (rows, conv_dim, d_conv); conv_weight: (conv_dim, d_conv); dt_bias, A (= -exp(A_log)),
        D: (nheads,); ssm_state: (rows, nheads, headdim, N); out: (rows, d_inner), written or (accumulate) added to.
        """
        rows, conv_dim = xbc.shape
        n_heads, head_dim, n_state = ssm_state.shape[1], ssm_state.shape[2], ssm_state.shape[3]
        heads_per_group = n_heads // n_groups
        conv_out = np.empty(conv_dim, dtype=np.float32)
        for r in range(rows):
            _conv_window_step(conv_state[r], conv_weight, conv_bias, has_conv_bias, xbc[r], conv_out)
            for h in range(n_heads):
                g = h // heads_per_group
                B = conv_out[d_inner + g * n_state:d_inner + (g + 1) * n_state]
                C = conv_out[d_inner + (n_groups + g) * n_state:d_inner + (n_groups + g + 1) * n_state]
                step = _softplus1(dt_raw[r, h] + dt_bias[h])
                decay = _expf(step * A[h])
                for p in range(head_dim):
                    c = h * head_dim + p
                    x = conv_out[c]
                    step_x = step * x
                    state = ssm_state[r, h, p]
                    for n in range(n_state):
                        state[n] = state[n] * decay + step_x * B[n]
                    y = _dot(state, C, n_state) + D[h] * x
                    out[r, c] = out[r, c] + y if accumulate else y


# ----------------------------------------------------------------------------------------------------------------------
# When the fused steps apply
# ----------------------------------------------------------------------------------------------------------------------


def decode_applies(x: torch.Tensor) -> bool:
    """Whether `x` `(..., width)` is a decoding-sized no-grad float32 CPU input for the fused kernels (the caller
    checks its modules)."""
    return (
        numba is not None
        and DECODE_KERNELS
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not (torch.is_grad_enabled() and x.requires_grad)
        and 0 < x.numel() // max(x.shape[-1], 1) <= DECODE_MAX_ROWS
    )


def _plain(module: nn.Module, kind: type) -> bool:
    """`module` is exactly `kind` (not a LoRA or other wrapper), without hooks, with float32 CPU parameters that need
    no gradient here."""
    if type(module) is not kind or has_hooks(module):
        return False
    grad = torch.is_grad_enabled()
    for param in module._parameters.values():
        if param is not None and (param.dtype != torch.float32 or param.device.type != "cpu"
                                  or (grad and param.requires_grad)):
            return False
    return True


# id(parameter) -> (weak reference, data pointer, view); an entry leaves with its parameter (tensors compare
# elementwise, so a WeakKeyDictionary cannot key them)
_VIEWS: dict[int, tuple[weakref.ref, int, np.ndarray]] = {}


def _weight_array(t: torch.Tensor) -> np.ndarray:
    """A float32 numpy view of a parameter's memory, kept per parameter and rebuilt when its memory moves. Built from
    the data pointer, so the storage stays resizable (`Tensor.numpy()` would pin it). Non-contiguous tensors are
    copied."""
    if not t.is_contiguous():
        return t.detach().contiguous().numpy()
    pointer = t.data_ptr()
    key = id(t)
    entry = _VIEWS.get(key)
    if entry is not None and entry[0]() is t and entry[1] == pointer and entry[2].shape == tuple(t.shape):
        return entry[2]
    buffer = (ctypes.c_float * t.numel()).from_address(pointer)
    array = np.frombuffer(buffer, dtype=np.float32).reshape(tuple(t.shape))
    _VIEWS[key] = (weakref.ref(t, lambda _, key=key: _VIEWS.pop(key, None)), pointer, array)
    return array


# id(A_log) -> (weak reference, data pointer, version, A = -exp(A_log)): recomputed only when A_log changes
_NEGATIVE_EXP: dict[int, tuple[weakref.ref, int, int, np.ndarray]] = {}


def _negative_exp(a_log: torch.Tensor) -> np.ndarray:
    """`-exp(a_log)` as a float32 numpy array, computed once per parameter value (checked by its version counter)."""
    key = id(a_log)
    entry = _NEGATIVE_EXP.get(key)
    if entry is not None and entry[0]() is a_log and entry[1] == a_log.data_ptr() and entry[2] == a_log._version:
        return entry[3]
    value = (-torch.exp(a_log.detach().float())).contiguous().numpy()
    _NEGATIVE_EXP[key] = (weakref.ref(a_log, lambda _, key=key: _NEGATIVE_EXP.pop(key, None)), a_log.data_ptr(),
                          a_log._version, value)
    return value


def _array(t: torch.Tensor) -> np.ndarray:
    """A float32 C-contiguous numpy array of an activation (a view when it already is one)."""
    return t.detach().contiguous().numpy()


_EMPTY1 = np.zeros(0, dtype=np.float32)
_EMPTY2 = np.zeros((0, 0), dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Linear layers and the residual norm
# ----------------------------------------------------------------------------------------------------------------------


# The torch thread count that this Python thread last matched numba's thread count to (numba's count is per thread).
_THREADS_MATCHED = threading.local()


def _gemv(weight: np.ndarray, bias: Optional[np.ndarray], x: np.ndarray, out: np.ndarray) -> None:
    has_bias = bias is not None
    bias = bias if has_bias else _EMPTY1
    if weight.size < _PARALLEL_MIN_ELEMENTS:
        _gemv_serial_kernel(weight, bias, has_bias, x, out)
        return
    torch_threads = torch.get_num_threads()
    if getattr(_THREADS_MATCHED, "count", None) != torch_threads:  # asking numba costs ~5 us: once per change
        _set_threads()
        _THREADS_MATCHED.count = torch_threads
    _gemv_parallel_kernel(weight, bias, has_bias, x, out, _GEMV_BLOCK)
    _restore_torch_threads(torch_threads)


def decode_linear(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`linear(x)` for `x` `(..., in_features)`: the fused matrix-vector kernel for a decoding-sized no-grad input to a
    plain `nn.Linear`, otherwise the module's own call (LoRA wrappers, hooks, training and large batches included)."""
    if not (decode_applies(x) and _plain(linear, nn.Linear) and x.shape[-1] == linear.in_features):
        return linear(x)
    weight, bias = linear._parameters["weight"], linear._parameters["bias"]
    rows = _array(x.reshape(-1, x.shape[-1]))
    out = np.empty((rows.shape[0], weight.shape[0]), dtype=np.float32)
    _gemv(_weight_array(weight), None if bias is None else _weight_array(bias), rows, out)
    out = torch.from_numpy(out)
    return out if x.ndim == 2 else out.view(*x.shape[:-1], weight.shape[0])


def add_rms_norm_decode(norm: nn.Module, hidden_states: torch.Tensor, residual: Optional[torch.Tensor]):
    """`(norm(r), r)` with `r = residual + hidden_states` (or `hidden_states` when `residual` is None) in one kernel
    call, for a decoding-sized no-grad float32 input and a plain `RMSNorm`; `None` otherwise. `(..., width)` each."""
    if not decode_applies(hidden_states):  # training and large inputs leave here, before the import below
        return None
    from .mamba_layers import RMSNorm  # imports this module: importing it at the top would be circular

    if not _plain(norm, RMSNorm):
        return None
    if residual is not None and (residual.shape != hidden_states.shape or residual.dtype != torch.float32
                                 or (torch.is_grad_enabled() and residual.requires_grad)):
        return None
    width = hidden_states.shape[-1]
    hidden = _array(hidden_states.reshape(-1, width))
    residual_out = np.empty_like(hidden)
    normed = np.empty_like(hidden)
    _add_rms_norm_kernel(hidden, _EMPTY2 if residual is None else _array(residual.reshape(-1, width)),
                         residual is not None, _weight_array(norm.weight), np.float32(norm.eps), residual_out, normed)
    shape = hidden_states.shape
    return torch.from_numpy(normed).reshape(shape), torch.from_numpy(residual_out).reshape(shape)


# ----------------------------------------------------------------------------------------------------------------------
# The Mamba-1 recurrence step
# ----------------------------------------------------------------------------------------------------------------------


def _state_array(state: torch.Tensor) -> Optional[np.ndarray]:
    """A numpy view of a cache state to update in place, or None when it is not float32 contiguous CPU memory."""
    if state is None or state.dtype != torch.float32 or state.device.type != "cpu" or not state.is_contiguous():
        return None
    return state.detach().numpy()


def _step_applies(mixer: nn.Module, hidden_states: torch.Tensor, attention_mask, reverse_lengths, cache) -> bool:
    """Whether a mixer call is a cached one-token, unpadded, no-grad float32 CPU step that the fused kernels serve
    (the branches' modules and states are checked by `_branch_states`)."""
    if (
        cache is None
        or hidden_states.ndim != 3
        or hidden_states.shape[1] != 1
        or reverse_lengths is not None
        or mixer.backend not in ("auto", "cpu")
        or not decode_applies(hidden_states)
    ):
        return False
    return is_unpadded(attention_mask)


def _branch_states(mixer: nn.Module, cache, conv_shape: tuple, ssm_shape: tuple) -> Optional[list]:
    """The cache's `(conv_state, ssm_state)` numpy views of every branch (forward, then backward), to update in place;
    None when a branch has no state yet or a state is not float32 contiguous CPU memory of the expected shape."""
    states = []
    for state_idx in range(2 if mixer.bidirectional else 1):
        if not cache.has_state(mixer.layer_idx, state_idx):
            return None
        conv_state = _state_array(cache.get_conv_state(mixer.layer_idx, state_idx))
        ssm_state = _state_array(cache.get_recurrent_state(mixer.layer_idx, state_idx))
        if conv_state is None or ssm_state is None or conv_state.shape != conv_shape or ssm_state.shape != ssm_shape:
            return None
        states.append((conv_state, ssm_state))
    return states


def _conv_arrays(conv1d: nn.Conv1d) -> tuple[np.ndarray, np.ndarray, bool]:
    """A depthwise `nn.Conv1d`'s weight as `(channels, width)`, its bias (or an empty array) and whether it has one."""
    weight = _weight_array(conv1d.weight)
    weight = weight.reshape(weight.shape[0], weight.shape[-1])
    has_bias = conv1d.bias is not None
    return weight, _weight_array(conv1d.bias) if has_bias else _EMPTY1, has_bias


def _finish_step(mixer: nn.Module, output: torch.Tensor, hidden_states: torch.Tensor, cache) -> torch.Tensor:
    """`(rows, d_model)` -> `(rows, 1, d_model)` in the input's dtype; the cache counts the token at layer 0, as the
    general path does."""
    if mixer.layer_idx == 0:
        cache.advance(1)
    return output[:, None].to(hidden_states.dtype)


def mamba_mixer_decode_step(mixer: nn.Module, hidden_states: torch.Tensor, attention_mask, reverse_lengths,
                            cache) -> Optional[torch.Tensor]:
    """`mixer(hidden_states, attention_mask, cache, reverse_lengths)` for one cached token per row (`(rows, 1,
    d_model)` -> `(rows, 1, d_model)`) on the fused kernels, stepping every branch's states in place and advancing the
    cache at layer 0 like the general path; `None` when the step is not for them (see the module docstring; also no
    cached state yet, a padded step, or `reverse_lengths`)."""
    if not _step_applies(mixer, hidden_states, attention_mask, reverse_lengths, cache):
        return None
    rows = hidden_states.shape[0]
    branches = [mixer._branch(suffix) for suffix in (("", "_b") if mixer.bidirectional else ("",))]
    for conv1d, x_proj, dt_proj, A_log, D in branches:
        if not (_plain(conv1d, nn.Conv1d) and _plain(x_proj, nn.Linear) and _plain(dt_proj, nn.Linear)
                and dt_proj.bias is not None and A_log.dtype == torch.float32 and D.dtype == torch.float32):
            return None
    states = _branch_states(mixer, cache, (rows, mixer.d_inner, mixer.d_conv), (rows, mixer.d_inner, mixer.d_state))
    if states is None:
        return None

    xz = decode_linear(mixer.in_proj, hidden_states[:, 0])  # (rows, 2 * d_inner)
    if xz.dtype != torch.float32:
        return None
    xz = _array(xz)
    y = np.empty((rows, mixer.d_inner), dtype=np.float32)
    for i, ((conv1d, x_proj, dt_proj, A_log, D), (conv_state, ssm_state)) in enumerate(zip(branches, states)):
        _mamba_step_kernel(
            xz, conv_state, *_conv_arrays(conv1d), _weight_array(x_proj.weight), _weight_array(dt_proj.weight),
            _weight_array(dt_proj.bias), _negative_exp(A_log), _weight_array(D), ssm_state, i > 0, y,
        )
    if len(branches) == 2 and mixer.divide_out:
        y *= np.float32(0.5)
    return _finish_step(mixer, decode_linear(mixer.out_proj, torch.from_numpy(y)), hidden_states, cache)


# ----------------------------------------------------------------------------------------------------------------------
# The Mamba-2 recurrence step
# ----------------------------------------------------------------------------------------------------------------------


def mamba2_mixer_decode_step(mixer: nn.Module, hidden_states: torch.Tensor, attention_mask, reverse_lengths,
                             cache) -> Optional[torch.Tensor]:
    """`Mamba2Mixer.forward` for one cached token per row (`(rows, 1, d_model)` -> `(rows, 1, d_model)`): the input
    projection, one kernel call per branch (conv update + SiLU + softplus time step + state update + D), the mixer's
    own gated norm and the output projection; `None` when the step is not for the kernels (as
    `mamba_mixer_decode_step`)."""
    if not _step_applies(mixer, hidden_states, attention_mask, reverse_lengths, cache):
        return None
    rows = hidden_states.shape[0]
    branches = [mixer._branch(suffix) for suffix in (("", "_b") if mixer.bidirectional else ("",))]
    for conv1d, dt_bias, A_log, D in branches:
        if not (_plain(conv1d, nn.Conv1d) and all(p.dtype == torch.float32 for p in (dt_bias, A_log, D))):
            return None
    states = _branch_states(mixer, cache, (rows, mixer.conv_dim, mixer.d_conv),
                            (rows, mixer.nheads, mixer.headdim, mixer.d_state))
    if states is None:
        return None

    projected = decode_linear(mixer.in_proj, hidden_states[:, 0])  # (rows, [z | xBC | dt])
    if projected.dtype != torch.float32:
        return None
    z, xbc, dt = torch.split(projected, [mixer.d_inner, mixer.conv_dim, mixer.nheads], dim=-1)
    xbc, dt = _array(xbc), _array(dt)
    y = np.empty((rows, mixer.d_inner), dtype=np.float32)
    for i, ((conv1d, dt_bias, A_log, D), (conv_state, ssm_state)) in enumerate(zip(branches, states)):
        _mamba2_step_kernel(
            xbc, dt, conv_state, *_conv_arrays(conv1d), _weight_array(dt_bias), _negative_exp(A_log),
            _weight_array(D), ssm_state, mixer.d_inner, mixer.ngroups, i > 0, y,
        )
    if len(branches) == 2 and mixer.divide_out:
        y *= np.float32(0.5)
    return _finish_step(mixer, decode_linear(mixer.out_proj, mixer.norm(torch.from_numpy(y), z)), hidden_states,
                        cache)
