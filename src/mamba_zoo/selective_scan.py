"""Selective scan (the S6 recurrence of Mamba) with one API and three backends.

The recurrence, per (batch b, channel d) lane, with an N-dimensional state h::

    delta_t = softplus(delta_t + delta_bias)          (softplus only if delta_softplus)
    h_t     = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t     = <C_t, h_t> + D * u_t
    out_t   = y_t * silu(z_t)                          (gate only if z is given)

Backends (same function, same shapes as mamba-ssm's ``selective_scan_fn``), chosen by
:func:`kernel_backends.resolve_backend` (its module docstring has the table):

- ``"cuda"``: mamba-ssm's fused CUDA kernels; only for CUDA tensors, when ``mamba_ssm`` imports.
- ``"cpu"``: our fused numba kernel (``cpu_scan_kernels.py``): one pass over time per lane, the
  state in registers, states checkpointed every K steps and recomputed in the backward pass.
- ``"reference"``: plain PyTorch, a loop over time written for clarity; the test oracle.

All backends accumulate in float32 and are differentiable w.r.t. every tensor argument.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .kernel_backends import cpu_kernels, cuda_kernels, resolve_backend


__all__ = [
    "selective_scan_fn",
    "selective_scan_reference",
    "selective_state_update",
    "selective_state_update_reference",
]


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


# mamba-ssm's signature, repeated on purpose by the reference and by the dispatching entry point below
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


def _last_state_with_grad(u, delta, A, B, delta_bias, delta_softplus):
    """The scan's final state ``(batch, dim, N)``, float32, differentiable, in closed form:
    ``h_L = sum_t exp(A * sum_{s>t} dt_s) * dt_t * u_t * B_t``. Used on CUDA where mamba-ssm's backward ignores
    the last state's gradient; it holds a ``(batch, dim, N, L)`` tensor, so only when that gradient is needed."""
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    after = dt.flip(-1).cumsum(-1).flip(-1) - dt  # sum of dt over the steps after t
    B = B.float()
    B = B.unsqueeze(1) if B.dim() == 3 else B.repeat_interleave(u.shape[1] // B.shape[1], dim=1)  # (b, d|1, N, L)
    decay = torch.exp(A.float()[None, :, :, None] * after[:, :, None, :])  # (b, d, N, L)
    return (decay * (dt * u.float())[:, :, None, :] * B).sum(-1)


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
    resolved = resolve_backend("selective_scan", u, delta, A, B, C, D, z, delta_bias, backend=backend)
    if resolved == "cuda":
        scan_fn, _ = cuda_kernels("selective_scan")
        needs_state_grad = return_last_state and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (u, delta, A, B, delta_bias))
        if needs_state_grad:  # mamba-ssm's backward drops the last state's gradient: compute that state here
            out = scan_fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
            return out, _last_state_with_grad(u, delta, A, B, delta_bias, delta_softplus)
        return scan_fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                       delta_softplus=delta_softplus, return_last_state=return_last_state)
    if resolved == "cpu":
        return cpu_kernels().selective_scan_cpu(
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


def as_head_layout(state, x, dt, A, D=None, z=None, dt_bias=None):
    """View the Mamba-1 step layout (`state` `(batch, dim, N)`) as heads of `headdim` 1, the Mamba-2 layout
    `(batch, nheads, headdim, N)` both step implementations compute in; Mamba-2 inputs are returned unchanged.
    Returns `(state_4d, x, dt, A, D, z, dt_bias)`."""
    if state.dim() != 3:
        return state, x, dt, A, D, z, dt_bias
    def with_headdim(t):
        return None if t is None else t.unsqueeze(-1)
    return state.unsqueeze(2), x.unsqueeze(-1), dt.unsqueeze(-1), A.unsqueeze(1), with_headdim(D), with_headdim(z), \
        with_headdim(dt_bias)


def selective_state_update_reference(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                                     dt_softplus=False):
    """One recurrence step in PyTorch; see :func:`selective_state_update` (state updated in place)."""
    squeeze = state.dim() == 3
    state_4d, x, dt, A, D, z, dt_bias = as_head_layout(state, x, dt, A, D, z, dt_bias)
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


def _cuda_state_update(cuda_update, state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    """mamba-ssm's Triton step, fed what it needs: zeros for an absent ``D`` / ``dt_bias`` (it reads their strides
    unconditionally), and grouped ``B``/``C`` of the Mamba-1 layout as heads (it only groups heads)."""
    head_shape = x.shape[1:]
    if dt_bias is None:
        dt_bias = torch.zeros(head_shape, dtype=torch.float32, device=x.device)
    if D is None:
        D = torch.zeros(head_shape, dtype=torch.float32, device=x.device)
    if state.dim() == 4 or B.dim() == 2:
        return cuda_update(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
    batch, dim, dstate = state.shape  # Mamba-1 layout with groups: channel d reads group d // (dim // G)
    groups = B.shape[1]
    heads = (groups, dim // groups)
    state_4d = state if state.is_contiguous() else state.contiguous()
    out = cuda_update(
        state_4d.view(batch, *heads, dstate), x.reshape(batch, *heads), dt.reshape(batch, *heads),
        A.reshape(*heads, dstate), B, C, D=D.reshape(heads), z=None if z is None else z.reshape(batch, *heads),
        dt_bias=dt_bias.reshape(heads), dt_softplus=dt_softplus,
    )
    if state_4d is not state:
        state.copy_(state_4d)
    return out.reshape(batch, dim)


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
    resolved = resolve_backend("selective_scan", state, x, dt, A, B, C, D, z, dt_bias, backend=backend)
    cuda_update = cuda_kernels("selective_scan")[1] if resolved == "cuda" else None
    if cuda_update is not None:  # None: mamba-ssm's Triton step did not import; the PyTorch step runs instead
        return _cuda_state_update(cuda_update, state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    if resolved == "cpu":
        return cpu_kernels().selective_state_update_cpu(
            state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus
        )
    return selective_state_update_reference(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                                            dt_softplus=dt_softplus)
