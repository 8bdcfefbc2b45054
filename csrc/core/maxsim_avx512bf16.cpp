// AVX-512 + AVX512-BF16 MaxSim forward (bf16 dot products, float32 accumulation). Compiled for this ISA only; chosen at run time.
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c,avx2")
#include <immintrin.h>

#include "maxsim_core.h"

#define LATEINT_HAS_BF16 1
#include "maxsim_v512.inc"

#define LATEINT_FWD_NAME forward_avx512bf16
#include "maxsim_kernel.inc"
#else
#include "maxsim_core.h"
namespace lateint { namespace detail {
bool forward_avx512bf16(const FwdArgs& a) { return forward_scalar(a); }
}}
#endif
