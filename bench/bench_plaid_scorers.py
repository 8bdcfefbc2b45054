"""PLAID's final stage two ways, same index, same candidates, same run:
`scorer="exact"` (lk.decompress_maxsim: decompress each candidate once per batch, normalize,
MaxSim micro-kernels) vs `scorer="lut"` (lk.lut_maxsim: WARP's implicit decompression,
per-query lookup tables over the packed residual bytes, unnormalized reconstructions).

    python bench/bench_plaid_scorers.py                 # synthetic 2,000 docs, d=128, nbits 2 and 4
    python bench/bench_plaid_scorers.py --corpus bbc    # MiniLM BBC News (d=384), as bench_plaid.py
    python bench/bench_plaid_scorers.py --smoke

Reported per (nbits, ndocs): recall@10 against the exact brute-force MaxSim top-10, search
latency p50 at batch 1 and queries/s at batch 32, and the final stage alone (the op, on the
candidates the search keeps). Appends rows to bench/results/plaid_scorers.csv.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

import lateint_kernels as lk  # noqa: E402
from lateint.plaid import PLAIDIndex  # noqa: E402


def corpus(name, n_docs, nq, smoke):
    if name == "bbc":
        from bench_plaid import bbc_corpus
        return bbc_corpus(n_docs or 2225, nq)
    from lateint.synthetic import clustered_corpus
    q, tokens, offsets, _ = clustered_corpus(n_docs or (300 if smoke else 2000), 30, 170, 128, nq=nq, lq=32,
                                             n_topics=512, topics_per_doc=4, query_topics=2, noise=1.8, seed=0)
    return q, tokens, offsets


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=("synthetic", "bbc"), default="synthetic")
    ap.add_argument("--docs", type=int)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--nbits", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--ndocs", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.queries, args.nbits, args.ndocs = 8, [2], [64]
    q, tokens, offsets = corpus(args.corpus, args.docs, args.queries, args.smoke)
    nq = q.shape[0]
    exact = lk.maxsim(q, tokens, offsets).topk(10, dim=1).indices
    print(f"{args.corpus}: {offsets.numel() - 1} docs, {tokens.shape[0]:,} tokens, d={tokens.shape[1]}, {nq} queries, "
          f"{torch.get_num_threads()} threads")
    print(f"{'nbits':>5} {'ndocs':>6} {'scorer':>6} {'recall@10':>9} {'p50 b1 ms':>10} {'q/s b32':>8} "
          f"{'stage-4 ms/q b1':>15} {'stage-4 ms/q b32':>16}")
    rows = []
    for nbits in args.nbits:
        index = PLAIDIndex.build(tokens, offsets, nbits=nbits, kmeans_niter=4)
        s_all = lk.centroid_scores(q, index.centroids)
        for ndocs in args.ndocs:
            # the candidates the search scores in its final stage (same for both scorers)
            cand = lk.ivf_candidates(s_all, index.ivf_offsets, index.ivf_docs, index.n_docs, 2)
            approx = lk.approx_scores(s_all, index.codes, index.doc_offsets, cand, threshold=0.45)
            top = approx.topk(min(ndocs, cand.shape[1]), dim=1)
            best = torch.where(torch.isfinite(top.values), torch.gather(cand, 1, top.indices), -1)
            stage = {
                "exact": lambda b: lk.decompress_maxsim(q[:b], index.codes, index.packed, index.doc_offsets,
                                                        index.centroids, index.bucket_weights, nbits, best[:b]),
                "lut": lambda b: lk.lut_maxsim(q[:b], s_all[:b], index.codes, index.packed, index.doc_offsets,
                                               index.bucket_weights, nbits, best[:b]),
            }
            for scorer in ("exact", "lut"):
                kw = dict(ncells=2, centroid_score_threshold=0.45, ndocs=ndocs, scorer=scorer)
                ids = torch.cat([index.search(q[i:i + 32], 10, **kw)[0] for i in range(0, nq, 32)])
                recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, exact)) / (10 * nq)
                lat = []
                for i in range(nq):
                    t = time.perf_counter()
                    index.search(q[i:i + 1], 10, **kw)
                    lat.append(time.perf_counter() - t)
                t32 = H.time_cpu(lambda: [index.search(q[i:i + 32], 10, **kw) for i in range(0, nq, 32)], repeats=3)
                st1 = H.time_cpu(lambda: stage[scorer](1), repeats=5)
                st32 = H.time_cpu(lambda: stage[scorer](min(32, nq)), repeats=3) / min(32, nq)
                p50 = statistics.median(lat) * 1e3
                print(f"{nbits:>5} {ndocs:>6} {scorer:>6} {recall:>9.3f} {p50:>10.2f} {nq / t32:>8.0f} "
                      f"{st1 * 1e3:>15.3f} {st32 * 1e3:>16.3f}")
                shape = f"{args.corpus},docs={offsets.numel() - 1},nq={nq},nbits={nbits},ndocs={ndocs}"
                prov = f"lateint-{scorer}"
                rows += [H.row("plaid_scorers", prov, "float32", shape, "recall@10", recall, "ratio"),
                         H.row("plaid_scorers", prov, "float32", shape, "latency_p50_b1", p50, "ms"),
                         H.row("plaid_scorers", prov, "float32", shape, "qps_b32", nq / t32, "q/s"),
                         H.row("plaid_scorers", prov, "float32", shape, "stage4_b1", st1 * 1e3, "ms"),
                         H.row("plaid_scorers", prov, "float32", shape, "stage4_b32_per_q", st32 * 1e3, "ms")]
    if not args.smoke:
        print("rows ->", H.append_rows("plaid_scorers", rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
