"""Realistic synthetic late-interaction data for demos and benchmarks: L2-normalized token
embeddings drawn around topic centres (clustered), documents of varied lengths, queries
built from the topics of a known relevant document. Never all-zero, never plain noise."""
from __future__ import annotations

import torch


def clustered_corpus(n_docs: int, lo: int, hi: int, dim: int = 128, *, nq: int = 1, lq: int = 32,
                     n_topics: int = 256, topics_per_doc: int = 4, query_topics: int = 4,
                     noise: float = 1.8, seed: int = 0):
    """Returns (queries [nq, lq, dim], tokens [T, dim], offsets int64 [n_docs + 1],
    relevant int64 [nq]). Each document draws its tokens from `topics_per_doc` topics,
    lengths uniform in [lo, hi]; query i draws from `query_topics` of the topics of
    document relevant[i]. `noise` is the expected norm of the noise added to a unit centre."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_topics, dim, generator=g), dim=-1)
    lens = torch.randint(lo, hi + 1, (n_docs,), generator=g)
    offsets = torch.zeros(n_docs + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lens, 0)
    T = int(offsets[-1])
    topics = torch.randint(0, n_topics, (n_docs, topics_per_doc), generator=g)
    tok_doc = torch.repeat_interleave(torch.arange(n_docs), lens)
    pick = topics[tok_doc, torch.randint(0, topics_per_doc, (T,), generator=g)]
    scale = noise / dim ** 0.5
    tokens = torch.nn.functional.normalize(centres[pick] + scale * torch.randn(T, dim, generator=g), dim=-1)
    relevant = torch.randint(0, n_docs, (nq,), generator=g)
    qpick = topics[relevant[:, None], torch.randint(0, query_topics, (nq, lq), generator=g)]
    queries = torch.nn.functional.normalize(centres[qpick] + scale * torch.randn(nq, lq, dim, generator=g),
                                            dim=-1)
    return queries, tokens, offsets, relevant
