# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Shared Mamba layers: every model in mamba-zoo composes these instead of copying them.

- `MambaMixer`: the Mamba-1 selective SSM mixer (mamba-ssm / transformers parameter names), optionally
  bidirectional (Vim "v2": a second conv/SSM branch over the time-reversed sequence, shared in/out projections).
- `Mamba2Mixer`: the Mamba-2 (SSD) mixer, optionally bidirectional the same way.
- `RMSNorm`, `RMSNormGated`, `DropPath`, `MambaBlock` (mamba-ssm's Add -> Norm -> Mixer residual block).
- `SwitchMoE`: a top-1 mixture-of-experts MLP (BlackMamba's router and expert layout) + `load_balancing_loss`.
- `MambaZooCache`: the inference cache (conv + SSM state per layer and branch) built on transformers' `Cache`.

Kernels live in `selective_scan.py`, `causal_conv1d.py` and `ssd.py`; this file is modelling only.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DummyLayer, LinearAttentionLayer
from transformers.modeling_layers import GradientCheckpointingLayer

from .causal_conv1d import causal_conv1d_fn, causal_conv1d_update
from .selective_scan import _cpu_kernels, resolve_backend, selective_scan_fn, selective_state_update
from .ssd import mamba2_state_update, mamba_chunk_scan_combined


# ----------------------------------------------------------------------------------------------------------------------
# Scratch buffers shared by the mixers of one no-grad forward pass
# ----------------------------------------------------------------------------------------------------------------------


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


# The CPU inference path runs a batch a few rows at a time so that rows x length stays within this many tokens.
INFERENCE_CHUNK_TOKENS = 2048

_ACTIVE_WORKSPACE: contextvars.ContextVar[Optional[InferenceWorkspace]] = contextvars.ContextVar(
    "mamba_zoo_inference_workspace", default=None
)


@contextlib.contextmanager
def inference_workspace():
    """Within this context, mixers on the fused CPU inference path (no gradients) write their intermediates into one
    shared `InferenceWorkspace` instead of fresh tensors; models open it around their layer loop. Nested uses share
    the outer workspace; leaving the outermost context frees the buffers."""
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


# ----------------------------------------------------------------------------------------------------------------------
# Padding and per-sequence reversal helpers
# ----------------------------------------------------------------------------------------------------------------------


def mask_padding(hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor], time_dim: int = 1) -> torch.Tensor:
    """Zero the padded time steps of `hidden_states`.

    Args:
        hidden_states: `(batch, L, dim)` when `time_dim == 1`, `(batch, dim, L)` when `time_dim == 2`.
        attention_mask: `(batch, L)`, 1 for real tokens, 0 for padding; `None` leaves the input unchanged.
    """
    if attention_mask is None or attention_mask.shape[1] != hidden_states.shape[time_dim]:
        return hidden_states
    mask = attention_mask.to(hidden_states.dtype)
    mask = mask[:, :, None] if time_dim == 1 else mask[:, None, :]
    return hidden_states * mask


def lengths_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Valid lengths `(batch,)` of a right-padded `(batch, L)` attention mask; raises for any other padding."""
    attention_mask = attention_mask.to(torch.long)
    lengths = attention_mask.sum(-1)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if not torch.equal(attention_mask, (positions[None, :] < lengths[:, None]).long()):
        raise ValueError(
            "Bidirectional Mamba layers need a right-padded attention_mask (ones followed by zeros in every row) "
            "so that each sequence is reversed within its own length. Pad on the right (tokenizer/feature extractor "
            "`padding_side='right'`)."
        )
    return lengths


def reversal_index(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Time indices `(batch, seq_len)` that reverse positions `[0, lengths[b])` of each row and keep the rest.

    The permutation is its own inverse, so the same index maps a reversed sequence back.
    """
    positions = torch.arange(seq_len, device=lengths.device)[None, :]
    lengths = lengths.to(positions.device)[:, None]
    return torch.where(positions < lengths, lengths - 1 - positions, positions)


def reverse_within_lengths(x: torch.Tensor, index: Optional[torch.Tensor], time_dim: int) -> torch.Tensor:
    """Apply a `reversal_index` (or a plain flip when `index is None`) along `time_dim` (1 or 2) of a 3-D tensor."""
    if index is None:
        return x.flip(time_dim)
    if time_dim == 1:
        return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))
    return x.gather(2, index[:, None, :].expand(-1, x.shape[1], -1))


def _resolve_cache_kwarg(cache, kwargs: dict):
    """Accept transformers' older names for the cache argument (`cache_params`, `past_key_values`)."""
    for old_name in ("cache_params", "past_key_values"):
        value = kwargs.pop(old_name, None)
        if cache is None and value is not None:
            cache = value
    return cache


# ----------------------------------------------------------------------------------------------------------------------
# Inference cache
# ----------------------------------------------------------------------------------------------------------------------


class MambaZooCache(Cache):
    """Inference cache for mamba-zoo models, a transformers `Cache` of linear-attention layers.

    Layer `i` holds `states_per_layer[i]` (conv state, SSM state) pairs: 1 for a unidirectional mixer, 2 for a
    bidirectional one (state 0 = forward branch, state 1 = backward branch), 0 for a layer without recurrent state (an
    MoE/MLP layer, stored as a `DummyLayer`). Conv states are `(batch, conv_dim, d_conv)`; Mamba-1 SSM states are
    `(batch, d_inner, d_state)`, Mamba-2 ones `(batch, nheads, headdim, d_state)`, always float32.
    `reorder_cache(beam_idx)` (beam search) and `reset()` come from transformers' `Cache`.
    """

    def __init__(self, states_per_layer: Sequence[int]):
        states_per_layer = list(states_per_layer)
        if any(n < 0 for n in states_per_layer):
            raise ValueError(f"states_per_layer must be >= 0 everywhere, got {states_per_layer}.")
        layers = [LinearAttentionLayer(number_of_states=n) if n > 0 else DummyLayer() for n in states_per_layer]
        super().__init__(layers=layers)
        self.states_per_layer = states_per_layer

    def has_state(self, layer_idx: int, state_idx: int = 0) -> bool:
        layer = self.layers[layer_idx]
        return isinstance(layer, LinearAttentionLayer) and bool(layer.has_previous_state[state_idx])

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return getattr(self, "_seen_tokens", 0)

    def advance(self, num_tokens: int) -> None:
        """Record that the model consumed `num_tokens` more positions (used for `get_seq_length`)."""
        self._seen_tokens = getattr(self, "_seen_tokens", 0) + num_tokens

    def reset(self) -> None:
        super().reset()
        self._seen_tokens = 0


# ----------------------------------------------------------------------------------------------------------------------
# Norms, drop path
# ----------------------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square norm (T5/Llama/Mamba): `weight * x / sqrt(mean(x^2) + eps)`, computed in float32."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * hidden_states).to(input_dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class RMSNormGated(nn.Module):
    """Mamba-2's gated RMS norm: `rmsnorm(x * silu(z))` (or `rmsnorm(x) * silu(z)` with `norm_before_gate`).

    With `group_size < hidden_size` the normalisation statistics are taken per group of channels (one per B/C group).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: Optional[int] = None, norm_before_gate: bool = False):
        super().__init__()
        group_size = hidden_size if group_size is None else group_size
        if hidden_size % group_size != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by group_size ({group_size}).")
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate

    def forward(self, hidden_states: torch.Tensor, gate: Optional[torch.Tensor] = None) -> torch.Tensor:
        """hidden_states, gate: `(..., hidden_size)`."""
        input_dtype = hidden_states.dtype
        x = hidden_states.float()
        if gate is not None and not self.norm_before_gate:
            x = x * F.silu(gate.float())
        grouped = x.unflatten(-1, (-1, self.group_size))
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        x = grouped.flatten(-2) * self.weight.float()
        if gate is not None and self.norm_before_gate:
            x = x * F.silu(gate.float())
        return x.to(input_dtype)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability `drop_prob` (training only)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}.")
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        keep = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * keep / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def build_norm(norm_type: str, hidden_size: int, eps: float) -> nn.Module:
    """`"layernorm"` (with bias, as SSAMBA/Vim checkpoints) or `"rmsnorm"` (as mamba-ssm / BlackMamba)."""
    if norm_type == "layernorm":
        return nn.LayerNorm(hidden_size, eps=eps)
    if norm_type == "rmsnorm":
        return RMSNorm(hidden_size, eps=eps)
    raise ValueError(f"norm_type must be 'layernorm' or 'rmsnorm', got {norm_type!r}.")


# ----------------------------------------------------------------------------------------------------------------------
# Mamba-1 mixer (unidirectional or bidirectional "v2")
# ----------------------------------------------------------------------------------------------------------------------


def _inverse_softplus_dt(size: int, dt_min: float, dt_max: float, dt_init_floor: float, device=None) -> torch.Tensor:
    """Time steps sampled log-uniformly in [dt_min, dt_max], mapped through softplus^-1 (mamba-ssm's dt bias init)."""
    dt = torch.exp(
        torch.rand(size, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    ).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


class MambaMixer(nn.Module):
    """The Mamba selective state-space mixer (Gu & Dao 2023).

    Delta, B and C are computed from the input at every step (the "selective" part); A and D are input-independent
    learned parameters. Input `(batch, L, d_model)` -> output `(batch, L, d_model)`.

    With `bidirectional=True` this is Vim's "v2" bidirectional mixer (used by SSAMBA, ConMamba, MADEON speech
    prefixing): a second conv + SSM branch (`conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b`) runs over the sequence
    reversed *within each sequence's valid length* (or within `reverse_lengths`), its output is reversed back, added to
    the forward branch (and halved with `divide_out`), then projected by the shared `out_proj`.

    Parameter names are mamba-ssm's and transformers' (`in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj`), so their
    state dicts load unchanged. All projections are called as modules, so PEFT/LoRA wrappers are never bypassed.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        bidirectional: bool = False,
        divide_out: bool = False,
        layer_idx: Optional[int] = None,
        backend: str = "auto",
    ):
        super().__init__()
        if d_model <= 0 or d_state <= 0 or d_conv <= 0 or expand <= 0:
            raise ValueError(
                f"d_model, d_state, d_conv and expand must be positive, got {d_model}, {d_state}, {d_conv}, {expand}."
            )
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}.")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.dt_min, self.dt_max, self.dt_init, self.dt_scale, self.dt_init_floor = dt_min, dt_max, dt_init, dt_scale, dt_init_floor
        self.bidirectional = bidirectional
        self.divide_out = divide_out
        self.layer_idx = layer_idx
        self.backend = backend

        # input projection to the SSM input x and the gate z
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self._add_branch("", conv_bias)
        if bidirectional:
            self._add_branch("_b", conv_bias)
        # output projection back to the model width
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.init_ssm_parameters()

    def _add_branch(self, suffix: str, conv_bias: bool) -> None:
        # depthwise causal convolution over time
        setattr(self, f"conv1d{suffix}", nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=self.d_conv, groups=self.d_inner, padding=self.d_conv - 1,
            bias=conv_bias,
        ))
        # selective projection: input-dependent time step (low rank), B and C
        setattr(self, f"x_proj{suffix}", nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False))
        # time step projection (discretization)
        setattr(self, f"dt_proj{suffix}", nn.Linear(self.dt_rank, self.d_inner, bias=True))
        # S4D-real A (stored as log(-A)) and the skip connection D: not input-dependent
        a_name = "A_log" if suffix == "" else "A_b_log"
        setattr(self, a_name, nn.Parameter(torch.empty(self.d_inner, self.d_state)))
        setattr(self, f"D{suffix}", nn.Parameter(torch.empty(self.d_inner)))
        getattr(self, a_name)._no_weight_decay = True
        getattr(self, f"D{suffix}")._no_weight_decay = True

    def _branch(self, suffix: str):
        a_name = "A_log" if suffix == "" else "A_b_log"
        return (getattr(self, f"conv1d{suffix}"), getattr(self, f"x_proj{suffix}"), getattr(self, f"dt_proj{suffix}"),
                getattr(self, a_name), getattr(self, f"D{suffix}"))

    @torch.no_grad()
    def init_ssm_parameters(self) -> None:
        """mamba-ssm's initialisation of A_log (S4D-real), D (ones), dt_proj (weight and inverse-softplus bias).

        Uses `transformers.initialization`, so parameters already loaded from a checkpoint are left untouched.
        """
        if self.in_proj.weight.device.type == "meta":
            return
        for suffix in ("", "_b") if self.bidirectional else ("",):
            _, _, dt_proj, A_log, D = self._branch(suffix)
            A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=A_log.device).repeat(self.d_inner, 1)
            init.copy_(A_log, torch.log(A))
            init.ones_(D)
            dt_init_std = self.dt_rank**-0.5 * self.dt_scale
            if self.dt_init == "constant":
                init.constant_(dt_proj.weight, dt_init_std)
            else:
                init.uniform_(dt_proj.weight, -dt_init_std, dt_init_std)
            init.copy_(dt_proj.bias, _inverse_softplus_dt(
                self.d_inner, self.dt_min, self.dt_max, self.dt_init_floor, device=dt_proj.bias.device
            ))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        cache: Optional[MambaZooCache] = None,
        reverse_lengths: Optional[torch.Tensor] = None,
        reverse: bool = False,
        **kwargs,
    ) -> torch.Tensor:
        """
        Args:
            hidden_states: `(batch, L, d_model)`.
            attention_mask: `(batch, L)`, 1 = token, 0 = padding. Padded steps are zeroed so they never reach the state;
                bidirectional mixers need right padding.
            cache: a `MambaZooCache`; with states present the tokens are stepped one at a time from them, otherwise
                the full sequence is scanned and the final states are stored (prefill).
            reverse_lengths: `(batch,)`, bidirectional only: the backward branch reverses positions
                `[0, reverse_lengths[b])` and keeps later positions in order (MADEON's speech prefix). Defaults to the
                valid lengths from `attention_mask`, or the whole sequence.
            reverse: compute `reverse(mixer(reverse(hidden_states)))`, with `reverse` flipping each sequence within its
                valid length (Vim's layer pairing: odd layers read the reversed sequence). On the CPU inference path
                nothing is flipped; the branches walk the time steps in the other order.

        Returns:
            `(batch, L, d_model)`.
        """
        cache = _resolve_cache_kwarg(cache, kwargs)
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(
                f"hidden_states must be (batch, L, d_model={self.d_model}), got shape {tuple(hidden_states.shape)}."
            )
        if reverse and (cache is not None or reverse_lengths is not None):
            raise ValueError("reverse=True reads the whole sequence backwards: it takes neither a cache nor reverse_lengths.")
        if cache is None and self._use_inference_kernels(hidden_states):
            return self._forward_inference(hidden_states, attention_mask, reverse_lengths, reverse)
        if reverse:
            index = self._reversal_index(attention_mask, None, hidden_states.shape[1])
            output = self.forward(reverse_within_lengths(hidden_states, index, 1), attention_mask)
            return reverse_within_lengths(output, index, 1)
        hidden_states = mask_padding(hidden_states, attention_mask)
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (batch, 2 * d_inner, L)
        x, z = xz.chunk(2, dim=1)

        y = self._ssm_branch(x, z, attention_mask, cache, state_idx=0, suffix="")
        if self.bidirectional:
            index = self._reversal_index(attention_mask, reverse_lengths, x.shape[-1])
            mask_b = None if attention_mask is None else reverse_within_lengths(attention_mask[:, :, None], index, 1)[..., 0]
            y_b = self._ssm_branch(
                reverse_within_lengths(x, index, 2), reverse_within_lengths(z, index, 2), mask_b, cache, 1, "_b"
            )
            y = y + reverse_within_lengths(y_b, index, 2)
            if self.divide_out:
                y = y / 2
        if cache is not None and self.layer_idx == 0:
            cache.advance(hidden_states.shape[1])
        return self.out_proj(y.transpose(1, 2).to(hidden_states.dtype))

    def _use_inference_kernels(self, hidden_states: torch.Tensor) -> bool:
        """Whether this forward can take the fused CPU inference path: the CPU kernels are selected (numba), nothing
        needs gradients (grad mode off, or no input or parameter requires grad) and everything is float32."""
        if hidden_states.device.type != "cpu" or hidden_states.dtype != torch.float32:
            return False
        if self.backend not in ("auto", "cpu") or resolve_backend(hidden_states, backend=self.backend) != "cpu":
            return False
        if not _cpu_kernels().inference_kernels_enabled():
            return False
        params = list(self.parameters())
        if any(p.dtype != torch.float32 for p in params):
            return False
        if torch.is_grad_enabled() and (hidden_states.requires_grad or any(p.requires_grad for p in params)):
            return False
        return True

    def _forward_inference(self, hidden_states, attention_mask, reverse_lengths, reverse=False):
        """The no-grad CPU forward (`_forward_inference_rows`), a few rows at a time when the batch holds more than
        `INFERENCE_CHUNK_TOKENS` tokens, so the intermediates (about 6 x d_inner floats per token) stay bounded."""
        batch, seq_len = hidden_states.shape[:2]
        rows = max(1, INFERENCE_CHUNK_TOKENS // max(seq_len, 1))
        if rows >= batch:
            return self._forward_inference_rows(hidden_states, attention_mask, reverse_lengths, reverse)
        output = hidden_states.new_empty(batch, seq_len, self.d_model)
        for start in range(0, batch, rows):
            chunk = slice(start, start + rows)
            output[chunk] = self._forward_inference_rows(
                hidden_states[chunk],
                None if attention_mask is None else attention_mask[chunk],
                None if reverse_lengths is None else reverse_lengths[chunk],
                reverse,
            )
        return output

    def _forward_inference_rows(self, hidden_states, attention_mask, reverse_lengths, reverse=False):
        """The forward pass without autograd, on the fused CPU kernels, in the time-major `(batch, L, d_inner)` layout
        throughout (no transposes): the backward branch never flips anything; its convolution and scan walk the time
        steps through the reversal index (anti-causal conv, scan from the end) and write at the original times, so
        its output adds to the forward branch's in place. With `reverse` the two branches swap walking orders. Same
        results as the general path; projections are still called as modules (LoRA)."""
        kernels = _cpu_kernels()
        workspace = _ACTIVE_WORKSPACE.get()  # None: fresh tensors
        hidden_states = mask_padding(hidden_states, attention_mask)
        xz = _linear_into(self.in_proj, hidden_states, workspace, "xz")  # (batch, L, 2 * d_inner)
        x, z = xz[..., : self.d_inner], xz[..., self.d_inner:]
        backward_index = None
        if self.bidirectional or reverse:
            batch, seq_len = hidden_states.shape[:2]
            backward_index = self._reversal_index(attention_mask, reverse_lengths, seq_len)
            if backward_index is None:
                backward_index = torch.arange(seq_len - 1, -1, -1).expand(batch, seq_len)
        forward_index, backward_index = (backward_index, None) if reverse else (None, backward_index)
        y = None if workspace is None else workspace.buffer("y", x.shape)
        y = self._inference_branch(kernels, x, z, attention_mask, forward_index, "", y, False, workspace)
        if self.bidirectional:
            self._inference_branch(kernels, x, z, attention_mask, backward_index, "_b", y, True, workspace)
            if self.divide_out:
                y.div_(2)  # y is this call's own buffer
        return self.out_proj(y)

    def _inference_branch(self, kernels, x, z, attention_mask, index, suffix, out, accumulate, workspace):
        """One conv + scan branch on time-major x, z `(batch, L, d_inner)` (column slices of the input projection).
        `index` (batch, L): the order in which the branch visits the time steps (None: forward). Returns the gated
        output `(batch, L, d_inner)`, written into `out` when given (added to it with `accumulate`). Intermediates go
        to the `workspace` buffers when there is one."""
        conv1d, x_proj, dt_proj, A_log, D = self._branch(suffix)
        A = -torch.exp(A_log.float())
        x = kernels.causal_conv1d_inference_time_major(
            x, conv1d.weight.squeeze(1), conv1d.bias, silu=True, index=index,
            out=None if workspace is None else workspace.buffer("conv", x.shape),
        )
        x = mask_padding(x, attention_mask)
        dt, B, C = torch.split(x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = _linear_into(dt_proj, dt, workspace, "dt")  # (batch, L, d_inner); the dt bias is inside the projection
        return kernels.selective_scan_inference_time_major(
            x, dt, A, B, C, D=D.float(), z=z, delta_softplus=True, index=index, out=out, accumulate=accumulate
        )

    @staticmethod
    def _reversal_index(attention_mask, reverse_lengths, seq_len):
        if reverse_lengths is not None:
            return reversal_index(reverse_lengths, seq_len)
        if attention_mask is not None:
            return reversal_index(lengths_from_attention_mask(attention_mask), seq_len)
        return None  # plain flip

    def _ssm_branch(self, x, z, attention_mask, cache, state_idx, suffix):
        """One conv + selective-scan branch. x, z: `(batch, d_inner, L)` -> y `(batch, d_inner, L)` (gated, float32)."""
        conv1d, x_proj, dt_proj, A_log, D = self._branch(suffix)
        A = -torch.exp(A_log.float())
        conv_weight = conv1d.weight.squeeze(1)  # (d_inner, d_conv)
        if cache is not None and self.layer_idx is None:
            raise ValueError("A mixer used with a cache needs its layer_idx; pass layer_idx= when building it.")

        if cache is not None and cache.has_state(self.layer_idx, state_idx):
            conv_state = cache.get_conv_state(self.layer_idx, state_idx)
            ssm_state = cache.get_recurrent_state(self.layer_idx, state_idx)
            outputs = []
            for t in range(x.shape[-1]):
                x_t = causal_conv1d_update(x[:, :, t], conv_state, conv_weight, conv1d.bias, activation="silu")
                dt_t, B_t, C_t = torch.split(x_proj(x_t), [self.dt_rank, self.d_state, self.d_state], dim=-1)
                outputs.append(selective_state_update(
                    ssm_state, x_t, dt_proj(dt_t), A, B_t, C_t, D=D.float(), z=z[:, :, t], dt_softplus=True
                ))
            return torch.stack(outputs, dim=-1)

        if cache is not None:
            last = x[..., -self.d_conv:]
            conv_state = F.pad(last, (self.d_conv - last.shape[-1], 0))
            cache.update_conv_state(conv_state.detach().clone(), self.layer_idx, state_idx=state_idx)
        x = causal_conv1d_fn(x, conv_weight, conv1d.bias, activation="silu")
        x = mask_padding(x, attention_mask, time_dim=2)
        dt, B, C = torch.split(x_proj(x.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = dt_proj(dt).transpose(1, 2)  # (batch, d_inner, L); the dt bias is inside the projection
        result = selective_scan_fn(
            x, dt, A, B.transpose(1, 2), C.transpose(1, 2), D=D.float(), z=z,
            delta_softplus=True, return_last_state=cache is not None, backend=self.backend,
        )
        if cache is None:
            return result
        y, last_state = result
        cache.update_recurrent_state(last_state.float(), self.layer_idx, state_idx=state_idx)
        return y


# ----------------------------------------------------------------------------------------------------------------------
# Mamba-2 mixer
# ----------------------------------------------------------------------------------------------------------------------


class Mamba2Mixer(nn.Module):
    """The Mamba-2 mixer (Dao & Gu 2024, structured state-space duality).

    A is a scalar per head (times identity), so the scan is computed chunk-wise with matrix products (`ssd.py`); x, B, C
    come from one causal conv over `[x | B | C]`, the gate z enters through a gated RMS norm before `out_proj`.
    Parameter names follow mamba-ssm's `Mamba2`: `in_proj, conv1d, dt_bias, A_log, D, norm, out_proj`.
    `in_proj` produces `[z (d_inner) | x (d_inner) | B (ngroups*d_state) | C (ngroups*d_state) | dt (nheads)]`.

    With `bidirectional=True` a second branch (`conv1d_b, dt_bias_b, A_b_log, D_b`) scans the per-sequence reversed
    `[x | B | C]` with the same `dt` projection; the two branch outputs are summed (halved with `divide_out`) before the
    shared gated norm and `out_proj`.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 256,
        norm_eps: float = 1e-5,
        norm_before_gate: bool = False,
        conv_bias: bool = True,
        bias: bool = False,
        bidirectional: bool = False,
        divide_out: bool = False,
        layer_idx: Optional[int] = None,
        backend: str = "auto",
    ):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        if self.d_inner % headdim != 0:
            raise ValueError(f"expand * d_model ({self.d_inner}) must be divisible by headdim ({headdim}).")
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups != 0:
            raise ValueError(f"the number of heads ({self.nheads}) must be divisible by ngroups ({ngroups}).")
        self.ngroups = ngroups
        self.A_init_range = A_init_range
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.chunk_size = chunk_size
        self.bidirectional = bidirectional
        self.divide_out = divide_out
        self.layer_idx = layer_idx
        self.backend = backend
        self.conv_dim = self.d_inner + 2 * ngroups * d_state

        # one projection for the gate z, the conv input [x | B | C] and the per-head time step
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=bias)
        self._add_branch("", conv_bias)
        if bidirectional:
            self._add_branch("_b", conv_bias)
        # gated RMS norm (gate = z), statistics per B/C group
        self.norm = RMSNormGated(self.d_inner, eps=norm_eps, group_size=self.d_inner // ngroups,
                                 norm_before_gate=norm_before_gate)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.init_ssm_parameters()

    def _add_branch(self, suffix: str, conv_bias: bool) -> None:
        setattr(self, f"conv1d{suffix}", nn.Conv1d(
            self.conv_dim, self.conv_dim, kernel_size=self.d_conv, groups=self.conv_dim, padding=self.d_conv - 1,
            bias=conv_bias,
        ))
        a_name = "A_log" if suffix == "" else "A_b_log"
        setattr(self, f"dt_bias{suffix}", nn.Parameter(torch.empty(self.nheads)))
        setattr(self, a_name, nn.Parameter(torch.empty(self.nheads)))
        setattr(self, f"D{suffix}", nn.Parameter(torch.empty(self.nheads)))
        for name in (f"dt_bias{suffix}", a_name, f"D{suffix}"):
            getattr(self, name)._no_weight_decay = True

    def _branch(self, suffix: str):
        a_name = "A_log" if suffix == "" else "A_b_log"
        return (getattr(self, f"conv1d{suffix}"), getattr(self, f"dt_bias{suffix}"), getattr(self, a_name),
                getattr(self, f"D{suffix}"))

    @torch.no_grad()
    def init_ssm_parameters(self) -> None:
        """mamba-ssm's Mamba2 initialisation of dt_bias, A_log (uniform in A_init_range) and D (ones)."""
        if self.in_proj.weight.device.type == "meta":
            return
        low, high = self.A_init_range
        for suffix in ("", "_b") if self.bidirectional else ("",):
            _, dt_bias, A_log, D = self._branch(suffix)
            init.copy_(dt_bias, _inverse_softplus_dt(self.nheads, self.dt_min, self.dt_max, self.dt_init_floor,
                                                     device=dt_bias.device))
            init.copy_(A_log, torch.log(torch.empty(self.nheads, device=A_log.device).uniform_(low, high)))
            init.ones_(D)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        cache: Optional[MambaZooCache] = None,
        reverse_lengths: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> torch.Tensor:
        """Same contract as `MambaMixer.forward`: `(batch, L, d_model)` -> `(batch, L, d_model)`."""
        cache = _resolve_cache_kwarg(cache, kwargs)
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(
                f"hidden_states must be (batch, L, d_model={self.d_model}), got shape {tuple(hidden_states.shape)}."
            )
        hidden_states = mask_padding(hidden_states, attention_mask)
        zxbcdt = self.in_proj(hidden_states)
        z, xBC, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)

        y = self._ssd_branch(xBC, dt, attention_mask, cache, 0, "")
        if self.bidirectional:
            index = MambaMixer._reversal_index(attention_mask, reverse_lengths, xBC.shape[1])
            mask_b = None if attention_mask is None else reverse_within_lengths(attention_mask[:, :, None], index, 1)[..., 0]
            y_b = self._ssd_branch(
                reverse_within_lengths(xBC, index, 1), reverse_within_lengths(dt, index, 1), mask_b, cache, 1, "_b"
            )
            y = y + reverse_within_lengths(y_b, index, 1)
            if self.divide_out:
                y = y / 2
        if cache is not None and self.layer_idx == 0:
            cache.advance(hidden_states.shape[1])
        y = self.norm(y, z)
        return self.out_proj(y.to(hidden_states.dtype))

    def _ssd_branch(self, xBC, dt, attention_mask, cache, state_idx, suffix):
        """xBC `(batch, L, conv_dim)`, dt `(batch, L, nheads)` -> y `(batch, L, d_inner)` (ungated)."""
        conv1d, dt_bias, A_log, D = self._branch(suffix)
        A = -torch.exp(A_log.float())
        conv_weight = conv1d.weight.squeeze(1)
        batch, seq_len, _ = xBC.shape
        if cache is not None and self.layer_idx is None:
            raise ValueError("A mixer used with a cache needs its layer_idx; pass layer_idx= when building it.")

        if cache is not None and cache.has_state(self.layer_idx, state_idx):
            conv_state = cache.get_conv_state(self.layer_idx, state_idx)
            ssm_state = cache.get_recurrent_state(self.layer_idx, state_idx)
            outputs = []
            for t in range(seq_len):
                xBC_t = causal_conv1d_update(xBC[:, t], conv_state, conv_weight, conv1d.bias, activation="silu")
                x_t, B_t, C_t = torch.split(xBC_t, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], -1)
                y_t = mamba2_state_update(
                    ssm_state, x_t.view(batch, self.nheads, self.headdim), dt[:, t], A,
                    B_t.view(batch, self.ngroups, self.d_state), C_t.view(batch, self.ngroups, self.d_state),
                    D=D.float(), dt_bias=dt_bias.float(), dt_softplus=True,
                )
                outputs.append(y_t.reshape(batch, self.d_inner))
            return torch.stack(outputs, dim=1)

        xBC = xBC.transpose(1, 2)
        if cache is not None:
            last = xBC[..., -self.d_conv:]
            cache.update_conv_state(F.pad(last, (self.d_conv - last.shape[-1], 0)).detach().clone(), self.layer_idx,
                                    state_idx=state_idx)
        xBC = causal_conv1d_fn(xBC, conv_weight, conv1d.bias, activation="silu").transpose(1, 2)
        xBC = mask_padding(xBC, attention_mask)
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        if attention_mask is not None:
            # a zero time step keeps the state unchanged across padding
            dt = dt.masked_fill(~attention_mask.bool()[:, :, None], -1e4)
        result = mamba_chunk_scan_combined(
            x.reshape(batch, seq_len, self.nheads, self.headdim), dt, A,
            B.reshape(batch, seq_len, self.ngroups, self.d_state), C.reshape(batch, seq_len, self.ngroups, self.d_state),
            chunk_size=self.chunk_size, D=D.float(), dt_bias=dt_bias.float(), dt_softplus=True,
            return_final_states=cache is not None, backend=self.backend,
        )
        if cache is not None:
            y, final_state = result
            cache.update_recurrent_state(final_state.float(), self.layer_idx, state_idx=state_idx)
        else:
            y = result
        return y.reshape(batch, seq_len, self.d_inner)


# ----------------------------------------------------------------------------------------------------------------------
# Residual block
# ----------------------------------------------------------------------------------------------------------------------


class MambaBlock(GradientCheckpointingLayer):
    """mamba-ssm's residual block: Add -> Norm -> Mixer, carrying the residual stream separately.

    `forward(hidden_states, residual)` computes `residual = residual + drop_path(hidden_states)` (or `hidden_states` in
    the first block), `hidden_states = mixer(norm(residual))` and returns `(hidden_states, residual)`; the model applies
    the final `residual + hidden_states` and its last norm. This is the layout of mamba-ssm, Vim/SSAMBA and BlackMamba,
    so their checkpoints (`layers.{i}.norm`, `layers.{i}.mixer`) map 1:1. If the mixer returns a tuple
    (e.g. `SwitchMoE`'s `(output, router_logits)`), the extras are appended: `(hidden_states, residual, *extras)`.
    Supports gradient checkpointing through transformers' `GradientCheckpointingLayer`.
    """

    def __init__(
        self,
        d_model: int,
        mixer: nn.Module,
        norm_type: str = "rmsnorm",
        norm_eps: float = 1e-5,
        drop_path: float = 0.0,
        residual_in_fp32: bool = False,
    ):
        super().__init__()
        self.norm = build_norm(norm_type, d_model, norm_eps)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path)
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden_states: torch.Tensor, residual: Optional[torch.Tensor] = None, **mixer_kwargs):
        """hidden_states, residual: `(batch, L, d_model)`; mixer_kwargs go to the mixer (attention_mask, cache, ...)."""
        residual = hidden_states if residual is None else residual + self.drop_path(hidden_states)
        hidden_states = self.norm(residual.to(dtype=self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.to(torch.float32)
        mixer_output = self.mixer(hidden_states, **mixer_kwargs)
        if isinstance(mixer_output, tuple):
            return (mixer_output[0], residual, *mixer_output[1:])
        return mixer_output, residual


# ----------------------------------------------------------------------------------------------------------------------
# Mixture of experts
# ----------------------------------------------------------------------------------------------------------------------


class MoEExpert(nn.Module):
    """One expert MLP (BlackMamba/Megatron layout): `linear_fc1` H -> 2F split `[gate | up]`, `act(gate) * up`,
    `linear_fc2` F -> H, no biases. With `gated=False`, `linear_fc1` is H -> F and the MLP is `fc2(act(fc1(x)))`."""

    def __init__(self, hidden_size: int, ffn_hidden_size: int, hidden_act: str = "gelu", gated: bool = True):
        super().__init__()
        self.gated = gated
        self.linear_fc1 = nn.Linear(hidden_size, (2 if gated else 1) * ffn_hidden_size, bias=False)
        self.linear_fc2 = nn.Linear(ffn_hidden_size, hidden_size, bias=False)
        self.act = ACT2FN[hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.linear_fc1(hidden_states)
        if self.gated:
            gate, up = hidden_states.chunk(2, dim=-1)
            return self.linear_fc2(self.act(gate) * up)
        return self.linear_fc2(self.act(hidden_states))


def sinkhorn(cost: torch.Tensor, tol: float = 1e-4, max_iters: int = 100) -> torch.Tensor:
    """Sinkhorn-Knopp balancing of `exp(cost)` `(tokens, experts)` towards uniform row and column sums."""
    cost = torch.exp(cost - cost.max())
    row_scale = torch.ones(cost.shape[0], device=cost.device, dtype=cost.dtype)
    col_scale = torch.ones(cost.shape[1], device=cost.device, dtype=cost.dtype)
    eps = 1e-8
    for _ in range(max_iters):
        row_scale = 1.0 / (cost.shape[0] * ((cost * col_scale).sum(1) + eps))
        new_col_scale = 1.0 / (cost.shape[1] * ((cost * row_scale[:, None]).sum(0) + eps))
        converged = torch.mean(torch.abs(new_col_scale - col_scale)) < tol
        col_scale = new_col_scale
        if converged:
            break
    return cost * col_scale * row_scale[:, None]


class SwitchMoE(nn.Module):
    """Top-1 mixture-of-experts MLP as released by BlackMamba (Zyphra 2024).

    The router `Linear(H, E, bias=True)` scores each token; `sigmoid` turns scores into probabilities; each token goes to
    its highest-probability expert and the expert output is scaled by that (raw, unnormalised) sigmoid probability.
    With `sinkhorn_in_training`, training assigns experts by Sinkhorn-balanced scores (as the released training code),
    while the scale stays the sigmoid probability of the assigned expert.

    Tokens are sorted by expert, so each expert runs once on a contiguous slice (no Python loop over tokens).
    Router and experts are plain `nn.Linear`s so LoRA can target them.

    forward: `(batch, L, H)` -> `((batch, L, H), router_logits (batch * L, E))`. `last_expert_counts` keeps the number
    of tokens per expert of the latest call (for load reports).
    """

    def __init__(
        self,
        hidden_size: int,
        ffn_hidden_size: int,
        num_experts: int,
        hidden_act: str = "gelu",
        gated: bool = True,
        router_bias: bool = True,
        sinkhorn_in_training: bool = False,
    ):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}.")
        self.num_experts = num_experts
        self.sinkhorn_in_training = sinkhorn_in_training
        self.router = nn.Linear(hidden_size, num_experts, bias=router_bias)
        self.local_experts = nn.ModuleList(
            [MoEExpert(hidden_size, ffn_hidden_size, hidden_act, gated) for _ in range(num_experts)]
        )
        self.last_expert_counts: Optional[torch.Tensor] = None

    def route(self, router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """router_logits `(tokens, E)` -> (expert index `(tokens,)`, output scale `(tokens,)`)."""
        probs = torch.sigmoid(router_logits.float())
        if self.training and self.sinkhorn_in_training:
            with torch.no_grad():
                expert_index = sinkhorn(router_logits.detach().float()).argmax(dim=-1)
            scale = probs.gather(1, expert_index[:, None])[:, 0]
        else:
            scale, expert_index = probs.max(dim=-1)
        return expert_index, scale

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        shape = hidden_states.shape
        tokens = hidden_states.reshape(-1, shape[-1])
        router_logits = self.router(tokens)
        expert_index, scale = self.route(router_logits)

        order = torch.argsort(expert_index, stable=True)
        counts = torch.bincount(expert_index, minlength=self.num_experts)
        self.last_expert_counts = counts.detach()
        sorted_tokens = tokens[order]
        sorted_outputs = []
        start = 0
        for expert, count in zip(self.local_experts, counts.tolist()):
            if count > 0:
                sorted_outputs.append(expert(sorted_tokens[start:start + count]))
            start += count
        sorted_outputs = torch.cat(sorted_outputs, dim=0) if sorted_outputs else sorted_tokens
        output = torch.empty_like(sorted_outputs).index_copy(0, order, sorted_outputs)
        output = output * scale[:, None].to(output.dtype)
        return output.reshape(shape), router_logits


def load_balancing_loss(router_logits: Sequence[torch.Tensor] | torch.Tensor, num_experts: int,
                        attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Switch-Transformer load-balancing loss `E * sum_e f_e * P_e` over all MoE layers.

    `f_e` is the fraction of (unpadded) tokens whose top-1 expert is `e`, `P_e` the mean router probability of `e`
    (sigmoid scores normalised over experts). Equals 1 for perfectly balanced routing, up to `E` when collapsed.
    router_logits: one `(tokens, E)` tensor per MoE layer (or a concatenation); attention_mask: `(batch, L)` with
    `batch * L == tokens` per layer.
    """
    if isinstance(router_logits, (tuple, list)):
        if len(router_logits) == 0:
            raise ValueError("load_balancing_loss needs at least one router_logits tensor.")
        num_layers = len(router_logits)
        logits = torch.cat([r.float() for r in router_logits], dim=0)
    else:
        num_layers = 1
        logits = router_logits.float()
    probs = torch.sigmoid(logits)
    probs = probs / probs.sum(-1, keepdim=True)
    assignment = F.one_hot(probs.argmax(-1), num_experts).float()
    if attention_mask is not None:
        weights = attention_mask.reshape(-1).float().repeat(num_layers)[:, None]
    else:
        weights = torch.ones_like(probs[:, :1])
    total = weights.sum().clamp(min=1.0)
    tokens_per_expert = (assignment * weights).sum(0) / total
    prob_per_expert = (probs * weights).sum(0) / total
    return num_experts * torch.sum(tokens_per_expert * prob_per_expert)
