"""Triton kernels of the residual codec (the CUDA path of `compress_residuals` and
`decompress_residuals`), and the tile decompression the PLAID scorer reuses.

Layout is the codec's (csrc/codec/codec_core.h): value j's bucket bits go least significant
first to bit positions j * nbits .. j * nbits + nbits - 1 of the row, bytes filled most
significant bit first; nbits divides 8, so a byte holds 8 / nbits whole values.

Validated under TRITON_INTERPRET=1 on CPU against the float64 references
(tests/test_plaid_triton.py); the launchers take inputs the family module
(lateint_kernels/ops/codec.py) has checked.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["compress_residuals_triton", "decompress_residuals_triton"]


@triton.jit
def _compress_kernel(X, C, CODES, CUT, OUT, n, dim, bpr,
                     NBITS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_B: tl.constexpr):
    # grid: blocks of BLOCK_T rows; a row's output bytes are one tile column each
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    kk = tl.arange(0, BLOCK_B)
    row_ok = rows < n
    ok = row_ok[:, None] & (kk < bpr)[None, :]
    code = tl.load(CODES + rows, mask=row_ok, other=0).to(tl.int64)
    rows64 = rows.to(tl.int64)
    byte = tl.zeros([BLOCK_T, BLOCK_B], dtype=tl.int32)
    for v in tl.static_range(8 // NBITS):
        j = kk * (8 // NBITS) + v
        x = tl.load(X + rows64[:, None] * dim + j[None, :], mask=ok, other=0.0)
        c = tl.load(C + code[:, None] * dim + j[None, :], mask=ok, other=0.0)
        r = x - c
        # bucket = #{cutoffs < r}: binary lifting over the 2^NBITS - 1 ascending cutoffs
        b = tl.zeros([BLOCK_T, BLOCK_B], dtype=tl.int32)
        for s in tl.static_range(NBITS - 1, -1, -1):
            cand = b + (1 << s)
            cut = tl.load(CUT + cand - 1)
            b = tl.where(cut < r, cand, b)
        for bb in tl.static_range(NBITS):
            byte = byte | (((b >> bb) & 1) << (7 - v * NBITS - bb))
    tl.store(OUT + rows64[:, None] * bpr + kk[None, :], byte.to(tl.uint8), mask=ok)


@triton.jit
def _unpack_tile(PACKED, W, toks64, dcol, ok, bpr, NBITS: tl.constexpr, BLOCK_T: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    """bucket_weights[bucket] of values dcol of rows toks64: [BLOCK_T, BLOCK_D] float32."""
    bucket = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.int32)
    for bb in tl.static_range(NBITS):
        p = dcol * NBITS + bb
        byte = tl.load(PACKED + toks64[:, None] * bpr + (p // 8)[None, :], mask=ok, other=0).to(tl.int32)
        bucket = bucket | (((byte >> (7 - p % 8)[None, :]) & 1) << bb)
    return tl.load(W + bucket)


@triton.jit
def _decompress_tile(CODES, PACKED, C, W, toks64, tok_ok, dcol, dim, bpr, NBITS: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """normalize(C[code] + bucket_weights[bucket]) of tokens toks64 (zero rows where not
    tok_ok, zero columns past dim): [BLOCK_T, BLOCK_D] float32."""
    ok = tok_ok[:, None] & (dcol < dim)[None, :]
    code = tl.load(CODES + toks64, mask=tok_ok, other=0).to(tl.int64)
    v = tl.load(C + code[:, None] * dim + dcol[None, :], mask=ok, other=0.0)
    v = v + _unpack_tile(PACKED, W, toks64, dcol, ok, bpr, NBITS, BLOCK_T, BLOCK_D)
    v = tl.where(ok, v, 0.0)
    return v / tl.maximum(tl.sqrt(tl.sum(v * v, axis=1)), 1e-12)[:, None]


@triton.jit
def _decompress_kernel(CODES, PACKED, C, W, OUT, n, dim, bpr,
                       NBITS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    dcol = tl.arange(0, BLOCK_D)
    row_ok = rows < n
    rows64 = rows.to(tl.int64)
    v = _decompress_tile(CODES, PACKED, C, W, rows64, row_ok, dcol, dim, bpr, NBITS, BLOCK_T, BLOCK_D)
    tl.store(OUT + rows64[:, None] * dim + dcol[None, :], v, mask=row_ok[:, None] & (dcol < dim)[None, :])


def _nan_filled(shape, dtype, device):
    """Outputs start poisoned (NaN, or 0xAB bytes): a slot a kernel forgot stays visible."""
    if dtype == torch.uint8:
        return torch.full(shape, 0xAB, dtype=dtype, device=device)
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def compress_residuals_triton(x, centroids, codes, bucket_cutoffs, nbits):
    x, c = x.float().contiguous(), centroids.float().contiguous()
    n, dim = x.shape
    bpr = dim * nbits // 8
    out = _nan_filled((n, bpr), torch.uint8, x.device)
    if n:
        block_b = triton.next_power_of_2(max(bpr, 1))
        block_t = max(1, min(64, 4096 // block_b))
        _compress_kernel[(triton.cdiv(n, block_t),)](
            x, c, codes.contiguous(), bucket_cutoffs.float().contiguous(), out, n, dim, bpr,
            NBITS=nbits, BLOCK_T=block_t, BLOCK_B=block_b)
    return out


def decompress_residuals_triton(codes, packed, centroids, bucket_weights, nbits):
    c = centroids.float().contiguous()
    n, dim = packed.shape[0], c.shape[1]
    out = _nan_filled((n, dim), torch.float32, c.device)
    if n:
        block_d = triton.next_power_of_2(dim)
        block_t = max(1, min(64, 8192 // block_d))
        _decompress_kernel[(triton.cdiv(n, block_t),)](
            codes.contiguous(), packed.contiguous(), c, bucket_weights.float().contiguous(), out, n, dim,
            packed.shape[1], NBITS=nbits, BLOCK_T=block_t, BLOCK_D=block_d)
    return out
