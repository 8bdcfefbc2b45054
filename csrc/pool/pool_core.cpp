// Ward clustering for token pooling; see pool_core.h for the contract.
//
// Bit-exactness with scipy: every floating-point operation of the clustering is the one
// scipy performs, in the same order, so this translation unit must not contract a*b + c
// into a fused multiply-add (GCC does by default when the target has FMA). The vector
// paths (AVX-512 / AVX2 intrinsics) apply the same IEEE operations per lane; sqrt and
// division are correctly rounded in every path, so all paths give the same bits.
#pragma GCC optimize("fp-contract=off")
// GCC 12 reports the deliberately undefined inputs inside its own AVX-512 integer min /
// reduce intrinsics as uninitialized use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "pool/pool_core.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LATEINT_POOL_X86 1
#endif

namespace lateint {
namespace detail {
void gram_upper_f64(const double* X, int64_t n, int64_t dim, const double* Xt, int64_t ldt,
                    double* G, int64_t ldg);
void cosine_dist_f32(int64_t n, int64_t dim, const float* Xt, int64_t ldt, double* D, int64_t ld, bool clamp);
void transpose_f32(const float* src, int64_t n, int64_t dim, float* dst, int64_t ldt, bool avx2);
void pack_b16_f32(const float* src, int64_t n, int64_t dim, float* P, bool avx2);
#if defined(__x86_64__) && defined(__GNUC__)
void cosine_dist_f32_panels(int64_t n, int64_t dim, const float* P, double* D, int64_t ld, bool clamp);
void cosine_dist_f32_avx2fma(int64_t n, int64_t dim, const float* Xt, int64_t ldt, double* D, int64_t ld,
                             bool clamp);
#endif
bool all_finite_u32(const uint32_t* v, int64_t n);
bool all_finite_u16(const uint16_t* v, int64_t n, uint16_t exp_mask);
bool all_finite_u64(const uint64_t* v, int64_t n);
float max_sqnorm_f32(const float* x, int64_t n, int64_t dim);
}  // namespace detail

double pool_max_sqnorm(const void* x, DType dt, int64_t n, int64_t dim) {
  if (dt == DType::F32) return detail::max_sqnorm_f32((const float*)x, n, dim);
  double m = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    double s = 0.0;
    for (int64_t k = 0; k < dim; ++k) {
      const int64_t j = i * dim + k;
      const double v = load_as_f64(dt, x, j);
      s += v * v;
    }
    if (!(s <= m)) m = s;
  }
  return m;
}

bool pool_all_finite(const void* x, DType dt, int64_t count) {
  switch (dt) {
    case DType::F32: return detail::all_finite_u32((const uint32_t*)x, count);
    case DType::F64: return detail::all_finite_u64((const uint64_t*)x, count);
    case DType::F16: return detail::all_finite_u16((const uint16_t*)x, count, 0x7c00);
    case DType::BF16: return detail::all_finite_u16((const uint16_t*)x, count, 0x7f80);
  }
  return false;
}

namespace {

// Sum of squares of one float32 row in `how`'s order (see TorchRowNorm), then sqrtf.
template <bool VF, bool TF>
float row_norm_portable(const float* r, int64_t dim, int width) {
  float acc[16] = {};
  const int64_t main = dim - dim % width;
  for (int64_t d = 0; d < main; d += width)
    for (int l = 0; l < width; ++l) {
      const float v = r[d + l];
      acc[l] = VF ? std::fma(v, v, acc[l]) : acc[l] + v * v;
    }
  float s = acc[0];
  for (int l = 1; l < width; ++l) s = s + acc[l];
  for (int64_t d = main; d < dim; ++d) s = TF ? std::fma(r[d], r[d], s) : s + r[d] * r[d];
  return std::sqrt(s);
}

#ifdef LATEINT_POOL_X86
// The same with the lanes in AVX registers: one 8-lane accumulator per 8 of torch's lanes.
template <bool VF, bool TF, int W>
__attribute__((target("avx2,fma"))) float row_norm_avx2(const float* r, int64_t dim) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  const int64_t main = dim - dim % W;
  for (int64_t d = 0; d < main; d += W) {
    const __m256 v0 = _mm256_loadu_ps(r + d);
    a0 = VF ? _mm256_fmadd_ps(v0, v0, a0) : _mm256_add_ps(a0, _mm256_mul_ps(v0, v0));
    if (W == 16) {
      const __m256 v1 = _mm256_loadu_ps(r + d + 8);
      a1 = VF ? _mm256_fmadd_ps(v1, v1, a1) : _mm256_add_ps(a1, _mm256_mul_ps(v1, v1));
    }
  }
  alignas(32) float b[16];
  _mm256_store_ps(b, a0);
  _mm256_store_ps(b + 8, a1);
  float s = b[0];
  for (int l = 1; l < W; ++l) s = s + b[l];
  for (int64_t d = main; d < dim; ++d) s = TF ? __builtin_fmaf(r[d], r[d], s) : s + r[d] * r[d];
  return std::sqrt(s);
}

template <bool VF, bool TF>
__attribute__((target("avx2,fma"))) void l2_rows_avx2(float* x, int64_t n, int64_t dim, int width) {
  for (int64_t i = 0; i < n; ++i) {
    float* r = x + i * dim;
    const float nrm = width == 16 ? row_norm_avx2<VF, TF, 16>(r, dim) : row_norm_avx2<VF, TF, 8>(r, dim);
    const float den = std::max(nrm, 1e-12f);
    for (int64_t k = 0; k < dim; ++k) r[k] = r[k] / den;
  }
}
#endif

template <bool VF, bool TF>
void l2_rows_portable(float* x, int64_t n, int64_t dim, int width) {
  for (int64_t i = 0; i < n; ++i) {
    float* r = x + i * dim;
    const float den = std::max(row_norm_portable<VF, TF>(r, dim, width), 1e-12f);
    for (int64_t k = 0; k < dim; ++k) r[k] = r[k] / den;
  }
}

template <bool VF, bool TF>
void l2_rows_any(float* x, int64_t n, int64_t dim, int width, Isa isa) {
#ifdef LATEINT_POOL_X86
  if (isa >= Isa::Avx2 && (width == 8 || width == 16)) return l2_rows_avx2<VF, TF>(x, n, dim, width);
#endif
  (void)isa;
  l2_rows_portable<VF, TF>(x, n, dim, width);
}

}  // namespace

void l2_rows_like_torch(float* x, int64_t n, int64_t dim, TorchRowNorm how, Isa isa) {
  if (how.vec_fma)
    return how.tail_fma ? l2_rows_any<true, true>(x, n, dim, how.width, isa)
                        : l2_rows_any<true, false>(x, n, dim, how.width, isa);
  return how.tail_fma ? l2_rows_any<false, true>(x, n, dim, how.width, isa)
                      : l2_rows_any<false, false>(x, n, dim, how.width, isa);
}

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Row stride of the distance matrix for n columns: whole cache lines, an odd number of
// them, so that a column (the chain's mirror writes one per merge) spreads over all L1
// sets instead of a few (a stride of 2^k lines maps it to 64 / 2^k sets).
inline int64_t row_stride(int64_t n) {
  const int64_t ld = round_up(n, 8);
  return (ld / 8) % 2 ? ld : ld + 8;
}

// Scratch sized for this document: grown when too small, never shrunk, so that a document
// longer than the last does not value-initialize (zero) the difference first -- the
// callers write every element they read.
template <typename V>
void grow(V& v, int64_t n) {
  if ((int64_t)v.size() < n) v.resize(n);
}

// ---------------------------------------------------------------------------------------
// Row scan: the first index i < n of the smallest row[i] (strictly smaller than +inf) over
// live clusters (size[i] != 0); -1 when there is none. The diagonal holds +inf; size is 0
// from n to round_up(n, 8).
int32_t argmin_scalar(const double* row, const double* size, int64_t n, double* m_out) {
  double m = kInf;
  int32_t im = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (size[i] != 0.0 && row[i] < m) {
      m = row[i];
      im = (int32_t)i;
    }
  }
  *m_out = m;
  return im;
}

// The Lance-Williams Ward update of row y against clusters i (scipy's _ward):
//   t = 1 / (nx + ny + ni)
//   d(xy, i) = sqrt((ni + nx) t d(x,i)^2 + (ni + ny) t d(y,i)^2 - ni t d(x,y)^2)
// for every active i != y (size[i] > 0); a negative radicand (rounding) counts as 0.
void ward_update_scalar(double* __restrict ry, const double* __restrict rx, double dxy, double nx,
                        double ny, const double* __restrict size, const double* __restrict inv,
                        int64_t n, int64_t y) {
  for (int64_t i = 0; i < n; ++i) {
    const double ni = size[i];
    if (ni == 0.0 || i == y) continue;
    const double t = inv[(int64_t)((nx + ny) + ni)];  // = 1.0 / ((nx + ny) + ni)
    const double dxi = rx[i], dyi = ry[i];
    double r = ((ni + nx) * t * dxi * dxi + (ni + ny) * t * dyi * dyi) - ni * t * dxy * dxy;
    if (r < 0.0) r = 0.0;
    ry[i] = std::sqrt(r);
  }
}

#ifdef LATEINT_POOL_X86
// Four independent accumulators (vectors i, i + 8, i + 16, i + 24 of each 32), so the
// compare -> masked-move chain of a single accumulator does not pace the loop.
__attribute__((target("avx512f"))) int32_t argmin_avx512(const double* row, const double* size,
                                                         int64_t n, double* m_out) {
  const int64_t np = round_up(n, 8);
  const __m512d zero = _mm512_setzero_pd();
  __m512d b0 = _mm512_set1_pd(kInf), b1 = b0, b2 = b0, b3 = b0;
  __m512i i0 = _mm512_set1_epi64(-1), i1 = i0, i2 = i0, i3 = i0;
  __m512i idx = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i s8 = _mm512_set1_epi64(8), s16 = _mm512_set1_epi64(16);
  const __m512i s24 = _mm512_set1_epi64(24), s32 = _mm512_set1_epi64(32);
  // one accumulator step: lanes of live clusters strictly below the running minimum
  auto step = [&](__m512d& b, __m512i& bi, int64_t at, __m512i ix) {
    const __m512d v = _mm512_loadu_pd(row + at);
    const __mmask8 live = _mm512_cmp_pd_mask(_mm512_loadu_pd(size + at), zero, _CMP_NEQ_UQ);
    const __mmask8 lt = _mm512_mask_cmp_pd_mask(live, v, b, _CMP_LT_OQ);
    b = _mm512_mask_mov_pd(b, lt, v);
    bi = _mm512_mask_mov_epi64(bi, lt, ix);
  };
  int64_t i = 0;
  for (; i + 32 <= np; i += 32) {
    step(b0, i0, i, idx);
    step(b1, i1, i + 8, _mm512_add_epi64(idx, s8));
    step(b2, i2, i + 16, _mm512_add_epi64(idx, s16));
    step(b3, i3, i + 24, _mm512_add_epi64(idx, s24));
    idx = _mm512_add_epi64(idx, s32);
  }
  for (; i < np; i += 8) {
    step(b0, i0, i, idx);
    idx = _mm512_add_epi64(idx, s8);
  }
  // Combine: the smaller value, and on equal values the smaller index (each accumulator
  // holds the first index of its lanes' minimum).
  const __m512i big = _mm512_set1_epi64(INT64_MAX);
  auto comb = [&](__m512d& ba, __m512i& ia, __m512d bb, __m512i ib) {
    const __mmask8 lt = _mm512_cmp_pd_mask(bb, ba, _CMP_LT_OQ);
    const __mmask8 eq = _mm512_cmp_pd_mask(bb, ba, _CMP_EQ_OQ);
    const __m512i mi =
        _mm512_min_epi64(_mm512_mask_mov_epi64(big, eq, ia), _mm512_mask_mov_epi64(big, eq, ib));
    ia = _mm512_mask_mov_epi64(_mm512_mask_mov_epi64(ia, lt, ib), eq, mi);
    ba = _mm512_mask_mov_pd(ba, lt, bb);
  };
  comb(b0, i0, b1, i1); comb(b2, i2, b3, i3); comb(b0, i0, b2, i2);
  const double m = _mm512_reduce_min_pd(b0);
  *m_out = m;
  if (!(m < kInf)) return -1;
  const __mmask8 eq = _mm512_cmp_pd_mask(b0, _mm512_set1_pd(m), _CMP_EQ_OQ);
  return (int32_t)_mm512_mask_reduce_min_epi64(eq, i0);
}

// The Ward update of row y (ry = D + y * ld) and its mirror into column y in one pass: each
// block of 8 updated values is stored to the row and scattered from the register to the
// column, at the rows of live clusters other than y (rows of dead clusters are never read
// again; (y, y) is row y's own entry). No written entry is read later in the pass: column
// y's rows are live clusters, and row x, the other row read, is dead by now.
__attribute__((target("avx512f"))) void ward_update_avx512(double* D, int64_t ld, double* ry,
                                                           const double* __restrict rx,
                                                           double dxy, double nx, double ny,
                                                           const double* __restrict size,
                                                           const double* __restrict inv,
                                                           int64_t n, int64_t y) {
  const int64_t np = round_up(n, 8);
  const __m512d vnx = _mm512_set1_pd(nx), vny = _mm512_set1_pd(ny), vnxy = _mm512_set1_pd(nx + ny);
  const __m512d vdxy = _mm512_set1_pd(dxy), one = _mm512_set1_pd(1.0), zero = _mm512_setzero_pd();
  const __m512i rows = _mm512_setr_epi64(0, ld, 2 * ld, 3 * ld, 4 * ld, 5 * ld, 6 * ld, 7 * ld);
  for (int64_t i = 0; i < np; i += 8) {
    const __m512d ni = _mm512_loadu_pd(size + i);
    __mmask8 act = _mm512_cmp_pd_mask(ni, zero, _CMP_NEQ_UQ);
    if (y >= i && y < i + 8) act &= (__mmask8)~(1u << (y - i));
    if (!act) continue;
    // t = 1 / (nx + ny + ni) from the table of exact reciprocals (same bits as dividing)
    const __m256i tot = _mm512_cvttpd_epi32(_mm512_add_pd(vnxy, ni));
    const __m512d t = _mm512_mask_i32gather_pd(one, act, tot, inv, 8);
    const __m512d dxi = _mm512_loadu_pd(rx + i), dyi = _mm512_loadu_pd(ry + i);
    __m512d a = _mm512_mul_pd(_mm512_mul_pd(_mm512_mul_pd(_mm512_add_pd(ni, vnx), t), dxi), dxi);
    __m512d b = _mm512_mul_pd(_mm512_mul_pd(_mm512_mul_pd(_mm512_add_pd(ni, vny), t), dyi), dyi);
    __m512d c = _mm512_mul_pd(_mm512_mul_pd(_mm512_mul_pd(ni, t), vdxy), vdxy);
    __m512d r = _mm512_sub_pd(_mm512_add_pd(a, b), c);
    r = _mm512_mask_mov_pd(r, _mm512_cmp_pd_mask(r, zero, _CMP_LT_OQ), zero);
    const __m512d out = _mm512_sqrt_pd(r);
    _mm512_mask_storeu_pd(ry + i, act, out);
    _mm512_mask_i64scatter_pd(D + y, act, _mm512_add_epi64(rows, _mm512_set1_epi64(i * ld)), out, 8);
  }
}

__attribute__((target("avx2"))) int32_t argmin_avx2(const double* row, const double* size,
                                                    int64_t n, double* m_out) {
  const __m256d zero = _mm256_setzero_pd();
  const int64_t np = round_up(n, 8);
  __m256d best0 = _mm256_set1_pd(kInf), best1 = best0;
  __m256d bidx0 = _mm256_set1_pd(-1.0), bidx1 = bidx0;  // indices < 2^31 are exact as doubles
  __m256d idx0 = _mm256_setr_pd(0, 1, 2, 3), idx1 = _mm256_setr_pd(4, 5, 6, 7);
  const __m256d step = _mm256_set1_pd(8.0);
  for (int64_t i = 0; i < np; i += 8) {
    const __m256d v0 = _mm256_loadu_pd(row + i), v1 = _mm256_loadu_pd(row + i + 4);
    const __m256d lt0 = _mm256_and_pd(_mm256_cmp_pd(v0, best0, _CMP_LT_OQ),
                                      _mm256_cmp_pd(_mm256_loadu_pd(size + i), zero, _CMP_NEQ_UQ));
    const __m256d lt1 = _mm256_and_pd(_mm256_cmp_pd(v1, best1, _CMP_LT_OQ),
                                      _mm256_cmp_pd(_mm256_loadu_pd(size + i + 4), zero, _CMP_NEQ_UQ));
    best0 = _mm256_blendv_pd(best0, v0, lt0);
    best1 = _mm256_blendv_pd(best1, v1, lt1);
    bidx0 = _mm256_blendv_pd(bidx0, idx0, lt0);
    bidx1 = _mm256_blendv_pd(bidx1, idx1, lt1);
    idx0 = _mm256_add_pd(idx0, step);
    idx1 = _mm256_add_pd(idx1, step);
  }
  alignas(32) double b[8], ix[8];
  _mm256_store_pd(b, best0);
  _mm256_store_pd(b + 4, best1);
  _mm256_store_pd(ix, bidx0);
  _mm256_store_pd(ix + 4, bidx1);
  double m = kInf;
  for (int l = 0; l < 8; ++l) m = b[l] < m ? b[l] : m;
  *m_out = m;
  if (!(m < kInf)) return -1;
  double first = kInf;
  for (int l = 0; l < 8; ++l)
    if (b[l] == m && ix[l] < first) first = ix[l];
  return (int32_t)first;
}

// ward_update and mirror_column in one pass: each updated value goes to row y and, from
// the register, to column y (every row below n, as mirror_column's portable loop). Row y
// and column y share the entry (y, y), written twice with the same value, so neither
// pointer is restrict.
__attribute__((target("avx2"))) void ward_update_mirror_avx2(double* D, int64_t ld, double* ry,
                                                             const double* __restrict rx, double dxy,
                                                             double nx, double ny,
                                                             const double* __restrict size, int64_t n,
                                                             int64_t y) {
  const int64_t np = round_up(n, 4);
  double* col = D + y;
  const __m256d vnx = _mm256_set1_pd(nx), vny = _mm256_set1_pd(ny), vnxy = _mm256_set1_pd(nx + ny);
  const __m256d vdxy = _mm256_set1_pd(dxy), zero = _mm256_setzero_pd();
  for (int64_t i = 0; i < np; i += 4) {
    const __m256d ni = _mm256_loadu_pd(size + i);
    // keep the old value where the cluster is inactive or is y itself
    __m256d keep = _mm256_cmp_pd(ni, zero, _CMP_EQ_OQ);
    if (y >= i && y < i + 4) {
      alignas(32) double sel[4] = {0, 0, 0, 0};
      std::memset(&sel[y - i], 0xff, sizeof(double));
      keep = _mm256_or_pd(keep, _mm256_load_pd(sel));
    }
    // t divided out: the table's value (a gather from it is slower on the AVX2 machines
    // measured); kept lanes compute garbage that the blend below drops
    const __m256d t = _mm256_div_pd(_mm256_set1_pd(1.0), _mm256_add_pd(vnxy, ni));
    const __m256d dxi = _mm256_loadu_pd(rx + i), dyi = _mm256_loadu_pd(ry + i);
    __m256d a = _mm256_mul_pd(_mm256_mul_pd(_mm256_mul_pd(_mm256_add_pd(ni, vnx), t), dxi), dxi);
    __m256d b = _mm256_mul_pd(_mm256_mul_pd(_mm256_mul_pd(_mm256_add_pd(ni, vny), t), dyi), dyi);
    __m256d c = _mm256_mul_pd(_mm256_mul_pd(_mm256_mul_pd(ni, t), vdxy), vdxy);
    __m256d r = _mm256_sub_pd(_mm256_add_pd(a, b), c);
    r = _mm256_blendv_pd(r, zero, _mm256_cmp_pd(r, zero, _CMP_LT_OQ));
    const __m256d out = _mm256_blendv_pd(_mm256_sqrt_pd(r), dyi, keep);
    _mm256_storeu_pd(ry + i, out);
    if (i + 4 <= n) {
      const __m128d lo = _mm256_castpd256_pd128(out), hi = _mm256_extractf128_pd(out, 1);
      _mm_storel_pd(col + (i + 0) * ld, lo);
      _mm_storeh_pd(col + (i + 1) * ld, lo);
      _mm_storel_pd(col + (i + 2) * ld, hi);
      _mm_storeh_pd(col + (i + 3) * ld, hi);
    } else {
      for (int64_t l = i; l < n; ++l) col[l * ld] = ry[l];
    }
  }
}
#endif

// One row of the compaction: dst[c] = src[keep[c]] for c < a (the live columns, keep
// increasing), then +inf up to ld2. dst may share memory with src at a lower or equal
// address: each element is read before any write reaches it.
void compact_row_scalar(const double* src, double* dst, const int64_t* keep, int64_t a, int64_t ld2) {
  for (int64_t c = 0; c < a; ++c) dst[c] = src[keep[c]];
  for (int64_t c = a; c < ld2; ++c) dst[c] = kInf;
}

#ifdef LATEINT_POOL_X86
// The live columns of each block of 8 (size != 0) packed down with a compress: the same
// values in the same order as the scalar loop. Writes only the packed lanes, so nothing
// past column a - 1 is written before the +inf fill.
__attribute__((target("avx512f"))) void compact_row_avx512(const double* src, double* dst,
                                                           const double* size, int64_t m,
                                                           int64_t a, int64_t ld2) {
  const __m512d zero = _mm512_setzero_pd();
  int64_t pos = 0;
  for (int64_t i = 0; i < m; i += 8) {
    const __mmask8 live = _mm512_cmp_pd_mask(_mm512_loadu_pd(size + i), zero, _CMP_NEQ_UQ);
    if (!live) continue;
    const __m512d v = _mm512_maskz_compress_pd(live, _mm512_loadu_pd(src + i));
    const int cnt = __builtin_popcount((unsigned)live);
    _mm512_mask_storeu_pd(dst + pos, (__mmask8)((1u << cnt) - 1), v);
    pos += cnt;
  }
  for (int64_t c = a; c < ld2; ++c) dst[c] = kInf;
}
#endif

void compact_row(const double* src, double* dst, const int64_t* keep, const double* size, int64_t m,
                 int64_t a, int64_t ld2, Isa isa) {
#ifdef LATEINT_POOL_X86
  if (isa >= Isa::Avx512) return compact_row_avx512(src, dst, size, m, a, ld2);
#endif
  (void)size;
  (void)m;
  (void)isa;
  compact_row_scalar(src, dst, keep, a, ld2);
}

int32_t row_argmin(const double* row, const double* size, int64_t n, Isa isa, double* m) {
#ifdef LATEINT_POOL_X86
  if (isa >= Isa::Avx512) return argmin_avx512(row, size, n, m);
  if (isa == Isa::Avx2) return argmin_avx2(row, size, n, m);
#endif
  (void)isa;
  return argmin_scalar(row, size, n, m);
}

// Mirror row y into column y (the matrix stays symmetric).
void mirror_column(double* D, int64_t ld, int64_t y, const double* ry, int64_t n) {
  // Branch-free: rows of dead clusters are never read again, so writing them too is
  // harmless (ry[y] stays +inf; scans skip dead columns).
  for (int64_t i = 0; i < n; ++i) D[i * ld + y] = ry[i];
}

// The Ward update of row y (= D + y * ld) from row x, then row y mirrored into column y.
void ward_update(double* D, int64_t ld, double* ry, const double* rx, double dxy, double nx, double ny,
                 const double* size, const double* inv, int64_t n, int64_t y, Isa isa) {
#ifdef LATEINT_POOL_X86
  if (isa == Isa::Avx2) return ward_update_mirror_avx2(D, ld, ry, rx, dxy, nx, ny, size, n, y);
  if (isa >= Isa::Avx512) return ward_update_avx512(D, ld, ry, rx, dxy, nx, ny, size, inv, n, y);
#endif
  ward_update_scalar(ry, rx, dxy, nx, ny, size, inv, n, y);
  mirror_column(D, ld, y, ry, n);
}

}  // namespace

void ward_nn_chain(double* D, int64_t n, int64_t ld, int32_t* mx, int32_t* my, double* mdist,
                   PoolScratch& s, Isa isa) {
  // Sizes as doubles (exact for any realistic n), padded with 0 = inactive.
  s.size.assign(round_up(n, 8), 0.0);
  std::fill(s.size.begin(), s.size.begin() + n, 1.0);
  grow(s.chain, n);
  grow(s.orig, n);  // slot -> original observation (the matrix is compacted as clusters merge)
  grow(s.cid, n);   // slot -> chain-order id of the cluster it holds
  grow(s.cx, n);
  grow(s.cy, n);
  grow(s.csz, n);
  double* size = s.size.data();
  int32_t* chain = s.chain.data();
  int32_t* orig = s.orig.data();
  int32_t* cid = s.cid.data();
  int32_t* cx = s.cx.data();
  int32_t* cy = s.cy.data();
  double* csz = s.csz.data();
  std::iota(orig, orig + n, 0);
  std::iota(cid, cid + n, 0);
  // Exact reciprocals 1/s of every cluster-size sum the update can meet (s <= n); padded
  // and dead lanes index entry 0..n as well.
  grow(s.inv, n + 1);
  double* inv = s.inv.data();
  inv[0] = 0.0;
  for (int64_t v = 1; v <= n; ++v) inv[v] = 1.0 / (double)v;
  int64_t m = n, active = n;  // slots in the matrix, live clusters
  int32_t x = 0, y = 0;       // y persists across steps, as in scipy
  int64_t len = 0;
  const char* pf = static_cast<const char*>(s.prefetch);
  const int64_t pf_lines = pf ? (s.prefetch_bytes + 63) / 64 : 0;
  const int64_t pf_step = n > 1 ? (pf_lines + n - 2) / (n - 1) : 0;  // lines per merge
  for (int64_t k = 0; k + 1 < n; ++k) {
#ifdef LATEINT_POOL_X86
    for (int64_t l = k * pf_step, le = std::min(pf_lines, l + pf_step); l < le; ++l)
      _mm_prefetch(pf + l * 64, _MM_HINT_T1);
#endif
    if (active * 2 <= m && m > 64) {
      // Drop the dead slots: rows/columns of live clusters move up in order (a monotone
      // renumbering keeps scipy's lowest-index tie-breaking). In place: every element moves
      // to a lower address and is read before anything overwrites it.
      grow(s.keep, m);
      s.remap.assign(m, -1);
      int64_t* keep = s.keep.data();
      int32_t* remap = s.remap.data();
      int64_t a = 0;
      for (int64_t i = 0; i < m; ++i)
        if (size[i] > 0) {
          keep[a] = i;
          remap[i] = (int32_t)a++;
        }
      const int64_t ld2 = row_stride(a);
      for (int64_t r = 0; r < a; ++r) compact_row(D + keep[r] * ld, D + r * ld2, keep, size, m, a, ld2, isa);
      for (int64_t r = 0; r < a; ++r) {
        orig[r] = orig[keep[r]];
        cid[r] = cid[keep[r]];
        size[r] = size[keep[r]];
      }
      for (int64_t r = a; r < round_up(m, 8); ++r) size[r] = 0.0;
      for (int64_t c = 0; c < len; ++c) chain[c] = remap[chain[c]];
      y = remap[y] >= 0 ? remap[y] : 0;  // (y is only read again in degenerate cases)
      m = a;
      ld = ld2;
    }
    if (len == 0) {
      len = 1;
      for (int64_t i = 0; i < m; ++i)
        if (size[i] > 0) {
          chain[0] = (int32_t)i;
          break;
        }
    }
    double cur;
    for (;;) {
      x = chain[len - 1];
      const double* row = D + x * ld;
      double mn;
      const int32_t im = row_argmin(row, size, m, isa, &mn);
      if (len > 1) {
        const int32_t prev = chain[len - 2];
        cur = row[prev];
        y = prev;
        if (mn < cur) {  // a strictly closer cluster than the previous chain link
          cur = mn;
          y = im;
        }
        if (y == prev) break;
      } else {
        cur = mn;
        if (im >= 0) y = im;
      }
      chain[len++] = y;
    }
    len -= 2;
    if (x > y) std::swap(x, y);
    const double nx = size[x], ny = size[y];
    mx[k] = orig[x];
    my[k] = orig[y];
    mdist[k] = cur;
    cx[k] = cid[x];
    cy[k] = cid[y];
    csz[k] = nx + ny;
    cid[y] = (int32_t)(n + k);
    size[x] = 0.0;
    size[y] = nx + ny;
    --active;
    double* ry = D + y * ld;
    ward_update(D, ld, ry, D + x * ld, cur, nx, ny, size, inv, m, y, isa);
  }
}

namespace {
#ifdef LATEINT_POOL_X86
// Stable insertion sort of keys[0..m) carrying idx along, eight keys per step: the window of
// the eight sorted keys before the insertion point moves up by one where it is greater
// than the key (a masked store: the greater ones are the window's top lanes), and the key
// lands below them. keys[-8..-1] must be 0, below every key, so the walk stops there;
// idx[-8..-1] must be readable.
__attribute__((target("avx512f,avx512vl"))) void insertion_sort_avx512(uint64_t* keys,
                                                                       int32_t* idx, int64_t m) {
  for (int64_t k = 1; k < m; ++k) {
    const uint64_t v = keys[k];
    const int32_t vi = idx[k];
    const __m512i vv = _mm512_set1_epi64((long long)v);
    int64_t j = k;
    for (;;) {
      const __m512i z = _mm512_loadu_si512(keys + j - 8);
      const __m256i zi = _mm256_loadu_si256((const __m256i*)(idx + j - 8));
      const __mmask8 gt = _mm512_cmpgt_epu64_mask(z, vv);
      _mm512_mask_storeu_epi64(keys + j - 7, gt, z);
      _mm256_mask_storeu_epi32(idx + j - 7, gt, zi);
      if (gt != 0xff) {
        j -= __builtin_popcount(gt);
        break;
      }
      j -= 8;
    }
    keys[j] = v;
    idx[j] = vi;
  }
}
#endif

// order[r] = the merge at row r of scipy's linkage: numpy's argsort(kind="mergesort") of the
// distances -- stable, NaN after every number. Keys are the distance's bits mapped to an
// unsigned order (-0 and +0 equal, every NaN last; never 0), sorted by insertion with a
// strict comparison (stable). The chain finds merges roughly in order (15 places of
// insertion per merge on the benchmark corpus); its worst case, O(m^2), stays below the
// chain's own O(n^2).
void sort_keys_of(const double* mdist, int64_t m, uint64_t* keys, int32_t* idx) {
  for (int64_t k = 0; k < m; ++k) {
    const double d = mdist[k] == 0.0 ? 0.0 : mdist[k];
    uint64_t b;
    std::memcpy(&b, &d, sizeof b);
    b = (b >> 63) ? ~b : (b | (uint64_t(1) << 63));
    if (std::isnan(d)) b = ~uint64_t(0);
    keys[k] = b;
    idx[k] = (int32_t)k;
  }
}

void sort_merges(const double* mdist, int64_t m, int32_t* order, PoolScratch& s) {
  grow(s.skeys, m + 8);
  grow(s.sidx, m + 8);
  uint64_t* keys = s.skeys.data() + 8;
  std::fill(keys - 8, keys, uint64_t(0));
#ifdef LATEINT_POOL_X86
  if (isa_for(Family::Pool) >= Isa::Avx512) {
    int32_t* idx = s.sidx.data() + 8;
    std::fill(idx - 8, idx, 0);
    sort_keys_of(mdist, m, keys, idx);
    insertion_sort_avx512(keys, idx, m);
    std::copy(idx, idx + m, order);
    return;
  }
#endif
  sort_keys_of(mdist, m, keys, order);
  for (int64_t k = 1; k < m; ++k) {
    const uint64_t v = keys[k];
    const int32_t vi = order[k];
    int64_t j = k;
    for (; j > 0 && keys[j - 1] > v; --j) {
      keys[j] = keys[j - 1];
      order[j] = order[j - 1];
    }
    keys[j] = v;
    order[j] = vi;
  }
}
}  // namespace

namespace {
// scipy's label(): the merges in sorted order (`order`, from sort_merges) relabelled through
// a union-find into Z's rows.
void linkage_union_find(const int32_t* mx, const int32_t* my, const double* mdist, int64_t n,
                        const int32_t* order, double* Z, PoolScratch& s) {
  const int64_t m = n - 1;
  grow(s.uf, 2 * n - 1);
  grow(s.mdist, 2 * n - 1);  // cluster sizes of the union-find nodes
  int32_t* parent = s.uf.data();
  double* csize = s.mdist.data();
  for (int64_t i = 0; i < 2 * n - 1; ++i) {
    parent[i] = (int32_t)i;
    csize[i] = i < n ? 1.0 : 0.0;
  }
  auto find = [&](int32_t v) {
    int32_t r = v;
    while (parent[r] != r) r = parent[r];
    while (parent[v] != r) {  // path compression
      const int32_t nxt = parent[v];
      parent[v] = r;
      v = nxt;
    }
    return r;
  };
  int32_t next = (int32_t)n;
  for (int64_t r = 0; r < m; ++r) {
    const int32_t k = order[r];
    const int32_t a = find(mx[k]), b = find(my[k]);
    double* z = Z + 4 * r;
    z[0] = std::min(a, b);
    z[1] = std::max(a, b);
    z[2] = mdist[k];
    csize[next] = csize[a] + csize[b];
    z[3] = csize[next];
    parent[a] = next;
    parent[b] = next;
    ++next;
  }
}
}  // namespace

void linkage_from_merges(const int32_t* mx, const int32_t* my, const double* mdist, int64_t n,
                         double* Z, PoolScratch& s) {
  const int64_t m = n - 1;
  if (m <= 0) return;
  grow(s.T, m);
  sort_merges(mdist, m, s.T.data(), s);
  linkage_union_find(mx, my, mdist, n, s.T.data(), Z, s);
}

void linkage_from_chain(const int32_t* mx, const int32_t* my, const double* mdist, int64_t n,
                        double* Z, PoolScratch& s) {
  const int64_t m = n - 1;
  if (m <= 0) return;
  grow(s.T, m);
  grow(s.pos, m);
  int32_t* order = s.T.data();
  int32_t* pos = s.pos.data();
  sort_merges(mdist, m, order, s);
  for (int64_t r = 0; r < m; ++r) pos[order[r]] = (int32_t)r;
  // scipy's union-find finds, for merge k at row pos[k], the clusters merge k joined -- the
  // node of row pos[j] for a cluster formed by merge j -- exactly when every such j has an
  // earlier row than k.
  const int32_t* cx = s.cx.data();
  const int32_t* cy = s.cy.data();
  bool tree_order = true;
  for (int64_t k = 0; k < m; ++k) {
    const int32_t a = cx[k], b = cy[k];
    tree_order &= (a < n || pos[a - n] < pos[k]) & (b < n || pos[b - n] < pos[k]);
  }
  if (!tree_order) return linkage_union_find(mx, my, mdist, n, order, Z, s);
  for (int64_t r = 0; r < m; ++r) {
    const int32_t k = order[r];
    const int32_t a = cx[k] < n ? cx[k] : (int32_t)n + pos[cx[k] - n];
    const int32_t b = cy[k] < n ? cy[k] : (int32_t)n + pos[cy[k] - n];
    double* z = Z + 4 * r;
    z[0] = std::min(a, b);
    z[1] = std::max(a, b);
    z[2] = mdist[k];
    z[3] = s.csz[k];
  }
}

int64_t fcluster_maxclust(const double* Z, int64_t n, int64_t max_nc, int32_t* T,
                          PoolScratch& s) {
  if (max_nc >= n) {
    for (int64_t i = 0; i < n; ++i) T[i] = (int32_t)(i + 1);
    return n;
  }
  const int64_t m = n - 1;
  // Largest merge distance in each subtree (scipy's get_max_dist_for_each_cluster);
  // children are always earlier rows of Z.
  grow(s.MD, m);
  double* MD = s.MD.data();
  for (int64_t r = 0; r < m; ++r) {
    double v = Z[4 * r + 2];
    const int64_t l = (int64_t)Z[4 * r], rc = (int64_t)Z[4 * r + 1];
    if (l >= n && MD[l - n] > v) v = MD[l - n];
    if (rc >= n && MD[rc - n] > v) v = MD[rc - n];
    MD[r] = v;
  }
  // Smallest threshold MD[i] (binary search over rows, as scipy) giving at most max_nc
  // clusters. With MD monotone along the tree, cutting at `thresh` leaves
  // n - #{nodes with MD <= thresh} clusters. When MD is non-decreasing over the rows (Z
  // sorted by distance, no inversions, no NaN: every tree the linkage functions make) the
  // search's answer is direct: the smallest row whose MD reaches the (n - max_nc)-th
  // smallest, whose value is MD[n - max_nc - 1]. Otherwise the search, counting by a scan.
  bool sorted = m > 0 && !std::isnan(MD[0]);
  for (int64_t r = 1; r < m && sorted; ++r) sorted = MD[r] >= MD[r - 1];
  double cutoff;
  if (sorted) {
    cutoff = MD[n - max_nc - 1];
  } else {
    auto n_clusters_at = [&](double thresh) {
      int64_t merged = 0;
      for (int64_t r = 0; r < m; ++r) merged += MD[r] <= thresh;
      return n - merged;
    };
    int64_t lo = -1, hi = n - 1;
    while (hi - lo > 1) {
      const int64_t i = (lo + hi) >> 1;
      if (n_clusters_at(MD[i]) > max_nc)
        lo = i;
      else
        hi = i;
    }
    cutoff = MD[hi];
  }
  // Number the clusters in scipy's traversal order (cluster_monocrit): depth first from the
  // root, left subtree before right; a node whose MD <= cutoff (a cluster: MD never falls
  // going up the tree, so all its descendants are in it) takes the next number when the
  // traversal reaches it; the leaf children of a node above the cut take theirs, left then
  // right, when the traversal leaves that node. Only the nodes above the cut are walked
  // (frames: node, next child to look at); the numbers then flow down the clusters, parents
  // (later rows) before children, to every node below a numbered one (whatever its own MD:
  // a NaN subtree maximum does not reach its parent's).
  grow(s.stack, 2 * n);
  s.uf.assign(2 * n - 1, 0);
  int32_t* stk = s.stack.data();
  int32_t* num = s.uf.data();  // cluster number of each node in a cluster, 0 above the cut
  auto in_cut = [&](int64_t node) { return MD[node - n] <= cutoff; };  // internal nodes
  int64_t nc = 0;
  const int64_t root = 2 * n - 2;
  if (in_cut(root)) {
    num[root] = (int32_t)++nc;
  } else {
    int64_t k = 0;
    stk[0] = (int32_t)root;
    stk[1] = 0;
    while (k >= 0) {
      const int64_t r = stk[2 * k] - n;
      const int32_t c = stk[2 * k + 1];
      if (c < 2) {
        stk[2 * k + 1] = c + 1;
        const int64_t child = (int64_t)Z[4 * r + c];
        if (child >= n) {
          if (in_cut(child)) {
            num[child] = (int32_t)++nc;
          } else {
            ++k;
            stk[2 * k] = (int32_t)child;
            stk[2 * k + 1] = 0;
          }
        }
        continue;
      }
      const int64_t lc = (int64_t)Z[4 * r], rc = (int64_t)Z[4 * r + 1];
      if (lc < n) num[lc] = (int32_t)++nc;
      if (rc < n) num[rc] = (int32_t)++nc;
      --k;
    }
  }
  for (int64_t r = m - 1; r >= 0; --r) {
    const int32_t v = num[n + r];
    if (v == 0) continue;
    num[(int64_t)Z[4 * r]] = v;
    num[(int64_t)Z[4 * r + 1]] = v;
  }
  for (int64_t i = 0; i < n; ++i) T[i] = num[i];
  return nc;
}

namespace {
// dst[k * ldt + i] = src[i * dim + k] in 16 x 16 tiles (contiguous writes), columns n..ldt
// of dst zeroed.
template <typename T>
void transpose_into(const T* src, int64_t n, int64_t dim, T* dst, int64_t ldt) {
  constexpr int64_t B = 16;
  for (int64_t i0 = 0; i0 < n; i0 += B) {
    const int64_t i1 = std::min(i0 + B, n);
    for (int64_t k0 = 0; k0 < dim; k0 += B) {
      const int64_t k1 = std::min(k0 + B, dim);
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t i = i0; i < i1; ++i) dst[k * ldt + i] = src[i * dim + k];
    }
  }
  for (int64_t k = 0; k < dim; ++k) std::fill(dst + k * ldt + n, dst + (k + 1) * ldt, T(0));
}
}  // namespace

namespace {
// One 4 x 8 tile of the row distances of CosineRows: acc[q][c] = sum_k (M[i_q, k] -
// M[k, j0 + c])^2 over every k, in k order, float64, no contraction (this translation unit
// forbids it): the order of scipy pdist's sum for each pair. The 32 sums stay in
// registers for the whole k loop; rows i_q are M's rows (scalars, one per k), columns
// come 8 at a time from row k (M is symmetric, so M[j, k] = M[k, j]).
LATEINT_MULTIVERSION(Family::Pool, void, rows_sq_tile,
                     (const float* __restrict M, int64_t n, int64_t ldm, const int64_t* rows, int64_t j0,
                      double* __restrict out),
                     (M, n, ldm, rows, j0, out), {
  double acc[4][8] = {};
  const float* r0 = M + rows[0] * ldm;
  const float* r1 = M + rows[1] * ldm;
  const float* r2 = M + rows[2] * ldm;
  const float* r3 = M + rows[3] * ldm;
  for (int64_t k = 0; k < n; ++k) {
    const float* __restrict m = M + k * ldm + j0;
    double mv[8];
    for (int c = 0; c < 8; ++c) mv[c] = (double)m[c];
    const double a[4] = {(double)r0[k], (double)r1[k], (double)r2[k], (double)r3[k]};
    for (int q = 0; q < 4; ++q)
      for (int c = 0; c < 8; ++c) {
        const double d = a[q] - mv[c];
        acc[q][c] += d * d;
      }
  }
  for (int q = 0; q < 4; ++q)
    for (int c = 0; c < 8; ++c) out[q * 8 + c] = acc[q][c];
})

// D[i, j] = sqrt(sum_k (M[i, k] - M[j, k])^2) for the symmetric float32 M [n, n] (stride
// ldm >= round_up(n, 8), zero past n): tiles of 4 rows x 8 columns over the upper
// triangle, each summed in k order per pair (scipy pdist's order).
void rows_euclidean(const float* M, int64_t n, int64_t ldm, double* D, int64_t ld) {
  double out[32];
  for (int64_t i0 = 0; i0 < n; i0 += 4) {
    int64_t rows[4];
    for (int q = 0; q < 4; ++q) rows[q] = std::min(i0 + q, n - 1);
    for (int64_t j0 = (i0 + 1) / 8 * 8; j0 < n; j0 += 8) {
      rows_sq_tile(M, n, ldm, rows, j0, out);
      for (int q = 0; q < 4 && i0 + q < n; ++q) {
        const int64_t i = i0 + q;
        for (int c = 0; c < 8; ++c) {
          const int64_t j = j0 + c;
          if (j > i && j < n) D[i * ld + j] = D[j * ld + i] = std::sqrt(out[q * 8 + c]);
        }
      }
    }
  }
}
// The float32 paths' last steps on D (double(1 - <a, b>) off the diagonal): the clamp of
// CosineClamped (unless the tiles `clamped` already), the row distances of CosineRows (M's
// diagonal from the Gram matrix G when given, else 1 - <a, a> as one FMA chain like the
// kernels'), then +inf on the diagonal and the padding.
void finish_f32_distances(const float* xf, int64_t n, int64_t dim, const float* G, int64_t ldg,
                          PoolDistance dist, double* D, int64_t ld, PoolScratch& s, bool clamped) {
  if (dist == PoolDistance::CosineClamped && !clamped) {
    for (int64_t i = 0; i < n; ++i) {
      double* row = D + i * ld;
      for (int64_t j = 0; j < n; ++j) row[j] = std::min(std::max(row[j], 0.0), 2.0);
    }
  } else if (dist == PoolDistance::CosineRows) {
    const int64_t ldm = round_up(n, 16);
    grow(s.mrow, n * ldm);
    float* M = s.mrow.data();
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) M[i * ldm + j] = (float)D[i * ld + j];
      float dot = 0.0f;
      if (G != nullptr) {
        dot = G[i * ldg + i];
      } else {
        for (int64_t k = 0; k < dim; ++k) dot = std::fma(xf[i * dim + k], xf[i * dim + k], dot);
      }
      M[i * ldm + i] = 1.0f - dot;
      for (int64_t j = n; j < ldm; ++j) M[i * ldm + j] = 0.0f;
    }
    rows_euclidean(M, n, ldm, D, ld);
  }
  for (int64_t i = 0; i < n; ++i) {
    double* row = D + i * ld;
    row[i] = kInf;
    for (int64_t j = n; j < ld; ++j) row[j] = kInf;
  }
}
}  // namespace

void pool_distances_from_gram(const float* G, int64_t n, int64_t ldg, PoolDistance dist, double* D,
                              int64_t ld, PoolScratch& s) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) D[i * ld + j] = (double)(1.0f - G[i * ldg + j]);
  finish_f32_distances(nullptr, n, 0, G, ldg, dist, D, ld, s, /*clamped=*/false);
}

void pool_distances(const void* x, DType dt, int64_t n, int64_t dim, PoolDistance dist,
                    double* D, int64_t ld, PoolScratch& s, Isa isa) {
  const int64_t ldt = round_up(n, 32);
  const bool wide = dist == PoolDistance::Euclidean || (dt == DType::F64 && dist == PoolDistance::Cosine);
  if (wide) {
    // float64 Gram: float64 inputs, and the Euclidean variant (2 - 2<a,b> cancels for close
    // tokens; float32 would leave ~3e-4 of error in their distance).
    grow(s.xd, n * dim);
    double* xd = s.xd.data();
    for (int64_t i = 0; i < n; ++i) {
      double* r = xd + i * dim;
      for (int64_t k = 0; k < dim; ++k) {
        r[k] = load_as_f64(dt, x, i * dim + k);
      }
      if (dist == PoolDistance::Euclidean) {
        double ss = 0;
        for (int64_t k = 0; k < dim; ++k) ss += r[k] * r[k];
        const double inv = 1.0 / std::max(std::sqrt(ss), 1e-12);
        for (int64_t k = 0; k < dim; ++k) r[k] *= inv;
      }
    }
    grow(s.xtd, dim * ldt);
    transpose_into(xd, n, dim, s.xtd.data(), ldt);
    grow(s.gd, n * ldt);
    detail::gram_upper_f64(xd, n, dim, s.xtd.data(), ldt, s.gd.data(), ldt);
  } else {
    const float* xf;
    if (dt == DType::F32) {
      xf = (const float*)x;
    } else if (dt == DType::F64) {
      grow(s.xf, n * dim);
      const double* h = (const double*)x;
      for (int64_t i = 0; i < n * dim; ++i) s.xf[i] = (float)h[i];
      xf = s.xf.data();
    } else {
      grow(s.xf, n * dim);
      const uint16_t* h = (const uint16_t*)x;
      for (int64_t i = 0; i < n * dim; ++i)
        s.xf[i] = dt == DType::F16 ? f16_to_f32(h[i]) : bf16_to_f32(h[i]);
      xf = s.xf.data();
    }
    // PyLate's distance, float32 1 - cos (clamped to [0, 2] for CosineClamped), written by
    // the Gram kernel itself: AVX-512 the panel kernel, AVX2 the 4 x 16 FMA tiles, else the
    // portable tiles; all one FMA chain per entry, so the same bits (the tests compare them).
    const bool clamp = dist == PoolDistance::CosineClamped;
#if defined(__x86_64__) && defined(__GNUC__)
    if (isa >= Isa::Avx512) {
      grow(s.xtf, dim * round_up(n, 32));
      detail::pack_b16_f32(xf, n, dim, s.xtf.data(), true);
      detail::cosine_dist_f32_panels(n, dim, s.xtf.data(), D, ld, clamp);
    } else
#endif
    {
      const int64_t ldt2 = round_up(n, 8) + 32;
      grow(s.xtf, dim * ldt2);
      detail::transpose_f32(xf, n, dim, s.xtf.data(), ldt2, isa >= Isa::Avx2);
#if defined(__x86_64__) && defined(__GNUC__)
      if (isa >= Isa::Avx2)
        detail::cosine_dist_f32_avx2fma(n, dim, s.xtf.data(), ldt2, D, ld, clamp);
      else
#endif
        detail::cosine_dist_f32(n, dim, s.xtf.data(), ldt2, D, ld, clamp);
    }
    finish_f32_distances(xf, n, dim, nullptr, 0, dist, D, ld, s, /*clamped=*/true);
    return;
  }
  // float64 paths: upper triangle row by row (contiguous), then mirrored in 16 x 16 tiles.
  for (int64_t i = 0; i < n; ++i) {
    double* row = D + i * ld;
    row[i] = kInf;
    for (int64_t j = n; j < ld; ++j) row[j] = kInf;
    if (dist == PoolDistance::Euclidean) {
      const double* g = s.gd.data() + i * ldt;
      for (int64_t j = i + 1; j < n; ++j) {
        const double sq = 2.0 - 2.0 * g[j];
        row[j] = std::sqrt(sq > 0.0 ? sq : 0.0);
      }
    } else {
      const double* g = s.gd.data() + i * ldt;
      for (int64_t j = i + 1; j < n; ++j) row[j] = 1.0 - g[j];
    }
  }
  constexpr int64_t B = 16;
  for (int64_t i0 = 0; i0 < n; i0 += B)
    for (int64_t j0 = i0; j0 < n; j0 += B)
      for (int64_t j = j0; j < std::min(j0 + B, n); ++j)
        for (int64_t i = i0; i < std::min({i0 + B, n, j}); ++i) D[j * ld + i] = D[i * ld + j];
}

namespace {
// The cut of the linkage in s.Z into at most n_clusters: labels[i] in 0..nc-1, returns nc.
int64_t labels_of_cut(int64_t n, int64_t n_clusters, int32_t* labels, PoolScratch& s) {
  const int64_t nc = fcluster_maxclust(s.Z.data(), n, n_clusters, labels, s);
  for (int64_t i = 0; i < n; ++i) labels[i] -= 1;
  return nc;
}
}  // namespace

int64_t pool_labels(const void* x, DType dt, int64_t n, int64_t dim, double pool_factor,
                    PoolDistance dist, int32_t* labels, PoolScratch& s, Isa isa, const float* gram,
                    int64_t ldg) {
  const int64_t k = pool_target(n, pool_factor);
  if (k >= n) {
    for (int64_t i = 0; i < n; ++i) labels[i] = (int32_t)i;
    return n;
  }
  const int64_t ld = row_stride(n);
  grow(s.D, n * ld);
  if (gram != nullptr) pool_distances_from_gram(gram, n, ldg, dist, s.D.data(), ld, s);
  else pool_distances(x, dt, n, dim, dist, s.D.data(), ld, s, isa);
  grow(s.mx, n);
  grow(s.my, n);
  std::vector<double>& md = s.merge_d;
  grow(md, n);
  ward_nn_chain(s.D.data(), n, ld, s.mx.data(), s.my.data(), md.data(), s, isa);
  grow(s.Z, 4 * n);
  linkage_from_chain(s.mx.data(), s.my.data(), md.data(), n, s.Z.data(), s);
  return labels_of_cut(n, k, labels, s);
}

int64_t pool_labels_from_merges(const int32_t* mx, const int32_t* my, const double* mdist,
                                int64_t n, int64_t n_clusters, int32_t* labels, PoolScratch& s) {
  grow(s.Z, 4 * n);
  linkage_from_merges(mx, my, mdist, n, s.Z.data(), s);
  return labels_of_cut(n, n_clusters, labels, s);
}

}  // namespace lateint
