"""Calls the C++ CPU ops directly with bad input; each must raise, not crash."""
import torch

import lateint_kernels  # noqa: F401

ops = torch.ops.lateint_kernels
cases = {
    "2-D queries": lambda: ops.maxsim(torch.randn(2, 4), None, torch.randn(3, 4), torch.tensor([0, 3]), None, "ignore"),
    "bad offsets": lambda: ops.maxsim(torch.randn(1, 2, 4), None, torch.randn(3, 4), torch.tensor([0, 2, 1, 3]), None, "ignore"),
    "bad mode": lambda: ops.maxsim(torch.randn(1, 2, 4), None, torch.randn(3, 4), torch.tensor([0, 3]), None, "x"),
}
for name, fn in cases.items():
    try:
        fn()
        print(name, "-> no error (wrong)", flush=True)
    except Exception as e:
        print(name, "-> raised", type(e).__name__, flush=True)
