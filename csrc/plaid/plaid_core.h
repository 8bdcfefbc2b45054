// Torch-free cores of PLAID's centroid interaction (csrc/plaid/plaid_cpu.cpp binds them).
#pragma once
#include <cstdint>
#include <vector>

namespace lateint {

// IVF candidates of one query: the union of the documents listed under the `ncells`
// highest-scoring centroids of each (unmasked) query token. scores: this query's [lq, k]
// scores, token i's score for centroid c at scores[i * si + c * sc] (token-major: si = k,
// sc = 1; code-major: si = 1, each centroid's lq scores one row of stride sc); ivf: CSR
// centroid -> document ids. Writes the sorted unique document ids to out. Ties between
// centroid scores go to the lower centroid id.
bool ivf_candidates_query(const float* scores, int64_t si, int64_t sc, const uint8_t* qmask, int64_t lq, int64_t k,
                          const int64_t* ivf_offsets, const int64_t* ivf_docs, int64_t nd,
                          int64_t ncells, std::vector<int64_t>* out, std::vector<uint8_t>* seen,
                          std::vector<int32_t>* order);

// Rows [c0, c1) of one query's table for approx_scores_query: table[(c - c0) * stride + r]
// = scores[rows[r] * k + c] for the l2 unmasked query tokens `rows` of scores [lq, k],
// -inf for l2 <= r < stride (padding: a -inf column adds 0 to the approximate score), and
// the whole row of centroid c -inf when its best score over those tokens is below
// `threshold` (or l2 == 0). With AVX-512 and stride a multiple of 16, blocks of 16
// centroids x 16 tokens are transposed in registers. Returns false when one of the scores
// read is NaN (the caller refuses the call).
bool approx_table_rows(const float* scores, const int64_t* rows, int64_t l2, int64_t stride, int64_t k, int64_t c0,
                       int64_t c1, double threshold, float* table);

// Approximate (centroid-only) MaxSim of one query against its candidates, with centroid
// pruning: centroids whose best score over the query tokens is below the threshold take
// no part. Centroid c's lq scores are the row scores + c * sc: a table from
// approx_table_rows (sc = lq = its stride, use and keep null: masked tokens and pruned
// centroids are already -inf there) or code-major scores read in place (use[i] != 0 for
// the unmasked tokens). approx_keep_rows sets keep[c] for c in [c0, c1): the row's maximum
// over the used tokens (-inf when none) >= threshold, counts the kept rows in *kept, and
// returns false when one of the used scores is NaN. approx_scores_query reads ninf_row
// (lq times -inf) in place of the rows of centroids with !keep[c] (keep null: none
// pruned), or with `sparse` (for few kept centroids) skips them; codes: int32 per token of
// the packed documents; out[c] = sum over the used query tokens, in order, of the max over
// the candidate's kept tokens (0 for a token with none); -inf for candidate -1. Both
// inputs of the same scores give the same bits. Returns false if a candidate holds a code
// outside [0, k) (out is then incomplete).
bool approx_keep_rows(const float* scores, int64_t sc, const uint32_t* use, int64_t lq, int64_t c0, int64_t c1,
                      double threshold, uint8_t* keep, int64_t* kept);
bool approx_scores_query(const float* scores, int64_t sc, int64_t lq, int64_t k, const uint32_t* use,
                         const uint8_t* keep, bool sparse, const float* ninf_row, const int32_t* codes,
                         const int64_t* doc_offsets, const int64_t* cand, int64_t ncand, float* out);

}  // namespace lateint

namespace lateint {

// Compressed-domain scoring (WARP's "implicit decompression"): a document token stored as
// centroid code c and residual buckets (nbits per value, packed as in codec/codec_core.h) is
// scored against query token i as  scores[i][c] + sum_b lut[b][byte_b][i],  i.e. the inner
// product with the unnormalized reconstruction C[c] + weights[bucket], without rebuilding
// the token. lut: [row_bytes][256][LQ] floats (LQ = query tokens rounded up to 16), where
// lut[b][v][i] = sum over the 8/nbits values s that byte b holds: q[i][b*PB + s] * the
// weight of value s in byte value v. Rows of masked (qmask[i] == 0) or padding tokens are 0.
void lut_build(const float* q, const uint8_t* qmask, int64_t lq, int64_t LQ, int64_t dim,
               const float* byte_table, int nbits, float* lut);

// The query's centroid scores [lq, k] (token i, centroid c at scores[i * si + c * sc])
// transposed to scores_t [k][LQ] (padding rows 0), so a token's centroid term for all query
// tokens is one contiguous row.
void lut_scores_transpose(const float* scores, int64_t si, int64_t sc, int64_t lq, int64_t LQ, int64_t k,
                          float* scores_t);

// One document of n tokens: sum over the unmasked query tokens i < lq of the max over its
// tokens of scores_t[codes[t] * LQ + i] + sum_b lut[(b * 256 + packed[t][b]) * LQ + i]
// (0 for n == 0). work: 2 * LQ floats.
float lut_score_doc(const float* lut, const float* scores_t, const uint8_t* qmask, int64_t lq, int64_t LQ,
                    const int32_t* codes, const uint8_t* packed, int64_t row_bytes, int64_t n, float* work);

}  // namespace lateint
