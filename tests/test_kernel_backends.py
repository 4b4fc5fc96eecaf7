"""kernel_backends: every kernel gives the backend names the same meaning, errors say what to do, fallbacks are logged
once, and a machine without numba (or without the CUDA packages) still runs everything through "auto"."""

import logging
import sys
from types import SimpleNamespace

import pytest
import torch

import mamba_zoo
from mamba_zoo import kernel_backends as kb
from mamba_zoo.kernel_backends import (
    KERNELS,
    KernelBackendUnavailableError,
    available_backends,
    check_backend_name,
    cpu_kernels,
    resolve_backend,
)
from mamba_zoo.selective_scan import selective_scan_fn, selective_scan_reference

# resolve_backend only reads `.device.type`, so a stand-in is enough to play a CUDA tensor on a CPU-only machine.
FAKE_CUDA_TENSOR = SimpleNamespace(device=torch.device("cuda"))
NUMBA = cpu_kernels() is not None


@pytest.fixture
def fresh_log(monkeypatch):
    """Forget which fallbacks were already logged, so this test sees its own first warning."""
    monkeypatch.setattr(kb, "_fallback_logged", set())


def fallback_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == kb.__name__ and r.levelno == logging.WARNING]


@pytest.mark.skipif(not NUMBA, reason="the selective scan's 'cpu' backend needs numba")
@pytest.mark.parametrize("backend", ["auto", "cpu", "reference"])
def test_every_kernel_resolves_a_name_the_same_way_on_cpu_tensors(backend):
    x = torch.zeros(2, 3)
    resolved = {kernel: resolve_backend(kernel, x, None, backend=backend) for kernel in KERNELS}
    assert set(resolved.values()) == {"cpu" if backend == "auto" else backend}, resolved
    for kernel in KERNELS:
        assert available_backends(kernel, "cpu") == ("cpu", "reference")


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_available_backends_are_exactly_the_explicit_names_that_resolve(kernel):
    x = torch.zeros(2)
    for backend in ("cuda", "cpu", "reference"):
        if backend in available_backends(kernel, "cpu"):
            assert resolve_backend(kernel, x, backend=backend) == backend
        else:
            with pytest.raises(KernelBackendUnavailableError):
                resolve_backend(kernel, x, backend=backend)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_unknown_names_raise_value_error_naming_the_choices(kernel):
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'cuda', 'cpu', 'reference'; got 'triton'"):
        resolve_backend(kernel, torch.zeros(1), backend="triton")
    with pytest.raises(ValueError, match="kernel must be one of"):
        resolve_backend("conv2d", torch.zeros(1))
    with pytest.raises(ValueError, match="kernel_backend must be one of 'auto', 'cuda', 'cpu', 'reference'"):
        check_backend_name("gpu", "kernel_backend")
    check_backend_name("reference", "kernel_backend")  # valid names pass silently


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_explicit_cuda_on_cpu_tensors_raises_an_actionable_error(kernel):
    with pytest.raises(KernelBackendUnavailableError, match=rf"backend='cuda' for {kernel} needs CUDA tensors") as info:
        resolve_backend(kernel, torch.zeros(1), backend="cuda")
    assert isinstance(info.value, RuntimeError)  # existing `except RuntimeError` handlers keep working
    assert ".to('cuda')" in str(info.value) and "backend='auto'" in str(info.value)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_cuda_tensors_without_the_packages(kernel, monkeypatch, fresh_log, caplog):
    """"auto" falls back to the fastest plain-PyTorch path and warns once; explicit "cuda" says what to install;
    explicit "cpu" refuses CUDA tensors for every kernel, even where auto may run the PyTorch "cpu" path on them."""
    monkeypatch.setattr(kb, "cuda_kernels", lambda name: None)
    expected = "reference" if kernel == "selective_scan" else "cpu"
    with caplog.at_level(logging.WARNING):
        assert [resolve_backend(kernel, FAKE_CUDA_TENSOR, backend="auto") for _ in range(3)] == [expected] * 3
    (message,) = fallback_warnings(caplog)
    assert kernel in message and "falls back" in message and "pip install mamba-zoo[cuda]" in message
    with pytest.raises(KernelBackendUnavailableError, match=r"pip install mamba-zoo\[cuda\]"):
        resolve_backend(kernel, FAKE_CUDA_TENSOR, backend="cuda")
    with pytest.raises(KernelBackendUnavailableError, match="runs on CPU tensors only"):
        resolve_backend(kernel, FAKE_CUDA_TENSOR, backend="cpu")
    assert resolve_backend(kernel, FAKE_CUDA_TENSOR, backend="reference") == "reference"


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_cuda_tensors_with_the_packages_resolve_to_cuda(kernel, monkeypatch):
    monkeypatch.setattr(kb, "cuda_kernels", lambda name: (object(), object()))
    assert resolve_backend(kernel, FAKE_CUDA_TENSOR, torch.zeros(1)) == "cuda"  # mixed devices: CUDA decides
    assert resolve_backend(kernel, FAKE_CUDA_TENSOR, backend="cuda") == "cuda"
    assert "cuda" in available_backends(kernel, "cuda")


@pytest.fixture
def numba_blocked(monkeypatch):
    """`import numba` fails and cpu_scan_kernels is imported afresh, as on a machine without numba; the loader's
    cache is cleared before, and after (before monkeypatch puts the real modules back)."""
    cpu_kernels.cache_clear()
    monkeypatch.setitem(sys.modules, "numba", None)  # None in sys.modules makes `import numba` raise ImportError
    monkeypatch.delitem(sys.modules, "mamba_zoo.cpu_scan_kernels", raising=False)
    monkeypatch.setattr(mamba_zoo, "cpu_scan_kernels", mamba_zoo.cpu_scan_kernels)  # the re-import rebinds it
    yield
    cpu_kernels.cache_clear()


def test_without_numba_auto_falls_back_to_reference_with_one_warning(numba_blocked, fresh_log, caplog):
    assert cpu_kernels() is None
    assert available_backends("selective_scan", "cpu") == ("reference",)
    gen = torch.Generator().manual_seed(0)
    inputs = dict(u=torch.randn(1, 2, 5, generator=gen), delta=torch.rand(1, 2, 5, generator=gen),
                  A=-torch.rand(2, 3, generator=gen), B=torch.randn(1, 3, 5, generator=gen),
                  C=torch.randn(1, 3, 5, generator=gen))
    with caplog.at_level(logging.WARNING):
        assert [resolve_backend("selective_scan", inputs["u"]) for _ in range(3)] == ["reference"] * 3
        out = selective_scan_fn(**inputs)
        # The PyTorch "cpu" paths of the other kernels do not need numba: no fallback, no warning.
        assert resolve_backend("causal_conv1d", inputs["u"]) == resolve_backend("ssd", inputs["u"]) == "cpu"
    (message,) = fallback_warnings(caplog)
    assert "selective_scan" in message and "pip install numba" in message
    assert torch.equal(out, selective_scan_reference(**inputs))
    with pytest.raises(KernelBackendUnavailableError, match="needs numba .*pip install numba"):
        resolve_backend("selective_scan", inputs["u"], backend="cpu")
