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

bool ivf_candidates_query(const float* scores, const uint8_t* qmask, int64_t lq, int64_t k,
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
    if (m <= 16) {
      // One scan keeping the m best (score descending, lower index first on ties: a later
      // centroid must score strictly higher to displace one), as partial_sort would pick.
      int32_t top[16];
      int64_t have = 0;
      for (int64_t c = 0; c < k; ++c) {
        if (have == m && !(s[c] > s[top[m - 1]])) continue;
        int64_t j = have < m ? have++ : m - 1;
        while (j > 0 && s[c] > s[top[j - 1]]) {
          top[j] = top[j - 1];
          --j;
        }
        top[j] = (int32_t)c;
      }
      for (int64_t j = 0; j < have; ++j) cell[top[j]] = 1;
      continue;
    }
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
      if (d < 0 || d >= nd) return false;
      if (!(*seen)[d]) {
        (*seen)[d] = 1;
        out->push_back(d);
      }
    }
  }
  std::sort(out->begin(), out->end());
  return true;
}

LATEINT_PLAID_CLONES void approx_table_rows(const float* scores, const int64_t* rows, int64_t l2, int64_t k,
                                            int64_t c0, int64_t c1, double threshold, float* table) {
  constexpr int64_t B = 64;
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> buf(std::max<int64_t>(l2, 1) * B);
  for (int64_t cb = c0; cb < c1; cb += B) {
    const int64_t n = std::min(B, c1 - cb);
    float mx[B];
    for (int64_t j = 0; j < B; ++j) mx[j] = ninf;
    if (n == B) {  // the common case, fixed width so that it vectorizes
      for (int64_t r = 0; r < l2; ++r) {
        const float* src = scores + rows[r] * k + cb;
        float* b = buf.data() + r * B;
        for (int64_t j = 0; j < B; ++j) {
          b[j] = src[j];
          mx[j] = src[j] > mx[j] ? src[j] : mx[j];
        }
      }
    } else {
      for (int64_t r = 0; r < l2; ++r) {
        const float* src = scores + rows[r] * k + cb;
        for (int64_t j = 0; j < n; ++j) {
          buf[r * B + j] = src[j];
          mx[j] = src[j] > mx[j] ? src[j] : mx[j];
        }
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      float* dst = table + (cb - c0 + j) * l2;
      if (l2 > 0 && mx[j] >= threshold) {
        for (int64_t r = 0; r < l2; ++r) dst[r] = buf[r * B + j];
      } else {
        std::fill(dst, dst + l2, ninf);
      }
    }
  }
}

bool approx_scores_query(const float* scores_t, int64_t lq, int64_t k, const int32_t* codes,
                         const int64_t* doc_offsets, const int64_t* cand, int64_t ncand, float* out) {
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> best(std::max<int64_t>(lq, 1));
  for (int64_t c = 0; c < ncand; ++c) {
    const int64_t d = cand[c];
    if (d < 0) {
      out[c] = ninf;
      continue;
    }
    std::fill(best.begin(), best.end(), ninf);
    // Pruned centroids have -inf rows: no branch on the pruning (it mispredicted), and
    // max with -inf leaves `best` as it was, which is what skipping them did.
    const int64_t t1 = doc_offsets[d + 1];
    for (int64_t t = doc_offsets[d]; t < t1; ++t) {
      // the rows are scattered over a table of k * lq floats (MBs at large k): fetch ahead
      if (t + 8 < t1) {
        const int32_t ahead = codes[t + 8];
        if ((uint64_t)(int64_t)ahead < (uint64_t)k)
          for (int64_t o = 0; o < lq; o += 16) __builtin_prefetch(scores_t + (int64_t)ahead * lq + o);
      }
      const int32_t code = codes[t];
      if ((uint64_t)(int64_t)code >= (uint64_t)k) return false;
      max_into(best.data(), scores_t + (int64_t)code * lq, lq);
    }
    float s = 0.f;
    for (int64_t i = 0; i < lq; ++i) s += best[i] == ninf ? 0.f : best[i];
    out[c] = s;
  }
  return true;
}

}  // namespace lateint
