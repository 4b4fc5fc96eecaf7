# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""The fused no-grad CPU forward of `MambaMixer`: speed plumbing kept out of the modelling code.

`MambaMixer.forward` makes one call here (`mamba_mixer_cpu_forward`) when `cpu_inference_applies`: CPU float32 tensors,
numba kernels available, nothing needing gradients, no cache. It computes the same function as the mixer's general
path (tests/test_golden_outputs.py and tests/test_mamba_layers.py say so) but

- stays in the time-major `(batch, L, d_inner)` layout throughout (no transposes);
- never flips a sequence: a reversed branch walks the time steps through the reversal index (anti-causal conv, scan
  from the end) and writes at the original times, so the backward branch adds into the forward branch's output;
- writes its intermediates into one `InferenceWorkspace` shared by every mixer of a forward pass, when the model
  opens `inference_workspace()` around its layer loop;
- runs a long batch a few rows at a time, so intermediates stay within `INFERENCE_CHUNK_TOKENS` tokens;
- runs a sequence longer than `INFERENCE_TIME_CHUNK` (unpadded) chunk by chunk along time: the branch that walks
  forward visits the chunks from the start and the one that walks backward from the end, each carrying its scan
  state and its conv window across chunk boundaries, so the intermediates stay O(chunk) and the result equals the
  one-pass forward.

Models with Vim's layer pairing (SSAMBA: layers 2i and 2i+1 read the same residual stream, the second reversed, and
their outputs are summed) call `paired_blocks_cpu_forward` for each pair instead: the same function, one kernel call
or GEMM per step for both blocks and all four branches (about 7 parallel regions a pair instead of 26). Small inputs
are bound by those regions, not arithmetic: each one waits for every thread, and on a busy machine for a thread that
was descheduled.

A long unpadded recording (over `INFERENCE_TIME_CHUNK` tokens) runs each such block, alone or paired, through
`blocks_time_chunked_forward`: the same kernels on time chunks of `TIME_CHUNK_TOKENS` tokens, every branch carrying its
scan state and conv window in its own walking direction, in place in the residual stream and one output buffer. A
stack of layers then needs two sequence-sized tensors plus O(chunk), whatever its depth or the recording's length.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import weakref
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from .cpu_scan_kernels import _restore_torch_threads, _set_threads
from .cpu_scan_kernels import is_available as _numba_available
from .kernel_backends import cpu_kernels, resolve_backend
from .sequence_utils import is_unpadded, mask_padding, sequence_reversal_index


class InferenceWorkspace:
    """Named float32 scratch buffers that every mixer of one forward pass reuses (the input projection's output, the
    convolution output, dt, the scan output). A fresh multi-MiB tensor per layer costs the kernel's page faults on
    first touch (an `mmap`ed allocation is zeroed page by page), about 15% of a CPU forward at 8k tokens; reusing one
    buffer per role pays them once per forward. Buffers only grow, and are dropped with the workspace."""

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def buffer(self, name: str, shape: Sequence[int]) -> torch.Tensor:
        """A contiguous float32 tensor of `shape` backed by the buffer `name` (contents undefined)."""
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[name] = torch.empty(numel, dtype=torch.float32)
        return buf[:numel].view(*shape)


# A batch runs a few rows at a time so that rows x length stays within this many tokens.
INFERENCE_CHUNK_TOKENS = 2048
# A sequence longer than this runs each mixer chunk by chunk along time, carrying the conv window and the scan state
# across chunk boundaries (`_forward_time_chunks`, `blocks_time_chunked_forward`), so a mixer's intermediates stay
# O(chunk) at any length. Chunking computes the input (and output) projections once per walking direction, about 20%
# more time than one pass, so shorter sequences (up to 2 minutes of audio in SSAMBA-tiny's tokens) run in one pass.
INFERENCE_TIME_CHUNK = 12288

def time_chunking() -> tuple[int, int]:
    """`(INFERENCE_TIME_CHUNK, TIME_CHUNK_TOKENS)` as they are set now, for the modules that chunk along time
    (tests and benchmarks change them)."""
    return INFERENCE_TIME_CHUNK, TIME_CHUNK_TOKENS


_ACTIVE_WORKSPACE: contextvars.ContextVar[Optional[InferenceWorkspace]] = contextvars.ContextVar(
    "mamba_zoo_inference_workspace", default=None
)


@contextlib.contextmanager
def inference_workspace():
    """Within this context, mixers on the fused CPU inference path write their intermediates into one shared
    `InferenceWorkspace` instead of fresh tensors; models open it around their layer loop. Nested uses share the outer
    workspace; leaving the outermost context frees the buffers. Outside the CPU inference path it changes nothing."""
    if _ACTIVE_WORKSPACE.get() is not None:
        yield _ACTIVE_WORKSPACE.get()
        return
    token = _ACTIVE_WORKSPACE.set(InferenceWorkspace())
    try:
        yield _ACTIVE_WORKSPACE.get()
    finally:
        _ACTIVE_WORKSPACE.reset(token)


def has_hooks(module: nn.Module) -> bool:
    """Whether `module` has forward (pre-)hooks: they expect one call over the whole input, so such a module is
    never split into chunks or replaced by a fused kernel."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def needs_gradients(module: nn.Module, hidden_states: torch.Tensor) -> bool:
    """Whether autograd would record `module(hidden_states)`: grad mode on and the input or a parameter requires
    grad."""
    return torch.is_grad_enabled() and (hidden_states.requires_grad or any(p.requires_grad for p in module.parameters()))


def _linear_into(linear: nn.Module, x: torch.Tensor, workspace: Optional[InferenceWorkspace], name: str) -> torch.Tensor:
    """`linear(x)`, written into the workspace buffer `name` when there is a workspace and `linear` is a plain
    `nn.Linear` without hooks; anything else (a LoRA-wrapped layer, a hooked or quantised one) is called as is."""
    if (
        workspace is None
        or type(linear) is not nn.Linear
        or has_hooks(linear)
        or linear.weight.dtype != torch.float32
        or x.dtype != torch.float32
    ):
        return linear(x)
    out = workspace.buffer(name, (*x.shape[:-1], linear.out_features))
    rows = x.reshape(-1, x.shape[-1])
    if linear.bias is None:
        torch.mm(rows, linear.weight.t(), out=out.view(-1, linear.out_features))
    else:
        torch.addmm(linear.bias, rows, linear.weight.t(), out=out.view(-1, linear.out_features))
    return out


def cpu_inference_applies(mixer: nn.Module, hidden_states: torch.Tensor) -> bool:
    """Whether `mixer` (a `MambaMixer`) can take the fused CPU inference path for this input: the CPU kernels are
    selected (numba), nothing needs gradients (grad mode off, or no input or parameter requires grad) and everything
    is float32."""
    if hidden_states.device.type != "cpu" or hidden_states.dtype != torch.float32:
        return False
    if mixer.backend not in ("auto", "cpu") or resolve_backend("selective_scan", hidden_states, backend=mixer.backend) != "cpu":
        return False
    if not cpu_kernels().inference_kernels_enabled():
        return False
    if any(p.dtype != torch.float32 for p in mixer.parameters()):
        return False
    return not needs_gradients(mixer, hidden_states)


def mamba_mixer_cpu_forward(mixer, hidden_states, attention_mask, reverse_lengths, reverse=False) -> torch.Tensor:
    """`mixer(hidden_states, attention_mask, reverse_lengths=..., reverse=...)` without autograd on the fused CPU
    kernels, a few rows at a time when the batch holds more than `INFERENCE_CHUNK_TOKENS` tokens.
    `(batch, L, d_model)` -> `(batch, L, d_model)`."""
    batch, seq_len = hidden_states.shape[:2]
    if _time_chunking_applies(mixer, hidden_states, attention_mask, reverse_lengths, reverse):
        return _forward_time_chunks(mixer, hidden_states, max(TIME_CHUNK_TOKENS // batch, 1), reverse)
    rows = max(1, INFERENCE_CHUNK_TOKENS // max(seq_len, 1))
    if rows >= batch:
        return _forward_rows(mixer, hidden_states, attention_mask, reverse_lengths, reverse)
    output = hidden_states.new_empty(batch, seq_len, mixer.d_model)
    for start in range(0, batch, rows):
        chunk = slice(start, start + rows)
        output[chunk] = _forward_rows(
            mixer,
            hidden_states[chunk],
            None if attention_mask is None else attention_mask[chunk],
            None if reverse_lengths is None else reverse_lengths[chunk],
            reverse,
        )
    return output


def _forward_rows(mixer, hidden_states, attention_mask, reverse_lengths, reverse):
    """One chunk of rows: both branches add into one time-major output; with `reverse` they swap walking orders.
    Projections are still called as modules (LoRA)."""
    workspace = _ACTIVE_WORKSPACE.get()  # None: fresh tensors
    hidden_states = mask_padding(hidden_states, attention_mask)
    xz = _linear_into(mixer.in_proj, hidden_states, workspace, "xz")  # (batch, L, 2 * d_inner)
    x, z = xz[..., : mixer.d_inner], xz[..., mixer.d_inner:]
    backward_index = None
    if mixer.bidirectional or reverse:
        batch, seq_len = hidden_states.shape[:2]
        backward_index = sequence_reversal_index(attention_mask, reverse_lengths, seq_len)
        if backward_index is None:
            backward_index = _reversal(batch, seq_len)
    forward_index, backward_index = (backward_index, None) if reverse else (None, backward_index)
    y = None if workspace is None else workspace.buffer("y", x.shape)
    y = _branch(mixer, x, z, attention_mask, forward_index, "", y, False, workspace)
    if mixer.bidirectional:
        _branch(mixer, x, z, attention_mask, backward_index, "_b", y, True, workspace)
        if mixer.divide_out:
            y.div_(2)  # y is this call's own buffer
    return mixer.out_proj(y)


def _branch(mixer, x, z, attention_mask, index, suffix, out, accumulate, workspace):
    """One conv + scan branch on time-major x, z `(batch, L, d_inner)` (column slices of the input projection).
    `index` (batch, L): the order in which the branch visits the time steps (None: forward). Returns the gated output
    `(batch, L, d_inner)`, written into `out` when given (added to it with `accumulate`)."""
    x = mask_padding(_conv(mixer, x, suffix, index, workspace), attention_mask)
    return _project_and_scan(mixer, x, z, suffix, index, workspace, out=out, accumulate=accumulate)


def _conv(mixer, x, suffix, index, workspace):
    """The branch's causal conv + SiLU over time-major `x` `(batch, L, d_inner)`, visiting time in `index` order."""
    conv1d = mixer._branch(suffix)[0]
    return cpu_kernels().causal_conv1d_inference_time_major(
        x, conv1d.weight.squeeze(1), conv1d.bias, silu=True, index=index,
        out=None if workspace is None else workspace.buffer("conv", x.shape),
    )


def _project_and_scan(mixer, x, z, suffix, index, workspace, **scan_kwargs):
    """x_proj -> (dt, B, C), dt_proj, then the fused scan gated by `z`, for the branch `suffix` over the conv output
    `x` `(batch, L, d_inner)`; `scan_kwargs` go to `selective_scan_inference_time_major` (out, accumulate,
    initial_state, return_last_state)."""
    _, x_proj, dt_proj, A_log, D = mixer._branch(suffix)
    A = -torch.exp(A_log.float())
    dt, B, C = torch.split(x_proj(x), [mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    dt = _linear_into(dt_proj, dt, workspace, "dt")  # (batch, L, d_inner); the dt bias is inside the projection
    return cpu_kernels().selective_scan_inference_time_major(
        x, dt, A, B, C, D=D.float(), z=z, delta_softplus=True, index=index, **scan_kwargs
    )


def _time_chunking_applies(mixer, hidden_states, attention_mask, reverse_lengths, reverse) -> bool:
    """Long, unpadded sequences (whole-sequence reversal only), with a plain `out_proj` (the branches' projections are
    summed)."""
    return (
        hidden_states.shape[1] > INFERENCE_TIME_CHUNK
        and reverse_lengths is None
        and is_unpadded(attention_mask)
        and type(mixer.out_proj) is nn.Linear
        and not has_hooks(mixer.out_proj)
    )


def _forward_time_chunks(mixer, hidden_states: torch.Tensor, chunk: int, reverse: bool = False) -> torch.Tensor:
    """The mixer over `(batch, L, d_model)` in time chunks of `chunk` steps, intermediates O(batch x chunk).

    `out_proj` is linear, so `out_proj(y_fwd + y_bwd) = out_proj(y_fwd) + W y_bwd`: the branch that walks forward in
    time visits the chunks from the start, the one that walks backward from the end, and each adds its projection
    into the output (the bias once). With `reverse` the branches swap directions (the layer-level reversal of SSAMBA's
    paired layers). Each chunk recomputes `in_proj` over its steps plus the `d_conv - 1` neighbours its convolution
    reads (before it when walking forward, after it when walking backward)."""
    batch, seq_len = hidden_states.shape[:2]
    workspace = _ACTIVE_WORKSPACE.get()
    output = hidden_states.new_empty(batch, seq_len, mixer.d_model)
    scale = 0.5 if (mixer.bidirectional and mixer.divide_out) else 1.0
    weight, bias = mixer.out_proj.weight, mixer.out_proj.bias
    starts = list(range(0, seq_len, chunk))
    branches = [("", reverse)] + ([("_b", not reverse)] if mixer.bidirectional else [])
    for i, (suffix, backward) in enumerate(branches):
        state = None
        for start in (reversed(starts) if backward else starts):
            end = min(start + chunk, seq_len)
            y, state = _branch_chunk(mixer, hidden_states, start, end, suffix, state, backward, workspace)
            if scale != 1.0:
                y.mul_(scale)
            if i == 0:
                output[:, start:end] = torch.nn.functional.linear(y, weight, bias)
            else:
                output[:, start:end].add_(torch.nn.functional.linear(y, weight))
    return output


def _branch_chunk(mixer, hidden_states, start, end, suffix, state, backward, workspace):
    """One branch over the steps `[start, end)` of an unpadded sequence, starting from `state` `(batch, d_inner, N)`
    (None: zeros), the state carried in from the previous chunk of its walk (the one before for the forward branch,
    the one after for the backward branch). Returns the gated output `(batch, end - start, d_inner)` (a workspace
    buffer, valid until the next call) and the state after the chunk."""
    batch, seq_len = hidden_states.shape[:2]
    reach = mixer.d_conv - 1  # neighbours the conv reads
    low, high = (start, min(end + reach, seq_len)) if backward else (max(start - reach, 0), end)
    xz = _linear_into(mixer.in_proj, hidden_states[:, low:high], workspace, "xz")  # (batch, high - low, 2 * d_inner)
    x, z = xz[..., : mixer.d_inner], xz[..., mixer.d_inner:]
    x = _conv(mixer, x, suffix, _reversal(batch, high - low) if backward else None, workspace)
    own = slice(0, end - start) if backward else slice(start - low, high - low)  # the chunk's own steps
    length = end - start
    out = None if workspace is None else workspace.buffer("y", (batch, length, mixer.d_inner))
    return _project_and_scan(mixer, x[:, own], z[:, own], suffix, _reversal(batch, length) if backward else None,
                             workspace, out=out, return_last_state=True, initial_state=state)


def _reversal(batch: int, length: int) -> torch.Tensor:
    """`(batch, length)` index visiting the steps from the last to the first."""
    return torch.arange(length - 1, -1, -1).expand(batch, length)


# ----------------------------------------------------------------------------------------------------------------------
# Paired blocks (Vim's layer pairing, SSAMBA): blocks that read the same residual stream and whose outputs are summed
# ----------------------------------------------------------------------------------------------------------------------

# A group of paired blocks runs this many tokens (rows x length) at a time: its stacked intermediates take ~18 KiB a
# token at d_model 192 (the blocks' in_proj outputs, every branch's conv output, the gated scan outputs side by side).
PAIRED_CHUNK_TOKENS = 4096
# A sequence over INFERENCE_TIME_CHUNK runs in time chunks of this many tokens (rows x steps) each (each mixer alone,
# or its blocks in `blocks_time_chunked_forward`): their intermediates take ~15 MiB a chunk at d_model 192.
TIME_CHUNK_TOKENS = 2048
# Whether `paired_blocks_cpu_applies` may say yes (False: each block runs alone, for A/B benchmarks and tests).
PAIRED_BLOCKS = True

if _numba_available():
    from numba import njit, prange

    from .cpu_scan_kernels import _LOG2E, _exp2f, _silu1, _softplus1

    _MATH = {"contract"}  # FMA contraction only, as the scan kernels: their inlined exp must not be reassociated

    @njit(parallel=True, cache=True, fastmath=_MATH, error_model="numpy")
    def _stream_layer_norms_kernel(hidden, stream, has_stream, stream_weight, weight, bias, eps, mask, has_mask,
                                   stream_out, out):
        """stream_out = hidden + stream_weight * stream (hidden alone without `has_stream`), then out[m] =
        LayerNorm_m(stream_out) * mask for each of the M norms. hidden, stream, stream_out: (rows, D) (stream_out may
        be stream); weight, bias: (M, D); mask: (rows,) 0/1; out: (M, rows, D). Mean and variance in float64."""
        rows, dim = hidden.shape
        for r in prange(rows):
            s = stream_out[r]
            h = hidden[r]
            if has_stream:
                st = stream[r]
                for c in range(dim):
                    s[c] = h[c] + stream_weight * st[c]
            else:
                for c in range(dim):
                    s[c] = h[c]
            total = 0.0
            for c in range(dim):
                total += s[c]
            mean = total / dim
            var = 0.0
            for c in range(dim):
                d = s[c] - mean
                var += d * d
            rstd = np.float32(1.0 / np.sqrt(var / dim + eps))
            mean32 = np.float32(mean)
            keep = mask[r] if has_mask else np.float32(1.0)
            for m in range(weight.shape[0]):
                o = out[m, r]
                w = weight[m]
                b = bias[m]
                for c in range(dim):
                    o[c] = ((s[c] - mean32) * rstd * w[c] + b[c]) * keep

    @njit(parallel=True, cache=True, fastmath=_MATH, error_model="numpy")
    def _branch_convs_kernel(xz, weight_t, bias, has_bias, mixer_of, backward, walk, mask, has_mask, t_block, out):
        """Every branch's causal depthwise conv + SiLU (then the padding mask). xz: (M, batch, L, 2 * dim), mixer m's
        conv input is xz[m, ..., :dim]; weight_t: (J, width, dim); bias: (J, dim); branch j reads mixer mixer_of[j]
        and walks time through `walk` (batch, L) when backward[j] (position p reads the steps at walk[b, p - width + 1
        .. p] and writes time walk[b, p]), else in order; out: (J, batch, L, dim)."""
        branches, batch, length, dim = out.shape
        width = weight_t.shape[1]
        n_tb = (length + t_block - 1) // t_block
        for task in prange(branches * batch * n_tb):
            j = task // (batch * n_tb)
            b = (task // n_tb) % batch
            p0 = (task % n_tb) * t_block
            p1 = min(p0 + t_block, length)
            m = mixer_of[j]
            back = backward[j]
            acc = np.empty(dim, dtype=np.float32)
            bias_loc = np.zeros(dim, dtype=np.float32)
            if has_bias:
                bias_loc[:] = bias[j]
            for p in range(p0, p1):
                for c in range(dim):
                    acc[c] = bias_loc[c]
                for k in range(width):
                    q = p - width + 1 + k
                    if q >= 0:
                        x_row = xz[m, b, walk[b, q] if back else q]
                        w_row = weight_t[j, k]
                        for c in range(dim):
                            acc[c] += w_row[c] * x_row[c]
                t = walk[b, p] if back else p
                keep = mask[b, t] if has_mask else np.float32(1.0)
                out_row = out[j, b, t]
                for c in range(dim):
                    out_row[c] = _silu1(acc[c]) * keep

    @njit(parallel=True, cache=True, fastmath=_MATH, error_model="numpy")
    def _branch_scans_kernel(u, xdbl, dt_weight_t, dt_bias, A_t, D, xz, mixer_of, backward, first, last, scale, walk,
                             block, tile, offset, state, has_state, out):
        """Every branch's selective scan, gated by its mixer's z, summed per mixer (and scaled: divide_out) into that
        mixer's columns of `out`. u: (J, batch, L, dim) conv outputs; xdbl: (J, batch, L, R + 2N) x_proj outputs
        [dt (low rank) | B | C]; dt_weight_t: (J, R, dim), dt_bias: (J, dim) (the time-step projection, computed here
        per tile); A_t: (J, N, dim) (A transposed); D: (J, dim); xz: (M, batch, L, 2 * dim), mixer m's gate z is
        xz[m, ..., dim:]; first[j] / last[j]: branch j is its mixer's first / last; out: (batch, L, M * dim).
        Tasks are (batch row, block of channels) and run all branches, so the branches of a mixer add up without
        races; within a branch the kernel is `_scan_inference_kernel`'s (tiles of steps, channels as vector lanes).

        Time chunks: out holds `length = out.shape[1]` steps, read from u, xdbl and xz at `offset + t` (their extra
        steps are a chunk's conv neighbours), walk is `(batch, length)`; with `has_state`, each branch starts from
        state[j, b] `(N, dim)` and writes its last state back there (the state carried across chunks)."""
        branches, batch, _, dim = u.shape
        length = out.shape[1]
        rank = dt_weight_t.shape[1]
        n_state = A_t.shape[1]
        n_blocks = (dim + block - 1) // block
        for task in prange(batch * n_blocks):
            b = task // n_blocks
            c0 = (task % n_blocks) * block
            w = min(block, dim - c0)
            c1 = c0 + w
            h = np.empty((n_state, w), dtype=np.float32)
            a_loc = np.empty((n_state, w), dtype=np.float32)
            wdt = np.empty((rank, w), dtype=np.float32)
            bias_loc = np.empty(w, dtype=np.float32)
            skip_loc = np.empty(w, dtype=np.float32)
            dt_t = np.empty((tile, w), dtype=np.float32)
            dtx_t = np.empty((tile, w), dtype=np.float32)
            y_t = np.empty((tile, w), dtype=np.float32)
            gate_t = np.empty((tile, w), dtype=np.float32)
            times = np.empty(tile, dtype=np.int64)
            for j in range(branches):
                m = mixer_of[j]
                back = backward[j]
                o0 = m * dim + c0
                for n in range(n_state):
                    h_row = h[n]
                    a_row = a_loc[n]
                    for c in range(w):
                        h_row[c] = state[j, b, n, c0 + c] if has_state else np.float32(0.0)
                        a_row[c] = A_t[j, n, c0 + c] * _LOG2E
                for r in range(rank):
                    wdt[r, :] = dt_weight_t[j, r, c0:c1]
                bias_loc[:] = dt_bias[j, c0:c1]
                skip_loc[:] = D[j, c0:c1]
                for p0 in range(0, length, tile):
                    n_steps = min(tile, length - p0)
                    for k in range(n_steps):
                        times[k] = walk[b, p0 + k] if back else p0 + k
                    for k in range(n_steps):
                        t = times[k] + offset
                        proj = xdbl[j, b, t]
                        dt_row = dt_t[k]
                        for c in range(w):
                            dt_row[c] = bias_loc[c]
                        for r in range(rank):
                            v = proj[r]
                            w_row = wdt[r]
                            for c in range(w):
                                dt_row[c] += v * w_row[c]
                        x_row = u[j, b, t, c0:c1]
                        z_row = xz[m, b, t, dim + c0:dim + c1]
                        dtx_row = dtx_t[k]
                        y_row = y_t[k]
                        gate_row = gate_t[k]
                        for c in range(w):
                            dt = _softplus1(dt_row[c])
                            x = x_row[c]
                            dt_row[c] = dt
                            dtx_row[c] = dt * x
                            y_row[c] = skip_loc[c] * x
                            gate_row[c] = _silu1(z_row[c])
                    for k in range(n_steps):
                        proj = xdbl[j, b, times[k] + offset]
                        dt_row = dt_t[k]
                        dtx_row = dtx_t[k]
                        y_row = y_t[k]
                        for n in range(n_state):
                            b_n = proj[rank + n]
                            c_n = proj[rank + n_state + n]
                            h_row = h[n]
                            a_row = a_loc[n]
                            for c in range(w):
                                h_n = _exp2f(dt_row[c] * a_row[c]) * h_row[c] + dtx_row[c] * b_n
                                h_row[c] = h_n
                                y_row[c] += h_n * c_n
                        gate_row = gate_t[k]
                        out_row = out[b, times[k], o0:o0 + w]
                        if first[j]:
                            for c in range(w):
                                out_row[c] = y_row[c] * gate_row[c]
                        else:
                            for c in range(w):
                                out_row[c] += y_row[c] * gate_row[c]
                        if last[j] and scale[m] != np.float32(1.0):
                            for c in range(w):
                                out_row[c] *= scale[m]
                if has_state:
                    for n in range(n_state):
                        state[j, b, n, c0:c1] = h[n]


def _plain(module: nn.Module, kind: type) -> bool:
    """`module` is exactly `kind` (not a LoRA wrapper or subclass) and has no hooks."""
    return type(module) is kind and not has_hooks(module)


def paired_blocks_cpu_applies(blocks: Sequence[nn.Module], hidden_states: torch.Tensor) -> bool:
    """Whether `paired_blocks_cpu_forward` computes these blocks (`MambaBlock`s with LayerNorm and a `MambaMixer`,
    of equal sizes) on `hidden_states` `(batch, L, d_model)`: each mixer takes the fused CPU inference path, every
    projection, conv and norm is a plain module without hooks, stochastic depth is off, and L is at most
    `PAIRED_CHUNK_TOKENS` (longer unpadded sequences: `blocks_time_chunked_applies`). Anything else runs block by
    block."""
    return hidden_states.shape[1] <= PAIRED_CHUNK_TOKENS and _fusable_blocks(blocks, hidden_states)


def blocks_time_chunked_applies(blocks: Sequence[nn.Module], hidden_states: torch.Tensor,
                                attention_mask: Optional[torch.Tensor] = None) -> bool:
    """Whether `blocks_time_chunked_forward` computes these blocks (one block, or blocks read from one residual
    stream as in `paired_blocks_cpu_forward`) on `hidden_states` `(batch, L, d_model)`: the blocks are fusable (see
    `paired_blocks_cpu_applies`), L is over `INFERENCE_TIME_CHUNK` and no step is padding. (Below that the one-pass
    paths are faster: chunking computes every norm and input projection twice, once per walking direction.)"""
    return (
        hidden_states.shape[1] > INFERENCE_TIME_CHUNK
        and is_unpadded(attention_mask)
        and _fusable_blocks(blocks, hidden_states)
    )


def _fusable_blocks(blocks: Sequence[nn.Module], hidden_states: torch.Tensor) -> bool:
    from .mamba_layers import MambaBlock, MambaMixer  # mamba_layers imports this module

    if not PAIRED_BLOCKS or not _numba_available():
        return False
    first = blocks[0].mixer
    for block in blocks:
        mixer = block.mixer
        if not (_plain(block, MambaBlock) and _plain(mixer, MambaMixer) and _plain(block.norm, nn.LayerNorm)):
            return False
        if block.training and block.drop_path.drop_prob > 0:
            return False
        if block.norm.weight is None or block.norm.bias is None or not cpu_inference_applies(mixer, hidden_states):
            return False
        if (mixer.d_model, mixer.d_inner, mixer.d_state, mixer.dt_rank, mixer.d_conv, mixer.bidirectional) != (
                first.d_model, first.d_inner, first.d_state, first.dt_rank, first.d_conv, first.bidirectional):
            return False
        modules = [mixer.in_proj, mixer.out_proj]
        for suffix in ("", "_b") if mixer.bidirectional else ("",):
            conv1d, x_proj, dt_proj, _, _ = mixer._branch(suffix)
            if not _plain(conv1d, nn.Conv1d):
                return False
            modules += [x_proj, dt_proj]
        if not all(_plain(module, nn.Linear) for module in modules):
            return False
    return True


# Stacked parameters of a group of paired blocks, keyed by its first block, rebuilt when any parameter changes.
_PAIRED_PARAMETERS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _paired_parameters(blocks, reverses) -> dict:
    """The blocks' parameters stacked per mixer (norms, in_proj, out_proj) and per branch (conv, x_proj, dt_proj, A,
    D), in the layouts the kernels read. Cached: rebuilt when a parameter is replaced or changed in place."""
    mixers = [block.mixer for block in blocks]
    params = [p for block in blocks for p in block.parameters()]
    key = (tuple(reverses), tuple((p.data_ptr(), p._version, p.shape) for p in params))
    cached = _PAIRED_PARAMETERS.get(blocks[0])
    if cached is not None and cached[0] == key:
        return cached[1]
    branches = []  # (mixer index, suffix, walks backward)
    for m, (mixer, reverse) in enumerate(zip(mixers, reverses)):
        branches.append((m, "", reverse))
        if mixer.bidirectional:
            branches.append((m, "_b", not reverse))
    with torch.inference_mode(False), torch.no_grad():
        parts = [mixers[m]._branch(suffix) for m, suffix, _ in branches]
        in_bias = [mixer.in_proj.bias for mixer in mixers]
        out_bias = [mixer.out_proj.bias for mixer in mixers]
        conv_bias = [conv1d.bias for conv1d, *_ in parts]
        stacked = {
            "norm_weight": torch.stack([block.norm.weight for block in blocks]).contiguous(),
            "norm_bias": torch.stack([block.norm.bias for block in blocks]).contiguous(),
            "norm_eps": float(blocks[0].norm.eps),
            "in_weight_t": torch.stack([mixer.in_proj.weight for mixer in mixers]).transpose(1, 2),
            "in_bias": None if any(b is None for b in in_bias) else torch.stack(in_bias)[:, None, :].contiguous(),
            # out_proj of the mixers side by side: sum_m W_m y_m = [W_0 | W_1 | ...] [y_0; y_1; ...]
            "out_weight_t": torch.cat([mixer.out_proj.weight for mixer in mixers], dim=1).t(),
            "out_bias": None if all(b is None for b in out_bias) else sum(b for b in out_bias if b is not None),
            "conv_weight_t": torch.stack([conv1d.weight[:, 0, :].t() for conv1d, *_ in parts]).contiguous(),
            "conv_bias": None if any(b is None for b in conv_bias) else torch.stack(conv_bias).contiguous(),
            "x_weight_t": torch.stack([x_proj.weight for _, x_proj, *_ in parts]).transpose(1, 2),
            "dt_weight_t": torch.stack([dt_proj.weight.t() for _, _, dt_proj, _, _ in parts]).contiguous(),
            "dt_bias": torch.stack([dt_proj.bias for _, _, dt_proj, _, _ in parts]).contiguous(),
            "A_t": torch.stack([(-torch.exp(A_log.float())).t() for *_, A_log, _ in parts]).contiguous(),
            "D": torch.stack([D.float() for *_, D in parts]).contiguous(),
            "mixer_of": np.array([m for m, _, _ in branches], dtype=np.int64),
            "backward": np.array([back for _, _, back in branches], dtype=np.bool_),
            "first": np.array([j == 0 or branches[j - 1][0] != m for j, (m, _, _) in enumerate(branches)]),
            "last": np.array([j == len(branches) - 1 or branches[j + 1][0] != m
                              for j, (m, _, _) in enumerate(branches)]),
            "scale": np.array([0.5 if mixer.bidirectional and mixer.divide_out else 1.0 for mixer in mixers],
                              dtype=np.float32),
        }
    _PAIRED_PARAMETERS[blocks[0]] = (key, stacked)
    return stacked


def paired_blocks_cpu_forward(blocks, reverses, hidden_states, stream, stream_weight, attention_mask):
    """Blocks that read the same residual stream, their outputs summed (Vim's layer pairing: SSAMBA's layers 2i and
    2i+1, the second reading the sequence reversed), computed together on the fused CPU kernels.

    The stream is `r = hidden_states + stream_weight * stream` (`hidden_states` when `stream` is None): each block
    `k` computes `residual = residual + hidden_states` from the same inputs, so the blocks' residuals are all `r` and
    their sum is `len(blocks) * r`, which the caller passes back as `stream=r, stream_weight=len(blocks)`. Returns
    `(sum_k blocks[k].mixer(blocks[k].norm(r), attention_mask, reverse=reverses[k]), r)`, both `(batch, L, d_model)`.

    One kernel call or GEMM per step for all blocks and branches at once: the residual add and every norm; the input
    projections (one batched GEMM); every branch's conv; every branch's x_proj (one batched GEMM); every branch's
    scan with its dt projection, gated and summed per mixer; the output projections as one GEMM over the mixers'
    outputs side by side. A long batch runs `PAIRED_CHUNK_TOKENS` tokens of rows at a time."""
    batch, seq_len, d_model = hidden_states.shape
    params = _paired_parameters(blocks, reverses)
    hidden_states = hidden_states.contiguous()
    r = torch.empty_like(hidden_states) if stream is None else stream  # the stream is updated in place
    output = hidden_states.new_empty(batch, seq_len, d_model)
    rows = max(1, PAIRED_CHUNK_TOKENS // max(seq_len, 1))
    walk = sequence_reversal_index(attention_mask, None, seq_len)
    walk = (_reversal(batch, seq_len) if walk is None else walk).to(torch.int64).contiguous()
    mask = None if attention_mask is None else attention_mask.to(torch.float32).contiguous()
    workspace = _ACTIVE_WORKSPACE.get() or InferenceWorkspace()
    for start in range(0, batch, rows):
        chunk = slice(start, min(start + rows, batch))
        _paired_rows(blocks, params, hidden_states[chunk], None if stream is None else stream[chunk], stream_weight,
                     walk[chunk], None if mask is None else mask[chunk], r[chunk], output[chunk], workspace)
    return output, r


def _paired_rows(blocks, params, hidden_states, stream, stream_weight, walk, mask, stream_out, output, workspace):
    """`paired_blocks_cpu_forward` on a few rows; writes the stream into `stream_out` and the summed outputs into
    `output` (contiguous row slices)."""
    batch, seq_len, d_model = hidden_states.shape
    mixer = blocks[0].mixer
    n_mixers, dim, tokens = len(blocks), mixer.d_inner, hidden_states.shape[0] * hidden_states.shape[1]
    n_branches = len(params["mixer_of"])
    width = mixer.dt_rank + 2 * mixer.d_state
    normed = workspace.buffer("paired_normed", (n_mixers, tokens, d_model))
    xz = workspace.buffer("paired_xz", (n_mixers, tokens, 2 * dim))
    conv = workspace.buffer("paired_conv", (n_branches, batch, seq_len, dim))
    xdbl = workspace.buffer("paired_xdbl", (n_branches, tokens, width))
    y = workspace.buffer("paired_y", (tokens, n_mixers * dim))
    torch_threads = _set_threads()
    no_mask = np.zeros((1, 1), dtype=np.float32)
    # 1. the residual add and every block's norm (padded steps zeroed: the mixers' input masking)
    _stream_layer_norms_kernel(
        hidden_states.view(tokens, d_model).numpy(),
        no_mask if stream is None else stream.view(tokens, d_model).numpy(), stream is not None,
        np.float32(stream_weight), params["norm_weight"].numpy(), params["norm_bias"].numpy(),
        params["norm_eps"], no_mask[0] if mask is None else mask.reshape(-1).numpy(), mask is not None,
        stream_out.view(tokens, d_model).numpy(), normed.numpy())
    _restore_torch_threads(torch_threads)
    # 2. the input projections, one batched GEMM: (M, tokens, d_model) -> (M, tokens, 2 * d_inner) = [x | z]
    if params["in_bias"] is None:
        torch.bmm(normed, params["in_weight_t"], out=xz)
    else:
        torch.baddbmm(params["in_bias"], normed, params["in_weight_t"], out=xz)
    torch_threads = _set_threads()
    # 3. every branch's conv + SiLU along its walk
    _branch_convs_kernel(
        xz.view(n_mixers, batch, seq_len, 2 * dim).numpy(), params["conv_weight_t"].numpy(),
        params["conv_bias"].numpy() if params["conv_bias"] is not None else no_mask, params["conv_bias"] is not None,
        params["mixer_of"], params["backward"], walk.numpy(), no_mask if mask is None else mask.numpy(),
        mask is not None, 256, conv.numpy())
    _restore_torch_threads(torch_threads)
    # 4. every branch's x_proj, one batched GEMM: (J, tokens, d_inner) -> (J, tokens, dt_rank + 2 d_state)
    torch.bmm(conv.view(n_branches, tokens, dim), params["x_weight_t"], out=xdbl)
    torch_threads = _set_threads()
    # 5. every branch's dt projection and scan, gated by its mixer's z, summed (and halved: divide_out) per mixer
    blocks_per_row = -(-_numba_threads() // batch)  # channel blocks per row that keep every thread busy
    block = min(dim, _round_up(-(-dim // blocks_per_row), 16))  # 16 float32 lanes: whole 512-bit vectors
    _branch_scans_kernel(
        conv.numpy(), xdbl.view(n_branches, batch, seq_len, width).numpy(), params["dt_weight_t"].numpy(),
        params["dt_bias"].numpy(), params["A_t"].numpy(), params["D"].numpy(),
        xz.view(n_mixers, batch, seq_len, 2 * dim).numpy(), params["mixer_of"], params["backward"], params["first"],
        params["last"], params["scale"], walk.numpy(), block, 16, 0, _NO_STATE, False,
        y.view(batch, seq_len, n_mixers * dim).numpy())
    _restore_torch_threads(torch_threads)
    # 6. the output projections as one GEMM over the mixers' outputs side by side (their sum)
    out_rows = output.view(tokens, d_model)
    if params["out_bias"] is None:
        torch.mm(y, params["out_weight_t"], out=out_rows)
    else:
        torch.addmm(params["out_bias"], y, params["out_weight_t"], out=out_rows)


_NO_STATE = np.zeros((1, 1, 1, 1), dtype=np.float32)
_NO_WALK = np.zeros((1, 1), dtype=np.int64)


def blocks_time_chunked_forward(blocks, reverses, hidden_states, stream, stream_weight,
                                chunk_tokens: Optional[int] = None):
    """`paired_blocks_cpu_forward` for a long unpadded sequence (one block alone, or blocks reading one residual
    stream), in time chunks: besides its inputs it needs O(chunk) memory, at any length.

    Memory: the stream `r = hidden_states + stream_weight * stream` is written into `stream` (into `hidden_states`
    when `stream` is None) and the summed block outputs into `hidden_states` (a new tensor when `stream` is None):
    both inputs are consumed. A stack of blocks then holds two sequence-sized tensors however deep it is.

    Every branch carries its scan state and its conv window across chunks. The branches that walk forward in time
    (a block's forward branch, or the bimamba branch of a reversed block) visit the chunks from the start, the others
    from the end; each chunk recomputes the norms and input projections of its steps plus the `d_conv - 1`
    neighbours its convolutions read, and adds its branches' output projections into the output (the bias once).
    `chunk_tokens`: rows x steps per chunk (default `TIME_CHUNK_TOKENS`). Returns `(output, r)`, both
    `(batch, L, d_model)`."""
    batch, seq_len, d_model = hidden_states.shape
    chunk_tokens = TIME_CHUNK_TOKENS if chunk_tokens is None else chunk_tokens
    params = _paired_parameters(blocks, reverses)
    mixer = blocks[0].mixer
    n_mixers, dim, reach = len(blocks), mixer.d_inner, mixer.d_conv - 1
    width = mixer.dt_rank + 2 * mixer.d_state
    hidden_states = hidden_states.contiguous()
    if stream is None:
        r, output = hidden_states, torch.empty_like(hidden_states)
    else:
        r, output = stream, hidden_states  # hidden_states is not read again once it is in the stream
        if stream_weight != 1.0:
            r.mul_(stream_weight)
        r.add_(hidden_states)
    workspace = _ACTIVE_WORKSPACE.get() or InferenceWorkspace()
    length = max(chunk_tokens // batch, 4 * reach + 1)
    starts = list(range(0, seq_len, length))
    blocks_per_row = -(-_numba_threads() // batch)
    block = min(dim, _round_up(-(-dim // blocks_per_row), 16))
    written = False  # whether a sweep has written the output (the next ones add to it)
    for backward in (False, True):
        sel = np.flatnonzero(params["backward"] == backward)
        if len(sel) == 0:
            continue
        part = _sweep_parameters(params, sel)
        missing = [m for m in range(n_mixers) if m not in set(part["mixer_of"].tolist())]
        state = np.zeros((len(sel), batch, mixer.d_state, dim), dtype=np.float32)
        for start in (reversed(starts) if backward else starts):
            end = min(start + length, seq_len)
            low, high = (start, min(end + reach, seq_len)) if backward else (max(start - reach, 0), end)
            steps, own = high - low, end - start
            tokens = batch * steps
            window = r[:, low:high].reshape(tokens, d_model)  # a view for one row
            normed = workspace.buffer("chunk_normed", (n_mixers, tokens, d_model))
            xz = workspace.buffer("chunk_xz", (n_mixers, tokens, 2 * dim))
            conv = workspace.buffer("chunk_conv", (len(sel), batch, steps, dim))
            xdbl = workspace.buffer("chunk_xdbl", (len(sel), tokens, width))
            y = workspace.buffer("chunk_y", (batch * own, n_mixers * dim))
            projected = workspace.buffer("chunk_out", (batch * own, d_model))
            torch_threads = _set_threads()
            no_mask = np.zeros((1, 1), dtype=np.float32)
            window_np = window.numpy()
            _stream_layer_norms_kernel(  # stream_out is the window itself: the norms only
                window_np, no_mask, False, np.float32(1.0), params["norm_weight"].numpy(),
                params["norm_bias"].numpy(), params["norm_eps"], no_mask[0], False, window_np, normed.numpy())
            _restore_torch_threads(torch_threads)
            if params["in_bias"] is None:
                torch.bmm(normed, params["in_weight_t"], out=xz)
            else:
                torch.baddbmm(params["in_bias"], normed, params["in_weight_t"], out=xz)
            conv_walk = _reversal(batch, steps).contiguous().numpy() if backward else _NO_WALK
            torch_threads = _set_threads()
            _branch_convs_kernel(
                xz.view(n_mixers, batch, steps, 2 * dim).numpy(), part["conv_weight_t"],
                part["conv_bias"] if part["conv_bias"] is not None else no_mask, part["conv_bias"] is not None,
                part["mixer_of"], part["backward"], conv_walk, no_mask, False, 256, conv.numpy())
            _restore_torch_threads(torch_threads)
            torch.bmm(conv.view(len(sel), tokens, dim), part["x_weight_t"], out=xdbl)
            for m in missing:  # a mixer without a branch walking this way adds nothing in this sweep
                y[:, m * dim:(m + 1) * dim] = 0
            scan_walk = _reversal(batch, own).contiguous().numpy() if backward else _NO_WALK
            torch_threads = _set_threads()
            _branch_scans_kernel(
                conv.numpy(), xdbl.view(len(sel), batch, steps, width).numpy(), part["dt_weight_t"],
                part["dt_bias"], part["A_t"], part["D"], xz.view(n_mixers, batch, steps, 2 * dim).numpy(),
                part["mixer_of"], part["backward"], part["first"], part["last"], params["scale"], scan_walk, block,
                16, start - low, state, True, y.view(batch, own, n_mixers * dim).numpy())
            _restore_torch_threads(torch_threads)
            torch.mm(y, params["out_weight_t"], out=projected)
            target = output[:, start:end]
            if not written:
                target.copy_(projected.view(batch, own, d_model))
                if params["out_bias"] is not None:
                    target.add_(params["out_bias"])
            else:
                target.add_(projected.view(batch, own, d_model))
        written = True
    return output, r


def _sweep_parameters(params: dict, sel: np.ndarray) -> dict:
    """The per-branch parameters of the branches `sel` (numpy arrays for the kernels), with their mixers' first and
    last branch recomputed among them."""
    index = torch.from_numpy(sel)
    mixer_of = params["mixer_of"][sel]
    part = {name: params[name].index_select(0, index).contiguous().numpy()
            for name in ("conv_weight_t", "x_weight_t", "dt_weight_t", "dt_bias", "A_t", "D")}
    part["x_weight_t"] = torch.from_numpy(part["x_weight_t"])  # a GEMM operand
    part["conv_bias"] = (None if params["conv_bias"] is None
                         else params["conv_bias"].index_select(0, index).contiguous().numpy())
    part["mixer_of"] = mixer_of
    part["backward"] = params["backward"][sel]
    part["first"] = np.array([j == 0 or mixer_of[j - 1] != m for j, m in enumerate(mixer_of)])
    part["last"] = np.array([j == len(mixer_of) - 1 or mixer_of[j + 1] != m for j, m in enumerate(mixer_of)])
    return part


def _numba_threads() -> int:
    import numba

    return numba.get_num_threads()


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
