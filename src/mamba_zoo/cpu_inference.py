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
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Optional, Sequence

import torch
from torch import nn

from .kernel_backends import cpu_kernels, resolve_backend
from .sequence_utils import mask_padding, sequence_reversal_index


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
# across chunk boundaries (`_forward_time_chunks`), so a mixer's intermediates stay O(chunk) at any length.
INFERENCE_TIME_CHUNK = 8192

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


def _linear_into(linear: nn.Module, x: torch.Tensor, workspace: Optional[InferenceWorkspace], name: str) -> torch.Tensor:
    """`linear(x)`, written into the workspace buffer `name` when there is a workspace and `linear` is a plain
    `nn.Linear` without hooks; anything else (a LoRA-wrapped layer, a hooked or quantised one) is called as is."""
    if (
        workspace is None
        or type(linear) is not nn.Linear
        or linear._forward_hooks
        or linear._forward_pre_hooks
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
    params = list(mixer.parameters())
    if any(p.dtype != torch.float32 for p in params):
        return False
    if torch.is_grad_enabled() and (hidden_states.requires_grad or any(p.requires_grad for p in params)):
        return False
    return True


def mamba_mixer_cpu_forward(mixer, hidden_states, attention_mask, reverse_lengths, reverse=False) -> torch.Tensor:
    """`mixer(hidden_states, attention_mask, reverse_lengths=..., reverse=...)` without autograd on the fused CPU
    kernels, a few rows at a time when the batch holds more than `INFERENCE_CHUNK_TOKENS` tokens.
    `(batch, L, d_model)` -> `(batch, L, d_model)`."""
    batch, seq_len = hidden_states.shape[:2]
    if _time_chunking_applies(mixer, hidden_states, attention_mask, reverse_lengths, reverse):
        return _forward_time_chunks(mixer, hidden_states, INFERENCE_TIME_CHUNK, reverse)
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
        and (attention_mask is None or bool(attention_mask.bool().all()))
        and type(mixer.out_proj) is nn.Linear
        and not mixer.out_proj._forward_hooks
        and not mixer.out_proj._forward_pre_hooks
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
