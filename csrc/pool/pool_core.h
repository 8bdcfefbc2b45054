// Torch-free core of token pooling (csrc/pool/pool_cpu.cpp binds it): per document,
// Ward hierarchical clustering of the token embeddings, cut into a fixed number of
// clusters, each cluster replaced by its mean.
//
// The clustering reproduces scipy.cluster.hierarchy exactly (the library PyLate's
// `pool_embeddings_hierarchical` calls): `linkage(condensed, method="ward")` (nearest-
// neighbour chain with the Lance-Williams update, same operations in the same order, no
// fused multiply-adds), then `fcluster(Z, k, criterion="maxclust")` with scipy's cluster
// numbering. Given the same float64 distances, the linkage matrix is bit-identical (tested
// against scipy). One departure: where the Ward update takes the square root of a negative
// rounding residue (scipy then gets NaN and its later steps read undefined state), the
// residue is taken as 0.
#pragma once
#include <cmath>
#include <cstdint>
#include <new>
#include <vector>

#include "common/dtype.h"
#include "common/isa.h"

namespace lateint {

// Distance between two tokens a, b of a document.
//   Cosine: 1 - <a, b> on the vectors as given (PyLate's choice; for L2-normalized
//           embeddings this is the cosine distance), computed in float32 for float32/16
//           inputs like PyLate, in float64 for float64 inputs.
//   Euclidean: ||a/|a| - b/|b|||, Ward's own setting, on L2-normalized copies.
//   CosineClamped: the cosine distance in float32 (float64 inputs are rounded to float32
//           first) clamped to [0, 2] (sentence-transformers' HierarchicalTokenPooling).
//   CosineRows: the Euclidean distance between the rows of the full float32 cosine
//           distance matrix M (its diagonal 1 - <a, a> included), summed in float64 in
//           column order without fused multiply-adds, as scipy's pdist does on M
//           (colpali-engine's HierarchicalTokenPooler passes M to linkage as observations).
enum class PoolDistance : int { Cosine = 0, Euclidean = 1, CosineClamped = 2, CosineRows = 3 };

// How a cluster's mean sums its rows.
//   Sequential: in token order, one accumulator (torch's scatter_add_, PyLate and
//           sentence-transformers).
//   Cascade: torch's sum over dim 0 of the cluster's rows gathered in token order
//           (colpali-engine's `embedding[idx].mean(dim=0)`) on one thread: running sums of
//           2^L rows folded into the next of four levels, L = max(4, ceil(log2(m)) / 4),
//           per column for blocks of four of torch's vectors, four interleaved such sums for
//           the other columns. The vector width (8 or 16 floats) is the one torch's CPU
//           kernels run with on this machine.
//   SequentialRounded: Sequential, with each sum rounded to the rows' type before the
//           division (sentence-transformers' scatter_add into a tensor of the input dtype,
//           which torch accumulates in float32 for half types and rounds once, then divides
//           the half-precision sums by the counts); the same as Sequential for float32 and
//           float64 rows.
enum class PoolMeans : int { Sequential = 0, Cascade = 1, SequentialRounded = 2 };

// Cache-line aligned storage for the arrays the kernels read with 64-byte vector loads (a
// std::vector's buffer is only 16-byte aligned: every such load would straddle two lines).
template <typename T>
struct LineAligned {
  using value_type = T;
  LineAligned() = default;
  template <typename U>
  LineAligned(const LineAligned<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const LineAligned<U>&) const { return true; }
  template <typename U>
  bool operator!=(const LineAligned<U>&) const { return false; }
};
template <typename T>
using aligned_vector = std::vector<T, LineAligned<T>>;

// Per-thread scratch reused across documents (grown on demand, never shrunk).
struct PoolScratch {
  std::vector<float> xf;
  aligned_vector<float> xtf;
  std::vector<double> xd, xtd, gd;
  aligned_vector<double> D, size, inv;
  std::vector<double> mdist, Z, MD, merge_d;
  std::vector<int32_t> chain, mx, my, T, uf, stack, orig, remap, cid, cx, cy, pos;
  std::vector<double> csz;
  std::vector<int64_t> keep;
  std::vector<uint64_t> skeys;  // sort keys and their merges, 8 slots before the first
  std::vector<int32_t> sidx;
  std::vector<float> mean_f;   // cluster sums (float32 accumulation)
  std::vector<double> mean_d;  // cluster sums (float64 rows)
  std::vector<int64_t> mean_n;
  std::vector<int32_t> members;  // tokens of each cluster in token order (cascade means)
  std::vector<float> mrow;       // the cosine matrix of CosineRows, float32 rows
  // Memory the caller reads next (the next document): ward_nn_chain brings it into L2 a few
  // lines per merge, so that its first read does not wait on DRAM. Optional.
  const void* prefetch = nullptr;
  int64_t prefetch_bytes = 0;
};

// Ward NN-chain over the full symmetric n x n distance matrix D (row stride ld >= n),
// which is overwritten. Writes the merges in the order the chain finds them, as scipy's
// nn_chain does before sorting: slots mx[k] < my[k] and the distance mdist[k], k < n - 1.
// Also records, for linkage_from_chain, the two clusters each merge joins by their
// chain-order ids (observation i: i; the cluster formed by merge j: n + j) in s.cx / s.cy
// and the merged size in s.csz.
void ward_nn_chain(double* D, int64_t n, int64_t ld, int32_t* mx, int32_t* my, double* mdist,
                   PoolScratch& s, Isa isa);

// scipy's linkage matrix from the merges: stable sort by distance (NaN last), union-find
// relabelling, cluster sizes. Z is [n - 1, 4] row-major float64.
void linkage_from_merges(const int32_t* mx, const int32_t* my, const double* mdist, int64_t n,
                         double* Z, PoolScratch& s);

// linkage_from_merges for the merges ward_nn_chain just made (it reads s.cx, s.cy, s.csz):
// the same matrix, with the clusters' ids mapped through the sorted order instead of a
// union-find, when that order puts every merge after the merges that formed its two
// clusters (Ward's merge distances grow up the tree, so it does unless rounding makes a
// merge distance smaller than a child's); otherwise by linkage_from_merges' union-find.
void linkage_from_chain(const int32_t* mx, const int32_t* my, const double* mdist, int64_t n,
                        double* Z, PoolScratch& s);

// scipy's fcluster(Z, max_nc, criterion="maxclust"): T[i] in 1..nc for observation i, with
// scipy's cluster numbering. Returns nc (<= max_nc; fewer when merge distances tie).
int64_t fcluster_maxclust(const double* Z, int64_t n, int64_t max_nc, int32_t* T,
                          PoolScratch& s);

// Pairwise distances of the n rows of x ([n, dim] of `dt`) into D (n x n, stride ld, the
// diagonal +inf).
void pool_distances(const void* x, DType dt, int64_t n, int64_t dim, PoolDistance dist,
                    double* D, int64_t ld, PoolScratch& s, Isa isa);

// The cosine distances (Cosine, CosineClamped, CosineRows) from a float32 Gram matrix G
// [n, n] (stride ldg) computed elsewhere: 1 - G in float32, then as pool_distances.
void pool_distances_from_gram(const float* G, int64_t n, int64_t ldg, PoolDistance dist, double* D,
                              int64_t ld, PoolScratch& s);

// Clusters one document's poolable tokens: labels[i] in 0..nc-1 (the order of the pooled
// rows, PyLate's), returns nc. n_clusters = max(1, n // pool_factor); n < 2 or
// n_clusters >= n returns n with labels[i] = i (the document is kept as is). With `gram`
// (float32 [n, n], stride ldg; only read when the document is clustered) the cosine
// distances come from it instead of from x.
int64_t pool_labels(const void* x, DType dt, int64_t n, int64_t dim, double pool_factor,
                    PoolDistance dist, int32_t* labels, PoolScratch& s, Isa isa,
                    const float* gram = nullptr, int64_t ldg = 0);

// Whether all `count` values of x are finite (no NaN, no Inf).
// One document's output rows, PyLate's scatter_add and division: its first p of len rows
// copied as they are, then for each cluster c < nc the mean of the rows p + i with lab[i]
// == c, summed in token order (`means`) and divided by the count, in float32 (float64 for
// F64 rows), so float32 results are PyLate's bits; `normalize` L2-normalizes each mean (in
// float64). x and dst hold rows of dt; dst has room for p + nc rows. `width`: torch's
// vector width in values, for PoolMeans::Cascade.
void pool_doc_means(const void* x, DType dt, int64_t len, int64_t p, const int32_t* lab, int64_t nc,
                    int64_t dim, bool normalize, PoolMeans means, int width, void* dst, PoolScratch& s);

// How torch's CPU norm kernel sums the squares of a float32 row (torch.nn.functional.
// normalize over the last dim): `width` lanes (its vector width, 8 or 16) over the row in
// steps of width, each step a multiply then an add (one FMA when vec_fma), the lanes added
// in lane order, the rest of the row squared and added one value at a time (fused when
// tail_fma), then sqrtf. The binding checks which of these torch is on the machine.
struct TorchRowNorm {
  int width = 8;
  bool vec_fma = false, tail_fma = false;
};

// x [n, dim] float32 normalized in place as torch.nn.functional.normalize(x, dim=-1)
// computes it when `how` is torch's summation: each row divided by max(norm, 1e-12).
void l2_rows_like_torch(float* x, int64_t n, int64_t dim, TorchRowNorm how, Isa isa);

bool pool_all_finite(const void* x, DType dt, int64_t count);

// The largest squared L2 norm among the n rows of x [n, dim] (NaN if any is NaN, +inf on
// overflow; float32 sums for float32 rows). The cosine distance 1 - <a, b> is a
// dissimilarity (>= 0, up to rounding) only for rows of norm <= 1: larger norms give
// negative distances, on which scipy's Ward update takes square roots of negative numbers.
double pool_max_sqnorm(const void* x, DType dt, int64_t n, int64_t dim);

// Squared norm up to which a token counts as L2-normalized for the cosine distance: room
// for float16 / bfloat16 rounding of unit vectors (relative error 2^-8 per value).
constexpr double kPoolMaxSqNorm = 1.02;

// The cut of pool_labels from an NN-chain's merge list (n - 1 merges, any device made
// them): labels[i] in 0..nc-1, returns nc. Used by the GPU path's host step.
int64_t pool_labels_from_merges(const int32_t* mx, const int32_t* my, const double* mdist,
                                int64_t n, int64_t n_clusters, int32_t* labels, PoolScratch& s);

// Python's float floor division n // f (f >= 1 finite): the quotient of the exactly
// representable n - fmod(n, f), rounded as CPython rounds it; n / f for integral f.
inline int64_t pool_floordiv(int64_t n, double f) {
  const double vx = (double)n;
  const double mod = std::fmod(vx, f);
  const double div = (vx - mod) / f;
  if (div == 0) return 0;
  double q = std::floor(div);
  if (div - q > 0.5) q += 1.0;
  return (int64_t)q;
}

// Number of clusters PyLate / sentence-transformers / colpali-engine ask for:
// max(1, n // pool_factor), or n when that does not reduce the document.
inline int64_t pool_target(int64_t n, double pool_factor) {
  const int64_t q = pool_floordiv(n, pool_factor);
  const int64_t k = q > 1 ? q : 1;
  return k >= n ? n : k;
}

}  // namespace lateint
