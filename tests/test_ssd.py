"""Mamba-2 SSD: the chunked scan against the sequential recurrence, and the decoding step."""

import math

import pytest
import torch

from mamba_zoo.kernel_backends import KernelBackendUnavailableError
from mamba_zoo.ssd import mamba2_state_update, mamba_chunk_scan_combined, ssd_sequential_reference


def make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, *, seed, dtype=torch.float64,
                softplus=True, with_D=True, D_per_channel=False, with_z=False, with_bias=False,
                with_initial=False):
    """Fresh random inputs; dt is raw (any sign) with softplus, positive without."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    inputs = dict(
        x=randn(batch, seqlen, nheads, headdim),
        dt=randn(batch, seqlen, nheads) if softplus
        else torch.rand(batch, seqlen, nheads, generator=generator, dtype=dtype) * 0.5 + 0.05,
        A=-(torch.rand(nheads, generator=generator, dtype=dtype) * 2 + 0.1),
        B=randn(batch, seqlen, ngroups, dstate),
        C=randn(batch, seqlen, ngroups, dstate),
    )
    options = dict(dt_softplus=softplus)
    if with_D:
        options["D"] = randn(nheads, headdim) if D_per_channel else randn(nheads)
    if with_z:
        options["z"] = randn(batch, seqlen, nheads, headdim)
    if with_bias:
        options["dt_bias"] = randn(nheads) * 0.5
    if with_initial:
        options["initial_states"] = randn(batch, nheads, headdim, dstate)
    return inputs, options


def naive_loop(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None, dt_softplus=False):
    """Independent oracle: explicit loops over batch, time and head, in float64."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2:]
    y = torch.zeros(batch, seqlen, nheads, headdim, dtype=torch.float64)
    final = torch.zeros(batch, nheads, headdim, dstate, dtype=torch.float64)
    for b in range(batch):
        for h in range(nheads):
            group = h // (nheads // ngroups)
            state = (initial_states[b, h].double().clone() if initial_states is not None
                     else torch.zeros(headdim, dstate, dtype=torch.float64))
            for t in range(seqlen):
                step = dt[b, t, h].item() + (dt_bias[h].item() if dt_bias is not None else 0.0)
                if dt_softplus:
                    step = math.log1p(math.exp(step))
                state = math.exp(step * A[h].item()) * state + step * torch.outer(x[b, t, h].double(), B[b, t, group].double())
                out = state @ C[b, t, group].double()
                if D is not None:
                    out = out + (D[h] if D.dim() == 1 else D[h]).double() * x[b, t, h].double()
                if z is not None:
                    gate = z[b, t, h].double()
                    out = out * gate * torch.sigmoid(gate)
                y[b, t, h] = out
            final[b, h] = state
    return y, final


def test_sequential_reference_matches_naive_loop():
    inputs, options = make_inputs(2, 9, 4, 3, 2, 5, seed=0, with_z=True, with_bias=True, with_initial=True,
                                  D_per_channel=True)
    y, final = ssd_sequential_reference(**inputs, **options, return_final_states=True)
    y_naive, final_naive = naive_loop(**inputs, **options)
    torch.testing.assert_close(y, y_naive)
    torch.testing.assert_close(final, final_naive)


SHAPES = [  # batch, seqlen, nheads, headdim, ngroups, dstate, chunk_size
    (2, 32, 4, 3, 1, 5, 8),     # seqlen a multiple of chunk_size
    (2, 37, 4, 3, 2, 5, 8),     # not a multiple; two groups
    (1, 1, 2, 4, 1, 3, 16),     # a single step
    (3, 5, 6, 2, 3, 4, 16),     # chunk longer than the sequence
    (1, 50, 2, 2, 2, 6, 7),     # odd chunk size, many chunks
]
OPTIONS = [
    dict(softplus=True, with_D=True, with_z=False, with_bias=False, with_initial=False),
    dict(softplus=True, with_D=True, D_per_channel=True, with_z=True, with_bias=True, with_initial=True),
    dict(softplus=False, with_D=False, with_z=False, with_bias=False, with_initial=True),
    dict(softplus=False, with_D=True, with_z=True, with_bias=True, with_initial=False),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("option_index", range(len(OPTIONS)))
def test_chunked_matches_sequential_outputs_and_gradients(shape, option_index):
    batch, seqlen, nheads, headdim, ngroups, dstate, chunk_size = shape
    inputs, options = make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate,
                                  seed=option_index * 10 + seqlen, **OPTIONS[option_index])
    leaves = {name: tensor.requires_grad_() for name, tensor in {**inputs, **options}.items()
              if isinstance(tensor, torch.Tensor)}

    y, final = mamba_chunk_scan_combined(**inputs, chunk_size=chunk_size, **options,
                                         return_final_states=True, backend="cpu")
    y_ref, final_ref = ssd_sequential_reference(**inputs, **options, return_final_states=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(final, final_ref, rtol=1e-9, atol=1e-9)

    generator = torch.Generator().manual_seed(99)
    y_weight = torch.randn(y.shape, generator=generator, dtype=y.dtype)
    final_weight = torch.randn(final.shape, generator=generator, dtype=y.dtype)
    names = list(leaves)
    grads = torch.autograd.grad((y * y_weight).sum() + (final * final_weight).sum(), [leaves[n] for n in names])
    grads_ref = torch.autograd.grad((y_ref * y_weight).sum() + (final_ref * final_weight).sum(),
                                    [leaves[n] for n in names])
    for name, grad, grad_ref in zip(names, grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-8, atol=1e-8, msg=lambda m: f"grad of {name}: {m}")


def test_float32_and_half_precision():
    inputs, options = make_inputs(2, 70, 4, 8, 2, 16, seed=5, dtype=torch.float32, with_z=True, with_bias=True)
    y, final = mamba_chunk_scan_combined(**inputs, chunk_size=32, **options, return_final_states=True)
    y_ref, final_ref = ssd_sequential_reference(**{k: v.double() for k, v in inputs.items()},
                                                **{k: v.double() if isinstance(v, torch.Tensor) else v
                                                   for k, v in options.items()},
                                                return_final_states=True)
    assert y.dtype == torch.float32 and final.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final.double(), final_ref, rtol=1e-4, atol=1e-4)

    y_bf16, final_bf16 = mamba_chunk_scan_combined(
        **{k: v.bfloat16() for k, v in inputs.items()}, chunk_size=32,
        **{k: v.bfloat16() if isinstance(v, torch.Tensor) else v for k, v in options.items()},
        return_final_states=True)
    assert y_bf16.dtype == torch.bfloat16 and final_bf16.dtype == torch.float32
    assert (y_bf16.double() - y_ref).abs().max() < 0.1 * y_ref.abs().max()


def test_reference_backend_and_default_chunk_path_agree():
    inputs, options = make_inputs(1, 20, 2, 3, 1, 4, seed=7, dtype=torch.float32)
    y_ref = mamba_chunk_scan_combined(**inputs, chunk_size=8, **options, backend="reference")
    y_auto = mamba_chunk_scan_combined(**inputs, chunk_size=8, **options)
    torch.testing.assert_close(y_auto, y_ref, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64_tiny():
    inputs, options = make_inputs(1, 5, 2, 2, 1, 2, seed=11, with_z=True, with_bias=True, with_initial=True,
                                  D_per_channel=True)
    names = list(inputs) + ["D", "z", "dt_bias", "initial_states"]
    values = [inputs.get(n, options.get(n)).requires_grad_() for n in names]

    def scan(*tensors):
        kwargs = dict(zip(names, tensors))
        return mamba_chunk_scan_combined(**kwargs, chunk_size=2, dt_softplus=True,
                                         return_final_states=True, backend="cpu")

    assert torch.autograd.gradcheck(scan, values)


@pytest.mark.parametrize("ngroups", [1, 2])
def test_state_update_steps_equal_chunked(ngroups):
    batch, seqlen, nheads, headdim, dstate = 2, 13, 4, 3, 5
    inputs, options = make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, seed=20 + ngroups,
                                  dtype=torch.float32, with_z=True, with_bias=True, with_initial=True)
    initial_states = options.pop("initial_states")
    y_chunked, final_chunked = mamba_chunk_scan_combined(**inputs, chunk_size=4, **options,
                                                         initial_states=initial_states, return_final_states=True)
    state = initial_states.clone()
    stepped = []
    for t in range(seqlen):
        stepped.append(mamba2_state_update(
            state, inputs["x"][:, t], inputs["dt"][:, t], inputs["A"], inputs["B"][:, t], inputs["C"][:, t],
            D=options["D"], z=options["z"][:, t], dt_bias=options["dt_bias"], dt_softplus=True))
    torch.testing.assert_close(torch.stack(stepped, dim=1), y_chunked, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state, final_chunked, rtol=1e-4, atol=1e-4)


def test_prefill_then_decode_continues_the_sequence():
    inputs, options = make_inputs(2, 12, 4, 3, 2, 5, seed=30, dtype=torch.float32, with_z=True, with_bias=True)
    full = mamba_chunk_scan_combined(**inputs, chunk_size=4, **options)
    prefix = {k: v[:, :11] for k, v in inputs.items() if k != "A"}
    _, state = mamba_chunk_scan_combined(**prefix, A=inputs["A"], chunk_size=4, D=options["D"],
                                         z=options["z"][:, :11], dt_bias=options["dt_bias"], dt_softplus=True,
                                         return_final_states=True)
    last = mamba2_state_update(state, inputs["x"][:, 11], inputs["dt"][:, 11], inputs["A"], inputs["B"][:, 11],
                               inputs["C"][:, 11], D=options["D"], z=options["z"][:, 11],
                               dt_bias=options["dt_bias"], dt_softplus=True)
    torch.testing.assert_close(last, full[:, 11], rtol=1e-4, atol=1e-4)


def test_dt_limit_clamps():
    inputs, options = make_inputs(1, 10, 2, 2, 1, 3, seed=40)
    y = mamba_chunk_scan_combined(**inputs, chunk_size=4, **options, dt_limit=(0.1, 0.5))
    y_ref = ssd_sequential_reference(**inputs, **options, dt_limit=(0.1, 0.5))
    y_unclamped = ssd_sequential_reference(**inputs, **options)
    torch.testing.assert_close(y, y_ref)
    assert not torch.allclose(y, y_unclamped)


def test_bad_inputs_raise():
    inputs, options = make_inputs(2, 6, 4, 3, 2, 5, seed=50, with_initial=True)
    x, dt, A, B, C = (inputs[k] for k in ("x", "dt", "A", "B", "C"))

    def scan(**overrides):
        kwargs = {**inputs, **options, "chunk_size": 4, **overrides}
        return mamba_chunk_scan_combined(**kwargs)

    cases = {
        "x must have shape": dict(x=x.flatten(2)),
        "dt must have shape": dict(dt=dt[:, :, :1]),
        "A must have shape": dict(A=A[:, None].expand(4, 5)),
        "B must have shape": dict(B=B[:, :3]),
        "ngroups=3": dict(B=torch.randn(2, 6, 3, 5, dtype=B.dtype), C=torch.randn(2, 6, 3, 5, dtype=B.dtype)),
        "C must have shape": dict(C=C[..., :4]),
        "D must have shape": dict(D=torch.randn(3)),
        "z must have shape": dict(z=x[:, :5]),
        "dt_bias must have shape": dict(dt_bias=torch.randn(2)),
        "initial_states must have shape": dict(initial_states=torch.randn(2, 4, 3, 4)),
        "chunk_size": dict(chunk_size=0),
        "backend must be": dict(backend="triton"),
    }
    for message, overrides in cases.items():
        with pytest.raises(ValueError, match=message):
            scan(**overrides)
    with pytest.raises(KernelBackendUnavailableError, match="backend='cuda' for ssd needs CUDA tensors"):
        scan(backend="cuda")

    state = torch.zeros(2, 4, 3, 5)
    step = dict(state=state, x=x[:, 0], dt=dt[:, 0], A=A, B=B[:, 0], C=C[:, 0])
    step_cases = {
        "x must have shape": dict(x=x[:, :1]),
        "state must have shape": dict(state=torch.zeros(2, 4, 5)),
        "dt must have shape": dict(dt=dt[:, 0, :2]),
        "B must have shape": dict(B=B[:, 0, :, :4]),
        "C must have shape": dict(C=C[:, 0, :1]),
        "D must have shape": dict(D=torch.randn(4, 2)),
    }
    for message, overrides in step_cases.items():
        with pytest.raises(ValueError, match=message):
            mamba2_state_update(**{**step, **overrides})
    with pytest.raises(KernelBackendUnavailableError, match="backend='cuda' for ssd needs CUDA tensors"):
        mamba2_state_update(**step, backend="cuda")
