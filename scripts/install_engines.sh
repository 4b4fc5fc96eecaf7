#!/usr/bin/env bash
# Install the speech synthesis engines beside espeak-ng (which comes with pip): Festival and its three English voices
# (Debian packages), SAM (Node.js from Debian, sam-js from npm into ~/.cache/mamba_zoo/engines) and SVOX Pico
# (`ttspico` from PyPI, compiled here: gcc and Python's headers from Debian).
#
#   bash scripts/install_engines.sh [PYTHON]
#
# Pico goes into PYTHON's environment: by default the `python3` of the active virtual environment; with neither a
# PYTHON argument nor an active virtual environment Pico is skipped, saying so.
# Uses sudo when not root. `python -m mamba_zoo.corpora engines` tells what speaks afterwards.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
PYTHON="${1:-}"
if [ -z "$PYTHON" ] && [ -n "${VIRTUAL_ENV:-}" ]; then PYTHON="python3"; fi
if command -v apt-get >/dev/null; then
    packages="festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts gcc libc6-dev python3-dev"
    # Node.js builds that bundle npm (nodesource's) conflict with Debian's npm package: add it only when missing.
    command -v npm >/dev/null || packages="$packages nodejs npm"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $packages >/dev/null
else
    echo "No apt-get here: install Festival (+ voices kal_diphone, ked_diphone, cmu_us_slt_arctic_hts), Node.js" \
         "and a C compiler with Python's headers with your package manager." >&2
fi
npm install --silent --prefix "$HOME/.cache/mamba_zoo/engines" sam-js@0.3.1 >/dev/null
if [ -n "$PYTHON" ]; then
    "$PYTHON" -m pip install -q ttspico==0.3.2
    pico="pico $("$PYTHON" -m pip show ttspico 2>/dev/null | sed -n 's/^Version: //p')"
else
    pico="pico skipped (no virtual environment active: pass its python, e.g. bash scripts/install_engines.sh .venv/bin/python)"
fi
echo "speech engines installed: $(festival --version 2>/dev/null | head -1); node $(node --version); $pico"
