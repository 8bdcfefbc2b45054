// Torch-free CUDA MaxSim launchers (kernels in maxsim_kernels.cu). Raw pointers, sizes and
// a stream; the binding (maxsim.cu) checks and allocates. dtype: 0 f32, 1 f16, 2 bf16.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace lateint {
namespace cuda {

struct FwdParams {
  int64_t nq, lq, dim, nd, ns;
  const void* queries;        // [nq, lq, dim]
  const bool* query_mask;     // [nq, lq] or null
  const void* docs;           // [T, dim]
  const int64_t* offsets;     // [nd + 1]
  const bool* doc_padded;     // [nd] or null
  const int64_t* cand;        // [nq, ns] or null (all pairs: ns == nd)
  int zero_mode;
  int dtype;
  float* scores;              // [nq, ns]
  int32_t* argmax;            // [nq, lq, ns] or null
};

// Returns cudaSuccess or the launch error.
cudaError_t maxsim_forward(const FwdParams& p, cudaStream_t stream);

struct BwdParams {
  int64_t nq, lq, dim, nd, ns;
  const void* queries;
  const void* docs;
  const int64_t* offsets;
  const int32_t* argmax;      // [nq, lq, ns]
  const float* grad;          // [nq, ns]
  const int64_t* pair_ptr;    // [nd + 1]  CSR of (query, slot) pairs per document
  const int64_t* pair_q;
  const int64_t* pair_s;
  int dtype;
  float* dq;                  // [nq, lq, dim]
  float* dd;                  // [T, dim]
};

cudaError_t maxsim_backward(const BwdParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace lateint
