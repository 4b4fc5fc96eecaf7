#!/usr/bin/env bash
# The whole GPU check in one run (about 10 minutes on one H200), for a machine that has a CUDA GPU, nvcc and
# PyTorch but may have no network:
#   1. installs the Python packages mamba-zoo needs from wheels in PKG_DIR (pip --no-index --find-links);
#   2. builds causal-conv1d and mamba-ssm from their sdists in PKG_DIR, for this GPU's architecture only (the sdists
#      build for eight architectures by default, which takes far longer), in the background;
#   3. meanwhile runs the CUDA parity tests with backend "auto" and no packages (the plain-PyTorch route on CUDA);
#   4. once the builds end, runs every cuda-marked test again with the compiled kernels (explicit backend="cuda":
#      selective_scan, causal_conv1d, ssd; all four families fwd, bwd, cached decode);
#   5. runs the SSAMBA-tiny vs AST benchmark on CUDA up to 22k tokens (the SSAMBA paper's efficiency point), against
#      AST with sdpa and with eager attention (SSAST's).
#
# Prepare PKG_DIR on a machine with PyPI (Python version and platform of the GPU machine):
#   mkdir -p .gpu && cd .gpu
#   curl -sLO <mamba_ssm-X.tar.gz URL> && curl -sLO <causal_conv1d-Y.tar.gz URL>     # or: pip download --no-binary
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d . "transformers>=5.24" soundfile
# Usage (from the repository root):  bash benchmarks/gpu_check.sh [PKG_DIR=.gpu]
# Results: $OUT (or ./gpu_check_out): summary.txt, pip and build logs, test logs, bench json (8 files).
set -uo pipefail
cd "$(dirname "$0")/.."
PKG_DIR=$(realpath "${1:-.gpu}")
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
note() { echo "== $*" | tee -a "$SUMMARY"; }
start=$SECONDS

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$SUMMARY"
nvcc --version | tail -1 | tee -a "$SUMMARY"
ARCH=$(python3 -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}{n}')")
NCPU=$(nproc)

# 1. Python packages (kept where already installed at a satisfying version).
python3 -m pip install -q --no-index --find-links "$PKG_DIR" "transformers>=5.24" soundfile >"$OUT/pip.log" 2>&1 \
    && note "python packages: $(python3 -c 'import transformers; print("transformers", transformers.__version__)')" \
    || note "python packages: install FAILED (see pip.log)"

# 2. Build the CUDA packages for sm_$ARCH only, both at once, half the cores each.
build() {  # build NAME FORCE_BUILD_VARIABLE
    local name=$1 force=$2 src
    src=$(ls "$PKG_DIR"/"$name"-*.tar.gz 2>/dev/null | head -1)
    [ -n "$src" ] || { echo "no $name sdist in $PKG_DIR"; return 1; }
    rm -rf "/tmp/build-$name" && mkdir -p "/tmp/build-$name" && tar xzf "$src" -C "/tmp/build-$name" --strip-components 1
    # Keep the -gencode flags for this GPU only (the sdists list sm_75 ... sm_121).
    python3 - "/tmp/build-$name/setup.py" "$ARCH" <<'EOF'
import sys
path, arch = sys.argv[1], sys.argv[2]
text = open(path).read()
anchor = "    if FORCE_CXX11_ABI:"
assert anchor in text, "setup.py layout changed: no FORCE_CXX11_ABI block to anchor the architecture patch"
patch = (f"    cc_flag = [f for f in cc_flag if f != '-gencode' and not f.startswith('arch=')]"
         f" + ['-gencode', 'arch=compute_{arch},code=sm_{arch}']\n")
open(path, "w").write(text.replace(anchor, patch + anchor, 1))
EOF
    (cd "/tmp/build-$name" && env "$force=TRUE" MAX_JOBS=$((NCPU / 2)) TORCH_CUDA_ARCH_LIST="${ARCH:0:1}.${ARCH:1}" \
        timeout "${BUILD_TIMEOUT:-360}" python3 -m pip install -v --no-build-isolation --no-deps --no-index . )
}
# Full logs stay in /tmp; their last 2 MB come back in $OUT (nvcc's --ptxas-options=-v is wordy).
(build causal_conv1d CAUSAL_CONV1D_FORCE_BUILD >/tmp/build_causal_conv1d.log 2>&1; echo $? >/tmp/rc_conv
 tail -c 2000000 /tmp/build_causal_conv1d.log >"$OUT/build_causal_conv1d.log") &
(build mamba_ssm MAMBA_FORCE_BUILD >/tmp/build_mamba_ssm.log 2>&1; echo $? >/tmp/rc_ssm
 tail -c 2000000 /tmp/build_mamba_ssm.log >"$OUT/build_mamba_ssm.log") &

# 3. Meanwhile: the families on CUDA with no compiled packages ("auto" falls back to PyTorch).
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_parity.py >"$OUT/tests_without_packages.log" 2>&1
note "cuda tests, no packages: $(tail -1 "$OUT/tests_without_packages.log") ($((SECONDS - start)) s)"

wait
note "build causal-conv1d: rc $(cat /tmp/rc_conv), build mamba-ssm: rc $(cat /tmp/rc_ssm) ($((SECONDS - start)) s)"
python3 - <<'EOF' 2>&1 | tee -a "$SUMMARY"
from mamba_zoo.kernel_backends import available_backends
for kernel in ("selective_scan", "causal_conv1d", "ssd"):
    print(f"   {kernel}: backends on cuda {available_backends(kernel, 'cuda')}")
EOF

# 4. Every cuda-marked test, now with the compiled kernels where they built.
python3 -m pytest -q -p no:cacheprovider -m cuda -rs tests/test_cuda_parity.py tests/test_selective_scan.py >"$OUT/tests_with_packages.log" 2>&1
note "cuda tests, with packages: $(tail -1 "$OUT/tests_with_packages.log") ($((SECONDS - start)) s)"
grep -E "FAILED|SKIPPED|Error" "$OUT/tests_with_packages.log" | head -30 | tee -a "$SUMMARY"

# 5. SSAMBA-tiny vs AST on CUDA. Without mamba-ssm the scan would run in PyTorch: stop at 2k tokens then.
if python3 -c "import mamba_ssm" 2>/dev/null; then TOKENS="512 2048 8192 22016"; else TOKENS="512 2048"; fi
# (8 files come back from a device run: no plots.) Eager attention (SSAST's) only at the ends of the range.
timeout 120 python3 benchmarks/bench_ssamba_vs_ast.py --device cuda --tokens $TOKENS --ast-attn sdpa \
    --repeats 5 --json "$OUT/bench_cuda_sdpa.json" --plot "" 2>&1 | tee -a "$SUMMARY"
timeout 75 python3 benchmarks/bench_ssamba_vs_ast.py --device cuda --tokens ${TOKENS%% *} ${TOKENS##* } \
    --ast-attn eager --repeats 5 --json "$OUT/bench_cuda_eager.json" --plot "" 2>&1 | tee -a "$SUMMARY"
note "done in $((SECONDS - start)) s"
