"""Triton MaxSim: forward (FlashAttention-style: a query tile stays on chip while document
token tiles stream past, with a running max and argmax per query token), and the backward
gathers. Works on any device Triton runs on; on CPU only under TRITON_INTERPRET=1.

Launchers take the same arguments as the ops and return the same outputs. They check
inputs, make them contiguous and never move tensors between devices.
"""
from __future__ import annotations

import contextvars
import os

import torch
import triton
import triton.language as tl

__all__ = ["maxsim_triton", "maxsim_candidates_triton", "maxsim_argmax_triton",
           "maxsim_backward_triton"]

_MAX_BLOCK_Q = 32


@triton.jit
def _maxsim_fwd_kernel(Q, QM, D, OFF, PAD, CAND, OUT, ARG, FLAG,
                       lq, dim, ns, nd, n_tok,
                       HAS_QM: tl.constexpr, HAS_PAD: tl.constexpr, HAS_CAND: tl.constexpr,
                       WRITE_ARG: tl.constexpr, ZERO_MODE: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    # grid: (slot, query, query-row block). Input problems are detected here, where the data
    # is read anyway, and reported through FLAG (bit 1: NaN/Inf similarity, 2: bad offsets,
    # 4: candidate id out of range); the launcher turns a set flag into a ValueError.
    s = tl.program_id(0)
    q = tl.program_id(1)
    qb = tl.program_id(2)
    flag = 0
    if HAS_CAND:
        doc = tl.load(CAND + q * ns + s)
        bad_cand = (doc < -1) | (doc >= nd)
        flag = tl.where(bad_cand, 4, 0)
        has_doc = (doc >= 0) & (doc < nd)
    else:
        doc = s
        has_doc = doc >= 0
    docc = tl.where(has_doc, doc, 0)
    t0 = tl.load(OFF + docc)
    t1 = tl.load(OFF + docc + 1)
    bad_off = (t0 < 0) | (t1 < t0) | (t1 > n_tok)
    if s == 0:
        bad_off = bad_off | (tl.load(OFF) != 0) | (tl.load(OFF + nd) != n_tok)
    flag = flag | tl.where(bad_off, 2, 0)
    t1 = tl.where(has_doc & (bad_off == 0), t1, t0)

    rows = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dcol = tl.arange(0, BLOCK_D)
    row_ok = rows < lq
    if HAS_QM:
        row_ok = row_ok & (tl.load(QM + q * lq + rows, mask=rows < lq, other=0) != 0)
    qt = tl.load(Q + (q * lq + rows)[:, None] * dim + dcol[None, :],
                 mask=(rows < lq)[:, None] & (dcol < dim)[None, :], other=0.0)

    best = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    arg = tl.full([BLOCK_Q], -1, tl.int32)
    for t in range(t0, t1, BLOCK_T):
        toks = t + tl.arange(0, BLOCK_T)
        tok_ok = toks < t1
        dt = tl.load(D + toks[:, None] * dim + dcol[None, :],
                     mask=tok_ok[:, None] & (dcol < dim)[None, :], other=0.0)
        sim = tl.dot(qt, tl.trans(dt), input_precision=PRECISION)
        # x * 0 != 0 exactly when x is NaN or +-Inf (padding rows/tokens hold zeros)
        nonfinite = ((sim * 0.0) != 0.0) & row_ok[:, None] & tok_ok[None, :]
        flag = flag | tl.where(tl.max(nonfinite.to(tl.int32)) > 0, 1, 0)
        sim = tl.where(tok_ok[None, :], sim, float("-inf"))
        tmax = tl.max(sim, axis=1)
        targ = (tl.argmax(sim, axis=1) + t).to(tl.int32)
        upd = tmax > best
        arg = tl.where(upd, targ, arg)
        best = tl.where(upd, tmax, best)
    # empty document: every query token contributes 0
    empty = t1 <= t0
    best = tl.where(empty, 0.0, best)
    arg = tl.where(empty, -1, arg)
    if ZERO_MODE:
        if HAS_PAD:
            padded = tl.load(PAD + docc) != 0
            floor = padded & (best <= 0.0)
            best = tl.where(floor, 0.0, best)
            arg = tl.where(floor, -1, arg)
    best = tl.where(row_ok, best, 0.0)
    total = tl.sum(best, axis=0)
    total = tl.where(has_doc, total, float("-inf"))
    tl.store(OUT + (qb * tl.num_programs(1) + q) * ns + s, total)
    if flag != 0:
        tl.atomic_or(FLAG, flag)
    if WRITE_ARG:
        arg = tl.where(row_ok & has_doc, arg, -1)
        tl.store(ARG + (q * lq + rows) * ns + s, arg, mask=rows < lq)


@triton.jit
def _grad_q_kernel(G, ARG, D, DQ, lq, dim, ns,
                   BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    q = tl.program_id(0)
    qb = tl.program_id(1)
    rows = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dcol = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
    for s in range(0, ns):
        g = tl.load(G + q * ns + s)
        a = tl.load(ARG + (q * lq + rows) * ns + s, mask=rows < lq, other=-1)
        ok = a >= 0
        x = tl.load(D + a.to(tl.int64)[:, None] * dim + dcol[None, :],
                    mask=ok[:, None] & (dcol < dim)[None, :], other=0.0)
        acc += g * x.to(tl.float32)
    tl.store(DQ + (q * lq + rows)[:, None] * dim + dcol[None, :], acc,
             mask=(rows < lq)[:, None] & (dcol < dim)[None, :])


@triton.jit
def _grad_d_kernel(G, ARG, Q, OFF, PTR, PQ, PS, DD, lq, dim, ns,
                   BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    doc = tl.program_id(0)
    t0 = tl.load(OFF + doc)
    t1 = tl.load(OFF + doc + 1)
    e0 = tl.load(PTR + doc)
    e1 = tl.load(PTR + doc + 1)
    dcol = tl.arange(0, BLOCK_D)
    for t in range(t0, t1, BLOCK_T):
        toks = t + tl.arange(0, BLOCK_T)
        acc = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
        for e in range(e0, e1):
            q = tl.load(PQ + e)
            s = tl.load(PS + e)
            g = tl.load(G + q * ns + s)
            for r0 in range(0, lq, BLOCK_Q):
                rows = r0 + tl.arange(0, BLOCK_Q)
                a = tl.load(ARG + (q * lq + rows) * ns + s, mask=rows < lq, other=-1)
                hit = (a[None, :].to(tl.int64) == toks[:, None]).to(tl.float32) * g
                qt = tl.load(Q + (q * lq + rows)[:, None] * dim + dcol[None, :],
                             mask=(rows < lq)[:, None] & (dcol < dim)[None, :], other=0.0)
                acc += tl.dot(hit, qt.to(tl.float32), input_precision="ieee")
        tl.store(DD + toks[:, None] * dim + dcol[None, :], acc,
                 mask=(toks < t1)[:, None] & (dcol < dim)[None, :])


def _check(queries, doc_tokens, doc_offsets, query_mask, doc_padded, candidates, mask_mode):
    if queries.dim() != 3:
        raise ValueError(f"`queries` must be 3-D [n_queries, query_len, dim], got {tuple(queries.shape)}")
    if doc_tokens.dim() != 2 or doc_tokens.shape[1] != queries.shape[2]:
        raise ValueError(f"`doc_tokens` must be [total_tokens, {queries.shape[2]}], got {tuple(doc_tokens.shape)}")
    if mask_mode not in ("ignore", "zero"):
        raise ValueError(f'`mask_mode` must be "ignore" or "zero", got {mask_mode!r}')
    for name, t in (("doc_tokens", doc_tokens), ("doc_offsets", doc_offsets), ("query_mask", query_mask),
                    ("doc_padded", doc_padded), ("candidates", candidates)):
        if t is not None and t.device != queries.device:
            raise ValueError(f"`{name}` must be on {queries.device} like `queries`, got {t.device}")


# Data-dependent input checks inside the kernel (one host sync per call to read the flag).
# lateint_kernels.maxsim(..., validate=False) turns them off for one call.
CHECKS = contextvars.ContextVar("lateint_triton_checks", default=True)


def _raise_for(flag, op, queries, query_mask, doc_tokens, doc_offsets, candidates):
    nd = doc_offsets.shape[0] - 1
    if flag & 2:
        raise ValueError(f"{op}: `doc_offsets` must start at 0, be non-decreasing and end at "
                         f"len(doc_tokens) = {doc_tokens.shape[0]}")
    if flag & 4:
        raise ValueError(f"{op}: `candidates` must hold document ids in [0, {nd}) or -1 for none")
    qv = queries if query_mask is None else queries[query_mask]
    if not bool(torch.isfinite(qv).all()):
        raise ValueError(f"{op}: `queries` contains NaN or Inf (in an unmasked token)")
    raise ValueError(f"{op}: `doc_tokens` contains NaN or Inf")


def _precision(dtype):
    """tl.dot precision for float32 inputs: "tf32" when torch allows TF32 matmuls; else
    "tf32x3" on GPUs (three TF32 products: float32-level accuracy on tensor cores), or
    "ieee" when LATEINT_TRITON_FP32=ieee. Ignored for 16-bit inputs."""
    if dtype != torch.float32:
        return "ieee"
    if torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return os.environ.get("LATEINT_TRITON_FP32", "tf32x3")


def _blocks(lq, dim):
    block_q = max(16, min(_MAX_BLOCK_Q, triton.next_power_of_2(max(lq, 1))))
    block_d = max(16, triton.next_power_of_2(dim))
    return block_q, block_d


def _forward(queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded, mask_mode,
             want_arg):
    _check(queries, doc_tokens, doc_offsets, query_mask, doc_padded, candidates, mask_mode)
    q = queries.contiguous()
    d = doc_tokens.contiguous()
    off = doc_offsets.contiguous()
    nq, lq, dim = q.shape
    ns = candidates.shape[1] if candidates is not None else off.shape[0] - 1
    block_q, block_d = _blocks(lq, dim)
    n_qb = max(1, triton.cdiv(lq, block_q))
    partial = torch.empty(n_qb, nq, ns, dtype=torch.float32, device=q.device)
    arg = (torch.empty(nq, lq, ns, dtype=torch.int32, device=q.device) if want_arg
           else torch.empty(1, dtype=torch.int32, device=q.device))
    if nq and ns:
        qm = query_mask.contiguous() if query_mask is not None else q
        pad = doc_padded.contiguous() if doc_padded is not None else q
        cand = candidates.contiguous() if candidates is not None else off
        flag = torch.zeros(1, dtype=torch.int32, device=q.device)
        prec = _precision(q.dtype) if q.device.type == "cuda" else "ieee"
        _maxsim_fwd_kernel[(ns, nq, n_qb)](
            q, qm, d, off, pad, cand, partial, arg, flag, lq, dim, ns, off.shape[0] - 1, d.shape[0],
            HAS_QM=query_mask is not None, HAS_PAD=doc_padded is not None,
            HAS_CAND=candidates is not None, WRITE_ARG=want_arg, ZERO_MODE=mask_mode == "zero",
            PRECISION=prec, BLOCK_Q=block_q, BLOCK_T=32, BLOCK_D=block_d)
        if CHECKS.get():
            f = int(flag.item())
            if f:
                op = "maxsim" if candidates is None else "maxsim_candidates"
                _raise_for(f, op, queries, query_mask, doc_tokens, doc_offsets, candidates)
    scores = partial.sum(0) if n_qb > 1 else partial[0]
    if want_arg and lq == 0:
        arg = arg.reshape(nq, 0, ns)
    return scores, (arg if want_arg else None)


def maxsim_triton(queries, query_mask, doc_tokens, doc_offsets, doc_padded, mask_mode):
    return _forward(queries, query_mask, doc_tokens, doc_offsets, None, doc_padded, mask_mode, False)[0]


def maxsim_candidates_triton(queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded,
                             mask_mode):
    return _forward(queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded, mask_mode,
                    False)[0]


def maxsim_argmax_triton(queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded,
                         mask_mode):
    return _forward(queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded, mask_mode,
                    True)


def doc_pairs(nq, nd, candidates, device):
    """CSR of (query, slot) pairs meeting each document, in (query, slot) order."""
    if candidates is None:
        ptr = torch.arange(nd + 1, device=device, dtype=torch.int64) * nq
        pq = torch.arange(nq, device=device, dtype=torch.int64).repeat(nd)
        ps = torch.arange(nd, device=device, dtype=torch.int64).repeat_interleave(nq)
        return ptr, pq, ps
    k = candidates.shape[1]
    flat = candidates.reshape(-1)
    keep = flat >= 0
    order = torch.argsort(torch.where(keep, flat, nd), stable=True)
    order = order[: int(keep.sum())]
    counts = torch.bincount(flat[order], minlength=nd)
    ptr = torch.zeros(nd + 1, dtype=torch.int64, device=device)
    ptr[1:] = torch.cumsum(counts, 0)
    return ptr, order // k, order % k


def maxsim_backward_triton(grad, queries, query_mask, doc_tokens, doc_offsets, candidates,
                           doc_padded, mask_mode):
    _, arg = _forward(queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded,
                      mask_mode, True)
    q = queries.contiguous()
    d = doc_tokens.contiguous()
    off = doc_offsets.contiguous()
    nq, lq, dim = q.shape
    nd = off.shape[0] - 1
    ns = arg.shape[2]
    g = grad.to(torch.float32).contiguous()
    block_q, block_d = _blocks(lq, dim)
    dq = torch.empty(nq, lq, dim, dtype=torch.float32, device=q.device)
    dd = torch.empty(d.shape[0], dim, dtype=torch.float32, device=q.device)
    if nq and lq:
        _grad_q_kernel[(nq, triton.cdiv(lq, block_q))](g, arg, d, dq, lq, dim, ns,
                                                        BLOCK_Q=block_q, BLOCK_D=block_d)
    else:
        dq.zero_()
    if nd:
        ptr, pq, ps = doc_pairs(nq, nd, candidates, q.device)
        _grad_d_kernel[(nd,)](g, arg, q, off, ptr, pq, ps, dd, lq, dim, ns,
                              BLOCK_Q=block_q, BLOCK_T=16, BLOCK_D=block_d)
    return dq.to(queries.dtype), dd.to(doc_tokens.dtype)
