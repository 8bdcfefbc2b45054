"""Deterministic spherical k-means on `kmeans_assign` (PLAID's centroid training).

Same data, k, niter and seed -> bit-identical centroids on CPU, whatever the thread count:
the assignment is exact per row (first index on ties), the sums are float64 index_add in
row order, and nothing else depends on scheduling.
"""
from __future__ import annotations

import math

import torch

import lateint_kernels as lk


def plaid_num_centroids(n_tokens: int) -> int:
    """PLAID / ColBERTv2's rule: 2 ** floor(log2(16 * sqrt(n_tokens)))."""
    if n_tokens < 1:
        raise ValueError(f"plaid_num_centroids: `n_tokens` must be >= 1, got {n_tokens}")
    return 2 ** int(math.floor(math.log2(16 * math.sqrt(n_tokens))))


_SUM_CHUNK = 1 << 16  # rows converted to float64 at a time for the centroid sums


def fit(x: torch.Tensor, k: int, *, niter: int = 20, seed: int = 0,
        show_progress_bar: bool = False) -> torch.Tensor:
    """Centroids [k, dim] float32 (L2-normalized) of the rows of x [n, dim]: k distinct rows
    drawn with `seed` as the start, then `niter` rounds of assignment (by inner product) and
    normalized means. A centroid that loses all its rows keeps its previous position."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError("kmeans.fit: `x` must be a 2-D tensor [n, dim]")
    n = x.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"kmeans.fit: `k` must be an integer in [1, n = {n}], got {k!r}")
    if isinstance(niter, bool) or not isinstance(niter, int) or niter < 0:
        raise ValueError(f"kmeans.fit: `niter` must be an integer >= 0, got {niter!r}")
    g = torch.Generator().manual_seed(seed)
    start = torch.randperm(n, generator=g)[:k].to(x.device)
    c = torch.nn.functional.normalize(x[start].float(), dim=-1)
    xf = x.float()
    # float64 sums without a float64 copy of x (it was 2x the sample's size in memory): rows
    # are added chunk after chunk in their order, the same additions as one index_add_.
    chunk = _SUM_CHUNK
    steps = range(niter)
    if show_progress_bar:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"k-means ({k} centroids, {n} points)")
    for _ in steps:
        codes = lk.kmeans_assign(xf, c).long()
        sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
        for i in range(0, n, chunk):
            sums.index_add_(0, codes[i:i + chunk], x[i:i + chunk].double())
        counts = torch.bincount(codes, minlength=k)
        new = torch.nn.functional.normalize(sums, dim=-1).float()
        c = torch.where((counts > 0)[:, None], new, c)
    return c
