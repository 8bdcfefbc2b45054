"""Test hooks, kept out of the product: ops in their own namespace, `lateint_testing`, that
expose the steps of the kernels to the test suite (schemas here; CPU kernels registered by
the extension in csrc/<family>/<family>_cpu.cpp), and the instruction-set dispatch trace.
Nothing in lateint_kernels or lateint imports this module.

    import lateint_kernels.testing as lkt
    lkt.ops.maxsim_argmax(queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded, mode)
    with lkt.isa_trace() as levels: ...   # levels["pool"] -> {"avx2"} after the block
"""
from __future__ import annotations

import contextlib
from typing import Dict, Set

import torch

from . import _registry
from ._loader import NATIVE_LOADED
from .isa import ISA_NAMES
from .ops.maxsim import _argmax_ref

NS = "lateint_testing"
FAMILIES = ("maxsim", "pool", "kmeans", "codec", "plaid")  # csrc/common/isa.h: Family

SCHEMAS = {
    # The MaxSim forward with the winning document token of each query token: argmax int32
    # [nq, Lq, nd or k] (global token index, -1 where none wins), as the backward recomputes it.
    "maxsim_argmax": "(Tensor queries, Tensor? query_mask, Tensor doc_tokens, Tensor doc_offsets, "
                     "Tensor? candidates, Tensor? doc_padded, str mask_mode) -> (Tensor, Tensor)",
    # The same forward on the brgemm engine (bf16; AMX tiles where the CPU has them), forced
    # on any CPU so that its code is tested everywhere.
    "maxsim_argmax_brgemm": "(Tensor queries, Tensor? query_mask, Tensor doc_tokens, Tensor doc_offsets, "
                            "Tensor? candidates, Tensor? doc_padded, str mask_mode) -> (Tensor, Tensor)",
    "maxsim_argmax_cuda_simt": "(Tensor queries, Tensor? query_mask, Tensor doc_tokens, Tensor doc_offsets, "
                               "Tensor? candidates, Tensor? doc_padded, str mask_mode) -> (Tensor, Tensor)",
    # Token pooling's steps: scipy's linkage(method="ward") of a full float64 distance
    # matrix; fcluster(Z, max_nc, criterion="maxclust"); the [n, n] float64 distance matrix
    # the CPU clustering starts from for one document's tokens (diagonal +inf).
    "ward_linkage": "(Tensor dist) -> Tensor",
    "fcluster_maxclust": "(Tensor Z, int max_nc) -> Tensor",
    "pool_distances": "(Tensor x, str distance, str variant=\"pylate\") -> Tensor",
    # The variants' row normalization: x [n, dim] float32 normalized per row, and whether the
    # kernel's own summation served it (it does where it reproduces torch's norm bit for bit
    # for this dim; torch's ops otherwise).
    "l2_rows": "(Tensor x) -> (Tensor, bool)",
    # kmeans_assign's float32 kernel alone at the active ISA (the int8 screen off): codes, scores.
    "kmeans_assign_float32": "(Tensor x, Tensor centroids) -> (Tensor, Tensor)",
}


for _name, _schema in SCHEMAS.items():
    _registry.define(_name, _schema, ns=NS)
if not NATIVE_LOADED:
    torch.library.impl(f"{NS}::maxsim_argmax", "CompositeExplicitAutograd")(_argmax_ref)
try:
    from .triton import maxsim as _tmaxsim

    torch.library.register_kernel(f"{NS}::maxsim_argmax", "cuda", _tmaxsim.maxsim_argmax_triton)
except Exception:  # triton missing: the CUDA C++ kernel or nothing
    pass
_registry.mark_non_differentiable(*SCHEMAS, ns=NS)


def _argmax_fake(queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded, mask_mode):
    ns = candidates.shape[1] if candidates is not None else doc_offsets.shape[0] - 1
    return (queries.new_empty(queries.shape[0], ns, dtype=torch.float32),
            queries.new_empty(queries.shape[0], queries.shape[1], ns, dtype=torch.int32))


for _name in ("maxsim_argmax", "maxsim_argmax_brgemm"):
    torch.library.register_fake(f"{NS}::{_name}")(_argmax_fake)


ops = getattr(torch.ops, NS)


def bf16_dot() -> int:
    """1 if bf16 MaxSim inputs run on VDPBF16PS dot products, 0 if widened to float32."""
    from . import _C

    return _C.testing_bf16_dot()


@contextlib.contextmanager
def isa_trace():
    """Records, per family, the instruction-set levels its CPU kernels dispatched to inside
    the block: yields a dict filled on exit, family -> set of level names."""
    from . import _C

    levels: Dict[str, Set[str]] = {}
    _C.testing_isa_trace(True)
    try:
        yield levels
    finally:
        masks = _C.testing_isa_trace_masks()
        _C.testing_isa_trace(False)
        for fam, mask in zip(FAMILIES, masks):
            levels[fam] = {name for i, name in enumerate(ISA_NAMES) if mask >> i & 1}
