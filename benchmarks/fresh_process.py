"""What the long-input benchmarks share: the resident set now, and one measurement in a fresh Python process (so
that each row's peak memory is its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    """This process's resident set now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_fresh(script: str, args: list[str], timeout: Optional[float] = None) -> tuple[Optional[dict], str]:
    """Run `python script *args` in a new process; its last stdout line is a JSON row. Returns `(row, "")`, or
    `(None, the last line of its stderr)` when it failed (`(None, "timed out after N s")` past `timeout` seconds)."""
    try:
        done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=ROOT,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:g} s"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"exit code {done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1]), ""


class forced_long_input_paths:
    """Within this context, inputs of any length take the long-input code paths (time-chunked mixers, the blocked
    CTC subsampler and SSAMBA patch embedding): a warm-up on a short clip then compiles the numba specialisations
    those paths use, so that the timed call measures the forward and not the first compilation on this machine."""

    SETTINGS = (("cpu_inference", "INFERENCE_TIME_CHUNK", 16), ("modeling_mamba_ctc", "SUBSAMPLING_BLOCK_OUTPUTS", 4),
                ("modeling_ssamba", "PATCH_BLOCK_COLUMNS", 4))

    def __enter__(self):
        import importlib

        self._saved = []
        for module_name, name, value in self.SETTINGS:
            module = importlib.import_module(f"mamba_zoo.{module_name}")
            self._saved.append((module, name, getattr(module, name)))
            setattr(module, name, value)
        return self

    def __exit__(self, *exc):
        for module, name, value in self._saved:
            setattr(module, name, value)
        return False
