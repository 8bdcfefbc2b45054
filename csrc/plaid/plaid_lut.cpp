// Compressed-domain scoring through per-query lookup tables; see plaid_core.h.
//
// Layout choice: the table is indexed [byte position][byte value][query token], so scoring
// one stored byte against all query tokens is LQ / 16 contiguous vector loads and adds (not
// one scalar lookup per query token): a token of row_bytes bytes costs row_bytes * LQ / 16
// vector adds, against dim * LQ / 16 FMAs (plus the decoding and normalization) when the
// token is decompressed first. The table is row_bytes * 256 * LQ floats: 1 MB at dim 128,
// nbits 2, 32 query tokens (2 MB at nbits 4), built once per query in dim * 256 * LQ FMAs.
#include "common/isa.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "plaid_core.h"

namespace lateint {

namespace {

template <int PB>
inline __attribute__((always_inline)) void build_rows(const float* __restrict qt, int64_t LQ, int64_t row_bytes,
                                                      const float* __restrict table, float* __restrict lut) {
  for (int64_t b = 0; b < row_bytes; ++b) {
    const float* __restrict qb = qt + b * PB * LQ;  // the PB dims this byte holds, [PB][LQ]
    for (int v = 0; v < 256; ++v) {
      float* __restrict row = lut + (b * 256 + v) * LQ;
      const float* __restrict w = table + v * PB;
      for (int64_t i = 0; i < LQ; ++i) {
        float s = 0.f;
        for (int u = 0; u < PB; ++u) s += w[u] * qb[u * LQ + i];
        row[i] = s;
      }
    }
  }
}

LATEINT_MULTIVERSION(::lateint::Family::Plaid, void, build_dispatch,
                     (const float* qt, int64_t LQ, int64_t row_bytes, const float* table, int nbits, float* lut),
                     (qt, LQ, row_bytes, table, nbits, lut), {
  switch (nbits) {
    case 1: return build_rows<8>(qt, LQ, row_bytes, table, lut);
    case 2: return build_rows<4>(qt, LQ, row_bytes, table, lut);
    case 4: return build_rows<2>(qt, LQ, row_bytes, table, lut);
    default: return build_rows<1>(qt, LQ, row_bytes, table, lut);
  }
})

// max that keeps a NaN once it appears (std::max drops a NaN in its second operand), so a
// NaN in the inputs reaches the score and the binding reports it
inline float nan_max(float m, float a) { return (a > m || a != a) ? a : m; }

// acc[i] starts at the centroid score (a row of the transposed scores, [k][LQ]), then adds
// one table row per stored byte, two bytes at a time into two accumulators (the adds are a
// dependency chain otherwise); NV is LQ / 16 when it is small and known (the common query
// lengths, accumulators in registers), 0 for any multiple of 16.
template <int NV>
inline __attribute__((always_inline)) float score_doc(const float* __restrict lut, const float* __restrict scores_t,
                                                      const uint8_t* qmask, int64_t lq, int64_t LQ_rt,
                                                      const int32_t* __restrict codes,
                                                      const uint8_t* __restrict packed, int64_t row_bytes, int64_t n,
                                                      float* __restrict work) {
  if (n == 0) return 0.f;
  float s = 0.f;
  if constexpr (NV > 0) {
    constexpr int64_t L = NV * 16;
    float mx[L], a0[L], a1[L];
    for (int64_t i = 0; i < L; ++i) mx[i] = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < n; ++t) {
      const float* __restrict st = scores_t + (int64_t)codes[t] * L;
      const uint8_t* __restrict p = packed + t * row_bytes;
      for (int64_t i = 0; i < L; ++i) {
        a0[i] = st[i];
        a1[i] = 0.f;
      }
      int64_t b = 0;
      for (; b + 2 <= row_bytes; b += 2) {
        const float* __restrict r0 = lut + (b * 256 + p[b]) * L;
        const float* __restrict r1 = lut + ((b + 1) * 256 + p[b + 1]) * L;
        for (int64_t i = 0; i < L; ++i) {
          a0[i] += r0[i];
          a1[i] += r1[i];
        }
      }
      for (; b < row_bytes; ++b) {
        const float* __restrict r0 = lut + (b * 256 + p[b]) * L;
        for (int64_t i = 0; i < L; ++i) a0[i] += r0[i];
      }
      for (int64_t i = 0; i < L; ++i) mx[i] = nan_max(mx[i], a0[i] + a1[i]);
    }
    for (int64_t i = 0; i < lq; ++i)
      if (!qmask || qmask[i]) s += mx[i];
  } else {
    const int64_t L = LQ_rt;
    float* __restrict mx = work;
    float* __restrict acc = work + L;
    for (int64_t i = 0; i < L; ++i) mx[i] = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < n; ++t) {
      const float* __restrict st = scores_t + (int64_t)codes[t] * L;
      const uint8_t* __restrict p = packed + t * row_bytes;
      for (int64_t i = 0; i < L; ++i) acc[i] = st[i];
      for (int64_t b = 0; b < row_bytes; ++b) {
        const float* __restrict r0 = lut + (b * 256 + p[b]) * L;
        for (int64_t i = 0; i < L; ++i) acc[i] += r0[i];
      }
      for (int64_t i = 0; i < L; ++i) mx[i] = nan_max(mx[i], acc[i]);
    }
    for (int64_t i = 0; i < lq; ++i)
      if (!qmask || qmask[i]) s += mx[i];
  }
  return s;
}

LATEINT_MULTIVERSION(::lateint::Family::Plaid, float, score_dispatch,
                     (const float* lut, const float* scores_t, const uint8_t* qmask, int64_t lq, int64_t LQ, const int32_t* codes, const uint8_t* packed, int64_t row_bytes, int64_t n, float* work),
                     (lut, scores_t, qmask, lq, LQ, codes, packed, row_bytes, n, work), {
  switch (LQ) {
    case 16: return score_doc<1>(lut, scores_t, qmask, lq, LQ, codes, packed, row_bytes, n, work);
    case 32: return score_doc<2>(lut, scores_t, qmask, lq, LQ, codes, packed, row_bytes, n, work);
    case 48: return score_doc<3>(lut, scores_t, qmask, lq, LQ, codes, packed, row_bytes, n, work);
    case 64: return score_doc<4>(lut, scores_t, qmask, lq, LQ, codes, packed, row_bytes, n, work);
    default: return score_doc<0>(lut, scores_t, qmask, lq, LQ, codes, packed, row_bytes, n, work);
  }
})

}  // namespace

void lut_build(const float* q, const uint8_t* qmask, int64_t lq, int64_t LQ, int64_t dim, const float* byte_table,
               int nbits, float* lut) {
  // q transposed to [dim][LQ], masked and padding tokens zero, so every table row is a
  // contiguous run of LQ floats
  std::vector<float> qt((size_t)(dim * LQ), 0.f);
  for (int64_t i = 0; i < lq; ++i)
    if (!qmask || qmask[i])
      for (int64_t j = 0; j < dim; ++j) qt[j * LQ + i] = q[i * dim + j];
  build_dispatch(qt.data(), LQ, dim * nbits / 8, byte_table, nbits, lut);
}

void lut_scores_transpose(const float* scores, int64_t si, int64_t sc, int64_t lq, int64_t LQ, int64_t k,
                          float* scores_t) {
  for (int64_t c = 0; c < k; ++c)
    for (int64_t i = lq; i < LQ; ++i) scores_t[c * LQ + i] = 0.f;
  if (si == 1) {  // code-major: row copies
    for (int64_t c = 0; c < k; ++c) std::copy(scores + c * sc, scores + c * sc + lq, scores_t + c * LQ);
    return;
  }
  for (int64_t i = 0; i < lq; ++i)
    for (int64_t c = 0; c < k; ++c) scores_t[c * LQ + i] = scores[i * si + c * sc];
}

float lut_score_doc(const float* lut, const float* scores_t, const uint8_t* qmask, int64_t lq, int64_t LQ,
                    const int32_t* codes, const uint8_t* packed, int64_t row_bytes, int64_t n, float* work) {
  return score_dispatch(lut, scores_t, qmask, lq, LQ, codes, packed, row_bytes, n, work);
}

}  // namespace lateint
