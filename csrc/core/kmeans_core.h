// Torch-free core of kmeans_assign (csrc/cpu/kmeans.cpp binds it): for every row of x, the
// centroid with the largest inner product (first index on ties) and that product, without
// materializing [n, k]. float32 arithmetic (inputs widened to float32).
#pragma once
#include <cstdint>
#include <vector>

#include "maxsim_core.h"

namespace lateint {

// Centroids packed once per call: transposed [dim, k_pad] float32, zero past k.
struct PackedCentroids {
  int64_t k = 0, dim = 0, k_pad = 0;
  std::vector<float> t;
};

// Storage type of x / centroids rows.
enum class KmDType : int { F32 = 0, F16 = 1, BF16 = 2 };

// Returns false if a centroid value is NaN or Inf.
bool pack_centroids(const void* c, KmDType dt, int64_t k, int64_t dim, PackedCentroids* out);

// Rows [r0, r1) of x ([n, dim] of dt): codes[i] = argmax_c <x_i, c>, scores[i] = the max.
// Returns false if a row's products were not finite (NaN/Inf in x or in the centroids).
bool kmeans_assign_range(const void* x, KmDType dt, int64_t dim, const PackedCentroids& pc,
                         int64_t r0, int64_t r1, int32_t* codes, float* scores);

}  // namespace lateint
