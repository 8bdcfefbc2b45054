// Every lateint_kernels op schema, defined once. Implementations register per dispatch key
// in csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA); Triton kernels are registered for CUDA
// from Python (lateint_kernels/ops.py) when no CUDA C++ kernel was built. Fake kernels and
// autograd are registered in Python.
#include <Python.h>
#include <torch/library.h>

int64_t lateint_cpu_isa(int64_t request);  // csrc/cpu/maxsim.cpp
int64_t lateint_bf16_dot();               // csrc/cpu/maxsim.cpp

TORCH_LIBRARY(lateint_kernels, m) {
  // Late-interaction score of every query against every packed document:
  // scores[q, d] = sum over unmasked query tokens i of max over tokens t of doc d of <Q[q,i], D[t]>.
  // mask_mode "ignore": masked query tokens add nothing; "zero": PyLate's multiplicative
  // masking (doc_padded[d] floors each per-token max of doc d at 0). Output float32 [nq, nd].
  m.def("maxsim(Tensor queries, Tensor? query_mask, Tensor doc_tokens, Tensor doc_offsets, "
        "Tensor? doc_padded, str mask_mode) -> Tensor");
  // Each query against its own candidate documents (candidates int64 [nq, k], -1 = none,
  // scored -inf). Output float32 [nq, k].
  m.def("maxsim_candidates(Tensor queries, Tensor? query_mask, Tensor doc_tokens, "
        "Tensor doc_offsets, Tensor candidates, Tensor? doc_padded, str mask_mode) -> Tensor");
  // Forward that also returns the winning token of each query token: argmax int32
  // [nq, Lq, nd or k] (global token index, -1 where none wins). Used by tests and backward.
  m.def("maxsim_argmax(Tensor queries, Tensor? query_mask, Tensor doc_tokens, "
        "Tensor doc_offsets, Tensor? candidates, Tensor? doc_padded, str mask_mode) "
        "-> (Tensor, Tensor)");
  // Gradients of maxsim / maxsim_candidates (candidates=None for all pairs) w.r.t. queries
  // and doc_tokens, given grad [nq, nd or k]. Recomputes the argmax (no [nq, Lq, nd] state is
  // kept between forward and backward); reductions run in a fixed order (deterministic).
  m.def("maxsim_backward(Tensor grad, Tensor queries, Tensor? query_mask, Tensor doc_tokens, "
        "Tensor doc_offsets, Tensor? candidates, Tensor? doc_padded, str mask_mode) "
        "-> (Tensor, Tensor)");
  // The CUDA C++ (SIMT, no tensor cores) implementations under their own names, same
  // schemas. ops.py routes the main ops' CUDA key to Triton when it is importable (tensor
  // cores: measured 10-25x faster on an H100, bench/RESULTS.md) and to these otherwise.
  m.def("maxsim_cuda_simt(Tensor queries, Tensor? query_mask, Tensor doc_tokens, "
        "Tensor doc_offsets, Tensor? doc_padded, str mask_mode) -> Tensor");
  m.def("maxsim_candidates_cuda_simt(Tensor queries, Tensor? query_mask, Tensor doc_tokens, "
        "Tensor doc_offsets, Tensor candidates, Tensor? doc_padded, str mask_mode) -> Tensor");
  m.def("maxsim_argmax_cuda_simt(Tensor queries, Tensor? query_mask, Tensor doc_tokens, "
        "Tensor doc_offsets, Tensor? candidates, Tensor? doc_padded, str mask_mode) "
        "-> (Tensor, Tensor)");
  m.def("maxsim_backward_cuda_simt(Tensor grad, Tensor queries, Tensor? query_mask, "
        "Tensor doc_tokens, Tensor doc_offsets, Tensor? candidates, Tensor? doc_padded, "
        "str mask_mode) -> (Tensor, Tensor)");
  // k-means assignment: for each row of x [n, dim], the centroid [k, dim] with the largest
  // inner product (first index on ties) -> (codes int32 [n], best score float32 [n]). Fused
  // GEMM + argmax: memory O(n + k * dim), never [n, k].
  m.def("kmeans_assign(Tensor x, Tensor centroids) -> (Tensor, Tensor)");
  // PLAID residual codec (layout in csrc/core/residual_core.h): x [n, dim], centroids
  // [k, dim], codes int32 [n], bucket_cutoffs [2^nbits - 1] -> uint8 [n, dim * nbits / 8];
  // and back: normalize(C[code] + bucket_weights[bucket]) -> float32 [n, dim].
  m.def("compress_residuals(Tensor x, Tensor centroids, Tensor codes, Tensor bucket_cutoffs, "
        "int nbits) -> Tensor");
  m.def("decompress_residuals(Tensor codes, Tensor packed, Tensor centroids, "
        "Tensor bucket_weights, int nbits) -> Tensor");
  // PLAID stage 1: per query, the sorted unique documents listed (ivf: CSR centroid -> doc
  // ids) under the ncells best centroids of each unmasked query token; int64 [nq, width],
  // -1 padded. scores: float32 [nq, lq, k] query-centroid scores.
  m.def("ivf_candidates(Tensor scores, Tensor? query_mask, Tensor ivf_offsets, Tensor ivf_docs, "
        "int n_docs, int ncells) -> Tensor");
  // PLAID stages 2-3: centroid-only MaxSim of each candidate (codes int32 per token of the
  // packed documents), ignoring centroids whose best score over the query tokens is below
  // threshold; float32 [nq, n_candidates], -inf for -1.
  m.def("approx_scores(Tensor scores, Tensor? query_mask, Tensor codes, Tensor doc_offsets, "
        "Tensor candidates, float threshold) -> Tensor");
  // PLAID final stage, fused: exact MaxSim of each candidate document (-1: none -> -inf)
  // against its decompressed tokens normalize(C[code] + bucket_weights[bucket]), without
  // materializing them; bit-identical to decompress_residuals + maxsim_candidates.
  // queries float32 [nq, lq, dim]; codes int32 [T]; packed uint8 [T, dim * nbits / 8];
  // doc_offsets int64 [n_docs + 1]; candidates int64 [nq, nc] -> float32 [nq, nc].
  m.def("decompress_maxsim(Tensor queries, Tensor? query_mask, Tensor codes, Tensor packed, "
        "Tensor doc_offsets, Tensor centroids, Tensor bucket_weights, int nbits, Tensor candidates) "
        "-> Tensor");
  // PLAID final stage in the compressed domain (WARP's implicit decompression): MaxSim of
  // each candidate against its tokens' unnormalized reconstructions C[code] + residual, as
  // scores[q, i, code] + per-query lookup tables over the packed residual bytes; no token is
  // rebuilt. scores float32 [nq, lq, k] = centroid_scores(queries, C); other inputs as
  // decompress_maxsim -> float32 [nq, nc] (-inf for -1, 0 for an empty document).
  m.def("lut_maxsim(Tensor queries, Tensor? query_mask, Tensor scores, Tensor codes, Tensor packed, "
        "Tensor doc_offsets, Tensor bucket_weights, int nbits, Tensor candidates) -> Tensor");
  // Token pooling (PyLate's pool_embeddings_hierarchical as a kernel): per document, the
  // tokens after the first `protected_tokens` are clustered by Ward linkage into
  // max(1, n // pool_factor) clusters (scipy's linkage + fcluster maxclust, bit-exact on the
  // same distances) and each cluster replaced by its mean. distance "cosine" = 1 - <a, b>
  // (PyLate), "euclidean" = ||a/|a| - b/|b|||. normalize L2-normalizes the means. Returns
  // (pooled tokens [T', dim] in the input dtype, offsets int64 [n_docs + 1]).
  m.def("token_pool(Tensor doc_tokens, Tensor doc_offsets, int pool_factor, "
        "int protected_tokens, bool normalize, str distance) -> (Tensor, Tensor)");
  // The clustering alone: for every input token its (global) row in token_pool's output,
  // int64 [T], and the output offsets. token_pool = these + a segment mean.
  m.def("token_pool_labels(Tensor doc_tokens, Tensor doc_offsets, int pool_factor, "
        "int protected_tokens, str distance) -> (Tensor, Tensor)");
  // token_pool of a list of [L_i, dim] documents (PyLate's layout), read in place: one
  // pooled [L'_i, dim] tensor per document, the rows token_pool gives that document when
  // run on torch.cat(docs) and its offsets.
  m.def("token_pool_list(Tensor[] docs, int pool_factor, int protected_tokens, "
        "bool normalize, str distance) -> Tensor[]");
  // Testing hooks (and the GPU path's host step): scipy's linkage(method="ward") of a full
  // float64 distance matrix, and fcluster(Z, max_nc, criterion="maxclust").
  m.def("_ward_linkage(Tensor dist) -> Tensor");
  m.def("_fcluster_maxclust(Tensor Z, int max_nc) -> Tensor");
  // Testing hook: the full [n, n] float64 distance matrix the CPU clustering starts from
  // for one document's tokens x [n, dim] (diagonal +inf), from the active ISA's kernel.
  m.def("_pool_distances(Tensor x, str distance) -> Tensor");
  // The GPU path's host step: per-document cut of NN-chain merge lists made on the device
  // (merges_x/y int32 [n_docs, W], merges_d float64 [n_docs, W]) -> token_pool_labels' output.
  m.def("_token_pool_finish(Tensor merges_x, Tensor merges_y, Tensor merges_d, "
        "Tensor doc_offsets, int pool_factor, int protected_tokens) -> (Tensor, Tensor)");
  // CPU instruction set of the kernels: request -1 queries, 0..3 forces scalar / avx2 /
  // avx512 / avx512bf16 (clamped to what the processor has), -2 restores the best.
  m.def("_cpu_isa(int request) -> int", &lateint_cpu_isa);
  // 1 if bf16 inputs run on VDPBF16PS dot products, 0 if widened to float32 (timed once).
  m.def("_cpu_bf16_dot() -> int", &lateint_bf16_dot);
}

// Importing lateint_kernels._C runs the static initializers above; the module itself is empty.
static struct PyModuleDef lateint_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&lateint_module); }
