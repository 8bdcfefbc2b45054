"""PLAID centroid interaction: `centroid_scores`, `ivf_candidates` (stage 1),
`approx_scores` (stages 2-3, centroid pruning) and `decompress_maxsim` (stage 4: exact
MaxSim on the decompressed candidates, fused so the decompressed corpus never exists), or
`lut_maxsim` (stage 4 in the compressed domain, WARP's implicit decompression).
CPU: C++ kernels (csrc/cpu/plaid.cpp, plaid_score.cpp). CUDA: Triton kernels for
`approx_scores` and `decompress_maxsim`, device-side torch ops (sort/unique) for
`ivf_candidates` (lateint_kernels/triton/plaid.py; interpreter-tested in CI, run on an H100 on
2026-11-26), the reference for `lut_maxsim`; `backend_for` says which. `centroid_scores` is one
matmul and is left to torch's BLAS (the brief: don't hand-write what a good library does)."""
from __future__ import annotations

from typing import Optional

import torch

from . import ops as _ops
from . import reference as _ref

_NS = "lateint_kernels"
_SCHEMAS = {
    "ivf_candidates": "(Tensor scores, Tensor? query_mask, Tensor ivf_offsets, Tensor ivf_docs, int n_docs, "
                      "int ncells) -> Tensor",
    "approx_scores": "(Tensor scores, Tensor? query_mask, Tensor codes, Tensor doc_offsets, Tensor candidates, "
                     "float threshold) -> Tensor",
    "decompress_maxsim": "(Tensor queries, Tensor? query_mask, Tensor codes, Tensor packed, Tensor doc_offsets, "
                         "Tensor centroids, Tensor bucket_weights, int nbits, Tensor candidates) -> Tensor",
    "lut_maxsim": "(Tensor queries, Tensor? query_mask, Tensor scores, Tensor codes, Tensor packed, "
                  "Tensor doc_offsets, Tensor bucket_weights, int nbits, Tensor candidates) -> Tensor",
}
_REFS = {"ivf_candidates": _ref.ivf_candidates_ref,
         "approx_scores": lambda *a: _ref.approx_scores_ref(*a).float(),
         "decompress_maxsim": lambda *a: _ref.decompress_maxsim_ref(*a).float(),
         "lut_maxsim": lambda *a: _ref.lut_maxsim_ref(*a).float()}


def _cuda_kernels():
    try:
        from .triton import plaid as _tp
    except Exception:  # triton missing or broken: the references serve CUDA
        return {}
    from . import _device_checks as _dc

    def ivf(scores, query_mask, ivf_offsets, ivf_docs, n_docs, ncells):
        _dc.check_ivf(scores, query_mask, ivf_offsets, ivf_docs, n_docs, ncells)
        return _tp.ivf_candidates_torch(scores, query_mask, ivf_offsets, ivf_docs, n_docs, ncells)

    def approx(scores, query_mask, codes, doc_offsets, candidates, threshold):
        _dc.check_approx(scores, query_mask, codes, doc_offsets, candidates)
        return _tp.approx_scores_triton(scores, query_mask, codes, doc_offsets, candidates, threshold)

    def dmaxsim(queries, query_mask, codes, packed, doc_offsets, centroids, bucket_weights, nbits, candidates):
        _dc.check_decompress_maxsim(queries, query_mask, codes, packed, doc_offsets, centroids, bucket_weights,
                                    nbits, candidates)
        return _tp.decompress_maxsim_triton(queries, query_mask, codes, packed, doc_offsets, centroids,
                                            bucket_weights, nbits, candidates)

    return {"ivf_candidates": (ivf, "torch"), "approx_scores": (approx, "triton"),
            "decompress_maxsim": (dmaxsim, "triton")}


_CUDA = _cuda_kernels()  # name -> (CUDA entry: checks + launch, backend); tests call them on CPU
_ops.register_cpu_kernel_ops(_SCHEMAS, _REFS, _CUDA)


@torch.library.register_fake(f"{_NS}::ivf_candidates")
def _(scores, query_mask, ivf_offsets, ivf_docs, n_docs, ncells):
    width = torch.library.get_ctx().new_dynamic_size()
    return scores.new_empty(scores.shape[0], width, dtype=torch.int64)


@torch.library.register_fake(f"{_NS}::approx_scores")
def _(scores, query_mask, codes, doc_offsets, candidates, threshold):
    return scores.new_empty(candidates.shape, dtype=torch.float32)


def _fake_candidate_scores(queries, candidates):
    """The final-stage scorers' output: float32 [n_queries, n_candidates]."""
    torch._check(queries.dim() == 3, lambda: "`queries` must be 3-D [n_queries, query_len, dim]")
    torch._check(candidates.dim() == 2 and candidates.shape[0] == queries.shape[0],
                 lambda: "`candidates` must be [n_queries, n_candidates]")
    return queries.new_empty(candidates.shape, dtype=torch.float32)


@torch.library.register_fake(f"{_NS}::decompress_maxsim")
def _(queries, query_mask, codes, packed, doc_offsets, centroids, bucket_weights, nbits, candidates):
    return _fake_candidate_scores(queries, candidates)


@torch.library.register_fake(f"{_NS}::lut_maxsim")
def _(queries, query_mask, scores, codes, packed, doc_offsets, bucket_weights, nbits, candidates):
    return _fake_candidate_scores(queries, candidates)


def _check_scores(op, scores, query_mask):
    if not isinstance(scores, torch.Tensor) or scores.dim() != 3 or scores.dtype != torch.float32:
        raise ValueError(f"{op}: `scores` must be a float32 tensor [n_queries, query_len, n_centroids]")
    if query_mask is not None and (query_mask.dtype != torch.bool or query_mask.shape != scores.shape[:2]):
        raise ValueError(f"{op}: `query_mask` must be a bool tensor [n_queries, query_len] = "
                         f"{list(scores.shape[:2])}")


def centroid_scores(queries: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Query-token x centroid inner products: queries [nq, Lq, dim], centroids [k, dim] ->
    float32 [nq, Lq, k]."""
    if queries.dim() != 3 or centroids.dim() != 2 or queries.shape[2] != centroids.shape[1]:
        raise ValueError("centroid_scores: `queries` must be [n_queries, query_len, dim] and `centroids` "
                         "[k, dim] with the same dim")
    return torch.matmul(queries.float(), centroids.float().T)


def ivf_candidates(scores: torch.Tensor, ivf_offsets: torch.Tensor, ivf_docs: torch.Tensor, n_docs: int,
                   ncells: int, *, query_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Candidate documents per query: the union of the IVF lists (CSR: ivf_offsets [k + 1],
    ivf_docs) of the `ncells` best centroids of each query token -> int64 [nq, width],
    sorted, -1 padded."""
    _check_scores("ivf_candidates", scores, query_mask)
    if _ops._forced_reference():
        return _ref.ivf_candidates_ref(scores, query_mask, ivf_offsets, ivf_docs, n_docs, ncells)
    return torch.ops.lateint_kernels.ivf_candidates(scores, query_mask, ivf_offsets, ivf_docs, n_docs, ncells)


def approx_scores(scores: torch.Tensor, codes: torch.Tensor, doc_offsets: torch.Tensor, candidates: torch.Tensor,
                  *, threshold: float = float("-inf"), query_mask: Optional[torch.Tensor] = None,
                  validate: bool = True) -> torch.Tensor:
    """Centroid-only MaxSim of each candidate (codes: int32 centroid id per packed token),
    ignoring centroids whose best score over the query tokens is below `threshold` (PLAID's
    centroid pruning) -> float32 [nq, n_candidates] (-inf for -1). NaN in an unmasked row of
    `scores` is refused (the C++ op finds it in its own pass; the reference and GPU paths
    check it here, one host sync on GPU that validate=False skips for scores already known
    to be NaN-free)."""
    _check_scores("approx_scores", scores, query_mask)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold != threshold:
        raise ValueError(f"approx_scores: `threshold` must be a number (-inf: no pruning), got {threshold!r}")
    if validate and (_ops._forced_reference() or scores.device.type != "cpu") and not torch.compiler.is_compiling():
        unmasked = scores if query_mask is None else scores[query_mask]
        if bool(unmasked.isnan().any()):
            raise ValueError("approx_scores: `scores` contains NaN (in an unmasked query token; are the queries "
                             "finite?)")
    if _ops._forced_reference():
        return _ref.approx_scores_ref(scores, query_mask, codes, doc_offsets, candidates, threshold).float()
    return torch.ops.lateint_kernels.approx_scores(scores, query_mask, codes, doc_offsets, candidates,
                                                   float(threshold))


def decompress_maxsim(queries: torch.Tensor, codes: torch.Tensor, packed: torch.Tensor, doc_offsets: torch.Tensor,
                      centroids: torch.Tensor, bucket_weights: torch.Tensor, nbits: int, candidates: torch.Tensor, *,
                      query_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
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
    if _ops._forced_reference():
        return _ref.decompress_maxsim_ref(q, query_mask, codes, packed, doc_offsets, c, bucket_weights, nbits,
                                          candidates).float()
    return torch.ops.lateint_kernels.decompress_maxsim(q, query_mask, codes, packed, doc_offsets, c,
                                                       bucket_weights, int(nbits), candidates)


def lut_maxsim(queries: torch.Tensor, scores: torch.Tensor, codes: torch.Tensor, packed: torch.Tensor,
               doc_offsets: torch.Tensor, bucket_weights: torch.Tensor, nbits: int, candidates: torch.Tensor, *,
               query_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
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
    if _ops._forced_reference():
        return _ref.lut_maxsim_ref(q, query_mask, scores, codes, packed, doc_offsets, bucket_weights, nbits,
                                   candidates).float()
    return torch.ops.lateint_kernels.lut_maxsim(q, query_mask, scores, codes, packed, doc_offsets, bucket_weights,
                                                int(nbits), candidates)
