"""k-means assignment reference."""
from __future__ import annotations

import torch

__all__ = ["kmeans_assign_ref"]


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
