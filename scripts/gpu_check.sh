#!/usr/bin/env bash
# On a machine with a CUDA GPU and torch+triton installed: build with CUDA, run the test
# suite (CUDA and Triton tests included) and the GPU benchmark. Logs go to ${OUT:-.}.
# Pass LATEINT_COMMIT=<sha> when the tree arrives without .git (the device tool).
set -uo pipefail
OUT=${OUT:-.}
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
export MAX_JOBS=${MAX_JOBS:-16}
LATEINT_USE_CUDA=1 LATEINT_CUDA_ARCH=${LATEINT_CUDA_ARCH:-90} python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
python3 -c "import lateint_kernels as lk; print('backend cuda:', lk.backend_for('maxsim','cuda'))" | tee -a "$OUT/gpu.txt"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -X faulthandler -m pytest tests -v -p no:warnings -k "${PYTEST_K:-}" 2>&1 | tee "$OUT/pytest.log" | grep -E "FAIL|Error|passed|failed|Fatal|test_maxsim.py\", line" | tail -25
LATEINT_COMMIT=${LATEINT_COMMIT:-unknown} python3 bench/bench_maxsim_gpu.py ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_gpu.log" | tail -30
cp bench/results/maxsim_gpu.csv "$OUT/" 2>/dev/null || true
