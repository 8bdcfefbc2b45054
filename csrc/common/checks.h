// Host-side argument checks used at the C++ boundary of every op. Messages name the op,
// the argument and what was expected, so a bad call is fixed from the error alone.
#pragma once
#include <torch/types.h>

#include "common/dtype.h"

#define LK_CHECK(cond, op, ...) TORCH_CHECK(cond, op, ": ", __VA_ARGS__)
#define LK_CHECK_DIM(t, n, op, name, layout)                                               \
  LK_CHECK((t).dim() == (n), op, "`" name "` must be ", n, "-D ", layout, ", got shape ", \
           (t).sizes())
#define LK_CHECK_DEVICE(t, dev, op, name)                                                  \
  LK_CHECK((t).device() == (dev), op, "`" name "` must be on ", (dev), " like `queries`, got ", \
           (t).device())
#define LK_CHECK_DTYPE(t, dt, op, name)                                                    \
  LK_CHECK((t).scalar_type() == (dt), op, "`" name "` must have dtype ", (dt), ", got ",    \
           (t).scalar_type())

// A CSR offsets vector (contiguous): 1-D int64 [n + 1], from 0 to `total`, non-decreasing.
// full=false checks the shape and both ends only (O(1)): for offsets the caller validated
// once and passes again (an index's, with validate=false).
inline void check_offsets(const at::Tensor& off, int64_t total, const char* op, const char* name,
                          bool full = true) {
  LK_CHECK(off.dim() == 1 && off.size(0) >= 1, op, "`", name, "` must be a 1-D tensor [n + 1]");
  LK_CHECK(off.scalar_type() == at::kLong, op, "`", name, "` must have dtype int64, got ",
           off.scalar_type());
  const int64_t* o = off.data_ptr<int64_t>();
  const int64_t n = off.size(0) - 1;
  LK_CHECK(o[0] == 0 && o[n] == total, op, "`", name, "` must start at 0 and end at ", total,
           ", got ", o[0], " ... ", o[n]);
  if (!full) return;
  for (int64_t i = 0; i < n; ++i)
    LK_CHECK(o[i + 1] >= o[i], op, "`", name, "` must be non-decreasing at ", i + 1);
}

// The packed-documents offsets o [nd + 1] of an op's `doc_offsets`: o[0] == 0 and
// non-decreasing (the caller checks the last entry against its own total).
inline void check_doc_offsets_start_and_order(const int64_t* o, int64_t nd, const char* op) {
  LK_CHECK(o[0] == 0, op, "`doc_offsets[0]` must be 0, got ", o[0]);
  for (int64_t i = 0; i < nd; ++i)
    LK_CHECK(o[i + 1] >= o[i], op, "`doc_offsets` must be non-decreasing, but doc_offsets[", i + 1,
             "] = ", o[i + 1], " < doc_offsets[", i, "] = ", o[i]);
}

// The residual codec's bit width: 1, 2, 4 or 8, and whole bytes per row of dim values.
inline void check_nbits(int64_t nbits, int64_t dim, const char* op) {
  LK_CHECK(nbits == 1 || nbits == 2 || nbits == 4 || nbits == 8, op,
           "`nbits` must be 1, 2, 4 or 8, got ", nbits);
  LK_CHECK(dim * nbits % 8 == 0, op, "dim * nbits must be a multiple of 8 (whole bytes per row), got dim ",
           dim, " with nbits ", nbits);
}

// One decompression weight per bucket (call after check_nbits).
inline void check_bucket_weights(const at::Tensor& w, int64_t nbits, const char* op) {
  LK_CHECK(w.dim() == 1 && w.size(0) == (int64_t(1) << nbits), op,
           "`bucket_weights` must be a 1-D tensor of 2^nbits = ", (int64_t(1) << nbits),
           " values, got shape ", w.sizes());
}

// The layout the PLAID CPU kernels read query-centroid `scores` [nq, lq, k] in: token-major (contiguous, token i's
// scores one row of k) or code-major (stride(1) == 1: centroid c's lq scores adjacent, at
// stride(2) from the next centroid's, as centroid_scores lays them out on the CPU), read in
// place; any other strides are copied to token-major.
struct ScoreLayout {
  at::Tensor s;
  bool code_major = false;
  int64_t sq = 0, si = 0, sc = 0;  // element strides of query, token, centroid
};

inline ScoreLayout score_layout(const at::Tensor& scores) {
  ScoreLayout l;
  if (!scores.is_contiguous() && scores.stride(1) == 1 && scores.size(1) > 1) {
    l.s = scores;
    l.code_major = true;
  } else {
    l.s = scores.contiguous();
  }
  l.sq = l.s.stride(0);
  l.si = l.s.stride(1);
  l.sc = l.s.stride(2);
  return l;
}

// The inputs the PLAID final-stage scorers share (decompress_maxsim, lut_maxsim): queries
// float32 [nq, lq, dim], optional bool query_mask [nq, lq], codes int32 [T], packed uint8
// [T, dim * nbits / 8], doc_offsets (CSR over T), bucket_weights [2^nbits], candidates int64
// [nq, nc] holding document ids in [-1, n_docs). All on the CPU. Returns the contiguous
// offsets, candidates and query mask (undefined when there is none).
struct ScorerInputs {
  at::Tensor offsets, candidates, query_mask;
};

inline ScorerInputs check_scorer_inputs(const char* op, const at::Tensor& queries,
                                        const std::optional<at::Tensor>& query_mask, const at::Tensor& codes,
                                        const at::Tensor& packed, const at::Tensor& doc_offsets,
                                        const at::Tensor& bucket_weights, int64_t nbits,
                                        const at::Tensor& candidates, bool validate) {
  LK_CHECK_DIM(queries, 3, op, "queries", "[n_queries, query_len, dim]");
  LK_CHECK_DIM(packed, 2, op, "packed", "[total_tokens, dim * nbits / 8]");
  LK_CHECK_DIM(codes, 1, op, "codes", "[total_tokens]");
  LK_CHECK_DIM(doc_offsets, 1, op, "doc_offsets", "[n_docs + 1]");
  LK_CHECK_DIM(candidates, 2, op, "candidates", "[n_queries, n_candidates]");
  for (const at::Tensor* t : {&queries, &codes, &packed, &doc_offsets, &bucket_weights, &candidates})
    LK_CHECK(t->device().is_cpu(), op, "all inputs must be CPU tensors here, got ", t->device());
  LK_CHECK_DTYPE(queries, at::kFloat, op, "queries");
  LK_CHECK_DTYPE(codes, at::kInt, op, "codes");
  LK_CHECK_DTYPE(packed, at::kByte, op, "packed");
  LK_CHECK_DTYPE(doc_offsets, at::kLong, op, "doc_offsets");
  LK_CHECK_DTYPE(candidates, at::kLong, op, "candidates");
  const int64_t nq = queries.size(0), lq = queries.size(1), dim = queries.size(2);
  const int64_t T = codes.size(0), nd = doc_offsets.size(0) - 1;
  check_nbits(nbits, dim, op);
  LK_CHECK(packed.size(0) == T && packed.size(1) == dim * nbits / 8, op, "`packed` must have shape [", T, ", ",
           dim * nbits / 8, "] (one row of dim * nbits / 8 bytes per code), got ", packed.sizes());
  check_bucket_weights(bucket_weights, nbits, op);
  LK_CHECK(candidates.size(0) == nq, op, "`candidates` must have n_queries = ", nq, " rows, got ",
           candidates.size(0));
  ScorerInputs in;
  in.offsets = doc_offsets.contiguous();
  check_offsets(in.offsets, T, op, "doc_offsets", validate);
  if (query_mask.has_value()) {
    LK_CHECK(query_mask->dim() == 2 && query_mask->size(0) == nq && query_mask->size(1) == lq, op,
             "`query_mask` must have shape [", nq, ", ", lq, "], got ", query_mask->sizes());
    LK_CHECK_DTYPE(*query_mask, at::kBool, op, "query_mask");
    in.query_mask = query_mask->contiguous();
  }
  in.candidates = candidates.contiguous();
  const int64_t nc = in.candidates.size(1);
  const int64_t* ca = in.candidates.data_ptr<int64_t>();
  for (int64_t i = 0; i < nq * nc; ++i)
    LK_CHECK(ca[i] >= -1 && ca[i] < nd, op, "`candidates` must hold document ids in [0, ", nd,
             ") or -1 for none; candidates[", i / nc, ", ", i % nc, "] = ", ca[i]);
  return in;
}

// After a scoring pass: a stored code outside [0, k) (bad_token >= 0: its position) and, for
// a non-finite score, NaN/Inf in the unmasked queries; otherwise returns so the caller names
// its own remaining inputs.
inline void report_scorer_errors(const char* op, int64_t bad_token, const int32_t* codes, int64_t k, bool finite,
                                 const at::Tensor& queries, const at::Tensor& query_mask) {
  LK_CHECK(bad_token < 0, op, "`codes` must hold centroid ids in [0, ", k, "); codes[", bad_token, "] = ",
           bad_token < 0 ? 0 : codes[bad_token]);
  if (finite) return;
  at::Tensor qq = query_mask.defined() ? queries.index({query_mask}) : queries;
  LK_CHECK(at::isfinite(qq).all().item<bool>(), op, "`queries` contains NaN or Inf (in an unmasked token)");
}

// The core's element type of a float tensor: float32, float16, bfloat16, and float64 where
// the op takes it (allow_f64); otherwise an error naming the argument.
inline lateint::DType dtype_of(const at::Tensor& t, const char* op, const char* name, bool allow_f64 = false) {
  switch (t.scalar_type()) {
    case at::kFloat: return lateint::DType::F32;
    case at::kHalf: return lateint::DType::F16;
    case at::kBFloat16: return lateint::DType::BF16;
    case at::kDouble:
      if (allow_f64) return lateint::DType::F64;
      break;
    default: break;
  }
  TORCH_CHECK(false, op, ": `", name, "` must be float32, float16, bfloat16", allow_f64 ? " or float64" : "",
              ", got ", t.scalar_type());
}
