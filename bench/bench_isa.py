"""MaxSim CPU throughput per instruction set (forcing lower ISAs with lk.cpu_isa), on the
same clustered data as bench_maxsim.py. What users of processors without AVX-512 get.

    python bench/bench_isa.py [--smoke]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

import lateint_kernels as lk  # noqa: E402

ISAS = ("avx512bf16", "avx512", "avx2", "scalar")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = 300 if args.smoke else 10_000
    Q, tokens, offsets = H.clustered_corpus(n, 64, 300, nq=64, seed=1)
    sq = 512 if args.smoke else 4096
    a = torch.randn(sq, sq)
    sgemm = 2 * sq ** 3 / H.time_cpu(lambda: a @ a) / 1e9
    best = lk.cpu_isa("best")
    shapes = [(1, n), (64, min(n, 1000))]
    print(f"MaxSim per ISA — {H.cpu_model()}, {args.threads} threads, commit {H.git_commit()}, "
          f"sgemm {sgemm:.1f} GFLOP/s")
    print(f"{'isa':<12}{'shape':<18}{'dtype':<10}{'ms':>10}{'GFLOP/s':>10}")
    try:
        for isa in ISAS[ISAS.index(best):]:
            lk.cpu_isa(isa)
            for nq, nd in shapes:
                if isa == "scalar" and nq > 1:
                    continue  # minutes; the single-query row says enough
                off = offsets[: nd + 1]
                tok = tokens[: int(off[-1])]
                for dt in (torch.float32, torch.bfloat16):
                    q, d = Q[:nq].to(dt), tok.to(dt)
                    t = H.time_cpu(lambda: lk.maxsim(q, d, off), repeats=3)
                    gf = 2 * nq * 32 * 128 * tok.shape[0] / t / 1e9
                    print(f"{isa:<12}{f'{nq}q x {nd} docs':<18}{str(dt)[6:]:<10}{t * 1e3:>10.1f}{gf:>10.1f}")
    finally:
        lk.cpu_isa("best")


if __name__ == "__main__":
    main()
