// The CPU instruction-set layer every op family dispatches through.
//
// Detection runs once per process (CPUID through the compiler's builtins). The active level
// is the best one the processor has, capped by LATEINT_CPU_ISA or set_cpu_isa(). Every
// kernel that has vector variants picks one with isa_for(family) at run time, so the cap
// reaches all of them; nothing in the library selects an ISA by itself (no target_clones,
// no ifunc). Two ways to produce the variants, one way to choose:
//   - hand-written intrinsics: one function per level, compiled with LATEINT_TARGET_<ISA>
//     (or in a translation unit under the matching `#pragma GCC target`), called after
//     isa_for(family) said that level;
//   - one plain C++ body compiled once per level by LATEINT_MULTIVERSION below.
#pragma once
#include <atomic>
#include <cstdint>

namespace lateint {

// Instruction sets the CPU kernels can run with, best last. Amx: Avx512Bf16 plus usable
// AMX tiles (AMX-TILE, AMX-BF16 and AMX-INT8 in CPUID, the tile state enabled in XCR0 and
// granted to this process by arch_prctl(ARCH_REQ_XCOMP_PERM)); kernels without a tile
// variant run their Avx512Bf16 one there.
enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3, Amx = 4 };
constexpr int kIsaCount = 5;

// What the processor and the OS say about AMX, probed once (the permission is requested at
// most once per process, before any tile instruction can run).
struct AmxInfo {
  bool tile = false, bf16 = false, int8 = false, fp16 = false;  // CPUID
  bool os_enabled = false;                                      // XCR0 bits 17-18
  bool permitted = false;                                       // arch_prctl granted the tile data
};
const AmxInfo& amx_info();

// The op families, for the dispatch trace.
enum class Family : int { MaxSim = 0, Pool = 1, KMeans = 2, Codec = 3, Plaid = 4 };
constexpr int kFamilyCount = 5;

// Best ISA this processor supports.
Isa cpu_best_isa();
// Forces an ISA (clamped to what the processor supports); a negative value restores the best.
// Returns the active ISA.
Isa set_cpu_isa(int isa);
const char* isa_name(Isa isa);
// Whether the processor has `level` (a capability, whatever the cap says).
inline bool cpu_supports(Isa level) { return (int)cpu_best_isa() >= (int)level; }
// Features beside the levels: AVX512-VNNI (int8 dot products; used only at level avx512+).
bool cpu_has_avx512_vnni();

namespace detail {
extern std::atomic<int> g_active_isa;  // -1 until first use
extern std::atomic<bool> g_trace_on;
int resolve_active_isa();
void trace_record(Family f, Isa isa);
}  // namespace detail

// ISA in use: the best one, or a lower one forced by set_cpu_isa / LATEINT_CPU_ISA.
inline Isa cpu_active_isa() {
  const int v = detail::g_active_isa.load(std::memory_order_relaxed);
  return (Isa)(v >= 0 ? v : detail::resolve_active_isa());
}

// The level a kernel of `family` is about to run at: cpu_active_isa(), recorded in the
// dispatch trace when tracing is on (testing: proves the cap reaches every family).
inline Isa isa_for(Family f) {
  const Isa isa = cpu_active_isa();
  if (detail::g_trace_on.load(std::memory_order_relaxed)) detail::trace_record(f, isa);
  return isa;
}

// Dispatch trace (testing): per family, a bit per ISA level a kernel ran at since the reset.
void isa_trace_enable(bool on);
void isa_trace_reset();
int isa_trace_mask(Family f);

}  // namespace lateint

#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
#define LATEINT_X86 1
#define LATEINT_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define LATEINT_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#else
#define LATEINT_X86 0
#define LATEINT_TARGET_AVX2
#define LATEINT_TARGET_AVX512
#endif

// LATEINT_MULTIVERSION(family, ret, name, (params), (args), { body }) defines `ret
// name(params)`, which runs the body compiled once per level as its own function (targets
// "avx512f", "avx2" and the baseline: what these loops always ran as GCC target_clones,
// FMA contraction at the AVX-512 level only), the variant chosen by the family's active
// level at each call. The body is plain C++ (no intrinsics, no preprocessor lines): each
// copy is compiled and vectorized for its target from the start, but under the cap.
#if LATEINT_X86
#define LATEINT_MULTIVERSION(family, ret, name, params, args, ...)                       \
  __attribute__((target("avx512f"))) static ret name##_avx512 params __VA_ARGS__        \
  __attribute__((target("avx2"))) static ret name##_avx2 params __VA_ARGS__              \
  static ret name##_baseline params __VA_ARGS__                                          \
  ret name params {                                                                      \
    switch (::lateint::isa_for(family)) {                                                \
      case ::lateint::Isa::Avx512:                                                       \
      case ::lateint::Isa::Avx512Bf16:                                                   \
      case ::lateint::Isa::Amx: return name##_avx512 args;                               \
      case ::lateint::Isa::Avx2: return name##_avx2 args;                                \
      default: return name##_baseline args;                                              \
    }                                                                                    \
  }
#else
#define LATEINT_MULTIVERSION(family, ret, name, params, args, ...) \
  static ret name##_baseline params __VA_ARGS__                   \
  ret name params {                                               \
    (void)::lateint::isa_for(family);                             \
    return name##_baseline args;                                  \
  }
#endif
