"""`lateint` command line.

    lateint demo [--docs N] [--queries N] [--k K] [--smoke]

The demo (README command one) runs exact late-interaction retrieval end to end on an
embedded synthetic corpus: clustered, L2-normalized token embeddings, documents of 64-300
tokens, queries of 32 tokens drawn from the topics of a known relevant document. It checks
our kernel against the float64 reference, then reports recall@k / MRR@k of the known
relevant document and the search time beside PyLate's padded-einsum formula.
(The real-text demo with PLAID indexing is the subject of a later issue.)
"""
from __future__ import annotations

import argparse
import sys
import time


def _corpus(n_docs, nq, seed=0):
    from .synthetic import clustered_corpus
    # noise norm twice the centre's, and each query touches 2 of its document's 6 topics:
    # other documents sharing them compete, so exact search is not trivially perfect
    return clustered_corpus(n_docs, 64, 300, 128, nq=nq, lq=32, n_topics=512, topics_per_doc=6,
                            query_topics=2, noise=2.0, seed=seed)


def demo(args) -> int:
    import torch

    import lateint_kernels as lk
    from lateint_kernels.reference import pylate_colbert_scores_ref

    if args.smoke:
        args.docs, args.queries = 300, 8
    torch.set_num_threads(args.threads or torch.get_num_threads())
    print(f"lateint demo: backend {lk.backend_for('maxsim', 'cpu')} (cpu isa {lk.cpu_isa()}), "
          f"{torch.get_num_threads()} threads")
    q, tokens, offsets, relevant = _corpus(args.docs, args.queries)
    print(f"corpus: {args.docs} docs, {tokens.shape[0]} tokens (64-300 per doc), d=128; "
          f"{args.queries} queries x 32 tokens")
    if args.pool_factor > 1:
        n_before = tokens.shape[0]
        t = time.perf_counter()
        tokens, offsets = lk.token_pool(tokens, offsets, args.pool_factor)
        print(f"token pooling (pool_factor {args.pool_factor}, PyLate's Ward clustering): "
              f"{n_before} -> {tokens.shape[0]} tokens in {(time.perf_counter() - t) * 1e3:.0f} ms")
    t = time.perf_counter()
    scores = lk.maxsim(q, tokens, offsets)
    t_ours = time.perf_counter() - t
    ref = lk.reference.maxsim_ref(q[:2].double(), tokens.double(), offsets)
    err = float((scores[:2].double() - ref).abs().max() / ref.abs().max())
    print(f"check vs float64 reference (2 queries): max rel err {err:.2e}")
    if err > 1e-5:
        print("FAILED: kernel disagrees with the reference", file=sys.stderr)
        return 1
    k = min(args.k, args.docs)
    top = scores.topk(k, dim=1).indices
    hit = top == relevant[:, None]
    recall = float(hit.any(1).float().mean())
    rank = torch.where(hit.any(1), hit.float().argmax(1) + 1, torch.zeros_like(relevant))
    mrr = float(torch.where(rank > 0, 1.0 / rank.clamp_min(1).float(), torch.zeros(len(rank))).mean())
    # PyLate's formula on the same data, padded (what a PyLate user runs on CPU)
    padded, mask = lk.unpack(tokens, offsets)
    nq_b = min(args.queries, 8)
    t = time.perf_counter()
    base = pylate_colbert_scores_ref(q[:nq_b], padded, None, mask.float())
    t_base = (time.perf_counter() - t) * args.queries / nq_b
    # same semantics as PyLate (padding counts as a 0 similarity): mask_mode="zero"
    zero = lk.maxsim(q[:nq_b], tokens, offsets, mask_mode="zero", doc_padded=~mask.all(1))
    agree = float(((base - zero).abs() / base.abs().clamp_min(1e-6)).max())
    print(f"recall@{k} {recall:.3f}   MRR@{k} {mrr:.3f}   (known relevant document, exact MaxSim)")
    print(f"search time for {args.queries} queries: ours {t_ours * 1e3:.1f} ms, "
          f"PyLate einsum formula {t_base * 1e3:.1f} ms (x{t_base / t_ours:.1f}, timed on {nq_b} queries "
          f"and scaled); PyLate-mode scores agree to {agree:.1e} relative")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="lateint", description="late-interaction retrieval on lateint_kernels")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="exact MaxSim retrieval on an embedded synthetic corpus")
    d.add_argument("--docs", type=int, default=5000, help="documents in the corpus (default 5000)")
    d.add_argument("--queries", type=int, default=64, help="queries (default 64)")
    d.add_argument("--k", type=int, default=10, help="cut-off for recall/MRR (default 10)")
    d.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    d.add_argument("--pool-factor", type=int, default=1,
                   help="pool document tokens by this factor before searching (default 1: off)")
    d.add_argument("--smoke", action="store_true", help="tiny run (CI)")
    args = ap.parse_args(argv)
    if args.cmd == "demo":
        return demo(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
