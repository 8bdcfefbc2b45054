"""The token pooling family: `token_pool`, `token_pool_labels` and `token_pool_list`
(PyLate's pool_embeddings_hierarchical as a kernel).

Layers: C++ core and CPU binding in csrc/pool/ (pool_core.h, pool_core.cpp, pool_gram.cpp,
pool_cpu.cpp); Triton in lateint_kernels/triton/pool.py; the reference in
lateint_kernels/reference/pool.py; tests/test_pool.py; bench/bench_pool.py.
CPU: the C++ kernel. CUDA: Triton kernels compute each document's distances and run Ward's
nearest-neighbour chain on the device; the merge lists go to the host for scipy's
sort/relabel/maxclust steps (`_token_pool_finish`, the C++ core), and the cluster means are
a segment mean on the device. Without Triton, CUDA tensors are clustered by the CPU kernel
(host round trip). Without the native extension, the scipy reference serves every device.
`token_pool_list` takes PyLate's list of documents; on CPU the C++ op reads them in place.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from .. import _registry
from .._checks import offsets_flags, raise_bad_offsets
from .._loader import NATIVE_LOADED
from .._registry import forced_reference as _forced_reference
from ..layout import pack_list
from ..reference import pool as _ref

# Per document, the tokens after the first `protected_tokens` are clustered by Ward linkage
# into max(1, n // pool_factor) clusters (scipy's linkage + fcluster maxclust, bit-exact on
# the same distances) and each cluster replaced by its mean. distance "cosine" = 1 - <a, b>
# (PyLate), "euclidean" = ||a/|a| - b/|b|||.
# token_pool -> (pooled tokens [T', dim] in the input dtype, offsets int64 [n_docs + 1]);
# token_pool_labels: the clustering alone, each input token's (global) row in token_pool's
# output, int64 [T], and the output offsets; token_pool_list: PyLate's list of [L_i, dim]
# documents, read in place, one pooled tensor per document.
# _token_pool_finish: the GPU path's host step, the per-document cut of NN-chain merge lists
# made on the device (merges_x/y int32 [n_docs, W], merges_d float64 [n_docs, W]) ->
# token_pool_labels' output.
# variant: whose clustering and means ("pylate"; "sentence-transformers": the cosine distance
# clamped to [0, 2]; "colpali": linkage on the rows of the cosine distance matrix, means
# summed as torch sums a gathered cluster). normalize: with "pylate", the means only; with
# the others, every output row as torch.nn.functional.normalize(x, dim=-1) gives it (in
# float32 for half types), their libraries' normalization of the pooled output.
# pool_factor is a number (sentence-transformers takes fractions): max(1, n // pool_factor)
# clusters with Python's floor division.
SCHEMAS = {
    "token_pool": "(Tensor doc_tokens, Tensor doc_offsets, float pool_factor, int protected_tokens, "
                  "bool normalize, str distance, str variant=\"pylate\") -> (Tensor, Tensor)",
    "token_pool_labels": "(Tensor doc_tokens, Tensor doc_offsets, float pool_factor, "
                         "int protected_tokens, str distance, str variant=\"pylate\") -> (Tensor, Tensor)",
    "token_pool_list": "(Tensor[] docs, float pool_factor, int protected_tokens, bool normalize, "
                       "str distance, str variant=\"pylate\") -> Tensor[]",
}
_FINISH_SCHEMA = ("(Tensor merges_x, Tensor merges_y, Tensor merges_d, Tensor doc_offsets, int pool_factor, "
                  "int protected_tokens) -> (Tensor, Tensor)")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_DISTANCES = ("cosine", "euclidean")
VARIANTS = ("pylate", "sentence-transformers", "colpali")


def _pool_ref_op(doc_tokens, doc_offsets, pool_factor, protected_tokens, normalize, distance, variant="pylate"):
    return _ref.token_pool_ref(doc_tokens, doc_offsets, pool_factor, protected_tokens, normalize, distance,
                               variant=variant)


def _labels_ref_op(doc_tokens, doc_offsets, pool_factor, protected_tokens, distance, variant="pylate"):
    return _ref.token_pool_labels_ref(doc_tokens, doc_offsets, pool_factor, protected_tokens, distance,
                                      variant=variant)


def _split_owned(tokens, offsets):
    """One tensor per document, each its own storage (an op's outputs must not alias one
    another)."""
    return [t.clone() for t in torch.split(tokens, (offsets[1:] - offsets[:-1]).tolist(), dim=0)]


def _pool_list_ref_op(docs, pool_factor, protected_tokens, normalize, distance, variant="pylate"):
    packed = pack_list(docs)
    return _split_owned(*_ref.token_pool_ref(packed.tokens, packed.offsets, pool_factor, protected_tokens,
                                             normalize, distance, variant=variant))


# ---------------------------------------------------------------------------------------
# CUDA: Triton distances + NN-chain on the device, host cut, device segment mean.
def _segment_mean(doc_tokens, rows, new_offsets, doc_offsets, protected_tokens, normalize):
    n_out = int(new_offsets[-1])
    x = doc_tokens.float()
    sums = x.new_zeros(n_out, x.shape[1]).index_add_(0, rows, x)
    cnt = torch.zeros(n_out, device=x.device).index_add_(0, rows, torch.ones_like(rows, dtype=torch.float32))
    out = sums / cnt.clamp_min(1)[:, None]
    if normalize:
        lens_in = doc_offsets[1:] - doc_offsets[:-1]
        pooled = (new_offsets[1:] - new_offsets[:-1]) < lens_in
        d_of_row = torch.searchsorted(new_offsets[1:], torch.arange(n_out, device=x.device), right=True)
        local = torch.arange(n_out, device=x.device) - new_offsets[d_of_row]
        is_mean = pooled[d_of_row] & (local >= torch.clamp(lens_in[d_of_row], max=protected_tokens))
        out = torch.where(is_mean[:, None], torch.nn.functional.normalize(out, dim=-1, eps=1e-12), out)
    # rows that map one-to-one are copied exactly (a mean of one row in float32 is exact
    # for float32/16 inputs anyway)
    return out.to(doc_tokens.dtype)


_TRITON_POOL = None
try:
    from ..triton import pool as _tpool

    _TRITON_POOL = _tpool
except Exception:  # triton missing or broken: host round trip below
    _TRITON_POOL = None


def _on_device(variant, pool_factor) -> bool:
    """Whether the device kernels serve this call: PyLate's variant with an integral factor
    (the others are clustered and averaged on the host by the CPU kernel)."""
    return variant == "pylate" and float(pool_factor).is_integer()


def _labels_cuda(doc_tokens, doc_offsets, pool_factor, protected_tokens, distance, variant="pylate"):
    if _TRITON_POOL is not None and NATIVE_LOADED and _on_device(variant, pool_factor):
        return _TRITON_POOL.token_pool_labels_triton(doc_tokens, doc_offsets, int(pool_factor),
                                                     protected_tokens, distance)
    rows, off = torch.ops.lateint_kernels.token_pool_labels(doc_tokens.cpu(), doc_offsets.cpu(), pool_factor,
                                                            protected_tokens, distance, variant)
    return rows.to(doc_tokens.device), off.to(doc_tokens.device)


def _pool_cuda(doc_tokens, doc_offsets, pool_factor, protected_tokens, normalize, distance, variant="pylate"):
    if not _on_device(variant, pool_factor):
        out, off = torch.ops.lateint_kernels.token_pool(doc_tokens.cpu(), doc_offsets.cpu(), pool_factor,
                                                        protected_tokens, normalize, distance, variant)
        return out.to(doc_tokens.device), off.to(doc_tokens.device)
    rows, off = _labels_cuda(doc_tokens, doc_offsets, pool_factor, protected_tokens, distance)
    return _segment_mean(doc_tokens, rows, off, doc_offsets, protected_tokens, normalize), off


def _pool_list_cuda(docs, pool_factor, protected_tokens, normalize, distance, variant="pylate"):
    packed = pack_list(docs)
    return _split_owned(*_pool_cuda(packed.tokens, packed.offsets, pool_factor, protected_tokens, normalize,
                                    distance, variant))


_CUDA_WHICH = "triton" if _TRITON_POOL is not None and NATIVE_LOADED else "cpp" if NATIVE_LOADED else "reference"
_registry.register_family("pool", SCHEMAS, {"token_pool": _pool_ref_op, "token_pool_labels": _labels_ref_op,
                                            "token_pool_list": _pool_list_ref_op},
                          {"token_pool": (_pool_cuda, _CUDA_WHICH), "token_pool_labels": (_labels_cuda, _CUDA_WHICH),
                           "token_pool_list": (_pool_list_cuda, _CUDA_WHICH)})
_registry.define("_token_pool_finish", _FINISH_SCHEMA)
_registry.mark_non_differentiable("_token_pool_finish")


# ---------------------------------------------------------------------------------------
# Fake kernels: the number of pooled rows depends on the data.
@torch.library.register_fake(f"{_registry.NS}::token_pool")
def _(doc_tokens, doc_offsets, pool_factor, protected_tokens, normalize, distance, variant="pylate"):
    torch._check(doc_tokens.dim() == 2, lambda: "`doc_tokens` must be 2-D [total_tokens, dim]")
    torch._check(doc_offsets.dim() == 1, lambda: "`doc_offsets` must be 1-D [n_docs + 1]")
    n_out = torch.library.get_ctx().new_dynamic_size()
    torch._check(n_out <= doc_tokens.shape[0])
    return doc_tokens.new_empty(n_out, doc_tokens.shape[1]), torch.empty_like(doc_offsets)


@torch.library.register_fake(f"{_registry.NS}::token_pool_list")
def _(docs, pool_factor, protected_tokens, normalize, distance, variant="pylate"):
    torch._check(len(docs) >= 1, lambda: "`docs` must hold at least one document")
    torch._check(docs[0].dim() == 2, lambda: "`docs[0]` must be 2-D [L, dim]")
    ctx = torch.library.get_ctx()
    outs = []
    for d in docs:
        n_out = ctx.new_dynamic_size()
        torch._check(n_out <= d.shape[0])
        outs.append(docs[0].new_empty(n_out, docs[0].shape[1]))
    return outs


@torch.library.register_fake(f"{_registry.NS}::token_pool_labels")
def _(doc_tokens, doc_offsets, pool_factor, protected_tokens, distance, variant="pylate"):
    torch._check(doc_tokens.dim() == 2, lambda: "`doc_tokens` must be 2-D [total_tokens, dim]")
    torch._check(doc_offsets.dim() == 1, lambda: "`doc_offsets` must be 1-D [n_docs + 1]")
    return doc_offsets.new_empty(doc_tokens.shape[0]), torch.empty_like(doc_offsets)


# ---------------------------------------------------------------------------------------
# Public API
def _validate_scalars(op, pool_factor, protected_tokens, distance, variant="pylate"):
    if variant not in VARIANTS:
        raise ValueError(f"{op}: `variant` must be one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
    if variant == "sentence-transformers":
        if isinstance(pool_factor, bool) or not isinstance(pool_factor, (int, float)) or not 1 <= pool_factor < 2 ** 63:
            raise ValueError(f"{op}: `pool_factor` must be a number >= 1 (and < 2^63), got {pool_factor!r}")
    elif isinstance(pool_factor, bool) or not isinstance(pool_factor, int) or not 1 <= pool_factor < 2 ** 63:
        raise ValueError(f"{op}: `pool_factor` must be an integer >= 1 (and < 2^63), got {pool_factor!r}")
    if isinstance(protected_tokens, bool) or not isinstance(protected_tokens, int) or not 0 <= protected_tokens < 2 ** 63:
        raise ValueError(f"{op}: `protected_tokens` must be an integer >= 0 (and < 2^63), got {protected_tokens!r}")
    if distance not in _DISTANCES:
        raise ValueError(f'{op}: `distance` must be "cosine" or "euclidean", got {distance!r}')
    if variant != "pylate" and distance != "cosine":
        raise ValueError(f'{op}: `distance` must be "cosine" with variant {variant!r} (that library\'s only '
                         f'distance), got {distance!r}')
    if variant == "colpali" and protected_tokens != 0:
        raise ValueError(f"{op}: `protected_tokens` must be 0 with variant 'colpali' (colpali-engine protects no "
                         f"token), got {protected_tokens!r}")


def _validate(op, doc_tokens, doc_offsets, pool_factor, protected_tokens, distance, variant="pylate"):
    if not isinstance(doc_tokens, torch.Tensor) or doc_tokens.dim() != 2:
        raise ValueError(f"{op}: `doc_tokens` must be a 2-D tensor [total_tokens, dim], got "
                         f"{tuple(doc_tokens.shape) if isinstance(doc_tokens, torch.Tensor) else type(doc_tokens).__name__}")
    if doc_tokens.dtype not in _DTYPES:
        raise TypeError(f"{op}: `doc_tokens` must be float32, float16, bfloat16 or float64, got {doc_tokens.dtype}")
    if doc_tokens.shape[1] < 1:
        raise ValueError(f"{op}: `doc_tokens` must have dim >= 1")
    if not isinstance(doc_offsets, torch.Tensor) or doc_offsets.dim() != 1 or doc_offsets.dtype != torch.int64:
        raise ValueError(f"{op}: `doc_offsets` must be a 1-D int64 tensor [n_docs + 1]")
    if doc_offsets.shape[0] < 1:
        raise ValueError(f"{op}: `doc_offsets` must hold n_docs + 1 >= 1 entries (it starts with 0)")
    if doc_offsets.device != doc_tokens.device:
        raise ValueError(f"{op}: `doc_offsets` must be on {doc_tokens.device} like `doc_tokens`, got {doc_offsets.device}")
    _validate_scalars(op, pool_factor, protected_tokens, distance, variant)
    if torch.compiler.is_compiling():
        return
    if doc_tokens.device.type == "cpu" and NATIVE_LOADED and not _forced_reference():
        return  # the C++ op checks offsets and NaN/Inf itself
    flags = torch.stack(offsets_flags(doc_offsets, doc_tokens.shape[0])
                        + [~torch.isfinite(doc_tokens).all()]).tolist()
    raise_bad_offsets(op, doc_offsets, doc_tokens.shape[0], flags[:3])
    if flags[3]:
        raise ValueError(f"{op}: `doc_tokens` contains NaN or Inf")
    if distance == "cosine" and variant == "pylate":
        bad = _first_unnormalized_doc(doc_tokens, doc_offsets, pool_factor, protected_tokens)
        if bad >= 0:
            raise ValueError(_unnormalized_message(op, "doc_tokens", bad))


# Squared norm up to which a clustered token counts as L2-normalized under the cosine
# distance (csrc/pool/pool_core.h: kPoolMaxSqNorm).
_MAX_SQNORM = 1.02


def _unnormalized_message(op: str, name: str, doc: int) -> str:
    return (f"{op}: `{name}`: document {doc} has tokens that are not L2-normalized (squared norm above "
            f"{_MAX_SQNORM}, or too large for float32 products); distance \"cosine\" clusters on 1 - <a, b>, "
            f"which is a distance only between unit vectors. Normalize the tokens first, or pass "
            f"distance=\"euclidean\"")


def _first_unnormalized_doc(doc_tokens, doc_offsets, pool_factor: int, protected_tokens: int) -> int:
    """The first document whose clustered tokens (past the protected ones, in a document the
    cut shrinks) are not all of squared norm <= _MAX_SQNORM; -1 when there is none."""
    lens = doc_offsets[1:] - doc_offsets[:-1]
    if lens.numel() == 0:
        return -1
    p = lens.clamp(max=protected_tokens)
    n = lens - p
    clustered = (n // pool_factor).clamp(min=1) < n
    doc_of = torch.repeat_interleave(torch.arange(lens.numel(), device=lens.device), lens)
    pos = torch.arange(doc_tokens.shape[0], device=lens.device) - doc_offsets[:-1][doc_of]
    checked = clustered[doc_of] & (pos >= p[doc_of])
    sq = doc_tokens.float().pow(2).sum(1)
    bad = checked & ~(sq <= _MAX_SQNORM)
    return int(doc_of[bad][0]) if bool(bad.any()) else -1


def _defaults(variant, protected_tokens, normalize):
    """(protected_tokens, normalize) with each variant's defaults filled in: PyLate protects
    one token and leaves the means as they are; sentence-transformers protects one token and
    L2-normalizes every output row (its HierarchicalTokenPooling default); colpali-engine
    protects none and always normalizes the means."""
    if protected_tokens is None:
        protected_tokens = 0 if variant == "colpali" else 1
    if normalize is None:
        normalize = variant != "pylate"
    if variant == "colpali" and normalize is not True:
        raise ValueError("token_pool: variant 'colpali' always L2-normalizes its means; `normalize` must be True "
                         f"or None, got {normalize!r}")
    return protected_tokens, normalize


def _colpali_short_doc(lens: torch.Tensor, pool_factor) -> int:
    """The first document colpali-engine refuses (fewer than two tokens, pooled), or -1."""
    if pool_factor == 1 or lens.numel() == 0:
        return -1
    short = ((lens >= 0) & (lens < 2)).nonzero()  # negative: bad offsets, which the op names
    return int(short[0]) if short.numel() else -1


def _pool_packed(doc_tokens, doc_offsets, pool_factor, protected_tokens, normalize, distance, variant):
    """The kernel (or the reference) plus the variant's own steps around it."""
    if variant == "colpali":
        bad = _colpali_short_doc(doc_offsets[1:] - doc_offsets[:-1], pool_factor)
        if bad >= 0:
            raise ValueError(f"token_pool: variant 'colpali': document {bad} has fewer than 2 tokens "
                             "(colpali-engine's pooler refuses such documents)")
        if pool_factor == 1:
            return doc_tokens.clone(), doc_offsets.clone()
        x = doc_tokens.float()  # colpali-engine clusters and averages in float32
    else:
        x = doc_tokens
    if _forced_reference():
        out, off = _ref.token_pool_ref(x, doc_offsets, pool_factor, protected_tokens, normalize, distance,
                                       variant=variant)
    else:
        out, off = torch.ops.lateint_kernels.token_pool(x, doc_offsets, float(pool_factor), protected_tokens,
                                                        bool(normalize), distance, variant)
    return out.to(doc_tokens.dtype), off


def token_pool(doc_tokens: torch.Tensor, doc_offsets: torch.Tensor, pool_factor, *,
               protected_tokens: int = None, normalize: bool = None,
               distance: str = "cosine", variant: str = "pylate") -> Tuple[torch.Tensor, torch.Tensor]:
    """Token pooling of packed documents -> (pooled tokens [T', dim], offsets int64 [n+1]).

    Per document, the first `protected_tokens` rows are kept; the other n rows are clustered
    by Ward linkage into max(1, n // pool_factor) clusters and each cluster is replaced by its
    mean. `variant` picks whose pooling is reproduced, bit for bit on float32 inputs:
      "pylate" (default): PyLate's `pool_embeddings_hierarchical` (distance 1 - <a, b>, means
        not re-normalized unless `normalize=True`; protected_tokens 1). A document the cut
        would not shrink (n <= 1, pool_factor 1) is returned as is. `distance="euclidean"`
        clusters on ||a/|a| - b/|b||| (classic Ward) instead.
      "sentence-transformers": `HierarchicalTokenPooling` of sentence-transformers 6 (the
        distance clamped to [0, 2]; pool_factor may be fractional; every output row
        L2-normalized unless `normalize=False`, its `normalize_embeddings`).
      "colpali": colpali-engine's `HierarchicalTokenPooler` (Ward on the rows of the cosine
        distance matrix, no protected token, means L2-normalized; pool_factor 1 returns the
        input; documents of fewer than two tokens are refused, as there).
    Output dtype = input dtype; float16/bfloat16 are clustered in float32.
    """
    protected_tokens, normalize = _defaults(variant, protected_tokens, normalize)
    _validate("token_pool", doc_tokens, doc_offsets, pool_factor, protected_tokens, distance, variant)
    return _pool_packed(doc_tokens, doc_offsets, pool_factor, protected_tokens, normalize, distance, variant)


def token_pool_labels(doc_tokens: torch.Tensor, doc_offsets: torch.Tensor, pool_factor, *,
                      protected_tokens: int = None, distance: str = "cosine",
                      variant: str = "pylate") -> Tuple[torch.Tensor, torch.Tensor]:
    """The clustering of `token_pool` alone: (row of token_pool's output each input token
    goes to, int64 [T]; output offsets int64 [n+1])."""
    protected_tokens, _ = _defaults(variant, protected_tokens, None)
    _validate("token_pool_labels", doc_tokens, doc_offsets, pool_factor, protected_tokens, distance, variant)
    if _forced_reference():
        return _ref.token_pool_labels_ref(doc_tokens, doc_offsets, pool_factor, protected_tokens, distance,
                                          variant=variant)
    return torch.ops.lateint_kernels.token_pool_labels(doc_tokens, doc_offsets, float(pool_factor),
                                                       protected_tokens, distance, variant)


def token_pool_list(documents: Sequence[torch.Tensor], pool_factor, *, protected_tokens: int = None,
                    normalize: bool = None, distance: str = "cosine",
                    variant: str = "pylate") -> List[torch.Tensor]:
    """PyLate's calling convention: a list of [L_i, dim] tensors in, a list of pooled
    [L'_i, dim] tensors out (on the input device; PyLate's own returns CPU tensors), each its
    own allocation as PyLate's are. On CPU the documents are read where they lie (no packed
    copy). `variant` etc. as in `token_pool`."""
    if len(documents) == 0:
        return []
    protected_tokens, normalize = _defaults(variant, protected_tokens, normalize)
    docs = list(documents)
    for i, t in enumerate(docs):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"token_pool_list: documents[{i}] must be a 2-D tensor [L, dim], got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    native_cpu = docs[0].device.type == "cpu" and NATIVE_LOADED and not _forced_reference()
    if native_cpu and variant != "colpali" and all(t.device.type == "cpu" for t in docs):
        # validation of the scalars as token_pool does; the op checks shapes, dtypes, NaN/Inf
        if docs[0].dtype not in _DTYPES:
            raise TypeError(f"token_pool_list: documents must be float32, float16, bfloat16 or float64, "
                            f"got {docs[0].dtype}")
        _validate_scalars("token_pool_list", pool_factor, protected_tokens, distance, variant)
        return list(torch.ops.lateint_kernels.token_pool_list(docs, float(pool_factor), protected_tokens,
                                                              bool(normalize), distance, variant))
    packed = pack_list(docs)
    tokens, offsets = token_pool(packed.tokens, packed.offsets, pool_factor, protected_tokens=protected_tokens,
                                 normalize=normalize, distance=distance, variant=variant)
    lens = (offsets[1:] - offsets[:-1]).tolist()
    return list(torch.split(tokens, lens, dim=0))
