// PLAID residual codec; see residual_core.h for the layout.
#include "residual_core.h"

#include <algorithm>
#include <cmath>

namespace lateint {

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define LATEINT_RES_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LATEINT_RES_CLONES
#endif

namespace {

// Bucket of each residual value: #{cutoffs < r} (torch.bucketize, right=False). Branch-free
// over the (at most 255) cutoffs so the loop over values vectorizes.
LATEINT_RES_CLONES void buckets_row(const float* __restrict x, const float* __restrict c,
                                    const float* __restrict cut, int ncut, int64_t dim,
                                    uint8_t* __restrict b) {
  for (int64_t j = 0; j < dim; ++j) {
    const float r = x[j] - c[j];
    int v = 0;
    for (int t = 0; t < ncut; ++t) v += cut[t] < r;
    b[j] = (uint8_t)v;
  }
}

// Bits of v (nbits of them) reversed: the first emitted (least significant) bit becomes
// the most significant of the group.
inline uint32_t reverse_bits(uint32_t v, int nbits) {
  uint32_t r = 0;
  for (int t = 0; t < nbits; ++t) r |= ((v >> t) & 1u) << (nbits - 1 - t);
  return r;
}

}  // namespace

void compress_residuals_range(const float* x, const float* centroids, const int32_t* codes,
                              const float* cutoffs, int nbits, int64_t dim, int64_t r0,
                              int64_t r1, uint8_t* out) {
  const int ncut = (1 << nbits) - 1;
  const int per_byte = 8 / nbits;
  const int64_t row_bytes = dim * nbits / 8;
  uint8_t rev[256];
  for (int v = 0; v <= ncut; ++v) rev[v] = (uint8_t)reverse_bits(v, nbits);
  uint8_t b[4096];
  for (int64_t i = r0; i < r1; ++i) {
    const float* xr = x + i * dim;
    const float* cr = centroids + (int64_t)codes[i] * dim;
    uint8_t* o = out + i * row_bytes;
    for (int64_t j0 = 0; j0 < dim; j0 += 4096) {
      const int64_t nj = std::min<int64_t>(4096, dim - j0);
      buckets_row(xr + j0, cr + j0, cutoffs, ncut, nj, b);
      for (int64_t j = 0; j < nj; j += per_byte) {
        uint32_t byte = 0;
        for (int s = 0; s < per_byte; ++s) byte = (byte << nbits) | rev[b[j + s]];
        o[(j0 + j) / per_byte] = (uint8_t)byte;
      }
    }
  }
}

void residual_byte_table(const float* weights, int nbits, float* table) {
  const int per_byte = 8 / nbits;
  for (int byte = 0; byte < 256; ++byte)
    for (int s = 0; s < per_byte; ++s) {
      const uint32_t group = (byte >> (8 - nbits * (s + 1))) & ((1u << nbits) - 1);
      table[byte * per_byte + s] = weights[reverse_bits(group, nbits)];
    }
}

namespace {

// One row: o = normalize(cr + table[bytes]). PB = values per byte (8 / nbits), fixed at
// compile time so the table copies unroll. The sum of squares runs in 8 float64 lanes
// (lane j % 8 holds values j, j + 8, ...; the lanes are added pairwise at the end): the
// single running sum it replaces was one 4-cycle dependency per value and made
// decompression latency-bound.
template <int PB>
inline __attribute__((always_inline)) void decompress_rows(const int32_t* codes, const uint8_t* packed,
                                                           const float* centroids, const float* table,
                                                           int64_t dim, int64_t r0, int64_t r1, float* out) {
  const int64_t row_bytes = dim / PB;
  for (int64_t i = r0; i < r1; ++i) {
    const float* __restrict cr = centroids + (int64_t)codes[i] * dim;
    const uint8_t* __restrict p = packed + i * row_bytes;
    float* __restrict o = out + i * dim;
    for (int64_t by = 0; by < row_bytes; ++by) {
      const float* __restrict t = table + (int64_t)p[by] * PB;
      for (int s = 0; s < PB; ++s) o[by * PB + s] = cr[by * PB + s] + t[s];
    }
    double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= dim; j += 8)
      for (int l = 0; l < 8; ++l) lane[l] += (double)o[j + l] * o[j + l];
    for (int l = 0; j < dim; ++j, ++l) lane[l] += (double)o[j] * o[j];
    const double ss = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
    const float inv = (float)(1.0 / std::max(std::sqrt(ss), 1e-12));
    for (int64_t k = 0; k < dim; ++k) o[k] *= inv;
  }
}

// One clone per ISA; the row code is inlined into each, so it is vectorized for that ISA.
LATEINT_RES_CLONES void decompress_dispatch(const int32_t* codes, const uint8_t* packed,
                                            const float* centroids, const float* table, int nbits,
                                            int64_t dim, int64_t r0, int64_t r1, float* out) {
  switch (nbits) {
    case 1: return decompress_rows<8>(codes, packed, centroids, table, dim, r0, r1, out);
    case 2: return decompress_rows<4>(codes, packed, centroids, table, dim, r0, r1, out);
    case 4: return decompress_rows<2>(codes, packed, centroids, table, dim, r0, r1, out);
    default: return decompress_rows<1>(codes, packed, centroids, table, dim, r0, r1, out);
  }
}

}  // namespace

void decompress_residuals_range(const int32_t* codes, const uint8_t* packed,
                                const float* centroids, const float* table, int nbits,
                                int64_t dim, int64_t r0, int64_t r1, float* out) {
  decompress_dispatch(codes, packed, centroids, table, nbits, dim, r0, r1, out);
}

}  // namespace lateint
