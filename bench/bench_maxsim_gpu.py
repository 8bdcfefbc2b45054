"""MaxSim on a CUDA GPU: the CUDA C++ kernel (the op's CUDA backend when built), the Triton
kernel, and torch einsum (PyLate's padded formula) and the packed torch path, on the same
data in one run; checked against the float64 reference first. Times: triton.testing.do_bench
medians. Writes rows to bench/results/maxsim_gpu.csv.

    python bench/bench_maxsim_gpu.py [--smoke]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

import lateint_kernels as lk  # noqa: E402
from bench_maxsim import torch_packed  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    from triton.testing import do_bench
    dev = "cuda"
    n_docs = 1000 if args.smoke else 10_000
    Q, tokens, offsets = H.clustered_corpus(n_docs, 64, 300, nq=64, seed=1)
    shapes = [("1q x %d docs" % n_docs, 1, n_docs), ("32q x 1000 docs", 32, 1000), ("64q x 1000 docs", 64, 1000)]
    rows, table = [], []
    for label, nq, nd in shapes:
        off = offsets[: nd + 1].to(dev)
        T = int(off[-1])
        n_tok = T
        flops = 2 * nq * 32 * 128 * n_tok
        for dt in (torch.float32, torch.bfloat16):
            q = Q[:nq].to(dev, dt)
            d = tokens[:T].to(dev, dt)
            want = lk.reference.maxsim_ref(q.double().cpu(), d.double().cpu(), off.cpu())
            padded, pmask = lk.unpack(d, off)
            qmask = torch.ones(nq, 32, device=dev, dtype=dt)
            pm = pmask.to(dt)
            cands = {
                f"op ({lk.backend_for('maxsim', 'cuda')})": lambda: lk.maxsim(q, d, off),
                "op, validate=False": lambda: lk.maxsim(q, d, off, validate=False),
                "torch einsum (PyLate formula)": lambda: lk.reference.pylate_colbert_scores_ref(q, padded, qmask, pm),
                "torch packed+segmax": lambda: torch_packed(q, d, off),
            }
            if torch._C._dispatch_has_kernel_for_dispatch_key("lateint_kernels::maxsim_cuda_simt", "CUDA"):
                cands["cuda C++ simt"] = lambda: torch.ops.lateint_kernels.maxsim_cuda_simt(q, None, d, off, None, "ignore")
            for name, fn in cands.items():
                got = fn().double().cpu()
                err = float((got - want).abs().max() / want.abs().max())
                ms = do_bench(fn, quantiles=[0.5, 0.2, 0.8])[0]
                gf = flops / (ms * 1e-3) / 1e9
                table.append((label, name, str(dt)[6:], ms, gf, err))
                rows.append(H.row("maxsim_gpu", name, dt, label, "ms", ms, "ms", device=dev))
                rows.append(H.row("maxsim_gpu", name, dt, label, "rel_err_vs_fp64", err, "ratio", device=dev))
    print(f"\nMaxSim GPU — {torch.cuda.get_device_name()} torch {torch.__version__} triton {H.triton_version()}")
    print(f"{'shape':<18}{'provider':<32}{'dtype':<10}{'ms':>10}{'GFLOP/s':>10}{'rel err':>10}")
    for label, name, dt, ms, gf, err in table:
        print(f"{label:<18}{name:<32}{dt:<10}{ms:>10.3f}{gf:>10.0f}{err:>10.1e}")
    path = H.append_rows("maxsim_gpu", rows)
    print("rows appended to", path)


if __name__ == "__main__":
    main()
