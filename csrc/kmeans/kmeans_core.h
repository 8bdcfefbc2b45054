// Torch-free core of kmeans_assign (csrc/kmeans/kmeans_cpu.cpp binds it): for every row of x, the
// centroid with the largest inner product (first index on ties) and that product, without
// materializing [n, k]. float32 arithmetic (inputs widened to float32).
#pragma once
#include <cstdint>
#include <vector>

#include "common/dtype.h"
#include "common/isa.h"

namespace lateint {

// Centroids packed once per call: transposed [dim, k_pad] float32, zero past k; with the
// int8 screen (kmeans_vnni.cpp) also per-centroid int8 codes, scales and norms.
struct PackedCentroids {
  int64_t k = 0, dim = 0, k_pad = 0;
  std::vector<float> t;
  bool vnni = false;        // screen with int8 dot products, rescore the survivors
  int64_t d4 = 0, kv = 0;   // dim rounded up to 4, k rounded up to the register tile
  std::vector<int8_t> q8;   // [kv / 16][d4 / 4][16][4] int8 codes
  std::vector<int32_t> corr;  // -128 * the sum of each centroid's codes
  std::vector<float> inv;   // 1 / each centroid's scale
  std::vector<float> rows;  // [k, dim] float32, row-major (the rescoring reads it)
  double cmax = 0, ecmax = 0;  // max |c|, max |c - dequantized c|
};

// Returns false if a centroid value is NaN or Inf. `screen` false keeps the int8 screen off
// even where kmeans_int8_screen() allows it.
bool pack_centroids(const void* c, DType dt, int64_t k, int64_t dim, PackedCentroids* out, bool screen = true);

// Rows [r0, r1) of x ([n, dim] of dt): codes[i] = argmax_c <x_i, c>, scores[i] = the max.
// Returns false if a row's products were not finite (NaN/Inf in x or in the centroids).
bool kmeans_assign_range(const void* x, DType dt, int64_t dim, const PackedCentroids& pc,
                         int64_t r0, int64_t r1, int32_t* codes, float* scores);

// Whether kmeans_assign screens with int8 dot products on this CPU (AVX512-VNNI, and the
// active ISA, lateint_kernels.cpu_isa, at avx512 or above); answers are the same either way.
bool kmeans_int8_screen();

namespace detail {
void pack_centroids_vnni(const float* rows, int64_t k, int64_t dim, PackedCentroids* pc);
// Rows [0, nr) of X (float32 [nr, dim]): codes/scores as the float32 kernel gives them;
// rows it cannot settle (non-finite, all-zero, too many near-ties) are appended to
// `fallback` with codes/scores untouched.
void assign_block_vnni(const float* X, int64_t nr, int64_t dim, const PackedCentroids& pc, int32_t* codes,
                       float* scores, std::vector<int64_t>* fallback);
}  // namespace detail

}  // namespace lateint
