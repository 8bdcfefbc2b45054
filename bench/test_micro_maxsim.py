"""pytest-benchmark microbenchmarks of the MaxSim ops (CPU), for comparing commits:

    pytest bench/test_micro_maxsim.py --benchmark-only --benchmark-json out.json
    pytest bench/test_micro_maxsim.py --benchmark-only --benchmark-compare

Claims rest on bench_maxsim.py (side by side, one run); these track regressions.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

import lateint_kernels as lk  # noqa: E402

SMOKE = os.environ.get("LATEINT_BENCH_SMOKE", "0") == "1"


@pytest.fixture(scope="module")
def data():
    n = 200 if SMOKE else 2000
    return H.clustered_corpus(n, 64, 300, nq=32, seed=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("nq", [1, 32])
def test_maxsim_forward(benchmark, data, dtype, nq):
    Q, tokens, offsets = data
    q, d = Q[:nq].to(dtype), tokens.to(dtype)
    benchmark.extra_info["gflop"] = 2 * nq * 32 * 128 * tokens.shape[0] / 1e9
    out = benchmark(lk.maxsim, q, d, offsets)
    assert out.shape == (nq, offsets.shape[0] - 1)


def test_maxsim_backward(benchmark, data):
    Q, tokens, offsets = data
    nd = min(256, offsets.shape[0] - 1)
    off = offsets[: nd + 1]
    d = tokens[: int(off[-1])]
    g = torch.randn(8, nd)
    dq, dd = benchmark(torch.ops.lateint_kernels.maxsim_backward, g, Q[:8], None, d, off, None, None, "ignore")
    assert dq.shape == Q[:8].shape and dd.shape == d.shape
