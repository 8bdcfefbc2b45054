// Gram matrices of one document's tokens (the distance input of token pooling): a register
// tile of 8 rows x W columns accumulated over the dimension, columns read from a transposed
// copy so the inner loop is a broadcast-multiply-add over contiguous memory. Compiled for
// AVX-512, AVX2 and baseline x86-64 (GCC picks at load time); contraction into FMAs is
// allowed here (the clustering TU forbids it, this one does not need bit-exactness).
#include <algorithm>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace lateint {
namespace detail {

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define LATEINT_GRAM_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define LATEINT_GRAM_CLONES
#endif

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
LATEINT_GRAM_CLONES void gram_upper_f64(const double* X, int64_t n, int64_t dim, const double* Xt,
                                        int64_t ldt, double* G, int64_t ldg) {
  gram_upper_impl<double, 16>(X, n, dim, Xt, ldt, G, ldg);
}

// Cosine distances of one document straight from the register tiles (no Gram matrix):
// D[i, j] = D[j, i] = double(1.0f - <X[i], X[j]>) for i < j < n, tiles of 8 rows x 32
// columns starting on the diagonal, both operands read from Xt = X transposed ([dim, ldt],
// ldt >= round_up(n, 8) + 32, zero past n): a tile's 8 row values at one k share a line.
// Each tile's mirror goes to 32 rows of D, 8 contiguous doubles (one cache line) apiece.
LATEINT_GRAM_CLONES void cosine_dist_f32(int64_t n, int64_t dim, const float* __restrict Xt,
                                         int64_t ldt, double* __restrict D, int64_t ld) {
  constexpr int R = 8, W = 32;
  for (int64_t i0 = 0; i0 < n; i0 += R) {
    for (int64_t j0 = i0; j0 < n; j0 += W) {
      float acc[R][W] = {};
      for (int64_t k = 0; k < dim; ++k) {
        const float* __restrict t = Xt + k * ldt + j0;
        const float* __restrict rows = Xt + k * ldt + i0;  // the 8 rows' k-th values: one line
        for (int q = 0; q < R; ++q) {
          const float a = rows[q];
          for (int c = 0; c < W; ++c) acc[q][c] += a * t[c];
        }
      }
      double v[R][W];
      for (int q = 0; q < R; ++q)
        for (int c = 0; c < W; ++c) v[q][c] = (double)(1.0f - acc[q][c]);
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
}

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

// dst[k * ldt + i] = src[i * dim + k] for i < n, k < dim; columns n..ldt of dst zeroed.
// avx2: whether the processor has AVX2 (8 x 8 register transposes for whole blocks).
void transpose_f32(const float* src, int64_t n, int64_t dim, float* dst, int64_t ldt, bool avx2) {
  int64_t i8 = 0, k8 = 0;
#if defined(__x86_64__) && defined(__GNUC__)
  if (avx2) {
    i8 = n / 8 * 8;
    k8 = dim / 8 * 8;
    for (int64_t i = 0; i < i8; i += 8)
      for (int64_t k = 0; k < k8; k += 8) transpose8x8(src + i * dim + k, dim, dst + k * ldt + i, ldt);
  }
#endif
  (void)avx2;
  for (int64_t k = 0; k < dim; ++k) {
    float* d = dst + k * ldt;
    const int64_t i_start = k < k8 ? i8 : 0;  // rows the blocks did not cover
    for (int64_t i = i_start; i < n; ++i) d[i] = src[i * dim + k];
    std::fill(d + n, d + ldt, 0.0f);
  }
}

// Exponent-field test (all ones = Inf or NaN), branch-free so it vectorizes.
LATEINT_GRAM_CLONES bool all_finite_u32(const uint32_t* v, int64_t n) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= (uint32_t)((v[i] & 0x7f800000u) == 0x7f800000u);
  return bad == 0;
}
LATEINT_GRAM_CLONES bool all_finite_u16(const uint16_t* v, int64_t n, uint16_t exp_mask) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= (uint32_t)((v[i] & exp_mask) == exp_mask);
  return bad == 0;
}
LATEINT_GRAM_CLONES bool all_finite_u64(const uint64_t* v, int64_t n) {
  uint64_t bad = 0;
  const uint64_t e = 0x7ff0000000000000ull;
  for (int64_t i = 0; i < n; ++i) bad |= (uint64_t)((v[i] & e) == e);
  return bad == 0;
}

}  // namespace detail
}  // namespace lateint
