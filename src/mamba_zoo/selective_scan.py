"""Selective scan (the S6 recurrence of Mamba) with one API and three backends.

The recurrence, per (batch b, channel d) lane, with an N-dimensional state h::

    delta_t = softplus(delta_t + delta_bias)          (softplus only if delta_softplus)
    h_t     = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t     = <C_t, h_t> + D * u_t
    out_t   = y_t * silu(z_t)                          (gate only if z is given)

Backends (same function, same shapes as mamba-ssm's ``selective_scan_fn``):

- ``"cuda"``: mamba-ssm's fused CUDA kernels; only for CUDA tensors, when ``mamba_ssm`` imports.
- ``"cpu"``: our fused numba kernel (``cpu_scan_kernels.py``): one pass over time per lane, the
  state in registers, states checkpointed every K steps and recomputed in the backward pass.
- ``"reference"``: plain PyTorch, a loop over time written for clarity; the test oracle.

``"auto"`` resolves to cuda if possible, else cpu, else reference (see :func:`resolve_backend`).
All backends accumulate in float32 and are differentiable w.r.t. every tensor argument.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

try:
    from transformers.utils import logging as _hf_logging

    logger = _hf_logging.get_logger(__name__)
except ImportError:  # pragma: no cover - transformers is a hard dependency, but stay importable
    import logging

    logger = logging.getLogger(__name__)


BACKENDS = ("cuda", "cpu", "reference")

__all__ = [
    "BACKENDS",
    "available_backends",
    "resolve_backend",
    "selective_scan_fn",
    "selective_scan_reference",
    "selective_state_update",
    "selective_state_update_reference",
]


# ----------------------------------------------------------------------------------------------
# Backend discovery (lazy, cached)
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _cuda_kernels():
    """Return ``(selective_scan_fn, selective_state_update)`` from mamba-ssm, or ``None``."""
    if not torch.cuda.is_available():
        return None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as scan_fn
    except Exception:  # ImportError, or the CUDA extension failing to load
        return None
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update as update_fn
    except Exception:
        update_fn = None
    return scan_fn, update_fn


@functools.lru_cache(maxsize=None)
def _cpu_kernels():
    """Return the fused CPU kernels (``selective_scan_cpu``, ``selective_state_update_cpu``) if numba is installed,
    else ``None``. The import is written ``from .cpu_scan_kernels import ...`` on purpose: transformers' remote-code
    loader only copies sibling modules imported that way, so a Hub checkpoint keeps its fused CPU path."""
    try:
        from .cpu_scan_kernels import (
            causal_conv1d_inference_time_major,
            inference_kernels_enabled,
            is_available,
            selective_scan_cpu,
            selective_scan_inference_time_major,
            selective_state_update_cpu,
        )
    except ImportError:
        return None
    if not is_available():
        return None
    return SimpleNamespace(
        selective_scan_cpu=selective_scan_cpu,
        selective_state_update_cpu=selective_state_update_cpu,
        selective_scan_inference_time_major=selective_scan_inference_time_major,
        causal_conv1d_inference_time_major=causal_conv1d_inference_time_major,
        inference_kernels_enabled=inference_kernels_enabled,
    )


def available_backends(device: Union[str, torch.device, None] = None) -> Tuple[str, ...]:
    """The backends usable on this machine (for tensors on ``device``, if given).

    ``"reference"`` is always available. ``"cuda"`` needs a CUDA device and an importable
    mamba-ssm; ``"cpu"`` needs numba and CPU tensors.
    """
    device = torch.device(device) if device is not None else None
    names = []
    if _cuda_kernels() is not None and (device is None or device.type == "cuda"):
        names.append("cuda")
    if _cpu_kernels() is not None and (device is None or device.type == "cpu"):
        names.append("cpu")
    names.append("reference")
    return tuple(names)


_fallback_logged = set()


def _log_fallback_once(key: str, message: str) -> None:
    if key not in _fallback_logged:
        _fallback_logged.add(key)
        logger.warning(message)


def resolve_backend(*tensors: Optional[torch.Tensor], backend: str = "auto") -> str:
    """Which backend ``backend`` means for these tensors: ``"cuda"``, ``"cpu"`` or ``"reference"``.

    Layers call this to pick a fused path once. ``"auto"`` = cuda if the tensors are on CUDA and
    mamba-ssm imports, else cpu if they are on CPU and numba imports, else reference (logged once).
    An explicit backend that cannot run raises ``RuntimeError`` saying how to get it.
    """
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}.")
    devices = {t.device.type for t in tensors if t is not None}
    on_cuda = "cuda" in devices
    on_cpu = devices <= {"cpu"}

    if backend == "cuda":
        if not on_cuda:
            raise RuntimeError(
                "backend='cuda' needs CUDA tensors; these are on "
                f"{sorted(devices) or ['cpu']}. Move them with .cuda(), or use backend='auto'."
            )
        if _cuda_kernels() is None:
            raise RuntimeError(
                "backend='cuda' needs mamba-ssm's CUDA kernels, which did not import. "
                "Install them on a CUDA machine with `pip install mamba-zoo[cuda]`."
            )
        return "cuda"
    if backend == "cpu":
        if not on_cpu:
            raise RuntimeError(
                "backend='cpu' runs on CPU tensors only; these are on "
                f"{sorted(devices)}. Use backend='auto' (or 'reference') for other devices."
            )
        if _cpu_kernels() is None:
            raise RuntimeError("backend='cpu' needs numba: `pip install numba`.")
        return "cpu"
    if backend == "reference":
        return "reference"

    # auto
    if on_cuda:
        if _cuda_kernels() is not None:
            return "cuda"
        _log_fallback_once(
            "cuda",
            "mamba-ssm's CUDA kernels are not available; the selective scan falls back to the "
            "slow PyTorch reference on GPU. Install them with `pip install mamba-zoo[cuda]`.",
        )
        return "reference"
    if on_cpu and _cpu_kernels() is not None:
        return "cpu"
    _log_fallback_once(
        "cpu",
        "The fused CPU scan (numba) is not available; the selective scan falls back to the slow PyTorch reference. "
        "Install it with `pip install numba`.",
    )
    return "reference"


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _check_float(name: str, t: Optional[torch.Tensor]) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
    if t.is_complex():
        raise ValueError(f"{name} must be real; complex {name} is not supported (got {t.dtype}).")
    if not t.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor (float32/float16/bfloat16/float64), got "
            f"{t.dtype}. Convert it with {name}.float()."
        )


def _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raise ValueError naming the first argument whose shape or dtype is wrong."""
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        _check_float(name, t)
    if u.dim() != 3:
        raise ValueError(f"u must have shape (batch, dim, L), got {_shape(u)}.")
    batch, dim, length = u.shape
    if length == 0:
        raise ValueError("u must have at least one time step (L >= 1), got shape "
                         f"{_shape(u)}; skip the scan for empty sequences.")
    if delta.shape != u.shape:
        raise ValueError(
            f"delta must have the shape of u, (batch, dim, L) = {_shape(u)}, got {_shape(delta)}."
        )
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(
            f"A must have shape (dim, N) with dim = {dim}, got {_shape(A)}. "
            "Pass A = -torch.exp(A_log) for a (dim, d_state) A_log."
        )
    n_state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            if tuple(t.shape) != (batch, n_state, length):
                raise ValueError(
                    f"{name} must have shape (batch, N, L) = ({batch}, {n_state}, {length}) or "
                    f"grouped (batch, G, N, L), got {_shape(t)}. Transpose a (batch, L, N) "
                    f"projection with {name}.transpose(1, 2)."
                )
        elif t.dim() == 4:
            groups = t.shape[1]
            if tuple(t.shape) != (batch, groups, n_state, length) or groups < 1 or dim % groups:
                raise ValueError(
                    f"grouped {name} must have shape (batch, G, N, L) = ({batch}, G, {n_state}, "
                    f"{length}) with dim = {dim} divisible by G, got {_shape(t)}."
                )
        else:
            raise ValueError(
                f"{name} must have shape (batch, N, L) or (batch, G, N, L), got {_shape(t)}."
            )
    if D is not None and tuple(D.shape) != (dim,):
        raise ValueError(f"D must have shape (dim,) = ({dim},), got {_shape(D)}.")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have the shape of u, {_shape(u)}, got {_shape(z)}.")
    if delta_bias is not None and tuple(delta_bias.shape) != (dim,):
        raise ValueError(f"delta_bias must have shape (dim,) = ({dim},), got {_shape(delta_bias)}.")


def _compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precision is always upcast)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def _expand_step_groups(M: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, N) or (batch, G, N) -> (batch, heads, N); head h reads group h // (heads // G)."""
    if M.dim() == 2:
        return M.unsqueeze(1).expand(-1, heads, -1)
    return M.repeat_interleave(heads // M.shape[1], dim=1)


# ----------------------------------------------------------------------------------------------
# Reference backend
# ----------------------------------------------------------------------------------------------


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """The selective scan in plain PyTorch: a loop over time, state ``(batch, dim, N)`` in float32.

    Shapes as :func:`selective_scan_fn`. Memory is O(batch * dim * N) per step (autograd keeps one
    state per step for the backward pass). Slow, obviously correct, works on any device.
    Float64 inputs are computed (and the last state returned) in float64, for gradcheck.
    """
    dtype_in = u.dtype
    batch, dim, length = u.shape
    compute = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    u = u.to(compute)
    delta = delta.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.to(compute)
    # Split along time once with unbind (its backward stacks all steps' gradients in one go;
    # indexing x[..., t] per step would allocate a full-size gradient per step: O(L^2)).
    u_steps, delta_steps = u.unbind(-1), delta.unbind(-1)  # L x (batch, dim)
    B_steps, C_steps = B.to(compute).unbind(-1), C.to(compute).unbind(-1)  # L x (batch, [G,] N)

    state = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        delta_t = delta_steps[t][:, :, None]  # (batch, dim, 1)
        decay = torch.exp(delta_t * A)  # (batch, dim, N)
        B_t = _expand_step_groups(B_steps[t], dim)  # (batch, dim, N)
        C_t = _expand_step_groups(C_steps[t], dim)
        state = decay * state + delta_t * B_t * u_steps[t][:, :, None]
        ys.append((state * C_t).sum(-1))  # (batch, dim)
    y = torch.stack(ys, dim=-1)  # (batch, dim, L)
    if D is not None:
        y = y + D.to(compute)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(dtype_in)
    return (out, state) if return_last_state else out


# ----------------------------------------------------------------------------------------------
# Public scan
# ----------------------------------------------------------------------------------------------


def selective_scan_fn(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str = "auto",
):
    """Selective scan with mamba-ssm's signature.

    Args:
        u: input ``(batch, dim, L)``.
        delta: time steps ``(batch, dim, L)`` (before ``delta_bias`` / softplus).
        A: state matrix ``(dim, N)``, real (typically ``-exp(A_log)``).
        B: input projection ``(batch, N, L)``, or grouped ``(batch, G, N, L)`` with channel ``d``
            reading group ``d // (dim // G)``.
        C: output projection, same layout as ``B``.
        D: skip connection ``(dim,)``.
        z: gate ``(batch, dim, L)``: ``out = y * silu(z)``.
        delta_bias: ``(dim,)``, added to ``delta`` (before softplus).
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state.
        backend: ``"auto"``, ``"cuda"``, ``"cpu"`` or ``"reference"``.

    Returns:
        ``out`` ``(batch, dim, L)`` in ``u``'s dtype, or ``(out, last_state)`` with ``last_state``
        ``(batch, dim, N)`` float32.

    Arithmetic is float32 (half-precision inputs are upcast); only the reference backend keeps
    float64 inputs in float64. Gradients flow to every tensor argument on every backend.
    """
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    resolved = resolve_backend(u, delta, A, B, C, D, z, delta_bias, backend=backend)
    if resolved == "cuda":
        scan_fn = _cuda_kernels()[0]
        return scan_fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                       delta_softplus=delta_softplus, return_last_state=return_last_state)
    if resolved == "cpu":
        return _cpu_kernels().selective_scan_cpu(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
            delta_softplus=delta_softplus, return_last_state=return_last_state,
        )
    return selective_scan_reference(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                    delta_softplus=delta_softplus,
                                    return_last_state=return_last_state)


# ----------------------------------------------------------------------------------------------
# Single-step state update (decoding)
# ----------------------------------------------------------------------------------------------


def _check_update_inputs(state, x, dt, A, B, C, D, z, dt_bias) -> None:
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C),
                    ("D", D), ("z", z), ("dt_bias", dt_bias)):
        _check_float(name, t)
    if state.dim() == 3:
        batch, dim, n_state = state.shape
        lane = (batch, dim)
        lane_txt = "(batch, dim)"
        param = (dim,)
        param_txt = "(dim,)"
        a_shape = (dim, n_state)
        a_txt = "(dim, N)"
        heads = dim
    elif state.dim() == 4:
        batch, heads, head_dim, n_state = state.shape
        lane = (batch, heads, head_dim)
        lane_txt = "(batch, nheads, headdim)"
        param = (heads, head_dim)
        param_txt = "(nheads, headdim)"
        a_shape = (heads, head_dim, n_state)
        a_txt = "(nheads, headdim, N)"
    else:
        raise ValueError(
            f"state must have shape (batch, dim, N) or (batch, nheads, headdim, N), got "
            f"{_shape(state)}."
        )
    for name, t in (("x", x), ("dt", dt), ("z", z)):
        if t is not None and tuple(t.shape) != lane:
            raise ValueError(f"{name} must have shape {lane_txt} = {lane}, got {_shape(t)}.")
    if tuple(A.shape) != a_shape:
        raise ValueError(f"A must have shape {a_txt} = {a_shape}, got {_shape(A)}.")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None and tuple(t.shape) != param:
            raise ValueError(f"{name} must have shape {param_txt} = {param}, got {_shape(t)}.")
    for name, t in (("B", B), ("C", C)):
        ok = (t.dim() == 2 and tuple(t.shape) == (batch, n_state)) or (
            t.dim() == 3 and t.shape[0] == batch and t.shape[2] == n_state
            and t.shape[1] >= 1 and heads % t.shape[1] == 0
        )
        if not ok:
            raise ValueError(
                f"{name} must have shape (batch, N) = ({batch}, {n_state}) or grouped "
                f"(batch, G, N) with G dividing {heads}, got {_shape(t)}."
            )


def selective_state_update_reference(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                                     dt_softplus=False):
    """One recurrence step in PyTorch; see :func:`selective_state_update` (state updated in place)."""
    squeeze = state.dim() == 3
    if squeeze:  # view the (batch, dim, N) layout as one "head" per channel with headdim 1
        state_4d = state.unsqueeze(2)
        x, dt, A = x.unsqueeze(-1), dt.unsqueeze(-1), A.unsqueeze(1)
        z = z.unsqueeze(-1) if z is not None else None
        D = D.unsqueeze(-1) if D is not None else None
        dt_bias = dt_bias.unsqueeze(-1) if dt_bias is not None else None
    else:
        state_4d = state
    heads = state_4d.shape[1]
    compute = _compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    B = _expand_step_groups(B, heads).to(compute)  # (batch, nheads, N)
    C = _expand_step_groups(C, heads).to(compute)

    dt = dt.to(compute)
    if dt_bias is not None:
        dt = dt + dt_bias.to(compute)
    if dt_softplus:
        dt = F.softplus(dt)
    decay = torch.exp(dt.unsqueeze(-1) * A.to(compute))  # (batch, nheads, headdim, N)
    x_f = x.to(compute)
    new_state = decay * state_4d.to(compute) + (dt * x_f).unsqueeze(-1) * B.unsqueeze(2)
    state_4d.copy_(new_state)
    out = (new_state * C.unsqueeze(2)).sum(-1)  # (batch, nheads, headdim)
    if D is not None:
        out = out + D.to(compute) * x_f
    if z is not None:
        out = out * F.silu(z.to(compute))
    out = out.to(x.dtype)
    return out.squeeze(-1) if squeeze else out


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """One decoding step of the selective scan; ``state`` is UPDATED IN PLACE (mamba-ssm semantics).

    Two layouts:

    - Mamba: state ``(batch, dim, N)``; x, dt, z ``(batch, dim)``; A ``(dim, N)``;
      D, dt_bias ``(dim,)``; B, C ``(batch, N)`` or grouped ``(batch, G, N)``.
    - Mamba-2 (multi-head): state ``(batch, nheads, headdim, N)``; x, dt, z
      ``(batch, nheads, headdim)``; A ``(nheads, headdim, N)``; D, dt_bias ``(nheads, headdim)``;
      B, C ``(batch, ngroups, N)``.

    Returns ``out`` with the shape and dtype of ``x``. Arithmetic is float32; the new state is
    written back in ``state``'s dtype.
    """
    _check_update_inputs(state, x, dt, A, B, C, D, z, dt_bias)
    resolved = resolve_backend(state, x, dt, A, B, C, D, z, dt_bias, backend=backend)
    if resolved == "cuda" and _cuda_kernels()[1] is not None:
        return _cuda_kernels()[1](state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                                  dt_softplus=dt_softplus)
    if resolved == "cpu":
        return _cpu_kernels().selective_state_update_cpu(
            state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus
        )
    return selective_state_update_reference(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                                            dt_softplus=dt_softplus)
