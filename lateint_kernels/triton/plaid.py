"""Triton kernels for the PLAID codec and search stages (the CUDA path of
`compress_residuals`, `decompress_residuals`, `approx_scores` and `decompress_maxsim`), and
a device-side `ivf_candidates` in torch ops (a sort/unique set union, which torch does
well on a GPU).

Layout is the residual codec's (csrc/core/residual_core.h): value j's bucket bits go least
significant first to bit positions j * nbits .. j * nbits + nbits - 1 of the row, bytes
filled most significant bit first; nbits divides 8, so a byte holds 8 / nbits whole values.

Validated under TRITON_INTERPRET=1 on CPU against the float64 references
(tests/test_plaid_triton.py) and compiled to sm_80 / sm_90 cubins there; not yet run on a
GPU. The launchers take already-checked inputs (lateint_kernels/plaid.py and residual.py
check them, data-dependent conditions included, before launching).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .maxsim import _precision

__all__ = ["compress_residuals_triton", "decompress_residuals_triton", "approx_scores_triton",
           "decompress_maxsim_triton", "ivf_candidates_torch"]


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


@triton.jit
def _candidate_rows(QM, CAND, OFF, nc, lq, HAS_QM: tl.constexpr, BLOCK_Q: tl.constexpr):
    """What both candidate scorers start from, for program (slot s, query q, row block qb):
    the candidate's token range [t0, t1) (empty for a -1 slot), the block's query rows and
    which of them count (inside the query, unmasked)."""
    s = tl.program_id(0)
    q = tl.program_id(1).to(tl.int64)  # 64-bit offsets: nq * nc, nq * lq * dim, nq * k may pass 2^31
    qb = tl.program_id(2)
    doc = tl.load(CAND + q * nc + s)
    has_doc = doc >= 0
    docc = tl.where(has_doc, doc, 0)
    t0 = tl.load(OFF + docc)
    t1 = tl.where(has_doc, tl.load(OFF + docc + 1), t0)
    rows = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < lq
    if HAS_QM:
        row_ok = row_ok & (tl.load(QM + q * lq + rows, mask=rows < lq, other=0) != 0)
    return s, q, qb, has_doc, t0, t1, rows, row_ok


@triton.jit
def _decompress_maxsim_kernel(Q, QM, CODES, PACKED, OFF, C, W, CAND, OUT, nc, lq, dim, bpr,
                              HAS_QM: tl.constexpr, NBITS: tl.constexpr, PRECISION: tl.constexpr,
                              BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    # grid: (candidate slot, query, query-row block). The candidate's tokens are decompressed
    # tile by tile (centroid + bucket weights, normalized) and scored against the block of
    # query rows on chip; OUT holds one partial sum per row block.
    s, q, qb, has_doc, t0, t1, rows, row_ok = _candidate_rows(QM, CAND, OFF, nc, lq, HAS_QM, BLOCK_Q)
    dcol = tl.arange(0, BLOCK_D)
    qt = tl.load(Q + (q * lq + rows)[:, None] * dim + dcol[None, :],
                 mask=(rows < lq)[:, None] & (dcol < dim)[None, :], other=0.0)
    best = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    for t in range(t0, t1, BLOCK_T):
        toks = t + tl.arange(0, BLOCK_T)
        tok_ok = toks < t1
        v = _decompress_tile(CODES, PACKED, C, W, toks.to(tl.int64), tok_ok, dcol, dim, bpr, NBITS, BLOCK_T,
                             BLOCK_D)
        sim = tl.dot(qt, tl.trans(v), input_precision=PRECISION)
        sim = tl.where(tok_ok[None, :], sim, float("-inf"))
        best = tl.maximum(best, tl.max(sim, axis=1))
    best = tl.where(t1 > t0, best, 0.0)  # empty document: 0
    total = tl.sum(tl.where(row_ok, best, 0.0), axis=0)
    tl.store(OUT + (qb * tl.num_programs(1).to(tl.int64) + q) * nc + s, tl.where(has_doc, total, float("-inf")))


@triton.jit
def _approx_scores_kernel(S, QM, KEEP, CODES, OFF, CAND, OUT, nc, lq, k,
                          HAS_QM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr):
    # grid: (candidate slot, query, query-row block). Centroid-only MaxSim: scores[q, i,
    # code] gathered for the document's codes whose centroid survived pruning (KEEP[q, code]).
    s, q, qb, has_doc, t0, t1, rows, row_ok = _candidate_rows(QM, CAND, OFF, nc, lq, HAS_QM, BLOCK_Q)
    srow = S + (q * lq + rows) * k
    best = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    kept = 0
    for t in range(t0, t1, BLOCK_T):
        toks = t + tl.arange(0, BLOCK_T)
        tok_ok = toks < t1
        code = tl.load(CODES + toks.to(tl.int64), mask=tok_ok, other=0).to(tl.int64)
        keep = tok_ok & (tl.load(KEEP + q * k + code, mask=tok_ok, other=0) != 0)
        kept += tl.sum(keep.to(tl.int32), axis=0)
        sc = tl.load(srow[:, None] + code[None, :], mask=(rows < lq)[:, None] & keep[None, :],
                     other=float("-inf"))
        best = tl.maximum(best, tl.max(sc, axis=1))
    total = tl.sum(tl.where(row_ok, best, 0.0), axis=0)
    total = tl.where(kept > 0, total, 0.0)
    tl.store(OUT + (qb * tl.num_programs(1).to(tl.int64) + q) * nc + s, tl.where(has_doc, total, float("-inf")))


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


_MAX_BLOCK_Q = 32


def _query_blocks(lq):
    """Rows of the query per program (16..32; tl.dot needs >= 16) and how many blocks."""
    block_q = max(16, min(_MAX_BLOCK_Q, triton.next_power_of_2(max(lq, 1))))
    return block_q, max(1, triton.cdiv(lq, block_q))


def decompress_maxsim_triton(queries, query_mask, codes, packed, doc_offsets, centroids, bucket_weights, nbits,
                             candidates):
    q = queries.float().contiguous()
    nq, lq, dim = q.shape
    cand = candidates.contiguous()
    nc = cand.shape[1]
    if nq == 0 or nc == 0:
        return _nan_filled((nq, nc), torch.float32, q.device)
    qm = query_mask.to(torch.int8).contiguous() if query_mask is not None else q
    block_q, nqb = _query_blocks(lq)
    block_d = max(16, triton.next_power_of_2(dim))
    block_t = 32 if block_d <= 256 else 16
    prec = _precision(q.dtype) if q.device.type == "cuda" else "ieee"
    partial = _nan_filled((nqb, nq, nc), torch.float32, q.device)
    _decompress_maxsim_kernel[(nc, nq, nqb)](
        q, qm, codes.contiguous(), packed.contiguous(), doc_offsets.contiguous(), centroids.float().contiguous(),
        bucket_weights.float().contiguous(), cand, partial, nc, lq, dim, packed.shape[1],
        HAS_QM=query_mask is not None, NBITS=nbits, PRECISION=prec, BLOCK_Q=block_q, BLOCK_T=block_t,
        BLOCK_D=block_d)
    return partial[0] if nqb == 1 else partial.sum(0)


def pruning_mask(scores, query_mask, threshold):
    """keep[q, c]: centroid c's best score over q's unmasked query tokens >= threshold
    (PLAID's centroid pruning); nothing is kept for a query without unmasked tokens."""
    s = scores if query_mask is None else scores.masked_fill(~query_mask[:, :, None], float("-inf"))
    if s.shape[1] == 0:
        return torch.zeros(s.shape[0], s.shape[2], dtype=torch.bool, device=s.device)
    keep = s.amax(dim=1) >= threshold
    if query_mask is not None:
        keep &= query_mask.any(dim=1, keepdim=True)
    return keep


def approx_scores_triton(scores, query_mask, codes, doc_offsets, candidates, threshold):
    s = scores.contiguous()
    nq, lq, k = s.shape
    cand = candidates.contiguous()
    nc = cand.shape[1]
    if nq == 0 or nc == 0:
        return _nan_filled((nq, nc), torch.float32, s.device)
    keep = pruning_mask(s, query_mask, threshold).to(torch.int8).contiguous()
    qm = query_mask.to(torch.int8).contiguous() if query_mask is not None else s
    block_q, nqb = _query_blocks(lq)
    partial = _nan_filled((nqb, nq, nc), torch.float32, s.device)
    _approx_scores_kernel[(nc, nq, nqb)](
        s, qm, keep, codes.contiguous(), doc_offsets.contiguous(), cand, partial, nc, lq, k,
        HAS_QM=query_mask is not None, BLOCK_Q=block_q, BLOCK_T=32)
    return partial[0] if nqb == 1 else partial.sum(0)


def ivf_candidates_torch(scores, query_mask, ivf_offsets, ivf_docs, n_docs, ncells):
    """ivf_candidates in device-side torch ops: the ncells best centroids of every unmasked
    query token (stable sort: ties go to the lower id), their IVF lists concatenated, then
    one sort/unique over (query, document) keys -> int64 [nq, width], sorted, -1 padded."""
    nq, lq, k = scores.shape
    dev = scores.device
    m = min(ncells, k)
    if nq == 0 or lq == 0 or m == 0:
        return torch.full((nq, 0), -1, dtype=torch.int64, device=dev)
    cells = torch.sort(scores, dim=2, descending=True, stable=True).indices[:, :, :m]  # [nq, lq, m]
    qid = torch.arange(nq, device=dev)[:, None, None].expand(nq, lq, m)
    if query_mask is not None:
        sel = query_mask[:, :, None].expand(nq, lq, m)
        cells, qid = cells[sel], qid[sel]
    pairs = torch.unique(qid.reshape(-1) * k + cells.reshape(-1))  # distinct (query, cell)
    pq, pc = pairs // k, pairs % k
    starts = ivf_offsets[pc]
    lens = ivf_offsets[pc + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return torch.full((nq, 0), -1, dtype=torch.int64, device=dev)
    first = torch.cumsum(lens, 0) - lens
    pos = torch.arange(total, device=dev) - torch.repeat_interleave(first, lens)
    docs = ivf_docs.long()[torch.repeat_interleave(starts, lens) + pos]
    keys = torch.unique(torch.repeat_interleave(pq, lens) * n_docs + docs)  # sorted
    kq, kd = keys // n_docs, keys % n_docs
    counts = torch.bincount(kq, minlength=nq)
    out = torch.full((nq, int(counts.max())), -1, dtype=torch.int64, device=dev)
    col = torch.arange(keys.shape[0], device=dev) - (torch.cumsum(counts, 0) - counts)[kq]
    out[kq, col] = kd
    return out
