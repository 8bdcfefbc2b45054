// Portable MaxSim forward (no intrinsics): the fallback on processors without AVX2 and
// on other architectures. Same algorithm and tiling as the vector versions, with an
// 8-lane plain-array "vector" that the compiler may auto-vectorize.
#include "maxsim_core.h"

namespace {
struct V {
  struct alignas(32) reg { float v[8]; };
  struct alignas(32) ireg { int32_t v[8]; };
  static constexpr int W = 8;
  static inline reg zero() { reg r; for (int i = 0; i < 8; ++i) r.v[i] = 0.0f; return r; }
  static inline reg neg_inf() { reg r; for (int i = 0; i < 8; ++i) r.v[i] = -__builtin_inff(); return r; }
  static inline reg load(const float* p) { reg r; for (int i = 0; i < 8; ++i) r.v[i] = p[i]; return r; }
  static inline reg bcast(const float* p) { reg r; for (int i = 0; i < 8; ++i) r.v[i] = *p; return r; }
  static inline reg fma(reg a, reg b, reg c) {
    reg r;
    for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
    return r;
  }
  static inline reg max(reg a, reg b) {
    reg r;
    for (int i = 0; i < 8; ++i) r.v[i] = b.v[i] > a.v[i] ? b.v[i] : a.v[i];
    return r;
  }
  static inline ireg iset1(int32_t j) { ireg r; for (int i = 0; i < 8; ++i) r.v[i] = j; return r; }
  static inline void argupd(reg& m, ireg& idx, reg acc, int32_t j) {
    for (int i = 0; i < 8; ++i)
      if (acc.v[i] > m.v[i]) { m.v[i] = acc.v[i]; idx.v[i] = j; }
  }
  static inline void store(float* p, reg r) { for (int i = 0; i < 8; ++i) p[i] = r.v[i]; }
  static inline void istore(int32_t* p, ireg r) { for (int i = 0; i < 8; ++i) p[i] = r.v[i]; }
  static inline bool nonfinite(reg r) {
    bool bad = false;
    for (int i = 0; i < 8; ++i) bad |= (r.v[i] != r.v[i]);
    return bad;
  }
  static inline void cvt_f16(float* dst, const uint16_t* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = lateint::f16_to_f32(src[i]);
  }
  static inline void cvt_bf16(float* dst, const uint16_t* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = lateint::bf16_to_f32(src[i]);
  }
};
constexpr int NR = 4;
}  // namespace

#define LATEINT_HAS_BF16 0
#define LATEINT_FWD_NAME forward_scalar
#include "maxsim_kernel.inc"
