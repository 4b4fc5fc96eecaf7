"""Kernel backends: the one place for backend names, their resolution, errors and fallback logging.

Every kernel of mamba-zoo takes ``backend="auto" | "cuda" | "cpu" | "reference"`` and these words mean the same
thing for all of them (the configs' ``kernel_backend`` uses the same words):

===============  ======================================  =================================  ===========================
backend          ``selective_scan``                      ``causal_conv1d``                  ``ssd`` (Mamba-2)
===============  ======================================  =================================  ===========================
``"cuda"``       mamba-ssm's CUDA scan (+ Triton step)   the causal-conv1d package          mamba-ssm's Triton kernels
``"cpu"``        our fused numba kernel (needs numba)    PyTorch's depthwise ``F.conv1d``   chunked PyTorch SSD scan
``"reference"``  PyTorch loop over time (the oracle)     the same PyTorch code as ``cpu``   PyTorch loop over time
===============  ======================================  =================================  ===========================

An explicit backend either runs or raises :class:`KernelBackendUnavailableError` saying what to install or where to
move the tensors: ``"cuda"`` needs CUDA tensors and the package's kernels, ``"cpu"`` needs CPU tensors (and numba for
``selective_scan``), ``"reference"`` always runs. ``"auto"`` never raises; it picks:

==================================  ======================  =================  =================
tensors                             ``selective_scan``      ``causal_conv1d``  ``ssd``
==================================  ======================  =================  =================
on CUDA, package imports            cuda                    cuda               cuda
on CUDA, package missing            reference (warning)     cpu (warning)      cpu (warning)
on CPU, numba installed             cpu                     cpu                cpu
on CPU, no numba                    reference (warning)     cpu                cpu
on another device (mps, ...)        reference               cpu                cpu
==================================  ======================  =================  =================

So "auto" may pick ``"cpu"`` for CUDA tensors: for ``causal_conv1d`` and ``ssd`` that path is plain PyTorch and runs
on any device, and it is the fastest one left. An explicit ``"cpu"`` still promises CPU tensors for every kernel, so
a config that says ``kernel_backend="cpu"`` fails the same way whichever kernel it reaches. Each fallback is logged
once per (kernel, reason), at WARNING. Optional packages are imported lazily, and only inside ``try`` blocks (see
the loaders: transformers' remote-code loader is strict about imports).
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Iterable, Optional, Tuple, Union

import torch


logger = logging.getLogger(__name__)

BACKENDS = ("cuda", "cpu", "reference")
BACKEND_CHOICES = ("auto",) + BACKENDS


class KernelBackendUnavailableError(RuntimeError):
    """An explicit backend cannot run here (package missing, tensors on the wrong device); a RuntimeError, so that
    existing ``except RuntimeError`` handlers keep working."""


@dataclass(frozen=True)
class _Kernel:
    """Where a kernel's CUDA functions live, and whether its "cpu" backend needs numba; see the module docstring."""

    cuda_package: str  # pip name of the package with the CUDA kernels (shipped by `pip install mamba-zoo[cuda]`)
    cuda_sequence: Tuple[str, str]  # (module, attribute) of the whole-sequence CUDA function
    cuda_step: Tuple[str, str]  # (module, attribute) of the one-step (decoding) CUDA function
    cpu_needs_numba: bool  # True: "cpu" is our numba kernel; False: plain PyTorch, which runs on any device


_MAMBA_SSM_STEP = ("mamba_ssm.ops.triton.selective_state_update", "selective_state_update")
KERNELS = {
    "selective_scan": _Kernel("mamba-ssm", ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
                              _MAMBA_SSM_STEP, cpu_needs_numba=True),
    "causal_conv1d": _Kernel("causal-conv1d", ("causal_conv1d", "causal_conv1d_fn"),
                             ("causal_conv1d", "causal_conv1d_update"), cpu_needs_numba=False),
    "ssd": _Kernel("mamba-ssm", ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"),
                   _MAMBA_SSM_STEP, cpu_needs_numba=False),
}


def _kernel(kernel: str) -> _Kernel:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {tuple(KERNELS)}, got {kernel!r}.")
    return KERNELS[kernel]


def check_backend_name(name: str, argument: str = "backend") -> None:
    """Raise ValueError naming ``argument`` and the valid choices unless ``name`` is one of :data:`BACKEND_CHOICES`."""
    if name not in BACKEND_CHOICES:
        choices = ", ".join(repr(choice) for choice in BACKEND_CHOICES)
        raise ValueError(f"{argument} must be one of {choices}; got {name!r}.")


# ----------------------------------------------------------------------------------------------
# Lazy, cached kernel loaders
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def cuda_kernels(kernel: str) -> Optional[Tuple[Callable, Optional[Callable]]]:
    """``(sequence_fn, step_fn)`` of ``kernel``'s CUDA package, or ``None`` without CUDA or when the package does not
    import. ``step_fn`` is ``None`` when only the step fails to import (Triton missing); the step then runs in
    PyTorch. Imported by name (``importlib``): transformers' remote-code loader refuses a module whose imports
    outside ``try`` blocks name a package that is not installed."""
    spec = _kernel(kernel)
    if not torch.cuda.is_available():
        return None
    try:
        sequence_fn = getattr(importlib.import_module(spec.cuda_sequence[0]), spec.cuda_sequence[1])
    except Exception:  # ImportError, or the compiled extension failing to load
        return None
    try:
        step_fn = getattr(importlib.import_module(spec.cuda_step[0]), spec.cuda_step[1])
    except Exception:
        step_fn = None
    return sequence_fn, step_fn


@functools.lru_cache(maxsize=None)
def cpu_kernels() -> Optional[SimpleNamespace]:
    """The fused CPU kernels (``selective_scan_cpu``, ``selective_state_update_cpu``, the time-major inference
    kernels and ``inference_kernels_enabled``) if numba is installed, else ``None``. The import is written
    ``from .cpu_scan_kernels import ...`` on purpose: transformers' remote-code loader only copies sibling modules
    imported that way, so a Hub checkpoint keeps its fused CPU path."""
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


# ----------------------------------------------------------------------------------------------
# Resolution
# ----------------------------------------------------------------------------------------------


def _why_unavailable(kernel: str, backend: str, devices: Optional[Iterable[str]]) -> Optional[str]:
    """``None`` if ``backend`` can run ``kernel`` on tensors of these device types (``None``: on the device the
    backend wants), else an error message saying what to do."""
    spec = _kernel(kernel)
    request = f"backend={backend!r} for {kernel}"
    devices = None if devices is None else sorted(set(devices))
    if backend == "cuda":
        if devices is not None and "cuda" not in devices:
            return (f"{request} needs CUDA tensors; these are on {devices}. Move the model and inputs with "
                    ".to('cuda'), or use backend='auto'.")
        if cuda_kernels(kernel) is None:
            return (f"{request} needs {spec.cuda_package}'s CUDA kernels, which did not import here. Install them on "
                    f"a CUDA machine with `pip install mamba-zoo[cuda]`, or use backend='auto'.")
    elif backend == "cpu":
        if devices is not None and devices != ["cpu"]:
            return (f"{request} runs on CPU tensors only; these are on {devices}. Move them with .cpu(), or use "
                    "backend='auto' (or 'reference') on other devices.")
        if spec.cpu_needs_numba and cpu_kernels() is None:
            return (f"{request} needs numba for the fused CPU kernel: `pip install numba`, or use backend='auto' "
                    "(which falls back to the PyTorch reference).")
    return None


_fallback_logged = set()


def _log_fallback_once(kernel: str, reason: str, message: str) -> None:
    """Warn once per (kernel, reason): a model calls its kernels in every layer and every step."""
    if (kernel, reason) not in _fallback_logged:
        _fallback_logged.add((kernel, reason))
        logger.warning(message)


def resolve_backend(kernel: str, *tensors: Optional[torch.Tensor], backend: str = "auto") -> str:
    """The backend that runs ``kernel`` on these tensors: ``"cuda"``, ``"cpu"`` or ``"reference"``.

    Args:
        kernel: ``"selective_scan"``, ``"causal_conv1d"`` or ``"ssd"``.
        tensors: the call's tensors (``None`` entries are skipped); only their devices matter.
        backend: ``"auto"``, or an explicit backend, returned as is when it can run.

    Raises ValueError for an unknown name and :class:`KernelBackendUnavailableError` for an explicit backend that
    cannot run here. ``"auto"`` follows the module docstring's table and logs each fallback once.
    """
    check_backend_name(backend)
    spec = _kernel(kernel)
    devices = {t.device.type for t in tensors if t is not None} or {"cpu"}
    if backend != "auto":
        reason = _why_unavailable(kernel, backend, devices)
        if reason is not None:
            raise KernelBackendUnavailableError(reason)
        return backend

    if devices == {"cpu"}:
        # the same condition as `_why_unavailable(kernel, "cpu", ...)`, without building its messages: models resolve
        # in every layer and every decoding step
        if not spec.cpu_needs_numba or cpu_kernels() is not None:
            return "cpu"
        _log_fallback_once(kernel, "no numba", f"numba is not installed; {kernel} on CPU tensors falls back to the "
                                               "slow PyTorch reference. Install it with `pip install numba`.")
        return "reference"
    if "cuda" in devices and cuda_kernels(kernel) is not None:
        return "cuda"
    # No fused kernel for this device: the fastest plain-PyTorch path.
    fallback = "reference" if spec.cpu_needs_numba else "cpu"
    if "cuda" in devices:
        _log_fallback_once(kernel, "no cuda kernels",
                           f"{spec.cuda_package}'s CUDA kernels did not import; {kernel} on CUDA tensors falls back "
                           f"to the slower PyTorch backend {fallback!r}. Install them with "
                           "`pip install mamba-zoo[cuda]`.")
    return fallback


def available_backends(kernel: str = "selective_scan",
                       device: Union[str, torch.device, None] = None) -> Tuple[str, ...]:
    """The explicit backends that can run ``kernel`` here (for tensors on ``device``, if given), best first.
    ``"reference"`` is always among them."""
    devices = None if device is None else [torch.device(device).type]
    return tuple(name for name in BACKENDS if _why_unavailable(kernel, name, devices) is None)
