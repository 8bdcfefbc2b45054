// kmeans_assign with an int8 screen (AVX512-VNNI), exact float32 answers.
//
// The float32 kernel (kmeans_core.cpp) spends its time in dim multiply-adds per (row,
// centroid). `vpdpbusd` does 64 int8 multiply-adds per instruction with exact int32 sums,
// several times the float32 FMA rate (bench/RESULTS.md). So every (row, centroid) is
// first scored approximately on int8 codes (rows: per-row scale; centroids: per-centroid
// scale), and only the centroids whose approximate score lies within a proven error bound
// of the row's best approximate score are scored again in float32, in exactly the order
// of operations of the float32 kernel. The bound (below) guarantees that the float32
// kernel's answer is among them, so codes and scores are bit-identical to the float32
// kernel's; a row whose candidates do not fit the list (near-ties by the hundred, or a
// degenerate row) is handed back to the float32 kernel.
//
// Bound. Row x, its int8 codes xq with x^ = xq / sx (sx = 127 / max|x|), centroid c with
// c^ = cq / sc. |x.c - x^.c^| <= |x - x^| |c| + |x^| |c - c^| =: E (Cauchy-Schwarz), with
// |c| <= cmax and |c - c^| <= ecmax over all centroids. float32 dot products of length d
// are within g = d * 2^-24 * (1 + 1e-3) * |x| |c| of the real ones (FMA chain), and the
// approximate score's own float rounding is within 4 * 2^-24 * |x^| |c^|. If j* is the
// float32 argmax and jm the approximate one, approx(j*) >= approx(jm) - 2 (E + g + r):
// keeping every centroid within that margin of the approximate max keeps j* (and every
// centroid tied with it, so the lowest index among ties is found as before).
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kmeans_core.h"

// The ISA goes on each function, not on the file (`#pragma GCC target`): a file-wide target
// would also apply to the std:: templates instantiated here (std::vector's methods), and
// the linker may keep those AVX-512 copies for the whole library, which would then fault
// on CPUs without AVX-512.
#define LATEINT_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,avx2")))

namespace lateint {
namespace detail {

namespace {

constexpr int R = 8;          // rows per register tile (tile_8x2)
constexpr int V = 2;          // 16-centroid vectors per register tile (tile_8x2)
constexpr int64_t KC = 1536;  // centroids per chunk (KC * dim bytes of int8 codes stay in L2)
constexpr int CAP = 256;      // candidates kept per row before the row falls back

// acc += the int8 dot products of b (unsigned bytes) and c (signed bytes), in place. Inline
// assembly because GCC routes _mm512_dpbusd_epi32's accumulator through a scratch register
// (two extra moves per instruction, and spills at this tile size).
LATEINT_VNNI inline void dpbusd(__m512i& acc, __m512i b, __m512i c) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(b), "v"(c));
}

inline int32_t dword_at(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// tile[q][16 v + l] = corr[16 v + l] + sum_t xr[q][t] * codes of centroid 16 v + l, for
// 8 rows x 2 vectors of 16 centroids (cq: the first vector's steps, the second follows).
LATEINT_VNNI inline void tile_8x2(const uint8_t* const* xr, const __m512i* cq, int64_t steps, const int32_t* corr,
                     int32_t (*tile)[32]) {
  const __m512i i0 = _mm512_loadu_si512(corr), i1 = _mm512_loadu_si512(corr + 16);
  __m512i a00 = i0, a01 = i1, a10 = i0, a11 = i1, a20 = i0, a21 = i1, a30 = i0, a31 = i1;
  __m512i a40 = i0, a41 = i1, a50 = i0, a51 = i1, a60 = i0, a61 = i1, a70 = i0, a71 = i1;
  const uint8_t *x0 = xr[0], *x1 = xr[1], *x2 = xr[2], *x3 = xr[3], *x4 = xr[4], *x5 = xr[5], *x6 = xr[6],
                *x7 = xr[7];
  for (int64_t st = 0; st < steps; ++st) {
    const __m512i c0 = _mm512_loadu_si512(cq + st), c1 = _mm512_loadu_si512(cq + steps + st);
#define LATEINT_ROW(x, a0, a1)                                  \
  {                                                             \
    const __m512i b = _mm512_set1_epi32(dword_at(x + 4 * st)); \
    dpbusd(a0, b, c0);                                          \
    dpbusd(a1, b, c1);                                          \
  }
    LATEINT_ROW(x0, a00, a01) LATEINT_ROW(x1, a10, a11) LATEINT_ROW(x2, a20, a21) LATEINT_ROW(x3, a30, a31)
    LATEINT_ROW(x4, a40, a41) LATEINT_ROW(x5, a50, a51) LATEINT_ROW(x6, a60, a61) LATEINT_ROW(x7, a70, a71)
#undef LATEINT_ROW
  }
  _mm512_store_si512(tile[0], a00); _mm512_store_si512(tile[0] + 16, a01);
  _mm512_store_si512(tile[1], a10); _mm512_store_si512(tile[1] + 16, a11);
  _mm512_store_si512(tile[2], a20); _mm512_store_si512(tile[2] + 16, a21);
  _mm512_store_si512(tile[3], a30); _mm512_store_si512(tile[3] + 16, a31);
  _mm512_store_si512(tile[4], a40); _mm512_store_si512(tile[4] + 16, a41);
  _mm512_store_si512(tile[5], a50); _mm512_store_si512(tile[5] + 16, a51);
  _mm512_store_si512(tile[6], a60); _mm512_store_si512(tile[6] + 16, a61);
  _mm512_store_si512(tile[7], a70); _mm512_store_si512(tile[7] + 16, a71);
}

}  // namespace

void pack_centroids_vnni(const float* rows, int64_t k, int64_t dim, PackedCentroids* pc) {
  const int64_t d4 = (dim + 3) / 4 * 4, kv = (k + 16 * V - 1) / (16 * V) * (16 * V);
  pc->d4 = d4;
  pc->kv = kv;
  pc->q8.assign(kv * d4, 0);
  pc->corr.assign(kv, 0);
  pc->inv.assign(kv, 0.f);
  double cmax = 0, ecmax = 0;
  for (int64_t j = 0; j < k; ++j) {
    const float* c = rows + j * dim;
    float m = 0.f;
    for (int64_t t = 0; t < dim; ++t) m = std::max(m, std::fabs(c[t]));
    const float s = m > 0.f ? 127.f / m : 1.f;
    double n2 = 0, e2 = 0;
    int32_t sum = 0;
    // layout [j / 16][t / 4][j % 16][t % 4]: one 64-byte vector = 16 centroids x 4 dims
    int8_t* base = pc->q8.data() + (j / 16) * 16 * d4 + (j % 16) * 4;
    for (int64_t t = 0; t < dim; ++t) {
      const int32_t q = (int32_t)std::max(-127.f, std::min(127.f, std::nearbyint(c[t] * s)));
      base[(t / 4) * 64 + (t % 4)] = (int8_t)q;
      sum += q;
      n2 += (double)c[t] * c[t];
      const double e = (double)c[t] - (double)q / (double)s;
      e2 += e * e;
    }
    pc->corr[j] = -128 * sum;  // the rows are stored as xq + 128 (unsigned operand)
    pc->inv[j] = 1.f / s;
    cmax = std::max(cmax, std::sqrt(n2));
    ecmax = std::max(ecmax, std::sqrt(e2));
  }
  pc->cmax = cmax;
  pc->ecmax = ecmax;
}

namespace {

// float32 scores of (row, centroid) pairs: out[p] = <X[row[p]], crow[cen[p]]>, each a
// sequential FMA chain over the dimension from 0 (what the float32 kernel computes per
// lane), 8 independent chains interleaved.
LATEINT_VNNI void rescore_pairs(const float* X, int64_t dim, const float* crow, const int32_t* row, const int32_t* cen,
                   int64_t n, float* out) {
  int64_t p = 0;
  for (; p + 8 <= n; p += 8) {
    const float *x[8], *c[8];
    for (int u = 0; u < 8; ++u) {
      x[u] = X + (int64_t)row[p + u] * dim;
      c[u] = crow + (int64_t)cen[p + u] * dim;
    }
    float a[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int64_t t = 0; t < dim; ++t)
      for (int u = 0; u < 8; ++u) a[u] = std::fma(x[u][t], c[u][t], a[u]);
    for (int u = 0; u < 8; ++u) out[p + u] = a[u];
  }
  for (; p < n; ++p) {
    const float* x = X + (int64_t)row[p] * dim;
    const float* c = crow + (int64_t)cen[p] * dim;
    float a = 0.f;
    for (int64_t t = 0; t < dim; ++t) a = std::fma(x[t], c[t], a);
    out[p] = a;
  }
}

}  // namespace

LATEINT_VNNI void assign_block_vnni(const float* X, int64_t nr, int64_t dim, const PackedCentroids& pc, int32_t* codes,
                       float* scores, std::vector<int64_t>* fallback) {
  const int64_t d4 = pc.d4, kv = pc.kv, k = pc.k, steps = d4 / 4;
  const float ninf = -std::numeric_limits<float>::infinity();
  // rows -> unsigned int8 (xq + 128), the per-row margin in scaled units
  std::vector<uint8_t> Xq((size_t)std::max<int64_t>(nr, R) * d4, 128);
  std::vector<float> margin(nr), rmax(nr, ninf);
  std::vector<char> bad(nr, 0);
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  const float u = std::ldexp(1.f, -23);
  for (int64_t i = 0; i < nr; ++i) {
    const float* x = X + i * dim;
    __m512 mv = _mm512_setzero_ps();
    __mmask16 nan = 0;
    for (int64_t t = 0; t < dim; t += 16) {
      const __mmask16 lm = dim - t >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (dim - t)) - 1);
      const __m512 v = _mm512_maskz_loadu_ps(lm, x + t);
      nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      mv = _mm512_max_ps(mv, _mm512_and_ps(v, absmask));
    }
    const float m = _mm512_reduce_max_ps(mv);
    if (nan || !std::isfinite(m) || !(m > 0.f)) {  // NaN/Inf (the float32 kernel reports it), all-zero
      bad[i] = 1;
      continue;
    }
    const float s = 127.f / m, is = 1.f / s;
    const __m512 sv = _mm512_set1_ps(s), isv = _mm512_set1_ps(is), lo = _mm512_set1_ps(-127.f),
                 hi = _mm512_set1_ps(127.f);
    __m512 n2 = _mm512_setzero_ps(), h2 = _mm512_setzero_ps(), e2 = _mm512_setzero_ps();
    for (int64_t t = 0; t < dim; t += 16) {
      const __mmask16 lm = dim - t >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (dim - t)) - 1);
      const __m512 v = _mm512_maskz_loadu_ps(lm, x + t);
      const __m512 q = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_roundscale_ps(_mm512_mul_ps(v, sv),
                                                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
      const __m512i qi = _mm512_add_epi32(_mm512_cvtps_epi32(q), _mm512_set1_epi32(128));
      _mm512_mask_cvtepi32_storeu_epi8(Xq.data() + i * d4 + t, lm, qi);
      const __m512 h = _mm512_mul_ps(q, isv), e = _mm512_sub_ps(v, h);
      n2 = _mm512_fmadd_ps(v, v, n2);
      h2 = _mm512_fmadd_ps(h, h, h2);
      e2 = _mm512_fmadd_ps(e, e, e2);
    }
    // Upper bounds from float sums: sums of d squares are within d * 2^-23 of their value,
    // and h = q / s, e = x - h are each within 2^-23 |x| of the exact ones (|h| <= |x| + |e|).
    const double infl = 1 + (double)(dim + 2) * u;
    const double nx = std::sqrt(_mm512_reduce_add_ps(n2) * infl);
    const double nh = std::sqrt(_mm512_reduce_add_ps(h2) * infl) + 2 * u * nx;
    const double ne = std::sqrt(_mm512_reduce_add_ps(e2) * infl) + 2 * u * nx;
    const double E = ne * pc.cmax + nh * pc.ecmax;
    const double g = (double)(dim + 4) * std::ldexp(1.0, -24) * 1.001 * nx * pc.cmax;
    const double r = 4 * std::ldexp(1.0, -24) * nh * (pc.cmax + pc.ecmax);
    margin[i] = (float)(2 * (E + g + r) * s * (1 + 1e-5));
  }
  // candidates: (scaled approximate score, centroid) per row, in increasing centroid order
  std::vector<float> cval((size_t)nr * CAP);
  std::vector<int32_t> cidx((size_t)nr * CAP);
  std::vector<int> cnt(nr, 0);
  for (int64_t i = 0; i < nr; ++i)
    if (bad[i]) cnt[i] = -1;
  const __m512i* Q = reinterpret_cast<const __m512i*>(pc.q8.data());
  for (int64_t c0 = 0; c0 < kv; c0 += KC) {
    const int64_t c1 = std::min(kv, c0 + KC);
    for (int64_t i0 = 0; i0 < nr; i0 += R) {
      const uint8_t* xr[R];
      for (int q = 0; q < R; ++q) xr[q] = Xq.data() + std::min<int64_t>(i0 + q, nr - 1) * d4;
      for (int64_t j0 = c0; j0 < c1; j0 += 16 * V) {
        // the register tile, written out: GCC keeps an accumulator array in memory
        alignas(64) int32_t tile[R][16 * V];
        tile_8x2(xr, Q + (j0 / 16) * steps, steps, pc.corr.data() + j0, tile);
        __m512 inv[V];
        __mmask16 valid[V];
        for (int v = 0; v < V; ++v) {
          inv[v] = _mm512_loadu_ps(pc.inv.data() + j0 + 16 * v);
          const int64_t left = k - (j0 + 16 * v);
          valid[v] = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
        }
        for (int q = 0; q < R && i0 + q < nr; ++q) {
          const int64_t i = i0 + q;
          if (cnt[i] < 0) continue;
          __m512 sv[V];
          __m512 mx = _mm512_set1_ps(ninf);
          for (int v = 0; v < V; ++v) {
            sv[v] = _mm512_mask_mul_ps(_mm512_set1_ps(ninf), valid[v],
                                        _mm512_cvtepi32_ps(_mm512_load_si512(tile[q] + 16 * v)), inv[v]);
            mx = _mm512_max_ps(mx, sv[v]);
          }
          const float m = _mm512_reduce_max_ps(mx);
          if (m > rmax[i]) rmax[i] = m;
          const float thr = rmax[i] - margin[i];
          const __m512 tv = _mm512_set1_ps(thr);
          for (int v = 0; v < V; ++v) {
            const __mmask16 keep = _mm512_cmp_ps_mask(sv[v], tv, _CMP_GE_OQ);
            if (!keep) continue;
            int n = cnt[i];
            if (n + 16 > CAP) {  // drop what the risen maximum has left behind
              int w = 0;
              for (int t = 0; t < n; ++t)
                if (cval[i * CAP + t] >= thr) {
                  cval[i * CAP + w] = cval[i * CAP + t];
                  cidx[i * CAP + w] = cidx[i * CAP + t];
                  ++w;
                }
              n = w;
              if (n + 16 > CAP) {  // too many near-ties: the float32 kernel takes the row
                cnt[i] = -1;
                break;
              }
            }
            const __m512i ids = _mm512_add_epi32(_mm512_set1_epi32((int32_t)(j0 + 16 * v)),
                                                 _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
            _mm512_mask_compressstoreu_ps(cval.data() + i * CAP + n, keep, sv[v]);
            _mm512_mask_compressstoreu_epi32(cidx.data() + i * CAP + n, keep, ids);
            cnt[i] = n + __builtin_popcount((unsigned)keep);
          }
        }
      }
    }
  }
  // Survivors of all rows as (row, centroid) pairs, rescored 8 pairs at a time (a single
  // row often keeps fewer than 8 centroids, and one dot product is a latency-bound chain).
  std::vector<int32_t> prow, pcen;
  std::vector<int64_t> first(nr + 1, 0);
  for (int64_t i = 0; i < nr; ++i) {
    first[i] = (int64_t)prow.size();
    if (cnt[i] < 0) continue;
    const float thr = rmax[i] - margin[i];
    for (int t = 0; t < cnt[i]; ++t)
      if (cval[i * CAP + t] >= thr) {
        prow.push_back((int32_t)i);
        pcen.push_back(cidx[i * CAP + t]);
      }
  }
  first[nr] = (int64_t)prow.size();
  std::vector<float> sc(prow.size());
  rescore_pairs(X, dim, pc.rows.data(), prow.data(), pcen.data(), (int64_t)prow.size(), sc.data());
  for (int64_t i = 0; i < nr; ++i) {
    float best = ninf;
    int32_t arg = -1;
    for (int64_t t = first[i]; t < first[i + 1]; ++t)
      if (sc[t] > best) {  // strict: among equal scores the lowest centroid stays
        best = sc[t];
        arg = pcen[t];
      }
    if (cnt[i] < 0 || arg < 0 || !std::isfinite(best)) {
      fallback->push_back(i);
      continue;
    }
    codes[i] = arg;
    scores[i] = best;
  }
}

}  // namespace detail
}  // namespace lateint
#endif
