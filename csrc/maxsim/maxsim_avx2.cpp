// AVX2 + FMA MaxSim forward: the x86-64 baseline. Compiled for this ISA only.
#if defined(__x86_64__) || defined(_M_X64)
// Every header is included before the target pragma, so that what they define (std::
// templates, inline functions with vague linkage) stays baseline x86-64 code: the linker
// keeps one copy of each for the whole library (tests/test_build_isa.py checks).
// GCC 12 warns -Wmaybe-uninitialized inside its own avx512fintrin.h when the intrinsics
// are compiled under a target pragma or attribute (GCC PR 105593, fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <utility>

#include "maxsim_core.h"
#pragma GCC target("avx2,fma,f16c")

namespace {
struct V {
  using reg = __m256;
  using ireg = __m256i;
  static constexpr int W = 8;
  static inline reg zero() { return _mm256_setzero_ps(); }
  static inline reg neg_inf() { return _mm256_set1_ps(-__builtin_inff()); }
  static inline reg load(const float* p) { return _mm256_load_ps(p); }
  static inline reg bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static inline reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static inline reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static inline ireg iset1(int32_t i) { return _mm256_set1_epi32(i); }
  static inline void argupd(reg& m, ireg& idx, reg acc, int32_t j) {
    const reg k = _mm256_cmp_ps(acc, m, _CMP_GT_OQ);
    m = _mm256_blendv_ps(m, acc, k);
    idx = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(idx),
                                               _mm256_castsi256_ps(_mm256_set1_epi32(j)), k));
  }
  static inline void store(float* p, reg r) { _mm256_store_ps(p, r); }
  static inline void istore(int32_t* p, ireg r) { _mm256_store_si256((__m256i*)p, r); }
  static inline bool nonfinite(reg r) {
    return _mm256_movemask_ps(_mm256_cmp_ps(r, r, _CMP_UNORD_Q)) != 0;
  }
  static inline void cvt_f16(float* dst, const uint16_t* src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + i))));
    for (; i < n; ++i) dst[i] = lateint::f16_to_f32(src[i]);
  }
  static inline void cvt_bf16(float* dst, const uint16_t* src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(src + i)));
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
    for (; i < n; ++i) dst[i] = lateint::bf16_to_f32(src[i]);
  }
};
constexpr int NR = 6;
}  // namespace

#define LATEINT_HAS_BF16 0
#define LATEINT_FWD_NAME forward_avx2
#include "maxsim_kernel.inc"
#else
#include "maxsim_core.h"
namespace lateint { namespace detail {
bool forward_avx2(const FwdArgs& a) { return forward_scalar(a); }
}}
#endif
