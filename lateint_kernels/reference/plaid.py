"""PLAID stage references: candidates, centroid-only scores, the final-stage scorers."""
from __future__ import annotations

import torch

from .codec import _residuals, decompress_residuals_ref
from .maxsim import maxsim_candidates_ref

__all__ = ["ivf_candidates_ref", "approx_scores_ref", "decompress_maxsim_ref", "lut_maxsim_ref"]


def lut_maxsim_ref(queries, query_mask, scores, codes, packed, doc_offsets, bucket_weights, nbits: int,
                   candidates):
    """Per (query, candidate): sum over unmasked query tokens i of the max over the
    document's tokens t of scores[q, i, codes[t]] + <queries[q, i], residual_t> — MaxSim
    against the unnormalized reconstructions C[code] + residual (float64 when the queries
    are float64). -inf for candidate -1, 0 for an empty document."""
    dt = torch.float64 if queries.dtype == torch.float64 else torch.float32
    r = _residuals(packed, bucket_weights, nbits, queries.shape[2], dt)
    nq, nc = candidates.shape
    out = torch.full((nq, nc), float("-inf"), dtype=dt)
    for qi in range(nq):
        keep = slice(None) if query_mask is None else query_mask[qi]
        q, s = queries[qi].to(dt)[keep], scores[qi].to(dt)[keep]
        for j in range(nc):
            d = int(candidates[qi, j])
            if d < 0:
                continue
            a, b = int(doc_offsets[d]), int(doc_offsets[d + 1])
            if a == b:
                out[qi, j] = 0.0
                continue
            sim = s[:, codes[a:b].long()] + q @ r[a:b].T
            out[qi, j] = sim.max(dim=1).values.sum() if sim.shape[0] else 0.0
    return out


def decompress_maxsim_ref(queries, query_mask, codes, packed, doc_offsets, centroids, bucket_weights,
                          nbits: int, candidates):
    """decompress_residuals_ref of the whole corpus, then maxsim_candidates_ref (float64
    when centroids are float64)."""
    docs = decompress_residuals_ref(codes, packed, centroids, bucket_weights, nbits)
    q = queries.to(docs.dtype)
    return maxsim_candidates_ref(q, docs, doc_offsets, candidates, query_mask=query_mask)


# ---------------------------------------------------------------------------------------
# PLAID centroid interaction
def ivf_candidates_ref(scores, query_mask, ivf_offsets, ivf_docs, n_docs: int, ncells: int):
    """Per query: sorted unique documents under the ncells best centroids (ties: lower id)
    of each unmasked query token; int64 [nq, width] padded with -1."""
    nq, lq, k = scores.shape
    m = min(ncells, k)
    per = []
    for q in range(nq):
        rows = scores[q] if query_mask is None else scores[q][query_mask[q]]
        cells = set()
        for r in rows:
            order = torch.sort(-r.double(), stable=True).indices[:m]  # stable: ties keep id order
            cells.update(order.tolist())
        docs = set()
        for c in cells:
            docs.update(ivf_docs[ivf_offsets[c]:ivf_offsets[c + 1]].tolist())
        per.append(sorted(docs))
    width = max((len(p) for p in per), default=0)
    out = torch.full((nq, width), -1, dtype=torch.int64)
    for q, p in enumerate(per):
        out[q, :len(p)] = torch.tensor(p, dtype=torch.int64)
    return out.to(scores.device)


def approx_scores_ref(scores, query_mask, codes, doc_offsets, candidates, threshold: float):
    """Centroid-only MaxSim with centroid pruning, in float64: float64 [nq, n_candidates]."""
    nq = scores.shape[0]
    out = torch.empty(candidates.shape, dtype=torch.float64)
    for q in range(nq):
        s = scores[q].double() if query_mask is None else scores[q][query_mask[q]].double()
        keep = (s.max(0).values >= threshold) if s.shape[0] else torch.zeros(s.shape[1], dtype=torch.bool)
        for j, d in enumerate(candidates[q].tolist()):
            if d < 0:
                out[q, j] = float("-inf")
                continue
            cs = codes[doc_offsets[d]:doc_offsets[d + 1]].long()
            cs = cs[keep[cs]]
            out[q, j] = s[:, cs].max(1).values.sum() if cs.numel() and s.shape[0] else 0.0
    return out.to(scores.device)
