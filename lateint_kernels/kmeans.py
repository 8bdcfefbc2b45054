"""kmeans_assign op: registration, fake kernel, backend choice, public API.

CPU: the C++ kernel (csrc/cpu/kmeans.cpp). CUDA: the Triton kernel
(lateint_kernels/triton/kmeans.py) when Triton imports, else the reference. Without the
native extension, the reference serves every device.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

from . import ops as _ops
from . import reference as _ref
from ._loader import NATIVE_LOADED

_NS = "lateint_kernels"
_SCHEMA = "(Tensor x, Tensor centroids) -> (Tensor, Tensor)"
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _ref_op(x, centroids):
    codes, scores = _ref.kmeans_assign_ref(x, centroids)
    return codes, scores.float()


if not NATIVE_LOADED:
    torch.library.define(f"{_NS}::kmeans_assign", _SCHEMA)
    torch.library.impl(f"{_NS}::kmeans_assign", "CompositeExplicitAutograd")(_ref_op)
_ops._BACKENDS[("kmeans_assign", "cpu")] = "cpp" if NATIVE_LOADED else "reference"

_TRITON = None
try:
    from .triton import kmeans as _tkm

    _TRITON = _tkm.kmeans_assign_triton
except Exception:  # triton missing or broken
    _TRITON = None
torch.library.register_kernel(f"{_NS}::kmeans_assign", "cuda", _TRITON if _TRITON is not None else _ref_op)
_ops._BACKENDS[("kmeans_assign", "cuda")] = "triton" if _TRITON is not None else "reference"
_ops._KNOWN_OPS.add("kmeans_assign")
_ops.mark_non_differentiable("kmeans_assign")


@torch.library.register_fake(f"{_NS}::kmeans_assign")
def _(x, centroids):
    torch._check(x.dim() == 2, lambda: "`x` must be 2-D [n, dim]")
    torch._check(centroids.dim() == 2, lambda: "`centroids` must be 2-D [k, dim]")
    torch._check(x.shape[1] == centroids.shape[1], lambda: "`x` and `centroids` must have the same dim")
    n = x.shape[0]
    return x.new_empty(n, dtype=torch.int32), x.new_empty(n, dtype=torch.float32)


def _validate(x, centroids):
    op = "kmeans_assign"
    for name, t, shape in (("x", x, "[n, dim]"), ("centroids", centroids, "[k, dim]")):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{op}: `{name}` must be a 2-D tensor {shape}, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{op}: `x` must be float32, float16 or bfloat16, got {x.dtype}")
    if centroids.dtype != x.dtype:
        raise TypeError(f"{op}: `centroids` must have the dtype of `x` ({x.dtype}), got {centroids.dtype}")
    if centroids.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: `centroids` has dim {centroids.shape[1]} but `x` has dim {x.shape[1]}")
    if centroids.shape[0] < 1:
        raise ValueError(f"{op}: `centroids` must hold at least one centroid")
    if centroids.device != x.device:
        raise ValueError(f"{op}: `centroids` must be on {x.device} like `x`, got {centroids.device}")
    if torch.compiler.is_compiling() or (x.device.type == "cpu" and NATIVE_LOADED
                                         and not _ops._forced_reference()):
        return  # the C++ op checks NaN/Inf itself
    bad = torch.stack([~torch.isfinite(x).all(), ~torch.isfinite(centroids).all()]).tolist()
    if bad[0]:
        raise ValueError(f"{op}: `x` contains NaN or Inf")
    if bad[1]:
        raise ValueError(f"{op}: `centroids` contains NaN or Inf")


def kmeans_assign(x: torch.Tensor, centroids: torch.Tensor, *,
                  return_scores: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Nearest centroid by inner product: x [n, dim], centroids [k, dim] (same float dtype)
    -> int32 codes [n] (first index on ties), and with return_scores=True also the best
    inner product, float32 [n]. Fused matmul + argmax: never holds [n, k]."""
    _validate(x, centroids)
    if _ops._forced_reference():
        codes, scores = _ref_op(x, centroids)
    else:
        codes, scores = torch.ops.lateint_kernels.kmeans_assign(x, centroids)
    return (codes, scores) if return_scores else codes
