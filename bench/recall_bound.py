"""How much of PLAID's recall@10 the residual codec can give at a number of bits per
dimension: the issue's 1 M-document corpus geometry at a size that fits in memory, scored
exhaustively (every document, exact MaxSim over the reconstructed tokens, no candidate
stages), so the only loss is the reconstruction.

Corpus: the scale benchmark's generator (4,096 topics per million documents, 4 topics per
document, noise 0.7, 20-100 tokens, d=128) at `--docs` documents with the topics scaled
down in proportion, so that each topic holds as many documents as at 1 M; centroids 16 per
topic (65,536 at 1 M). Queries: 32 tokens from 4 topics of a random document.

Reconstructions of each token x = c + r (c its centroid, r the residual), each then
L2-normalized as the decompression does; centroids and codes from one PLAIDIndex.build:
  nbits 2 quantile (the index)  the index's own packed residuals, PLAID's buckets;
  nbits 1 / 2 / 4 quantile      compress + decompress with PLAID's quantile buckets, fit on
                                5% of the residuals (as the build holds out 5%);
  nbits 1 / 2 / 4 lloyd         the same with the buckets of least squared error
                                (lk.residual_buckets(method="lloyd"), the build's default);
  bound 1 / 2 / 3               the Gaussian rate-distortion test channel at R bits per dimension:
                    r' = a r + sqrt(a D) z, D = var(r) 2^(-2R), a = 1 - D / var(r); no code
                    of R bits per dimension has a smaller mean squared error on Gaussian
                    residuals, and this channel's error is independent of r' (the best case
                    for ranking at that error).
Recall@10 of each against the exact top-10 of the original tokens, and the residuals'
mean squared error.

With --index, the same measure at full size on bench_scale's 1 M-document index (one
segment, built from --corpus): every document scored exhaustively through the index's own
reconstruction, and through the test channel at each rate of --bits (fractional rates
allowed) on the index's centroids, against bench_scale's exact top-10 of its queries;
the corpus is read memory-mapped, 2 M tokens at a time (one MaxSim pass over all 60 M
tokens per reconstruction, ~5 min each on 2 cores).

    python bench/recall_bound.py [--docs 31250] [--queries 100]
    python bench/recall_bound.py --index ~/.cache/lateint/scale-index-1000k [--bits 2,2.5]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

import lateint_kernels as lk  # noqa: E402
from lateint import synthetic  # noqa: E402
from lateint.plaid import PLAIDIndex  # noqa: E402
from bench_scale import doc_ranges, merge_top, recall_vs  # noqa: E402

CHANNEL_SEED = 1


def channel(c, resid, var: float, bits: float, g: torch.Generator) -> torch.Tensor:
    """normalize(c + r') with r' the Gaussian test channel's output at `bits` per dimension
    for residuals of per-value variance `var` (see the module docstring)."""
    d = var * 2.0 ** (-2 * bits)
    a = 1 - d / var
    return torch.nn.functional.normalize(c + a * resid + math.sqrt(a * d) * torch.randn(resid.shape, generator=g),
                                         dim=-1)


def at_scale(args) -> None:
    import numpy as np

    idx = PLAIDIndex.open(args.index, verify=False)
    st = idx._state
    if len(st.segments) != 1:
        raise SystemExit(f"--index: expected bench_scale's one-segment index, {args.index} has {len(st.segments)}")
    seg = st.segments[0]
    offsets = np.load(os.path.join(args.corpus, "offsets.npy"))
    tokens = np.load(os.path.join(args.corpus, "tokens.npy"), mmap_mode="r")
    if offsets.shape[0] - 1 != idx.n_docs or not np.array_equal(seg.doc_offsets.numpy(), offsets):
        raise SystemExit(f"--corpus: {args.corpus} is not the corpus {args.index} was built from "
                         "(document offsets differ)")
    if not torch.equal(idx.ids, torch.arange(idx.n_docs)):
        raise SystemExit(f"--index: {args.index} does not number its documents 0..n-1")
    truth = torch.load(args.truth)
    q, want = truth["queries"].float(), truth["exact"]
    bits = [float(b) for b in args.bits.split(",")]
    names = ["the index's reconstruction"] + [f"test channel, {b:g} bits per dimension" for b in bits]
    nq, k, n = q.shape[0], want.shape[1], idx.n_docs
    best = {m: (torch.full((nq, k), -float("inf")), torch.full((nq, k), -1, dtype=torch.int64)) for m in names}
    cent, w = st.centroids, st.bucket_weights
    print(f"{n:,} documents, {idx.n_tokens:,} tokens, {cent.shape[0]:,} centroids, nbits {st.nbits}, {nq} queries; "
          f"{H.cpu_model()}, cpu isa {lk.cpu_isa()}", flush=True)
    g = torch.Generator().manual_seed(CHANNEL_SEED)
    var, t_start = None, time.perf_counter()
    for d0, d1 in doc_ranges(offsets, n, 1 << 21):
        t0, t1 = int(offsets[d0]), int(offsets[d1])
        x = torch.from_numpy(np.asarray(tokens[t0:t1], dtype=np.float32))
        codes = seg.codes[t0:t1]
        c = cent[codes.long()]
        resid = x - c
        if var is None:  # the channel's variance: the first chunk's residuals (2 M tokens)
            var = float(resid.var())
        recs = [lk.decompress_residuals(codes, seg.packed[t0:t1], cent, w, st.nbits)]
        recs += [channel(c, resid, var, b, g) for b in bits]
        off = torch.from_numpy(offsets[d0:d1 + 1] - t0)
        for m, rec in zip(names, recs):
            best[m] = merge_top(*best[m], lk.maxsim(q, rec, off), d0, k)
        print(f"  {d1:,} documents, {time.perf_counter() - t_start:.0f} s", flush=True)
    print(f"\nresidual variance per value {var:.5f}; recall@{k} against the exact top-{k}, every document scored")
    for m in names:
        print(f"{m:<40} {recall_vs(best[m][1], want, k):.4f}")


def topk_ids(q, tokens, offsets, k=10, chunk=4096):
    """Exact MaxSim top-k document ids, documents in chunks (bounded memory)."""
    nd = offsets.shape[0] - 1
    scores = torch.empty(q.shape[0], nd)
    for d0 in range(0, nd, chunk):
        d1 = min(nd, d0 + chunk)
        t0, t1 = int(offsets[d0]), int(offsets[d1])
        scores[:, d0:d1] = lk.maxsim(q, tokens[t0:t1], offsets[d0:d1 + 1] - t0)
    return scores.topk(k, dim=1).indices


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=31250)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--index", help="bench_scale's index to score at full size instead of the proxy")
    ap.add_argument("--corpus", default=os.path.expanduser("~/.cache/lateint/scale1m"),
                    help="with --index: the embeddings directory it was built from")
    ap.add_argument("--truth", default=os.path.expanduser("~/.cache/lateint/scale-truth-1000k-128.pt"),
                    help="with --index: bench_scale's exact top-10 file (queries and ids)")
    ap.add_argument("--bits", default="2,2.5", help="with --index: test-channel rates, bits per dimension")
    args = ap.parse_args(argv)
    if args.index:
        return at_scale(args)
    n_topics = max(1, round(4096 * args.docs / 1_000_000))
    q, tokens, offsets, _ = synthetic.clustered_corpus(args.docs, 20, 100, 128, nq=args.queries, lq=32,
                                                       n_topics=n_topics, noise=0.7, seed=0)
    k = 16 * n_topics
    print(f"{args.docs:,} documents, {tokens.shape[0]:,} tokens, {n_topics} topics, {k} centroids, "
          f"{args.queries} queries; {H.cpu_model()}, cpu isa {lk.cpu_isa()}")
    t = time.perf_counter()
    want = topk_ids(q, tokens, offsets)
    print(f"exact top-10: {time.perf_counter() - t:.1f} s")
    rows = []
    idx = PLAIDIndex.build(tokens, offsets, nbits=2, n_centroids=k, seed=0, buckets="quantile")
    centroids, codes = idx.centroids, idx.codes
    rec = lk.decompress_residuals(codes, idx.packed, centroids, idx.bucket_weights, 2)
    rows.append(("nbits 2 quantile (the index)", 2, recall_vs(topk_ids(q, rec, offsets), want),
                 float(((tokens - rec) ** 2).sum(1).mean())))
    print(rows[-1], flush=True)
    del idx, rec
    resid = tokens - centroids[codes.long()]
    var = float(resid.var())
    # buckets fit on 5% of the tokens' residuals, as the build holds out 5% of its sample
    held = resid[torch.randperm(resid.shape[0], generator=torch.Generator().manual_seed(0))[:resid.shape[0] // 20]]
    for nbits in (1, 2, 4):
        for method in ("quantile", "lloyd"):
            cut, w = lk.residual_buckets(held, nbits, method)
            packed = lk.compress_residuals(tokens, centroids, codes, cut, nbits)
            rec = lk.decompress_residuals(codes, packed, centroids, w, nbits)
            rows.append((f"nbits {nbits} {method}", nbits, recall_vs(topk_ids(q, rec, offsets), want),
                         float(((tokens - rec) ** 2).sum(1).mean())))
            print(rows[-1], flush=True)
            del packed, rec
    codes = codes.long()
    for bits in (1, 2, 3):
        rec = channel(centroids[codes], resid, var, bits, torch.Generator().manual_seed(bits))
        rows.append((f"bound {bits} (rate-distortion)", bits, recall_vs(topk_ids(q, rec, offsets), want),
                     float(((tokens - rec) ** 2).sum(1).mean())))
        print(rows[-1])
    print(f"\nresidual variance per value {var:.5f} (norm^2 {var * 128:.3f})")
    print(f"{'reconstruction':<32} {'bits/dim':>8} {'recall@10':>10} {'token MSE':>10}")
    for name, bits, r, e in rows:
        print(f"{name:<32} {bits:>8} {r:>10.3f} {e:>10.4f}")


if __name__ == "__main__":
    main()
