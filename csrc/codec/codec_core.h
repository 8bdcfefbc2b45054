// Torch-free core of the PLAID residual codec (csrc/codec/codec_cpu.cpp binds it).
//
// Layout (ColBERTv2 / PLAID): residual r = x - C[code]; each value goes to bucket
// b = #{cutoffs < r} in [0, 2^nbits); the nbits bits of b are emitted least significant
// first, value after value along the row, and packed 8 to a byte most significant bit
// first (numpy.packbits). A row of dim values takes dim * nbits / 8 bytes.
// Decompression: C[code] + weights[b] per value, then L2-normalized.
#pragma once
#include <cstdint>

namespace lateint {

// Rows [r0, r1): x [n, dim] float32, centroids [k, dim] float32, codes int32 [n],
// cutoffs [2^nbits - 1] ascending; out [n, dim * nbits / 8].
void compress_residuals_range(const float* x, const float* centroids, const int32_t* codes,
                              const float* cutoffs, int nbits, int64_t dim, int64_t r0,
                              int64_t r1, uint8_t* out);

// Per-byte lookup table for decompression: table[byte * (8 / nbits) + i] = weight of the
// i-th value the byte holds. table has 256 * 8 / nbits floats.
void residual_byte_table(const float* weights, int nbits, float* table);

// Rows [r0, r1): out [n, dim] float32 = normalize(C[code] + weights[bucket]).
void decompress_residuals_range(const int32_t* codes, const uint8_t* packed,
                                const float* centroids, const float* table, int nbits,
                                int64_t dim, int64_t r0, int64_t r1, float* out);

}  // namespace lateint
