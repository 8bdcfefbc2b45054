"""Token pooling reference: PyLate's pool_embeddings_hierarchical, on scipy."""
from __future__ import annotations

import torch

__all__ = ["token_pool_ref", "token_pool_labels_ref"]


def _pool_distances_condensed(x: torch.Tensor, distance: str, variant: str = "pylate"):
    """Condensed float64 distances of the rows of x, computed as the op's contract says:
    cosine = 1 - <a, b> in the input's precision (float32 for float32/16 inputs, as PyLate's
    torch.mm + numpy does), euclidean = ||a/|a| - b/|b||| in float64; variant
    "sentence-transformers": the float32 cosine clamped to [0, 2]; "colpali": scipy's
    Euclidean pdist of the rows of the float32 cosine matrix."""
    import numpy as np

    n = x.shape[0]
    iu = np.triu_indices(n, k=1)
    if variant == "sentence-transformers":
        xx = x.float()
        return (1 - xx @ xx.T).clamp_(0, 2).numpy()[iu].astype(np.float64)
    if variant == "colpali":
        from scipy.spatial.distance import pdist

        xx = x.float()
        return pdist((1 - xx @ xx.T).numpy(), "euclidean")
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


def token_pool_labels_ref(doc_tokens: torch.Tensor, doc_offsets: torch.Tensor, pool_factor,
                          protected_tokens: int = 1, distance: str = "cosine", variant: str = "pylate"):
    """Per-token output row (int64 [T]) and output offsets of token pooling: per document the
    first `protected_tokens` keep a row each, the other n are clustered with scipy's Ward
    linkage into max(1, n // pool_factor) clusters (fcluster maxclust), one row per cluster in
    scipy's label order; documents the cut would not shrink are kept as they are. `variant`
    picks the distance (see _pool_distances_condensed)."""
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
        k = max(int(n // pool_factor), 1)
        if k >= n:
            labels, nc = np.arange(n), n
        else:
            cond = _pool_distances_condensed(x_all[s + p:e], distance, variant)
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


def l2_rows(x: torch.Tensor) -> torch.Tensor:
    """torch.nn.functional.normalize over the last dim, in float32 for half inputs (as both
    sentence-transformers and colpali-engine do), in the input dtype otherwise."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return torch.nn.functional.normalize(x.float(), dim=-1).to(x.dtype)
    return torch.nn.functional.normalize(x, dim=-1)


def token_pool_ref(doc_tokens: torch.Tensor, doc_offsets: torch.Tensor, pool_factor,
                   protected_tokens: int = 1, normalize: bool = False, distance: str = "cosine",
                   variant: str = "pylate"):
    """Token pooling reference: (pooled tokens in the input dtype, offsets). Cluster means in
    float64; a document that is not pooled is returned as is. normalize=True: with PyLate's
    variant, L2-normalizes the means of pooled documents; with the others, every output row,
    as `l2_rows` (their libraries' torch.nn.functional.normalize of the pooled output)."""
    rows, new_off = token_pool_labels_ref(doc_tokens, doc_offsets, pool_factor, protected_tokens,
                                          distance, variant)
    x = doc_tokens.double()
    n_out = int(new_off[-1])
    sums = x.new_zeros(n_out, x.shape[1]).index_add_(0, rows, x)
    cnt = torch.zeros(n_out, dtype=torch.float64, device=x.device).index_add_(
        0, rows, torch.ones_like(rows, dtype=torch.float64))
    out = sums / cnt.clamp_min(1)[:, None]
    if normalize and variant != "pylate":
        return l2_rows(out.to(doc_tokens.dtype)), new_off
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
