// AVX-512 (F/BW/VL) MaxSim forward. Compiled for this ISA only; chosen at run time.
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx2")
#include <immintrin.h>

#include "maxsim_core.h"

namespace {
struct V {
  using reg = __m512;
  using ireg = __m512i;
  static constexpr int W = 16;
  static inline reg zero() { return _mm512_setzero_ps(); }
  static inline reg neg_inf() { return _mm512_set1_ps(-__builtin_inff()); }
  static inline reg load(const float* p) { return _mm512_load_ps(p); }
  static inline reg bcast(const float* p) { return _mm512_set1_ps(*p); }
  static inline reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static inline reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static inline ireg iset1(int32_t i) { return _mm512_set1_epi32(i); }
  static inline void argupd(reg& m, ireg& idx, reg acc, int32_t j) {
    const __mmask16 k = _mm512_cmp_ps_mask(acc, m, _CMP_GT_OQ);
    m = _mm512_mask_mov_ps(m, k, acc);
    idx = _mm512_mask_mov_epi32(idx, k, _mm512_set1_epi32(j));
  }
  static inline void store(float* p, reg r) { _mm512_store_ps(p, r); }
  static inline void istore(int32_t* p, ireg r) { _mm512_store_si512((void*)p, r); }
  static inline bool nonfinite(reg r) { return _mm512_cmp_ps_mask(r, r, _CMP_UNORD_Q) != 0; }
  static inline void cvt_f16(float* dst, const uint16_t* src, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + i))));
    for (; i < n; ++i) dst[i] = lateint::detail::f16_to_f32(src[i]);
  }
  static inline void cvt_bf16(float* dst, const uint16_t* src, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      if ((i & 31) == 0) __builtin_prefetch(src + i + 4096, 0, 0);
      __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(src + i)));
      _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
    for (; i < n; ++i) dst[i] = lateint::detail::bf16_to_f32(src[i]);
  }
};
constexpr int NR = 12;
}  // namespace

#define LATEINT_HAS_BF16 0
#define LATEINT_FWD_NAME forward_avx512
#include "maxsim_kernel.inc"
#else
#include "maxsim_core.h"
namespace lateint { namespace detail {
bool forward_avx512(const FwdArgs& a) { return forward_scalar(a); }
}}
#endif
