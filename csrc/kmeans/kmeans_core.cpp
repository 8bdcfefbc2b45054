// kmeans_assign: fused GEMM + argmax. A block of 64 rows of x is scored against the
// centroids one L2-sized chunk at a time; inside, a register tile of 8 rows x 32 centroids
// is accumulated over the dimension (centroids read from a transposed copy, rows
// broadcast), then folded into per-lane running maxima. Memory: O(block), never [n, k].
#include "kmeans_core.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace lateint {

namespace {

constexpr int R = 8;         // rows per register tile
constexpr int W = 32;        // centroids per register tile
constexpr int64_t RB = 64;   // rows per block (a thread's unit of work)
constexpr int64_t KC = 1024; // centroids per chunk (dim x KC floats stay in L2)

// One block of nr <= RB rows (float32, row-major [nr, dim]).
LATEINT_MULTIVERSION(::lateint::Family::KMeans, void, assign_block,
                     (const float* __restrict X, int64_t nr, int64_t dim, const float* __restrict Ct, int64_t k, int64_t k_pad, float* __restrict best, int32_t* __restrict bidx),
                     (X, nr, dim, Ct, k, k_pad, best, bidx), {
  // best/bidx: [RB][W] running maxima per lane (lane = column mod W)
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < RB * W; ++i) {
    best[i] = ninf;
    bidx[i] = -1;
  }
  for (int64_t c0 = 0; c0 < k; c0 += KC) {
    const int64_t c1 = std::min(c0 + KC, k);
    for (int64_t i0 = 0; i0 < nr; i0 += R) {
      const float* r[R];
      for (int q = 0; q < R; ++q) r[q] = X + std::min<int64_t>(i0 + q, nr - 1) * dim;
      for (int64_t j0 = c0; j0 < c1; j0 += W) {
        float acc[R][W] = {};
        for (int64_t kk = 0; kk < dim; ++kk) {
          const float* __restrict t = Ct + kk * k_pad + j0;
          for (int q = 0; q < R; ++q) {
            const float a = r[q][kk];
            for (int c = 0; c < W; ++c) acc[q][c] += a * t[c];
          }
        }
        if (j0 + W > k)  // padding columns never win
          for (int q = 0; q < R; ++q)
            for (int c = (int)(k - j0); c < W; ++c) acc[q][c] = ninf;
        for (int q = 0; q < R; ++q) {
          float* b = best + (i0 + q) * W;
          int32_t* bi = bidx + (i0 + q) * W;
          for (int c = 0; c < W; ++c) {
            const bool take = acc[q][c] > b[c];  // strict: the first maximum stays
            b[c] = take ? acc[q][c] : b[c];
            bi[c] = take ? (int32_t)(j0 + c) : bi[c];
          }
        }
      }
    }
  }
})

}  // namespace

bool kmeans_int8_screen() {
  // avx512 as the active ISA means F/BW/VL/DQ + FMA; the screen needs VNNI beside them
  return cpu_has_avx512_vnni() && (int)isa_for(Family::KMeans) >= (int)Isa::Avx512;
}

bool pack_centroids(const void* c, DType dt, int64_t k, int64_t dim, PackedCentroids* out, bool screen) {
  out->k = k;
  out->dim = dim;
  out->k_pad = (k + W - 1) / W * W;
  out->t.assign(dim * out->k_pad, 0.f);
  bool finite = true;
  for (int64_t j = 0; j < k; ++j)
    for (int64_t kk = 0; kk < dim; ++kk) {
      const float v = load_as_f32(dt, c, j * dim + kk);
      finite &= std::isfinite(v);
      out->t[kk * out->k_pad + j] = v;
    }
  out->vnni = screen && finite && kmeans_int8_screen();
  if (out->vnni) {
    out->rows.resize(k * dim);
    for (int64_t j = 0; j < k; ++j)
      for (int64_t kk = 0; kk < dim; ++kk) out->rows[j * dim + kk] = out->t[kk * out->k_pad + j];
#if defined(__x86_64__) && defined(__GNUC__)
    detail::pack_centroids_vnni(out->rows.data(), k, dim, out);
#endif
  }
  return finite;
}

bool kmeans_assign_range(const void* x, DType dt, int64_t dim, const PackedCentroids& pc,
                         int64_t r0, int64_t r1, int32_t* codes, float* scores) {
  std::vector<float> conv(dt == DType::F32 ? 0 : RB * dim);
  std::vector<float> best(RB * W);
  std::vector<int32_t> bidx(RB * W);
  std::vector<int64_t> fallback;
  std::vector<float> redo(pc.vnni ? RB * dim : 0);
  bool finite = true;
  for (int64_t b0 = r0; b0 < r1; b0 += RB) {
    const int64_t nr = std::min(RB, r1 - b0);
    const float* X;
    if (dt == DType::F32) {
      X = static_cast<const float*>(x) + b0 * dim;
    } else {
      for (int64_t i = 0; i < nr * dim; ++i) conv[i] = load_as_f32(dt, x, b0 * dim + i);
      X = conv.data();
    }
    // rows[q] of X: the block's rows, or (after the int8 screen) only those it left open
    const float* rowsX = X;
    int64_t nrows = nr;
    fallback.clear();
#if defined(__x86_64__) && defined(__GNUC__)
    if (pc.vnni) {
      detail::assign_block_vnni(X, nr, dim, pc, codes + b0, scores + b0, &fallback);
      if (fallback.empty()) continue;
      for (size_t f = 0; f < fallback.size(); ++f)
        std::copy(X + fallback[f] * dim, X + (fallback[f] + 1) * dim, redo.begin() + f * dim);
      rowsX = redo.data();
      nrows = (int64_t)fallback.size();
    }
#endif
    assign_block(rowsX, nrows, dim, pc.t.data(), pc.k, pc.k_pad, best.data(), bidx.data());
    for (int64_t q = 0; q < nrows; ++q) {
      const int64_t row = b0 + (fallback.empty() ? q : fallback[q]);
      const float* b = best.data() + q * W;
      const int32_t* bi = bidx.data() + q * W;
      float m = b[0];
      for (int c = 1; c < W; ++c) m = b[c] > m ? b[c] : m;
      int32_t arg = -1;
      for (int c = 0; c < W; ++c)
        if (b[c] == m && bi[c] >= 0 && (arg < 0 || bi[c] < arg)) arg = bi[c];
      // A NaN anywhere in the row's products would have been skipped silently: the row and
      // every centroid are finite (checked by the caller) unless the max is not.
      if (!std::isfinite(m)) finite = false;
      codes[row] = arg;
      scores[row] = m;
    }
  }
  return finite;
}

}  // namespace lateint
