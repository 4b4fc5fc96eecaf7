#!/usr/bin/env bash
# Install the speech synthesis engines beside espeak-ng (which comes with pip): Festival and its three English voices
# (Debian packages) and SAM (Node.js from Debian, sam-js from npm into ~/.cache/mamba_zoo/engines).
# Uses sudo when not root. `python -m mamba_zoo.corpora engines` tells what speaks afterwards.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
    packages="festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"
    # Node.js builds that bundle npm (nodesource's) conflict with Debian's npm package: add it only when missing.
    command -v npm >/dev/null || packages="$packages nodejs npm"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $packages >/dev/null
else
    echo "No apt-get here: install Festival (+ voices kal_diphone, ked_diphone, cmu_us_slt_arctic_hts) and Node.js" \
         "with your package manager." >&2
fi
npm install --silent --prefix "$HOME/.cache/mamba_zoo/engines" sam-js@0.3.1 >/dev/null
echo "speech engines installed: $(festival --version 2>/dev/null | head -1); node $(node --version)"
