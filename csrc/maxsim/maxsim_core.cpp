// Query packing, the forward's ISA dispatch and the backward gathers of the CPU MaxSim
// kernels. Compiled for the baseline ISA; the vector forward kernels live in maxsim_<isa>.cpp.
#include "maxsim_core.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>

namespace lateint {
namespace detail {

float* thread_scratch_f32(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

}  // namespace detail

namespace {
// On processors with AVX512-BF16 there are two ways to run bf16 inputs: VDPBF16PS dot
// products on bf16 pairs, or widening document chunks to float32 (a shift) and using the
// float32 FMA kernel. Which is faster depends on the core: on Zen 4 the dot product has twice
// the float32 rate; on the Intel Xeon of our CI it has half (torch's own bf16 matmul runs at
// half its sgemm rate there). Decide once, by timing both on a small in-cache problem.
// LATEINT_BF16_PATH=dot|convert overrides.
int64_t time_path(bool dot) {
  const int64_t nq = 4, lq = 32, dim = 128, nd = 16, len = 64;
  std::vector<uint16_t> q(nq * lq * dim), d(nd * len * dim);
  uint32_t x = 12345;
  auto rnd = [&]() {
    x = x * 1664525u + 1013904223u;
    return f32_to_bf16(((int32_t)(x >> 8) - (1 << 23)) / float(1 << 23));
  };
  for (auto& v : q) v = rnd();
  for (auto& v : d) v = rnd();
  std::vector<int64_t> off(nd + 1);
  for (int64_t i = 0; i <= nd; ++i) off[i] = i * len;
  MaxSimProblem p;
  p.nq = nq; p.lq = lq; p.dim = dim; p.queries = q.data(); p.docs = d.data();
  p.offsets = off.data(); p.nd = nd; p.dtype = DType::BF16;
  PackedQueries pq;
  pack_queries_with(p, Isa::Avx512Bf16, dot, &pq);
  std::vector<float> s(nq * nd);
  int64_t best = INT64_MAX;
  for (int rep = 0; rep < 7; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    maxsim_forward_range(p, pq, 0, nq, 0, nd, s.data(), nullptr);
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min<int64_t>(best, std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
  }
  return best;
}
}  // namespace

bool bf16_use_dot() {
  static const bool use = [] {
    if (!cpu_supports(Isa::Avx512Bf16)) return false;
    const char* e = std::getenv("LATEINT_BF16_PATH");
    if (e && std::string(e) == "dot") return true;
    if (e && std::string(e) == "convert") return false;
    return time_path(true) < time_path(false);
  }();
  return use;
}

void pack_queries(const MaxSimProblem& p, Isa isa, PackedQueries* out) {
  const bool dot = isa >= Isa::Avx512Bf16 && p.dtype == DType::BF16 && p.dim % 2 == 0 && bf16_use_dot();
  pack_queries_with(p, isa, dot, out);
}

void pack_queries_with(const MaxSimProblem& p, Isa isa, bool bf16_dot, PackedQueries* out) {
  PackedQueries& pq = *out;
  pq.isa = isa;
  pq.rows_per_block = isa >= Isa::Avx512 ? 32 : 16;
  const int64_t RB = pq.rows_per_block;
  pq.bf16 = bf16_dot && isa >= Isa::Avx512Bf16 && p.dtype == DType::BF16 && p.dim % 2 == 0;
  pq.dim_pad = p.dim + (p.dim % 2);
  pq.n_rows.assign(p.nq, 0);
  pq.row_map.assign(p.nq * p.lq, -1);
  pq.block_off.assign(p.nq + 1, 0);
  for (int64_t q = 0; q < p.nq; ++q) {
    int64_t n = 0;
    for (int64_t r = 0; r < p.lq; ++r) {
      if (!p.query_mask || p.query_mask[q * p.lq + r]) pq.row_map[q * p.lq + n++] = r;
    }
    pq.n_rows[q] = n;
    pq.block_off[q + 1] = pq.block_off[q] + (n + RB - 1) / RB;
  }
  const int64_t nblocks = pq.block_off[p.nq];
  const int64_t block_elems = pq.dim_pad * RB;
  if (pq.bf16) {
    pq.f32.clear();
    pq.b16.assign(nblocks * block_elems + 32, 0);  // + slack for 64-byte alignment
  } else {
    pq.b16.clear();
    pq.f32.assign(nblocks * block_elems + 16, 0.0f);
  }
  // Align the packed storage to 64 bytes (aligned vector loads).
  auto align_off = [](const void* ptr) {
    return (size_t)((64 - ((uintptr_t)ptr & 63)) & 63);
  };
  pq.align_f32 = pq.bf16 ? 0 : align_off(pq.f32.data()) / sizeof(float);
  pq.align_b16 = pq.bf16 ? align_off(pq.b16.data()) / sizeof(uint16_t) : 0;
  float* f = pq.f32.data() + pq.align_f32;
  uint16_t* h = pq.b16.data() + pq.align_b16;
  const uint16_t* qraw = static_cast<const uint16_t*>(p.queries);
  for (int64_t q = 0; q < p.nq; ++q) {
    const int64_t n = pq.n_rows[q];
    for (int64_t b = 0; b < pq.block_off[q + 1] - pq.block_off[q]; ++b) {
      const int64_t blk = pq.block_off[q] + b;
      for (int64_t rr = 0; rr < RB && b * RB + rr < n; ++rr) {
        const int64_t r = pq.row_map[q * p.lq + b * RB + rr];
        for (int64_t k = 0; k < p.dim; ++k) {
          if (pq.bf16) {
            // [dim/2][RB][2]
            h[blk * block_elems + ((k / 2) * RB + rr) * 2 + (k % 2)] =
                qraw[(q * p.lq + r) * p.dim + k];
          } else {
            f[blk * block_elems + k * RB + rr] = load_as_f32(p.dtype, p.queries, (q * p.lq + r) * p.dim + k);
          }
        }
      }
    }
  }
}

detail::PackedView view_of(const PackedQueries& pq) {
  detail::PackedView v;
  v.n_rows = pq.n_rows.data();
  v.row_map = pq.row_map.data();
  v.block_off = pq.block_off.data();
  v.f32 = pq.f32.empty() ? nullptr : pq.f32.data() + pq.align_f32;
  v.b16 = pq.b16.empty() ? nullptr : pq.b16.data() + pq.align_b16;
  v.dim_pad = pq.dim_pad;
  v.bf16 = pq.bf16;
  return v;
}

bool maxsim_forward_range(const MaxSimProblem& p, const PackedQueries& pq, int64_t q0, int64_t q1,
                          int64_t s0, int64_t s1, float* scores, int32_t* argmax) {
  detail::FwdArgs a{&p, view_of(pq), q0, q1, s0, s1, scores, argmax};
  switch (pq.isa) {
    case Isa::Amx:
    case Isa::Avx512Bf16: return detail::forward_avx512bf16(a);
    case Isa::Avx512: return detail::forward_avx512(a);
    case Isa::Avx2: return detail::forward_avx2(a);
    case Isa::Scalar: return detail::forward_scalar(a);
  }
  return detail::forward_scalar(a);
}

namespace {

// The backward's inner loops, vectorized for the processor at load time (GCC function
// multiversioning; the baseline build alone would use SSE2 only).

LATEINT_MULTIVERSION(::lateint::Family::MaxSim, void, axpy_f32,
                     (const float* __restrict s, int64_t dim, float g, float* __restrict dst),
                     (s, dim, g, dst), {
  for (int64_t k = 0; k < dim; ++k) dst[k] += g * s[k];
})

LATEINT_MULTIVERSION(::lateint::Family::MaxSim, void, axpy_bf16,
                     (const uint16_t* __restrict s, int64_t dim, float g, float* __restrict dst),
                     (s, dim, g, dst), {
  for (int64_t k = 0; k < dim; ++k) {
    const uint32_t u = (uint32_t)s[k] << 16;
    float f;
    std::memcpy(&f, &u, 4);
    dst[k] += g * f;
  }
})

// dst[0..dim) += g * row (row of dtype t starting at element i0)
inline void axpy_row(DType t, const void* base, int64_t i0, int64_t dim, float g, float* dst) {
  if (t == DType::F32) {
    axpy_f32(static_cast<const float*>(base) + i0, dim, g, dst);
  } else if (t == DType::BF16) {
    axpy_bf16(static_cast<const uint16_t*>(base) + i0, dim, g, dst);
  } else {
    for (int64_t k = 0; k < dim; ++k) dst[k] += g * load_as_f32(t, base, i0 + k);
  }
}
}  // namespace

void maxsim_grad_queries_range(const MaxSimProblem& p, const int32_t* argmax, const float* grad,
                               int64_t r0, int64_t r1, float* dq) {
  const int64_t ns = n_slots(p);
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t q = row / p.lq;
    float* out = dq + row * p.dim;
    for (int64_t k = 0; k < p.dim; ++k) out[k] = 0.0f;
    const int32_t* am = argmax + row * ns;
    const float* g = grad + q * ns;
    for (int64_t s = 0; s < ns; ++s) {
      const int32_t t = am[s];
      if (t < 0 || g[s] == 0.0f) continue;
      axpy_row(p.dtype, p.docs, (int64_t)t * p.dim, p.dim, g[s], out);
    }
  }
}

void build_doc_pairs(const MaxSimProblem& p, DocPairs* out) {
  DocPairs& dp = *out;
  dp.ptr.assign(p.nd + 1, 0);
  if (!p.has_cand) {
    // all pairs: document s meets every query in slot s
    dp.q.resize(p.nd * p.nq);
    dp.slot.resize(p.nd * p.nq);
    for (int64_t d = 0; d < p.nd; ++d) {
      dp.ptr[d + 1] = dp.ptr[d] + p.nq;
      for (int64_t q = 0; q < p.nq; ++q) {
        dp.q[d * p.nq + q] = q;
        dp.slot[d * p.nq + q] = d;
      }
    }
    return;
  }
  for (int64_t i = 0; i < p.nq * p.ncand; ++i) {
    const int64_t d = p.cand[i];
    if (d >= 0) dp.ptr[d + 1]++;
  }
  for (int64_t d = 0; d < p.nd; ++d) dp.ptr[d + 1] += dp.ptr[d];
  dp.q.resize(dp.ptr[p.nd]);
  dp.slot.resize(dp.ptr[p.nd]);
  std::vector<int64_t> fill(dp.ptr.begin(), dp.ptr.end() - 1);
  for (int64_t q = 0; q < p.nq; ++q) {  // (query, slot) order -> fixed summation order
    for (int64_t c = 0; c < p.ncand; ++c) {
      const int64_t d = p.cand[q * p.ncand + c];
      if (d < 0) continue;
      dp.q[fill[d]] = q;
      dp.slot[fill[d]] = c;
      fill[d]++;
    }
  }
}

void maxsim_grad_docs_range(const MaxSimProblem& p, const DocPairs& pairs, const int32_t* argmax,
                            const float* grad, int64_t d0, int64_t d1, float* dd) {
  const int64_t ns = n_slots(p);
  for (int64_t d = d0; d < d1; ++d) {
    for (int64_t e = pairs.ptr[d]; e < pairs.ptr[d + 1]; ++e) {
      const int64_t q = pairs.q[e], s = pairs.slot[e];
      const float g = grad[q * ns + s];
      if (g == 0.0f) continue;
      for (int64_t r = 0; r < p.lq; ++r) {
        const int32_t t = argmax[(q * p.lq + r) * ns + s];
        if (t < 0) continue;
        axpy_row(p.dtype, p.queries, (q * p.lq + r) * p.dim, p.dim, g, dd + (int64_t)t * p.dim);
      }
    }
  }
}

}  // namespace lateint
