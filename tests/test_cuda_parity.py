"""Parity of the device kernels and models against the plain-PyTorch reference on CPU.

Every test compares a run on ``DEVICE`` with the same inputs (or the same weights) run on CPU with
``backend="reference"``: forward outputs, last states and gradients (autograd) of every input or parameter.

``DEVICE`` comes from ``MAMBA_ZOO_PARITY_DEVICE`` (default ``"cuda"``):

- ``cuda``: the module is skipped without a CUDA GPU. Kernel tests call ``backend="cuda"`` (mamba-ssm /
  causal-conv1d) and skip, saying why, when a package does not import. Model tests run either way: with
  ``kernel_backend="cuda"`` where the scan's package imports, else ``"auto"`` (its PyTorch fallback on CUDA).
- ``cpu``: the same comparisons with ``backend="cpu"`` (numba / chunked PyTorch) and models on ``"auto"``, so the
  logic of this file runs on any machine: ``MAMBA_ZOO_PARITY_DEVICE=cpu pytest tests/test_cuda_parity.py``.

TF32 is switched off for cuBLAS and cuDNN during this module (else the convolutions of the audio front ends round
their inputs to 10 bits on Ampere+). mamba-ssm's Triton SSD kernels use TF32 in ``tl.dot`` regardless, so
comparisons that go through them use looser tolerances (``SSD_TF32``), each with its reason.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

from mamba_zoo import (
    BlackMambaForCausalLM,
    MambaDecoderOnlyASR,
    MambaForCTC,
    SSAMBAForAudioClassification,
)
from mamba_zoo.causal_conv1d import causal_conv1d_fn, causal_conv1d_update
from mamba_zoo.kernel_backends import KERNELS, available_backends
from mamba_zoo.mamba_layers import Mamba2Mixer, MambaMixer
from mamba_zoo.moe_layers import SwitchMoE
from mamba_zoo.selective_scan import selective_scan_fn, selective_state_update
from mamba_zoo.ssd import mamba2_state_update, mamba_chunk_scan_combined
from zoo_cases import CASES


DEVICE = os.environ.get("MAMBA_ZOO_PARITY_DEVICE", "cuda")
if DEVICE not in ("cuda", "cpu"):
    raise ValueError(f"MAMBA_ZOO_PARITY_DEVICE must be 'cuda' or 'cpu', got {DEVICE!r}.")

pytestmark = [pytest.mark.cuda]
if DEVICE == "cuda":
    pytestmark.append(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU "
                                         "(or MAMBA_ZOO_PARITY_DEVICE=cpu to run the comparisons on CPU)"))

# the explicit backend the kernel tests put against "reference"
KERNEL_BACKEND = "cuda" if DEVICE == "cuda" else "cpu"

FWD_TOL = 1e-4  # relative error (max |a - b| / max |b|) of outputs and states
GRAD_TOL = 1e-3  # ... of gradients
# mamba-ssm's Triton SSD kernels (backend "cuda" of ssd) multiply in TF32 (Triton's default input precision for
# float32 `tl.dot`: 10-bit mantissa), so their fp32 results differ from an fp32 reference by ~1e-3 relative. Rounding
# every matmul operand (and incoming gradient) of our chunked SSD to TF32 gives up to 8e-4 on the SSD_CASES outputs
# and states, 1.1e-3 on their gradients, 1.4e-3 on the Mamba-2 mixers' parameter gradients and < 2e-6 on the MADEON
# logits and scores (the SSD branch is a small part of the residual stream). About 10x margin on each:
SSD_TF32_FWD_TOL = 1e-2  # kernel outputs and states
SSD_TF32_GRAD_TOL = 3e-2  # kernel and model gradients
SSD_TF32_MODEL_FWD_TOL = 1e-3  # model outputs, losses and generation scores


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _exact_float32():
    """No TF32 in cuBLAS / cuDNN while this module runs (restored afterwards)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| over the whole tensor, in float64 on CPU."""
    actual, expected = actual.detach().cpu().double(), expected.detach().cpu().double()
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    scale = expected.abs().max().clamp_min(1e-30)
    return ((actual - expected).abs().max() / scale).item()


def assert_close(actual, expected, tol, what):
    assert torch.isfinite(actual).all(), f"{what}: non-finite values on {DEVICE}"
    error = relative_error(actual, expected)
    assert error < tol, f"{what}: relative error {error:.3g} >= {tol:g} ({DEVICE} vs CPU reference)"


def cuda_unavailable_reason(kernel: str) -> str:
    """Why `backend="cuda"` cannot run `kernel` here, with the import error of its package if there is one."""
    module = KERNELS[kernel].cuda_sequence[0]
    try:
        importlib.import_module(module)
        detail = "the module imports, but the kernels are not usable"
    except Exception as error:  # ImportError or a broken compiled extension
        detail = f"import {module} failed: {type(error).__name__}: {error}"
    return f"backend='cuda' for {kernel} needs {KERNELS[kernel].cuda_package} on a CUDA machine ({detail})"


def require_kernel_backend(kernel: str) -> None:
    """Skip unless KERNEL_BACKEND can run `kernel` on DEVICE tensors."""
    if KERNEL_BACKEND in available_backends(kernel, DEVICE):
        return
    if KERNEL_BACKEND == "cuda":
        pytest.skip(cuda_unavailable_reason(kernel))
    pytest.skip(f"backend='cpu' for {kernel} is unavailable here (numba missing?)")


def model_backend(scan_kernel: str) -> str:
    """The kernel_backend of a model on DEVICE: "cuda" where the scan's package imports (on CUDA), else "auto"."""
    if DEVICE == "cuda" and "cuda" in available_backends(scan_kernel, "cuda"):
        return "cuda"
    return "auto"


def ssd_runs_tf32(scan_kernel: str, backend: str) -> bool:
    """Whether the SSD scan goes through mamba-ssm's Triton (TF32 `tl.dot`) kernels."""
    return scan_kernel == "ssd" and DEVICE == "cuda" and (
        backend == "cuda" or (backend == "auto" and "cuda" in available_backends("ssd", "cuda")))


def to_device(value, device=DEVICE):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def leaves_of(tensors: dict, device: str) -> dict:
    """Fresh leaf copies (requires_grad) of the floating tensors on `device`; None stays None."""
    return {k: (None if v is None else v.detach().clone().to(device).requires_grad_(v.is_floating_point()))
            for k, v in tensors.items()}


def weighted_sum(tensors, seed: int):
    """A random linear function of `tensors` (weights drawn on CPU from `seed`, so identical on every device)."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for t in tensors:
        weight = torch.randn(t.shape, generator=generator).to(t.device)
        total = total + (t.float() * weight).sum()
    return total


def assert_grad_close(grad_dev, grad_ref, tol, what) -> bool:
    """Compare two gradients; None (no path to the loss) counts as zeros, since backends differ in which they return.
    Returns whether the reference gradient is non-zero."""
    if grad_ref is None and grad_dev is None:
        return False
    if grad_ref is None or grad_dev is None:
        present = grad_dev if grad_ref is None else grad_ref
        assert not present.any(), f"{what}: None on one side, non-zero on the other"
        return False
    assert_close(grad_dev, grad_ref, tol, what)
    return bool(grad_ref.any())


def compare_grads(leaves_dev: dict, leaves_ref: dict, tol: float, what: str) -> None:
    for name, ref in leaves_ref.items():
        if ref is not None and ref.requires_grad:
            assert_grad_close(leaves_dev[name].grad, ref.grad, tol, f"{what}: gradient of {name}")


# ----------------------------------------------------------------------------------------------------------------------
# selective_scan (Mamba-1)
# ----------------------------------------------------------------------------------------------------------------------


def scan_inputs(batch, dim, n_state, length, groups=None, with_D=True, with_z=True, with_bias=True, softplus=True,
                seed=0):
    """Random selective-scan inputs (never zeros). `delta` is raw (softplus) or small and positive (no softplus),
    so that the recurrence stays stable over hundreds of steps."""
    g = torch.Generator().manual_seed(seed)
    bc_shape = (batch, n_state, length) if groups is None else (batch, groups, n_state, length)
    delta = (torch.randn(batch, dim, length, generator=g) * 0.5 - 1.0 if softplus
             else torch.rand(batch, dim, length, generator=g) * 0.3 + 0.01)
    return dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=delta,
        A=-(torch.rand(dim, n_state, generator=g) * 2.0 + 0.05),
        B=torch.randn(*bc_shape, generator=g),
        C=torch.randn(*bc_shape, generator=g),
        D=torch.randn(dim, generator=g) if with_D else None,
        z=torch.randn(batch, dim, length, generator=g) if with_z else None,
        delta_bias=torch.randn(dim, generator=g) * 0.5 if with_bias else None,
    )


SCAN_CASES = [  # batch, dim, N, L, groups, D, z, delta_bias, softplus
    pytest.param(2, 8, 16, 300, None, True, True, True, True, id="all-options-L300"),
    pytest.param(2, 16, 8, 100, None, False, False, False, False, id="bare-L100"),
    pytest.param(2, 8, 16, 100, 2, True, True, True, True, id="grouped-G2"),
    pytest.param(3, 8, 4, 37, None, True, False, True, True, id="D-bias-no-z-N4"),
    pytest.param(1, 4, 16, 129, 4, False, True, False, True, id="grouped-G4-z-only"),
]


@pytest.mark.parametrize("batch,dim,n_state,length,groups,with_D,with_z,with_bias,softplus", SCAN_CASES)
def test_selective_scan_matches_reference(batch, dim, n_state, length, groups, with_D, with_z, with_bias, softplus):
    """Outputs, last states and the gradients of every input (back-propagated from the output)."""
    require_kernel_backend("selective_scan")
    inputs = scan_inputs(batch, dim, n_state, length, groups, with_D, with_z, with_bias, softplus, seed=length + dim)
    results = {}
    for backend, device in ((KERNEL_BACKEND, DEVICE), ("reference", "cpu")):
        leaves = leaves_of(inputs, device)
        out, last = selective_scan_fn(**leaves, delta_softplus=softplus, return_last_state=True, backend=backend)
        weighted_sum([out], seed=1).backward()
        results[backend] = out, last, leaves
    out, last, leaves = results[KERNEL_BACKEND]
    out_ref, last_ref, leaves_ref = results["reference"]
    assert out.dtype == out_ref.dtype and last.shape == last_ref.shape
    assert_close(out, out_ref, FWD_TOL, "selective_scan output")
    assert_close(last, last_ref, FWD_TOL, "selective_scan last state")
    compare_grads(leaves, leaves_ref, GRAD_TOL, "selective_scan")


def test_selective_scan_gradient_through_last_state():
    """The library promises gradients to every input on every backend, also through `last_state`."""
    require_kernel_backend("selective_scan")
    inputs = scan_inputs(2, 8, 16, 64, seed=5)
    results = {}
    for backend, device in ((KERNEL_BACKEND, DEVICE), ("reference", "cpu")):
        leaves = leaves_of(inputs, device)
        out, last = selective_scan_fn(**leaves, delta_softplus=True, return_last_state=True, backend=backend)
        weighted_sum([last], seed=2).backward()
        results[backend] = leaves
    compare_grads(results[KERNEL_BACKEND], results["reference"], GRAD_TOL,
                  f"selective_scan, loss on last_state only (backend={KERNEL_BACKEND!r})")


STEP_CASES = [  # groups, D, z, dt_bias
    pytest.param(None, True, True, False, id="as-MambaMixer-calls-it"),  # dt bias inside dt_proj: dt_bias=None
    pytest.param(None, True, True, True, id="all-options"),
    pytest.param(None, False, False, False, id="bare"),
    pytest.param(2, True, True, True, id="grouped-G2"),
]


@pytest.mark.parametrize("groups,with_D,with_z,with_bias", STEP_CASES)
def test_selective_state_update_steps_equal_full_scan(groups, with_D, with_z, with_bias):
    """Stepping `selective_state_update` (state updated in place) from a zero state gives the full scan's outputs
    and last state."""
    require_kernel_backend("selective_scan")
    batch, dim, n_state, length = 2, 16, 8, 20
    inputs = scan_inputs(batch, dim, n_state, length, groups, with_D, with_z, with_bias, seed=7)
    out_ref, last_ref = selective_scan_fn(**inputs, delta_softplus=True, return_last_state=True,
                                          backend="reference")
    dev = to_device(inputs)
    state = torch.zeros(batch, dim, n_state, device=DEVICE)
    outs = []
    for t in range(length):
        outs.append(selective_state_update(
            state, dev["u"][..., t], dev["delta"][..., t], dev["A"], dev["B"][..., t], dev["C"][..., t],
            D=dev["D"], z=None if dev["z"] is None else dev["z"][..., t], dt_bias=dev["delta_bias"],
            dt_softplus=True, backend=KERNEL_BACKEND))
    assert_close(torch.stack(outs, -1), out_ref, FWD_TOL, "selective_state_update outputs")
    assert_close(state, last_ref, FWD_TOL, "selective_state_update final state")


# ----------------------------------------------------------------------------------------------------------------------
# causal_conv1d
# ----------------------------------------------------------------------------------------------------------------------


def conv_input(batch, dim, length, layout, generator):
    """(leaf, view): the random tensor that gets the gradient and the x `(batch, dim, length)` view of it in the given
    memory layout: channel-first (contiguous), channel-last (the transpose of a contiguous (batch, length, dim)), or
    channel-last inside a wider row (a column slice, as a mixer's `in_proj` output is: row stride 148, not a multiple
    of 8). `view` rebuilds x from a copy of the leaf on any device."""
    if layout == "channel-first":
        return torch.randn(batch, dim, length, generator=generator), lambda t: t
    if layout == "channel-last":
        return torch.randn(batch, length, dim, generator=generator), lambda t: t.transpose(1, 2)
    return torch.randn(batch, length, 148, generator=generator), lambda t: t[:, :, 4:4 + dim].transpose(1, 2)


CONV_CASES = [  # dim, L, width, bias, activation, layout
    pytest.param(16, 300, 4, True, "silu", "channel-first", id="w4-bias-silu-L300"),
    pytest.param(16, 100, 4, False, None, "channel-first", id="w4-plain"),
    pytest.param(24, 100, 3, True, None, "channel-first", id="w3-bias"),
    pytest.param(8, 37, 2, False, "silu", "channel-first", id="w2-silu-L37"),
    pytest.param(64, 100, 4, True, "silu", "channel-last", id="w4-channel-last"),
    pytest.param(80, 100, 4, True, "silu", "channel-last-in-wider-row", id="w4-channel-last-row-stride-148"),
]


@pytest.mark.parametrize("dim,length,width,with_bias,activation,layout", CONV_CASES)
def test_causal_conv1d_matches_reference(dim, length, width, with_bias, activation, layout):
    """Forward and the gradients of x, weight and bias, for channel-first and channel-last inputs."""
    require_kernel_backend("causal_conv1d")
    g = torch.Generator().manual_seed(dim + length + width)
    x_leaf, view = conv_input(2, dim, length, layout, g)
    params = dict(weight=torch.randn(dim, width, generator=g) * 0.5,
                  bias=torch.randn(dim, generator=g) if with_bias else None)
    results = {}
    for backend, device in ((KERNEL_BACKEND, DEVICE), ("reference", "cpu")):
        leaves = leaves_of({"x": x_leaf, **params}, device)
        x = view(leaves["x"])
        assert x.stride() == view(x_leaf).stride()
        out = causal_conv1d_fn(x, leaves["weight"], leaves["bias"], activation=activation, backend=backend)
        weighted_sum([out], seed=3).backward()
        results[backend] = out, leaves
    out, leaves = results[KERNEL_BACKEND]
    out_ref, leaves_ref = results["reference"]
    assert_close(out, out_ref, FWD_TOL, "causal_conv1d output")
    compare_grads(leaves, leaves_ref, GRAD_TOL, "causal_conv1d")


@pytest.mark.parametrize("with_bias,activation", [(True, "silu"), (False, None)])
def test_causal_conv1d_update_steps_equal_full_conv(with_bias, activation):
    """Stepping `causal_conv1d_update` from a zero state gives the full convolution; the state ends holding the last
    `width` inputs."""
    require_kernel_backend("causal_conv1d")
    batch, dim, width, length = 2, 16, 4, 23
    g = torch.Generator().manual_seed(11)
    x = torch.randn(batch, dim, length, generator=g)
    weight = torch.randn(dim, width, generator=g) * 0.5
    bias = torch.randn(dim, generator=g) if with_bias else None
    full = causal_conv1d_fn(x, weight, bias, activation=activation, backend="reference")
    x_dev, weight_dev, bias_dev = to_device(x), to_device(weight), to_device(bias)
    state = torch.zeros(batch, dim, width, device=DEVICE)
    steps = [causal_conv1d_update(x_dev[:, :, t], state, weight_dev, bias_dev, activation=activation,
                                  backend=KERNEL_BACKEND) for t in range(length)]
    assert_close(torch.stack(steps, -1), full, FWD_TOL, "causal_conv1d_update outputs")
    assert_close(state, x[:, :, -width:], FWD_TOL, "causal_conv1d_update final state")


# ----------------------------------------------------------------------------------------------------------------------
# SSD (Mamba-2)
# ----------------------------------------------------------------------------------------------------------------------


def ssd_inputs(batch, length, nheads, headdim, ngroups, dstate, *, D=None, with_z=False, with_bias=False,
               with_initial=False, seed=0):
    """Random SSD inputs (never zeros): raw dt (softplus applied by the kernel, ~0.3), D per head ("head") or per
    channel ("channel")."""
    g = torch.Generator().manual_seed(seed)
    inputs = dict(
        x=torch.randn(batch, length, nheads, headdim, generator=g),
        dt=torch.randn(batch, length, nheads, generator=g) * 0.5 - 1.0,
        A=-(torch.rand(nheads, generator=g) * 0.5 + 0.05),  # decays exp(dt * A) ~0.8-0.99: states span many chunks
        B=torch.randn(batch, length, ngroups, dstate, generator=g),
        C=torch.randn(batch, length, ngroups, dstate, generator=g),
        D={None: None, "head": torch.randn(nheads, generator=g),
           "channel": torch.randn(nheads, headdim, generator=g)}[D],
        z=torch.randn(batch, length, nheads, headdim, generator=g) if with_z else None,
        dt_bias=torch.randn(nheads, generator=g) * 0.5 if with_bias else None,
        initial_states=torch.randn(batch, nheads, headdim, dstate, generator=g) if with_initial else None,
    )
    return inputs


# Every SSD in this file (kernel cases, MADEON's Mamba-2 mixers, the odd-width mixer) has one (chunk_size, headdim,
# dstate): mamba-ssm's Triton kernels autotune (and compile) ~200 configurations per new such key, tens of seconds each.
SSD_CHUNK, SSD_HEADDIM, SSD_DSTATE = 16, 16, 16

# (L is not a multiple of SSD_CHUNK. 250, not 300: batch x L x nheads x headdim then stays under PyTorch's parallel
# grain (32768), so the reference's per-step backward ops run single-threaded; past it, on a busy 2-core machine, 300
# steps took 15 s instead of 0.05 s.)
SSD_CASES = [  # batch, L, nheads, ngroups, D, z, dt_bias, initial states
    pytest.param(2, 250, 4, 2, "head", True, True, True, id="all-options-L250"),
    pytest.param(2, 100, 8, 1, "channel", False, True, False, id="D-per-channel-L100"),
    pytest.param(1, 37, 2, 1, None, False, False, False, id="bare-L37"),
]


@pytest.mark.parametrize("batch,length,nheads,ngroups,D,with_z,with_bias,with_initial", SSD_CASES)
def test_ssd_matches_reference(batch, length, nheads, ngroups, D, with_z, with_bias, with_initial):
    """`mamba_chunk_scan_combined`: outputs, final states and the gradients of every input (loss on both)."""
    require_kernel_backend("ssd")
    inputs = ssd_inputs(batch, length, nheads, SSD_HEADDIM, ngroups, SSD_DSTATE, D=D, with_z=with_z,
                        with_bias=with_bias, with_initial=with_initial, seed=length + nheads)
    results = {}
    for backend, device in ((KERNEL_BACKEND, DEVICE), ("reference", "cpu")):
        leaves = leaves_of(inputs, device)
        y, final = mamba_chunk_scan_combined(**leaves, chunk_size=SSD_CHUNK, dt_softplus=True,
                                             return_final_states=True, backend=backend)
        weighted_sum([y, final], seed=4).backward()
        results[backend] = y, final, leaves
    y, final, leaves = results[KERNEL_BACKEND]
    y_ref, final_ref, leaves_ref = results["reference"]
    fwd_tol, grad_tol = ((SSD_TF32_FWD_TOL, SSD_TF32_GRAD_TOL) if KERNEL_BACKEND == "cuda"  # TF32 tl.dot, see top
                         else (FWD_TOL, GRAD_TOL))
    assert_close(y, y_ref, fwd_tol, "ssd output")
    assert_close(final, final_ref, fwd_tol, "ssd final state")
    compare_grads(leaves, leaves_ref, grad_tol, "ssd")


MAMBA2_STEP_CASES = [  # D, z, dt_bias
    pytest.param("head", False, True, id="as-Mamba2Mixer-calls-it"),
    pytest.param("channel", True, True, id="all-options"),
    pytest.param(None, False, False, id="bare"),
]


@pytest.mark.parametrize("D,with_z,with_bias", MAMBA2_STEP_CASES)
def test_mamba2_state_update_steps_equal_full_ssd(D, with_z, with_bias):
    """Stepping `mamba2_state_update` from a random initial state gives the full SSD's outputs and final state (the
    step is elementwise: no TF32 there, full fp32 tolerances)."""
    require_kernel_backend("ssd")
    batch, length, nheads, ngroups = 2, 20, 4, 2
    inputs = ssd_inputs(batch, length, nheads, SSD_HEADDIM, ngroups, SSD_DSTATE, D=D, with_z=with_z,
                        with_bias=with_bias, with_initial=True, seed=13)
    y_ref, final_ref = mamba_chunk_scan_combined(**inputs, chunk_size=SSD_CHUNK, dt_softplus=True,
                                                 return_final_states=True, backend="reference")
    dev = to_device(inputs)
    state = dev["initial_states"].clone()
    ys = []
    for t in range(length):
        ys.append(mamba2_state_update(
            state, dev["x"][:, t], dev["dt"][:, t], dev["A"], dev["B"][:, t], dev["C"][:, t], D=dev["D"],
            z=None if dev["z"] is None else dev["z"][:, t], dt_bias=dev["dt_bias"], dt_softplus=True,
            backend=KERNEL_BACKEND))
    assert_close(torch.stack(ys, 1), y_ref, FWD_TOL, "mamba2_state_update outputs")
    assert_close(state, final_ref, FWD_TOL, "mamba2_state_update final state")


# ----------------------------------------------------------------------------------------------------------------------
# Models: forward, loss and every parameter gradient; cached greedy decoding
# ----------------------------------------------------------------------------------------------------------------------

NO_DROPOUT = dict(drop_path_rate=0.0, hidden_dropout_prob=0.0, hidden_dropout=0.0, final_dropout=0.0,
                  speech_mask_prob=0.0, apply_spec_augment=False)


def with_overrides(config, **overrides):
    """A copy of `config` with `overrides` (validated by the config's constructor); dropout-like fields the config
    declares are set to 0."""
    data = config.to_dict()
    data.update({k: v for k, v in NO_DROPOUT.items() if k in data})
    data.update(overrides)
    return type(config).from_dict(data)


def madeon_config(mixer_type, speech_prefix, **overrides):
    """The zoo's MADEON config with another mixer / speech prefix. For Mamba-2: d_inner 128 in 8 heads of SSD_HEADDIM,
    SSD_DSTATE and SSD_CHUNK, so the in_proj row (296) and the conv channels (160) meet causal-conv1d's channel-last
    rules (test_mixers_with_odd_widths has widths that do not) and the prefill (~17 tokens) ends inside a chunk."""
    case = next(c for c in CASES if c.model_class is MambaDecoderOnlyASR)
    extra = (dict(expand=4, mamba2_head_dim=SSD_HEADDIM, state_size=SSD_DSTATE, mamba2_chunk_size=SSD_CHUNK)
             if mixer_type == "mamba2" else {})
    return with_overrides(case.make_config(), mixer_type=mixer_type, speech_prefix=speech_prefix,
                          initializer_range=0.1, tie_word_embeddings=False, **extra, **overrides)


def _labels_and_masks(model_class, inputs, generator):
    """Training extras for the heads: labels, and right padding where the model takes masks."""
    inputs = dict(inputs)
    if model_class is SSAMBAForAudioClassification:
        inputs["labels"] = torch.randint(0, 3, (inputs["input_values"].shape[0],), generator=generator)
    elif model_class is MambaForCTC:
        inputs["attention_mask"] = (torch.arange(40)[None] < torch.tensor([40, 33, 27])[:, None]).long()
        labels = torch.randint(1, 16, (3, 4), generator=generator)
        labels[2, 3] = -100
        inputs["labels"] = labels
    elif model_class is MambaDecoderOnlyASR:
        inputs["speech_attention_mask"] = (torch.arange(9)[None] < torch.tensor([9, 6, 8])[:, None]).long()
        inputs["attention_mask"] = (torch.arange(5)[None] < torch.tensor([5, 3, 4])[:, None]).long()
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        labels[:, 0] = -100
        inputs["labels"] = labels
    elif model_class is BlackMambaForCausalLM:
        inputs["labels"] = inputs["input_ids"].clone()
        inputs["output_router_logits"] = True  # the load-balancing loss joins the LM loss
    return inputs


def _perturb(model, seed):
    """BlackMamba: break the symmetry of the freshly initialised routers and experts (as its own tests do), so
    routing varies; Mamba-2: A_log uniform in [0, 1) so the decay matters over a short sequence."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "router" in name or "linear_fc" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
        for module in model.modules():
            if isinstance(module, Mamba2Mixer):
                for name in ("A_log", "A_b_log"):
                    if hasattr(module, name):
                        getattr(module, name).copy_(torch.rand(getattr(module, name).shape, generator=g))


def build_pair(model_class, config, seed=0):
    """(model on DEVICE with the device backend, the same weights on CPU with backend "reference", scan kernel,
    device backend)."""
    scan_kernel = "ssd" if getattr(config, "mixer_type", "mamba") == "mamba2" else "selective_scan"
    backend = model_backend(scan_kernel)
    torch.manual_seed(seed)
    ref = model_class(with_overrides(config, kernel_backend="reference"))
    _perturb(ref, seed + 100)
    dev = model_class(with_overrides(config, kernel_backend=backend))
    dev.load_state_dict(ref.state_dict())
    return dev.to(DEVICE), ref, scan_kernel, backend


def _float_outputs(output) -> dict:
    """The tensors of a ModelOutput (cache and tuples of hidden states left out)."""
    return {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}


def _routing_margins(model, inputs) -> list:
    """Per MoE layer, the smallest gap between the chosen expert's routing score and the runner-up in this forward
    (train mode: Sinkhorn scores, eval: sigmoid probabilities), to tell a kernel mismatch from a routing near-tie."""
    from mamba_zoo.moe_layers import sinkhorn

    margins = []

    def hook(module, args, output):
        logits = output[1].detach().float()
        scores = sinkhorn(logits) if module.training and module.sinkhorn_in_training else torch.sigmoid(logits)
        top2 = scores.topk(2, dim=-1).values
        margins.append(((top2[:, 0] - top2[:, 1]) / top2[:, 0]).min().item())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, SwitchMoE)]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return margins


FAMILY_CASES = [pytest.param(c.model_class, c.make_config, c.make_inputs, id=c.name) for c in CASES] + [
    pytest.param(MambaDecoderOnlyASR, lambda: madeon_config("mamba", "serial"),
                 next(c for c in CASES if c.model_class is MambaDecoderOnlyASR).make_inputs,
                 id="mamba-decoder-asr-mamba-serial"),
    pytest.param(MambaDecoderOnlyASR, lambda: madeon_config("mamba2", "parallel"),
                 next(c for c in CASES if c.model_class is MambaDecoderOnlyASR).make_inputs,
                 id="mamba-decoder-asr-mamba2-parallel"),
    pytest.param(MambaDecoderOnlyASR, lambda: madeon_config("mamba2", "serial"),
                 next(c for c in CASES if c.model_class is MambaDecoderOnlyASR).make_inputs,
                 id="mamba-decoder-asr-mamba2-serial"),
]


@pytest.mark.parametrize("model_class,make_config,make_inputs", FAMILY_CASES)
def test_family_forward_and_backward_match_reference(model_class, make_config, make_inputs):
    """Eval forward (no grad) and train-mode forward + backward (dropout off): every output, the loss and the gradient
    of every parameter match the same weights on CPU with backend "reference"."""
    dev, ref, scan_kernel, backend = build_pair(model_class, make_config())
    inputs = _labels_and_masks(model_class, make_inputs(torch.Generator().manual_seed(1)),
                               torch.Generator().manual_seed(2))
    tf32 = ssd_runs_tf32(scan_kernel, backend)
    fwd_tol, grad_tol = (SSD_TF32_MODEL_FWD_TOL, SSD_TF32_GRAD_TOL) if tf32 else (FWD_TOL, GRAD_TOL)
    what = f"{model_class.__name__} (kernel_backend={backend!r} on {DEVICE})"

    # 1. eval, no grad (on CPU "auto" this is the fused inference path)
    for model in (dev, ref):
        model.eval()
    with torch.no_grad():
        out_dev = _float_outputs(dev(**to_device(inputs)))
        out_ref = _float_outputs(ref(**inputs))
    assert out_dev.keys() == out_ref.keys()
    for name in out_ref:
        assert_close(out_dev[name], out_ref[name], fwd_tol, f"{what}, eval {name}")

    # 2. train mode, forward + backward
    for model in (dev, ref):
        model.train()
    if any(isinstance(m, SwitchMoE) for m in ref.modules()):
        # Sinkhorn routing is discontinuous: the comparison below is meaningful only away from near-ties
        assert min(_routing_margins(ref, inputs)) > 1e-4, "routing near-tie: pick another seed"
    outputs = {}
    for name, model, model_inputs in (("dev", dev, to_device(inputs)), ("ref", ref, inputs)):
        output = model(**model_inputs)
        tensors = _float_outputs(output)
        loss = output.loss if "loss" in tensors else weighted_sum(tensors.values(), seed=5)
        loss.backward()
        outputs[name] = tensors, loss
    (tensors_dev, loss_dev), (tensors_ref, loss_ref) = outputs["dev"], outputs["ref"]
    assert tensors_dev.keys() == tensors_ref.keys()
    for name in tensors_ref:
        assert_close(tensors_dev[name], tensors_ref[name], fwd_tol, f"{what}, train {name}")
    assert_close(loss_dev, loss_ref, fwd_tol, f"{what}, loss")
    params_dev, params_ref = dict(dev.named_parameters()), dict(ref.named_parameters())
    assert params_dev.keys() == params_ref.keys()
    nonzero = sum(assert_grad_close(params_dev[name].grad, p_ref.grad, grad_tol, f"{what}, gradient of {name}")
                  for name, p_ref in params_ref.items())
    assert nonzero > len(params_ref) // 2, f"{what}: only {nonzero} of {len(params_ref)} parameters got a gradient"


def _generation_setups():
    """pytest params (model class, config factory, inputs of generate())."""
    # seed 3: at every reference step the top-1 score leads the runner-up by >= 1.4e-3 x the largest |score| (>= 1e-2
    # for the Mamba-2 models, whose prefill may run in TF32), well clear of the tolerances
    g = torch.Generator().manual_seed(3)
    bm_case = next(c for c in CASES if c.model_class is BlackMambaForCausalLM)
    prompt = torch.randint(2, 61, (2, 6), generator=g)
    speech = {"speech_ids": torch.randint(40, 60, (3, 9), generator=g),
              "speech_attention_mask": (torch.arange(9)[None] < torch.tensor([9, 5, 7])[:, None]).long()}
    return [
        pytest.param(BlackMambaForCausalLM, bm_case.make_config, {"input_ids": prompt}, id="blackmamba"),
        pytest.param(MambaDecoderOnlyASR, lambda: madeon_config("mamba", "parallel"), speech,
                     id="madeon-mamba-parallel"),
        pytest.param(MambaDecoderOnlyASR, lambda: madeon_config("mamba2", "serial"), speech,
                     id="madeon-mamba2-serial"),
        pytest.param(MambaDecoderOnlyASR, lambda: madeon_config("mamba2", "parallel"), speech,
                     id="madeon-mamba2-parallel"),
    ]


@pytest.mark.parametrize("model_class,make_config,gen_inputs", _generation_setups())
def test_cached_greedy_generate_matches_reference(model_class, make_config, gen_inputs):
    """Greedy `generate()` with the cache (prefill, then one step per token) on DEVICE gives the tokens of the CPU
    reference, and per-step scores within tolerance. Tokens may only part where the reference itself is within
    tolerance of a tie (then that row is compared up to there)."""
    dev, ref, scan_kernel, backend = build_pair(model_class, make_config())
    dev.eval()
    ref.eval()
    # the prefill runs the SSD scan (TF32 on mamba-ssm); the steps are exact fp32
    tol = SSD_TF32_MODEL_FWD_TOL if ssd_runs_tf32(scan_kernel, backend) else FWD_TOL
    kwargs = dict(max_new_tokens=8, do_sample=False, num_beams=1, eos_token_id=None, output_scores=True,
                  return_dict_in_generate=True)
    with torch.no_grad():
        out_ref = ref.generate(**gen_inputs, **kwargs)
        out_dev = dev.generate(**to_device(gen_inputs), **kwargs)
    what = f"{model_class.__name__} generate (kernel_backend={backend!r} on {DEVICE})"
    tokens_ref, tokens_dev = out_ref.sequences, out_dev.sequences.cpu()
    assert tokens_dev.shape == tokens_ref.shape and len(out_dev.scores) == len(out_ref.scores) == 8
    start = tokens_ref.shape[1] - 8
    assert torch.equal(tokens_dev[:, :start], tokens_ref[:, :start])
    compared = 0
    for row in range(tokens_ref.shape[0]):
        for step in range(8):
            s_ref, s_dev = out_ref.scores[step][row], out_dev.scores[step][row].cpu()
            finite = torch.isfinite(s_ref)
            assert torch.equal(finite, torch.isfinite(s_dev)), f"{what}: -inf pattern differs at row {row} step {step}"
            assert_close(s_dev[finite], s_ref[finite], tol, f"{what}, scores of row {row} at step {step}")
            compared += 1
            chosen_ref, chosen_dev = tokens_ref[row, start + step], tokens_dev[row, start + step]
            if chosen_ref != chosen_dev:
                gap = (s_ref[chosen_ref] - s_ref[chosen_dev]).item()
                scale = s_ref[finite].abs().max().item()
                assert gap <= 2 * tol * scale, (
                    f"{what}: row {row} step {step} chose token {int(chosen_dev)} instead of {int(chosen_ref)}, "
                    f"whose reference score leads by {gap:.3g} (not a near-tie at scale {scale:.3g})")
                break
    assert compared >= 8


# ----------------------------------------------------------------------------------------------------------------------
# Mixers with widths that causal-conv1d's channel-last kernel does not take
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixer_class,kwargs", [
    pytest.param(Mamba2Mixer, dict(d_model=32, expand=2, headdim=SSD_HEADDIM, d_state=SSD_DSTATE,
                                   chunk_size=SSD_CHUNK), id="mamba2-in_proj-row-164"),
    pytest.param(MambaMixer, dict(d_model=18, expand=2, d_state=8), id="mamba-d_inner-36"),
])
def test_mixers_with_odd_widths(mixer_class, kwargs):
    """Small mixers whose conv input is a channel-last view with a row stride (164) or a channel count (36) that is not
    a multiple of 8: backend "auto" on DEVICE must still run and match the reference (forward and gradients)."""
    torch.manual_seed(0)
    ref = mixer_class(**kwargs, layer_idx=0, backend="reference")
    dev = mixer_class(**kwargs, layer_idx=0, backend="auto")
    dev.load_state_dict(ref.state_dict())
    dev.to(DEVICE)
    scan_kernel = "ssd" if mixer_class is Mamba2Mixer else "selective_scan"
    tf32 = ssd_runs_tf32(scan_kernel, "auto")
    fwd_tol, grad_tol = (SSD_TF32_MODEL_FWD_TOL, SSD_TF32_GRAD_TOL) if tf32 else (FWD_TOL, GRAD_TOL)
    hidden = torch.randn(2, 30, kwargs["d_model"], generator=torch.Generator().manual_seed(1))
    outs = {}
    for name, mixer, device in (("dev", dev, DEVICE), ("ref", ref, "cpu")):
        x = hidden.to(device).requires_grad_()
        out = mixer(x)
        weighted_sum([out], seed=6).backward()
        outs[name] = out, x
    (out_dev, x_dev), (out_ref, x_ref) = outs["dev"], outs["ref"]
    assert_close(out_dev, out_ref, fwd_tol, f"{mixer_class.__name__} output")
    assert_close(x_dev.grad, x_ref.grad, grad_tol, f"{mixer_class.__name__} input gradient")
    params_dev = dict(dev.named_parameters())
    for name, p in ref.named_parameters():
        assert_grad_close(params_dev[name].grad, p.grad, grad_tol, f"{mixer_class.__name__} gradient of {name}")


@pytest.mark.parametrize("reverse", [False, True])
def test_mamba2_time_chunks_on_device_match_one_pass_reference(monkeypatch, reverse):
    """A bidirectional Mamba-2 mixer over a sequence longer than INFERENCE_TIME_CHUNK (no gradients) runs in time
    chunks with the SSD state (`initial_states` / final states of the device's kernel) and conv window carried, the
    backward walker first: on DEVICE with backend "auto" it matches the reference backend's one pass on CPU, with
    uneven chunks (26 steps, SSD chunk 16) and the layer-level reversal."""
    from mamba_zoo import cpu_inference

    torch.manual_seed(0)
    kwargs = dict(d_model=32, expand=2, headdim=SSD_HEADDIM, d_state=SSD_DSTATE, chunk_size=SSD_CHUNK,
                  bidirectional=True)
    ref = Mamba2Mixer(**kwargs, backend="reference").eval()
    dev = Mamba2Mixer(**kwargs, backend="auto").eval()
    dev.load_state_dict(ref.state_dict())
    dev.to(DEVICE)
    hidden = torch.randn(2, 100, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref(hidden, reverse=reverse)
        monkeypatch.setattr(cpu_inference, "INFERENCE_TIME_CHUNK", 26)
        monkeypatch.setattr(cpu_inference, "TIME_CHUNK_TOKENS", 52)  # 26 steps a chunk for 2 rows
        chunked = dev(hidden.to(DEVICE), reverse=reverse)
    tol = SSD_TF32_MODEL_FWD_TOL if ssd_runs_tf32("ssd", "auto") else FWD_TOL
    assert_close(chunked, expected, tol, "time-chunked Mamba-2 output")


# ----------------------------------------------------------------------------------------------------------------------
# bf16 autocast on CUDA
# ----------------------------------------------------------------------------------------------------------------------


def _expert_choices(model, run) -> tuple:
    """`(run(), choices)`: choices holds each MoE layer's expert per token (eval routing: the arg-max router logit)."""
    choices = []
    handles = [m.register_forward_hook(lambda mod, args, out: choices.append(out[1].float().argmax(-1).cpu()))
               for m in model.modules() if isinstance(m, SwitchMoE)]
    try:
        result = run()
    finally:
        for handle in handles:
            handle.remove()
    return result, choices


@pytest.mark.skipif(DEVICE != "cuda", reason="bf16 autocast is checked on CUDA only")
@pytest.mark.parametrize("case_name", ["ssamba-classification", "blackmamba-causal-lm"])
def test_bf16_autocast_forward_is_finite_and_close_to_fp32(case_name):
    case = next(c for c in CASES if c.name == case_name)
    dev, _, _, backend = build_pair(case.model_class, case.make_config())
    dev.eval()
    inputs = to_device(case.make_inputs(torch.Generator().manual_seed(1)))
    with torch.no_grad():
        fp32, experts_fp32 = _expert_choices(dev, lambda: dev(**inputs, output_hidden_states=True))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16, experts_bf16 = _expert_choices(dev, lambda: dev(**inputs, output_hidden_states=True))
    what = f"{case.model_class.__name__} under bf16 autocast (kernel_backend={backend!r})"
    outputs = {"logits": (bf16.logits, fp32.logits), "last hidden state": (bf16.hidden_states[-1],
                                                                            fp32.hidden_states[-1])}
    if experts_fp32:
        # A token routed to another expert (a near-tie flipped by bf16 rounding) changes that token and, through the
        # causal mixers, every later one of its row: compare the positions before the first flip of each row.
        batch, length = inputs["input_ids"].shape
        flipped = torch.zeros(batch, length, dtype=torch.bool)
        for a, b in zip(experts_fp32, experts_bf16):
            flipped |= (a != b).reshape(batch, length)
        valid = (flipped.long().cumsum(1) == 0).to(DEVICE)
        assert valid.float().mean() >= 0.5, f"{what}: bf16 changed the routing of too many tokens"
        outputs = {k: (a[valid], b[valid]) for k, (a, b) in outputs.items()}
    for name, (low, high) in outputs.items():
        assert low.dtype in (torch.bfloat16, torch.float32)
        assert torch.isfinite(low).all(), f"{what}: non-finite {name}"
        error = relative_error(low.float(), high)
        assert error < 5e-2, f"{what}: {name} relative error {error:.3g} vs fp32"
