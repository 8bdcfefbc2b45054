"""Realistic synthetic late-interaction data: L2-normalized token embeddings drawn around
topic centres (clustered), documents of varied lengths. Never all-zero."""
from __future__ import annotations

import torch


def clustered(n: int, dim: int, *, n_topics: int = 16, noise: float = 0.35, generator=None,
              centres=None) -> torch.Tensor:
    if centres is None:
        centres = torch.nn.functional.normalize(torch.randn(n_topics, dim, generator=generator), dim=-1)
    pick = torch.randint(0, centres.shape[0], (n,), generator=generator)
    x = centres[pick] + noise * torch.randn(n, dim, generator=generator) / dim ** 0.5 * 4
    return torch.nn.functional.normalize(x, dim=-1)


def clustered_docs(n: int, dim: int, lo: int, hi: int, *, seed: int = 0, dtype=torch.float32):
    """n normalized documents of random lengths in [lo, hi), a list of [L, dim] tensors, each
    drawn around topics of its own (one per ~5 tokens), as the adapters' inputs come."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(lo, hi, (), generator=g))
        out.append(clustered(length, dim, n_topics=max(1, length // 5), generator=g).to(dtype))
    return out


def corpus(lengths, dim: int = 128, *, nq: int = 2, lq: int = 32, seed: int = 0,
           dtype=torch.float32, n_topics: int = 16):
    """(queries [nq, lq, dim], tokens [T, dim], offsets [nd+1]) sharing topic centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_topics, dim, generator=g), dim=-1)
    lengths = torch.as_tensor(list(lengths), dtype=torch.int64)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    tokens = clustered(int(offsets[-1]), dim, generator=g, centres=centres)
    queries = clustered(nq * lq, dim, generator=g, centres=centres).reshape(nq, lq, dim)
    return queries.to(dtype), tokens.to(dtype), offsets


def random_lengths(n: int, lo: int, hi: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, (n,), generator=g).tolist()
