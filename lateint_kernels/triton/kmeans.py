"""Triton kmeans_assign (CUDA path): a block of rows stays on chip while centroid tiles
stream past; tensor-core dot products, running max and first-index argmax per row.
Validated under TRITON_INTERPRET=1 on CPU (tests/test_kmeans.py) and run on an H200 (bench/RESULTS.md)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["kmeans_assign_triton"]


@triton.jit
def _kmeans_assign_kernel(X, C, CODES, SCORES, n, k, dim,
                          PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dd = tl.arange(0, BLOCK_D)
    cols0 = tl.arange(0, BLOCK_N)
    best = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    arg = tl.full([BLOCK_M], -1, dtype=tl.int32)
    for j0 in range(0, k, BLOCK_N):
        cols = j0 + cols0
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            dm = (d0 + dd) < dim
            xt = tl.load(X + rows[:, None] * dim + (d0 + dd)[None, :],
                         mask=(rows < n)[:, None] & dm[None, :], other=0.0)
            ct = tl.load(C + cols[:, None] * dim + (d0 + dd)[None, :],
                         mask=(cols < k)[:, None] & dm[None, :], other=0.0)
            acc += tl.dot(xt, tl.trans(ct), input_precision=PRECISION)
        acc = tl.where((cols < k)[None, :], acc, float("-inf"))
        tile_best = tl.max(acc, axis=1)
        tile_arg = tl.argmax(acc, axis=1, tie_break_left=True).to(tl.int32) + j0
        take = tile_best > best  # strict: an earlier tile keeps a tie
        best = tl.where(take, tile_best, best)
        arg = tl.where(take, tile_arg, arg)
    tl.store(CODES + rows, arg, mask=rows < n)
    tl.store(SCORES + rows, best, mask=rows < n)


def kmeans_assign_triton(x: torch.Tensor, centroids: torch.Tensor):
    """(codes int32 [n], scores float32 [n]); same contract as the CPU op."""
    x = x.contiguous()
    c = centroids.contiguous()
    n, dim = x.shape
    k = c.shape[0]
    codes = torch.empty(n, dtype=torch.int32, device=x.device)
    scores = torch.empty(n, dtype=torch.float32, device=x.device)
    if n == 0:
        return codes, scores
    block_d = min(128, max(16, triton.next_power_of_2(dim)))
    precision = "tf32x3" if x.dtype == torch.float32 and x.device.type != "cpu" else "ieee"
    grid = (triton.cdiv(n, 64),)
    _kmeans_assign_kernel[grid](x, c, codes, scores, n, k, dim, PRECISION=precision,
                                BLOCK_M=64, BLOCK_N=64, BLOCK_D=block_d)
    return codes, scores
