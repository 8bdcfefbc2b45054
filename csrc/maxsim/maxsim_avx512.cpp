// AVX-512 (F/BW/VL) MaxSim forward. Compiled for this ISA only; chosen at run time.
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
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx2")

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
