"""kmeans_assign on CPU vs plain torch (chunked matmul + max, the way one would write it
without materializing [n, k]), same data, same run; sgemm ceiling measured alongside. Where
the CPU has AVX512-VNNI, kmeans_assign screens with int8 dot products: it is timed both ways
(the float32 kernel alone at the same ISA level through the testing hook
lateint_testing::kmeans_assign_float32), and both answers are checked to be equal bit for
bit.

    python bench/bench_kmeans.py [--smoke]
Appends rows to bench/results/kmeans.csv.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

import lateint_kernels as lk  # noqa: E402
import lateint_kernels.testing as lkt  # noqa: E402


def torch_assign(x, c, chunk=16384):
    out = torch.empty(x.shape[0], dtype=torch.int64)
    for i in range(0, x.shape[0], chunk):
        out[i:i + chunk] = (x[i:i + chunk] @ c.T).argmax(1)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    shapes = [(20_000, 1024)] if args.smoke else [(200_000, 4096), (1_000_000, 1024)]
    dim = 128
    a = torch.randn(4096, 4096)
    t = H.time_cpu(lambda: a @ a, repeats=3)
    ceiling = 2 * 4096 ** 3 / t / 1e9
    rows = [H.row("matmul_square", "torch", torch.float32, "4096^3", "gflops", ceiling, "GFLOP/s")]
    print(f"sgemm 4096^3: {ceiling:.0f} GFLOP/s, {torch.get_num_threads()} threads, {H.cpu_model()}")
    for n, k in shapes:
        _, tokens, _ = H.clustered_corpus(max(n // 150, 1), 100, 200, dim, seed=1)
        x = tokens[:n].contiguous()
        n = x.shape[0]
        c = x[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k]].contiguous()
        assert torch.equal(lk.kmeans_assign(x, c).long(), torch_assign(x, c)), "different answers"
        reps = dict(repeats=1, min_repeats_slow=1) if args.smoke else dict(repeats=3, min_repeats_slow=3)
        fp32 = lkt.ops.kmeans_assign_float32(x, c)  # the float32 kernel alone, screen off
        t_fp32 = H.time_cpu(lambda: lkt.ops.kmeans_assign_float32(x, c), **reps)
        got = lk.kmeans_assign(x, c, return_scores=True)
        assert torch.equal(got[0], fp32[0]) and torch.equal(got[1], fp32[1]), "int8 screen changed the answer"
        t_ours = H.time_cpu(lambda: lk.kmeans_assign(x, c), **reps)
        t_torch = H.time_cpu(lambda: torch_assign(x, c), **reps)
        gf = 2 * n * k * dim / t_ours / 1e9
        gf32 = 2 * n * k * dim / t_fp32 / 1e9
        label = f"{n} x {k} centroids d{dim}"
        print(f"{label}: ours {t_ours * 1e3:.0f} ms ({gf:.0f} float32-equivalent GFLOP/s, {gf / ceiling:.0%} of "
              f"sgemm), float32 kernel alone {t_fp32 * 1e3:.0f} ms ({gf32 / ceiling:.0%} of sgemm, "
              f"{t_fp32 / t_ours:.1f}x), torch chunked matmul+argmax {t_torch * 1e3:.0f} ms ({t_torch / t_ours:.1f}x)")
        rows += [H.row("kmeans_assign", "lateint", torch.float32, label, "seconds", t_ours, "s"),
                 H.row("kmeans_assign", "lateint_fp32_only", torch.float32, label, "seconds", t_fp32, "s"),
                 H.row("kmeans_assign", "torch_chunked", torch.float32, label, "seconds", t_torch, "s"),
                 H.row("kmeans_assign", "lateint", torch.float32, label, "frac_sgemm", gf / ceiling, "ratio")]
    if not args.smoke:
        print(f"rows -> {H.append_rows('kmeans', rows)}")


if __name__ == "__main__":
    main()
