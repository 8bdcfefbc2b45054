// CPU binding of decompress_maxsim: PLAID's final stage without materializing the
// decompressed corpus. Each distinct candidate document is decompressed once per call into
// a per-thread buffer (csrc/codec/codec_core, the same arithmetic as
// decompress_residuals) and scored at once by the MaxSim micro-kernels (csrc/maxsim/
// maxsim_core, the same arithmetic as maxsim_candidates) for every query that lists it, so
// the result is bit-identical to decompress_residuals + maxsim_candidates on the gathered
// documents, without their [n_tokens, dim] float32 intermediate.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "maxsim/maxsim_core.h"
#include "codec/codec_core.h"

namespace {

at::Tensor decompress_maxsim_cpu(const at::Tensor& queries, const std::optional<at::Tensor>& query_mask,
                                 const at::Tensor& codes, const at::Tensor& packed,
                                 const at::Tensor& doc_offsets, const at::Tensor& centroids,
                                 const at::Tensor& bucket_weights, int64_t nbits,
                                 const at::Tensor& candidates, bool validate) {
  const char* op = "decompress_maxsim";
  const ScorerInputs in =
      check_scorer_inputs(op, queries, query_mask, codes, packed, doc_offsets, bucket_weights, nbits, candidates, validate);
  LK_CHECK_DIM(centroids, 2, op, "centroids", "[k, dim]");
  LK_CHECK(centroids.device().is_cpu(), op, "all inputs must be CPU tensors here, got ", centroids.device());
  LK_CHECK_DTYPE(centroids, at::kFloat, op, "centroids");
  const int64_t nq = queries.size(0), lq = queries.size(1), dim = queries.size(2);
  const int64_t k = centroids.size(0);
  LK_CHECK(centroids.size(1) == dim, op, "`centroids` has dim ", centroids.size(1), " but `queries` has dim ", dim);
  const at::Tensor &off = in.offsets, &qm = in.query_mask, &cand = in.candidates;
  const int64_t nc = cand.size(1);
  const int64_t* ca = cand.data_ptr<int64_t>();
  // (document, output slot) pairs, grouped by document: each document is decompressed once.
  std::vector<std::pair<int64_t, int64_t>> pairs;
  pairs.reserve(nq * nc);
  for (int64_t i = 0; i < nq * nc; ++i)
    if (ca[i] >= 0) pairs.emplace_back(ca[i], i);
  std::sort(pairs.begin(), pairs.end());
  std::vector<int64_t> starts;  // first pair of each distinct document
  for (int64_t i = 0; i < (int64_t)pairs.size(); ++i)
    if (i == 0 || pairs[i].first != pairs[i - 1].first) starts.push_back(i);
  starts.push_back((int64_t)pairs.size());
  const int64_t ndist = (int64_t)starts.size() - 1;

  at::Tensor out = at::full({nq, nc}, -std::numeric_limits<float>::infinity(), queries.options());
  if (ndist == 0 || nq == 0) return out;
  const at::Tensor q = queries.contiguous(), cc = centroids.contiguous(), cd = codes.contiguous();
  const at::Tensor pk = packed.contiguous();
  const at::Tensor w = bucket_weights.to(at::kFloat).contiguous();
  std::vector<float> table(256 * 8 / nbits);
  lateint::residual_byte_table(w.data_ptr<float>(), (int)nbits, table.data());

  lateint::MaxSimProblem p;  // the queries; documents are set per decompressed document
  p.nq = nq;
  p.lq = lq;
  p.dim = dim;
  p.queries = q.data_ptr<float>();
  p.query_mask = qm.defined() ? (const uint8_t*)qm.data_ptr<bool>() : nullptr;
  p.dtype = lateint::DType::F32;
  p.mode = lateint::MaskMode::Ignore;
  lateint::PackedQueries pq;
  lateint::pack_queries(p, lateint::isa_for(lateint::Family::Plaid), &pq);

  const int64_t* o = off.data_ptr<int64_t>();
  const int32_t* cp = cd.data_ptr<int32_t>();
  const int64_t row_bytes = dim * nbits / 8;
  float* res = out.data_ptr<float>();
  std::atomic<int64_t> bad_code{-1};
  std::atomic<bool> finite{true};
  at::parallel_for(0, ndist, 1, [&](int64_t b, int64_t e) {
    std::vector<float> buf, score(nq);
    for (int64_t u = b; u < e; ++u) {
      const int64_t d = pairs[starts[u]].first, t0 = o[d], n = o[d + 1] - t0;
      for (int64_t t = t0; t < t0 + n; ++t)
        if (cp[t] < 0 || cp[t] >= k) bad_code = t;
      if (bad_code >= 0) return;
      buf.resize(std::max<int64_t>(n, 1) * dim);
      lateint::decompress_residuals_range(cp + t0, pk.data_ptr<uint8_t>() + t0 * row_bytes, cc.data_ptr<float>(),
                                          table.data(), (int)nbits, dim, 0, n, buf.data());
      lateint::MaxSimProblem pd = p;
      const int64_t doc_off[2] = {0, n};
      pd.docs = buf.data();
      pd.offsets = doc_off;
      pd.nd = 1;
      for (int64_t i = starts[u]; i < starts[u + 1]; ++i) {
        const int64_t slot = pairs[i].second, qi = slot / nc;
        if (!lateint::maxsim_forward_range(pd, pq, qi, qi + 1, 0, 1, score.data(), nullptr)) finite = false;
        res[slot] = score[qi];
      }
    }
  });
  report_scorer_errors(op, bad_code.load(), cp, k, finite, q, qm);
  LK_CHECK(finite, op, "`centroids` or `bucket_weights` contains NaN or Inf");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lateint_kernels, CPU, m) { m.impl("decompress_maxsim", &decompress_maxsim_cpu); }
