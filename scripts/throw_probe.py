"""Calls the C++ CPU ops directly with bad input; each must raise, not crash (exit 1 if one
returns). A segfault here is a toolchain mismatch (see scripts/gpu_check.sh)."""
import sys

import torch

import lateint_kernels  # noqa: F401

ops = torch.ops.lateint_kernels
cases = {
    "maxsim 2-D queries": lambda: ops.maxsim(torch.randn(2, 4), None, torch.randn(3, 4), torch.tensor([0, 3]), None, "ignore"),
    "maxsim bad offsets": lambda: ops.maxsim(torch.randn(1, 2, 4), None, torch.randn(3, 4), torch.tensor([0, 2, 1, 3]), None, "ignore"),
    "maxsim bad mode": lambda: ops.maxsim(torch.randn(1, 2, 4), None, torch.randn(3, 4), torch.tensor([0, 3]), None, "x"),
    "kmeans_assign int x": lambda: ops.kmeans_assign(torch.ones(4, 8, dtype=torch.int32), torch.ones(2, 8, dtype=torch.int32)),
    "token_pool pool_factor 0": lambda: ops.token_pool(torch.randn(5, 8), torch.tensor([0, 5]), 0, 1, False, "cosine"),
}
wrong = 0
for name, fn in cases.items():
    try:
        fn()
        print(name, "-> no error (wrong)", flush=True)
        wrong += 1
    except Exception as e:
        print(name, "-> raised", type(e).__name__, str(e).splitlines()[0][:100], flush=True)
sys.exit(1 if wrong else 0)
