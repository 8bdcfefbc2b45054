"""The PLAID family, centroid interaction: `centroid_scores`, `ivf_candidates` (stage 1),
`approx_scores` (stages 2-3, centroid pruning) and `decompress_maxsim` (stage 4: exact
MaxSim on the decompressed candidates, fused so the decompressed corpus never exists), or
`lut_maxsim` (stage 4 in the compressed domain, WARP's implicit decompression).

Layers: C++ cores and CPU bindings in csrc/plaid/ (plaid_core.h; plaid_core.cpp and
plaid_cpu.cpp: candidates and approximate scores; plaid_score_cpu.cpp: decompress_maxsim on
the MaxSim core; plaid_lut.cpp and plaid_lut_cpu.cpp: lut_maxsim); Triton in
lateint_kernels/triton/plaid.py; the reference in lateint_kernels/reference/plaid.py;
tests/test_plaid.py and test_plaid_triton.py; bench/bench_plaid.py (the index) and
bench/bench_plaid_scorers.py. CUDA: Triton kernels for `approx_scores` and
`decompress_maxsim`, device-side torch ops (sort/unique) for `ivf_candidates`, and no
device kernel for `lut_maxsim` (the reference runs; `backend_for` says so and
`PLAIDIndex.search` refuses scorer="lut" on a GPU index). `centroid_scores` is torch's
BLAS, on the CPU in blocks of centroids written code-major (see its docstring).

Every stage takes `validate`: False skips the checks whose cost grows with the corpus
(offsets monotonicity, whole-array id ranges; on CUDA the host sync), for arrays already
checked once, as `PLAIDIndex` does at build, load and `to()`.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from .. import _registry
from .._checks import Checks
from .._registry import NS as _NS
from .._registry import forced_reference as _forced_reference
from ..reference import plaid as _ref
from .codec import _packed_and_weights, codec_common

# ivf_candidates: per query, the sorted unique documents listed (ivf: CSR centroid -> doc
# ids) under the ncells best centroids of each unmasked query token; int64 [nq, width], -1
# padded. scores: float32 [nq, lq, k] query-centroid scores, any strides (the CPU kernels
# read contiguous and code-major ones, stride(1) == 1, in place; others are copied).
# approx_scores: centroid-only MaxSim of each candidate (codes int32 per token of the packed
# documents), ignoring centroids whose best score over the query tokens is below threshold;
# float32 [nq, n_candidates], -inf for -1.
# decompress_maxsim: exact MaxSim of each candidate (-1 -> -inf) against its decompressed
# tokens normalize(C[code] + bucket_weights[bucket]), never materialized; bit-identical to
# decompress_residuals + maxsim_candidates. queries float32 [nq, lq, dim]; codes int32 [T];
# packed uint8 [T, dim * nbits / 8]; doc_offsets int64 [n_docs + 1]; candidates int64
# [nq, nc] -> float32 [nq, nc].
# lut_maxsim: the same against the unnormalized reconstructions C[code] + residual, as
# scores[q, i, code] + per-query lookup tables over the packed residual bytes (scores =
# centroid_scores(queries, C)) -> float32 [nq, nc] (-inf for -1, 0 for an empty document).
SCHEMAS = {
    "ivf_candidates": "(Tensor scores, Tensor? query_mask, Tensor ivf_offsets, Tensor ivf_docs, int n_docs, "
                      "int ncells, bool validate=True) -> Tensor",
    "approx_scores": "(Tensor scores, Tensor? query_mask, Tensor codes, Tensor doc_offsets, Tensor candidates, "
                     "float threshold, bool validate=True) -> Tensor",
    "decompress_maxsim": "(Tensor queries, Tensor? query_mask, Tensor codes, Tensor packed, Tensor doc_offsets, "
                         "Tensor centroids, Tensor bucket_weights, int nbits, Tensor candidates, "
                         "bool validate=True) -> Tensor",
    "lut_maxsim": "(Tensor queries, Tensor? query_mask, Tensor scores, Tensor codes, Tensor packed, "
                  "Tensor doc_offsets, Tensor bucket_weights, int nbits, Tensor candidates, "
                  "bool validate=True) -> Tensor",
}


def _drop_validate(fn):
    """A reference in the op's calling convention: the trailing `validate` is not its concern."""
    def op(*args):
        return fn(*args[:-1]) if len(args) and isinstance(args[-1], bool) else fn(*args)
    return op


_REFS = {"ivf_candidates": _drop_validate(_ref.ivf_candidates_ref),
         "approx_scores": _drop_validate(lambda *a: _ref.approx_scores_ref(*a).float()),
         "decompress_maxsim": _drop_validate(lambda *a: _ref.decompress_maxsim_ref(*a).float()),
         "lut_maxsim": _drop_validate(lambda *a: _ref.lut_maxsim_ref(*a).float())}


# ---------------------------------------------------------------------------------------
# CUDA entries: the checks of csrc/plaid/*_cpu.cpp made on the device (one host sync, none
# with validate=False), then the launch. Tests call them on CPU tensors.
def _scores(ck, scores, query_mask):
    ck.tensor(scores, "scores", 3, "[n_queries, query_len, n_centroids]", (torch.float32,))
    if scores.shape[2] < 1:
        ck.fail("`scores` must have at least one centroid")
    _query_mask(ck, query_mask, scores.shape[:2])


def _query_mask(ck, query_mask, shape):
    if query_mask is not None:
        ck.tensor(query_mask, "query_mask", 2, f"[n_queries, query_len] = {list(shape)}", (torch.bool,))
        if query_mask.shape != shape:
            ck.fail(f"`query_mask` must have shape {list(shape)}, got {list(query_mask.shape)}")


def _candidates(ck, candidates, nq, n_docs):
    ck.tensor(candidates, "candidates", 2, "[n_queries, n_candidates]", (torch.int64,))
    if candidates.shape[0] != nq:
        ck.fail(f"`candidates` must have n_queries = {nq} rows, got {candidates.shape[0]}")
    ck.ids(candidates, "candidates", -1, n_docs, "document ids (or -1 for none)")


def check_ivf(scores, query_mask, ivf_offsets, ivf_docs, n_docs, ncells, validate=True):
    ck = Checks("ivf_candidates", scores.device if isinstance(scores, torch.Tensor) else None, validate)
    _scores(ck, scores, query_mask)
    if ncells < 1:
        ck.fail(f"`ncells` must be >= 1, got {ncells}")
    if n_docs < 0:
        ck.fail(f"`n_docs` must be >= 0, got {n_docs}")
    ck.tensor(ivf_docs, "ivf_docs", 1, "[total]", (torch.int64,))
    if not isinstance(ivf_offsets, torch.Tensor) or ivf_offsets.shape != (scores.shape[2] + 1,):
        ck.fail(f"`ivf_offsets` must hold n_centroids + 1 = {scores.shape[2] + 1} entries")
    ck.offsets(ivf_offsets, "ivf_offsets", ivf_docs.shape[0])
    ck.ids(ivf_docs, "ivf_docs", 0, n_docs, "document ids")
    ck.run()


def check_approx(scores, query_mask, codes, doc_offsets, candidates, validate=True):
    ck = Checks("approx_scores", scores.device if isinstance(scores, torch.Tensor) else None, validate)
    _scores(ck, scores, query_mask)
    ck.tensor(codes, "codes", 1, "[total_tokens]", (torch.int32,))
    ck.offsets(doc_offsets, "doc_offsets", codes.shape[0])
    _candidates(ck, candidates, scores.shape[0], doc_offsets.shape[0] - 1)
    ck.ids(codes, "codes", 0, scores.shape[2], "centroid ids")
    ck.run()


def check_decompress_maxsim(queries, query_mask, codes, packed, doc_offsets, centroids, bucket_weights, nbits,
                            candidates, validate=True):
    ck = Checks("decompress_maxsim", queries.device if isinstance(queries, torch.Tensor) else None, validate)
    ck.tensor(queries, "queries", 3, "[n_queries, query_len, dim]", (torch.float32,))
    _query_mask(ck, query_mask, queries.shape[:2])
    ck.tensor(packed, "packed", 2, "[total_tokens, dim * nbits / 8]", (torch.uint8,))
    codec_common(ck, centroids, codes, nbits, packed.shape[0])
    if centroids.shape[1] != queries.shape[2]:
        ck.fail(f"`centroids` has dim {centroids.shape[1]} but `queries` has dim {queries.shape[2]}")
    _packed_and_weights(ck, packed, bucket_weights, queries.shape[2], nbits)
    ck.offsets(doc_offsets, "doc_offsets", codes.shape[0])
    _candidates(ck, candidates, queries.shape[0], doc_offsets.shape[0] - 1)
    if ck.wants_data_checks():
        q = queries if query_mask is None else queries[query_mask]
        ck.finite(q, "queries", " (in an unmasked token)")
    ck.run()

def _cuda_entries():
    try:
        from ..triton import plaid as _tp
    except Exception:  # triton missing or broken: the references serve CUDA
        return {}

    def ivf(scores, query_mask, ivf_offsets, ivf_docs, n_docs, ncells, validate=True):
        check_ivf(scores, query_mask, ivf_offsets, ivf_docs, n_docs, ncells, validate)
        return _tp.ivf_candidates_torch(scores, query_mask, ivf_offsets, ivf_docs, n_docs, ncells)

    def approx(scores, query_mask, codes, doc_offsets, candidates, threshold, validate=True):
        check_approx(scores, query_mask, codes, doc_offsets, candidates, validate)
        return _tp.approx_scores_triton(scores, query_mask, codes, doc_offsets, candidates, threshold)

    def dmaxsim(queries, query_mask, codes, packed, doc_offsets, centroids, bucket_weights, nbits, candidates,
                validate=True):
        check_decompress_maxsim(queries, query_mask, codes, packed, doc_offsets, centroids, bucket_weights,
                                nbits, candidates, validate)
        return _tp.decompress_maxsim_triton(queries, query_mask, codes, packed, doc_offsets, centroids,
                                            bucket_weights, nbits, candidates)

    return {"ivf_candidates": (ivf, "torch"), "approx_scores": (approx, "triton"),
            "decompress_maxsim": (dmaxsim, "triton")}


CUDA_ENTRIES = _cuda_entries()  # name -> (CUDA entry: checks + launch, backend)
_registry.register_family("plaid", SCHEMAS, _REFS, CUDA_ENTRIES)


@torch.library.register_fake(f"{_NS}::ivf_candidates")
def _(scores, query_mask, ivf_offsets, ivf_docs, n_docs, ncells, validate=True):
    width = torch.library.get_ctx().new_dynamic_size()
    return scores.new_empty(scores.shape[0], width, dtype=torch.int64)


@torch.library.register_fake(f"{_NS}::approx_scores")
def _(scores, query_mask, codes, doc_offsets, candidates, threshold, validate=True):
    return scores.new_empty(candidates.shape, dtype=torch.float32)


def _fake_candidate_scores(queries, candidates):
    """The final-stage scorers' output: float32 [n_queries, n_candidates]."""
    torch._check(queries.dim() == 3, lambda: "`queries` must be 3-D [n_queries, query_len, dim]")
    torch._check(candidates.dim() == 2 and candidates.shape[0] == queries.shape[0],
                 lambda: "`candidates` must be [n_queries, n_candidates]")
    return queries.new_empty(candidates.shape, dtype=torch.float32)


@torch.library.register_fake(f"{_NS}::decompress_maxsim")
def _(queries, query_mask, codes, packed, doc_offsets, centroids, bucket_weights, nbits, candidates,
      validate=True):
    return _fake_candidate_scores(queries, candidates)


@torch.library.register_fake(f"{_NS}::lut_maxsim")
def _(queries, query_mask, scores, codes, packed, doc_offsets, bucket_weights, nbits, candidates,
      validate=True):
    return _fake_candidate_scores(queries, candidates)


_WARNED = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _check_scores(op, scores, query_mask):
    if not isinstance(scores, torch.Tensor) or scores.dim() != 3 or scores.dtype != torch.float32:
        raise ValueError(f"{op}: `scores` must be a float32 tensor [n_queries, query_len, n_centroids]")
    if query_mask is not None and (query_mask.dtype != torch.bool or query_mask.shape != scores.shape[:2]):
        raise ValueError(f"{op}: `query_mask` must be a bool tensor [n_queries, query_len] = "
                         f"{list(scores.shape[:2])}")


# centroids per matmul of centroid_scores on the CPU: a block of the centroids stays in cache
# while every query's scores against it are computed
_CENTROID_BLOCK = 4096
# scores up to this size come from one matmul, [k, nq * Lq] (its wide output runs at the
# BLAS's best; per-query products with few columns, e.g. 17 query tokens, run at half of
# it), read in place with each centroid's row holding every query's scores; larger ones
# are computed per query in blocks of centroids, so that one query's scores stay together
_ONE_MATMUL_BYTES = 32 << 20


def centroid_scores(queries: torch.Tensor, centroids: torch.Tensor, *,
                    workspace: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Query-token x centroid inner products: queries [nq, Lq, dim], centroids [k, dim] ->
    float32 [nq, Lq, k]. On the CPU the result is code-major (each centroid's Lq scores of a
    query adjacent: stride(1) == 1), the layout that the CPU kernels of ivf_candidates,
    approx_scores and lut_maxsim read in place: a view of a contiguous [k, nq, Lq] tensor
    when the scores fit in _ONE_MATMUL_BYTES, else of a contiguous [nq, k, Lq] one;
    elsewhere it is contiguous. `workspace` (CPU only): a contiguous float32 CPU tensor of at least
    nq * k * Lq elements that the scores are written into (and the result views), so that
    repeated searches reuse memory instead of faulting in fresh pages."""
    if queries.dim() != 3 or centroids.dim() != 2 or queries.shape[2] != centroids.shape[1]:
        raise ValueError("centroid_scores: `queries` must be [n_queries, query_len, dim] and `centroids` "
                         "[k, dim] with the same dim")
    q, c = queries.float(), centroids.float()
    if q.device.type != "cpu":
        return torch.matmul(q, c.T)
    nq, lq, k = q.shape[0], q.shape[1], c.shape[0]
    n = nq * k * lq
    if torch.compiler.is_compiling():  # the same products, without out=
        if 4 * n <= _ONE_MATMUL_BYTES:
            return torch.mm(c, q.reshape(nq * lq, q.shape[2]).T).view(k, nq, lq).permute(1, 2, 0)
        return torch.matmul(c, q.transpose(1, 2)).transpose(1, 2)
    if workspace is not None and (workspace.dtype != torch.float32 or workspace.device.type != "cpu"
                                  or not workspace.is_contiguous() or workspace.numel() < n):
        raise ValueError(f"centroid_scores: `workspace` must be a contiguous float32 CPU tensor of at least "
                         f"n_queries * k * query_len = {n} elements")
    buf = torch.empty(n) if workspace is None else workspace.view(-1)[:n]
    if 4 * n <= _ONE_MATMUL_BYTES:  # [k, nq, Lq]
        out = buf.view(k, nq * lq)
        torch.mm(c, q.reshape(nq * lq, q.shape[2]).T, out=out)
        return out.view(k, nq, lq).permute(1, 2, 0)
    out = buf.view(nq, k, lq)
    qt = q.transpose(1, 2).contiguous()  # [nq, dim, Lq]
    for c0 in range(0, k, _CENTROID_BLOCK):
        torch.matmul(c[c0:c0 + _CENTROID_BLOCK], qt, out=out[:, c0:c0 + _CENTROID_BLOCK])
    return out.transpose(1, 2)


def ivf_candidates(scores: torch.Tensor, ivf_offsets: torch.Tensor, ivf_docs: torch.Tensor, n_docs: int,
                   ncells: int, *, query_mask: Optional[torch.Tensor] = None, validate: bool = True) -> torch.Tensor:
    """Candidate documents per query: the union of the IVF lists (CSR: ivf_offsets [k + 1],
    ivf_docs) of the `ncells` best centroids of each query token -> int64 [nq, width],
    sorted, -1 padded."""
    _check_scores("ivf_candidates", scores, query_mask)
    if _forced_reference():
        return _ref.ivf_candidates_ref(scores, query_mask, ivf_offsets, ivf_docs, n_docs, ncells)
    return torch.ops.lateint_kernels.ivf_candidates(scores, query_mask, ivf_offsets, ivf_docs, n_docs, ncells,
                                                    bool(validate))


def approx_scores(scores: torch.Tensor, codes: torch.Tensor, doc_offsets: torch.Tensor, candidates: torch.Tensor,
                  *, threshold: float = float("-inf"), query_mask: Optional[torch.Tensor] = None,
                  validate: bool = True) -> torch.Tensor:
    """Centroid-only MaxSim of each candidate (codes: int32 centroid id per packed token),
    ignoring centroids whose best score over the query tokens is below `threshold` (PLAID's
    centroid pruning) -> float32 [nq, n_candidates] (-inf for -1). NaN in an unmasked row of
    `scores` is refused (the C++ op finds it in its own pass; the reference and GPU paths
    check it here, one host sync on GPU that validate=False skips for scores already known
    to be NaN-free; on code-major CPU scores with nothing pruned, validate=False skips that
    pass)."""
    _check_scores("approx_scores", scores, query_mask)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold != threshold:
        raise ValueError(f"approx_scores: `threshold` must be a number (-inf: no pruning), got {threshold!r}")
    if validate and (_forced_reference() or scores.device.type != "cpu") and not torch.compiler.is_compiling():
        unmasked = scores if query_mask is None else scores[query_mask]
        if bool(unmasked.isnan().any()):
            raise ValueError("approx_scores: `scores` contains NaN (in an unmasked query token; are the queries "
                             "finite?)")
    if _forced_reference():
        return _ref.approx_scores_ref(scores, query_mask, codes, doc_offsets, candidates, threshold).float()
    return torch.ops.lateint_kernels.approx_scores(scores, query_mask, codes, doc_offsets, candidates,
                                                   float(threshold), bool(validate))


def decompress_maxsim(queries: torch.Tensor, codes: torch.Tensor, packed: torch.Tensor, doc_offsets: torch.Tensor,
                      centroids: torch.Tensor, bucket_weights: torch.Tensor, nbits: int, candidates: torch.Tensor, *,
                      query_mask: Optional[torch.Tensor] = None, validate: bool = True) -> torch.Tensor:
    """Exact MaxSim of candidate documents of a compressed corpus: queries [nq, Lq, dim]
    against document candidates[q, j] (-1: none -> -inf) whose tokens are
    normalize(centroids[codes] + bucket_weights[bucket]) (the residual codec's decompression)
    -> float32 [nq, n_candidates]. Equals decompress_residuals + maxsim_candidates on the
    gathered documents, bit for bit, without building their float32 tokens: each distinct
    candidate is decompressed once, in cache, and scored for every query listing it."""
    op = "decompress_maxsim"
    if not isinstance(queries, torch.Tensor) or queries.dim() != 3:
        raise ValueError(f"{op}: `queries` must be a tensor [n_queries, query_len, dim]")
    if not isinstance(candidates, torch.Tensor) or candidates.dim() != 2 or candidates.shape[0] != queries.shape[0]:
        raise ValueError(f"{op}: `candidates` must be an int64 tensor [n_queries, n_candidates] with "
                         f"n_queries = {queries.shape[0]}")
    if query_mask is not None and (query_mask.dtype != torch.bool or query_mask.shape != queries.shape[:2]):
        raise ValueError(f"{op}: `query_mask` must be a bool tensor [n_queries, query_len] = {list(queries.shape[:2])}")
    q = queries if queries.dtype == torch.float32 else queries.float()
    c = centroids if centroids.dtype == torch.float32 else centroids.float()
    if _forced_reference():
        return _ref.decompress_maxsim_ref(q, query_mask, codes, packed, doc_offsets, c, bucket_weights, nbits,
                                          candidates).float()
    return torch.ops.lateint_kernels.decompress_maxsim(q, query_mask, codes, packed, doc_offsets, c,
                                                       bucket_weights, int(nbits), candidates, bool(validate))


def lut_maxsim(queries: torch.Tensor, scores: torch.Tensor, codes: torch.Tensor, packed: torch.Tensor,
               doc_offsets: torch.Tensor, bucket_weights: torch.Tensor, nbits: int, candidates: torch.Tensor, *,
               query_mask: Optional[torch.Tensor] = None, validate: bool = True) -> torch.Tensor:
    """MaxSim of candidate documents scored in the compressed domain (WARP's "implicit
    decompression"): each stored token counts as its unnormalized reconstruction
    centroids[code] + bucket_weights[bucket], scored as scores[q, i, code] (the
    `centroid_scores` the search already has) plus a per-query lookup table over the packed
    residual bytes; no token is rebuilt. queries [nq, Lq, dim], scores [nq, Lq, k],
    candidates int64 [nq, nc] (-1: none -> -inf) -> float32 [nq, nc]. Differs from
    `decompress_maxsim` by the normalization of the reconstructed tokens (ColBERTv2's
    decompression normalizes them, WARP's scoring does not)."""
    op = "lut_maxsim"
    if not isinstance(queries, torch.Tensor) or queries.dim() != 3:
        raise ValueError(f"{op}: `queries` must be a tensor [n_queries, query_len, dim]")
    _check_scores(op, scores, query_mask)
    if scores.shape[:2] != queries.shape[:2]:
        raise ValueError(f"{op}: `scores` must be [n_queries, query_len, n_centroids] = "
                         f"[{queries.shape[0]}, {queries.shape[1]}, k], got {list(scores.shape)}")
    if not isinstance(candidates, torch.Tensor) or candidates.dim() != 2 or candidates.shape[0] != queries.shape[0]:
        raise ValueError(f"{op}: `candidates` must be an int64 tensor [n_queries, n_candidates] with "
                         f"n_queries = {queries.shape[0]}")
    q = queries if queries.dtype == torch.float32 else queries.float()
    if q.device.type != "cpu" and not _forced_reference() and not torch.compiler.is_compiling():
        _warn_once("lut_maxsim", f"lut_maxsim has no kernel for {q.device.type}: the reference runs (slow); "
                                 "decompress_maxsim is the final-stage scorer with a GPU kernel")
    if _forced_reference():
        return _ref.lut_maxsim_ref(q, query_mask, scores, codes, packed, doc_offsets, bucket_weights, nbits,
                                   candidates).float()
    return torch.ops.lateint_kernels.lut_maxsim(q, query_mask, scores, codes, packed, doc_offsets, bucket_weights,
                                                int(nbits), candidates, bool(validate))
