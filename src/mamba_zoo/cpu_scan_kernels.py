"""Fused CPU selective-scan kernels (numba). Work in progress: not available yet."""


def is_available() -> bool:
    """True when numba imports and the kernels can run."""
    return False
