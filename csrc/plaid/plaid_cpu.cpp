// CPU binding of PLAID's centroid interaction ops (ivf_candidates, approx_scores): checks,
// then the torch-free cores (csrc/plaid/plaid_core) per query over at::parallel_for.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <atomic>
#include <limits>
#include <memory>
#include <vector>

#include "common/checks.h"
#include "plaid/plaid_core.h"

namespace {

void check_scores(const at::Tensor& s, const std::optional<at::Tensor>& qmask, const char* op) {
  LK_CHECK_DIM(s, 3, op, "scores", "[n_queries, query_len, n_centroids]");
  LK_CHECK_DTYPE(s, at::kFloat, op, "scores");
  LK_CHECK(s.device().is_cpu(), op, "`scores` must be a CPU tensor here, got ", s.device());
  LK_CHECK(s.size(2) >= 1, op, "`scores` must have at least one centroid");
  if (qmask.has_value()) {
    LK_CHECK(qmask->dim() == 2 && qmask->size(0) == s.size(0) && qmask->size(1) == s.size(1), op,
             "`query_mask` must have shape [", s.size(0), ", ", s.size(1), "], got ", qmask->sizes());
    LK_CHECK_DTYPE(*qmask, at::kBool, op, "query_mask");
  }
}

at::Tensor ivf_candidates_cpu(const at::Tensor& scores, const std::optional<at::Tensor>& query_mask,
                              const at::Tensor& ivf_offsets, const at::Tensor& ivf_docs,
                              int64_t n_docs, int64_t ncells, bool validate) {
  const char* op = "ivf_candidates";
  check_scores(scores, query_mask, op);
  const int64_t nq = scores.size(0), lq = scores.size(1), k = scores.size(2);
  LK_CHECK(ncells >= 1, op, "`ncells` must be >= 1, got ", ncells);
  LK_CHECK(n_docs >= 0, op, "`n_docs` must be >= 0, got ", n_docs);
  LK_CHECK(ivf_offsets.size(0) == k + 1, op, "`ivf_offsets` must hold n_centroids + 1 = ", k + 1,
           " entries, got ", ivf_offsets.size(0));
  LK_CHECK(ivf_docs.dim() == 1, op, "`ivf_docs` must be 1-D");
  LK_CHECK_DTYPE(ivf_docs, at::kLong, op, "ivf_docs");
  const at::Tensor off = ivf_offsets.contiguous(), docs = ivf_docs.contiguous();
  check_offsets(off, docs.size(0), op, "ivf_offsets", validate);
  const int64_t* dp = docs.data_ptr<int64_t>();
  const ScoreLayout sl = score_layout(scores);
  at::Tensor qm = query_mask.has_value() ? query_mask->contiguous() : at::Tensor();
  std::vector<std::vector<int64_t>> per(nq);
  std::atomic<bool> docs_ok{true};  // the lists visited are checked as they are read
  at::parallel_for(0, nq, 1, [&](int64_t b, int64_t e) {
    std::vector<uint8_t> seen;
    std::vector<int32_t> order;
    for (int64_t q = b; q < e; ++q)
      if (!lateint::ivf_candidates_query(sl.s.data_ptr<float>() + q * sl.sq, sl.si, sl.sc,
                                         qm.defined() ? (const uint8_t*)qm.data_ptr<bool>() + q * lq : nullptr,
                                         lq, k, off.data_ptr<int64_t>(), dp, n_docs, ncells, &per[q],
                                         &seen, &order))
        docs_ok = false;
  });
  if (!docs_ok)
    for (int64_t i = 0; i < docs.size(0); ++i)
      LK_CHECK(dp[i] >= 0 && dp[i] < n_docs, op, "`ivf_docs` must hold document ids in [0, ", n_docs,
               "); ivf_docs[", i, "] = ", dp[i]);
  int64_t width = 0;
  for (const auto& v : per) width = std::max<int64_t>(width, (int64_t)v.size());
  at::Tensor out = at::full({nq, width}, -1, scores.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t q = 0; q < nq; ++q) std::copy(per[q].begin(), per[q].end(), o + q * width);
  return out;
}

// Raises naming the first code out of [0, k) among the candidates' tokens.
void report_bad_codes(const char* op, const int64_t* ca, int64_t n, const at::Tensor& off, const int32_t* cp,
                      int64_t k) {
  const int64_t* o = off.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (ca[i] < 0) continue;
    for (int64_t t = o[ca[i]]; t < o[ca[i] + 1]; ++t)
      LK_CHECK(cp[t] >= 0 && cp[t] < k, op, "`codes` must hold centroid ids in [0, ", k, "); codes[", t,
               "] = ", cp[t]);
  }
}

at::Tensor approx_scores_cpu(const at::Tensor& scores, const std::optional<at::Tensor>& query_mask,
                             const at::Tensor& codes, const at::Tensor& doc_offsets,
                             const at::Tensor& candidates, double threshold, bool validate) {
  const char* op = "approx_scores";
  check_scores(scores, query_mask, op);
  LK_CHECK(!std::isnan(threshold), op, "`threshold` must be a number (-inf: no pruning), got nan");
  const int64_t nq = scores.size(0), lq = scores.size(1), k = scores.size(2);
  LK_CHECK(codes.dim() == 1, op, "`codes` must be 1-D [total_tokens]");
  LK_CHECK_DTYPE(codes, at::kInt, op, "codes");
  const at::Tensor cd = codes.contiguous(), off = doc_offsets.contiguous();
  check_offsets(off, cd.size(0), op, "doc_offsets", validate);
  const int64_t nd = off.size(0) - 1;
  const int32_t* cp = cd.data_ptr<int32_t>();
  LK_CHECK(candidates.dim() == 2 && candidates.size(0) == nq, op,
           "`candidates` must have shape [n_queries, n_candidates] with n_queries = ", nq, ", got ",
           candidates.sizes());
  LK_CHECK_DTYPE(candidates, at::kLong, op, "candidates");
  const at::Tensor cand = candidates.contiguous();
  const int64_t nc = cand.size(1);
  const int64_t* ca = cand.data_ptr<int64_t>();
  for (int64_t i = 0; i < nq * nc; ++i)
    LK_CHECK(ca[i] >= -1 && ca[i] < nd, op, "`candidates` must hold document ids in [0, ", nd,
             ") or -1; got ", ca[i]);
  at::Tensor qm = query_mask.has_value() ? query_mask->contiguous() : at::Tensor();
  at::Tensor out = at::empty({nq, nc}, scores.options());
  const ScoreLayout sl = score_layout(scores);
  if (sl.code_major) {
    // Read in place: per query, which centroids survive the pruning (a pass over the rows,
    // which also finds NaN; skipped when nothing is pruned and validate is off), then
    // (query, block of candidates) items.
    const float* sp = sl.s.data_ptr<float>();
    const bool prune = threshold != -std::numeric_limits<double>::infinity();
    std::vector<uint32_t> use((size_t)std::max<int64_t>(nq * lq, 1), 0xFFFFFFFFu);
    if (qm.defined())
      for (int64_t i = 0; i < nq * lq; ++i) use[i] = qm.data_ptr<bool>()[i] ? 0xFFFFFFFFu : 0u;
    std::vector<uint8_t> keep(prune || validate ? (size_t)(nq * k) : 0);
    const int64_t kb = 2048, nkb = (k + kb - 1) / kb;
    std::vector<int64_t> kept(keep.empty() ? 0 : (size_t)(nq * nkb), 0);
    if (!keep.empty()) {
      std::atomic<bool> finite{true};
      at::parallel_for(0, nq * nkb, 1, [&](int64_t b, int64_t e) {
        for (int64_t it = b; it < e; ++it) {
          const int64_t q = it / nkb, c0 = (it % nkb) * kb, c1 = std::min(k, c0 + kb);
          if (!lateint::approx_keep_rows(sp + q * sl.sq, sl.sc, use.data() + q * lq, lq, c0, c1, threshold,
                                         keep.data() + q * k, &kept[it]))
            finite = false;
        }
      });
      LK_CHECK(finite.load(), op, "`scores` contains NaN (in an unmasked query token; are the queries finite?)");
    }
    // per query: skip pruned centroids by a branch when fewer than 1 in 16 survive
    std::vector<uint8_t> sparse((size_t)std::max<int64_t>(nq, 1), 0);
    if (prune)
      for (int64_t q = 0; q < nq; ++q) {
        int64_t n = 0;
        for (int64_t j = 0; j < nkb; ++j) n += kept[q * nkb + j];
        sparse[q] = n * 16 < k;
      }
    const std::vector<float> ninf_row((size_t)std::max<int64_t>(lq, 1), -std::numeric_limits<float>::infinity());
    const int64_t cb = 64, nb = (nc + cb - 1) / cb;
    std::atomic<bool> codes_ok{true};
    at::parallel_for(0, nq * nb, 1, [&](int64_t b, int64_t e) {
      for (int64_t it = b; it < e; ++it) {
        const int64_t q = it / nb, c0 = (it % nb) * cb, c1 = std::min(nc, c0 + cb);
        if (!lateint::approx_scores_query(sp + q * sl.sq, sl.sc, lq, k, use.data() + q * lq,
                                             prune ? keep.data() + q * k : nullptr, sparse[q] != 0,
                                             ninf_row.data(), cp,
                                             off.data_ptr<int64_t>(), ca + q * nc + c0, c1 - c0,
                                             out.data_ptr<float>() + q * nc + c0))
          codes_ok = false;
      }
    });
    if (!codes_ok) report_bad_codes(op, ca, nq * nc, off, cp, k);
    return out;
  }
  const at::Tensor& s = sl.s;
  // Queries in chunks (bounded memory): per query, its unmasked scores transposed to
  // [k, lq'] (one centroid = one row) with the pruned centroids' rows set to -inf, built
  // in (query, block of centroids) items; then (query, block of candidates) items, so that
  // a single query still uses every thread in both passes.
  // One allocation per call, at most 16 queries and (when k * lq is large) about 16 MB, so
  // that repeated calls reuse heap memory instead of page-faulting fresh pages; not
  // zero-filled (every entry is written before it is read). Table rows are padded to a
  // multiple of 16 query tokens with -inf (which adds 0 to a score).
  const int64_t stride = (std::max<int64_t>(lq, 1) + 15) / 16 * 16;
  const int64_t row_floats = k * stride;
  const int64_t qc = std::max<int64_t>(1, std::min<int64_t>(16, (int64_t(4) << 20) / row_floats));
  const int64_t cb = 64, nb = (nc + cb - 1) / cb, kb = 2048, nkb = (k + kb - 1) / kb;
  std::unique_ptr<float[]> tables(new float[std::min(nq, qc) * row_floats]);
  std::vector<std::vector<int64_t>> rows(std::min(nq, qc));
  std::vector<int64_t> l2s(std::min(nq, qc)), strides(std::min(nq, qc));
  std::atomic<bool> codes_ok{true}, scores_ok{true};
  for (int64_t q0 = 0; q0 < nq; q0 += qc) {
    const int64_t q1 = std::min(nq, q0 + qc);
    for (int64_t q = q0; q < q1; ++q) {
      const bool* m = qm.defined() ? qm.data_ptr<bool>() + q * lq : nullptr;
      std::vector<int64_t>& r = rows[q - q0];
      r.clear();
      for (int64_t i = 0; i < lq; ++i)
        if (!m || m[i]) r.push_back(i);
      l2s[q - q0] = (int64_t)r.size();
      strides[q - q0] = (std::max<int64_t>(l2s[q - q0], 1) + 15) / 16 * 16;
    }
    at::parallel_for(0, (q1 - q0) * nkb, 1, [&](int64_t b, int64_t e) {
      for (int64_t it = b; it < e; ++it) {
        const int64_t q = q0 + it / nkb, c0 = (it % nkb) * kb, c1 = std::min(k, c0 + kb);
        const int64_t l2 = l2s[q - q0], st = strides[q - q0];
        if (!lateint::approx_table_rows(s.data_ptr<float>() + q * lq * k, rows[q - q0].data(), l2, st, k, c0, c1,
                                        threshold, tables.get() + (q - q0) * row_floats + c0 * st))
          scores_ok = false;
      }
    });
    LK_CHECK(scores_ok.load(), op, "`scores` contains NaN (in an unmasked query token; are the queries finite?)");
    at::parallel_for(0, (q1 - q0) * nb, 1, [&](int64_t b, int64_t e) {
      for (int64_t it = b; it < e; ++it) {
        const int64_t q = q0 + it / nb, c0 = (it % nb) * cb, c1 = std::min(nc, c0 + cb);
        const int64_t st = strides[q - q0];
        if (!lateint::approx_scores_query(tables.get() + (q - q0) * row_floats, st, st, k, nullptr, nullptr, false,
                                          nullptr, cp, off.data_ptr<int64_t>(), ca + q * nc + c0, c1 - c0,
                                          out.data_ptr<float>() + q * nc + c0))
          codes_ok = false;
      }
    });
  }
  if (!codes_ok) report_bad_codes(op, ca, nq * nc, off, cp, k);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lateint_kernels, CPU, m) {
  m.impl("ivf_candidates", &ivf_candidates_cpu);
  m.impl("approx_scores", &approx_scores_cpu);
}
