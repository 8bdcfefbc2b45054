"""Public ops: argument validation, fake kernels, autograd and backend registration.

Registration chain: `lateint_kernels.maxsim(...)` -> `torch.ops.lateint_kernels.maxsim` ->
dispatcher -> CPU: the C++ kernel (csrc/cpu) | CUDA: the Triton kernel registered below, or
the CUDA C++ kernels (`*_cuda_simt`) where Triton is missing | the reference when the
native extension is not built. `backend_for(op, device)` reports the choice.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional, Sequence

import torch

from . import reference as _ref
from ._loader import NATIVE_LOADED

_NS = "lateint_kernels"
_OPS = ("maxsim", "maxsim_candidates", "maxsim_argmax", "maxsim_backward")
_SCHEMAS = {
    "maxsim": "(Tensor queries, Tensor? query_mask, Tensor doc_tokens, Tensor doc_offsets, "
              "Tensor? doc_padded, str mask_mode) -> Tensor",
    "maxsim_candidates": "(Tensor queries, Tensor? query_mask, Tensor doc_tokens, Tensor doc_offsets, "
                         "Tensor candidates, Tensor? doc_padded, str mask_mode) -> Tensor",
    "maxsim_argmax": "(Tensor queries, Tensor? query_mask, Tensor doc_tokens, Tensor doc_offsets, "
                     "Tensor? candidates, Tensor? doc_padded, str mask_mode) -> (Tensor, Tensor)",
    "maxsim_backward": "(Tensor grad, Tensor queries, Tensor? query_mask, Tensor doc_tokens, "
                       "Tensor doc_offsets, Tensor? candidates, Tensor? doc_padded, str mask_mode) "
                       "-> (Tensor, Tensor)",
}
_KNOWN_OPS = set(_OPS)  # the other op modules (pooling, kmeans, residual, plaid) add theirs
_FORCE_ENV = "LATEINT_BACKEND"  # "reference" forces the pure-torch path everywhere


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{_NS}::{op}", key)


# ---------------------------------------------------------------------------------------
# Reference implementations in the op calling convention (fallback backend).
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
    with torch.enable_grad():
        q = queries.detach().float().requires_grad_(True)
        d = doc_tokens.detach().float().requires_grad_(True)
        s, _ = _ref.maxsim_argmax_ref(q, d, doc_offsets, candidates, query_mask=query_mask,
                                      mask_mode=mask_mode, doc_padded=doc_padded)
        s = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
        dq, dd = torch.autograd.grad(s, (q, d), grad.float(), allow_unused=True)
    dq = torch.zeros_like(q) if dq is None else dq
    dd = torch.zeros_like(d) if dd is None else dd
    return dq.to(queries.dtype), dd.to(doc_tokens.dtype)


_REF_IMPLS = {"maxsim": _maxsim_ref_op, "maxsim_candidates": _cand_ref_op,
              "maxsim_argmax": _argmax_ref, "maxsim_backward": _backward_ref_op}

# Backend chosen per (op, device type) at import; see backend_for().
_BACKENDS: dict = {}

if not NATIVE_LOADED:
    # No native build: define the schemas here and serve them with the references.
    for _name, _schema in _SCHEMAS.items():
        torch.library.define(f"{_NS}::{_name}", _schema)
        torch.library.impl(f"{_NS}::{_name}", "CompositeExplicitAutograd")(_REF_IMPLS[_name])
    for _name in _OPS:
        _BACKENDS[(_name, "cpu")] = "reference"
else:
    for _name in _OPS:
        _BACKENDS[(_name, "cpu")] = "cpp"

# CUDA: Triton when importable (tensor cores); else the CUDA C++ SIMT kernels when built;
# else the reference. LATEINT_CUDA_BACKEND=cuda prefers the C++ kernels. This departs from
# "C++ first" in STYLE.md on measurement: on an H100 the Triton kernel is 10-25x faster in
# bf16 (bench/RESULTS.md); the SIMT kernels stay as the no-Triton path.
_TRITON_IMPLS = None
try:
    from .triton import maxsim as _tmaxsim

    _TRITON_IMPLS = {"maxsim": _tmaxsim.maxsim_triton,
                     "maxsim_candidates": _tmaxsim.maxsim_candidates_triton,
                     "maxsim_argmax": _tmaxsim.maxsim_argmax_triton,
                     "maxsim_backward": _tmaxsim.maxsim_backward_triton}
except Exception:  # triton missing or broken: the CUDA key falls back below
    _TRITON_IMPLS = None

_CUDA_PREF = os.environ.get("LATEINT_CUDA_BACKEND", "auto").lower()  # auto | triton | cuda


def _simt(name):
    op = getattr(torch.ops.lateint_kernels, f"{name}_cuda_simt")
    return lambda *args: op(*args)


for _name in _OPS:
    _has_simt = NATIVE_LOADED and _has_kernel(f"{_name}_cuda_simt", "CUDA")
    if _TRITON_IMPLS is not None and not (_CUDA_PREF == "cuda" and _has_simt):
        _impl, _which = _TRITON_IMPLS[_name], "triton"
    elif _has_simt:
        _impl, _which = _simt(_name), "cuda"
    else:
        _impl, _which = _REF_IMPLS[_name], "reference"
    torch.library.register_kernel(f"{_NS}::{_name}", "cuda", _impl)
    _BACKENDS[(_name, "cuda")] = _which


def register_cpu_kernel_ops(schemas: dict, refs: dict, cuda: Optional[dict] = None) -> None:
    """Ops served on CPU by the C++ kernels registered in csrc/ (the references when the
    extension is not built) and on CUDA by `cuda[name] = (kernel, backend name)` where
    given (Triton or device-side torch), else by their references."""
    cuda = cuda or {}
    for name, schema in schemas.items():
        impl, which = cuda.get(name, (refs[name], "reference"))
        if not NATIVE_LOADED:
            torch.library.define(f"{_NS}::{name}", schema)
            torch.library.impl(f"{_NS}::{name}", "CompositeExplicitAutograd")(refs[name])
        torch.library.register_kernel(f"{_NS}::{name}", "cuda", impl)
        _BACKENDS[(name, "cpu")] = "cpp" if NATIVE_LOADED else "reference"
        _BACKENDS[(name, "cuda")] = which
        _KNOWN_OPS.add(name)
        mark_non_differentiable(name)


def _no_grad_setup(ctx, inputs, output):
    outs = output if isinstance(output, (tuple, list)) else (output,)
    ctx.mark_non_differentiable(*[o for o in outs if isinstance(o, torch.Tensor)])


def _no_backward(ctx, *grads):
    raise RuntimeError("lateint_kernels: this op has no gradient")


def mark_non_differentiable(*names: str) -> None:
    """Outputs of these ops never require grad, whatever their inputs do: they have no
    gradient, and an output that claimed one would fail only later, in backward."""
    for name in names:
        torch.library.register_autograd(f"{_NS}::{name}", _no_backward, setup_context=_no_grad_setup)


def _forced_reference() -> bool:
    return os.environ.get(_FORCE_ENV, "").lower() == "reference"


def backend_for(op: str, device) -> str:
    """Which implementation runs `op` on `device`: "cpp", "cuda", "triton", "torch"
    (device-side torch ops) or "reference"."""
    if op not in _KNOWN_OPS:
        raise ValueError(f"unknown op {op!r}; known: {', '.join(sorted(_KNOWN_OPS))}")
    dev = torch.device(device).type
    if _forced_reference():
        return "reference"
    return _BACKENDS.get((op, dev), "reference")


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


@torch.library.register_fake(f"{_NS}::maxsim_argmax")
def _(queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded, mask_mode):
    _fake_common(queries, doc_tokens, doc_offsets)
    ns = candidates.shape[1] if candidates is not None else doc_offsets.shape[0] - 1
    return (queries.new_empty(queries.shape[0], ns, dtype=torch.float32),
            queries.new_empty(queries.shape[0], queries.shape[1], ns, dtype=torch.int32))


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
mark_non_differentiable("maxsim_argmax", "maxsim_backward")


# ---------------------------------------------------------------------------------------
# Public API
class PackedDocs(NamedTuple):
    """Documents in the packed (CSR) layout.

    tokens  [T, dim]     every real token of every document, documents back to back
    offsets int64 [n+1]  document i is tokens[offsets[i]:offsets[i+1]]
    padded  bool [n]     whether the document had padding (or masked tokens) in its padded
                         batch: needed by mask_mode="zero" to reproduce PyLate's scores
    """
    tokens: torch.Tensor
    offsets: torch.Tensor
    padded: torch.Tensor


def pack(padded_docs: torch.Tensor, doc_mask: Optional[torch.Tensor] = None) -> PackedDocs:
    """[n, L, dim] padded documents (+ bool/0-1 mask [n, L]) -> PackedDocs.

    Masked tokens are dropped wherever they are (PyLate masks skiplist tokens inside a
    document too); a document with any masked token is marked `padded`."""
    if padded_docs.dim() != 3:
        raise ValueError(f"pack: `padded_docs` must be 3-D [n_docs, doc_len, dim], got shape {tuple(padded_docs.shape)}")
    n, L, _ = padded_docs.shape
    if doc_mask is None:
        doc_mask = torch.ones(n, L, dtype=torch.bool, device=padded_docs.device)
    if doc_mask.shape != (n, L):
        raise ValueError(f"pack: `doc_mask` must have shape [n_docs, doc_len] = [{n}, {L}], got {tuple(doc_mask.shape)}")
    if doc_mask.device != padded_docs.device:
        raise ValueError(f"pack: `doc_mask` must be on {padded_docs.device}, got {doc_mask.device}")
    m = doc_mask.bool()
    lens = m.sum(1)
    offsets = torch.zeros(n + 1, dtype=torch.int64, device=padded_docs.device)
    offsets[1:] = torch.cumsum(lens, 0)
    return PackedDocs(padded_docs[m], offsets, lens < L)


def pack_list(docs: Sequence[torch.Tensor]) -> PackedDocs:
    """List of [L_i, dim] tensors -> PackedDocs (no document is padded)."""
    if len(docs) == 0:
        raise ValueError("pack_list: `docs` is empty")
    dim = docs[0].shape[-1]
    for i, t in enumerate(docs):
        if t.dim() != 2 or t.shape[1] != dim:
            raise ValueError(f"pack_list: docs[{i}] must be [L, {dim}], got shape {tuple(t.shape)}")
    lens = torch.tensor([t.shape[0] for t in docs], dtype=torch.int64)
    offsets = torch.zeros(len(docs) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lens, 0)
    dev = docs[0].device
    return PackedDocs(torch.cat(list(docs), 0), offsets.to(dev),
                      torch.zeros(len(docs), dtype=torch.bool, device=dev))


def unpack(tokens: torch.Tensor, offsets: torch.Tensor):
    """Packed documents -> (padded [n_docs, max_len, dim] with zeros, bool mask [n_docs,
    max_len]): the layout PyLate's `colbert_scores` takes. The inverse of `pack` for
    prefix-masked documents."""
    if tokens.dim() != 2:
        raise ValueError(f"unpack: `tokens` must be 2-D [total_tokens, dim], got shape {tuple(tokens.shape)}")
    if offsets.dim() != 1 or offsets.shape[0] < 1:
        raise ValueError("unpack: `offsets` must be a 1-D tensor [n_docs + 1]")
    lens = offsets[1:] - offsets[:-1]
    max_len = int(lens.max()) if lens.numel() else 0
    mask = torch.arange(max_len, device=offsets.device)[None, :] < lens[:, None]
    padded = tokens.new_zeros(lens.shape[0], max_len, tokens.shape[1])
    padded[mask] = tokens
    return padded, mask


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


def offsets_flags(doc_offsets: torch.Tensor, n_rows: int) -> list:
    """The data-dependent conditions on packed offsets, as 0-d bool tensors (fuse them with
    other checks into one host sync): [first != 0, last != n_rows, decreasing somewhere]."""
    return [doc_offsets[:1].ne(0).any(), doc_offsets[-1:].ne(n_rows).any(),
            (doc_offsets[1:] < doc_offsets[:-1]).any()]


def raise_bad_offsets(op: str, doc_offsets: torch.Tensor, n_rows: int, flags) -> None:
    """Raises the error naming `doc_offsets` for the first set flag of offsets_flags."""
    if flags[0] or flags[1]:
        raise ValueError(f"{op}: `doc_offsets` must start at 0 and end at len(doc_tokens) = {n_rows}, "
                         f"got {int(doc_offsets[0])} ... {int(doc_offsets[-1])}")
    if flags[2]:
        i = int((doc_offsets[1:] < doc_offsets[:-1]).nonzero()[0])
        raise ValueError(f"{op}: `doc_offsets` must be non-decreasing, but doc_offsets[{i + 1}] = "
                         f"{int(doc_offsets[i + 1])} < doc_offsets[{i}] = {int(doc_offsets[i])}")


def check_offsets(op: str, doc_offsets: torch.Tensor, n_rows: int) -> None:
    """offsets_flags + raise_bad_offsets, for callers with nothing to fuse them with."""
    raise_bad_offsets(op, doc_offsets, n_rows, torch.stack(offsets_flags(doc_offsets, n_rows)).tolist())


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
    if dev.type == "cuda" and _BACKENDS.get((op, "cuda")) == "triton" and not _forced_reference():
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


_ISA_NAMES = ("scalar", "avx2", "avx512", "avx512bf16")


def cpu_isa(set: Optional[str] = None) -> str:
    """The instruction set the CPU kernels use; `set` forces a lower one ("scalar", "avx2",
    "avx512", "avx512bf16") or restores the best ("best"). Also: env LATEINT_CPU_ISA."""
    if not NATIVE_LOADED:
        return "reference"
    if set is None:
        return _ISA_NAMES[torch.ops.lateint_kernels._cpu_isa(-1)]
    if set == "best":
        return _ISA_NAMES[torch.ops.lateint_kernels._cpu_isa(-2)]
    if set not in _ISA_NAMES:
        raise ValueError(f"cpu_isa: `set` must be one of {_ISA_NAMES + ('best',)}, got {set!r}")
    return _ISA_NAMES[torch.ops.lateint_kernels._cpu_isa(_ISA_NAMES.index(set))]
