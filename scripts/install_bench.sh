#!/usr/bin/env bash
# Baselines for bench/bench_maxsim.py, installed without disturbing the CPU torch:
# maxsim-cpu, and PyLate 1.6.0 the way ../shared/BENCH.md describes (its needs by hand, then
# pylate itself with --no-deps: a plain `pip install pylate` pulls fast-plaid, which pins a
# multi-GB CUDA torch). Without pylate the benchmark uses PyLate's exact formula instead.
set -euo pipefail
PY=${PYTHON:-python3}
$PY -m pip install -q maxsim-cpu==0.1.0 matplotlib
$PY -m pip install -q "sentence-transformers==5.3.0" "transformers<=5.3.0" datasets accelerate pandas \
    ujson==5.12.0 fastkmeans==0.5.0 joblib usearch
$PY -m pip install -q --no-deps pylate==1.6.0
$PY -c "from pylate.scores import colbert_scores; print('pylate.scores.colbert_scores available')"
