// Gram matrices of one document's tokens (the distance input of token pooling): a register
// tile of 8 rows x W columns accumulated over the dimension, columns read from a transposed
// copy so the inner loop is a broadcast-multiply-add over contiguous memory. Compiled for
// AVX-512, AVX2 and baseline x86-64 (GCC picks at load time); contraction into FMAs is
// allowed here (the clustering TU forbids it, this one does not need bit-exactness).
#include <algorithm>
#include <cstdint>

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

// Xt: [dim, ldt] transposed copy of X with ldt a multiple of 32 and zero columns past n.
LATEINT_GRAM_CLONES void gram_upper_f32(const float* X, int64_t n, int64_t dim, const float* Xt,
                                        int64_t ldt, float* G, int64_t ldg) {
  gram_upper_impl<float, 32>(X, n, dim, Xt, ldt, G, ldg);
}

LATEINT_GRAM_CLONES void gram_upper_f64(const double* X, int64_t n, int64_t dim, const double* Xt,
                                        int64_t ldt, double* G, int64_t ldg) {
  gram_upper_impl<double, 16>(X, n, dim, Xt, ldt, G, ldg);
}

// Cosine distances of one document straight from the register tiles (no Gram matrix):
// D[i, j] = D[j, i] = double(1.0f - <X[i], X[j]>) for i < j < n, tiles of 8 rows x 32
// columns starting on the diagonal. Xt: [dim, ldt], ldt >= round_up(n, 8) + 32, zero past n.
// Each tile's mirror goes to 32 rows of D, 8 contiguous doubles (one cache line) apiece.
LATEINT_GRAM_CLONES void cosine_dist_f32(const float* __restrict X, int64_t n, int64_t dim,
                                         const float* __restrict Xt, int64_t ldt,
                                         double* __restrict D, int64_t ld) {
  constexpr int R = 8, W = 32;
  for (int64_t i0 = 0; i0 < n; i0 += R) {
    const float* r[R];
    for (int q = 0; q < R; ++q) r[q] = X + std::min<int64_t>(i0 + q, n - 1) * dim;
    for (int64_t j0 = i0; j0 < n; j0 += W) {
      float acc[R][W] = {};
      for (int64_t k = 0; k < dim; ++k) {
        const float* __restrict t = Xt + k * ldt + j0;
        for (int q = 0; q < R; ++q) {
          const float a = r[q][k];
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
