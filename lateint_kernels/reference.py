"""Pure-PyTorch references of every op: the test oracle (run them in float64) and the
fallback backend when the native extension is unavailable. Differentiable with autograd."""
from __future__ import annotations

import torch

__all__ = ["lut_maxsim_ref", "maxsim_ref", "maxsim_candidates_ref", "maxsim_argmax_ref", "pylate_colbert_scores_ref",
           "token_pool_ref", "token_pool_labels_ref", "kmeans_assign_ref", "compress_residuals_ref",
           "decompress_residuals_ref", "ivf_candidates_ref", "approx_scores_ref"]


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


# ---------------------------------------------------------------------------------------
# Token pooling (PyLate's pool_embeddings_hierarchical, on scipy).
def _pool_distances_condensed(x: torch.Tensor, distance: str):
    """Condensed float64 distances of the rows of x, computed as the op's contract says:
    cosine = 1 - <a, b> in the input's precision (float32 for float32/16 inputs, as PyLate's
    torch.mm + numpy does), euclidean = ||a/|a| - b/|b||| in float64."""
    import numpy as np

    n = x.shape[0]
    iu = np.triu_indices(n, k=1)
    if distance == "cosine":
        xx = x.double() if x.dtype == torch.float64 else x.float()
        return (1 - (xx @ xx.T).numpy())[iu].astype(np.float64)
    if distance == "euclidean":
        from scipy.spatial.distance import pdist

        xn = torch.nn.functional.normalize(x.double(), dim=-1, eps=1e-12)
        return pdist(xn.numpy(), "euclidean")
    raise ValueError(f'token_pool: `distance` must be "cosine" or "euclidean", got {distance!r}')


def _scipy_hierarchy_module():
    """scipy's compiled hierarchy module (for its maxclust cut): scipy.cluster._hierarchy
    in the scipy we install, scipy.cluster.hierarchy._hierarchy in newer releases where
    hierarchy is a package (seen on the GPU machine's scipy)."""
    import importlib

    for name in ("scipy.cluster.hierarchy._hierarchy", "scipy.cluster._hierarchy"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "cluster_maxclust_dist"):
            return mod
    import scipy

    raise ImportError(f"token_pool reference: scipy {scipy.__version__} has no cluster_maxclust_dist "
                      "in scipy.cluster(.hierarchy)._hierarchy")


def token_pool_labels_ref(doc_tokens: torch.Tensor, doc_offsets: torch.Tensor, pool_factor: int,
                          protected_tokens: int = 1, distance: str = "cosine"):
    """Per-token output row (int64 [T]) and output offsets of token pooling: per document the
    first `protected_tokens` keep a row each, the other n are clustered with scipy's Ward
    linkage into max(1, n // pool_factor) clusters (fcluster maxclust), one row per cluster in
    scipy's label order; documents the cut would not shrink are kept as they are."""
    import numpy as np
    from scipy.cluster import hierarchy

    _scipy_hierarchy_c = _scipy_hierarchy_module()

    x_all = doc_tokens.detach().cpu()
    off = doc_offsets.cpu().tolist()
    rows = torch.empty(x_all.shape[0], dtype=torch.int64)
    new_off = [0]
    for d in range(len(off) - 1):
        s, e = off[d], off[d + 1]
        p = min(protected_tokens, e - s)
        n = e - s - p
        k = max(n // pool_factor, 1)
        if k >= n:
            labels, nc = np.arange(n), n
        else:
            cond = _pool_distances_condensed(x_all[s + p:e], distance)
            Z = hierarchy.linkage(cond, method="ward")
            T = np.zeros(n, dtype=np.intc)
            # fcluster(Z, k, "maxclust") minus its validation, which refuses the negative
            # merge heights that 1 - <a, b> gives near-duplicate float32 tokens (PyLate then
            # raises); the cut itself is scipy's own.
            _scipy_hierarchy_c.cluster_maxclust_dist(np.ascontiguousarray(Z), T, n, k)
            labels, nc = T - 1, int(T.max())
        base = new_off[-1]
        rows[s:s + p] = base + torch.arange(p)
        rows[s + p:e] = base + p + torch.as_tensor(labels, dtype=torch.int64)
        new_off.append(base + p + nc)
    return rows.to(doc_tokens.device), torch.tensor(new_off, dtype=torch.int64, device=doc_tokens.device)


def token_pool_ref(doc_tokens: torch.Tensor, doc_offsets: torch.Tensor, pool_factor: int,
                   protected_tokens: int = 1, normalize: bool = False, distance: str = "cosine"):
    """Token pooling reference: (pooled tokens in the input dtype, offsets). Cluster means in
    float64; a document that is not pooled is returned as is; normalize=True L2-normalizes
    the means of pooled documents."""
    rows, new_off = token_pool_labels_ref(doc_tokens, doc_offsets, pool_factor, protected_tokens,
                                          distance)
    x = doc_tokens.double()
    n_out = int(new_off[-1])
    sums = x.new_zeros(n_out, x.shape[1]).index_add_(0, rows, x)
    cnt = torch.zeros(n_out, dtype=torch.float64, device=x.device).index_add_(
        0, rows, torch.ones_like(rows, dtype=torch.float64))
    out = sums / cnt.clamp_min(1)[:, None]
    if normalize:
        lens_in = (doc_offsets[1:] - doc_offsets[:-1]).cpu()
        lens_out = (new_off[1:] - new_off[:-1]).cpu()
        is_mean = torch.zeros(n_out, dtype=torch.bool)
        for d in range(lens_in.shape[0]):
            if lens_out[d] < lens_in[d]:
                p = min(protected_tokens, int(lens_in[d]))
                is_mean[int(new_off[d]) + p:int(new_off[d + 1])] = True
        is_mean = is_mean.to(x.device)
        out = torch.where(is_mean[:, None], torch.nn.functional.normalize(out, dim=-1, eps=1e-12), out)
    return out.to(doc_tokens.dtype), new_off


# ---------------------------------------------------------------------------------------
# k-means assignment
def kmeans_assign_ref(x: torch.Tensor, centroids: torch.Tensor):
    """(codes int32 [n], scores [n]): the centroid with the largest inner product (first
    index on ties, torch.max's rule) and that product, computed in x's float type (float64
    for the test oracle)."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    s = x.to(dt) @ centroids.to(dt).T
    if s.shape[1] == 0:
        raise ValueError("kmeans_assign: `centroids` must hold at least one centroid")
    best, arg = s.max(dim=1)
    return arg.to(torch.int32), best


# ---------------------------------------------------------------------------------------
# PLAID residual codec (layout: csrc/core/residual_core.h)
_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def compress_residuals_ref(x, centroids, codes, bucket_cutoffs, nbits: int):
    n, dim = x.shape
    r = x.float() - centroids.float()[codes.long()]
    b = torch.bucketize(r, bucket_cutoffs.float())  # #{cutoffs < r}
    bits = (b.unsqueeze(-1) >> torch.arange(nbits, device=x.device)) & 1  # least significant first
    bits = bits.reshape(n, dim * nbits // 8, 8)
    w = torch.tensor(_BIT_WEIGHTS, device=x.device)
    return (bits * w).sum(-1).to(torch.uint8)


def _residuals(packed, bucket_weights, nbits: int, dim: int, dt):
    """The residual values [n, dim] the packed buckets stand for: bucket_weights[bucket]."""
    n = packed.shape[0]
    w = torch.tensor(_BIT_WEIGHTS, device=packed.device)
    bits = ((packed.long().unsqueeze(-1) & w) != 0).long().reshape(n, dim, nbits)
    b = (bits << torch.arange(nbits, device=packed.device)).sum(-1)
    return bucket_weights.to(dt)[b]


def decompress_residuals_ref(codes, packed, centroids, bucket_weights, nbits: int):
    dt = torch.float64 if centroids.dtype == torch.float64 else torch.float32
    v = centroids.to(dt)[codes.long()] + _residuals(packed, bucket_weights, nbits, centroids.shape[1], dt)
    return torch.nn.functional.normalize(v, dim=-1, eps=1e-12)


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
