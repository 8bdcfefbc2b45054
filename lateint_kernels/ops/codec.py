"""The residual codec family (PLAID's compression): `compress_residuals`,
`decompress_residuals`, and the bucket helper `residual_buckets`.

Layers: C++ core and CPU binding in csrc/codec/ (codec_core.h holds the layout, ColBERTv2's:
bucket bits least significant first, packed most significant bit first; codec_cpu.cpp);
Triton in lateint_kernels/triton/codec.py; the reference in lateint_kernels/reference/codec.py;
tests/test_codec.py; bench/bench_codec.py. CUDA: the Triton kernels, the reference when
Triton is missing (`backend_for` says which).
"""
from __future__ import annotations

from typing import Tuple

import torch

from .. import _registry
from .._checks import FLOATS, Checks
from .._registry import NS as _NS
from .._registry import forced_reference as _forced_reference
from ..reference import codec as _ref

# x [n, dim], centroids [k, dim], codes int32 [n], bucket_cutoffs [2^nbits - 1] -> uint8
# [n, dim * nbits / 8]; and back: normalize(C[code] + bucket_weights[bucket]) -> float32 [n, dim].
SCHEMAS = {
    "compress_residuals": "(Tensor x, Tensor centroids, Tensor codes, Tensor bucket_cutoffs, int nbits) -> Tensor",
    "decompress_residuals": "(Tensor codes, Tensor packed, Tensor centroids, Tensor bucket_weights, int nbits) "
                            "-> Tensor",
}
_REFS = {"compress_residuals": _ref.compress_residuals_ref,
         "decompress_residuals": lambda *a: _ref.decompress_residuals_ref(*a).float()}
_NBITS = (1, 2, 4, 8)


# ---------------------------------------------------------------------------------------
# CUDA entries: the checks of csrc/codec/codec_cpu.cpp made on the device (one host sync),
# then the Triton launch. Tests call them on CPU tensors under TRITON_INTERPRET=1.
def codec_common(ck: Checks, centroids, codes, nbits, n: int):
    ck.tensor(centroids, "centroids", 2, "[k, dim]", FLOATS)
    ck.nbits(nbits, centroids.shape[1])
    ck.tensor(codes, "codes", 1, f"[n] = [{n}]", (torch.int32,))
    if codes.shape[0] != n:
        ck.fail(f"`codes` must be an int32 tensor [n] = [{n}], got [{codes.shape[0]}]")
    ck.ids(codes, "codes", 0, centroids.shape[0], "centroid ids")
    ck.finite(centroids, "centroids")


def check_compress(x, centroids, codes, bucket_cutoffs, nbits):
    ck = Checks("compress_residuals", x.device)
    ck.tensor(x, "x", 2, "[n, dim]", FLOATS)
    codec_common(ck, centroids, codes, nbits, x.shape[0])
    if centroids.shape[1] != x.shape[1]:
        ck.fail(f"`centroids` has dim {centroids.shape[1]} but `x` has dim {x.shape[1]}")
    ck.tensor(bucket_cutoffs, "bucket_cutoffs", 1, "[2^nbits - 1]", FLOATS)
    if bucket_cutoffs.shape[0] != (2 ** nbits) - 1:
        ck.fail(f"`bucket_cutoffs` must hold 2^nbits - 1 = {(2 ** nbits) - 1} values, got {bucket_cutoffs.shape[0]}")
    ck.finite(bucket_cutoffs, "bucket_cutoffs")
    if nbits > 1:
        ck.later((bucket_cutoffs[1:] < bucket_cutoffs[:-1]).any(), "`bucket_cutoffs` must be ascending")
    ck.finite(x, "x")
    ck.run()


def check_decompress(codes, packed, centroids, bucket_weights, nbits):
    ck = Checks("decompress_residuals", centroids.device if isinstance(centroids, torch.Tensor) else None)
    ck.tensor(packed, "packed", 2, "[n, dim * nbits / 8]", (torch.uint8,))
    codec_common(ck, centroids, codes, nbits, packed.shape[0])
    _packed_and_weights(ck, packed, bucket_weights, centroids.shape[1], nbits)
    ck.run()


def _packed_and_weights(ck, packed, bucket_weights, dim, nbits):
    if packed.shape[1] != dim * nbits // 8:
        ck.fail(f"`packed` must have dim * nbits / 8 = {dim * nbits // 8} bytes per row, got {packed.shape[1]}")
    ck.tensor(bucket_weights, "bucket_weights", 1, "[2^nbits]", FLOATS)
    if bucket_weights.shape[0] != 2 ** nbits:
        ck.fail(f"`bucket_weights` must hold 2^nbits = {2 ** nbits} values, got {bucket_weights.shape[0]}")
    ck.finite(bucket_weights, "bucket_weights")


def _cuda_entries():
    try:
        from ..triton import codec as _tc
    except Exception:  # triton missing or broken: the references serve CUDA
        return {}

    def compress(x, centroids, codes, bucket_cutoffs, nbits):
        check_compress(x, centroids, codes, bucket_cutoffs, nbits)
        return _tc.compress_residuals_triton(x, centroids, codes, bucket_cutoffs, nbits)

    def decompress(codes, packed, centroids, bucket_weights, nbits):
        check_decompress(codes, packed, centroids, bucket_weights, nbits)
        return _tc.decompress_residuals_triton(codes, packed, centroids, bucket_weights, nbits)

    return {"compress_residuals": (compress, "triton"), "decompress_residuals": (decompress, "triton")}


CUDA_ENTRIES = _cuda_entries()  # name -> (CUDA entry: checks + launch, backend)
_registry.register_family("codec", SCHEMAS, _REFS, CUDA_ENTRIES)


@torch.library.register_fake(f"{_NS}::compress_residuals")
def _(x, centroids, codes, bucket_cutoffs, nbits):
    torch._check(x.dim() == 2, lambda: "`x` must be 2-D [n, dim]")
    return x.new_empty(x.shape[0], x.shape[1] * nbits // 8, dtype=torch.uint8)


@torch.library.register_fake(f"{_NS}::decompress_residuals")
def _(codes, packed, centroids, bucket_weights, nbits):
    torch._check(packed.dim() == 2, lambda: "`packed` must be 2-D")
    return centroids.new_empty(packed.shape[0], centroids.shape[1], dtype=torch.float32)


def _check_common(op, centroids, codes, nbits, n):
    if nbits not in _NBITS or isinstance(nbits, bool):
        raise ValueError(f"{op}: `nbits` must be 1, 2, 4 or 8, got {nbits!r}")
    if not isinstance(centroids, torch.Tensor) or centroids.dim() != 2:
        raise ValueError(f"{op}: `centroids` must be a 2-D tensor [k, dim]")
    if centroids.shape[1] * nbits % 8:
        raise ValueError(f"{op}: dim * nbits must be a multiple of 8, got dim {centroids.shape[1]}, nbits {nbits}")
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.int32 or codes.shape != (n,):
        raise ValueError(f"{op}: `codes` must be an int32 tensor [n] = [{n}]")
    if codes.numel() and not torch.compiler.is_compiling():
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= centroids.shape[0]:
            raise ValueError(f"{op}: `codes` must hold centroid ids in [0, {centroids.shape[0]}), "
                             f"got values in [{lo}, {hi}]")


def compress_residuals(x: torch.Tensor, centroids: torch.Tensor, codes: torch.Tensor,
                       bucket_cutoffs: torch.Tensor, nbits: int) -> torch.Tensor:
    """Residuals x - centroids[codes] quantized to nbits per value by `bucket_cutoffs`
    (2^nbits - 1 ascending values) -> uint8 [n, dim * nbits / 8]."""
    op = "compress_residuals"
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"{op}: `x` must be a 2-D tensor [n, dim]")
    _check_common(op, centroids, codes, nbits, x.shape[0])
    if x.shape[1] != centroids.shape[1]:
        raise ValueError(f"{op}: `centroids` has dim {centroids.shape[1]} but `x` has dim {x.shape[1]}")
    if bucket_cutoffs.shape != ((2 ** nbits) - 1,):
        raise ValueError(f"{op}: `bucket_cutoffs` must hold 2^nbits - 1 = {(2 ** nbits) - 1} values, "
                         f"got shape {tuple(bucket_cutoffs.shape)}")
    if _forced_reference():
        return _ref.compress_residuals_ref(x, centroids, codes, bucket_cutoffs, nbits)
    return torch.ops.lateint_kernels.compress_residuals(x, centroids, codes, bucket_cutoffs, nbits)


def decompress_residuals(codes: torch.Tensor, packed: torch.Tensor, centroids: torch.Tensor,
                         bucket_weights: torch.Tensor, nbits: int) -> torch.Tensor:
    """normalize(centroids[codes] + bucket_weights[bucket]) -> float32 [n, dim]."""
    op = "decompress_residuals"
    if not isinstance(packed, torch.Tensor) or packed.dim() != 2 or packed.dtype != torch.uint8:
        raise ValueError(f"{op}: `packed` must be a 2-D uint8 tensor [n, dim * nbits / 8]")
    _check_common(op, centroids, codes, nbits, packed.shape[0])
    if packed.shape[1] != centroids.shape[1] * nbits // 8:
        raise ValueError(f"{op}: `packed` must have dim * nbits / 8 = {centroids.shape[1] * nbits // 8} "
                         f"bytes per row, got {packed.shape[1]}")
    if bucket_weights.shape != (2 ** nbits,):
        raise ValueError(f"{op}: `bucket_weights` must hold 2^nbits = {2 ** nbits} values, "
                         f"got shape {tuple(bucket_weights.shape)}")
    if _forced_reference():
        return _ref.decompress_residuals_ref(codes, packed, centroids, bucket_weights, nbits).float()
    return torch.ops.lateint_kernels.decompress_residuals(codes, packed, centroids, bucket_weights, nbits)


def _quantiles(sorted_values: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """torch.quantile's "linear" rule on an already sorted 1-D tensor, any size."""
    n = sorted_values.shape[0]
    pos = qs.double() * (n - 1)
    lo = pos.floor().long().clamp(0, n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo.double())
    v_lo, v_hi = sorted_values[lo].double(), sorted_values[hi].double()
    return (v_lo + frac * (v_hi - v_lo)).float()


# the ways residual_buckets fits the buckets (its `method`; index builds take it as `buckets`)
BUCKET_METHODS = ("quantile", "lloyd")
_LLOYD_VALUES = 1 << 22  # values Lloyd's iterations run on at most (see _lloyd)


def _lloyd(sorted_values: torch.Tensor, weights: torch.Tensor, iters: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's iterations for a scalar quantizer on sorted values, from `weights`: cutoffs at
    the midpoints of adjacent weights, each weight the mean of the values in its bucket
    (a bucket left empty keeps its weight), until nothing changes or `iters`. Sums in
    float64 over prefix sums, of an evenly strided subsample of at most 2^22 values when
    there are more (a sample of the sorted values is still sorted and keeps its quantiles;
    the prefix sums stay 32 MB)."""
    v = sorted_values
    if v.numel() > _LLOYD_VALUES:
        stride = -(-v.numel() // _LLOYD_VALUES)
        v = v[stride // 2::stride]
    v = v.double()
    prefix = torch.zeros(v.numel() + 1, dtype=torch.float64, device=v.device)
    prefix[1:] = torch.cumsum(v, 0)
    w = weights.double()
    for _ in range(iters):
        cut = (w[1:] + w[:-1]) / 2
        # bucket j holds the values in (cut[j - 1], cut[j]]: compress's bucketize rule
        edges = torch.cat([torch.zeros(1, dtype=torch.int64, device=v.device),
                           torch.searchsorted(v, cut, right=True),
                           torch.full((1,), v.numel(), dtype=torch.int64, device=v.device)])
        count = (edges[1:] - edges[:-1]).double()
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        new = torch.where(count > 0, sums / count.clamp(min=1), w)
        if torch.equal(new, w):
            break
        w = new
    return ((w[1:] + w[:-1]) / 2).float(), w.float()


def residual_buckets(residuals: torch.Tensor, nbits: int, method: str = "quantile",
                     iters: int = 1000) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bucket cutoffs [2^nbits - 1] and weights [2^nbits] of a sample of residual values.
    "quantile": ColBERTv2/PLAID's (cutoffs at the quantiles i / 2^nbits, weights at
    (i + 0.5) / 2^nbits). "lloyd": the scalar quantizer of least squared error on the sample,
    Lloyd's iterations (at most `iters`) started from PLAID's weights: the same bytes and
    kernels, a smaller reconstruction error (on Gaussian-like residuals about 20% less at 2
    bits). Sort-based: no torch.quantile size limit (2^24)."""
    if nbits not in _NBITS or isinstance(nbits, bool):
        raise ValueError(f"residual_buckets: `nbits` must be 1, 2, 4 or 8, got {nbits!r}")
    if method not in BUCKET_METHODS:
        raise ValueError(f"residual_buckets: `method` must be \"quantile\" or \"lloyd\", got {method!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"residual_buckets: `iters` must be a positive int, got {iters!r}")
    if not isinstance(residuals, torch.Tensor):
        raise ValueError(f"residual_buckets: `residuals` must be a tensor, got {type(residuals).__name__}")
    v = residuals.detach().reshape(-1).float()
    if v.numel() == 0:
        raise ValueError("residual_buckets: `residuals` is empty")
    if not torch.isfinite(v).all():
        raise ValueError("residual_buckets: `residuals` contains NaN or Inf")
    s = torch.sort(v).values
    m = 1 << nbits
    cut_q = torch.arange(1, m, dtype=torch.float64) / m
    w_q = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    cut, w = _quantiles(s, cut_q.to(s.device)), _quantiles(s, w_q.to(s.device))
    if method == "lloyd":
        cut, w = _lloyd(s, w, iters)
    return cut, w
