"""The k-means family: `kmeans_assign`, each row's nearest centroid by inner product.

Layers: C++ core and CPU binding in csrc/kmeans/ (kmeans_core.h, kmeans_core.cpp, the int8
screen in kmeans_vnni.cpp, kmeans_cpu.cpp); Triton in lateint_kernels/triton/kmeans.py; the
reference in lateint_kernels/reference/kmeans.py; tests/test_kmeans.py;
bench/bench_kmeans.py. CPU: the C++ kernel; CUDA: the Triton kernel when Triton imports,
else the reference; without the native extension the reference serves every device.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

from .. import _registry
from .._loader import NATIVE_LOADED
from .._registry import NS as _NS
from .._registry import forced_reference as _forced_reference
from ..reference import kmeans as _ref

# For each row of x [n, dim], the centroid [k, dim] with the largest inner product (first
# index on ties) -> (codes int32 [n], best score float32 [n]). Fused GEMM + argmax: memory
# O(n + k * dim), never [n, k].
SCHEMAS = {"kmeans_assign": "(Tensor x, Tensor centroids) -> (Tensor, Tensor)"}
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _ref_op(x, centroids):
    codes, scores = _ref.kmeans_assign_ref(x, centroids)
    return codes, scores.float()


def _cuda_entries():
    try:
        from ..triton import kmeans as _tkm
    except Exception:  # triton missing or broken: the reference serves CUDA
        return {}
    return {"kmeans_assign": (_tkm.kmeans_assign_triton, "triton")}


_registry.register_family("kmeans", SCHEMAS, {"kmeans_assign": _ref_op}, _cuda_entries())


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
                                         and not _forced_reference()):
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
    if _forced_reference():
        codes, scores = _ref_op(x, centroids)
    else:
        codes, scores = torch.ops.lateint_kernels.kmeans_assign(x, centroids)
    return (codes, scores) if return_scores else codes
