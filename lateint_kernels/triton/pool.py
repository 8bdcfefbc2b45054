"""Triton token pooling (GPU path of `token_pool`): one program per document computes its
cosine distances, a second runs Ward's nearest-neighbour chain over them, both on the
device. The chain is scipy's (same float64 operations in the same order, same
tie-breaking; launched with fp fusion off so no multiply-add is contracted). The merge list
(n - 1 rows per document) then goes to the host, where the C++ core does scipy's sort,
relabelling and maxclust cut (`_token_pool_finish`), and the means are a segment mean on
the device (lateint_kernels/ops/pool.py).

Validated under TRITON_INTERPRET=1 on CPU (tests/test_pool.py) and run on an H200 (bench/RESULTS.md).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["token_pool_labels_triton", "pool_distances_triton", "ward_chain_triton"]

# Scratch distance matrices per launch (float64 [docs, NP, NP]) are kept under this size.
_SCRATCH_BYTES = 256 << 20
_MAX_NP = 8192


@triton.jit
def _pool_dist_kernel(X, OFF, DS, doc0, protect, dim, NP,
                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    # grid (document in chunk, row block, column block): DS[doc, r, c] = float64(1 - <x_r, x_c>)
    # in float32 (PyLate's distance), +inf on the diagonal and past the document. Column
    # tiles keep the staged operands within shared memory for every NP (a whole-row tile
    # needed 270 KB at NP=512, over sm_90's 227 KB).
    dl = tl.program_id(0)
    rb = tl.program_id(1)
    cb = tl.program_id(2)
    d = doc0 + dl
    t0 = tl.load(OFF + d)
    t1 = tl.load(OFF + d + 1)
    p = tl.minimum(protect, t1 - t0)
    s = t0 + p
    n = t1 - s
    rows = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    kk = tl.arange(0, BLOCK_D)
    g = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for k0 in range(0, dim, BLOCK_D):
        km = (k0 + kk) < dim
        xr = tl.load(X + (s + rows)[:, None] * dim + (k0 + kk)[None, :],
                     mask=(rows < n)[:, None] & km[None, :], other=0.0)
        xc = tl.load(X + (s + cols)[:, None] * dim + (k0 + kk)[None, :],
                     mask=(cols < n)[:, None] & km[None, :], other=0.0)
        g += tl.dot(xr, tl.trans(xc), input_precision="ieee")
    dist = (1.0 - g).to(tl.float64)
    dead = (rows[:, None] == cols[None, :]) | (cols[None, :] >= n) | (rows[:, None] >= n)
    dist = tl.where(dead, float("inf"), dist)
    tl.store(DS + dl * NP * NP + rows[:, None] * NP + cols[None, :], dist, mask=(rows < NP)[:, None])


@triton.jit
def _ward_chain_kernel(DS, OFF, MX, MY, MD, doc0, protect, pool_factor, W,
                       FORCE: tl.constexpr, NP: tl.constexpr):
    # grid (document in chunk,): Ward NN-chain over DS[doc] (overwritten), writing the merges
    # in chain order (slots x < y, distance) to row doc of MX/MY/MD. FORCE: run whatever the
    # cut would be (tests); otherwise documents the cut would not shrink are skipped.
    dl = tl.program_id(0)
    d = doc0 + dl
    t0 = tl.load(OFF + d)
    t1 = tl.load(OFF + d + 1)
    p = tl.minimum(protect, t1 - t0)
    n = (t1 - t0 - p).to(tl.int32)  # every slot index and counter is int32 (loop-carried types)
    k_target = tl.maximum(n // pool_factor, 1)
    run = (k_target < n) | (FORCE & (n >= 2))
    if run:
        base = DS + dl * NP * NP
        idx = tl.arange(0, NP)
        size = tl.where(idx < n, 1.0, 0.0).to(tl.float64)
        chain = tl.zeros([NP], dtype=tl.int32)
        length = n * 0
        x = n * 0
        y = n * 0
        cur = tl.zeros([], dtype=tl.float64)
        for k in range(0, n - 1):
            if length == 0:
                first = tl.min(tl.where(size > 0, idx, NP))
                chain = tl.where(idx == 0, first, chain)
                length = n * 0 + 1
            go = n >= 0
            while go:
                x = tl.sum(tl.where(idx == length - 1, chain, 0))
                row = tl.load(base + x * NP + idx)
                row = tl.where((size > 0) & (idx != x), row, float("inf"))
                mn = tl.min(row)
                im = tl.min(tl.where(row == mn, idx, NP))
                has_prev = length > 1
                prev = tl.sum(tl.where(idx == length - 2, chain, 0))
                dprev = tl.load(base + x * NP + prev)
                better = mn < dprev
                y = tl.where(has_prev, tl.where(better, im, prev), tl.where(im < NP, im, y))
                cur = tl.where(has_prev, tl.where(better, mn, dprev), mn)
                stop = has_prev & (y == prev)
                chain = tl.where((idx == length) & (stop == 0), y, chain)
                length = tl.where(stop, length, length + 1)
                go = stop == 0
            length = length - 2
            xs = tl.minimum(x, y)
            ys = tl.maximum(x, y)
            nx = tl.sum(tl.where(idx == xs, size, 0.0))
            ny = tl.sum(tl.where(idx == ys, size, 0.0))
            tl.store(MX + d * W + k, xs)
            tl.store(MY + d * W + k, ys)
            tl.store(MD + d * W + k, cur)
            size = tl.where(idx == xs, 0.0, tl.where(idx == ys, nx + ny, size))
            rx = tl.load(base + xs * NP + idx)
            ry = tl.load(base + ys * NP + idx)
            # float64 '/' and sqrt are correctly rounded (div.rn.f64 / sqrt.rn.f64 on NVIDIA;
            # the approximate forms exist only for float32)
            t = 1.0 / ((nx + ny) + size)
            r = ((size + nx) * t * rx * rx + (size + ny) * t * ry * ry) - size * t * cur * cur
            r = tl.where(r < 0.0, 0.0, r)
            new = tl.sqrt(r)
            upd = (size > 0) & (idx != ys)
            tl.debug_barrier()
            tl.store(base + ys * NP + idx, new, mask=upd)
            tl.store(base + idx * NP + ys, new, mask=upd)
            tl.debug_barrier()


def _np_for(n_max: int) -> int:
    return max(16, triton.next_power_of_2(max(int(n_max), 1)))


def _launch_opts(device) -> dict:
    # no contraction of a*b + c: the chain must perform scipy's exact operations
    return {} if device.type == "cpu" else {"enable_fp_fusion": False}


def pool_distances_triton(x: torch.Tensor, offsets: torch.Tensor, protected_tokens: int, doc0: int,
                          n_docs: int, NP: int) -> torch.Tensor:
    """float64 [n_docs, NP, NP] distance matrices of documents doc0..doc0+n_docs-1."""
    ds = torch.empty(n_docs, NP, NP, dtype=torch.float64, device=x.device)
    block_r, block_c = 16, min(NP, 128)
    block_d = min(64, triton.next_power_of_2(max(x.shape[1], 16)))
    _pool_dist_kernel[(n_docs, NP // block_r, NP // block_c)](
        x, offsets, ds, doc0, protected_tokens, x.shape[1], NP,
        BLOCK_R=block_r, BLOCK_C=block_c, BLOCK_D=block_d)
    return ds


def ward_chain_triton(ds: torch.Tensor, offsets: torch.Tensor, protected_tokens: int, pool_factor: int,
                      doc0: int, mx: torch.Tensor, my: torch.Tensor, md: torch.Tensor, force: bool = False):
    """Runs the NN-chain over ds (overwritten) into rows doc0.. of the merge arrays."""
    n_docs, NP = ds.shape[0], ds.shape[1]
    _ward_chain_kernel[(n_docs,)](ds, offsets, mx, my, md, doc0, protected_tokens, pool_factor,
                                  mx.shape[1], FORCE=force, NP=NP, **_launch_opts(ds.device))


def token_pool_labels_triton(doc_tokens, doc_offsets, pool_factor, protected_tokens, distance):
    """token_pool_labels with the distances and the chain on the device (cosine distance,
    float32/16 inputs); other cases, and documents longer than 8,192 tokens, cluster on the
    host through the CPU kernel."""
    dev = doc_tokens.device
    off_h = doc_offsets.cpu()
    lens = off_h[1:] - off_h[:-1]
    n_pool = (lens - protected_tokens).clamp_min(0)
    n_max = int(n_pool.max()) if n_pool.numel() else 0
    if distance != "cosine" or doc_tokens.dtype == torch.float64 or _np_for(n_max) > _MAX_NP:
        rows, off = torch.ops.lateint_kernels.token_pool_labels(doc_tokens.cpu(), off_h, pool_factor,
                                                                protected_tokens, distance)
        return rows.to(dev), off.to(dev)
    nd = lens.shape[0]
    NP = _np_for(n_max)
    W = max(1, NP - 1)
    x = doc_tokens.float().contiguous()
    off_d = doc_offsets.contiguous()
    mx = torch.full((nd, W), -1, dtype=torch.int32, device=dev)
    my = torch.full((nd, W), -1, dtype=torch.int32, device=dev)
    md = torch.full((nd, W), float("nan"), dtype=torch.float64, device=dev)
    chunk = max(1, _SCRATCH_BYTES // (NP * NP * 8))
    for d0 in range(0, nd, chunk):
        nc = min(chunk, nd - d0)
        ds = pool_distances_triton(x, off_d, protected_tokens, d0, nc, NP)
        ward_chain_triton(ds, off_d, protected_tokens, pool_factor, d0, mx, my, md)
    rows, off = torch.ops.lateint_kernels._token_pool_finish(mx.cpu(), my.cpu(), md.cpu(), off_h,
                                                             pool_factor, protected_tokens)
    return rows.to(dev), off.to(dev)
