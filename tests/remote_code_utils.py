"""Run Python code in a fresh process in which `import mamba_zoo` fails, to prove that a saved checkpoint loads with
`trust_remote_code=True` on a machine that never installed mamba-zoo (the Hub convention for out-of-tree models)."""

import os
import subprocess
import sys
import textwrap

_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class _BlockMambaZoo(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mamba_zoo" or name.startswith("mamba_zoo."):
                raise ImportError("mamba_zoo is hidden in this process (remote-code test)")
            return None

    sys.meta_path.insert(0, _BlockMambaZoo())
    sys.path = [p for p in sys.path if not p.rstrip("/").endswith("/src")]
    """
)


def run_without_mamba_zoo(code: str, hf_home: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `code` in a subprocess where mamba_zoo cannot be imported; HF_HOME points at `hf_home` (remote code
    modules are copied there). Raises AssertionError with the subprocess output if it fails or runs past `timeout`
    seconds (it compiles the numba kernels afresh, which alone takes minutes on a heavily loaded machine)."""
    env = dict(os.environ, HF_HOME=hf_home, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH="")
    script = _BLOCKER + "\n" + textwrap.dedent(code)
    try:
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired as error:
        output = {name: (raw.decode(errors="replace") if isinstance(raw, bytes) else raw or "")
                  for name, raw in (("STDOUT", error.stdout), ("STDERR", error.stderr))}
        raise AssertionError(f"remote-code subprocess still running after {timeout} s (a loaded machine compiles the "
                             f"numba kernels slowly); its output so far:\nSTDOUT:\n{output['STDOUT']}\n"
                             f"STDERR:\n{output['STDERR']}") from None
    if result.returncode != 0:
        raise AssertionError(f"remote-code subprocess failed:\nSTDOUT:\n{result.stdout}\nSTDERR:\n{result.stderr}")
    return result
