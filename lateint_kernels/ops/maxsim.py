"""The MaxSim family: `maxsim` (every query against every packed document),
`maxsim_candidates` (each query against its own candidates) and their backward.

Layers, same name everywhere: schemas and registration here; C++ core and CPU binding in
csrc/maxsim/ (maxsim_core.h, maxsim_<isa>.cpp, maxsim_cpu.cpp); CUDA C++ in
csrc/maxsim/maxsim_cuda*.cu; Triton in lateint_kernels/triton/maxsim.py; the reference in
lateint_kernels/reference/maxsim.py; tests/test_maxsim.py; bench/bench_maxsim.py.

Registration chain: `lateint_kernels.maxsim(...)` -> `torch.ops.lateint_kernels.maxsim` ->
dispatcher -> CPU: the C++ kernel | CUDA: the Triton kernel, or the CUDA C++ kernels
(`*_cuda_simt`) where Triton is missing | the reference when the native extension is not
built. `backend_for(op, device)` reports the choice.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from .. import _registry
from .._checks import offsets_flags, raise_bad_offsets
from .._loader import NATIVE_LOADED
from .._registry import NS as _NS
from .._registry import forced_reference as _forced_reference
from ..reference import maxsim as _ref

# Late-interaction score of every query against every packed document:
# scores[q, d] = sum over unmasked query tokens i of max over tokens t of doc d of <Q[q,i], D[t]>.
# mask_mode "ignore": masked query tokens add nothing; "zero": PyLate's multiplicative masking
# (doc_padded[d] floors each per-token max of doc d at 0). Output float32 [nq, nd].
# maxsim_candidates: each query against its own candidates (int64 [nq, k], -1 = none, scored
# -inf) -> float32 [nq, k]. maxsim_backward: gradients w.r.t. queries and doc_tokens given
# grad [nq, nd or k] (candidates None for all pairs); it recomputes the argmax (no [nq, Lq, nd]
# state is kept between forward and backward) and reduces in a fixed order (deterministic).
SCHEMAS = {
    "maxsim": "(Tensor queries, Tensor? query_mask, Tensor doc_tokens, Tensor doc_offsets, "
              "Tensor? doc_padded, str mask_mode) -> Tensor",
    "maxsim_candidates": "(Tensor queries, Tensor? query_mask, Tensor doc_tokens, Tensor doc_offsets, "
                         "Tensor candidates, Tensor? doc_padded, str mask_mode) -> Tensor",
    "maxsim_backward": "(Tensor grad, Tensor queries, Tensor? query_mask, Tensor doc_tokens, "
                       "Tensor doc_offsets, Tensor? candidates, Tensor? doc_padded, str mask_mode) "
                       "-> (Tensor, Tensor)",
}
# The CUDA C++ (SIMT, no tensor cores) kernels under their own names, same schemas: the CUDA
# key runs Triton when it imports (tensor cores; far faster, bench/RESULTS.md "GPU")
# and these otherwise, or when LATEINT_CUDA_BACKEND=cuda asks for them.
SIMT_SCHEMAS = {f"{name}_cuda_simt": schema for name, schema in SCHEMAS.items()}
_OPS = tuple(SCHEMAS)


# ---------------------------------------------------------------------------------------
# References in the op calling convention (the fallback backend).
def _argmax_ref(queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded, mask_mode):
    s, a = _ref.maxsim_argmax_ref(queries.float(), doc_tokens.float(), doc_offsets, candidates,
                                  query_mask=query_mask, mask_mode=mask_mode, doc_padded=doc_padded)
    return s.float(), a.to(torch.int32)


def _maxsim_ref_op(queries, query_mask, doc_tokens, doc_offsets, doc_padded, mask_mode):
    return _argmax_ref(queries, query_mask, doc_tokens, doc_offsets, None, doc_padded, mask_mode)[0]


def _cand_ref_op(queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded, mask_mode):
    return _argmax_ref(queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded, mask_mode)[0]


def _backward_ref_op(grad, queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded,
                     mask_mode):
    """The gradients from the reference's argmax, in closed form: each query token's score
    term is <Q[q, i], D[t*]> for its winning token t* (none where it is masked, the document
    is empty, or zero mode's floor wins). Closed form, not autograd: under the dispatcher
    this runs below the autograd key, where no graph is recorded."""
    q, d = queries.float(), doc_tokens.float()
    s, a = _ref.maxsim_argmax_ref(q, d, doc_offsets, candidates, query_mask=query_mask, mask_mode=mask_mode,
                                  doc_padded=doc_padded)
    g = torch.where(torch.isfinite(s), grad.float(), torch.zeros_like(s))  # [nq, n_slots]
    w = g[:, None, :] * (a >= 0)  # [nq, lq, n_slots]
    idx = a.clamp(min=0).long()
    dq = torch.einsum("qis,qisd->qid", w, d[idx])
    dd = torch.zeros_like(d).index_add_(0, idx.reshape(-1), (w[..., None] * q[:, :, None, :]).reshape(-1, d.shape[1]))
    return dq.to(queries.dtype), dd.to(doc_tokens.dtype)


_REF_IMPLS = {"maxsim": _maxsim_ref_op, "maxsim_candidates": _cand_ref_op, "maxsim_backward": _backward_ref_op}

# CUDA: Triton when importable (tensor cores); else the CUDA C++ SIMT kernels when built;
# else the reference. LATEINT_CUDA_BACKEND=cuda prefers the C++ kernels. This departs from
# "C++ first" in STYLE.md on measurement (docs/design-notes.md).
_TRITON_IMPLS = None
try:
    from ..triton import maxsim as _tmaxsim

    _TRITON_IMPLS = {"maxsim": _tmaxsim.maxsim_triton,
                     "maxsim_candidates": _tmaxsim.maxsim_candidates_triton,
                     "maxsim_backward": _tmaxsim.maxsim_backward_triton}
except Exception:  # triton missing or broken: the CUDA key falls back below
    _TRITON_IMPLS = None

_CUDA_PREF = os.environ.get("LATEINT_CUDA_BACKEND", "auto").lower()  # auto | triton | cuda


def _simt(name):
    op = getattr(torch.ops.lateint_kernels, f"{name}_cuda_simt")
    return lambda *args: op(*args)


def _cuda_entries():
    out = {}
    for name in _OPS:
        has_simt = NATIVE_LOADED and _registry.has_kernel(f"{name}_cuda_simt", "CUDA")
        if _TRITON_IMPLS is not None and not (_CUDA_PREF == "cuda" and has_simt):
            out[name] = (_TRITON_IMPLS[name], "triton")
        elif has_simt:
            out[name] = (_simt(name), "cuda")
    return out


for _name, _schema in SIMT_SCHEMAS.items():
    _registry.define(_name, _schema)
_registry.register_family("maxsim", SCHEMAS, _REF_IMPLS, _cuda_entries(),
                          differentiable=("maxsim", "maxsim_candidates"))


# ---------------------------------------------------------------------------------------
# Fake kernels (shape/dtype propagation for torch.compile, export and opcheck).
def _fake_common(queries, doc_tokens, doc_offsets):
    torch._check(queries.dim() == 3, lambda: "`queries` must be 3-D [n_queries, query_len, dim]")
    torch._check(doc_tokens.dim() == 2, lambda: "`doc_tokens` must be 2-D [total_tokens, dim]")
    torch._check(doc_tokens.shape[1] == queries.shape[2],
                 lambda: "`doc_tokens` and `queries` must have the same dim")
    torch._check(doc_offsets.dim() == 1, lambda: "`doc_offsets` must be 1-D [n_docs + 1]")


@torch.library.register_fake(f"{_NS}::maxsim")
def _(queries, query_mask, doc_tokens, doc_offsets, doc_padded, mask_mode):
    _fake_common(queries, doc_tokens, doc_offsets)
    return queries.new_empty(queries.shape[0], doc_offsets.shape[0] - 1, dtype=torch.float32)


@torch.library.register_fake(f"{_NS}::maxsim_candidates")
def _(queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded, mask_mode):
    _fake_common(queries, doc_tokens, doc_offsets)
    return queries.new_empty(queries.shape[0], candidates.shape[1], dtype=torch.float32)


@torch.library.register_fake(f"{_NS}::maxsim_backward")
def _(grad, queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded, mask_mode):
    _fake_common(queries, doc_tokens, doc_offsets)
    return torch.empty_like(queries), torch.empty_like(doc_tokens)


# ---------------------------------------------------------------------------------------
# Autograd: gradients w.r.t. queries and doc_tokens through maxsim_backward (which
# recomputes the argmax instead of keeping [nq, Lq, nd] indices alive between passes).
def _maxsim_setup(ctx, inputs, output):
    queries, query_mask, doc_tokens, doc_offsets, doc_padded, mask_mode = inputs
    ctx.save_for_backward(queries, doc_tokens)
    ctx.extra = (query_mask, doc_offsets, None, doc_padded, mask_mode)


def _cand_setup(ctx, inputs, output):
    queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded, mask_mode = inputs
    ctx.save_for_backward(queries, doc_tokens)
    ctx.extra = (query_mask, doc_offsets, candidates, doc_padded, mask_mode)


def _grads(ctx, grad):
    queries, doc_tokens = ctx.saved_tensors
    query_mask, doc_offsets, candidates, doc_padded, mask_mode = ctx.extra
    dq, dd = torch.ops.lateint_kernels.maxsim_backward(grad, queries, query_mask, doc_tokens,
                                                       doc_offsets, candidates, doc_padded, mask_mode)
    return (dq if ctx.needs_input_grad[0] else None), (dd if ctx.needs_input_grad[2] else None)


def _maxsim_bwd(ctx, grad):
    dq, dd = _grads(ctx, grad)
    return dq, None, dd, None, None, None


def _cand_bwd(ctx, grad):
    dq, dd = _grads(ctx, grad)
    return dq, None, dd, None, None, None, None


torch.library.register_autograd(f"{_NS}::maxsim", _maxsim_bwd, setup_context=_maxsim_setup)
torch.library.register_autograd(f"{_NS}::maxsim_candidates", _cand_bwd, setup_context=_cand_setup)


# ---------------------------------------------------------------------------------------
# Public API
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class _kernel_checks:
    """validate=False also turns off the Triton kernel's in-kernel checks for the call."""

    def __init__(self, on: bool):
        self.on = on
        self.token = None

    def __enter__(self):
        if not self.on and _TRITON_IMPLS is not None:
            self.token = _tmaxsim.CHECKS.set(False)

    def __exit__(self, *exc):
        if self.token is not None:
            _tmaxsim.CHECKS.reset(self.token)


def _validate(op, queries, doc_tokens, doc_offsets, query_mask, doc_padded, mask_mode,
              candidates=None, validate=True):
    """Checks with messages naming the argument. The data-dependent ones (offsets, ids, NaN)
    are made here only where the kernel does not make them itself (the reference and the
    CUDA SIMT paths: one fused reduction, one sync); the C++ CPU op and the Triton kernel
    check them in place. validate=False skips them (Triton's in-kernel checks included)."""
    if not isinstance(queries, torch.Tensor) or queries.dim() != 3:
        raise ValueError(f"{op}: `queries` must be a 3-D tensor [n_queries, query_len, dim], got "
                         f"{tuple(queries.shape) if isinstance(queries, torch.Tensor) else type(queries).__name__}")
    if queries.dtype not in _FLOATS:
        raise TypeError(f"{op}: `queries` must be float32, float16 or bfloat16, got {queries.dtype}")
    if not isinstance(doc_tokens, torch.Tensor) or doc_tokens.dim() != 2:
        raise ValueError(f"{op}: `doc_tokens` must be a 2-D tensor [total_tokens, dim]")
    if doc_tokens.shape[1] != queries.shape[2]:
        raise ValueError(f"{op}: `doc_tokens` has dim {doc_tokens.shape[1]} but `queries` has dim {queries.shape[2]}")
    if doc_tokens.dtype != queries.dtype:
        raise TypeError(f"{op}: `doc_tokens` must have the dtype of `queries` ({queries.dtype}), got {doc_tokens.dtype}")
    if not isinstance(doc_offsets, torch.Tensor) or doc_offsets.dim() != 1 or doc_offsets.dtype != torch.int64:
        raise ValueError(f"{op}: `doc_offsets` must be a 1-D int64 tensor [n_docs + 1]")
    if doc_offsets.shape[0] < 1:
        raise ValueError(f"{op}: `doc_offsets` must hold n_docs + 1 >= 1 entries (it starts with 0)")
    if mask_mode not in ("ignore", "zero"):
        raise ValueError(f'{op}: `mask_mode` must be "ignore" or "zero", got {mask_mode!r}')
    dev = queries.device
    for name, t in (("doc_tokens", doc_tokens), ("doc_offsets", doc_offsets), ("query_mask", query_mask),
                    ("doc_padded", doc_padded), ("candidates", candidates)):
        if t is not None and t.device != dev:
            raise ValueError(f"{op}: `{name}` must be on {dev} like `queries`, got {t.device}")
    nq, lq = queries.shape[:2]
    nd = doc_offsets.shape[0] - 1
    if query_mask is not None and (query_mask.shape != (nq, lq) or query_mask.dtype != torch.bool):
        raise ValueError(f"{op}: `query_mask` must be a bool tensor [n_queries, query_len] = [{nq}, {lq}], "
                         f"got {query_mask.dtype} {tuple(query_mask.shape)}")
    if doc_padded is not None and (doc_padded.shape != (nd,) or doc_padded.dtype != torch.bool):
        raise ValueError(f"{op}: `doc_padded` must be a bool tensor [n_docs] = [{nd}], "
                         f"got {doc_padded.dtype} {tuple(doc_padded.shape)}")
    if candidates is not None and (candidates.dim() != 2 or candidates.shape[0] != nq
                                   or candidates.dtype != torch.int64):
        raise ValueError(f"{op}: `candidates` must be an int64 tensor [n_queries, k] with n_queries = {nq}, "
                         f"got {candidates.dtype} {tuple(candidates.shape)}")
    if torch.compiler.is_compiling() or not validate:
        return
    if dev.type == "cpu" and NATIVE_LOADED and not _forced_reference():
        return  # the C++ op checks offsets, ids and NaN/Inf itself (no second pass here)
    if dev.type == "cuda" and _registry.backend_for(op, "cuda") == "triton" and not _forced_reference():
        return  # the Triton kernel checks offsets, ids and NaN/Inf in-kernel
    # One fused reduction (one host sync on GPU) for the data-dependent conditions; the
    # message is worked out only when something is wrong.
    checks = offsets_flags(doc_offsets, doc_tokens.shape[0])
    if candidates is not None and candidates.numel():
        checks += [(candidates < -1).any() | (candidates >= nd).any()]
    # (only the reference and CUDA SIMT paths get here; neither checks NaN/Inf itself)
    checks += [~torch.isfinite(queries if query_mask is None else queries[query_mask]).all(),
               ~torch.isfinite(doc_tokens).all()]
    flags = torch.stack([c.reshape(()) for c in checks]).tolist()
    if not any(flags):
        return
    raise_bad_offsets(op, doc_offsets, doc_tokens.shape[0], flags[:3])
    k = 3
    if candidates is not None and candidates.numel():
        if flags[k]:
            raise ValueError(f"{op}: `candidates` must hold document ids in [0, {nd}) or -1 for none; "
                             f"got values in [{int(candidates.min())}, {int(candidates.max())}]")
        k += 1
    if flags[k]:
        raise ValueError(f"{op}: `queries` contains NaN or Inf (in an unmasked token)")
    raise ValueError(f"{op}: `doc_tokens` contains NaN or Inf")


def maxsim(queries: torch.Tensor, doc_tokens: torch.Tensor, doc_offsets: torch.Tensor, *,
           query_mask: Optional[torch.Tensor] = None, mask_mode: str = "ignore",
           doc_padded: Optional[torch.Tensor] = None, validate: bool = True) -> torch.Tensor:
    """Late-interaction scores of every query against every packed document.

    queries [nq, Lq, dim], doc_tokens [T, dim] (same float dtype), doc_offsets int64 [nd+1]
    -> float32 [nq, nd]. An empty document scores 0. mask_mode "ignore" (default): masked
    query tokens add nothing; "zero": PyLate's multiplicative masking, with `doc_padded`
    (from `pack`) flooring each token max of a padded document at 0. Differentiable in
    `queries` and `doc_tokens`. validate=False skips the data-dependent input checks on
    GPU (offsets, ids, NaN: one sync per call); only for inputs already known to be valid.
    """
    _validate("maxsim", queries, doc_tokens, doc_offsets, query_mask, doc_padded, mask_mode,
              validate=validate)
    if _forced_reference():
        return _ref.maxsim_ref(queries.float(), doc_tokens.float(), doc_offsets, query_mask=query_mask,
                               mask_mode=mask_mode, doc_padded=doc_padded)
    with _kernel_checks(validate):
        return torch.ops.lateint_kernels.maxsim(queries, query_mask, doc_tokens, doc_offsets, doc_padded,
                                                mask_mode)


def maxsim_candidates(queries: torch.Tensor, doc_tokens: torch.Tensor, doc_offsets: torch.Tensor,
                      candidates: torch.Tensor, *, query_mask: Optional[torch.Tensor] = None,
                      mask_mode: str = "ignore", doc_padded: Optional[torch.Tensor] = None,
                      validate: bool = True) -> torch.Tensor:
    """Each query against its own candidate documents: candidates int64 [nq, k] of document
    ids (-1 = no candidate, scored -inf) -> float32 [nq, k]."""
    _validate("maxsim_candidates", queries, doc_tokens, doc_offsets, query_mask, doc_padded, mask_mode,
              candidates, validate=validate)
    if _forced_reference():
        return _ref.maxsim_candidates_ref(queries.float(), doc_tokens.float(), doc_offsets, candidates,
                                          query_mask=query_mask, mask_mode=mask_mode, doc_padded=doc_padded)
    with _kernel_checks(validate):
        return torch.ops.lateint_kernels.maxsim_candidates(queries, query_mask, doc_tokens, doc_offsets,
                                                           candidates, doc_padded, mask_mode)
