"""Triton kernels for the PLAID search stages (the CUDA path of `approx_scores` and
`decompress_maxsim`), and a device-side `ivf_candidates` in torch ops (a sort/unique set
union, which torch does well on a GPU). Validated under TRITON_INTERPRET=1 on CPU against
the float64 references (tests/test_plaid_triton.py) and run on an H100 (bench/RESULTS.md).
The launchers take inputs the family module (lateint_kernels/ops/plaid.py) has checked.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .codec import _decompress_tile, _nan_filled
from .maxsim import _precision

__all__ = ["approx_scores_triton", "decompress_maxsim_triton", "ivf_candidates_torch"]


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
    one sort/unique over (query, document) keys -> int64 [nq, width], sorted, -1 padded.
    Host syncs: the two unique, the lists' total and the widest row (the output sizes)."""
    nq, lq, k = scores.shape
    dev = scores.device
    m = min(ncells, k)
    if nq == 0 or lq == 0 or m == 0:
        return torch.full((nq, 0), -1, dtype=torch.int64, device=dev)
    cells = torch.sort(scores, dim=2, descending=True, stable=True).indices[:, :, :m]  # [nq, lq, m]
    qid = torch.arange(nq, device=dev)[:, None, None].expand(nq, lq, m)
    keys = qid * k + cells
    if query_mask is not None:  # masked tokens' cells: one sentinel key past every real one
        keys = torch.where(query_mask[:, :, None], keys, torch.full_like(keys, nq * k))
    pairs = torch.unique(keys.reshape(-1))  # distinct (query, cell), sorted
    real = pairs < nq * k
    pq, pc = pairs // k, torch.where(real, pairs % k, torch.zeros_like(pairs))
    starts = ivf_offsets[pc]
    lens = torch.where(real, ivf_offsets[pc + 1] - starts, torch.zeros_like(starts))  # the sentinel lists nothing
    total = int(lens.sum())
    if total == 0:
        return torch.full((nq, 0), -1, dtype=torch.int64, device=dev)
    first = torch.cumsum(lens, 0) - lens
    pos = torch.arange(total, device=dev) - torch.repeat_interleave(first, lens, output_size=total)
    docs = ivf_docs.long()[torch.repeat_interleave(starts, lens, output_size=total) + pos]
    keys = torch.unique(torch.repeat_interleave(pq, lens, output_size=total) * n_docs + docs)  # sorted
    kq, kd = keys // n_docs, keys % n_docs
    counts = torch.zeros(nq, dtype=torch.int64, device=dev).index_add_(0, kq, torch.ones_like(kq))
    out = torch.full((nq, int(counts.max())), -1, dtype=torch.int64, device=dev)
    col = torch.arange(keys.shape[0], device=dev) - (torch.cumsum(counts, 0) - counts)[kq]
    out[kq, col] = kd
    return out
