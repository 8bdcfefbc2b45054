"""The residual codec (compress_residuals, decompress_residuals) on CPU vs the same
computation in plain torch (bucketize + bit packing: the family's reference, which is what
ColBERT/PLAID's own torch code does), same data, same run.

    python bench/bench_codec.py [--smoke]
Appends rows to bench/results/codec.csv.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

import lateint_kernels as lk  # noqa: E402
from lateint_kernels import reference as ref  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    n_docs, dim, k = (200, 128, 256) if args.smoke else (6000, 128, 4096)
    _, tokens, _ = H.clustered_corpus(n_docs, 100, 200, dim, seed=2)
    x = tokens.contiguous()
    n = x.shape[0]
    c = x[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k]].contiguous()
    codes = lk.kmeans_assign(x, c)
    reps = dict(repeats=1, min_repeats_slow=1) if args.smoke else dict(repeats=5, min_repeats_slow=3)
    print(f"{n:,} tokens d{dim}, {k} centroids; {torch.get_num_threads()} threads, cpu isa {lk.cpu_isa()}, "
          f"{H.cpu_model()}")
    rows = []
    for nbits in (2, 4):
        cut, w = lk.residual_buckets(x - c[codes.long()], nbits)
        packed = lk.compress_residuals(x, c, codes, cut, nbits)
        assert torch.equal(packed, ref.compress_residuals_ref(x, c, codes, cut, nbits)), "compress differs"
        want = ref.decompress_residuals_ref(codes, packed, c, w, nbits)
        assert torch.allclose(lk.decompress_residuals(codes, packed, c, w, nbits), want, atol=1e-6), "decompress"
        t_c = H.time_cpu(lambda: lk.compress_residuals(x, c, codes, cut, nbits), **reps)
        t_c_ref = H.time_cpu(lambda: ref.compress_residuals_ref(x, c, codes, cut, nbits), **reps)
        t_d = H.time_cpu(lambda: lk.decompress_residuals(codes, packed, c, w, nbits), **reps)
        t_d_ref = H.time_cpu(lambda: ref.decompress_residuals_ref(codes, packed, c, w, nbits), **reps)
        mtok = n / 1e6
        print(f"nbits {nbits}: compress {t_c * 1e3:.1f} ms ({mtok / t_c:.0f} M tokens/s), torch {t_c_ref * 1e3:.0f} ms "
              f"({t_c_ref / t_c:.1f}x); decompress {t_d * 1e3:.1f} ms ({mtok / t_d:.0f} M tokens/s), torch "
              f"{t_d_ref * 1e3:.0f} ms ({t_d_ref / t_d:.1f}x)")
        label = f"{n} tokens d{dim} nbits {nbits}"
        rows += [H.row("compress_residuals", "lateint", torch.float32, label, "seconds", t_c, "s"),
                 H.row("compress_residuals", "torch", torch.float32, label, "seconds", t_c_ref, "s"),
                 H.row("decompress_residuals", "lateint", torch.float32, label, "seconds", t_d, "s"),
                 H.row("decompress_residuals", "torch", torch.float32, label, "seconds", t_d_ref, "s")]
    if not args.smoke:
        print(f"rows -> {H.append_rows('codec', rows)}")


if __name__ == "__main__":
    main()
