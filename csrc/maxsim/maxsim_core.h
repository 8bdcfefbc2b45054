// Torch-free MaxSim kernel cores (CPU). The binding layer (csrc/maxsim/maxsim_cpu.cpp) checks
// tensors, allocates outputs and drives these functions from at::parallel_for; the C++
// unit tests (csrc/tests) drive them directly.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/dtype.h"
#include "common/isa.h"

namespace lateint {

enum class MaskMode : int { Ignore = 0, Zero = 1 };

// Inputs of one MaxSim problem. All arrays are contiguous row-major.
struct MaxSimProblem {
  int64_t nq = 0, lq = 0, dim = 0;
  const void* queries = nullptr;      // [nq, lq, dim] of dtype
  const uint8_t* query_mask = nullptr;  // [nq, lq] (nonzero = real token) or null
  const void* docs = nullptr;         // [T, dim] of dtype
  const int64_t* offsets = nullptr;   // [nd + 1], validated by the caller
  int64_t nd = 0;
  const uint8_t* doc_padded = nullptr;  // [nd] or null; read in MaskMode::Zero only
  DType dtype = DType::F32;
  MaskMode mode = MaskMode::Ignore;
  // Candidates: when has_cand, query q is scored against docs cand[q * ncand + c] (a value of
  // -1 means "no candidate": score -inf); cand may be null when ncand is 0. Otherwise every
  // query meets every document.
  bool has_cand = false;
  const int64_t* cand = nullptr;
  int64_t ncand = 0;
};

// Queries packed once per call in the layout the active ISA's micro-kernel reads.
// Masked query tokens are dropped: in both mask modes they contribute exactly 0.
struct PackedQueries {
  Isa isa = Isa::Scalar;
  int64_t rows_per_block = 0;  // query rows one register block holds
  int64_t dim_pad = 0;
  bool bf16 = false;           // packed as bf16 pairs (AVX512-BF16 path)
  std::vector<int64_t> n_rows;   // [nq] unmasked rows of each query
  std::vector<int64_t> row_map;  // [nq * lq] packed row -> original row
  std::vector<int64_t> block_off;  // [nq + 1] first block of each query
  std::vector<float> f32;      // blocks of [dim_pad][rows_per_block]
  std::vector<uint16_t> b16;   // blocks of [dim_pad/2][rows_per_block][2]
  size_t align_f32 = 0, align_b16 = 0;  // element offsets that make the data 64-byte aligned
};

void pack_queries(const MaxSimProblem& p, Isa isa, PackedQueries* out);
// Same, choosing explicitly whether bf16 inputs use the VDPBF16PS dot-product path.
void pack_queries_with(const MaxSimProblem& p, Isa isa, bool bf16_dot, PackedQueries* out);
// Whether bf16 inputs use VDPBF16PS (decided once per process by timing both paths).
bool bf16_use_dot();

// Number of "slots" per query: nd for all-pairs, ncand for candidates.
inline int64_t n_slots(const MaxSimProblem& p) { return p.has_cand ? p.ncand : p.nd; }

// Forward over slots [s0, s1) of queries [q0, q1).
//   scores: [nq, n_slots] float32, written for the range.
//   argmax: [nq, lq, n_slots] int32 or null; global token index of each query token's max,
//           -1 where no token wins (masked query token, empty document, zero-mode floor at 0).
// Returns false if a non-finite similarity was met (NaN/Inf in an input that reaches the
// output); the caller turns that into an error naming the argument.
bool maxsim_forward_range(const MaxSimProblem& p, const PackedQueries& pq, int64_t q0, int64_t q1,
                          int64_t s0, int64_t s1, float* scores, int32_t* argmax);

// The same forward on torch's brgemm micro-kernel (bf16 inputs only; AMX tiles where the
// processor has them: maxsim_brgemm_cpu.cpp, part of the extension, not of the torch-free
// cores).
bool maxsim_forward_brgemm_range(const MaxSimProblem& p, int64_t q0, int64_t q1, int64_t s0, int64_t s1,
                                 float* scores, int32_t* argmax);

// Backward pieces, from the argmax written by the forward.
//   grad: [nq, n_slots] float32 (upstream gradient of the scores).
// dQ rows [r0, r1) of the flattened [nq * lq] query rows (float32 out, [nq, lq, dim]).
void maxsim_grad_queries_range(const MaxSimProblem& p, const int32_t* argmax, const float* grad,
                               int64_t r0, int64_t r1, float* dq);
// Inverse index for dD: for each document, the (query, slot) pairs that meet it, in
// (query, slot) order so the reduction order is fixed.
struct DocPairs {
  std::vector<int64_t> ptr;   // [nd + 1]
  std::vector<int64_t> q;     // query of each pair
  std::vector<int64_t> slot;  // slot of each pair
};
void build_doc_pairs(const MaxSimProblem& p, DocPairs* out);
// Adds the dD contributions of documents [d0, d1) to dd (float32 [T, dim]; the caller
// zeroes it once; rows of other documents untouched). Called once per query chunk, in
// chunk order, the summation order is the same as for one unchunked call.
void maxsim_grad_docs_range(const MaxSimProblem& p, const DocPairs& pairs, const int32_t* argmax,
                            const float* grad, int64_t d0, int64_t d1, float* dd);

// Per-ISA entry points (defined in maxsim_<isa>.cpp; called through maxsim_forward_range).
namespace detail {
// Plain-pointer view of PackedQueries for the ISA-specific code (no std:: members there).
struct PackedView {
  const int64_t* n_rows;
  const int64_t* row_map;
  const int64_t* block_off;
  const float* f32;
  const uint16_t* b16;
  int64_t dim_pad;
  bool bf16;
};
struct FwdArgs {
  const MaxSimProblem* p;
  PackedView pq;
  int64_t q0, q1, s0, s1;
  float* scores;
  int32_t* argmax;
};
bool forward_scalar(const FwdArgs& a);
bool forward_avx2(const FwdArgs& a);
bool forward_avx512(const FwdArgs& a);
bool forward_avx512bf16(const FwdArgs& a);
// Per-thread scratch buffer of at least n floats (valid until the next call on the thread).
float* thread_scratch_f32(size_t n);
}  // namespace detail

}  // namespace lateint
