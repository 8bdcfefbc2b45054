#!/usr/bin/env bash
# Builds the extension against several torch releases and runs the op tests on each.
#
#   bash scripts/torch_matrix.sh [VERSION ...]      (default: 2.11.0 2.13.0 2.15.0)
#
# Each version gets its own virtual environment and its own copy of the source tree under
# $LATEINT_MATRIX_DIR (default ~/.cache/lateint/torch-matrix), so the checkout's own build is
# left alone. Needs network access to the package registries and ~6 GB of disk per CUDA
# wheel (PyPI's Linux wheels of torch are CUDA builds; the extension is built CPU-only,
# LATEINT_USE_CUDA=0). The machine's pip constraints file may cap torch; the newest release
# is installed with it lifted for this environment only. The Triton tests are left out
# (-k "not triton and not cuda_path_logic"): they exercise the Triton release each torch pins, through its CPU
# interpreter, not the extension's build. One summary line per version goes to stdout and
# to $LATEINT_MATRIX_DIR/summary.txt; the full logs lie beside it.
set -uo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
ROOT=${LATEINT_MATRIX_DIR:-$HOME/.cache/lateint/torch-matrix}
VERSIONS=("$@")
[ ${#VERSIONS[@]} -eq 0 ] && VERSIONS=(2.11.0 2.13.0 2.15.0)
OP_TESTS="tests/test_maxsim.py tests/test_pool.py tests/test_pool_variants.py tests/test_codec.py tests/test_kmeans.py tests/test_plaid.py tests/test_isa_layer.py"
mkdir -p "$ROOT"
: > "$ROOT/summary.txt"
NO_CONSTRAINTS="$ROOT/no-constraints.txt"   # an empty constraints file: lifts a machine-wide cap
: > "$NO_CONSTRAINTS"

for v in "${VERSIONS[@]}"; do
    env_dir="$ROOT/venv-$v"; tree="$ROOT/src-$v"; log="$ROOT/log-$v.txt"
    : > "$log"
    echo "== torch $v ==" | tee -a "$log"
    status="ok"; line=""
    if [ ! -x "$env_dir/bin/python" ]; then
        python3 -m venv "$env_dir" >>"$log" 2>&1 || status="venv failed"
    fi
    py="$env_dir/bin/python"
    if [ "$status" = ok ]; then
        PIP_CONSTRAINT="$NO_CONSTRAINTS" "$py" -m pip install -q "torch==$v" numpy ninja pybind11 "setuptools>=64" wheel \
            pytest scipy hypothesis tqdm >>"$log" 2>&1 || status="install failed"
    fi
    if [ "$status" = ok ]; then
        rm -rf "$tree" && mkdir -p "$tree"
        git ls-files -z | xargs -0 cp --parents -t "$tree"
        (cd "$tree" && LATEINT_USE_CUDA=0 "$py" setup.py -q build_ext --inplace >>"$log" 2>&1) || status="build failed"
    fi
    if [ "$status" = ok ]; then
        (cd "$tree" && "$py" -c "import lateint_kernels as lk; assert lk.NATIVE_LOADED, lk.NATIVE_ERROR; print('native', lk.cpu_isa())" >>"$log" 2>&1) \
            || status="import failed"
    fi
    if [ "$status" = ok ]; then
        (cd "$tree" && "$py" -m pytest $OP_TESTS -q -p no:cacheprovider -k "not triton and not cuda_path_logic" >>"$log" 2>&1) || status="tests failed"
        line=$(grep -E "[0-9]+ (passed|failed)" "$log" | tail -1)
    fi
    torch_v=$("$py" -c "import torch; print(torch.__version__)" 2>/dev/null || echo "?")
    echo "torch $v (installed $torch_v): $status; ${line:-no test run}" | tee -a "$ROOT/summary.txt"
done
