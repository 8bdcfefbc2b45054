"""Retrieval metrics against known relevant documents, and exact MaxSim top-k."""
from __future__ import annotations

from typing import Dict, Sequence, Set, Union

import torch

import lateint_kernels as lk

Relevant = Union[torch.Tensor, Sequence[Union[int, Set[int], Sequence[int]]]]


def exact_topk(queries: torch.Tensor, doc_tokens: torch.Tensor, doc_offsets: torch.Tensor, k: int = 10, *,
               query_mask=None, batch: int = 64):
    """Exact MaxSim top-k over all documents: (ids int64 [nq, k'], scores [nq, k']), k' = min(k, n_docs)."""
    nd = doc_offsets.numel() - 1
    k = min(k, nd)
    ids, scores = [], []
    for s in range(0, queries.shape[0], batch):
        qm = None if query_mask is None else query_mask[s:s + batch]
        sc = lk.maxsim(queries[s:s + batch], doc_tokens, doc_offsets, query_mask=qm)
        top = sc.topk(k, dim=1)
        ids.append(top.indices)
        scores.append(top.values)
    return torch.cat(ids), torch.cat(scores)


def _relevant_sets(relevant: Relevant, n: int) -> list:
    if isinstance(relevant, torch.Tensor):
        relevant = relevant.tolist()
    if len(relevant) != n:
        raise ValueError(f"metrics: {len(relevant)} relevance entries for {n} queries")
    return [{r} if isinstance(r, int) else set(r) for r in relevant]


def retrieval_metrics(ranked_ids: torch.Tensor, relevant: Relevant, k: int = 10) -> Dict[str, float]:
    """MRR@k, recall@k (share of relevant documents found in the top k) and success@1 for
    ranked ids [nq, >=k] (-1 = empty slot) and each query's relevant id(s)."""
    ranked = ranked_ids[:, :k].tolist()
    rel = _relevant_sets(relevant, len(ranked))
    mrr = rec = s1 = 0.0
    for row, r in zip(ranked, rel):
        if not r:
            raise ValueError("metrics: a query has no relevant document")
        hits = [i for i, d in enumerate(row) if d in r]
        mrr += 1.0 / (hits[0] + 1) if hits else 0.0
        rec += len({row[i] for i in hits}) / len(r)
        s1 += 1.0 if hits and hits[0] == 0 else 0.0
    n = max(1, len(ranked))
    return {f"mrr@{k}": mrr / n, f"recall@{k}": rec / n, "success@1": s1 / n}
