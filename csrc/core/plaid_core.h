// Torch-free cores of PLAID's centroid interaction (csrc/cpu/plaid.cpp binds them).
#pragma once
#include <cstdint>
#include <vector>

namespace lateint {

// IVF candidates of one query: the union of the documents listed under the `ncells`
// highest-scoring centroids of each (unmasked) query token. scores: [lq, k] of this query;
// ivf: CSR centroid -> document ids. Writes the sorted unique document ids to out.
// Ties between centroid scores go to the lower centroid id.
bool ivf_candidates_query(const float* scores, const uint8_t* qmask, int64_t lq, int64_t k,
                          const int64_t* ivf_offsets, const int64_t* ivf_docs, int64_t nd,
                          int64_t ncells, std::vector<int64_t>* out, std::vector<uint8_t>* seen,
                          std::vector<int32_t>* order);

// Approximate (centroid-only) MaxSim of one query against its candidates, with centroid
// pruning: centroids whose best score over the query tokens is below the threshold take
// no part. scores_t: [k, lq] transposed scores of the query (masked tokens already removed:
// lq = unmasked rows), the rows of pruned centroids set to -inf by the caller; codes: int32
// per token of the packed documents; out[c] = sum over query tokens of the max over the
// candidate's kept tokens (0 for a token with none); -inf for candidate -1. Returns false
// if a candidate holds a code outside [0, k) (out is then incomplete).
bool approx_scores_query(const float* scores_t, int64_t lq, int64_t k, const int32_t* codes,
                         const int64_t* doc_offsets, const int64_t* cand, int64_t ncand, float* out);

}  // namespace lateint
