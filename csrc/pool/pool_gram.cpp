// Gram matrices of one document's tokens (the distance input of token pooling): a register
// tile of 8 rows x W columns accumulated over the dimension, columns read from a transposed
// copy so the inner loop is a broadcast-multiply-add over contiguous memory. Compiled for
// AVX-512, AVX2 and baseline x86-64 (GCC picks at load time); contraction into FMAs is
// allowed here (the clustering TU forbids it, this one does not need bit-exactness).
#include "common/isa.h"

#include <algorithm>
#include <cstdint>

// GCC 12 reports the deliberately undefined upper half inside its own cast / extract
// intrinsics (_mm512_castps512_ps256 and friends) as uninitialized use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace lateint {
namespace detail {

namespace {

// G[i, j] = <X[i], X[j]> for the blocks on or above the diagonal (j >= i rounded down to W).
template <typename T, int W>
__attribute__((always_inline)) inline void gram_upper_impl(const T* __restrict X, int64_t n, int64_t dim, const T* __restrict Xt,
                            int64_t ldt, T* __restrict G, int64_t ldg) {
  constexpr int R = 8;
  for (int64_t i0 = 0; i0 < n; i0 += R) {
    const T* r[R];
    for (int q = 0; q < R; ++q) r[q] = X + std::min<int64_t>(i0 + q, n - 1) * dim;
    for (int64_t j0 = (i0 / W) * W; j0 < n; j0 += W) {
      T acc[R][W] = {};
      for (int64_t k = 0; k < dim; ++k) {
        const T* __restrict t = Xt + k * ldt + j0;
        for (int q = 0; q < R; ++q) {
          const T a = r[q][k];
          for (int c = 0; c < W; ++c) acc[q][c] += a * t[c];
        }
      }
      const int64_t jn = std::min<int64_t>(W, n - j0);
      for (int q = 0; q < R && i0 + q < n; ++q)
        for (int64_t c = 0; c < jn; ++c) G[(i0 + q) * ldg + j0 + c] = acc[q][c];
    }
  }
}

}  // namespace

// Xt: [dim, ldt] transposed copy of X with ldt a multiple of 16 and zero columns past n.
// (The 8 x 16 tile's 128 accumulators fit AVX-512's registers; AVX2 takes the tiles below.)
LATEINT_MULTIVERSION(::lateint::Family::Pool, void, gram_upper_f64_generic,
                     (const double* X, int64_t n, int64_t dim, const double* Xt, int64_t ldt, double* G, int64_t ldg),
                     (X, n, dim, Xt, ldt, G, ldg), {
  gram_upper_impl<double, 16>(X, n, dim, Xt, ldt, G, ldg);
})

#if defined(__x86_64__) && defined(__GNUC__)
// gram_upper_f64 for AVX2 in register tiles of 4 rows x 8 columns (eight accumulators: the
// generic 8 x 16 tile needs 32 AVX2 registers and spills). The same bits as the generic
// loop compiled for AVX2 or baseline: each entry one chain over k = 0..dim-1 of a product
// rounded, then added (no FMA), and blocks from j0 = i0 rounded down to 8.
__attribute__((target("avx2"))) static void gram_upper_f64_avx2(const double* X, int64_t n, int64_t dim,
                                                               const double* Xt, int64_t ldt, double* G,
                                                               int64_t ldg) {
  constexpr int R = 4, W = 8;
  for (int64_t i0 = 0; i0 < n; i0 += R) {
    const double* r[R];
    for (int q = 0; q < R; ++q) r[q] = X + std::min<int64_t>(i0 + q, n - 1) * dim;
    for (int64_t j0 = (i0 / W) * W; j0 < n; j0 += W) {
      __m256d acc[R][2];
      for (int q = 0; q < R; ++q) acc[q][0] = acc[q][1] = _mm256_setzero_pd();
      for (int64_t k = 0; k < dim; ++k) {
        const double* t = Xt + k * ldt + j0;
        const __m256d t0 = _mm256_loadu_pd(t), t1 = _mm256_loadu_pd(t + 4);
        for (int q = 0; q < R; ++q) {
          const __m256d a = _mm256_broadcast_sd(r[q] + k);
          acc[q][0] = _mm256_add_pd(acc[q][0], _mm256_mul_pd(a, t0));
          acc[q][1] = _mm256_add_pd(acc[q][1], _mm256_mul_pd(a, t1));
        }
      }
      const int64_t jn = std::min<int64_t>(W, n - j0);
      for (int q = 0; q < R && i0 + q < n; ++q) {
        double* g = G + (i0 + q) * ldg + j0;
        if (jn == W) {
          _mm256_storeu_pd(g, acc[q][0]);
          _mm256_storeu_pd(g + 4, acc[q][1]);
        } else {
          alignas(32) double v[W];
          _mm256_store_pd(v, acc[q][0]);
          _mm256_store_pd(v + 4, acc[q][1]);
          for (int64_t c = 0; c < jn; ++c) g[c] = v[c];
        }
      }
    }
  }
}
#endif

void gram_upper_f64(const double* X, int64_t n, int64_t dim, const double* Xt, int64_t ldt, double* G,
                    int64_t ldg) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (::lateint::isa_for(::lateint::Family::Pool) == ::lateint::Isa::Avx2)
    return gram_upper_f64_avx2(X, n, dim, Xt, ldt, G, ldg);
#endif
  gram_upper_f64_generic(X, n, dim, Xt, ldt, G, ldg);
}

// 1 - <a, b> in float32, clamped to [0, 2] when `clamp` (sentence-transformers' distance).
static inline float dist_of(float dot, bool clamp) {
  const float d = 1.0f - dot;
  return clamp ? std::min(std::max(d, 0.0f), 2.0f) : d;
}

// Cosine distances of one document straight from the register tiles (no Gram matrix):
// D[i, j] = D[j, i] = double(1.0f - <X[i], X[j]>) for i < j < n (clamped to [0, 2] when
// `clamp`), each <,> one float32
// FMA chain over k = 0..dim-1 (as torch.mm's sgemm computes it for dim <= 128 on the
// machines measured; the binding checks that per dimension), tiles of 8 rows x 32
// columns starting on the diagonal, both operands read from Xt = X transposed ([dim, ldt],
// ldt >= round_up(n, 8) + 32, zero past n): a tile's 8 row values at one k share a line.
// Each tile's mirror goes to 32 rows of D, 8 contiguous doubles (one cache line) apiece.
LATEINT_MULTIVERSION(::lateint::Family::Pool, void, cosine_dist_f32,
                     (int64_t n, int64_t dim, const float* __restrict Xt, int64_t ldt, double* __restrict D, int64_t ld,
                      bool clamp),
                     (n, dim, Xt, ldt, D, ld, clamp), {
  constexpr int R = 8, W = 32;
  for (int64_t i0 = 0; i0 < n; i0 += R) {
    for (int64_t j0 = i0; j0 < n; j0 += W) {
      float acc[R][W] = {};
      for (int64_t k = 0; k < dim; ++k) {
        const float* __restrict t = Xt + k * ldt + j0;
        const float* __restrict rows = Xt + k * ldt + i0;  // the 8 rows' k-th values: one line
        for (int q = 0; q < R; ++q) {
          const float a = rows[q];
          for (int c = 0; c < W; ++c) acc[q][c] = __builtin_fmaf(a, t[c], acc[q][c]);
        }
      }
      double v[R][W];
      for (int q = 0; q < R; ++q)
        for (int c = 0; c < W; ++c) v[q][c] = (double)dist_of(acc[q][c], clamp);
      if (j0 >= i0 + R && j0 + W <= n && i0 + R <= n) {  // interior tile: no bounds
        for (int q = 0; q < R; ++q)
          for (int c = 0; c < W; ++c) D[(i0 + q) * ld + j0 + c] = v[q][c];
        for (int c = 0; c < W; ++c)
          for (int q = 0; q < R; ++q) D[(j0 + c) * ld + i0 + q] = v[q][c];
      } else {
        for (int q = 0; q < R; ++q) {
          const int64_t i = i0 + q;
          if (i >= n) break;
          for (int c = 0; c < W; ++c) {
            const int64_t j = j0 + c;
            if (j <= i || j >= n) continue;
            D[i * ld + j] = v[q][c];
            D[j * ld + i] = v[q][c];
          }
        }
      }
    }
  }
})

#if defined(__x86_64__) && defined(__GNUC__)
// 8 x 8 float transpose in AVX registers: dst[c * ldd + r] = src[r * lds + c].
__attribute__((target("avx2"))) static inline void transpose8x8(const float* src, int64_t lds,
                                                                float* dst, int64_t ldd) {
  __m256 r0 = _mm256_loadu_ps(src + 0 * lds), r1 = _mm256_loadu_ps(src + 1 * lds);
  __m256 r2 = _mm256_loadu_ps(src + 2 * lds), r3 = _mm256_loadu_ps(src + 3 * lds);
  __m256 r4 = _mm256_loadu_ps(src + 4 * lds), r5 = _mm256_loadu_ps(src + 5 * lds);
  __m256 r6 = _mm256_loadu_ps(src + 6 * lds), r7 = _mm256_loadu_ps(src + 7 * lds);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst + 0 * ldd, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(dst + 1 * ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif

#if defined(__x86_64__) && defined(__GNUC__)
// 8 x 8 double transpose: on return r[c] holds what was column c (r[0..7][c]).
__attribute__((target("avx512f"))) static inline void transpose8x8_pd(__m512d r[8]) {
  const __m512d t0 = _mm512_unpacklo_pd(r[0], r[1]), t1 = _mm512_unpackhi_pd(r[0], r[1]);
  const __m512d t2 = _mm512_unpacklo_pd(r[2], r[3]), t3 = _mm512_unpackhi_pd(r[2], r[3]);
  const __m512d t4 = _mm512_unpacklo_pd(r[4], r[5]), t5 = _mm512_unpackhi_pd(r[4], r[5]);
  const __m512d t6 = _mm512_unpacklo_pd(r[6], r[7]), t7 = _mm512_unpackhi_pd(r[6], r[7]);
  // t0 = [r0c0 r1c0 | r0c2 r1c2 | r0c4 r1c4 | r0c6 r1c6], t1 the odd columns, and so on.
  const __m512d a0 = _mm512_shuffle_f64x2(t0, t2, 0x88), a1 = _mm512_shuffle_f64x2(t0, t2, 0xdd);
  const __m512d b0 = _mm512_shuffle_f64x2(t4, t6, 0x88), b1 = _mm512_shuffle_f64x2(t4, t6, 0xdd);
  const __m512d a2 = _mm512_shuffle_f64x2(t1, t3, 0x88), a3 = _mm512_shuffle_f64x2(t1, t3, 0xdd);
  const __m512d b2 = _mm512_shuffle_f64x2(t5, t7, 0x88), b3 = _mm512_shuffle_f64x2(t5, t7, 0xdd);
  r[0] = _mm512_shuffle_f64x2(a0, b0, 0x88);
  r[4] = _mm512_shuffle_f64x2(a0, b0, 0xdd);
  r[2] = _mm512_shuffle_f64x2(a1, b1, 0x88);
  r[6] = _mm512_shuffle_f64x2(a1, b1, 0xdd);
  r[1] = _mm512_shuffle_f64x2(a2, b2, 0x88);
  r[5] = _mm512_shuffle_f64x2(a2, b2, 0xdd);
  r[3] = _mm512_shuffle_f64x2(a3, b3, 0x88);
  r[7] = _mm512_shuffle_f64x2(a3, b3, 0xdd);
}
#endif

#if defined(__x86_64__) && defined(__GNUC__)
// One 8-row tile of cosine_dist_f32_panels: rows i0..i0+7 against the 32 columns (16 when
// HALF) of the panel at j0, written where j < i < n, and mirrored.
template <bool HALF>
__attribute__((target("avx512f"), always_inline)) inline void dist_tile(
    int64_t n, int64_t dim, const float* __restrict t0p, const float* __restrict rp, int64_t i0,
    int64_t j0, double* __restrict D, int64_t ld, bool clamp) {
  constexpr int NW = HALF ? 1 : 2;
  __m512 acc[8][2];
  for (int q = 0; q < 8; ++q)
    for (int w = 0; w < NW; ++w) acc[q][w] = _mm512_setzero_ps();
  const float* t1p = t0p + dim * 16;
  for (int64_t k = 0; k < dim; ++k) {
    const __m512 t0 = _mm512_loadu_ps(t0p + k * 16);
    const __m512 t1 = HALF ? t0 : _mm512_loadu_ps(t1p + k * 16);
    const float* r = rp + k * 16;
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q) {
      const __m512 a = _mm512_set1_ps(r[q]);
      acc[q][0] = _mm512_fmadd_ps(a, t0, acc[q][0]);
      if (!HALF) acc[q][1] = _mm512_fmadd_ps(a, t1, acc[q][1]);
    }
  }
  const __m512 one = _mm512_set1_ps(1.0f), lo = _mm512_setzero_ps(), hi = _mm512_set1_ps(2.0f);
  const bool interior = i0 >= j0 + 16 * NW && i0 + 8 <= n;
  for (int h = 0; h < 2 * NW; ++h) {
    const int64_t jb = j0 + 8 * h;
    if (jb >= n || jb >= i0 + 8) break;
    // vh[q]: row i0 + q, columns jb .. jb + 7, as 1 - <,> in float32, widened. One block of
    // 8 columns at a time (not all of the tile's at once), so the values stay in registers
    // through the stores and the transpose instead of going through the stack.
    __m512d vh[8];
    for (int q = 0; q < 8; ++q) {
      __m512 dq = _mm512_sub_ps(one, acc[q][h >> 1]);
      if (clamp) dq = _mm512_min_ps(_mm512_max_ps(dq, lo), hi);
      const __m512d d = _mm512_castps_pd(dq);
      const __m256 half = _mm256_castpd_ps((h & 1) ? _mm512_extractf64x4_pd(d, 1)
                                                    : _mm512_castpd512_pd256(d));
      vh[q] = _mm512_cvtps_pd(half);
    }
    // rows: D[i, jb + c] for jb + c < i (< n)
    for (int q = 0; q < 8; ++q) {
      const int64_t i = i0 + q;
      if (i >= n) break;
      __mmask8 mk = 0xff;
      if (!interior) {
        const int64_t hi = std::min<int64_t>(i - jb, 8);
        mk = hi <= 0 ? 0 : (__mmask8)((1u << hi) - 1);
      }
      if (mk) _mm512_mask_storeu_pd(D + i * ld + jb, mk, vh[q]);
    }
    // mirror: D[jb + c, i0 + q] for jb + c < i0 + q < n
    transpose8x8_pd(vh);
    for (int c = 0; c < 8; ++c) {
      const int64_t j = jb + c;
      if (j >= n) break;
      __mmask8 mk = 0xff;
      if (!interior) {
        const int64_t lo = std::max<int64_t>(j + 1 - i0, 0), hi = std::min<int64_t>(n - i0, 8);
        mk = lo >= hi ? 0 : (__mmask8)(((1u << hi) - 1) & ~((1u << lo) - 1));
      }
      if (mk) _mm512_mask_storeu_pd(D + j * ld + i0, mk, vh[c]);
    }
  }
}

// cosine_dist_f32 for AVX-512 on the packed layout: the same values bit for bit (each
// <X[i], X[j]> is one float32 FMA chain over k = 0..dim-1 in both), computed as the lower
// triangle panel by panel: a 32-column panel (two 16-wide blocks, 16 KB at d = 128) stays
// in L1 while the 8-row blocks at and below the diagonal stream past it; the two blocks
// touching the diagonal and panels ending within 16 columns of n take 16-column tiles.
// Each tile writes its rows with masked stores and its mirror through 8 x 8 transposes.
__attribute__((target("avx512f"))) void cosine_dist_f32_panels(int64_t n, int64_t dim,
                                                               const float* __restrict P,
                                                               double* __restrict D, int64_t ld,
                                                               bool clamp) {
  const int64_t bs = dim * 16;  // floats per 16-row block
  for (int64_t j0 = 0; j0 < n; j0 += 32) {
    const float* tp = P + (j0 / 16) * bs;
    for (int64_t i0 = j0; i0 < n; i0 += 8) {
      const float* rp = P + (i0 / 16) * bs + i0 % 16;
      if (i0 < j0 + 16 || j0 + 16 >= n)
        dist_tile<true>(n, dim, tp, rp, i0, j0, D, ld, clamp);
      else
        dist_tile<false>(n, dim, tp, rp, i0, j0, D, ld, clamp);
    }
  }
}
#endif

#if defined(__x86_64__) && defined(__GNUC__)
// cosine_dist_f32 for AVX2 + FMA, the same bits (one FMA chain per entry, k in order, the
// same clamp):
// tiles of R rows x 8C columns (4 x 16 here: 8 accumulators fill the FMA pipes); columns from
// the transposed rows (Xt [dim, ldt], ldt >= round_up(n, 8C) + R, zero past n), the R
// rows' values broadcast from the same line. Tiles start at the column block holding the
// diagonal, so only the upper triangle is computed; each entry is written twice, the
// mirror as R contiguous doubles per column.
template <int R, int C, bool CLAMP>
__attribute__((target("avx2,fma"), always_inline)) inline void cosine_tiles_avx2fma(
    int64_t n, int64_t dim, const float* __restrict Xt, int64_t ldt, double* __restrict D, int64_t ld) {
  constexpr int W = 8 * C;
  alignas(32) float v[R][W];
  for (int64_t i0 = 0; i0 < n; i0 += R) {
    for (int64_t j0 = i0 / W * W; j0 < n; j0 += W) {
      __m256 acc[R][C];
      for (int q = 0; q < R; ++q)
        for (int c = 0; c < C; ++c) acc[q][c] = _mm256_setzero_ps();
      for (int64_t k = 0; k < dim; ++k) {
        const float* row = Xt + k * ldt;
        __m256 t[C];
        for (int c = 0; c < C; ++c) t[c] = _mm256_loadu_ps(row + j0 + 8 * c);
        for (int q = 0; q < R; ++q) {
          const __m256 a = _mm256_broadcast_ss(row + i0 + q);
          for (int c = 0; c < C; ++c) acc[q][c] = _mm256_fmadd_ps(a, t[c], acc[q][c]);
        }
      }
      const __m256 one = _mm256_set1_ps(1.0f), lo = _mm256_setzero_ps(), hi = _mm256_set1_ps(2.0f);
      for (int q = 0; q < R; ++q)
        for (int c = 0; c < C; ++c) {
          __m256 d = _mm256_sub_ps(one, acc[q][c]);
          if (CLAMP) d = _mm256_min_ps(_mm256_max_ps(d, lo), hi);
          _mm256_store_ps(v[q] + 8 * c, d);
        }
      if (j0 >= i0 + R && j0 + W <= n && i0 + R <= n) {  // off the diagonal: rows, then the mirror
        for (int q = 0; q < R; ++q)
          for (int c = 0; c < W; ++c) D[(i0 + q) * ld + j0 + c] = (double)v[q][c];
        for (int c = 0; c < W; ++c)
          for (int q = 0; q < R; ++q) D[(j0 + c) * ld + i0 + q] = (double)v[q][c];
        continue;
      }
      for (int q = 0; q < R && i0 + q < n; ++q) {
        const int64_t i = i0 + q;
        for (int c = 0; c < W; ++c) {
          const int64_t j = j0 + c;
          if (j <= i || j >= n) continue;
          const double d = (double)v[q][c];
          D[i * ld + j] = d;
          D[j * ld + i] = d;
        }
      }
    }
  }
}

__attribute__((target("avx2,fma"))) void cosine_dist_f32_avx2fma(int64_t n, int64_t dim,
                                                                 const float* __restrict Xt, int64_t ldt,
                                                                 double* __restrict D, int64_t ld, bool clamp) {
  if (clamp) cosine_tiles_avx2fma<4, 2, true>(n, dim, Xt, ldt, D, ld);
  else cosine_tiles_avx2fma<4, 2, false>(n, dim, Xt, ldt, D, ld);
}
#endif

// The transposes both distance kernels read, as one blocked transpose: row i of src
// ([n, dim]) becomes column i % bw of block i / bw, dimension-major,
// dst[(i / bw) * bstride + k * bw + i % bw] = src[i * dim + k], and rows n..np are zero.
// bw is a multiple of 8 (8 x 8 register transposes for whole blocks when avx2).
static void transpose_blocked(const float* src, int64_t n, int64_t dim, float* dst, int64_t bw,
                              int64_t bstride, int64_t np, bool avx2) {
  int64_t i8 = 0, k8 = 0;
#if defined(__x86_64__) && defined(__GNUC__)
  if (avx2) {
    i8 = n / 8 * 8;
    k8 = dim / 8 * 8;
    for (int64_t i = 0; i < i8; i += 8)
      for (int64_t k = 0; k < k8; k += 8)
        transpose8x8(src + i * dim + k, dim, dst + (i / bw) * bstride + k * bw + i % bw, bw);
  }
#endif
  (void)avx2;
  for (int64_t i = 0; i < np; ++i) {
    float* col = dst + (i / bw) * bstride + i % bw;
    const int64_t k_start = i < i8 ? k8 : 0;  // what the 8 x 8 blocks did not cover
    for (int64_t k = k_start; k < dim; ++k) col[k * bw] = i < n ? src[i * dim + k] : 0.0f;
  }
}

// dst[k * ldt + i] = src[i * dim + k] for i < n, k < dim; columns n..ldt of dst zeroed
// (ldt a multiple of 8). avx2: whether the processor has AVX2.
void transpose_f32(const float* src, int64_t n, int64_t dim, float* dst, int64_t ldt, bool avx2) {
  transpose_blocked(src, n, dim, dst, ldt, 0, ldt, avx2);
}

// The layout cosine_dist_f32_panels reads: rows of X in blocks of 16, each block stored
// dimension-major, P[(i / 16) * dim * 16 + k * 16 + i % 16] = X[i, k], rows n..np zero
// (np = round_up(n, 32)). A block of 32 columns is then two contiguous 16-wide panels
// (16 KB at d = 128: they stay in L1 while the row blocks below them stream past).
void pack_b16_f32(const float* src, int64_t n, int64_t dim, float* P, bool avx2) {
  transpose_blocked(src, n, dim, P, 16, dim * 16, (n + 31) / 32 * 32, avx2);
}

// Exponent-field test (all ones = Inf or NaN), branch-free so it vectorizes.
LATEINT_MULTIVERSION(::lateint::Family::Pool, bool, all_finite_u32, (const uint32_t* v, int64_t n), (v, n), {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= (uint32_t)((v[i] & 0x7f800000u) == 0x7f800000u);
  return bad == 0;
})

LATEINT_MULTIVERSION(::lateint::Family::Pool, bool, all_finite_u16,
                     (const uint16_t* v, int64_t n, uint16_t exp_mask), (v, n, exp_mask), {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= (uint32_t)((v[i] & exp_mask) == exp_mask);
  return bad == 0;
})

LATEINT_MULTIVERSION(::lateint::Family::Pool, bool, all_finite_u64, (const uint64_t* v, int64_t n), (v, n), {
  uint64_t bad = 0;
  const uint64_t e = 0x7ff0000000000000ull;
  for (int64_t i = 0; i < n; ++i) bad |= (uint64_t)((v[i] & e) == e);
  return bad == 0;
})

// The largest squared L2 norm of the n rows of x [n, dim], in float32 (sixteen partial
// sums per row, so the loop vectorizes). NaN when a row's sum is NaN, +inf on overflow.
LATEINT_MULTIVERSION(::lateint::Family::Pool, float, max_sqnorm_f32,
                     (const float* x, int64_t n, int64_t dim), (x, n, dim), {
  float m = 0.0f;
  const int64_t d16 = dim / 16 * 16;
  for (int64_t i = 0; i < n; ++i) {
    const float* r = x + i * dim;
    float acc[16] = {};
    for (int64_t k = 0; k < d16; k += 16)
      for (int c = 0; c < 16; ++c) acc[c] += r[k + c] * r[k + c];
    float s = 0.0f;
    for (int c = 0; c < 16; ++c) s += acc[c];
    for (int64_t k = d16; k < dim; ++k) s += r[k] * r[k];
    if (!(s <= m)) m = s;  // NaN sticks
    if (m != m) return m;
  }
  return m;
})

}  // namespace detail
}  // namespace lateint
