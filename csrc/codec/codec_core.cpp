// PLAID residual codec; see codec_core.h for the layout.
#include "codec/codec_core.h"

#include "common/isa.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#include <immintrin.h>
#endif

namespace lateint {

namespace {

// Bucket of each residual value: #{cutoffs < r} (torch.bucketize, right=False). Branch-free
// over the (at most 255) cutoffs so the loop over values vectorizes.
LATEINT_MULTIVERSION(::lateint::Family::Codec, void, buckets_row,
                     (const float* __restrict x, const float* __restrict c, const float* __restrict cut, int ncut, int64_t dim, uint8_t* __restrict b),
                     (x, c, cut, ncut, dim, b), {
  for (int64_t j = 0; j < dim; ++j) {
    const float r = x[j] - c[j];
    int v = 0;
    for (int t = 0; t < ncut; ++t) v += cut[t] < r;
    b[j] = (uint8_t)v;
  }
})

// Bits of v (nbits of them) reversed: the first emitted (least significant) bit becomes
// the most significant of the group.
inline uint32_t reverse_bits(uint32_t v, int nbits) {
  uint32_t r = 0;
  for (int t = 0; t < nbits; ++t) r |= ((v >> t) & 1u) << (nbits - 1 - t);
  return r;
}

}  // namespace

void compress_residuals_range(const float* x, const float* centroids, const int32_t* codes,
                              const float* cutoffs, int nbits, int64_t dim, int64_t r0,
                              int64_t r1, uint8_t* out) {
  const int ncut = (1 << nbits) - 1;
  const int per_byte = 8 / nbits;
  const int64_t row_bytes = dim * nbits / 8;
  uint8_t rev[256];
  for (int v = 0; v <= ncut; ++v) rev[v] = (uint8_t)reverse_bits(v, nbits);
  uint8_t b[4096];
  for (int64_t i = r0; i < r1; ++i) {
    const float* xr = x + i * dim;
    const float* cr = centroids + (int64_t)codes[i] * dim;
    uint8_t* o = out + i * row_bytes;
    for (int64_t j0 = 0; j0 < dim; j0 += 4096) {
      const int64_t nj = std::min<int64_t>(4096, dim - j0);
      buckets_row(xr + j0, cr + j0, cutoffs, ncut, nj, b);
      for (int64_t j = 0; j < nj; j += per_byte) {
        uint32_t byte = 0;
        for (int s = 0; s < per_byte; ++s) byte = (byte << nbits) | rev[b[j + s]];
        o[(j0 + j) / per_byte] = (uint8_t)byte;
      }
    }
  }
}

void residual_byte_table(const float* weights, int nbits, float* table) {
  const int per_byte = 8 / nbits;
  for (int byte = 0; byte < 256; ++byte)
    for (int s = 0; s < per_byte; ++s) {
      const uint32_t group = (byte >> (8 - nbits * (s + 1))) & ((1u << nbits) - 1);
      table[byte * per_byte + s] = weights[reverse_bits(group, nbits)];
    }
}

namespace {

// One row: o = normalize(cr + table[bytes]). PB = values per byte (8 / nbits), fixed at
// compile time so the table copies unroll. The sum of squares runs in 8 float64 lanes
// (lane j % 8 holds values j, j + 8, ...; the lanes are added pairwise at the end): the
// single running sum it replaces was one 4-cycle dependency per value and made
// decompression latency-bound.
template <int PB>
inline __attribute__((always_inline)) void decompress_rows(const int32_t* codes, const uint8_t* packed,
                                                           const float* centroids, const float* table,
                                                           int64_t dim, int64_t r0, int64_t r1, float* out) {
  const int64_t row_bytes = dim / PB;
  for (int64_t i = r0; i < r1; ++i) {
    const float* __restrict cr = centroids + (int64_t)codes[i] * dim;
    const uint8_t* __restrict p = packed + i * row_bytes;
    float* __restrict o = out + i * dim;
    for (int64_t by = 0; by < row_bytes; ++by) {
      const float* __restrict t = table + (int64_t)p[by] * PB;
      for (int s = 0; s < PB; ++s) o[by * PB + s] = cr[by * PB + s] + t[s];
    }
    double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= dim; j += 8)
      for (int l = 0; l < 8; ++l) lane[l] += (double)o[j + l] * o[j + l];
    for (int l = 0; j < dim; ++j, ++l) lane[l] += (double)o[j] * o[j];
    const double ss = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
    const float inv = (float)(1.0 / std::max(std::sqrt(ss), 1e-12));
    for (int64_t k = 0; k < dim; ++k) o[k] *= inv;
  }
}

// One clone per ISA; the row code is inlined into each, so it is vectorized for that ISA.
LATEINT_MULTIVERSION(::lateint::Family::Codec, void, decompress_dispatch,
                     (const int32_t* codes, const uint8_t* packed, const float* centroids, const float* table, int nbits, int64_t dim, int64_t r0, int64_t r1, float* out),
                     (codes, packed, centroids, table, nbits, dim, r0, r1, out), {
  switch (nbits) {
    case 1: return decompress_rows<8>(codes, packed, centroids, table, dim, r0, r1, out);
    case 2: return decompress_rows<4>(codes, packed, centroids, table, dim, r0, r1, out);
    case 4: return decompress_rows<2>(codes, packed, centroids, table, dim, r0, r1, out);
    default: return decompress_rows<1>(codes, packed, centroids, table, dim, r0, r1, out);
  }
})

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
// AVX-512 rows for nbits 1, 2, 4 (dim a multiple of 16): the 2^nbits bucket weights fit
// one register, so 16 values are one byte shuffle, one variable shift and one
// permutexvar instead of 16 table loads. Same operations per value as decompress_rows
// (float add; float64 squares fused into 8 lane sums in the same order; the same final
// combination, sqrt, reciprocal and float scaling), so the output is bit-identical to the
// avx512f clone of decompress_rows (checked by the tests against the reference and against
// the byte-table path on this machine).
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void decompress_rows_avx512(
    const int32_t* codes, const uint8_t* packed, const float* centroids, const float* table, int nbits,
    int64_t dim, int64_t r0, int64_t r1, float* out) {
  const int PB = 8 / nbits;
  const int64_t row_bytes = dim / PB;
  const int nbytes = 16 / PB;  // bytes per 16 values
  // weights by bit group g (the byte table's last value of byte g is weights[reverse(g)])
  alignas(64) float w[16] = {0};
  for (int g = 0; g < (1 << nbits); ++g) w[g] = table[g * PB + PB - 1];
  const __m512 W = _mm512_load_ps(w);
  alignas(16) uint8_t pat[16];
  alignas(64) int32_t sh[16];
  for (int j = 0; j < 16; ++j) {
    pat[j] = (uint8_t)(j / PB);
    sh[j] = 8 - nbits * (j % PB + 1);
  }
  const __m128i P = _mm_load_si128(reinterpret_cast<const __m128i*>(pat));
  const __m512i S = _mm512_load_si512(sh), M = _mm512_set1_epi32((1 << nbits) - 1);
  // Each row's sum of squares is one chain of dependent FMAs (its order is fixed, for
  // bit-identical results); four rows at a time keep four chains in flight.
  constexpr int T = 4;
  for (int64_t i0 = r0; i0 < r1; i0 += T) {
    const int nt = (int)std::min<int64_t>(T, r1 - i0);
    const float* cr[T];
    const uint8_t* p[T];
    float* o[T];
    __m512d lanes[T];
    for (int t = 0; t < T; ++t) {
      const int64_t i = i0 + std::min(t, nt - 1);  // a short group repeats its last row
      cr[t] = centroids + (int64_t)codes[i] * dim;
      p[t] = packed + i * row_bytes;
      o[t] = out + i * dim;
      lanes[t] = _mm512_setzero_pd();
    }
    for (int64_t j = 0; j < dim; j += 16) {
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        uint64_t raw = 0;
        std::memcpy(&raw, p[t] + j / PB, nbytes);
        const __m128i b = _mm_shuffle_epi8(_mm_cvtsi64_si128((long long)raw), P);
        const __m512i g = _mm512_and_si512(_mm512_srlv_epi32(_mm512_cvtepu8_epi32(b), S), M);
        const __m512 v = _mm512_add_ps(_mm512_loadu_ps(cr[t] + j), _mm512_permutexvar_ps(g, W));
        _mm512_storeu_ps(o[t] + j, v);
        const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        lanes[t] = _mm512_fmadd_pd(lo, lo, lanes[t]);
        lanes[t] = _mm512_fmadd_pd(hi, hi, lanes[t]);
      }
    }
    for (int t = 0; t < nt; ++t) {
      alignas(64) double lane[8];
      _mm512_store_pd(lane, lanes[t]);
      const double ss = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
      const float inv = (float)(1.0 / std::max(std::sqrt(ss), 1e-12));
      const __m512 iv = _mm512_set1_ps(inv);
      for (int64_t j = 0; j < dim; j += 16) _mm512_storeu_ps(o[t] + j, _mm512_mul_ps(_mm512_loadu_ps(o[t] + j), iv));
    }
  }
}

// AVX2 rows for nbits 1, 2, 4 (dim a multiple of 8): 8 values are one 32-byte (nbits 1),
// two 16-byte (nbits 2) or four 8-byte (nbits 4) loads from the byte table. Four rows at a
// time keep four sum-of-squares chains in flight, and the centroid rows of the next four
// are fetched ahead (they are scattered over the centroid table). The arithmetic is the
// byte-table path's: float add, each square exact in float64 added into lane j % 8 in
// order, the same final combination and scaling, so the bits are the same.
template <int PB>
__attribute__((target("avx2"))) inline __m256 table8_avx2(const float* table, const uint8_t* p) {
  if constexpr (PB == 8) {
    return _mm256_loadu_ps(table + (int64_t)p[0] * 8);
  } else if constexpr (PB == 4) {
    return _mm256_set_m128(_mm_loadu_ps(table + (int64_t)p[1] * 4), _mm_loadu_ps(table + (int64_t)p[0] * 4));
  } else {
    const __m128d lo = _mm_loadh_pd(_mm_load_sd((const double*)(table + (int64_t)p[0] * 2)),
                                    (const double*)(table + (int64_t)p[1] * 2));
    const __m128d hi = _mm_loadh_pd(_mm_load_sd((const double*)(table + (int64_t)p[2] * 2)),
                                    (const double*)(table + (int64_t)p[3] * 2));
    return _mm256_castpd_ps(_mm256_set_m128d(hi, lo));
  }
}

template <int PB>
__attribute__((target("avx2"))) void decompress_rows_avx2(const int32_t* codes, const uint8_t* packed,
                                                          const float* centroids, const float* table, int64_t dim,
                                                          int64_t r0, int64_t r1, float* out) {
  const int64_t row_bytes = dim / PB;
  constexpr int T = 4;
  for (int64_t i0 = r0; i0 < r1; i0 += T) {
    const int nt = (int)std::min<int64_t>(T, r1 - i0);
    for (int64_t i = i0 + T; i < std::min(r1, i0 + 2 * T); ++i)
      for (int64_t j = 0; j < dim; j += 16) _mm_prefetch((const char*)(centroids + (int64_t)codes[i] * dim + j), _MM_HINT_T0);
    const float* cr[T];
    const uint8_t* p[T];
    float* o[T];
    __m256d lo_sum[T], hi_sum[T];  // lanes 0-3 and 4-7
    for (int t = 0; t < T; ++t) {
      const int64_t i = i0 + std::min(t, nt - 1);  // a short group repeats its last row
      cr[t] = centroids + (int64_t)codes[i] * dim;
      p[t] = packed + i * row_bytes;
      o[t] = out + i * dim;
      lo_sum[t] = hi_sum[t] = _mm256_setzero_pd();
    }
    for (int64_t j = 0; j < dim; j += 8) {
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const __m256 v = _mm256_add_ps(_mm256_loadu_ps(cr[t] + j), table8_avx2<PB>(table, p[t] + j / PB));
        _mm256_storeu_ps(o[t] + j, v);
        const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        lo_sum[t] = _mm256_add_pd(lo_sum[t], _mm256_mul_pd(lo, lo));
        hi_sum[t] = _mm256_add_pd(hi_sum[t], _mm256_mul_pd(hi, hi));
      }
    }
    for (int t = 0; t < nt; ++t) {
      alignas(32) double lane[8];
      _mm256_store_pd(lane, lo_sum[t]);
      _mm256_store_pd(lane + 4, hi_sum[t]);
      const double ss = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
      const float inv = (float)(1.0 / std::max(std::sqrt(ss), 1e-12));
      const __m256 iv = _mm256_set1_ps(inv);
      for (int64_t j = 0; j < dim; j += 8) _mm256_storeu_ps(o[t] + j, _mm256_mul_ps(_mm256_loadu_ps(o[t] + j), iv));
    }
  }
}

#endif

}  // namespace

void decompress_residuals_range(const int32_t* codes, const uint8_t* packed,
                                const float* centroids, const float* table, int nbits,
                                int64_t dim, int64_t r0, int64_t r1, float* out) {
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
  // the active ISA is capped at what the CPU has (maxsim_core.cpp): avx512 means F/BW/VL/DQ + FMA
  if (nbits < 8 && dim % 16 == 0 && (int)isa_for(Family::Codec) >= (int)Isa::Avx512)
    return decompress_rows_avx512(codes, packed, centroids, table, nbits, dim, r0, r1, out);
  if (nbits < 8 && dim % 8 == 0 && (int)isa_for(Family::Codec) >= (int)Isa::Avx2) {
    if (nbits == 1) return decompress_rows_avx2<8>(codes, packed, centroids, table, dim, r0, r1, out);
    if (nbits == 2) return decompress_rows_avx2<4>(codes, packed, centroids, table, dim, r0, r1, out);
    return decompress_rows_avx2<2>(codes, packed, centroids, table, dim, r0, r1, out);
  }
#endif
  decompress_dispatch(codes, packed, centroids, table, nbits, dim, r0, r1, out);
}

}  // namespace lateint
