# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""The Mamba layers every model in mamba-zoo composes: the maths only.

- `MambaMixer`: the Mamba-1 selective SSM mixer (mamba-ssm / transformers parameter names), optionally bidirectional
  (Vim "v2": a second conv/SSM branch over the time-reversed sequence, shared in/out projections).
- `Mamba2Mixer`: the Mamba-2 (SSD) mixer, optionally bidirectional the same way.
- `build_mixer(config, layer_idx, bidirectional)`: the one config-to-mixer mapping (`config.mixer_kwargs`).
- `RMSNorm`, `RMSNormGated`, `DropPath`, `MambaBlock` (mamba-ssm's Add -> Norm -> Mixer residual block).

Elsewhere: kernels and their backends (`selective_scan.py`, `causal_conv1d.py`, `ssd.py`, `kernel_backends.py`), the
fused no-grad CPU path of `MambaMixer` (`cpu_inference.py`), the cache (`mamba_cache.py`), mixture-of-experts MLPs
(`moe_layers.py`), padding and reversal (`sequence_utils.py`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from .causal_conv1d import causal_conv1d_fn, causal_conv1d_update
from .cpu_decode import add_rms_norm_decode, mamba2_mixer_decode_step, mamba_mixer_decode_step
from .cpu_inference import (
    cpu_inference_applies,
    has_hooks,
    mamba_mixer_cpu_forward,
    needs_gradients,
    time_chunking,
)
from .mamba_cache import MambaZooCache, resolve_cache_kwarg
from .selective_scan import selective_scan_fn, selective_state_update
from .sequence_utils import is_unpadded, mask_padding, reverse_within_lengths, sequence_reversal_index
from .ssd import mamba2_state_update, mamba_chunk_scan_combined


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
# What both mixers share: the forward contract, reversal, and the bidirectional combination
# ----------------------------------------------------------------------------------------------------------------------


def _inverse_softplus_dt(size: int, dt_min: float, dt_max: float, dt_init_floor: float, device=None) -> torch.Tensor:
    """Time steps sampled log-uniformly in [dt_min, dt_max], mapped through softplus^-1 (mamba-ssm's dt bias init)."""
    dt = torch.exp(
        torch.rand(size, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    ).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


class _SelectiveMixerBase(nn.Module):
    """The forward contract of `MambaMixer` and `Mamba2Mixer`: `(batch, L, d_model)` -> `(batch, L, d_model)`, with
    padding, an optional cache, the layer-level `reverse` and (bidirectional) the sum of a forward branch and a branch
    over the sequence reversed within each sequence's length. Subclasses define `_mix` and `_branch_forward`; a
    subclass with a faster path for some inputs overrides `_fast_forward`."""

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
                bidirectional and reversed mixers need right padding.
            cache: a `MambaZooCache`; with states present the tokens are stepped one at a time from them, otherwise
                the full sequence is scanned and the final states are stored (prefill).
            reverse_lengths: `(batch,)`: what "reversed" means for this call: positions `[0, reverse_lengths[b])` are
                reversed and later positions keep their order (MADEON's speech prefix). Defaults to the valid lengths
                from `attention_mask`, or the whole sequence.
            reverse: compute `reverse(mixer(reverse(hidden_states)))` (Vim's layer pairing and MADEON's serial speech
                prefixing: a layer that reads the sequence backwards).

        Returns:
            `(batch, L, d_model)`.
        """
        cache = resolve_cache_kwarg(cache, kwargs)
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(
                f"hidden_states must be (batch, L, d_model={self.d_model}), got shape {tuple(hidden_states.shape)}."
            )
        if cache is not None and self.layer_idx is None:
            raise ValueError("A mixer used with a cache needs its layer_idx; pass layer_idx= when building it.")
        output = self._fast_forward(hidden_states, attention_mask, cache, reverse_lengths, reverse)
        if output is not None:
            return output
        index = sequence_reversal_index(attention_mask, reverse_lengths, hidden_states.shape[1]) if reverse else None
        if reverse:
            hidden_states = reverse_within_lengths(hidden_states, index, 1)
        output = self._mix(mask_padding(hidden_states, attention_mask), attention_mask, cache, reverse_lengths)
        if cache is not None and self.layer_idx == 0:
            cache.advance(hidden_states.shape[1])
        return reverse_within_lengths(output, index, 1) if reverse else output

    def _fast_forward(self, hidden_states, attention_mask, cache, reverse_lengths, reverse) -> Optional[torch.Tensor]:
        """The output from a faster path that computes the same function, or `None` to take the general path."""
        return None

    def _both_branches(self, inputs: tuple, time_dim: int, attention_mask, cache, reverse_lengths) -> torch.Tensor:
        """`_branch_forward` over `inputs` (tensors with time on `time_dim`) and, when bidirectional, over the same
        inputs reversed within each sequence's length; the backward output is reversed back, added and (with
        `divide_out`) halved. Cache state 0 is the forward branch's, state 1 the backward branch's."""
        y = self._branch_forward(*inputs, attention_mask, cache, 0, "")
        if not self.bidirectional:
            return y
        index = sequence_reversal_index(attention_mask, reverse_lengths, inputs[0].shape[time_dim])
        mask_b = None if attention_mask is None else reverse_within_lengths(attention_mask[:, :, None], index, 1)[..., 0]
        y_b = self._branch_forward(*(reverse_within_lengths(t, index, time_dim) for t in inputs), mask_b, cache, 1, "_b")
        y = y + reverse_within_lengths(y_b, index, time_dim)
        return y / 2 if self.divide_out else y

    @staticmethod
    def _a_log_name(suffix: str) -> str:
        return "A_log" if suffix == "" else "A_b_log"

    def _store_conv_state(self, x: torch.Tensor, cache: MambaZooCache, state_idx: int) -> None:
        """Keep the last `d_conv` inputs `(batch, channels, d_conv)` of a prefill (left zero-padded when shorter)."""
        last = x[..., -self.d_conv:]
        cache.update_conv_state(F.pad(last, (self.d_conv - last.shape[-1], 0)).detach().clone(), self.layer_idx,
                                state_idx=state_idx)


# ----------------------------------------------------------------------------------------------------------------------
# Mamba-1 mixer (unidirectional or bidirectional "v2")
# ----------------------------------------------------------------------------------------------------------------------


class MambaMixer(_SelectiveMixerBase):
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
        a_name = self._a_log_name(suffix)
        setattr(self, a_name, nn.Parameter(torch.empty(self.d_inner, self.d_state)))
        setattr(self, f"D{suffix}", nn.Parameter(torch.empty(self.d_inner)))
        getattr(self, a_name)._no_weight_decay = True
        getattr(self, f"D{suffix}")._no_weight_decay = True

    def _branch(self, suffix: str):
        return (getattr(self, f"conv1d{suffix}"), getattr(self, f"x_proj{suffix}"), getattr(self, f"dt_proj{suffix}"),
                getattr(self, self._a_log_name(suffix)), getattr(self, f"D{suffix}"))

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

    def _fast_forward(self, hidden_states, attention_mask, cache, reverse_lengths, reverse):
        # no gradients on CPU: the fused inference kernels (`cpu_inference.py`), or for a cached one-token step the
        # fused decoding step (`cpu_decode.py`); same function
        if cache is None and cpu_inference_applies(self, hidden_states):
            return mamba_mixer_cpu_forward(self, hidden_states, attention_mask, reverse_lengths, reverse)
        if cache is not None and hidden_states.shape[1] == 1:
            # one step: reversing a length-1 sequence changes nothing, so `reverse` needs no handling
            return mamba_mixer_decode_step(self, hidden_states, attention_mask, reverse_lengths, cache)
        return None

    def _mix(self, hidden_states, attention_mask, cache, reverse_lengths):
        # 1. input projection to the SSM input x and the gate z, channels first: (batch, 2 * d_inner, L)
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)
        # 2. conv + selective scan + gate per branch, combined over both directions
        y = self._both_branches((x, z), 2, attention_mask, cache, reverse_lengths)
        # 3. output projection
        return self.out_proj(y.transpose(1, 2).to(hidden_states.dtype))

    def _branch_forward(self, x, z, attention_mask, cache, state_idx, suffix):
        """One conv + selective-scan branch. x, z: `(batch, d_inner, L)` -> y `(batch, d_inner, L)` (gated, float32)."""
        conv1d, x_proj, dt_proj, A_log, D = self._branch(suffix)
        A = -torch.exp(A_log.float())
        conv_weight = conv1d.weight.squeeze(1)  # (d_inner, d_conv)
        if cache is not None and cache.has_state(self.layer_idx, state_idx):
            conv_state = cache.get_conv_state(self.layer_idx, state_idx)
            ssm_state = cache.get_recurrent_state(self.layer_idx, state_idx)
            outputs = []
            for t in range(x.shape[-1]):
                x_t = causal_conv1d_update(x[:, :, t], conv_state, conv_weight, conv1d.bias, activation="silu",
                                           backend=self.backend)
                dt_t, B_t, C_t = torch.split(x_proj(x_t), [self.dt_rank, self.d_state, self.d_state], dim=-1)
                outputs.append(selective_state_update(
                    ssm_state, x_t, dt_proj(dt_t), A, B_t, C_t, D=D.float(), z=z[:, :, t], dt_softplus=True,
                    backend=self.backend,
                ))
            return torch.stack(outputs, dim=-1)

        if cache is not None:
            self._store_conv_state(x, cache, state_idx)
        x = causal_conv1d_fn(x, conv_weight, conv1d.bias, activation="silu", backend=self.backend)
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


class Mamba2Mixer(_SelectiveMixerBase):
    """The Mamba-2 mixer (Dao & Gu 2024, structured state-space duality).

    A is a scalar per head (times identity), so the scan is computed chunk-wise with matrix products (`ssd.py`); x, B, C
    come from one causal conv over `[x | B | C]`, the gate z enters through a gated RMS norm before `out_proj`.
    Parameter names follow mamba-ssm's `Mamba2`: `in_proj, conv1d, dt_bias, A_log, D, norm, out_proj`.
    `in_proj` produces `[z (d_inner) | x (d_inner) | B (ngroups*d_state) | C (ngroups*d_state) | dt (nheads)]`.

    With `bidirectional=True` a second branch (`conv1d_b, dt_bias_b, A_b_log, D_b`) scans the per-sequence reversed
    `[x | B | C]` with the same `dt` projection; the two branch outputs are summed (halved with `divide_out`) before the
    shared gated norm and `out_proj`.
    """

    # plain keyword sizes as mamba-ssm's Mamba2; they overlap MambaMixer's on purpose (each mixer is usable alone)
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
        a_name = self._a_log_name(suffix)
        setattr(self, f"dt_bias{suffix}", nn.Parameter(torch.empty(self.nheads)))
        setattr(self, a_name, nn.Parameter(torch.empty(self.nheads)))
        setattr(self, f"D{suffix}", nn.Parameter(torch.empty(self.nheads)))
        for name in (f"dt_bias{suffix}", a_name, f"D{suffix}"):
            getattr(self, name)._no_weight_decay = True

    def _branch(self, suffix: str):
        return (getattr(self, f"conv1d{suffix}"), getattr(self, f"dt_bias{suffix}"),
                getattr(self, self._a_log_name(suffix)), getattr(self, f"D{suffix}"))

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

    def _fast_forward(self, hidden_states, attention_mask, cache, reverse_lengths, reverse):
        # a cached one-token step without gradients on CPU: the fused decoding step (`cpu_decode.py`), same function
        if cache is not None and hidden_states.shape[1] == 1:
            return mamba2_mixer_decode_step(self, hidden_states, attention_mask, reverse_lengths, cache)
        # a long unpadded sequence without gradients: chunk by chunk along time, on any backend
        if cache is None and self._time_chunking_applies(hidden_states, attention_mask, reverse_lengths):
            chunk = max(time_chunking()[1] // hidden_states.shape[0], 1)
            return self._forward_time_chunks(hidden_states, chunk, reverse)
        return None

    def _time_chunking_applies(self, hidden_states, attention_mask, reverse_lengths) -> bool:
        """Longer than `cpu_inference.INFERENCE_TIME_CHUNK` steps, unpadded (whole-sequence reversal), nothing needing
        gradients, no hooks on the projections or the norm (they would see one call per chunk). Every module is
        still called as itself (per token, so LoRA-wrapped projections give the same rows)."""
        return (
            hidden_states.shape[1] > time_chunking()[0]
            and reverse_lengths is None
            and not any(has_hooks(module) for module in (self.in_proj, self.out_proj, self.norm))
            and is_unpadded(attention_mask)
            and not needs_gradients(self, hidden_states)
        )

    def _forward_time_chunks(self, hidden_states: torch.Tensor, chunk: int, reverse: bool = False) -> torch.Tensor:
        """The mixer over an unpadded `(batch, L, d_model)` in time chunks of `chunk` steps, each branch carrying its
        SSD state and conv window across chunk boundaries in its own walking direction (with `reverse` the
        directions swap). The gated norm reads the sum of both branches, so the branch walking backward runs first
        and keeps its output `(batch, L, d_inner)`; the forward walk then adds it per chunk and applies the norm and
        `out_proj`. Each chunk recomputes `in_proj` over its steps and the `d_conv - 1` neighbours its conv reads.
        Memory: that one branch output besides the input and output, instead of every intermediate at full length."""
        batch, seq_len, _ = hidden_states.shape
        branches = [("", reverse)] + ([("_b", not reverse)] if self.bidirectional else [])
        branches.sort(key=lambda branch: not branch[1])  # the backward walker first, its output kept
        starts = list(range(0, seq_len, chunk))
        output = hidden_states.new_empty(batch, seq_len, self.d_model)
        kept = None
        for i, (suffix, backward) in enumerate(branches):
            last = i == len(branches) - 1
            state = None
            for start in (reversed(starts) if backward else starts):
                end = min(start + chunk, seq_len)
                y, z, state = self._branch_chunk(hidden_states, start, end, suffix, backward, state, need_z=last)
                if not last:
                    if kept is None:
                        kept = y.new_empty(batch, seq_len, self.d_inner)
                    kept[:, start:end] = y
                    continue
                if kept is not None:
                    y = y + kept[:, start:end]
                    if self.divide_out:
                        y = y / 2
                output[:, start:end] = self.out_proj(self.norm(y, z).to(hidden_states.dtype))
        return output

    def _branch_chunk(self, hidden_states, start, end, suffix, backward, state, need_z):
        """Branch `suffix` over the steps `[start, end)` from `state` `(batch, nheads, headdim, d_state)` (None:
        zeros): `(y (batch, end - start, d_inner) in time order, z of those steps or None, the state after them)`."""
        seq_len, reach = hidden_states.shape[1], self.d_conv - 1
        low, high = (start, min(end + reach, seq_len)) if backward else (max(start - reach, 0), end)
        z, xBC, dt = torch.split(self.in_proj(hidden_states[:, low:high]),
                                 [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if backward:  # walk the window from its end: the conv reads the steps after each one
            xBC, dt = xBC.flip(1), dt.flip(1)
        conv1d, dt_bias, A_log, D = self._branch(suffix)
        own = end - start  # the window's last `own` (walked) steps are the chunk's
        xBC = causal_conv1d_fn(xBC.transpose(1, 2), conv1d.weight.squeeze(1), conv1d.bias, activation="silu",
                               backend=self.backend).transpose(1, 2)[:, -own:]
        batch = xBC.shape[0]
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        y, state = mamba_chunk_scan_combined(
            x.reshape(batch, own, self.nheads, self.headdim), dt[:, -own:], -torch.exp(A_log.float()),
            B.reshape(batch, own, self.ngroups, self.d_state), C.reshape(batch, own, self.ngroups, self.d_state),
            chunk_size=self.chunk_size, D=D.float(), dt_bias=dt_bias.float(), dt_softplus=True,
            initial_states=state, return_final_states=True, backend=self.backend,
        )
        y = y.reshape(batch, own, self.d_inner)
        if backward:
            y = y.flip(1)
        return y, (z[:, start - low:end - low] if need_z else None), state

    def _mix(self, hidden_states, attention_mask, cache, reverse_lengths):
        # 1. one projection: gate z, conv input [x | B | C], per-head time step dt
        z, xBC, dt = torch.split(self.in_proj(hidden_states), [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        # 2. conv + SSD scan per branch, combined over both directions
        y = self._both_branches((xBC, dt), 1, attention_mask, cache, reverse_lengths)
        # 3. gated RMS norm and output projection
        return self.out_proj(self.norm(y, z).to(hidden_states.dtype))

    def _branch_forward(self, xBC, dt, attention_mask, cache, state_idx, suffix):
        """xBC `(batch, L, conv_dim)`, dt `(batch, L, nheads)` -> y `(batch, L, d_inner)` (ungated)."""
        conv1d, dt_bias, A_log, D = self._branch(suffix)
        A = -torch.exp(A_log.float())
        conv_weight = conv1d.weight.squeeze(1)
        batch, seq_len, _ = xBC.shape

        if cache is not None and cache.has_state(self.layer_idx, state_idx):
            conv_state = cache.get_conv_state(self.layer_idx, state_idx)
            ssm_state = cache.get_recurrent_state(self.layer_idx, state_idx)
            outputs = []
            for t in range(seq_len):
                xBC_t = causal_conv1d_update(xBC[:, t], conv_state, conv_weight, conv1d.bias, activation="silu",
                                             backend=self.backend)
                x_t, B_t, C_t = torch.split(xBC_t, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], -1)
                y_t = mamba2_state_update(
                    ssm_state, x_t.view(batch, self.nheads, self.headdim), dt[:, t], A,
                    B_t.view(batch, self.ngroups, self.d_state), C_t.view(batch, self.ngroups, self.d_state),
                    D=D.float(), dt_bias=dt_bias.float(), dt_softplus=True, backend=self.backend,
                )
                outputs.append(y_t.reshape(batch, self.d_inner))
            return torch.stack(outputs, dim=1)

        xBC = xBC.transpose(1, 2)
        if cache is not None:
            self._store_conv_state(xBC, cache, state_idx)
        xBC = causal_conv1d_fn(xBC, conv_weight, conv1d.bias, activation="silu", backend=self.backend).transpose(1, 2)
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


def build_mixer(config, layer_idx: int, bidirectional: bool = False) -> nn.Module:
    """The one config-to-mixer mapping: `Mamba2Mixer` when `config.mixer_type == "mamba2"`, else `MambaMixer`, sized by
    `config.mixer_kwargs(layer_idx, bidirectional)` (`configuration_mamba_common.MambaMixerConfigMixin`)."""
    mixer_class = Mamba2Mixer if getattr(config, "mixer_type", "mamba") == "mamba2" else MambaMixer
    return mixer_class(**config.mixer_kwargs(layer_idx, bidirectional))


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
        fused = None
        if not (self.training and self.drop_path.drop_prob > 0):  # decoding-sized no-grad steps: one fused kernel
            fused = add_rms_norm_decode(self.norm, hidden_states, residual)
        if fused is not None:
            hidden_states, residual = fused
        else:
            residual = hidden_states if residual is None else residual + self.drop_path(hidden_states)
            hidden_states = self.norm(residual.to(dtype=self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.to(torch.float32)
        mixer_output = self.mixer(hidden_states, **mixer_kwargs)
        if isinstance(mixer_output, tuple):
            return (mixer_output[0], residual, *mixer_output[1:])
        return mixer_output, residual
