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


def run_fresh(script: str, args: list[str]) -> tuple[Optional[dict], str]:
    """Run `python script *args` in a new process; its last stdout line is a JSON row. Returns `(row, "")`, or
    `(None, the last line of its stderr)` when it failed."""
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"exit code {done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1]), ""
