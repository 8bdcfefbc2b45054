// CPU binding of lut_maxsim: PLAID's final stage scored in the compressed domain (WARP's
// implicit decompression) through one lookup table per query; see core/plaid_core.h.
// Scores are inner products with the unnormalized reconstructions C[code] + residual
// (decompress_maxsim normalizes them, as ColBERTv2 does; WARP does not).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "plaid/plaid_core.h"
#include "codec/codec_core.h"

namespace {

at::Tensor lut_maxsim_cpu(const at::Tensor& queries, const std::optional<at::Tensor>& query_mask,
                          const at::Tensor& scores, const at::Tensor& codes, const at::Tensor& packed,
                          const at::Tensor& doc_offsets, const at::Tensor& bucket_weights, int64_t nbits,
                          const at::Tensor& candidates, bool validate) {
  const char* op = "lut_maxsim";
  const ScorerInputs in =
      check_scorer_inputs(op, queries, query_mask, codes, packed, doc_offsets, bucket_weights, nbits, candidates, validate);
  LK_CHECK_DIM(scores, 3, op, "scores", "[n_queries, query_len, n_centroids]");
  LK_CHECK(scores.device().is_cpu(), op, "all inputs must be CPU tensors here, got ", scores.device());
  LK_CHECK_DTYPE(scores, at::kFloat, op, "scores");
  const int64_t nq = queries.size(0), lq = queries.size(1), dim = queries.size(2), k = scores.size(2);
  LK_CHECK(scores.size(0) == nq && scores.size(1) == lq, op, "`scores` must be [", nq, ", ", lq,
           ", n_centroids] (the queries' centroid scores), got ", scores.sizes());
  const at::Tensor &off = in.offsets, &qm = in.query_mask, &cand = in.candidates;
  const int64_t nc = cand.size(1);
  const int64_t* ca = cand.data_ptr<int64_t>();
  at::Tensor out = at::empty({nq, nc}, queries.options());
  if (nq == 0 || nc == 0) return out;
  const at::Tensor q = queries.contiguous(), cd = codes.contiguous();
  const ScoreLayout sl = score_layout(scores);
  const at::Tensor& sc = sl.s;
  const at::Tensor pk = packed.contiguous();
  const at::Tensor w = bucket_weights.to(at::kFloat).contiguous();
  const int per_byte = 8 / (int)nbits;
  std::vector<float> table(256 * per_byte);
  lateint::residual_byte_table(w.data_ptr<float>(), (int)nbits, table.data());

  const int64_t LQ = (lq + 15) / 16 * 16;
  const int64_t row_bytes = dim * nbits / 8;
  const int64_t lut_floats = std::max<int64_t>(row_bytes * 256 * LQ, 1);
  const int64_t* o = off.data_ptr<int64_t>();
  const int32_t* cp = cd.data_ptr<int32_t>();
  const uint8_t* pp = pk.data_ptr<uint8_t>();
  const float* qp = q.data_ptr<float>();
  const float* sp = sc.data_ptr<float>();
  const uint8_t* mp = qm.defined() ? (const uint8_t*)qm.data_ptr<bool>() : nullptr;
  float* res = out.data_ptr<float>();
  // tasks: (query, block of candidates); a thread rebuilds its table only when its query changes
  const int64_t block = 64, nblk = (nc + block - 1) / block;
  std::atomic<int64_t> bad_code{-1};
  std::atomic<bool> finite{true};
  at::parallel_for(0, nq * nblk, 1, [&](int64_t b, int64_t e) {
    std::vector<float> lut((size_t)lut_floats), work((size_t)(2 * LQ)), scores_t((size_t)(k * LQ));
    int64_t built = -1;
    for (int64_t task = b; task < e; ++task) {
      const int64_t qi = task / nblk, c0 = (task % nblk) * block, c1 = std::min(nc, c0 + block);
      const uint8_t* qmask = mp ? mp + qi * lq : nullptr;
      if (built != qi) {
        lateint::lut_build(qp + qi * lq * dim, qmask, lq, LQ, dim, table.data(), (int)nbits, lut.data());
        lateint::lut_scores_transpose(sp + qi * sl.sq, sl.si, sl.sc, lq, LQ, k, scores_t.data());
        built = qi;
      }
      for (int64_t j = c0; j < c1; ++j) {
        const int64_t d = ca[qi * nc + j];
        if (d < 0) {
          res[qi * nc + j] = -std::numeric_limits<float>::infinity();
          continue;
        }
        const int64_t t0 = o[d], n = o[d + 1] - t0;
        for (int64_t t = t0; t < t0 + n; ++t)
          if (cp[t] < 0 || cp[t] >= k) bad_code = t;
        if (bad_code >= 0) return;
        const float s = lateint::lut_score_doc(lut.data(), scores_t.data(), qmask, lq, LQ, cp + t0,
                                               pp + t0 * row_bytes, row_bytes, n, work.data());
        if (!std::isfinite(s)) finite = false;
        res[qi * nc + j] = s;
      }
    }
  });
  report_scorer_errors(op, bad_code.load(), cp, k, finite, q, qm);
  if (!finite) {
    at::Tensor ss = qm.defined() ? sc.index({qm}) : sc;
    LK_CHECK(at::isfinite(ss).all().item<bool>(), op, "`scores` contains NaN or Inf (in an unmasked token's row)");
    LK_CHECK(false, op, "`bucket_weights` contains NaN or Inf");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lateint_kernels, CPU, m) { m.impl("lut_maxsim", &lut_maxsim_cpu); }
