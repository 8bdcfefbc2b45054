// AVX-512 (F/BW/VL) MaxSim forward. Compiled for this ISA only; chosen at run time.
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx2")
#include <immintrin.h>

#include "maxsim_core.h"

#define LATEINT_HAS_BF16 0
#include "maxsim_v512.inc"

#define LATEINT_FWD_NAME forward_avx512
#include "maxsim_kernel.inc"
#else
#include "maxsim_core.h"
namespace lateint { namespace detail {
bool forward_avx512(const FwdArgs& a) { return forward_scalar(a); }
}}
#endif
