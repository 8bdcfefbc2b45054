#!/usr/bin/env bash
# On a machine with a CUDA GPU and torch+triton installed: build with CUDA, check that C++
# errors raise (not crash), run the test suite (CUDA and Triton tests included) and the GPU
# benchmarks. Logs go to ${OUT:-.}. Pass LATEINT_COMMIT=<sha> when the tree arrives without
# .git (the device tool). GPU_BENCH="maxsim ops" picks the benchmarks (default both).
#
# The build uses the system compiler (/usr/bin/g++): the lent machines' image exports
# CXX=/opt/gcc/bin/g++, which torch's extension builder takes for compiling and linking; the
# extension then carried its own copy of libstdc++'s ostream code, and every TORCH_CHECK
# failure raised from it segfaulted while formatting its message (docs/design-notes.md).
set -uo pipefail
OUT=${OUT:-.}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import sys, sysconfig, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'sysconfig CXX', sysconfig.get_config_var('CXX'))" | tee -a "$OUT/gpu.txt"
g++ --version | head -1 | tee -a "$OUT/gpu.txt"
echo "image CXX=${CXX:-unset} CC=${CC:-unset}" | tee -a "$OUT/gpu.txt"
export MAX_JOBS=${MAX_JOBS:-16}
if [ -z "${LATEINT_KEEP_CXX:-}" ] && [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
SECONDS=0
LATEINT_USE_CUDA=1 LATEINT_CUDA_ARCH=${LATEINT_CUDA_ARCH:-90} python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
echo "build ${SECONDS}s with $(grep -m1 -o '^\[1/[0-9]*\] [^ ]*' "$OUT/build.log")"
so=$(ls lateint_kernels/_C*.so)
echo "libstdc++ linked: $(ldd "$so" | grep -o 'libstdc++[^ ]* => [^ ]*'); ostream code inside the .so: $(nm -C --defined-only "$so" | grep -c '_M_insert<long>')" | tee -a "$OUT/gpu.txt"
export PYTHONPATH=$PWD:$PWD/python${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import lateint_kernels as lk; print('native', lk.NATIVE_LOADED, {op: lk.backend_for(op, 'cuda') for op in ('maxsim', 'maxsim_backward', 'token_pool', 'kmeans_assign', 'compress_residuals', 'decompress_residuals', 'ivf_candidates', 'approx_scores', 'decompress_maxsim')})" | tee -a "$OUT/gpu.txt"
python3 -X faulthandler scripts/throw_probe.py > "$OUT/throw_probe.log" 2>&1
rc=$?; head -12 "$OUT/throw_probe.log"; echo "throw probe rc=$rc"
if [ $rc -ne 0 ] && command -v cuda-gdb >/dev/null; then
  timeout 120 cuda-gdb -q -batch -ex run -ex bt --args python3 scripts/throw_probe.py > "$OUT/gdb.log" 2>&1
  grep -A25 "SIGSEGV\|SIGABRT" "$OUT/gdb.log" | grep "^#" | head -25
fi
SECONDS=0
timeout "${PYTEST_TIMEOUT:-240}" python3 -m pytest tests -q -p no:cacheprovider -n "${PYTEST_WORKERS:-8}" -rfE -k "${PYTEST_K:-}" \
  2>&1 | tee "$OUT/pytest.log" | grep -E "^(FAILED|ERROR)|passed|failed" | tail -30
echo "pytest ${SECONDS}s"
for b in ${GPU_BENCH:-maxsim ops}; do
  SECONDS=0
  case $b in
    maxsim) LATEINT_COMMIT=${LATEINT_COMMIT:-unknown} timeout 150 python3 bench/bench_maxsim_gpu.py 2>&1 | tee "$OUT/bench_maxsim_gpu.log" | tail -28 ;;
    ops) LATEINT_COMMIT=${LATEINT_COMMIT:-unknown} timeout 240 python3 bench/bench_gpu_ops.py 2>&1 | tee "$OUT/bench_gpu_ops.log" | tail -12 ;;
  esac
  echo "bench $b ${SECONDS}s"
done
cp bench/results/maxsim_gpu.csv bench/results/gpu_ops.csv "$OUT/" 2>/dev/null || true
