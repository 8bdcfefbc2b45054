"""MaxSim references: the formula on padded documents (float64 for the test oracle) and
PyLate's `colbert_scores`, restated."""
from __future__ import annotations

import torch

__all__ = ["maxsim_ref", "maxsim_candidates_ref", "maxsim_argmax_ref", "pylate_colbert_scores_ref"]


def _padded(doc_tokens: torch.Tensor, doc_offsets: torch.Tensor, doc_ids: torch.Tensor):
    """Gather documents `doc_ids` into [n, Lmax, d] with a validity mask [n, Lmax]. With no
    documents at all, every id is a placeholder (of a -1 candidate) and comes back empty."""
    if doc_offsets.shape[0] < 2:
        return (doc_tokens.new_zeros(len(doc_ids), 1, doc_tokens.shape[1]),
                torch.zeros(len(doc_ids), 1, dtype=torch.bool, device=doc_tokens.device))
    starts = doc_offsets[doc_ids]
    lens = doc_offsets[doc_ids + 1] - starts
    lmax = int(lens.max()) if lens.numel() else 0
    pos = torch.arange(max(lmax, 1), device=doc_tokens.device)
    valid = pos[None, :] < lens[:, None]
    idx = (starts[:, None] + pos[None, :]).clamp_max(max(doc_tokens.shape[0] - 1, 0))
    if doc_tokens.shape[0] == 0:
        return doc_tokens.new_zeros(len(doc_ids), 1, doc_tokens.shape[1]), valid
    return doc_tokens[idx], valid


def _token_max(sim, valid, padded, mask_mode):
    """sim [..., L] with valid [..., L] -> per-token max (0 for empty docs) and argmax."""
    sim = sim.masked_fill(~valid, float("-inf"))
    best, arg = sim.max(dim=-1)
    empty = ~valid.any(dim=-1)
    best = torch.where(empty, torch.zeros_like(best), best)
    arg = torch.where(empty, torch.full_like(arg, -1), arg)
    if mask_mode == "zero" and padded is not None:
        floor = padded & ~(best > 0)
        best = torch.where(floor, torch.zeros_like(best), best)
        arg = torch.where(floor, torch.full_like(arg, -1), arg)
    return best, arg


def _scores(queries, query_mask, doc_tokens, doc_offsets, doc_ids, doc_padded, mask_mode,
            chunk: int = 256):
    """doc_ids: [nq, k] (per-query candidates; -1 = none) or None (all pairs)."""
    nq, lq, _ = queries.shape
    qmask = (torch.ones(nq, lq, dtype=torch.bool, device=queries.device)
             if query_mask is None else query_mask)
    nd = doc_offsets.shape[0] - 1
    if doc_ids is None:
        outs, args = [], []
        for c0 in range(0, nd, chunk):
            ids = torch.arange(c0, min(nd, c0 + chunk), device=queries.device)
            D, valid = _padded(doc_tokens, doc_offsets, ids)
            sim = torch.einsum("qid,ntd->qint", queries, D)  # [nq, lq, n, L]
            pad = None if doc_padded is None else doc_padded[ids][None, None, :]
            best, arg = _token_max(sim, valid[None, None], pad, mask_mode)
            starts = doc_offsets[ids][None, None, :]
            arg = torch.where(arg >= 0, arg + starts, arg)
            best = torch.where(qmask[:, :, None], best, torch.zeros_like(best))  # masked: adds 0, even NaN
            arg = torch.where(qmask[:, :, None], arg, torch.full_like(arg, -1))
            outs.append(best.sum(1))
            args.append(arg)
        if not outs:
            return queries.new_zeros(nq, 0), torch.zeros(nq, lq, 0, dtype=torch.long)
        return torch.cat(outs, 1), torch.cat(args, 2)
    k = doc_ids.shape[1]
    if nq == 0 or k == 0:
        return queries.new_zeros(nq, k), torch.full((nq, lq, k), -1, dtype=torch.long, device=queries.device)
    none = doc_ids < 0
    ids = doc_ids.clamp_min(0)
    D, valid = _padded(doc_tokens, doc_offsets, ids.reshape(-1))
    D = D.reshape(nq, k, *D.shape[1:])
    valid = valid.reshape(nq, k, -1)
    sim = torch.einsum("qid,qktd->qikt", queries, D)
    pad = None if doc_padded is None or nd == 0 else doc_padded[ids][:, None, :]
    best, arg = _token_max(sim, valid[:, None], pad, mask_mode)
    starts = doc_offsets[ids][:, None, :]
    arg = torch.where(arg >= 0, arg + starts, arg)
    best = torch.where(qmask[:, :, None], best, torch.zeros_like(best))  # masked: adds 0, even NaN
    arg = torch.where(qmask[:, :, None] & ~none[:, None, :], arg, torch.full_like(arg, -1))
    out = best.sum(1)
    out = out.masked_fill(none, float("-inf"))
    return out, arg


def maxsim_ref(queries, doc_tokens, doc_offsets, *, query_mask=None, mask_mode="ignore",
               doc_padded=None):
    """scores[q, d] = sum_i [mask] max_t <Q[q,i], D_d[t]>, in the input dtype (use float64)."""
    return _scores(queries, query_mask, doc_tokens, doc_offsets, None, doc_padded, mask_mode)[0]


def maxsim_candidates_ref(queries, doc_tokens, doc_offsets, candidates, *, query_mask=None,
                          mask_mode="ignore", doc_padded=None):
    return _scores(queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded,
                   mask_mode)[0]


def maxsim_argmax_ref(queries, doc_tokens, doc_offsets, candidates=None, *, query_mask=None,
                      mask_mode="ignore", doc_padded=None):
    """(scores, argmax [nq, lq, n_slots] global token index or -1)."""
    return _scores(queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded, mask_mode)


def pylate_colbert_scores_ref(queries_embeddings, documents_embeddings, queries_mask=None,
                              documents_mask=None):
    """PyLate 1.6's `pylate.scores.colbert_scores` formula (padded einsum, multiplicative
    masks), restated for tests that run without pylate installed."""
    scores = torch.einsum("ash,bth->abst", queries_embeddings, documents_embeddings)
    if queries_mask is not None:
        scores = scores * queries_mask.unsqueeze(1).unsqueeze(3)
    if documents_mask is not None:
        scores = scores * documents_mask.unsqueeze(0).unsqueeze(2)
    return scores.max(axis=-1).values.sum(axis=-1)
