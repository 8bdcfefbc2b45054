"""Realistic synthetic late-interaction data for demos and benchmarks: L2-normalized token
embeddings drawn around topic centres (clustered), documents of varied lengths, queries
built from the topics of a known relevant document. Never all-zero, never plain noise."""
from __future__ import annotations

from typing import Optional

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


def write_clustered_corpus(path: str, n_docs: int, lo: int, hi: int, dim: int = 128, *, n_topics: int = 4096,
                           topics_per_doc: int = 4, noise: float = 0.7, chunk_docs: int = 20000, seed: int = 0,
                           topic_offset: int = 0, doc_seed: Optional[int] = None, progress: bool = False) -> dict:
    """Writes an embeddings directory (tokens.npy float16 [T, dim], offsets.npy int64) of a
    clustered corpus too large for memory, `chunk_docs` documents at a time (memory bounded
    by the chunk). Topic centres come from `seed`; topics [topic_offset, topic_offset +
    n_topics) of that stream are used, so two calls with different offsets draw from
    disjoint topics of the same family; the documents (lengths, topics, noise) come from
    `doc_seed` (default `seed`). Also writes centres.npy (the topics used) and
    doc_topics.npy (int32 [n, topics_per_doc], rows of centres.npy) for making queries
    (`queries_for`). Returns {"n_docs", "n_tokens"}."""
    import os

    import numpy as np

    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(topic_offset + n_topics, dim, generator=g), dim=-1)
    centres = centres[topic_offset:]
    doc_seed = seed if doc_seed is None else doc_seed
    if doc_seed != seed:
        g = torch.Generator().manual_seed(doc_seed)
    lens = torch.randint(lo, hi + 1, (n_docs,), generator=g)
    offsets = torch.zeros(n_docs + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lens, 0)
    topics = torch.randint(0, n_topics, (n_docs, topics_per_doc), generator=g)
    os.makedirs(path, exist_ok=True)
    np.save(os.path.join(path, "offsets.npy"), offsets.numpy())
    np.save(os.path.join(path, "doc_topics.npy"), topics.to(torch.int32).numpy())
    np.save(os.path.join(path, "centres.npy"), centres.numpy())
    T = int(offsets[-1])
    out = np.lib.format.open_memmap(os.path.join(path, "tokens.npy"), "w+", np.float16, (T, dim))
    scale = noise / dim ** 0.5
    steps = range(0, n_docs, chunk_docs)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="corpus", unit="chunk")
    for d0 in steps:
        d1 = min(n_docs, d0 + chunk_docs)
        gc = torch.Generator().manual_seed(doc_seed * 1_000_003 + d0)
        t0, t1 = int(offsets[d0]), int(offsets[d1])
        doc = torch.repeat_interleave(torch.arange(d0, d1), lens[d0:d1])
        pick = topics[doc, torch.randint(0, topics_per_doc, (t1 - t0,), generator=gc)]
        tok = torch.nn.functional.normalize(centres[pick] + scale * torch.randn(t1 - t0, dim, generator=gc), dim=-1)
        out[t0:t1] = tok.half().numpy()
    out.flush()
    del out
    return {"n_docs": n_docs, "n_tokens": T}


def queries_for(path: str, nq: int, lq: int = 32, *, query_topics: int = 4, noise: float = 0.7, seed: int = 1):
    """(queries [nq, lq, dim] float32, relevant document int64 [nq]) for a corpus written by
    write_clustered_corpus: query i draws its tokens from the topics of a random document."""
    import os

    import numpy as np

    topics = torch.from_numpy(np.load(os.path.join(path, "doc_topics.npy")).astype(np.int64))
    centres = torch.from_numpy(np.load(os.path.join(path, "centres.npy")))
    g = torch.Generator().manual_seed(seed)
    relevant = torch.randint(0, topics.shape[0], (nq,), generator=g)
    col = torch.randint(0, min(query_topics, topics.shape[1]), (nq, lq), generator=g)
    t = topics[relevant[:, None], col]
    q = centres[t] + noise / centres.shape[1] ** 0.5 * torch.randn(nq, lq, centres.shape[1], generator=g)
    return torch.nn.functional.normalize(q, dim=-1), relevant
