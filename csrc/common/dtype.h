// The element types the CPU cores read, and the conversions between them (torch-free).
#pragma once
#include <cstdint>
#include <cstring>

namespace lateint {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, F64 = 3 };

inline float bf16_to_f32(uint16_t v) {
  const uint32_t u = (uint32_t)v << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

// Round to nearest even, as IEEE 754 binary16; overflow to +-inf, NaN stays NaN.
inline uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (a >= 0x47800000u) return sign | 0x7c00u;  // >= 65536 (and inf): inf
  if (a < 0x38800000u) {  // below 2^-14: a multiple of 2^-24 (subnormal) or zero
    float v;
    std::memcpy(&v, &a, 4);
    const float q = v * 16777216.0f;  // exact: a power-of-two scaling
    float r = (float)(int32_t)q;      // q < 1024: truncation, then the tie rule by hand
    const float frac = q - r;
    if (frac > 0.5f || (frac == 0.5f && ((int32_t)r & 1))) r += 1.0f;
    return sign | (uint16_t)(int32_t)r;  // 1024 is the smallest normal, 0x0400: still right
  }
  const uint32_t e = (a >> 23) - 127 + 15, m = a & 0x7fffffu;
  uint32_t h = (e << 10) | (m >> 13);
  const uint32_t rest = m & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right too
  return sign | (uint16_t)h;
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalize
      exp = 127 - 15 + 1;
      while ((man & 0x400u) == 0) {
        man <<= 1;
        --exp;
      }
      man &= 0x3ffu;
      u = sign | (exp << 23) | (man << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Element i of an array of dtype t, widened to double (exact for every DType).
inline double load_as_f64(DType t, const void* base, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::F64: return static_cast<const double*>(base)[i];
  }
  return 0.0;
}

// Element i of an array of dtype t (F32, F16 or BF16: exact) as float32.
inline float load_as_f32(DType t, const void* base, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::F64: return (float)static_cast<const double*>(base)[i];
  }
  return 0.0f;
}

}  // namespace lateint
