"""Residual codec references (layout: csrc/codec/codec_core.h)."""
from __future__ import annotations

import torch

__all__ = ["compress_residuals_ref", "decompress_residuals_ref"]

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
