// CUDA MaxSim kernels (torch-free; built by setup.py into the extension and by CMake alone so
// CI proves they compile for sm_80 and sm_90).
//
// Forward: one block of 128 threads (4 warps) per (query, slot). The block keeps 32 query
// rows in shared memory and streams the document through shared memory 32 tokens at a time;
// lane = token, each warp owns 8 query rows, so a thread holds 8 dot products and a running
// max/argmax per row. Warp shuffles reduce max/argmax over tokens; a fixed-order shared
// reduction sums rows (deterministic). Accumulation is float32 for every input dtype.
// Backward: owner-computes gathers (no atomics): dQ rows per block, dD per document.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#include "maxsim_cuda.h"

namespace lateint {
namespace cuda {
namespace {

constexpr int kRows = 32;     // query rows per pass
constexpr int kTok = 32;      // doc tokens per tile (= warp size)
constexpr int kThreads = 128; // 4 warps x 8 rows

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) fwd_kernel(FwdParams p) {
  extern __shared__ float smem[];
  const int64_t dim = p.dim;
  float* qs = smem;                      // [kRows][dim]
  float* ds = smem + kRows * dim;        // [kTok][dim + 1]
  __shared__ float row_part[kThreads / 32];
  const int64_t s = blockIdx.x;  // slot (grid x: up to 2^31 - 1 documents)
  const int64_t q = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* Q = static_cast<const T*>(p.queries);
  const T* D = static_cast<const T*>(p.docs);
  int64_t doc = p.cand ? p.cand[q * p.ns + s] : s;
  const bool has_doc = doc >= 0;
  if (!has_doc) doc = 0;
  const int64_t t0 = p.offsets[doc];
  const int64_t t1 = has_doc ? p.offsets[doc + 1] : t0;
  const bool floor0 = p.zero_mode && p.doc_padded && p.doc_padded[doc];
  float total = 0.0f;  // per-warp partial (lane 0)
  for (int64_t r0 = 0; r0 < p.lq; r0 += kRows) {
    __syncthreads();
    for (int64_t i = threadIdx.x; i < kRows * dim; i += kThreads) {
      const int64_t r = r0 + i / dim;
      qs[i] = r < p.lq ? to_f<T>(Q[(q * p.lq + r) * dim + i % dim]) : 0.0f;
    }
    float best[8];
    int32_t arg[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      best[j] = -CUDART_INF_F;
      arg[j] = -1;
    }
    for (int64_t t = t0; t < t1; t += kTok) {
      __syncthreads();
      for (int64_t i = threadIdx.x; i < kTok * dim; i += kThreads) {
        const int64_t tok = t + i / dim;
        ds[(i / dim) * (dim + 1) + i % dim] = tok < t1 ? to_f<T>(D[tok * dim + i % dim]) : 0.0f;
      }
      __syncthreads();
      const int64_t tok = t + lane;
      if (tok < t1) {
        float acc[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] = 0.0f;
        const float* drow = ds + lane * (dim + 1);
        for (int64_t k = 0; k < dim; ++k) {
          const float dv = drow[k];
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[j] = fmaf(qs[(warp * 8 + j) * dim + k], dv, acc[j]);
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          if (acc[j] > best[j]) {
            best[j] = acc[j];
            arg[j] = (int32_t)tok;
          }
        }
      }
    }
    // reduce (max, first argmax) over the 32 lanes for each of the warp's rows
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      float b = best[j];
      int32_t a = arg[j];
      for (int off = 16; off > 0; off >>= 1) {
        const float ob = __shfl_down_sync(0xffffffffu, b, off);
        const int32_t oa = __shfl_down_sync(0xffffffffu, a, off);
        if (ob > b || (ob == b && oa >= 0 && (a < 0 || oa < a))) {
          b = ob;
          a = oa;
        }
      }
      if (lane == 0) {
        const int64_t r = r0 + warp * 8 + j;
        if (r < p.lq) {
          const bool keep = !p.query_mask || p.query_mask[q * p.lq + r];
          if (t1 <= t0) {  // empty document
            b = 0.0f;
            a = -1;
          }
          if (floor0 && !(b > 0.0f)) {
            b = 0.0f;
            a = -1;
          }
          if (!keep || !has_doc) a = -1;
          if (keep) total += b;
          if (p.argmax) p.argmax[(q * p.lq + r) * p.ns + s] = a;
        }
      }
    }
  }
  if (lane == 0) row_part[warp] = total;
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int w = 0; w < kThreads / 32; ++w) sum += row_part[w];
    p.scores[q * p.ns + s] = has_doc ? sum : -CUDART_INF_F;
  }
}

template <typename T>
__global__ void grad_q_kernel(BwdParams p) {
  const int64_t row = blockIdx.x;  // flattened (q, r)
  const int64_t q = row / p.lq;
  const T* D = static_cast<const T*>(p.docs);
  for (int64_t k = threadIdx.x; k < p.dim; k += blockDim.x) {
    float acc = 0.0f;
    for (int64_t s = 0; s < p.ns; ++s) {
      const int32_t a = p.argmax[row * p.ns + s];
      if (a < 0) continue;
      acc = fmaf(p.grad[q * p.ns + s], to_f<T>(D[(int64_t)a * p.dim + k]), acc);
    }
    p.dq[row * p.dim + k] = acc;
  }
}

template <typename T>
__global__ void grad_d_kernel(BwdParams p) {
  const int64_t doc = blockIdx.x;
  const T* Q = static_cast<const T*>(p.queries);
  const int64_t t0 = p.offsets[doc], t1 = p.offsets[doc + 1];
  for (int64_t k = threadIdx.x; k < p.dim; k += blockDim.x) {
    for (int64_t t = t0; t < t1; ++t) p.dd[t * p.dim + k] = 0.0f;
    for (int64_t e = p.pair_ptr[doc]; e < p.pair_ptr[doc + 1]; ++e) {
      const int64_t q = p.pair_q[e], s = p.pair_s[e];
      const float g = p.grad[q * p.ns + s];
      for (int64_t r = 0; r < p.lq; ++r) {
        const int32_t a = p.argmax[(q * p.lq + r) * p.ns + s];
        if (a < 0) continue;
        p.dd[(int64_t)a * p.dim + k] += g * to_f<T>(Q[(q * p.lq + r) * p.dim + k]);
      }
    }
  }
}

template <typename T>
cudaError_t launch_fwd(const FwdParams& p, cudaStream_t stream) {
  const size_t smem = (size_t)(kRows * p.dim + kTok * (p.dim + 1)) * sizeof(float);
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(fwd_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem);
    if (e != cudaSuccess) return e;
  }
  dim3 grid((unsigned)p.ns, (unsigned)p.nq);
  fwd_kernel<T><<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const BwdParams& p, cudaStream_t stream) {
  const int threads = p.dim >= 128 ? 128 : 64;
  if (p.nq * p.lq > 0) grad_q_kernel<T><<<(unsigned)(p.nq * p.lq), threads, 0, stream>>>(p);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  if (p.nd > 0) grad_d_kernel<T><<<(unsigned)p.nd, threads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t maxsim_forward(const FwdParams& p, cudaStream_t stream) {
  if (p.nq == 0 || p.ns == 0) return cudaSuccess;
  if (p.nq > 65535) return cudaErrorInvalidConfiguration;  // caller splits larger batches
  switch (p.dtype) {
    case 0: return launch_fwd<float>(p, stream);
    case 1: return launch_fwd<__half>(p, stream);
    default: return launch_fwd<__nv_bfloat16>(p, stream);
  }
}

cudaError_t maxsim_backward(const BwdParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case 0: return launch_bwd<float>(p, stream);
    case 1: return launch_bwd<__half>(p, stream);
    default: return launch_bwd<__nv_bfloat16>(p, stream);
  }
}

}  // namespace cuda
}  // namespace lateint
