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
void doc_means(const typename Rows<D>::T* x, int64_t len, int64_t p, const int32_t* lab, int64_t nc,
               int64_t dim, bool normalize, typename Rows<D>::T* dst, PoolScratch& s) {
  using R = Rows<D>;
  using T = typename R::T;
  using Acc = typename R::Acc;
  std::copy(x, x + p * dim, dst);
  std::vector<Acc>& accv = acc_of(s, (Acc*)nullptr);
  accv.assign(nc * dim, Acc(0));
  s.mean_n.assign(nc, 0);
  Acc* acc = accv.data();
  for (int64_t t = p; t < len; ++t) {
    const int64_t c = lab[t - p];
    if constexpr (std::is_same<T, Acc>::value) add_row(acc + c * dim, x + t * dim, dim);
    else add_row_widened<D>(acc + c * dim, x + t * dim, dim);
    ++s.mean_n[c];
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
                    int64_t dim, bool normalize, void* dst, PoolScratch& s) {
  switch (dt) {
    case DType::F32:
      return doc_means<DType::F32>((const float*)x, len, p, lab, nc, dim, normalize, (float*)dst, s);
    case DType::F64:
      return doc_means<DType::F64>((const double*)x, len, p, lab, nc, dim, normalize, (double*)dst, s);
    case DType::F16:
      return doc_means<DType::F16>((const uint16_t*)x, len, p, lab, nc, dim, normalize, (uint16_t*)dst, s);
    case DType::BF16:
      return doc_means<DType::BF16>((const uint16_t*)x, len, p, lab, nc, dim, normalize, (uint16_t*)dst, s);
  }
}

}  // namespace lateint
