"""Tests for the selective scan: the fused CPU kernel against the PyTorch reference, the reference
against finite differences, single-step decoding against the full scan, dtypes and input errors."""

from pathlib import Path

import pytest
import torch

from mamba_zoo import selective_scan as ss
from mamba_zoo.kernel_backends import KernelBackendUnavailableError, available_backends
from mamba_zoo.selective_scan import selective_scan_fn, selective_state_update

needs_cpu_kernel = pytest.mark.skipif(
    "cpu" not in available_backends("selective_scan", "cpu"), reason="the fused CPU kernel needs numba"
)
CUDA_READY = torch.cuda.is_available() and "cuda" in available_backends("selective_scan", "cuda")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (a scale-aware error for whole tensors)."""
    scale = expected.detach().abs().max().clamp_min(1e-30)
    return ((actual.detach().double() - expected.detach().double()).abs().max() / scale).item()


def make_inputs(batch, dim, n_state, length, groups=None, with_D=True, with_z=True,
                with_bias=True, seed=0, dtype=torch.float32):
    """Random scan inputs. groups=None -> B, C (batch, N, L); else (batch, groups, N, L)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    u = randn(batch, dim, length)
    delta = (torch.rand(batch, dim, length, generator=gen) * 1.5 - 0.5).to(dtype)
    A = (-torch.rand(dim, n_state, generator=gen) * 2.0 - 0.05).to(dtype)
    bc_shape = (batch, n_state, length) if groups is None else (batch, groups, n_state, length)
    B = randn(*bc_shape)
    C = randn(*bc_shape)
    D = randn(dim) if with_D else None
    z = randn(batch, dim, length) if with_z else None
    delta_bias = (randn(dim) * 0.5) if with_bias else None
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)


TENSOR_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def run_with_grads(inputs, backend, delta_softplus, use_out=True, use_state=True, seed=1, **kw):
    """Run the scan and back-propagate a random linear function of (out, last_state).

    Returns (out, last_state, {name: grad})."""
    leaves = {k: (v.detach().clone().requires_grad_(True) if v is not None else None)
              for k, v in inputs.items()}
    if "chunk" in kw:
        from mamba_zoo.cpu_scan_kernels import selective_scan_cpu

        out, last = selective_scan_cpu(**leaves, delta_softplus=delta_softplus,
                                       return_last_state=True, chunk=kw["chunk"])
    else:
        out, last = selective_scan_fn(**leaves, delta_softplus=delta_softplus,
                                      return_last_state=True, backend=backend)
    gen = torch.Generator().manual_seed(seed)
    loss = 0.0
    if use_out:
        loss = loss + (out.float() * torch.randn(out.shape, generator=gen)).sum()
    if use_state:
        loss = loss + (last.float() * torch.randn(last.shape, generator=gen)).sum()
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items() if v is not None}  # None: no path to the loss
    return out, last, grads


# (batch, dim, N, L, groups, D, z, delta_bias, softplus)
CASES = [
    pytest.param(2, 4, 3, 37, None, True, True, True, True, id="all-options-odd-L"),
    pytest.param(2, 6, 5, 130, 2, True, True, True, True, id="grouped-G2-L-not-multiple-of-chunk"),
    pytest.param(1, 4, 3, 1, 1, False, False, False, False, id="L1-G1-as-4d-bare"),
    pytest.param(2, 8, 16, 128, None, False, True, True, False, id="N16-bias-no-softplus"),
    pytest.param(3, 4, 4, 65, None, True, False, False, True, id="no-z-softplus-L65"),
    pytest.param(1, 6, 2, 20, 3, True, True, False, True, id="grouped-G3"),
]


@needs_cpu_kernel
@pytest.mark.parametrize("batch,dim,n_state,length,groups,with_D,with_z,with_bias,softplus", CASES)
def test_cpu_matches_reference_outputs_and_all_gradients(batch, dim, n_state, length, groups,
                                                         with_D, with_z, with_bias, softplus):
    inputs = make_inputs(batch, dim, n_state, length, groups, with_D, with_z, with_bias)
    out_c, last_c, grads_c = run_with_grads(inputs, "cpu", softplus)
    out_r, last_r, grads_r = run_with_grads(inputs, "reference", softplus)
    assert out_c.shape == (batch, dim, length) and out_c.dtype == torch.float32
    assert last_c.shape == (batch, dim, n_state) and last_c.dtype == torch.float32
    assert relative_error(out_c, out_r) < 1e-5
    assert relative_error(last_c, last_r) < 1e-5
    expected_names = {k for k, v in inputs.items() if v is not None}
    assert set(grads_c) == expected_names
    for name in expected_names:
        assert grads_c[name] is not None, name
        assert grads_c[name].shape == inputs[name].shape, name
        if length == 1 and name == "A":  # h_0 = 0, so dLoss/dA is exactly zero
            assert grads_c[name].abs().max() < 1e-6 and grads_r[name].abs().max() < 1e-6
            continue
        assert relative_error(grads_c[name], grads_r[name]) < 1e-5, name


# (batch, dim, N, L, groups, D, z, delta_bias, softplus): channel counts per group that are not multiples of the
# training kernels' block (TRAIN_BLOCK), lengths that are not multiples of the checkpoint interval.
BLOCK_CASES = [
    pytest.param(2, 70, 4, 150, 2, True, True, True, True, id="G2-35-channels-per-group"),
    pytest.param(1, 150, 3, 97, None, False, True, False, True, id="150-channels-z-only"),
    pytest.param(2, 96, 5, 66, 3, True, False, True, True, id="G3-32-channels-no-z"),
    pytest.param(1, 130, 2, 64, None, False, False, False, False, id="bare-130-channels"),
]


@needs_cpu_kernel
@pytest.mark.parametrize("batch,dim,n_state,length,groups,with_D,with_z,with_bias,softplus", BLOCK_CASES)
def test_cpu_channel_blocks_match_reference(batch, dim, n_state, length, groups, with_D, with_z, with_bias,
                                            softplus):
    """The training kernels run blocks of TRAIN_BLOCK channels; a group's last block is zero-padded, and its padding
    must neither leak into dB / dC nor be written out."""
    inputs = make_inputs(batch, dim, n_state, length, groups, with_D, with_z, with_bias, seed=11)
    out_c, last_c, grads_c = run_with_grads(inputs, "cpu", softplus)
    out_r, last_r, grads_r = run_with_grads(inputs, "reference", softplus)
    assert relative_error(out_c, out_r) < 1e-5
    assert relative_error(last_c, last_r) < 1e-5
    assert set(grads_c) == set(grads_r)
    for name in grads_r:
        assert relative_error(grads_c[name], grads_r[name]) < 1e-5, name


@needs_cpu_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_backward_parts_with_several_blocks_and_bit_identical_reruns(threads):
    """330 channels are 6 blocks; with 1 thread the backward splits them into parts of 2 blocks (one part empty), so
    a part sums dB / dC over several blocks. Reruns with the same thread count give the same bits."""
    from mamba_zoo import cpu_scan_kernels as kernels

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = make_inputs(1, 330, 4, 70, seed=12)
        out_c, last_c, grads_c = run_with_grads(inputs, "cpu", True)
        out_again, last_again, grads_again = run_with_grads(inputs, "cpu", True)
        if threads == 1:  # (numba's thread count follows torch's once a kernel has run)
            assert kernels._n_parts(1, 1, 330) < -(-330 // kernels.TRAIN_BLOCK)
    finally:
        torch.set_num_threads(previous)
    out_r, last_r, grads_r = run_with_grads(inputs, "reference", True)
    assert relative_error(out_c, out_r) < 1e-5
    for name in grads_r:
        assert relative_error(grads_c[name], grads_r[name]) < 1e-5, name
    assert torch.equal(out_c, out_again) and torch.equal(last_c, last_again)
    for name in grads_c:
        assert torch.equal(grads_c[name], grads_again[name]), name


@needs_cpu_kernel
@pytest.mark.parametrize("chunk", [1, 5, 16])
def test_cpu_checkpoint_interval_does_not_change_results(chunk):
    """Small checkpoint intervals exercise many chunk boundaries (and a partial last chunk)."""
    inputs = make_inputs(2, 4, 3, 23, groups=2, seed=3)
    out_c, last_c, grads_c = run_with_grads(inputs, None, True, chunk=chunk)
    out_r, last_r, grads_r = run_with_grads(inputs, "reference", True)
    assert relative_error(out_c, out_r) < 1e-5
    assert relative_error(last_c, last_r) < 1e-5
    for name in grads_r:
        assert relative_error(grads_c[name], grads_r[name]) < 1e-5, name


@needs_cpu_kernel
@pytest.mark.parametrize("use_out,use_state", [(True, False), (False, True)])
def test_cpu_gradients_when_only_one_output_is_used(use_out, use_state):
    inputs = make_inputs(2, 4, 3, 40, seed=4)
    _, _, grads_c = run_with_grads(inputs, "cpu", True, use_out=use_out, use_state=use_state)
    _, _, grads_r = run_with_grads(inputs, "reference", True, use_out=use_out, use_state=use_state)
    for name in grads_c:
        if grads_r[name] is None:  # C, D, z do not reach the last state: reference has no grad
            assert name in ("C", "D", "z") and not use_out and grads_c[name].abs().max() == 0
            continue
        assert relative_error(grads_c[name], grads_r[name]) < 1e-5, name


@needs_cpu_kernel
def test_cpu_large_delta_and_softplus_threshold():
    """delta + bias above softplus' threshold (20) and strongly negative values."""
    inputs = make_inputs(1, 4, 4, 30, seed=5)
    inputs["delta"] = torch.randn(1, 4, 30, generator=torch.Generator().manual_seed(6)) * 15
    inputs["A"] = inputs["A"] * 0.01  # keep exp(delta * A) away from underflow
    out_c, last_c, grads_c = run_with_grads(inputs, "cpu", True)
    out_r, last_r, grads_r = run_with_grads(inputs, "reference", True)
    assert relative_error(out_c, out_r) < 1e-5
    for name in grads_r:
        assert relative_error(grads_c[name], grads_r[name]) < 1e-5, name


@needs_cpu_kernel
def test_cpu_return_last_state_flag_and_no_grad():
    inputs = make_inputs(2, 4, 3, 10, seed=7)
    with torch.no_grad():
        out = selective_scan_fn(**inputs, delta_softplus=True, backend="cpu")
        out2, last = selective_scan_fn(**inputs, delta_softplus=True, return_last_state=True,
                                       backend="cpu")
        ref = selective_scan_fn(**inputs, delta_softplus=True, backend="reference")
    assert isinstance(out, torch.Tensor) and not out.requires_grad
    assert torch.equal(out, out2)
    assert relative_error(out, ref) < 1e-5
    assert last.shape == (2, 4, 3)


def test_reference_gradcheck_float64():
    """The oracle itself against float64 finite differences (tiny shapes)."""
    inputs = make_inputs(1, 4, 2, 5, groups=2, dtype=torch.float64, seed=8)
    names = [k for k in TENSOR_ARGS if inputs[k] is not None]

    def fn(*tensors):
        kwargs = dict(zip(names, tensors))
        out, last = ss.selective_scan_reference(**kwargs, delta_softplus=True,
                                                return_last_state=True)
        return out, last

    tensors = tuple(inputs[k].clone().requires_grad_(True) for k in names)
    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_reference_gradcheck_float64_ungrouped_no_softplus():
    inputs = make_inputs(2, 3, 2, 4, with_z=False, dtype=torch.float64, seed=9)
    names = [k for k in TENSOR_ARGS if inputs[k] is not None]

    def fn(*tensors):
        return ss.selective_scan_reference(**dict(zip(names, tensors)), delta_softplus=False)

    tensors = tuple(inputs[k].clone().requires_grad_(True) for k in names)
    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_reference_matches_materialised_formula():
    """The reference loop against a closed form: h_t = sum_s prod_{s<r<=t} dA_r * dB_s u_s."""
    inputs = make_inputs(1, 3, 2, 6, with_D=False, with_z=False, with_bias=False,
                         dtype=torch.float64, seed=10)
    u, delta, A, B, C = (inputs[k][0] if k not in ("A",) else inputs[k]
                         for k in ("u", "delta", "A", "B", "C"))
    out = ss.selective_scan_reference(**{k: inputs[k] for k in ("u", "delta", "A", "B", "C")})
    length = u.shape[-1]
    expected = torch.zeros(3, length, dtype=torch.float64)
    for t in range(length):
        for s in range(t + 1):
            decay_sum = (delta[:, s + 1:t + 1].sum(-1, keepdim=True)) * A  # (dim, N)
            h_contrib = torch.exp(decay_sum) * delta[:, s, None] * B[None, :, s] * u[:, s, None]
            expected[:, t] += (h_contrib * C[None, :, t]).sum(-1)
    assert relative_error(out[0], expected) < 1e-12


def _step_through(inputs, backend, softplus):
    """Run selective_state_update for every time step of a (batch, dim, L) problem."""
    u, delta, A, B, C = (inputs[k] for k in ("u", "delta", "A", "B", "C"))
    batch, dim, length = u.shape
    state = torch.zeros(batch, dim, A.shape[1])
    outs = []
    for t in range(length):
        z_t = inputs["z"][..., t] if inputs["z"] is not None else None
        outs.append(selective_state_update(state, u[..., t], delta[..., t], A, B[..., t],
                                           C[..., t], D=inputs["D"], z=z_t,
                                           dt_bias=inputs["delta_bias"], dt_softplus=softplus,
                                           backend=backend))
    return torch.stack(outs, dim=-1), state


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cpu_kernel)])
@pytest.mark.parametrize("groups", [None, 2])
def test_state_update_steps_match_full_scan(backend, groups):
    inputs = make_inputs(2, 6, 4, 9, groups=groups, seed=11)
    out_full, last_full = selective_scan_fn(**inputs, delta_softplus=True,
                                            return_last_state=True, backend="reference")
    out_steps, state = _step_through(inputs, backend, True)
    assert relative_error(out_steps, out_full) < 1e-5
    assert relative_error(state, last_full) < 1e-5


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cpu_kernel)])
def test_state_update_multihead_layout_matches_full_scan(backend):
    """Mamba-2 decoding layout: state (batch, nheads, headdim, N), B/C (batch, ngroups, N)."""
    batch, nheads, headdim, n_state, ngroups, length = 2, 4, 3, 5, 2, 7
    dim = nheads * headdim
    inputs = make_inputs(batch, dim, n_state, length, groups=ngroups, seed=12)
    out_full, last_full = selective_scan_fn(**inputs, delta_softplus=True,
                                            return_last_state=True, backend="reference")
    state = torch.zeros(batch, nheads, headdim, n_state)
    A = inputs["A"].reshape(nheads, headdim, n_state)
    D = inputs["D"].reshape(nheads, headdim)
    dt_bias = inputs["delta_bias"].reshape(nheads, headdim)
    outs = []
    for t in range(length):
        def heads(x):
            return x[..., t].reshape(batch, nheads, headdim)

        y = selective_state_update(state, heads(inputs["u"]), heads(inputs["delta"]), A,
                                   inputs["B"][..., t], inputs["C"][..., t], D=D,
                                   z=heads(inputs["z"]), dt_bias=dt_bias, dt_softplus=True,
                                   backend=backend)
        assert y.shape == (batch, nheads, headdim)
        outs.append(y.reshape(batch, dim))
    assert relative_error(torch.stack(outs, -1), out_full) < 1e-5
    assert relative_error(state.reshape(batch, dim, n_state), last_full) < 1e-5


def test_state_update_is_in_place_and_keeps_state_dtype():
    inputs = make_inputs(1, 4, 3, 1, seed=13)
    state = torch.randn(1, 4, 3)
    before = state.clone()
    ptr = state.data_ptr()
    selective_state_update(state, inputs["u"][..., 0], inputs["delta"][..., 0], inputs["A"],
                           inputs["B"][..., 0], inputs["C"][..., 0])
    assert state.data_ptr() == ptr and not torch.equal(state, before)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cpu_kernel)])
def test_state_update_half_precision_state_is_written_back(backend):
    inputs = make_inputs(2, 4, 3, 1, seed=18)
    state32 = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(19))
    state16 = state32.to(torch.bfloat16)
    args = (inputs["u"][..., 0], inputs["delta"][..., 0], inputs["A"], inputs["B"][..., 0],
            inputs["C"][..., 0])
    kwargs = dict(D=inputs["D"], z=inputs["z"][..., 0], dt_bias=inputs["delta_bias"],
                  dt_softplus=True)
    ref_state = state16.float()
    out_ref = selective_state_update(ref_state, *args, **kwargs, backend="reference")
    out = selective_state_update(state16, *args, **kwargs, backend=backend)
    assert state16.dtype == torch.bfloat16
    assert relative_error(state16.float(), ref_state) < 1e-2  # bf16 rounding of the new state
    assert relative_error(out, out_ref) < 1e-5


@needs_cpu_kernel
def test_cpu_state_update_under_autograd_falls_back_to_differentiable_path():
    inputs = make_inputs(1, 4, 3, 1, seed=20)
    x = inputs["u"][..., 0].clone().requires_grad_(True)
    state = torch.zeros(1, 4, 3)
    out = selective_state_update(state, x, inputs["delta"][..., 0], inputs["A"],
                                 inputs["B"][..., 0], inputs["C"][..., 0], D=inputs["D"],
                                 backend="cpu")
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cpu_kernel)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_upcast(backend, dtype):
    """Half inputs give half outputs equal to the float32 computation on the same values."""
    inputs = make_inputs(2, 4, 3, 17, seed=14, dtype=dtype)
    out, last = selective_scan_fn(**inputs, delta_softplus=True, return_last_state=True,
                                  backend=backend)
    assert out.dtype == dtype and last.dtype == torch.float32
    as_f32 = {k: (v.float() if v is not None else None) for k, v in inputs.items()}
    out32, last32 = selective_scan_fn(**as_f32, delta_softplus=True, return_last_state=True,
                                      backend="reference")
    assert relative_error(last, last32) < 1e-5  # the state is float32 throughout
    assert relative_error(out, out32) < 1e-2  # only the final rounding to half differs
    # gradients flow back in the input dtype
    leaves = {k: (v.clone().requires_grad_(True) if v is not None else None)
              for k, v in inputs.items()}
    selective_scan_fn(**leaves, delta_softplus=True, backend=backend).float().sum().backward()
    for k, v in leaves.items():
        if v is not None:
            assert v.grad is not None and v.grad.dtype == dtype, k


@pytest.mark.parametrize(
    "name,bad,pattern",
    [
        ("delta", torch.randn(2, 4, 9), r"delta must have the shape of u"),
        ("A", torch.randn(5, 3), r"A must have shape \(dim, N\)"),
        ("B", torch.randn(2, 3, 9), r"B must have shape \(batch, N, L\)"),
        ("C", torch.randn(2, 3, 3, 8), r"grouped C must have shape \(batch, G, N, L\)"),
        ("D", torch.randn(3), r"D must have shape \(dim,\)"),
        ("z", torch.randn(2, 4), r"z must have the shape of u"),
        ("delta_bias", torch.randn(4, 1), r"delta_bias must have shape \(dim,\)"),
        ("u", torch.randint(0, 3, (2, 4, 8)), r"u must be a floating-point tensor"),
        ("A", torch.randn(4, 3, dtype=torch.complex64), r"A must be real"),
        ("u", torch.randn(2, 4, 0), r"u must have at least one time step"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(name, bad, pattern):
    inputs = make_inputs(2, 4, 3, 8, seed=15)
    inputs[name] = bad
    with pytest.raises(ValueError, match=pattern):
        selective_scan_fn(**inputs)


def test_bad_state_update_inputs_raise_value_error():
    state = torch.zeros(2, 4, 3)
    x, dt, A = torch.randn(2, 4), torch.rand(2, 4), -torch.rand(4, 3)
    B = C = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, dim\)"):
        selective_state_update(state, torch.randn(2, 5), dt, A, B, C)
    with pytest.raises(ValueError, match=r"B must have shape \(batch, N\)"):
        selective_state_update(state, x, dt, A, torch.randn(2, 4), C)
    with pytest.raises(ValueError, match=r"state must have shape"):
        selective_state_update(torch.zeros(4, 3), x, dt, A, B, C)
    with pytest.raises(ValueError, match=r"A must have shape \(nheads, headdim, N\)"):
        selective_state_update(torch.zeros(2, 2, 2, 3), torch.randn(2, 2, 2),
                               torch.rand(2, 2, 2), A, B.unsqueeze(1), C.unsqueeze(1))


def test_cuda_backend_on_cpu_tensors_raises_a_clear_error():
    """Backend resolution itself is tested in test_kernel_backends.py; here: the scan and the step use it."""
    inputs = make_inputs(1, 2, 2, 3)
    with pytest.raises(KernelBackendUnavailableError, match="needs CUDA tensors"):
        selective_scan_fn(**inputs, backend="cuda")
    with pytest.raises(KernelBackendUnavailableError, match="needs CUDA tensors"):
        selective_state_update(torch.zeros(1, 2, 2), inputs["u"][..., 0], inputs["delta"][..., 0], inputs["A"],
                               inputs["B"][..., 0], inputs["C"][..., 0], backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan_fn(**inputs, backend="triton")


_COMPILE_HISTORY_SCRIPT = """
import hashlib, sys
import numpy as np, torch
from mamba_zoo import cpu_scan_kernels as k

if sys.argv[1] == "helper-first":
    k._expf(np.float32(0.5))  # an earlier process compiles one helper on its own, then exits
    sys.exit(0)
torch.set_num_threads(1)
gen = torch.Generator().manual_seed(0)
batch, dim, n_state, length = 4, 16, 16, 96
args = [torch.randn(batch, dim, length, generator=gen), torch.randn(batch, dim, length, generator=gen),
        -(torch.rand(dim, n_state, generator=gen) * 3 + 0.1), torch.randn(batch, n_state, length, generator=gen),
        torch.randn(batch, n_state, length, generator=gen), torch.randn(dim, generator=gen),
        torch.randn(batch, dim, length, generator=gen), torch.randn(dim, generator=gen)]


def training_hash():
    leaves = [a.clone().requires_grad_(True) for a in args]
    out = k.selective_scan_cpu(*leaves, delta_softplus=True)
    out.backward(torch.ones_like(out))
    parts = [out.detach().numpy().tobytes()] + [leaf.grad.numpy().tobytes() for leaf in leaves]
    return hashlib.sha256(b"".join(parts)).hexdigest()


train = training_hash() if sys.argv[1] == "train-first" else None  # the training kernels compile first
out = k.selective_scan_cpu(*args, delta_softplus=True)
print("HASH", hashlib.sha256(out.numpy().tobytes()).hexdigest())
print("TRAIN", train or training_hash())
"""


@needs_cpu_kernel
def test_cpu_kernel_bits_do_not_depend_on_what_was_compiled_before(tmp_path):
    """The fused kernels give the same bits whatever earlier processes compiled into the numba cache. Before the helpers
    were left out of the disk cache, a kernel compiled against a cached helper (here `_expf`, compiled alone by an
    earlier process) differed in the last bits from one compiled with every helper fresh, and long training runs
    diverged with the cache's history."""
    import os
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[1] / "src")

    def run(cache_dir, mode):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), PYTHONPATH=src)
        result = subprocess.run([sys.executable, "-c", _COMPILE_HISTORY_SCRIPT, mode], env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return [line for line in result.stdout.splitlines() if line.startswith(("HASH", "TRAIN"))]

    fresh = run(tmp_path / "fresh", "scan")
    assert len(fresh) == 2
    assert run(tmp_path / "fresh", "scan") == fresh  # loaded from the cache it filled
    assert run(tmp_path / "helper", "helper-first") == []
    assert run(tmp_path / "helper", "scan") == fresh
    # Helpers shared by the training and the inference kernels: numba compiles a helper with the fastmath flags of
    # the first kernel calling it unless it sets its own, so compiling the training kernels first changed the
    # inference kernel's code (bits, and half its speed).
    assert run(tmp_path / "train-first", "train-first") == fresh


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA GPU and mamba-ssm")
@pytest.mark.parametrize("groups", [None, 2])
def test_cuda_backend_matches_reference(groups):
    inputs = make_inputs(2, 8, 16, 100, groups=groups, seed=16)
    cuda_inputs = {k: (v.cuda() if v is not None else None) for k, v in inputs.items()}
    out_g, last_g, grads_g = run_with_grads(cuda_inputs, "cuda", True)
    out_r, last_r, grads_r = run_with_grads(inputs, "reference", True)
    assert relative_error(out_g.cpu(), out_r) < 1e-4
    assert relative_error(last_g.cpu(), last_r) < 1e-4
    for name in grads_r:
        assert relative_error(grads_g[name].cpu(), grads_r[name]) < 1e-3, name


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA GPU and mamba-ssm")
def test_cuda_state_update_matches_full_scan():
    inputs = make_inputs(2, 8, 16, 6, seed=17)
    out_full, last_full = selective_scan_fn(**inputs, delta_softplus=True,
                                            return_last_state=True, backend="reference")
    cuda_inputs = {k: (v.cuda() if v is not None else None) for k, v in inputs.items()}
    cuda_inputs["u"] = cuda_inputs["u"]
    outs, state = [], torch.zeros(2, 8, 16, device="cuda")
    for t in range(6):
        outs.append(selective_state_update(
            state, cuda_inputs["u"][..., t], cuda_inputs["delta"][..., t], cuda_inputs["A"],
            cuda_inputs["B"][..., t], cuda_inputs["C"][..., t], D=cuda_inputs["D"],
            z=cuda_inputs["z"][..., t], dt_bias=cuda_inputs["delta_bias"], dt_softplus=True,
            backend="cuda"))
    assert relative_error(torch.stack(outs, -1).cpu(), out_full) < 1e-4
    assert relative_error(state.cpu(), last_full) < 1e-4


# ----------------------------------------------------------------------------------------------
# Forward-only (inference) kernel: no checkpoints, vectorised across channels
# ----------------------------------------------------------------------------------------------


def _reference_with_index(inputs, softplus, index):
    """The reference scan run along the time order `index` (batch, L) per row, results put back at the original
    times (index=None: plain forward)."""
    if index is None:
        return selective_scan_fn(**inputs, delta_softplus=softplus, return_last_state=True,
                                 backend="reference")
    def permute(t):
        if t is None:
            return None
        if t.dim() == 3:
            return t.gather(2, index[:, None, :].expand(-1, t.shape[1], -1))
        return t.gather(3, index[:, None, None, :].expand(-1, t.shape[1], t.shape[2], -1))
    moved = {k: (permute(v) if k in ("u", "delta", "z", "B", "C") else v) for k, v in inputs.items()}
    out, last = selective_scan_fn(**moved, delta_softplus=softplus, return_last_state=True,
                                  backend="reference")
    inverse = torch.argsort(index, dim=1)
    return out.gather(2, inverse[:, None, :].expand(-1, out.shape[1], -1)), last


def _time_major(t):
    """(batch, dim, L) -> (batch, L, dim); grouped (batch, G, N, L) -> (batch, L, G, N)."""
    if t is None:
        return None
    return t.permute(0, 2, 1).contiguous() if t.dim() == 3 else t.permute(0, 3, 1, 2).contiguous()


@needs_cpu_kernel
@pytest.mark.parametrize("order", ["forward", "flip", "within-lengths"])
@pytest.mark.parametrize("layout", ["time-major", "time-major-slices", "channel-major"])
@pytest.mark.parametrize("batch,dim,n_state,length,groups,with_D,with_z,with_bias,softplus", CASES)
def test_inference_kernel_matches_reference(batch, dim, n_state, length, groups, with_D, with_z,
                                            with_bias, softplus, layout, order):
    from mamba_zoo.cpu_scan_kernels import selective_scan_inference_time_major

    inputs = make_inputs(batch, dim, n_state, length, groups, with_D, with_z, with_bias)
    if order == "forward":
        index = None
    elif order == "flip":
        index = torch.arange(length - 1, -1, -1).expand(batch, length)
    else:  # reverse [0, len_b) and keep the rest in order, as the bidirectional mixers do
        from mamba_zoo.sequence_utils import reversal_index

        lengths = torch.randint(0, length + 1, (batch,), generator=torch.Generator().manual_seed(3))
        index = reversal_index(lengths, length)
    out_r, last_r = _reference_with_index(inputs, softplus, index)
    kw = dict(A=inputs["A"], D=inputs["D"], delta_bias=inputs["delta_bias"],
              delta_softplus=softplus, index=index, return_last_state=True, block=4, tile=5)
    if layout == "channel-major":
        out, last = selective_scan_inference_time_major(
            inputs["u"], inputs["delta"], B=inputs["B"], C=inputs["C"], z=inputs["z"],
            channel_major=True, **kw)
    else:
        u, delta, z = _time_major(inputs["u"]), _time_major(inputs["delta"]), _time_major(inputs["z"])
        B, C = _time_major(inputs["B"]), _time_major(inputs["C"])
        if layout == "time-major-slices":  # column slices of wider tensors, as the mixer passes them
            wide = torch.randn(batch, length, 3 * dim)
            wide[..., dim:2 * dim] = u
            u = wide[..., dim:2 * dim]
            if z is not None:
                wide_z = torch.randn(batch, length, 2 * dim)
                wide_z[..., dim:] = z
                z = wide_z[..., dim:]
        out, last = selective_scan_inference_time_major(u, delta, B=B, C=C, z=z, **kw)
        out = out.transpose(1, 2)
    assert relative_error(out, out_r) < 1e-5
    assert relative_error(last, last_r) < 1e-5
    # accumulate adds onto an existing buffer
    if layout == "time-major":
        base = torch.randn(batch, length, dim)
        acc = selective_scan_inference_time_major(u, delta, B=B, C=C, z=z, out=base.clone(),
                                                  accumulate=True, **kw)[0]
        assert relative_error(acc.transpose(1, 2), out_r + base.transpose(1, 2)) < 1e-5


@needs_cpu_kernel
@pytest.mark.parametrize("block", [None, 1, 3, 16, 1000])
def test_inference_kernel_block_sizes_and_no_grad_dispatch(block):
    from mamba_zoo.cpu_scan_kernels import selective_scan_inference_time_major

    inputs = make_inputs(2, 40, 16, 67, seed=12)
    ref, last_ref = selective_scan_fn(**inputs, delta_softplus=True, return_last_state=True,
                                      backend="reference")
    out, last = selective_scan_inference_time_major(**inputs, delta_softplus=True,
                                                    return_last_state=True, channel_major=True,
                                                    block=block)
    assert relative_error(out, ref) < 1e-5 and relative_error(last, last_ref) < 1e-5
    # selective_scan_fn on cpu without grad takes the inference kernel; with grad the autograd one
    with torch.no_grad():
        out_ng, last_ng = selective_scan_fn(**inputs, delta_softplus=True, return_last_state=True,
                                            backend="cpu")
    assert relative_error(out_ng, ref) < 1e-5 and relative_error(last_ng, last_ref) < 1e-5
    out_g, last_g, _ = run_with_grads(inputs, "cpu", True)
    assert relative_error(out_g, ref) < 1e-5
