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


def fit_two_level(x: torch.Tensor, k: int, n_cells: int, *, niter: int = 20, seed: int = 0,
                  show_progress_bar: bool = False):
    """Hierarchical k-means for large k: `n_cells` coarse centroids on x, then in each coarse
    cell a spherical k-means on that cell's rows with a share of k proportional to them (at
    least one per non-empty cell, at most its rows). Returns (centroids float32 [k', dim]
    ordered cell by cell, coarse [n_cells, dim], cell_offsets int64 [n_cells + 1]); k' = k
    unless cells hold fewer rows. Costs about n * (n_cells + k / n_cells) * dim per
    iteration instead of n * k * dim; deterministic like `fit`."""
    n = x.shape[0]
    if isinstance(n_cells, bool) or not isinstance(n_cells, int) or not 1 <= n_cells <= min(k, n):
        raise ValueError(f"kmeans.fit_two_level: `n_cells` must be an integer in [1, min(k, n)], got {n_cells!r}")
    coarse = fit(x, n_cells, niter=niter, seed=seed, show_progress_bar=show_progress_bar)
    cell = lk.kmeans_assign(x.float(), coarse).long()
    counts = torch.bincount(cell, minlength=n_cells)
    # k split over the cells by their rows (largest remainders), 1 <= k_j <= rows
    share = counts.double() * k / n
    kj = torch.minimum(torch.floor(share).long().clamp(min=1), counts)
    rest = k - int(kj.sum())
    if rest > 0:
        room = counts - kj
        order = torch.argsort(-(share - torch.floor(share)), stable=True)
        for j in order.tolist():
            if rest == 0:
                break
            take = min(rest, int(room[j]))
            kj[j] += take
            rest -= take
    kj = torch.where(counts > 0, kj, torch.zeros_like(kj))
    order = torch.argsort(cell, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    parts = []
    cells = range(n_cells)
    if show_progress_bar:
        from tqdm.auto import tqdm

        cells = tqdm(cells, desc=f"k-means in {n_cells} cells ({k} centroids, {n} points)")
    for j in cells:
        if int(kj[j]) == 0:
            continue
        rows = x[order[int(starts[j]):int(starts[j] + counts[j])]]
        parts.append(fit(rows, int(kj[j]), niter=niter, seed=seed + 1 + j))
    offsets = torch.zeros(n_cells + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(kj, 0)
    return torch.cat(parts), coarse, offsets


_PROBE_ROWS = 1 << 15  # rows scored against the coarse centroids at a time


def assign_two_level(x: torch.Tensor, centroids: torch.Tensor, coarse: torch.Tensor, cell_offsets: torch.Tensor,
                     nprobe: int):
    """Approximate nearest centroid: the best centroid among the cells of the `nprobe` best
    coarse centroids of each row, and always among centroids[cell_offsets[-1]:] (centroids
    appended later, outside every cell). -> (codes int32 [n], scores float32 [n]); ties to
    the lower centroid. Exact when the nearest centroid lies in a probed cell."""
    n = x.shape[0]
    xf = x.float().contiguous()
    n_cells = coarse.shape[0]
    nprobe = min(nprobe, n_cells)
    top = torch.empty(n, nprobe, dtype=torch.int64)
    for r0 in range(0, n, _PROBE_ROWS):
        top[r0:r0 + _PROBE_ROWS] = (xf[r0:r0 + _PROBE_ROWS] @ coarse.T).topk(nprobe, dim=1).indices
    cell = top.reshape(-1)
    row = torch.arange(n).repeat_interleave(nprobe)
    order = torch.argsort(cell, stable=True)
    cell, row = cell[order], row[order]
    counts = torch.bincount(cell, minlength=n_cells)
    starts = (torch.cumsum(counts, 0) - counts).tolist()
    cand_code = torch.empty(cell.shape[0], dtype=torch.int64)
    cand_score = torch.empty(cell.shape[0])
    offs = cell_offsets.tolist()
    for j, (s, c) in enumerate(zip(starts, counts.tolist())):
        if c == 0:
            continue
        if offs[j + 1] == offs[j]:  # an empty cell
            cand_code[s:s + c] = 0
            cand_score[s:s + c] = float("-inf")
            continue
        codes, scores = lk.kmeans_assign(xf[row[s:s + c]], centroids[offs[j]:offs[j + 1]], return_scores=True)
        cand_code[s:s + c] = codes.long() + offs[j]
        cand_score[s:s + c] = scores
    if offs[-1] < centroids.shape[0]:  # appended centroids: scored for every row
        codes, scores = lk.kmeans_assign(xf, centroids[offs[-1]:], return_scores=True)
        row = torch.cat([row, torch.arange(n)])
        cand_code = torch.cat([cand_code, codes.long() + offs[-1]])
        cand_score = torch.cat([cand_score, scores])
    best = torch.full((n,), float("-inf")).scatter_reduce(0, row, cand_score, "amax")
    code = torch.full((n,), centroids.shape[0], dtype=torch.int64)
    hit = cand_score == best[row]
    code = code.scatter_reduce(0, row[hit], cand_code[hit], "amin")
    return code.to(torch.int32), best
