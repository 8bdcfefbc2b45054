// Token pooling's cluster means (pool_doc_means, see pool_core.h).
#include "pool/pool_core.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace lateint {
namespace {

LATEINT_MULTIVERSION(Family::Pool, void, add_row_f32,
                     (float* __restrict a, const float* __restrict r, int64_t dim), (a, r, dim), {
  for (int64_t k = 0; k < dim; ++k) a[k] += r[k];
})

LATEINT_MULTIVERSION(Family::Pool, void, add_row_f64,
                     (double* __restrict a, const double* __restrict r, int64_t dim), (a, r, dim), {
  for (int64_t k = 0; k < dim; ++k) a[k] += r[k];
})

// dst[k] = sum[k] / count: the mean's division, vectorized for the active level.
LATEINT_MULTIVERSION(Family::Pool, void, div_row_f32,
                     (const float* __restrict sum, float count, float* __restrict dst, int64_t dim),
                     (sum, count, dst, dim), {
  for (int64_t k = 0; k < dim; ++k) dst[k] = sum[k] / count;
})

LATEINT_MULTIVERSION(Family::Pool, void, div_row_f64,
                     (const double* __restrict sum, double count, double* __restrict dst, int64_t dim),
                     (sum, count, dst, dim), {
  for (int64_t k = 0; k < dim; ++k) dst[k] = sum[k] / count;
})

// Storage and accumulation per row type: float32 rows sum in float32, float64 in float64,
// float16 / bfloat16 widen to float32 and round back to nearest even.
template <DType D>
struct Rows;
template <>
struct Rows<DType::F32> {
  using T = float;
  using Acc = float;
  static Acc load(T v) { return v; }
  static T store(float v) { return v; }
};
template <>
struct Rows<DType::F64> {
  using T = double;
  using Acc = double;
  static Acc load(T v) { return v; }
  static T store(double v) { return v; }
};
template <>
struct Rows<DType::F16> {
  using T = uint16_t;
  using Acc = float;
  static Acc load(T v) { return f16_to_f32(v); }
  static T store(float v) { return f32_to_f16(v); }
};
template <>
struct Rows<DType::BF16> {
  using T = uint16_t;
  using Acc = float;
  static Acc load(T v) { return bf16_to_f32(v); }
  static T store(float v) { return f32_to_bf16(v); }
};

void add_row(float* a, const float* r, int64_t dim) { add_row_f32(a, r, dim); }
void add_row(double* a, const double* r, int64_t dim) { add_row_f64(a, r, dim); }
template <DType D>
void add_row_widened(float* a, const uint16_t* r, int64_t dim) {
  for (int64_t k = 0; k < dim; ++k) a[k] += Rows<D>::load(r[k]);
}

std::vector<float>& acc_of(PoolScratch& s, float*) { return s.mean_f; }
std::vector<double>& acc_of(PoolScratch& s, double*) { return s.mean_d; }

template <DType D>
void add_any(typename Rows<D>::Acc* a, const typename Rows<D>::T* r, int64_t dim) {
  if constexpr (std::is_same<typename Rows<D>::T, typename Rows<D>::Acc>::value) add_row(a, r, dim);
  else add_row_widened<D>(a, r, dim);
}

int ceil_log2(int64_t m) {
  int l = 0;
  while ((int64_t(1) << l) < m) ++l;
  return l;
}

// out[k] = parts[0][k] + parts[1][k] + ... + parts[count - 1][k], added in that order
// (parts: `count` rows of w values).
template <typename Acc>
void add_up(const Acc* parts, int count, int64_t w, Acc* out) {
  for (int64_t k = 0; k < w; ++k) {
    Acc v = parts[k];
    for (int j = 1; j < count; ++j) v += parts[j * w + k];
    out[k] = v;
  }
}

// The cascade over `m` rows (rows[i * step], column range [c0, c1)) into out[0..c1 - c0):
// level 0 takes each row; after every full chunk of 2^L rows it is added into level 1 and
// cleared, and level j into j + 1 when the row count is a multiple of 2^(jL) (up to
// level 3); the rows past the last full chunk go to level 0, and the levels are added up
// at the end, level 0 first. L = max(4, ceil(log2(m)) / 4).
template <typename T, typename Acc, DType D>
void cascade_columns(const T* const* rows, int64_t m, int64_t step, int64_t c0, int64_t c1, Acc* out,
                     std::vector<Acc>& lv) {
  constexpr int kLevels = 4;
  const int64_t w = c1 - c0;
  lv.assign(kLevels * w, Acc(0));
  const int lp = std::max(4, ceil_log2(m) / kLevels);
  const int64_t chunk = int64_t(1) << lp, mask = chunk - 1;
  int64_t i = 0;
  auto add = [&](int64_t r) { add_any<D>(lv.data(), rows[r * step] + c0, w); };
  while (i + chunk <= m) {
    for (int64_t q = 0; q < chunk; ++q, ++i) add(i);
    for (int j = 1; j < kLevels; ++j) {
      Acc* lo = lv.data() + (j - 1) * w;
      Acc* hi = lv.data() + j * w;
      for (int64_t k = 0; k < w; ++k) {
        hi[k] += lo[k];
        lo[k] = Acc(0);
      }
      if ((i & (mask << (j * lp))) != 0) break;
    }
  }
  for (; i < m; ++i) add(i);
  add_up(lv.data(), kLevels, w, out);
}

// Four interleaved cascades (rows k, k + 4, ... for k < 4), the rows past the last full
// group of four added to the first, then the four added up in order.
template <typename T, typename Acc, DType D>
void interleaved_columns(const T* const* rows, int64_t m, int64_t c0, int64_t c1, Acc* out,
                         std::vector<Acc>& lv, std::vector<Acc>& part) {
  const int64_t w = c1 - c0, groups = m / 4;
  part.assign(4 * w, Acc(0));
  for (int k = 0; k < 4; ++k) cascade_columns<T, Acc, D>(rows + k, groups, 4, c0, c1, part.data() + k * w, lv);
  for (int64_t r = groups * 4; r < m; ++r) add_any<D>(part.data(), rows[r] + c0, w);
  add_up(part.data(), 4, w, out);
}

// Cluster sums as torch sums dim 0 of the cluster's rows gathered in token order (one
// thread), for vectors of `width` values: column blocks of 4 vectors (of 4 columns when
// dim < width) by one cascade each, the other columns by four interleaved cascades.
template <DType D>
void cascade_sums(const typename Rows<D>::T* x, int64_t len, int64_t p, const int32_t* lab, int64_t nc,
                  int64_t dim, int width, typename Rows<D>::Acc* acc, PoolScratch& s) {
  using T = typename Rows<D>::T;
  using Acc = typename Rows<D>::Acc;
  const int64_t n = len - p;
  // counting sort of the tokens by cluster, stable (token order within a cluster)
  std::vector<int32_t>& start = s.remap;
  start.assign(nc + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++start[lab[i] + 1];
  for (int64_t c = 0; c < nc; ++c) start[c + 1] += start[c];
  s.members.resize(n);
  {
    std::vector<int32_t>& fill = s.pos;
    fill.assign(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i) s.members[fill[lab[i]]++] = (int32_t)i;
  }
  const int64_t block = dim >= width ? 4 * width : 4;
  const int64_t split = dim / block * block;
  std::vector<const T*> rows;
  std::vector<Acc> lv, part;
  for (int64_t c = 0; c < nc; ++c) {
    const int64_t m = start[c + 1] - start[c];
    s.mean_n[c] = m;
    rows.resize(m);
    for (int64_t i = 0; i < m; ++i) rows[i] = x + (p + s.members[start[c] + i]) * dim;
    Acc* a = acc + c * dim;
    if (split > 0) cascade_columns<T, Acc, D>(rows.data(), m, 1, 0, split, a, lv);
    if (split < dim) interleaved_columns<T, Acc, D>(rows.data(), m, split, dim, a + split, lv, part);
  }
}

template <DType D>
void doc_means(const typename Rows<D>::T* x, int64_t len, int64_t p, const int32_t* lab, int64_t nc,
               int64_t dim, bool normalize, PoolMeans means, int width, typename Rows<D>::T* dst,
               PoolScratch& s) {
  using R = Rows<D>;
  using T = typename R::T;
  using Acc = typename R::Acc;
  std::copy(x, x + p * dim, dst);
  std::vector<Acc>& accv = acc_of(s, (Acc*)nullptr);
  accv.assign(nc * dim, Acc(0));
  s.mean_n.assign(nc, 0);
  Acc* acc = accv.data();
  if (means == PoolMeans::Cascade) {
    cascade_sums<D>(x, len, p, lab, nc, dim, width, acc, s);
  } else {
    for (int64_t t = p; t < len; ++t) {
      const int64_t c = lab[t - p];
      add_any<D>(acc + c * dim, x + t * dim, dim);
      ++s.mean_n[c];
    }
  }
  for (int64_t c = 0; c < nc; ++c) {
    Acc* a = acc + c * dim;
    const Acc count = static_cast<Acc>(s.mean_n[c]);
    T* r = dst + (p + c) * dim;
    if constexpr (std::is_same<T, Acc>::value) {
      if (!normalize) {  // float32 / float64: the quotient is the output
        if constexpr (std::is_same<T, float>::value) div_row_f32(a, count, r, dim);
        else div_row_f64(a, count, r, dim);
        continue;
      }
    }
    if (means == PoolMeans::SequentialRounded && !std::is_same<T, Acc>::value)
      for (int64_t k = 0; k < dim; ++k) a[k] = R::load(R::store(a[k]));
    for (int64_t k = 0; k < dim; ++k) a[k] = a[k] / count;
    if (normalize) {
      double ss = 0;
      for (int64_t k = 0; k < dim; ++k) ss += (double)a[k] * (double)a[k];
      const double scale = 1.0 / std::max(std::sqrt(ss), 1e-12);
      for (int64_t k = 0; k < dim; ++k) {
        const double v = (double)a[k] * scale;
        if constexpr (std::is_same<T, double>::value) r[k] = v;
        else r[k] = R::store((float)v);
      }
    } else {
      for (int64_t k = 0; k < dim; ++k) r[k] = R::store(a[k]);
    }
  }
}

}  // namespace

void pool_doc_means(const void* x, DType dt, int64_t len, int64_t p, const int32_t* lab, int64_t nc,
                    int64_t dim, bool normalize, PoolMeans means, int width, void* dst, PoolScratch& s) {
  switch (dt) {
    case DType::F32:
      return doc_means<DType::F32>((const float*)x, len, p, lab, nc, dim, normalize, means, width, (float*)dst, s);
    case DType::F64:
      return doc_means<DType::F64>((const double*)x, len, p, lab, nc, dim, normalize, means, width, (double*)dst, s);
    case DType::F16:
      return doc_means<DType::F16>((const uint16_t*)x, len, p, lab, nc, dim, normalize, means, width, (uint16_t*)dst, s);
    case DType::BF16:
      return doc_means<DType::BF16>((const uint16_t*)x, len, p, lab, nc, dim, normalize, means, width, (uint16_t*)dst, s);
  }
}

}  // namespace lateint
