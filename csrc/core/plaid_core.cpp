// PLAID centroid interaction cores; see plaid_core.h.
#include "plaid_core.h"

#include <algorithm>
#include <limits>
#include <numeric>

namespace lateint {

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define LATEINT_PLAID_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LATEINT_PLAID_CLONES
#endif

namespace {

LATEINT_PLAID_CLONES void max_into(float* __restrict best, const float* __restrict row, int64_t n) {
  for (int64_t i = 0; i < n; ++i) best[i] = row[i] > best[i] ? row[i] : best[i];
}

}  // namespace

void ivf_candidates_query(const float* scores, const uint8_t* qmask, int64_t lq, int64_t k,
                          const int64_t* ivf_offsets, const int64_t* ivf_docs, int64_t nd,
                          int64_t ncells, std::vector<int64_t>* out, std::vector<uint8_t>* seen,
                          std::vector<int32_t>* order) {
  out->clear();
  seen->assign(std::max(nd, k), 0);
  order->resize(k);
  std::vector<uint8_t> cell(k, 0);
  const int64_t m = std::min(ncells, k);
  for (int64_t i = 0; i < lq; ++i) {
    if (qmask && !qmask[i]) continue;
    const float* s = scores + i * k;
    std::iota(order->begin(), order->end(), 0);
    std::partial_sort(order->begin(), order->begin() + m, order->end(), [&](int32_t a, int32_t b) {
      return s[a] > s[b] || (s[a] == s[b] && a < b);
    });
    for (int64_t j = 0; j < m; ++j) cell[(*order)[j]] = 1;
  }
  for (int64_t c = 0; c < k; ++c) {
    if (!cell[c]) continue;
    for (int64_t p = ivf_offsets[c]; p < ivf_offsets[c + 1]; ++p) {
      const int64_t d = ivf_docs[p];
      if (!(*seen)[d]) {
        (*seen)[d] = 1;
        out->push_back(d);
      }
    }
  }
  std::sort(out->begin(), out->end());
}

void approx_scores_query(const float* scores_t, int64_t lq, int64_t k, const uint8_t* keep,
                         const int32_t* codes, const int64_t* doc_offsets, const int64_t* cand,
                         int64_t ncand, float* out) {
  (void)k;
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> best(lq);
  for (int64_t c = 0; c < ncand; ++c) {
    const int64_t d = cand[c];
    if (d < 0) {
      out[c] = ninf;
      continue;
    }
    std::fill(best.begin(), best.end(), ninf);
    for (int64_t t = doc_offsets[d]; t < doc_offsets[d + 1]; ++t) {
      const int32_t code = codes[t];
      if (keep[code]) max_into(best.data(), scores_t + (int64_t)code * lq, lq);
    }
    float s = 0.f;
    for (int64_t i = 0; i < lq; ++i) s += best[i] == ninf ? 0.f : best[i];
    out[c] = s;
  }
}

}  // namespace lateint
