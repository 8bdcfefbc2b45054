#include "common/isa.h"

#include <cstdlib>
#include <string>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace lateint {
namespace {

// CPUID, XCR0 (xgetbv as inline assembly: no ISA flag needed to compile it) and the Linux
// permission request. Runs no tile instruction.
AmxInfo probe_amx() {
  AmxInfo r;
#if LATEINT_X86
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return r;
  __cpuid_count(7, 0, a, b, c, d);
  r.bf16 = (d >> 22) & 1;
  r.tile = (d >> 24) & 1;
  r.int8 = (d >> 25) & 1;
  __cpuid_count(7, 1, a, b, c, d);
  r.fp16 = (a >> 21) & 1;
  __cpuid(1, a, b, c, d);
  if ((c >> 27) & 1) {  // OSXSAVE: xgetbv is available
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    r.os_enabled = ((lo >> 17) & 3) == 3;  // XTILECFG and XTILEDATA
  }
#if defined(__linux__) && defined(SYS_arch_prctl)
  if (r.tile && r.os_enabled) {
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    r.permitted = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }
#endif
#endif
  return r;
}

Isa detect_isa() {
#if LATEINT_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq");
  const bool bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
  const AmxInfo& amx = amx_info();
  if (bf16 && amx.tile && amx.bf16 && amx.int8 && amx.os_enabled && amx.permitted) return Isa::Amx;
  if (bf16) return Isa::Avx512Bf16;
  if (avx512) return Isa::Avx512;
  if (avx2) return Isa::Avx2;
#endif
  return Isa::Scalar;
}

// LATEINT_CPU_ISA's level, clamped to `best`; -1 when unset or not a level name.
int isa_from_env(Isa best) {
  const char* s = std::getenv("LATEINT_CPU_ISA");
  if (!s || !*s) return -1;
  const std::string v(s);
  int want = -1;
  if (v == "scalar") want = 0;
  else if (v == "avx2") want = 1;
  else if (v == "avx512") want = 2;
  else if (v == "avx512bf16") want = 3;
  else if (v == "amx") want = 4;
  if (want < 0) return -1;
  return want > (int)best ? (int)best : want;
}

int default_isa() {
  const Isa best = cpu_best_isa();
  const int env = isa_from_env(best);
  return env >= 0 ? env : (int)best;
}

std::atomic<int> g_trace[kFamilyCount];

}  // namespace

namespace detail {
std::atomic<int> g_active_isa{-1};
std::atomic<bool> g_trace_on{false};

int resolve_active_isa() {
  int expected = -1;
  const int v = default_isa();
  g_active_isa.compare_exchange_strong(expected, v);
  return g_active_isa.load();
}

void trace_record(Family f, Isa isa) {
  g_trace[(int)f].fetch_or(1 << (int)isa, std::memory_order_relaxed);
}
}  // namespace detail

bool cpu_has_avx512_vnni() {
#if LATEINT_X86
  static const bool vnni = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") != 0;
  }();
  return vnni;
#else
  return false;
#endif
}

const AmxInfo& amx_info() {
  static const AmxInfo info = probe_amx();
  return info;
}

Isa cpu_best_isa() {
  static const Isa best = detect_isa();
  return best;
}

Isa set_cpu_isa(int isa) {
  const int best = (int)cpu_best_isa();
  const int v = isa < 0 ? best : (isa > best ? best : isa);
  detail::g_active_isa.store(v);
  return (Isa)v;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Bf16: return "avx512bf16";
    case Isa::Amx: return "amx";
  }
  return "unknown";
}

void isa_trace_enable(bool on) { detail::g_trace_on.store(on); }

void isa_trace_reset() {
  for (auto& t : g_trace) t.store(0);
}

int isa_trace_mask(Family f) { return g_trace[(int)f].load(); }

}  // namespace lateint
