// PLAID centroid interaction cores; see plaid_core.h.
#include "plaid_core.h"

#include "common/isa.h"

#include <algorithm>
#include <limits>
#include <numeric>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#include <immintrin.h>
#endif

namespace lateint {

namespace {

LATEINT_MULTIVERSION(::lateint::Family::Plaid, void, max_into,
                     (float* __restrict best, const float* __restrict row, int64_t n), (best, row, n), {
  for (int64_t i = 0; i < n; ++i) best[i] = row[i] > best[i] ? row[i] : best[i];
})

// The m <= 16 best centroids of one query token: one scan keeping them (score descending,
// lower index first on ties: a later centroid must score strictly higher to displace one),
// as partial_sort would pick. Centroid c's score is s[c * st]. Returns how many
// (min(m, k)); top[0] is the best.
inline void top_insert(const float* s, int64_t st, int64_t c, int64_t m, int64_t* have, int32_t* top) {
  if (*have == m && !(s[c * st] > s[top[m - 1] * st])) return;
  int64_t j = *have < m ? (*have)++ : m - 1;
  while (j > 0 && s[c * st] > s[top[j - 1] * st]) {
    top[j] = top[j - 1];
    --j;
  }
  top[j] = (int32_t)c;
}

// Whether one of row[i] beats thr[i] (the early-out test of the code-major cell scan).
LATEINT_MULTIVERSION(::lateint::Family::Plaid, bool, row_beats,
                     (const float* __restrict row, const float* __restrict thr, int64_t n), (row, thr, n), {
  uint32_t any = 0;
  for (int64_t i = 0; i < n; ++i) any |= (uint32_t)(row[i] > thr[i]);
  return any != 0;
})

// The m <= 16 best cells of every unmasked token of code-major scores (centroid c's row of
// lq scores at s + c * sc), marked in cell: the scan top_insert does per token, run over
// the rows once. Once a token holds m cells, a row can only change its list when it beats
// the token's m-th best score, so a row beating none of them is skipped with one test.
void cells_code_major(const float* s, int64_t sc, const uint8_t* qmask, int64_t lq, int64_t k, int64_t m,
                      uint8_t* cell) {
  std::vector<int32_t> top((size_t)std::max<int64_t>(lq, 1) * 16);
  std::vector<int64_t> have((size_t)std::max<int64_t>(lq, 1), 0);
  std::vector<float> thr((size_t)std::max<int64_t>(lq, 1), std::numeric_limits<float>::infinity());
  const int64_t fill = std::min(m, k);  // every row is taken while a list is short
  for (int64_t c = 0; c < fill; ++c)
    for (int64_t i = 0; i < lq; ++i)
      if (!qmask || qmask[i]) top_insert(s + i, sc, c, m, &have[i], &top[i * 16]);
  if (fill == m)
    for (int64_t i = 0; i < lq; ++i)
      if (!qmask || qmask[i]) thr[i] = s[top[i * 16 + m - 1] * sc + i];
  for (int64_t c = fill; c < k; ++c) {
    const float* row = s + c * sc;
    if (!row_beats(row, thr.data(), lq)) continue;
    for (int64_t i = 0; i < lq; ++i) {
      if (!(row[i] > thr[i])) continue;  // masked tokens: thr +inf
      top_insert(s + i, sc, c, m, &have[i], &top[i * 16]);
      thr[i] = s[top[i * 16 + m - 1] * sc + i];
    }
  }
  for (int64_t i = 0; i < lq; ++i)
    if (!qmask || qmask[i])
      for (int64_t j = 0; j < have[i]; ++j) cell[top[i * 16 + j]] = 1;
}

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
// The same scan, 16 scores at a time: a block none of whose scores beats the current m-th
// best (the common case once the list is full) is skipped with one compare.
__attribute__((target("avx512f"))) int64_t top_cells_avx512(const float* s, int64_t k, int64_t m, int32_t* top) {
  int64_t have = 0, c = 0;
  for (; c + 16 <= k; c += 16) {
    if (have == m) {
      const __mmask16 up = _mm512_cmp_ps_mask(_mm512_loadu_ps(s + c), _mm512_set1_ps(s[top[m - 1]]), _CMP_GT_OQ);
      if (!up) continue;
    }
    for (int64_t l = 0; l < 16; ++l) top_insert(s, 1, c + l, m, &have, top);
  }
  for (; c < k; ++c) top_insert(s, 1, c, m, &have, top);
  return have;
}
#endif

int64_t top_cells(const float* s, int64_t k, int64_t m, int32_t* top) {
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
  if ((int)isa_for(Family::Plaid) >= (int)Isa::Avx512) return top_cells_avx512(s, k, m, top);  // capped at the CPU's
#endif
  int64_t have = 0;
  for (int64_t c = 0; c < k; ++c) top_insert(s, 1, c, m, &have, top);
  return have;
}

}  // namespace

bool ivf_candidates_query(const float* scores, int64_t si, int64_t sc, const uint8_t* qmask, int64_t lq, int64_t k,
                          const int64_t* ivf_offsets, const int64_t* ivf_docs, int64_t nd,
                          int64_t ncells, std::vector<int64_t>* out, std::vector<uint8_t>* seen,
                          std::vector<int32_t>* order) {
  out->clear();
  seen->assign(std::max(nd, k), 0);
  order->resize(k);
  std::vector<uint8_t> cell(k, 0);
  const int64_t m = std::min(ncells, k);
  if (sc != 1 && m <= 16) {
    cells_code_major(scores, sc, qmask, lq, k, m, cell.data());
  } else {
    std::vector<float> column(sc != 1 ? k : 0);
    for (int64_t i = 0; i < lq; ++i) {
      if (qmask && !qmask[i]) continue;
      const float* s = scores + i * si;
      if (sc != 1) {  // one token's scores gathered from the code-major rows
        for (int64_t c = 0; c < k; ++c) column[c] = s[c * sc];
        s = column.data();
      }
      if (m <= 16) {
        int32_t top[16];
        const int64_t have = top_cells(s, k, m, top);
        for (int64_t j = 0; j < have; ++j) cell[top[j]] = 1;
        continue;
      }
      std::iota(order->begin(), order->end(), 0);
      std::partial_sort(order->begin(), order->begin() + m, order->end(), [&](int32_t a, int32_t b) {
        return s[a] > s[b] || (s[a] == s[b] && a < b);
      });
      for (int64_t j = 0; j < m; ++j) cell[(*order)[j]] = 1;
    }
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

namespace {

// Centroids [cb, cb + n) of the table, any n <= 64 (scalar; the tail of k, or no AVX-512).
bool table_block_generic(const float* scores, const int64_t* rows, int64_t l2, int64_t stride, int64_t k,
                         int64_t cb, int64_t n, double threshold, float* dst0) {
  constexpr int64_t B = 64;
  const float ninf = -std::numeric_limits<float>::infinity();
  float mx[B];
  uint32_t nan = 0;
  for (int64_t j = 0; j < n; ++j) mx[j] = ninf;
  for (int64_t r = 0; r < l2; ++r) {
    const float* src = scores + rows[r] * k + cb;
    for (int64_t j = 0; j < n; ++j) {
      nan |= (uint32_t)(src[j] != src[j]);
      mx[j] = src[j] > mx[j] ? src[j] : mx[j];
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    float* dst = dst0 + j * stride;
    if (l2 > 0 && mx[j] >= threshold) {
      for (int64_t r = 0; r < l2; ++r) dst[r] = scores[rows[r] * k + cb + j];
      std::fill(dst + l2, dst + stride, ninf);
    } else {
      std::fill(dst, dst + stride, ninf);
    }
  }
  return nan == 0;
}

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
// 16 x 16 floats: in[i] lane j -> out[j] lane i.
__attribute__((target("avx512f"))) inline void transpose16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  __m512 u[16];  // u[4a + b], 128-bit lane L: column 4L + b of rows 4a..4a+3
  for (int a = 0; a < 4; ++a) {
    const __m512d x0 = _mm512_castps_pd(t[4 * a]), x1 = _mm512_castps_pd(t[4 * a + 1]);
    const __m512d x2 = _mm512_castps_pd(t[4 * a + 2]), x3 = _mm512_castps_pd(t[4 * a + 3]);
    u[4 * a + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(x0, x2));
    u[4 * a + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x0, x2));
    u[4 * a + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(x1, x3));
    u[4 * a + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(x1, x3));
  }
  for (int b = 0; b < 4; ++b) {
    const __m512 x0 = _mm512_shuffle_f32x4(u[b], u[4 + b], 0x44), x1 = _mm512_shuffle_f32x4(u[b], u[4 + b], 0xEE);
    const __m512 y0 = _mm512_shuffle_f32x4(u[8 + b], u[12 + b], 0x44),
                 y1 = _mm512_shuffle_f32x4(u[8 + b], u[12 + b], 0xEE);
    r[b] = _mm512_shuffle_f32x4(x0, y0, 0x88);
    r[4 + b] = _mm512_shuffle_f32x4(x0, y0, 0xDD);
    r[8 + b] = _mm512_shuffle_f32x4(x1, y1, 0x88);
    r[12 + b] = _mm512_shuffle_f32x4(x1, y1, 0xDD);
  }
}

// Blocks of 16 centroids: their maxima over the rows (one vector per row), then the rows
// transposed 16 at a time in registers (rows past l2 read as -inf), pruned centroids -inf.
__attribute__((target("avx512f"))) bool table_rows_avx512(const float* scores, const int64_t* rows, int64_t l2,
                                                          int64_t stride, int64_t k, int64_t c0, int64_t c1,
                                                          double threshold, float* table) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const __m512 NINF = _mm512_set1_ps(ninf);
  const __m512d thr = _mm512_set1_pd(threshold);
  int64_t cb = c0;
  __mmask16 nan = 0;
  for (; cb + 16 <= c1; cb += 16) {
    __m512 mx = NINF;
    for (int64_t r = 0; r < l2; ++r) {
      const __m512 s = _mm512_loadu_ps(scores + rows[r] * k + cb);
      nan |= _mm512_cmp_ps_mask(s, s, _CMP_UNORD_Q);
      mx = _mm512_max_ps(mx, s);
    }
    const __mmask8 klo = _mm512_cmp_pd_mask(_mm512_cvtps_pd(_mm512_castps512_ps256(mx)), thr, _CMP_GE_OQ);
    const __mmask8 khi = _mm512_cmp_pd_mask(
        _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(mx), 1))), thr, _CMP_GE_OQ);
    const unsigned keep = l2 > 0 ? ((unsigned)klo | ((unsigned)khi << 8)) : 0u;
    float* dst = table + (cb - c0) * stride;
    for (int64_t rg = 0; rg < stride; rg += 16) {
      __m512 v[16];
      for (int i = 0; i < 16; ++i)
        v[i] = rg + i < l2 ? _mm512_loadu_ps(scores + rows[rg + i] * k + cb) : NINF;
      transpose16(v);
      for (int j = 0; j < 16; ++j) _mm512_storeu_ps(dst + j * stride + rg, (keep >> j) & 1u ? v[j] : NINF);
    }
  }
  const bool tail_ok =
      cb >= c1 || table_block_generic(scores, rows, l2, stride, k, cb, c1 - cb, threshold, table + (cb - c0) * stride);
  return nan == 0 && tail_ok;
}

#endif

}  // namespace

bool approx_table_rows(const float* scores, const int64_t* rows, int64_t l2, int64_t stride, int64_t k, int64_t c0,
                       int64_t c1, double threshold, float* table) {
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
  if (stride % 16 == 0 && (int)isa_for(Family::Plaid) >= (int)Isa::Avx512)
    return table_rows_avx512(scores, rows, l2, stride, k, c0, c1, threshold, table);
#endif
  bool ok = true;
  for (int64_t cb = c0; cb < c1; cb += 64)
    ok &= table_block_generic(scores, rows, l2, stride, k, cb, std::min<int64_t>(64, c1 - cb), threshold,
                              table + (cb - c0) * stride);
  return ok;
}

namespace {

// max over the used (use[i] != 0) entries of row[0, n), -inf if none; *nan set when one of
// them is NaN.
float used_row_max_scalar(const float* row, const uint32_t* use, int64_t n, bool* nan) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    if (!use[i]) continue;
    if (row[i] != row[i]) *nan = true;
    mx = row[i] > mx ? row[i] : mx;
  }
  return mx;
}

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target("avx2"))) float used_row_max_avx2(const float* row, const uint32_t* use, int64_t n,
                                                         bool* nan) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 mx = ninf, bad = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 on = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i*)(use + i)));
    const __m256 v = _mm256_loadu_ps(row + i);
    bad = _mm256_or_ps(bad, _mm256_and_ps(on, _mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    mx = _mm256_max_ps(_mm256_blendv_ps(ninf, v, on), mx);  // NaN lanes keep mx
  }
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
  if (_mm256_movemask_ps(bad)) *nan = true;
  const float tail = used_row_max_scalar(row + i, use + i, n - i, nan);
  const float head = _mm_cvtss_f32(m4);
  return tail > head ? tail : head;
}
#endif

}  // namespace

bool approx_keep_rows(const float* scores, int64_t sc, const uint32_t* use, int64_t lq, int64_t c0, int64_t c1,
                      double threshold, uint8_t* keep, int64_t* kept) {
  bool nan = false;
  int64_t n = 0;
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
  if ((int)isa_for(Family::Plaid) >= (int)Isa::Avx2) {
    for (int64_t c = c0; c < c1; ++c) {
      keep[c] = (double)used_row_max_avx2(scores + c * sc, use, lq, &nan) >= threshold;
      n += keep[c];
    }
    *kept = n;
    return !nan;
  }
#endif
  for (int64_t c = c0; c < c1; ++c) {
    keep[c] = (double)used_row_max_scalar(scores + c * sc, use, lq, &nan) >= threshold;
    n += keep[c];
  }
  *kept = n;
  return !nan;
}

bool approx_scores_query(const float* scores, int64_t sc, int64_t lq, int64_t k, const uint32_t* use,
                         const uint8_t* keep, bool sparse, const float* ninf_row, const int32_t* codes,
                         const int64_t* doc_offsets, const int64_t* cand, int64_t ncand, float* out) {
  sparse = sparse && keep;
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> best(std::max<int64_t>(lq, 1));
  for (int64_t c = 0; c < ncand; ++c) {
    const int64_t d = cand[c];
    if (d < 0) {
      out[c] = ninf;
      continue;
    }
    std::fill(best.begin(), best.end(), ninf);
    const int64_t t1 = doc_offsets[d + 1];
    if (sparse) {  // few centroids kept: a well-predicted branch skips the others
      for (int64_t t = doc_offsets[d]; t < t1; ++t) {
        const int32_t code = codes[t];
        if ((uint64_t)(int64_t)code >= (uint64_t)k) return false;
        if (keep[code]) max_into(best.data(), scores + (int64_t)code * sc, lq);
      }
    } else {
      for (int64_t t = doc_offsets[d]; t < t1; ++t) {
        // the rows are scattered over k * sc floats (MBs at large k): fetch ahead
        if (t + 8 < t1) {
          const int32_t ahead = codes[t + 8];
          if ((uint64_t)(int64_t)ahead < (uint64_t)k)
            for (int64_t o = 0; o < lq; o += 16) __builtin_prefetch(scores + (int64_t)ahead * sc + o);
        }
        const int32_t code = codes[t];
        if ((uint64_t)(int64_t)code >= (uint64_t)k) return false;
        // a pruned centroid reads the -inf row (a select, not a branch, which would mispredict
        // when many survive; max with -inf leaves best as it is)
        const float* row = (!keep || keep[code]) ? scores + (int64_t)code * sc : ninf_row;
        max_into(best.data(), row, lq);
      }
    }
    float s = 0.f;
    for (int64_t i = 0; i < lq; ++i)
      if (!use || use[i]) s += best[i] == ninf ? 0.f : best[i];
    out[c] = s;
  }
  return true;
}

}  // namespace lateint
