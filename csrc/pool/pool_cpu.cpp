// CPU binding of the token pooling ops: checks, then the torch-free core (csrc/pool/
// pool_core) per document over at::parallel_for, then cluster means.
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>
#include <torch/types.h>

#include <atomic>
#include <map>
#include <tuple>
#include <mutex>
#include <cstring>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "pool/pool_core.h"

namespace {

using lateint::PoolDistance;
using lateint::DType;

// The documents to pool, from a packed tensor + offsets or from a list of tensors: where
// each document's rows start (`doc`), and global token offsets `o` (the list's prefix sums)
// that index the per-token label arrays.
struct PoolInputs {
  std::vector<at::Tensor> hold;  // contiguous inputs, kept alive while `doc` points into them
  std::vector<const char*> doc;  // [nd] first row of document d
  std::vector<int64_t> o_list;   // list input: [nd + 1] prefix sums of the lengths
  const int64_t* o = nullptr;    // [nd + 1] global token offsets
  at::TensorOptions opts;        // dtype/device of the tokens (and of the pooled output)
  DType dt = DType::F32;
  PoolDistance dist = PoolDistance::Cosine;
  lateint::PoolMeans means = lateint::PoolMeans::Sequential;
  int torch_width = 8;  // floats per vector of torch's dim-0 sum kernel (cascade means)
  bool pylate = true;   // PyLate's variant: `normalize` L2-normalizes the means only
  bool l2_rows = false; // every output row L2-normalized as torch.nn.functional.normalize
  // l2_rows: the kernel's own summation when it is torch's (row_norm_own), else torch's ops
  bool row_norm_own = false;
  lateint::TorchRowNorm row_norm;
  double pool_factor = 1;
  int64_t nd = 0, dim = 0, esz = 4, protect = 0;
  const char* name = "doc_tokens";  // the argument holding the tokens, for error messages
};

PoolDistance distance_of(c10::string_view d, const char* op) {
  if (d == "cosine") return PoolDistance::Cosine;
  if (d == "euclidean") return PoolDistance::Euclidean;
  TORCH_CHECK(false, op, ": `distance` must be \"cosine\" or \"euclidean\", got \"",
              std::string(d), "\"");
}

int torch_sum_width();

// The library whose pooling is reproduced: its distance (from `distance`, the PyLate
// variant's choice) and how its means sum.
void apply_variant(c10::string_view variant, const char* op, PoolInputs& in) {
  if (variant == "pylate") return;
  const bool st = variant == "sentence-transformers", colpali = variant == "colpali";
  TORCH_CHECK(st || colpali, op, ": `variant` must be \"pylate\", \"sentence-transformers\" or \"colpali\", got \"",
              std::string(variant), "\"");
  TORCH_CHECK(in.dist == PoolDistance::Cosine, op, ": `distance` must be \"cosine\" with variant \"",
              std::string(variant), "\" (that library's only distance)");
  in.pylate = false;
  in.dist = st ? PoolDistance::CosineClamped : PoolDistance::CosineRows;
  in.means = st ? lateint::PoolMeans::SequentialRounded : lateint::PoolMeans::Cascade;
  in.torch_width = torch_sum_width();
}

void prepare_scalars(const char* op, double pool_factor, int64_t protected_tokens,
                     c10::string_view distance, c10::string_view variant, PoolInputs& in) {
  LK_CHECK(std::isfinite(pool_factor) && pool_factor >= 1, op, "`pool_factor` must be a number >= 1, got ",
           pool_factor);
  LK_CHECK(protected_tokens >= 0, op, "`protected_tokens` must be >= 0, got ", protected_tokens);
  in.dist = distance_of(distance, op);
  apply_variant(variant, op, in);
  in.pool_factor = pool_factor;
  in.protect = protected_tokens;
  in.esz = in.dt == DType::F64 ? 8 : in.dt == DType::F32 ? 4 : 2;
}

PoolInputs prepare(const char* op, const at::Tensor& tokens, const at::Tensor& offsets,
                   double pool_factor, int64_t protected_tokens, c10::string_view distance,
                   c10::string_view variant) {
  PoolInputs in;
  LK_CHECK_DIM(tokens, 2, op, "doc_tokens", "[total_tokens, dim]");
  LK_CHECK_DIM(offsets, 1, op, "doc_offsets", "[n_docs + 1]");
  LK_CHECK(tokens.device().is_cpu(), op, "`doc_tokens` must be a CPU tensor here, got ",
           tokens.device());
  LK_CHECK(offsets.device() == tokens.device(), op, "`doc_offsets` must be on ",
           tokens.device(), " like `doc_tokens`, got ", offsets.device());
  in.dt = dtype_of(tokens, op, "doc_tokens", true);
  LK_CHECK_DTYPE(offsets, at::kLong, op, "doc_offsets");
  LK_CHECK(offsets.size(0) >= 1, op, "`doc_offsets` must hold n_docs + 1 >= 1 entries");
  LK_CHECK(tokens.size(1) >= 1, op, "`doc_tokens` must have dim >= 1");
  LK_CHECK(tokens.size(0) < (int64_t(1) << 31), op, "`doc_tokens` has ", tokens.size(0),
           " rows; at most 2^31 - 1 are supported");
  prepare_scalars(op, pool_factor, protected_tokens, distance, variant, in);
  at::Tensor t = tokens.contiguous();
  in.hold = {t, offsets.contiguous()};
  in.o = in.hold[1].data_ptr<int64_t>();
  in.opts = t.options();
  in.nd = offsets.size(0) - 1;
  in.dim = tokens.size(1);
  const int64_t T = tokens.size(0);
  const int64_t* o = in.o;
  check_doc_offsets_start_and_order(o, in.nd, op);
  LK_CHECK(o[in.nd] == T, op,
           "`doc_offsets[-1]` must equal the number of rows of `doc_tokens` (", T, "), got ",
           o[in.nd]);
  const char* base = static_cast<const char*>(t.data_ptr());
  in.doc.resize(in.nd);
  for (int64_t d = 0; d < in.nd; ++d) in.doc[d] = base + o[d] * in.dim * in.esz;
  return in;
}

// A list of [L_i, dim] documents, read where they lie (no packed copy of the input).
PoolInputs prepare_list(const char* op, at::TensorList docs, double pool_factor,
                        int64_t protected_tokens, c10::string_view distance, c10::string_view variant) {
  PoolInputs in;
  in.name = "docs";
  LK_CHECK(!docs.empty(), op, "`docs` must hold at least one document");
  const at::Tensor& d0 = docs[0];
  LK_CHECK(d0.dim() == 2, op, "`docs[0]` must be a 2-D tensor [L, dim], got shape ", d0.sizes());
  in.dt = dtype_of(d0, op, "docs[0]", true);
  in.dim = d0.size(1);
  LK_CHECK(in.dim >= 1, op, "`docs` must have dim >= 1");
  prepare_scalars(op, pool_factor, protected_tokens, distance, variant, in);
  in.nd = (int64_t)docs.size();
  in.opts = d0.options();
  in.hold.reserve(in.nd);
  in.doc.resize(in.nd);
  in.o_list.resize(in.nd + 1);
  in.o_list[0] = 0;
  for (int64_t d = 0; d < in.nd; ++d) {
    const at::Tensor& t = docs[d];
    LK_CHECK(t.dim() == 2 && t.size(1) == in.dim, op, "`docs[", d, "]` must be [L, ", in.dim,
             "] like docs[0], got shape ", t.sizes());
    LK_CHECK(t.scalar_type() == d0.scalar_type(), op, "`docs[", d, "]` must be ",
             d0.scalar_type(), " like docs[0], got ", t.scalar_type());
    LK_CHECK(t.device().is_cpu(), op, "`docs[", d, "]` must be a CPU tensor here, got ",
             t.device());
    in.hold.push_back(t.contiguous());
    in.doc[d] = static_cast<const char*>(in.hold.back().data_ptr());
    in.o_list[d + 1] = in.o_list[d] + t.size(0);
  }
  LK_CHECK(in.o_list[in.nd] < (int64_t(1) << 31), op, "`docs` hold ", in.o_list[in.nd],
           " rows; at most 2^31 - 1 are supported");
  in.o = in.o_list.data();
  return in;
}

const void* doc_row(const PoolInputs& in, int64_t d, int64_t i) {
  return in.doc[d] + i * in.dim * in.esz;
}

// fn(b, e) over blocks of documents handed out dynamically: each thread takes the next
// block when it is done with its last, so a thread slowed down (another process on its
// core, a run of long documents) does not leave the others waiting at the end as a static
// split of the range would.
template <typename F>
void for_each_doc(int64_t nd, const F& fn) {
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), nd));
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(8, nd / (16 * nt)));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nt, 1, [&](int64_t, int64_t) {
    for (;;) {
      const int64_t b = next.fetch_add(block);
      if (b >= nd) break;
      fn(b, std::min(nd, b + block));
    }
  });
}

// Per-document output counts -> output offsets, and each token's row within its document
// -> its global output row.
void rows_to_global(const int64_t* o, int64_t nd, const int64_t* count, int64_t* rows,
                    int64_t* new_offsets) {
  new_offsets[0] = 0;
  for (int64_t d = 0; d < nd; ++d) new_offsets[d + 1] = new_offsets[d] + count[d];
  const int64_t grain = std::max<int64_t>(1, nd / (8 * at::get_num_threads()));
  at::parallel_for(0, nd, grain, [&](int64_t b, int64_t e) {
    for (int64_t d = b; d < e; ++d)
      for (int64_t t = o[d]; t < o[d + 1]; ++t) rows[t] += new_offsets[d];
  });
}

// The probes' inputs: a uniform value in [-0.5, 0.5) from a 64-bit LCG stepped in place
// (deterministic, so a probe's verdict does not depend on the run).
float probe_uniform(uint64_t& state) {
  state = state * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((double)(state >> 11) / 9007199254740992.0 - 0.5);
}

// The vector width (floats) of torch's float32 sum over dim 0, which the cascade means
// reproduce: found once against at::mean on pseudo-random rows of a dim (48) where the
// two widths give other column blocks. The width of torch's Vectorized<float> at its
// dispatched capability is not the answer: torch registers its AVX2 reduction kernels
// for AVX-512 CPUs too, so the sum runs 8 wide there. If neither width matches (a torch
// with yet another order), 8; the bit-identity tests then say so.
int torch_sum_width() {
  static const int width = [] {
    constexpr int64_t rows = 200, dim = 48;
    at::Tensor x = at::empty({rows, dim}, at::kFloat);
    float* p = x.data_ptr<float>();
    uint64_t state = 0x2545F4914F6CDD1Dull;
    for (int64_t i = 0; i < rows * dim; ++i) p[i] = probe_uniform(state);
    const at::Tensor want = x.mean(0).contiguous();
    std::vector<int32_t> labels(rows, 0);
    std::vector<float> got(dim);
    int found = 0, matches = 0;
    for (const int w : {8, 16}) {
      lateint::PoolScratch s;
      lateint::pool_doc_means(p, DType::F32, rows, 0, labels.data(), 1, dim, false, lateint::PoolMeans::Cascade, w,
                              got.data(), s);
      if (std::memcmp(got.data(), want.data_ptr<float>(), dim * sizeof(float)) == 0) {
        found = w;
        ++matches;
      }
    }
    return matches == 1 ? found : 8;
  }();
  return width;
}

// Whether the cosine distances come from torch.mm, as the reproduced library computes
// them: x x^T in float32 (sentence-transformers and colpali-engine cast to float32 first;
// PyLate multiplies float32 tokens as they are). torch's matrix product gives the same
// bits whatever the thread count or the rows' alignment, so the distances, and with them
// Ward's every merge, are that library's own.
//
// The kernel's own distance tiles compute each <a, b> as one float32 FMA chain over the
// dimension, which is what torch.mm's sgemm gives on the machine measured for dims up to
// 128 and documents of at least kOwnGramMinRows rows (below, MKL takes a small-matrix path
// with other bits). Where that holds (checked once per dimension and ISA level against
// at::mm on pseudo-random unit rows, documents of 12, 16, 45 and 301 rows), the tiles serve
// those documents instead, at half the work (one triangle); torch.mm serves the rest.
constexpr int64_t kOwnGramMinRows = 12;

bool own_gram_is_torch_mm(int64_t dim, lateint::Isa isa) {
  static std::mutex mu;
  static std::map<std::pair<int64_t, int>, bool> known;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(dim, (int)isa);
  const auto it = known.find(key);
  if (it != known.end()) return it->second;
  bool same = true;
  uint64_t state = 0x9E3779B97F4A7C15ull ^ (uint64_t)dim;
  for (const int64_t n : {kOwnGramMinRows, (int64_t)16, (int64_t)45, (int64_t)301}) {
    at::Tensor x = at::empty({n, dim}, at::kFloat);
    float* p = x.data_ptr<float>();
    for (int64_t i = 0; i < n * dim; ++i) p[i] = probe_uniform(state);
    x = x / x.norm(2, 1, true);
    const at::Tensor g = at::mm(x, x.t()).contiguous();
    const int64_t ld = (n + 7) / 8 * 8;
    lateint::PoolScratch s;
    s.D.assign(n * ld, 0.0);
    lateint::pool_distances(x.data_ptr<float>(), DType::F32, n, dim, PoolDistance::Cosine, s.D.data(), ld, s, isa);
    const float* gp = g.data_ptr<float>();
    for (int64_t i = 0; i < n && same; ++i)
      for (int64_t j = 0; j < n; ++j)
        if (i != j && s.D[i * ld + j] != (double)(1.0f - gp[i * n + j])) {
          same = false;
          break;
        }
  }
  known[key] = same;
  return same;
}

// Documents with fewer poolable rows than this take their distances from torch.mm: 0 when
// the kernel's distances are the reproduced library's anyway (float16/bfloat16/float64
// PyLate-variant inputs, the Euclidean distance), kOwnGramMinRows where the kernel's
// tiles give torch.mm's bits, every document otherwise. Decided once per op call.
int64_t mm_below(const PoolInputs& in, lateint::Isa isa) {
  const bool mm_is_theirs = in.dist == PoolDistance::CosineClamped || in.dist == PoolDistance::CosineRows ||
                            (in.dist == PoolDistance::Cosine && in.dt == DType::F32);
  if (!mm_is_theirs) return 0;
  return own_gram_is_torch_mm(in.dim, isa) ? kOwnGramMinRows : std::numeric_limits<int64_t>::max();
}

// torch.mm(x, x.t()) of document d's n poolable rows (from row p) in float32, contiguous.
at::Tensor doc_gram(const PoolInputs& in, int64_t d, int64_t p, int64_t n) {
  at::Tensor x = at::from_blob(const_cast<void*>(doc_row(in, d, p)), {n, in.dim}, in.opts);
  if (x.scalar_type() != at::kFloat) x = x.to(at::kFloat);
  return at::mm(x, x.t()).contiguous();
}

// torch.nn.functional.normalize(x, dim=-1) as torch computes it: x / max(||x||, eps), the
// norm from its CPU reduction kernel (at::linalg_vector_norm, which Tensor.norm calls).
void l2_rows_torch(at::Tensor x) {
  at::Tensor f = x.scalar_type() == at::kDouble ? x : x.to(at::kFloat);
  f = f / at::linalg_vector_norm(f, 2, at::IntArrayRef{-1}, true).clamp_min(1e-12);
  x.copy_(f);
}

// Whether two summations are the same arithmetic for rows of `dim` values: only when
// neither has a vector step (dim below both widths) and their tails fuse alike.
bool same_norm(const lateint::TorchRowNorm& a, const lateint::TorchRowNorm& b, int64_t dim) {
  return dim < a.width && dim < b.width && a.tail_fma == b.tail_fma;
}

// Which summation of lateint::TorchRowNorm torch's own float32 row norm is, for rows of
// `dim` values: found once per dimension against torch on 4,096 pseudo-random rows of
// varied scales. Both widths are tried (torch's norm kernel need not run at the width of
// its dispatched capability: on AVX-512 CPUs it runs its AVX2 kernel), and per width only
// the choices that matter for `dim` (the FMA of the vector steps when dim >= width, of the
// tail when width does not divide dim). One is used only when it alone, up to the same
// arithmetic, agrees with torch on every row (the output rows of sentence-transformers and
// colpali-engine are exactly torch.nn.functional.normalize's). False otherwise; the rows
// then go through torch's own ops.
bool own_row_norm_is_torch(int64_t dim, lateint::Isa isa, lateint::TorchRowNorm* how) {
  static std::mutex mu;
  static std::map<std::pair<int64_t, int>, std::pair<bool, lateint::TorchRowNorm>> known;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(dim, (int)isa);
  auto it = known.find(key);
  if (it == known.end()) {
    constexpr int64_t rows = 4096;
    at::Tensor x = at::empty({rows, dim}, at::kFloat);
    float* p = x.data_ptr<float>();
    uint64_t state = 0xD1B54A32D192ED03ull ^ (uint64_t)dim;
    for (int64_t i = 0; i < rows; ++i) {
      const float scale = std::ldexp(1.0f, (int)(i % 9) - 4);
      for (int64_t k = 0; k < dim; ++k) p[i * dim + k] = scale * probe_uniform(state);
    }
    at::Tensor want = x.clone();
    l2_rows_torch(want);
    std::pair<bool, lateint::TorchRowNorm> found{false, {}};
    int matches = 0;
    for (const int width : {8, 16}) {
      for (const bool vf : {false, true}) {
        if (vf && dim < width) break;
        for (const bool tf : {false, true}) {
          if (tf && dim % width == 0) break;
          lateint::TorchRowNorm c;
          c.width = width;
          c.vec_fma = vf;
          c.tail_fma = tf;
          at::Tensor got = x.clone();
          lateint::l2_rows_like_torch(got.data_ptr<float>(), rows, dim, c, isa);
          if (std::memcmp(got.data_ptr<float>(), want.data_ptr<float>(), rows * dim * sizeof(float)) == 0) {
            if (matches == 0 || !same_norm(found.second, c, dim)) ++matches;
            found.second = c;
          }
        }
      }
    }
    found.first = matches == 1;
    it = known.emplace(key, found).first;
  }
  *how = it->second.second;
  return it->second.first;
}

// The rows_l2 setting of an op call: `normalize` of a variant other than PyLate's
// normalizes every output row.
void decide_rows_l2(PoolInputs& in, bool normalize) {
  in.l2_rows = normalize && !in.pylate;
  if (in.l2_rows && in.dt != DType::F64)
    in.row_norm_own = own_row_norm_is_torch(in.dim, lateint::isa_for(lateint::Family::Pool), &in.row_norm);
}

// Document rows dst [count, dim] of T normalized in place as torch.nn.functional.normalize
// does (in float32 for half types, as both libraries cast before it).
template <typename T>
void l2_rows_doc(const PoolInputs& in, T* dst, int64_t count, std::vector<float>& buf) {
  if (count == 0) return;
  const int64_t dim = in.dim;
  if (!in.row_norm_own) {
    l2_rows_torch(at::from_blob(dst, {count, dim}, in.opts));
    return;
  }
  const lateint::Isa isa = lateint::isa_for(lateint::Family::Pool);
  if constexpr (std::is_same<T, float>::value) {
    lateint::l2_rows_like_torch(dst, count, dim, in.row_norm, isa);
  } else {
    buf.resize(count * dim);
    for (int64_t i = 0; i < count * dim; ++i) buf[i] = static_cast<float>(dst[i]);
    lateint::l2_rows_like_torch(buf.data(), count, dim, in.row_norm, isa);
    for (int64_t i = 0; i < count * dim; ++i) dst[i] = static_cast<T>(buf[i]);
  }
}

constexpr int64_t kNonFinite = -1, kNotNormalized = -2;

// Document d's clustering: lab[i] (resized to its n poolable tokens) is the cluster of
// token p + i; returns the number of clusters (n when the document is kept as it is), or
// kNonFinite when the document holds NaN or Inf, kNotNormalized when the cosine distance
// would cluster tokens that are not L2-normalized. p = min(protected_tokens, length).
// Document `next` (the caller's next one, or -1) is brought into cache while d clusters.
// Documents of fewer than `mm_rows` poolable rows take their distances from torch.mm.
int64_t label_doc(const PoolInputs& in, int64_t d, int64_t next, std::vector<int32_t>& lab,
                  lateint::PoolScratch& scratch, lateint::Isa isa, int64_t mm_rows) {
  scratch.prefetch = next >= 0 ? doc_row(in, next, 0) : nullptr;
  scratch.prefetch_bytes = next >= 0 ? (in.o[next + 1] - in.o[next]) * in.dim * in.esz : 0;
  const int64_t len = in.o[d + 1] - in.o[d];
  if (!lateint::pool_all_finite(doc_row(in, d, 0), in.dt, len * in.dim)) return kNonFinite;
  const int64_t p = std::min(in.protect, len), n = len - p;
  if (in.dist == PoolDistance::Cosine && lateint::pool_target(n, in.pool_factor) < n &&
      !(lateint::pool_max_sqnorm(doc_row(in, d, p), in.dt, n, in.dim) <= lateint::kPoolMaxSqNorm))
    return kNotNormalized;
  lab.resize(n);
  if (n < mm_rows && lateint::pool_target(n, in.pool_factor) < n) {
    const at::Tensor g = doc_gram(in, d, p, n);
    return lateint::pool_labels(doc_row(in, d, p), in.dt, n, in.dim, in.pool_factor, in.dist,
                                lab.data(), scratch, isa, g.data_ptr<float>(), g.stride(0));
  }
  return lateint::pool_labels(doc_row(in, d, p), in.dt, n, in.dim, in.pool_factor, in.dist,
                              lab.data(), scratch, isa);
}

// The first document (lowest index) a pass refused, and why, as one value (2 * doc + 1 when
// it is not normalized), so that the two never come from different threads' refusals.
struct DocRefusal {
  std::atomic<int64_t> first{-1};
  void note(int64_t d, int64_t code) {
    const int64_t v = 2 * d + (code == kNonFinite ? 0 : 1);
    int64_t cur = first.load();
    while ((cur < 0 || v < cur) && !first.compare_exchange_weak(cur, v)) {
    }
  }
  void raise_if_any(const char* op, const PoolInputs& in) const {
    const int64_t v = first.load();
    if (v < 0) return;
    const int64_t d = v / 2;
    LK_CHECK(v % 2 == 1, op, "`", in.name, "` contains NaN or Inf (in document ", d, ")");
    LK_CHECK(false, op, "`", in.name, "`: document ", d, " has tokens that are not L2-normalized ",
             "(squared norm above ", lateint::kPoolMaxSqNorm, ", or too large for float32 products); ",
             "distance \"cosine\" clusters on 1 - <a, b>, which is a distance only between unit ",
             "vectors. Normalize the tokens first, or pass distance=\"euclidean\"");
  }
};

// Clusters every document (label_doc) over the threads and hands each result to
// on_doc(d, nc, labels, scratch): the loop and the refusal bookkeeping that the labels and
// the pooled rows share. A refused document gets count[d] = 0; the refusals are raised
// after the loop, naming the first.
template <typename F>
void label_each_doc(const char* op, const PoolInputs& in, int64_t* count, const F& on_doc) {
  const lateint::Isa isa = lateint::isa_for(lateint::Family::Pool);
  const int64_t mm_rows = mm_below(in, isa);
  DocRefusal refused;
  for_each_doc(in.nd, [&](int64_t b, int64_t e) {
    thread_local lateint::PoolScratch scratch;
    std::vector<int32_t> lab;
    for (int64_t d = b; d < e; ++d) {
      const int64_t nc = label_doc(in, d, d + 1 < e ? d + 1 : -1, lab, scratch, isa, mm_rows);
      if (nc < 0) {
        refused.note(d, nc);
        count[d] = 0;
        continue;
      }
      on_doc(d, nc, lab, scratch);
    }
  });
  refused.raise_if_any(op, in);
}

// Per-token output row (global) and the new offsets: protected tokens keep a row each, the
// rest map to their cluster's row.
void compute_labels(const char* op, const PoolInputs& in, int64_t* rows, int64_t* new_offsets) {
  const int64_t* o = in.o;
  std::vector<int64_t> count(in.nd);
  label_each_doc(op, in, count.data(),
                 [&](int64_t d, int64_t nc, const std::vector<int32_t>& lab, lateint::PoolScratch&) {
                   const int64_t len = o[d + 1] - o[d], p = std::min(in.protect, len), n = len - p;
                   for (int64_t i = 0; i < p; ++i) rows[o[d] + i] = i;
                   for (int64_t i = 0; i < n; ++i) rows[o[d] + p + i] = p + lab[i];
                   count[d] = p + nc;
                 });
  rows_to_global(o, in.nd, count.data(), rows, new_offsets);
}

// Labels and means per document in one pass (the document is still in cache for its
// means). Document d's rows go to dst(d), room for p + pool_target rows (its upper bound:
// scipy's maxclust gives fewer clusters only when merge distances tie); count[d] receives
// the rows written.
template <typename T, typename Dst>
void pool_docs(const char* op, const PoolInputs& in, bool normalize, const Dst& dst_of,
               int64_t* count) {
  const int64_t* o = in.o;
  const int64_t dim = in.dim;
  const bool means_l2 = normalize && in.pylate;
  label_each_doc(op, in, count,
                 [&](int64_t d, int64_t nc, const std::vector<int32_t>& lab, lateint::PoolScratch& scratch) {
                   const int64_t len = o[d + 1] - o[d], p = std::min(in.protect, len), n = len - p;
                   const T* x = static_cast<const T*>(doc_row(in, d, 0));
                   T* dst = dst_of(d);
                   count[d] = p + nc;
                   if (nc == n)
                     std::copy(x, x + len * dim, dst);  // not pooled: the rows as they are
                   else
                     lateint::pool_doc_means(x, in.dt, len, p, lab.data(), nc, dim, means_l2, in.means,
                                             in.torch_width, dst, scratch);
                   if (in.l2_rows) {
                     thread_local std::vector<float> buf;
                     l2_rows_doc<T>(in, dst, count[d], buf);
                   }
                 });
}

// Rows of document d's output at most (its upper bound).
int64_t rows_bound(const PoolInputs& in, int64_t d) {
  const int64_t len = in.o[d + 1] - in.o[d], p = std::min(in.protect, len);
  return p + lateint::pool_target(len - p, in.pool_factor);
}

// One packed output [T', dim]: documents written at upper-bound offsets, then moved down if
// any came short.
template <typename T>
std::tuple<at::Tensor, at::Tensor> pool_packed_t(const char* op, const PoolInputs& in,
                                                 bool normalize) {
  const int64_t nd = in.nd, dim = in.dim;
  std::vector<int64_t> ub(nd + 1), count(nd);
  ub[0] = 0;
  for (int64_t d = 0; d < nd; ++d) ub[d + 1] = ub[d] + rows_bound(in, d);
  at::Tensor out = at::empty({ub[nd], dim}, in.opts);
  T* base = static_cast<T*>(out.data_ptr());
  pool_docs<T>(op, in, normalize, [&](int64_t d) { return base + ub[d] * dim; }, count.data());
  at::Tensor new_off = at::empty({nd + 1}, at::TensorOptions().dtype(at::kLong));
  int64_t* no = new_off.data_ptr<int64_t>();
  no[0] = 0;
  bool short_doc = false;
  for (int64_t d = 0; d < nd; ++d) {
    no[d + 1] = no[d] + count[d];
    short_doc |= count[d] != ub[d + 1] - ub[d];
  }
  if (short_doc) {  // rows move to lower addresses, documents in order: memmove is safe
    for (int64_t d = 0; d < nd; ++d)
      if (no[d] != ub[d])
        std::memmove(base + no[d] * dim, base + ub[d] * dim, count[d] * dim * sizeof(T));
    out = out.narrow(0, 0, no[nd]);
  }
  return {out, new_off};
}

// One output tensor per document (PyLate's list), each its own allocation: a few tens of
// KB apiece, so they come from (and go back to) the allocator's heap the way PyLate's
// per-document tensors do, rather than from one fresh mapping of the whole result that is
// page-faulted in on every call. A document that comes short is a narrowed view.
template <typename T>
std::vector<at::Tensor> pool_list_t(const char* op, const PoolInputs& in, bool normalize) {
  const int64_t nd = in.nd, dim = in.dim;
  std::vector<at::Tensor> outs(nd);
  std::vector<T*> dst(nd);
  std::vector<int64_t> count(nd);
  for (int64_t d = 0; d < nd; ++d) {
    outs[d] = at::empty({rows_bound(in, d), dim}, in.opts);
    dst[d] = static_cast<T*>(outs[d].data_ptr());
  }
  pool_docs<T>(op, in, normalize, [&](int64_t d) { return dst[d]; }, count.data());
  for (int64_t d = 0; d < nd; ++d)
    if (count[d] != outs[d].size(0)) outs[d] = outs[d].narrow(0, 0, count[d]);
  return outs;
}

std::tuple<at::Tensor, at::Tensor> token_pool_labels_cpu(const at::Tensor& doc_tokens,
                                                         const at::Tensor& doc_offsets,
                                                         double pool_factor,
                                                         int64_t protected_tokens,
                                                         c10::string_view distance,
                                                         c10::string_view variant) {
  const char* op = "token_pool_labels";
  PoolInputs in = prepare(op, doc_tokens, doc_offsets, pool_factor,
                          protected_tokens, distance, variant);
  at::Tensor rows = at::empty({doc_tokens.size(0)}, doc_offsets.options());
  at::Tensor new_off = at::empty({in.nd + 1}, doc_offsets.options());
  compute_labels(op, in, rows.data_ptr<int64_t>(), new_off.data_ptr<int64_t>());
  return {rows, new_off};
}

// fn(T()) for the element type T of the tokens.
template <typename Fn>
auto with_dtype(DType dt, const char* op, const Fn& fn) {
  switch (dt) {
    case DType::F32: return fn(float());
    case DType::F64: return fn(double());
    case DType::F16: return fn(at::Half());
    case DType::BF16: return fn(at::BFloat16());
  }
  TORCH_CHECK(false, op, ": unsupported dtype");
}

std::tuple<at::Tensor, at::Tensor> token_pool_cpu(const at::Tensor& doc_tokens,
                                                  const at::Tensor& doc_offsets,
                                                  double pool_factor, int64_t protected_tokens,
                                                  bool normalize, c10::string_view distance,
                                                  c10::string_view variant) {
  const char* op = "token_pool";
  PoolInputs in = prepare(op, doc_tokens, doc_offsets, pool_factor, protected_tokens,
                          distance, variant);
  decide_rows_l2(in, normalize);
  return with_dtype(in.dt, op, [&](auto t) {
    return pool_packed_t<decltype(t)>(op, in, normalize);
  });
}

// PyLate's list of documents in, a list out: the documents token_pool gives for the packed
// list, without copying the input into one tensor first.
std::vector<at::Tensor> token_pool_list_cpu(at::TensorList docs, double pool_factor,
                                            int64_t protected_tokens, bool normalize,
                                            c10::string_view distance, c10::string_view variant) {
  const char* op = "token_pool_list";
  PoolInputs in = prepare_list(op, docs, pool_factor, protected_tokens, distance, variant);
  decide_rows_l2(in, normalize);
  return with_dtype(in.dt, op, [&](auto t) {
    return pool_list_t<decltype(t)>(op, in, normalize);
  });
}

// Testing hook: the distance matrix pool_labels clusters, for one document x [n, dim].
at::Tensor pool_distances_cpu(const at::Tensor& x, c10::string_view distance, c10::string_view variant) {
  const char* op = "_pool_distances";
  LK_CHECK(x.dim() == 2 && x.size(0) >= 1 && x.size(1) >= 1, op,
           "`x` must be [n, dim] with n, dim >= 1, got ", x.sizes());
  PoolInputs in;
  in.dist = distance_of(distance, op);
  apply_variant(variant, op, in);
  const PoolDistance dist = in.dist;
  const DType dt = dtype_of(x, op, "x", true);
  const at::Tensor xc = x.contiguous();
  const int64_t n = x.size(0), ld = (n + 7) / 8 * 8;
  lateint::PoolScratch s;
  s.D.assign(n * ld, std::numeric_limits<double>::quiet_NaN());  // poison: every entry must be written
  lateint::pool_distances(xc.data_ptr(), dt, n, x.size(1), dist, s.D.data(), ld, s,
                          lateint::isa_for(lateint::Family::Pool));
  at::Tensor out = at::empty({n, n}, x.options().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) std::copy(s.D.data() + i * ld, s.D.data() + i * ld + n, o + i * n);
  return out;
}

// Testing hook: scipy-compatible Ward linkage matrix of a full float64 distance matrix.
at::Tensor ward_linkage_cpu(const at::Tensor& dist) {
  const char* op = "_ward_linkage";
  LK_CHECK(dist.dim() == 2 && dist.size(0) == dist.size(1) && dist.size(0) >= 2, op,
           "`dist` must be a square [n, n] matrix with n >= 2, got ", dist.sizes());
  LK_CHECK_DTYPE(dist, at::kDouble, op, "dist");
  LK_CHECK(dist.size(0) < (int64_t(1) << 31), op, "`dist` has ", dist.size(0),
           " rows; at most 2^31 - 1 are supported");
  const int64_t n = dist.size(0), ld = (n + 7) / 8 * 8;
  std::vector<double> D(n * ld, std::numeric_limits<double>::infinity());
  at::Tensor dc = dist.contiguous();
  const double* src = dc.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      if (i == j) continue;
      const double v = src[i * n + j];
      LK_CHECK(std::isfinite(v), op, "`dist` must hold finite distances off the diagonal; dist[", i,
               ", ", j, "] = ", v);
      LK_CHECK(v == src[j * n + i], op, "`dist` must be symmetric; dist[", i, ", ", j, "] = ", v,
               " but dist[", j, ", ", i, "] = ", src[j * n + i]);
      D[i * ld + j] = v;
    }
  lateint::PoolScratch s;
  std::vector<int32_t> mx(n), my(n);
  std::vector<double> md(n);
  lateint::ward_nn_chain(D.data(), n, ld, mx.data(), my.data(), md.data(), s,
                         lateint::isa_for(lateint::Family::Pool));
  at::Tensor Z = at::empty({n - 1, 4}, dist.options());
  lateint::linkage_from_chain(mx.data(), my.data(), md.data(), n, Z.data_ptr<double>(), s);
  return Z;
}

// Testing hook / GPU finishing step: scipy fcluster(Z, max_nc, "maxclust") labels (1-based).
at::Tensor fcluster_maxclust_cpu(const at::Tensor& Z, int64_t max_nc) {
  const char* op = "_fcluster_maxclust";
  LK_CHECK(Z.dim() == 2 && Z.size(1) == 4 && Z.size(0) >= 1, op,
           "`Z` must be a linkage matrix [n - 1, 4] with n >= 2, got ", Z.sizes());
  LK_CHECK_DTYPE(Z, at::kDouble, op, "Z");
  LK_CHECK(max_nc >= 1, op, "`max_nc` must be >= 1, got ", max_nc);
  const int64_t n = Z.size(0) + 1;
  at::Tensor zc = Z.contiguous();
  {  // a valid tree: each row joins two earlier, unused nodes
    const double* z = zc.data_ptr<double>();
    std::vector<uint8_t> used(2 * n - 1, 0);
    for (int64_t r = 0; r + 1 < n; ++r) {
      for (int c = 0; c < 2; ++c) {
        const double v = z[4 * r + c];
        LK_CHECK(v >= 0 && v < (double)(n + r) && v == std::floor(v) && !used[(int64_t)v], op,
                 "`Z` is not a valid linkage matrix: row ", r, " joins node ", v);
        used[(int64_t)v] = 1;
      }
    }
  }
  at::Tensor T = at::empty({n}, Z.options().dtype(at::kInt));
  lateint::PoolScratch s;
  lateint::fcluster_maxclust(zc.data_ptr<double>(), n, max_nc, T.data_ptr<int32_t>(), s);
  return T;
}

// Whether the n - 1 merges (x, y) of a merge list join n observations into one tree (every
// merge has 0 <= x < y < n and joins two different clusters, in whatever order the
// linkage later sorts them) with finite distances: what linkage_from_merges relies on.
bool is_spanning_tree(const int32_t* mx, const int32_t* my, const double* mdist, int64_t n,
                      std::vector<int32_t>& uf) {
  uf.resize(n);
  for (int64_t i = 0; i < n; ++i) uf[i] = (int32_t)i;
  auto find = [&](int32_t i) {
    while (uf[i] != i) i = uf[i] = uf[uf[i]];
    return i;
  };
  for (int64_t j = 0; j + 1 < n; ++j) {
    if (mx[j] < 0 || my[j] >= n || mx[j] >= my[j] || !std::isfinite(mdist[j])) return false;
    const int32_t a = find(mx[j]), b = find(my[j]);
    if (a == b) return false;
    uf[a] = b;
  }
  return true;
}

// Host step of the GPU path: per document, the cut of an NN-chain merge list computed on
// the device. merges_x/merges_y int32 [nd, W], merges_d float64 [nd, W] (W >= longest
// poolable document - 1; row d holds n_d - 1 merges of document d's poolable tokens).
std::tuple<at::Tensor, at::Tensor> token_pool_finish_cpu(const at::Tensor& merges_x,
                                                         const at::Tensor& merges_y,
                                                         const at::Tensor& merges_d,
                                                         const at::Tensor& doc_offsets,
                                                         int64_t pool_factor,
                                                         int64_t protected_tokens) {
  const char* op = "_token_pool_finish";
  LK_CHECK(pool_factor >= 1, op, "`pool_factor` must be >= 1, got ", pool_factor);
  LK_CHECK(protected_tokens >= 0, op, "`protected_tokens` must be >= 0, got ", protected_tokens);
  LK_CHECK_DTYPE(merges_x, at::kInt, op, "merges_x");
  LK_CHECK_DTYPE(merges_y, at::kInt, op, "merges_y");
  LK_CHECK_DTYPE(merges_d, at::kDouble, op, "merges_d");
  LK_CHECK_DIM(doc_offsets, 1, op, "doc_offsets", "[n_docs + 1]");
  LK_CHECK_DTYPE(doc_offsets, at::kLong, op, "doc_offsets");
  LK_CHECK(doc_offsets.size(0) >= 1, op, "`doc_offsets` must hold n_docs + 1 >= 1 entries");
  for (const at::Tensor* t : {&merges_x, &merges_y, &merges_d, &doc_offsets})
    LK_CHECK(t->device().is_cpu(), op, "all inputs must be CPU tensors here, got ", t->device());
  const int64_t nd = doc_offsets.size(0) - 1;
  LK_CHECK(merges_x.dim() == 2 && merges_x.size(0) == nd && merges_y.sizes() == merges_x.sizes() &&
               merges_d.sizes() == merges_x.sizes(),
           op, "`merges_x`, `merges_y` and `merges_d` must all be [n_docs, W] = [", nd, ", W], got ",
           merges_x.sizes(), ", ", merges_y.sizes(), ", ", merges_d.sizes());
  at::Tensor ox = merges_x.contiguous(), oy = merges_y.contiguous(), od = merges_d.contiguous();
  at::Tensor off = doc_offsets.contiguous();
  const int64_t W = merges_x.size(1);
  const int64_t* o = off.data_ptr<int64_t>();
  check_doc_offsets_start_and_order(o, nd, op);
  const int64_t T = o[nd];
  LK_CHECK(T < (int64_t(1) << 31), op, "`doc_offsets[-1]` = ", T, "; at most 2^31 - 1 tokens are supported");
  at::Tensor rows = at::empty({T}, doc_offsets.options());
  at::Tensor new_off = at::empty({nd + 1}, doc_offsets.options());
  int64_t* r = rows.data_ptr<int64_t>();
  int64_t* no = new_off.data_ptr<int64_t>();
  std::vector<int64_t> count(nd);
  std::atomic<int64_t> bad{-1};
  at::parallel_for(0, nd, 16, [&](int64_t b, int64_t e) {
    lateint::PoolScratch scratch;
    std::vector<int32_t> lab, uf;
    for (int64_t d = b; d < e; ++d) {
      const int64_t len = o[d + 1] - o[d];
      const int64_t p = std::min(protected_tokens, len), n = len - p;
      for (int64_t i = 0; i < p; ++i) r[o[d] + i] = i;
      const int64_t k = lateint::pool_target(n, pool_factor);
      lab.resize(n);
      int64_t nc = n;
      if (k < n) {
        if (n - 1 > W) {
          bad = d;
          continue;
        }
        const int32_t* mx = ox.data_ptr<int32_t>() + d * W;
        const int32_t* my = oy.data_ptr<int32_t>() + d * W;
        const double* mdist = od.data_ptr<double>() + d * W;
        if (!is_spanning_tree(mx, my, mdist, n, uf)) {
          bad = d;
          continue;
        }
        nc = lateint::pool_labels_from_merges(mx, my, mdist, n, k, lab.data(), scratch);
      } else {
        for (int64_t i = 0; i < n; ++i) lab[i] = (int32_t)i;
      }
      for (int64_t i = 0; i < n; ++i) r[o[d] + p + i] = p + lab[i];
      count[d] = p + nc;
    }
  });
  LK_CHECK(bad.load() < 0, op, "`merges_x` / `merges_y` / `merges_d`: document ", bad.load(),
           " does not hold n - 1 merges (0 <= x < y < n, finite distances) joining its n tokens into one tree");
  rows_to_global(o, nd, count.data(), r, no);
  return {rows, new_off};
}

// Testing hook: x [n, dim] float32 normalized per row by the kernel's own summation when
// it is torch's for this dimension (the second output true), else by torch's ops.
std::tuple<at::Tensor, bool> l2_rows_cpu(const at::Tensor& x) {
  const char* op = "l2_rows";
  LK_CHECK_DIM(x, 2, op, "x", "[n, dim]");
  LK_CHECK_DTYPE(x, at::kFloat, op, "x");
  PoolInputs in;
  in.dim = x.size(1);
  in.opts = x.options();
  in.pylate = false;
  decide_rows_l2(in, true);
  at::Tensor out = x.contiguous().clone();
  std::vector<float> buf;
  l2_rows_doc<float>(in, out.data_ptr<float>(), out.size(0), buf);
  return {out, in.row_norm_own};
}

}  // namespace

TORCH_LIBRARY_IMPL(lateint_kernels, CPU, m) {
  m.impl("token_pool", &token_pool_cpu);
  m.impl("token_pool_labels", &token_pool_labels_cpu);
  m.impl("token_pool_list", &token_pool_list_cpu);
  m.impl("_token_pool_finish", &token_pool_finish_cpu);
}

// Testing hooks (schemas: lateint_kernels/testing.py): the clustering's steps one by one.
TORCH_LIBRARY_IMPL(lateint_testing, CPU, m) {
  m.impl("ward_linkage", &ward_linkage_cpu);
  m.impl("pool_distances", &pool_distances_cpu);
  m.impl("fcluster_maxclust", &fcluster_maxclust_cpu);
  m.impl("l2_rows", &l2_rows_cpu);
}
