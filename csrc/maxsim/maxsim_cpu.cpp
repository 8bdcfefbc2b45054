// CPU binding of the MaxSim ops: checks and converts tensors, then runs the torch-free cores
// (csrc/maxsim/maxsim_core.h) over at::parallel_for. No arithmetic happens here.
#include <ATen/Parallel.h>
#include <cstdlib>
#include <torch/library.h>
#include <torch/types.h>

#include "common/checks.h"
#include "maxsim/maxsim_core.h"

namespace {

using lateint::DType;
using lateint::MaskMode;
using lateint::MaxSimProblem;

struct Inputs {
  at::Tensor queries, query_mask, docs, offsets, doc_padded, cand;
  MaxSimProblem p;
};

MaskMode mode_of(c10::string_view mode, const char* op) {
  if (mode == "ignore") return MaskMode::Ignore;
  if (mode == "zero") return MaskMode::Zero;
  TORCH_CHECK(false, op, ": `mask_mode` must be \"ignore\" or \"zero\", got \"",
              std::string(mode), "\"");
}

// Validates everything the kernels rely on; messages name the argument.
Inputs prepare(const char* op, const at::Tensor& queries, const std::optional<at::Tensor>& qmask,
               const at::Tensor& docs, const at::Tensor& offsets,
               const std::optional<at::Tensor>& cand, const std::optional<at::Tensor>& padded,
               c10::string_view mask_mode) {
  Inputs in;
  LK_CHECK_DIM(queries, 3, op, "queries", "[n_queries, query_len, dim]");
  LK_CHECK_DIM(docs, 2, op, "doc_tokens", "[total_tokens, dim]");
  LK_CHECK_DIM(offsets, 1, op, "doc_offsets", "[n_docs + 1]");
  const auto dev = queries.device();
  LK_CHECK(dev.is_cpu(), op, "`queries` must be a CPU tensor here, got ", dev);
  LK_CHECK_DEVICE(docs, dev, op, "doc_tokens");
  LK_CHECK_DEVICE(offsets, dev, op, "doc_offsets");
  const DType dt = dtype_of(queries, op, "queries");
  LK_CHECK(docs.scalar_type() == queries.scalar_type(), op,
           "`doc_tokens` must have the dtype of `queries` (", queries.scalar_type(), "), got ",
           docs.scalar_type());
  LK_CHECK(docs.size(1) == queries.size(2), op, "`doc_tokens` has dim ", docs.size(1),
           " but `queries` has dim ", queries.size(2));
  LK_CHECK_DTYPE(offsets, at::kLong, op, "doc_offsets");
  LK_CHECK(offsets.size(0) >= 1, op, "`doc_offsets` must hold n_docs + 1 >= 1 entries");
  LK_CHECK(queries.size(2) >= 1, op, "`queries` must have dim >= 1");
  LK_CHECK(docs.size(0) < (int64_t(1) << 31), op, "`doc_tokens` has ", docs.size(0),
           " rows; at most 2^31 - 1 are supported");
  in.queries = queries.contiguous();
  in.docs = docs.contiguous();
  in.offsets = offsets.contiguous();
  const int64_t nq = queries.size(0), lq = queries.size(1), nd = offsets.size(0) - 1;
  const int64_t T = docs.size(0);
  {
    const int64_t* o = in.offsets.data_ptr<int64_t>();
    check_doc_offsets_start_and_order(o, nd, op);
    LK_CHECK(o[nd] == T, op, "`doc_offsets[-1]` must equal the number of rows of `doc_tokens` (",
             T, "), got ", o[nd]);
  }
  if (qmask.has_value()) {
    const at::Tensor& m = *qmask;
    LK_CHECK_DEVICE(m, dev, op, "query_mask");
    LK_CHECK(m.dim() == 2 && m.size(0) == nq && m.size(1) == lq, op,
             "`query_mask` must have shape [n_queries, query_len] = [", nq, ", ", lq, "], got ",
             m.sizes());
    LK_CHECK_DTYPE(m, at::kBool, op, "query_mask");
    in.query_mask = m.contiguous();
  }
  if (padded.has_value()) {
    const at::Tensor& m = *padded;
    LK_CHECK_DEVICE(m, dev, op, "doc_padded");
    LK_CHECK(m.dim() == 1 && m.size(0) == nd, op, "`doc_padded` must have shape [n_docs] = [",
             nd, "], got ", m.sizes());
    LK_CHECK_DTYPE(m, at::kBool, op, "doc_padded");
    in.doc_padded = m.contiguous();
  }
  int64_t ncand = 0;
  if (cand.has_value()) {
    const at::Tensor& c = *cand;
    LK_CHECK_DEVICE(c, dev, op, "candidates");
    LK_CHECK(c.dim() == 2 && c.size(0) == nq, op,
             "`candidates` must have shape [n_queries, k] with n_queries = ", nq, ", got ",
             c.sizes());
    LK_CHECK_DTYPE(c, at::kLong, op, "candidates");
    in.cand = c.contiguous();
    ncand = c.size(1);
    const int64_t* cp = in.cand.data_ptr<int64_t>();
    for (int64_t i = 0; i < nq * ncand; ++i) {
      LK_CHECK(cp[i] >= -1 && cp[i] < nd, op, "`candidates` must hold document ids in [0, ",
               nd, ") or -1 for none; candidates[", i / std::max<int64_t>(ncand, 1), ", ",
               i % std::max<int64_t>(ncand, 1), "] = ", cp[i]);
    }
  }
  MaxSimProblem& p = in.p;
  p.nq = nq;
  p.lq = lq;
  p.dim = queries.size(2);
  p.queries = in.queries.data_ptr();
  p.query_mask = in.query_mask.defined() ? (const uint8_t*)in.query_mask.data_ptr<bool>() : nullptr;
  p.docs = in.docs.data_ptr();
  p.offsets = in.offsets.data_ptr<int64_t>();
  p.nd = nd;
  p.doc_padded =
      in.doc_padded.defined() ? (const uint8_t*)in.doc_padded.data_ptr<bool>() : nullptr;
  p.dtype = dt;
  p.mode = mode_of(mask_mode, op);
  p.has_cand = in.cand.defined();
  p.cand = p.has_cand ? in.cand.data_ptr<int64_t>() : nullptr;
  p.ncand = ncand;
  return in;
}

[[noreturn]] void report_nonfinite(const char* op, const Inputs& in) {
  at::Tensor q = in.queries;
  if (in.query_mask.defined()) q = q.index({in.query_mask});
  if (!at::isfinite(q).all().item<bool>())
    TORCH_CHECK(false, op, ": `queries` contains NaN or Inf (in an unmasked token)");
  if (!at::isfinite(in.docs).all().item<bool>())
    TORCH_CHECK(false, op, ": `doc_tokens` contains NaN or Inf");
  TORCH_CHECK(false, op, ": `queries` and `doc_tokens` are finite but a similarity (or its sum over the ",
              "query tokens) overflows float32; are the embeddings normalized?");
}

// Which engine runs a forward: the vector kernels (maxsim_core.h) or, at the "amx" level
// for bf16 inputs, the brgemm micro-kernel on tiles (odd dims stay on the vector kernels:
// the tiles take bf16 pairs). `force_brgemm`: the testing hook's request.
bool use_brgemm(const MaxSimProblem& p, lateint::Isa isa, bool force_brgemm) {
  if (p.dtype != DType::BF16) return false;
  if (force_brgemm) return true;
  return isa == lateint::Isa::Amx && p.dim % 2 == 0;
}

// Runs the forward over all (query, slot) pairs of p in parallel.
void run_forward_problem(const char* op, const Inputs& in, const MaxSimProblem& p, float* scores,
                         int32_t* argmax, bool force_brgemm = false) {
  const int64_t ns = lateint::n_slots(p);
  if (p.nq == 0 || ns == 0) return;
  const lateint::Isa isa = lateint::isa_for(lateint::Family::MaxSim);
  const bool brgemm = use_brgemm(p, isa, force_brgemm);
  lateint::PackedQueries pq;
  if (!brgemm) lateint::pack_queries(p, isa, &pq);
  auto range = [&](int64_t q0, int64_t q1, int64_t s0, int64_t s1) {
    return brgemm ? lateint::maxsim_forward_brgemm_range(p, q0, q1, s0, s1, scores, argmax)
                  : lateint::maxsim_forward_range(p, pq, q0, q1, s0, s1, scores, argmax);
  };
  std::atomic<bool> finite{true};
  const int64_t nthreads = at::get_num_threads();
  if (!p.has_cand && (p.nd >= 8 * nthreads || p.nq < nthreads)) {
    // Split documents: each thread walks its own documents once for all queries.
    const int64_t grain = std::max<int64_t>(1, p.nd / (8 * nthreads));
    at::parallel_for(0, p.nd, grain, [&](int64_t b, int64_t e) {
      if (!range(0, p.nq, b, e)) finite = false;
    });
  } else {
    // Split (query, slot-block) items.
    const int64_t sb = std::min<int64_t>(ns, 64);
    const int64_t nsb = (ns + sb - 1) / sb;
    at::parallel_for(0, p.nq * nsb, 1, [&](int64_t b, int64_t e) {
      for (int64_t it = b; it < e; ++it) {
        const int64_t q = it / nsb, s0 = (it % nsb) * sb, s1 = std::min(ns, s0 + sb);
        if (!range(q, q + 1, s0, s1)) finite = false;
      }
    });
  }
  if (!finite) report_nonfinite(op, in);
}

void run_forward(const char* op, const Inputs& in, float* scores, int32_t* argmax) {
  run_forward_problem(op, in, in.p, scores, argmax);
}

// Queries [q0, q1) of p as a problem of their own (pointers offset, same documents).
MaxSimProblem query_slice(const MaxSimProblem& p, int64_t q0, int64_t q1) {
  MaxSimProblem s = p;
  const int64_t esz = p.dtype == DType::F32 ? 4 : 2;
  s.nq = q1 - q0;
  s.queries = static_cast<const char*>(p.queries) + q0 * p.lq * p.dim * esz;
  if (p.query_mask) s.query_mask = p.query_mask + q0 * p.lq;
  if (p.cand) s.cand = p.cand + q0 * p.ncand;
  return s;
}

// Bytes of int32 argmax the backward may hold at once; queries are processed in chunks
// under it (LATEINT_BWD_CHUNK_BYTES overrides; tests use a tiny value).
int64_t bwd_chunk_bytes() {
  const char* e = std::getenv("LATEINT_BWD_CHUNK_BYTES");
  if (e && *e) {
    const long long v = std::atoll(e);
    if (v > 0) return (int64_t)v;
  }
  return int64_t(256) << 20;
}

at::Tensor maxsim_cpu(const at::Tensor& queries, const std::optional<at::Tensor>& query_mask,
                      const at::Tensor& doc_tokens, const at::Tensor& doc_offsets,
                      const std::optional<at::Tensor>& doc_padded, c10::string_view mask_mode) {
  Inputs in = prepare("maxsim", queries, query_mask, doc_tokens, doc_offsets, std::nullopt,
                      doc_padded, mask_mode);
  at::Tensor out = at::empty({in.p.nq, in.p.nd}, queries.options().dtype(at::kFloat));
  run_forward("maxsim", in, out.data_ptr<float>(), nullptr);
  return out;
}

at::Tensor maxsim_candidates_cpu(const at::Tensor& queries,
                                 const std::optional<at::Tensor>& query_mask,
                                 const at::Tensor& doc_tokens, const at::Tensor& doc_offsets,
                                 const at::Tensor& candidates,
                                 const std::optional<at::Tensor>& doc_padded,
                                 c10::string_view mask_mode) {
  Inputs in = prepare("maxsim_candidates", queries, query_mask, doc_tokens, doc_offsets,
                      candidates, doc_padded, mask_mode);
  at::Tensor out = at::empty({in.p.nq, in.p.ncand}, queries.options().dtype(at::kFloat));
  run_forward("maxsim_candidates", in, out.data_ptr<float>(), nullptr);
  return out;
}

// The forward with each query token's winning document token; `force_brgemm` runs it on the
// brgemm engine whatever the ISA level.
std::tuple<at::Tensor, at::Tensor> argmax_forward(
    const char* op, bool force_brgemm, const at::Tensor& queries, const std::optional<at::Tensor>& query_mask,
    const at::Tensor& doc_tokens, const at::Tensor& doc_offsets, const std::optional<at::Tensor>& candidates,
    const std::optional<at::Tensor>& doc_padded, c10::string_view mask_mode) {
  Inputs in = prepare(op, queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded, mask_mode);
  if (force_brgemm)
    LK_CHECK(in.p.dtype == DType::BF16, op, "the brgemm engine takes bfloat16 inputs, got ", queries.scalar_type());
  const int64_t ns = lateint::n_slots(in.p);
  at::Tensor out = at::empty({in.p.nq, ns}, queries.options().dtype(at::kFloat));
  at::Tensor arg = at::empty({in.p.nq, in.p.lq, ns}, queries.options().dtype(at::kInt));
  run_forward_problem(op, in, in.p, out.data_ptr<float>(), arg.data_ptr<int32_t>(), force_brgemm);
  return {out, arg};
}

std::tuple<at::Tensor, at::Tensor> maxsim_argmax_cpu(
    const at::Tensor& queries, const std::optional<at::Tensor>& query_mask,
    const at::Tensor& doc_tokens, const at::Tensor& doc_offsets,
    const std::optional<at::Tensor>& candidates, const std::optional<at::Tensor>& doc_padded,
    c10::string_view mask_mode) {
  return argmax_forward("maxsim_argmax", false, queries, query_mask, doc_tokens, doc_offsets, candidates,
                        doc_padded, mask_mode);
}

// The same on the brgemm engine whatever the ISA level (bf16 inputs), so that its code is
// tested on every machine, not only on those with AMX.
std::tuple<at::Tensor, at::Tensor> maxsim_argmax_brgemm_cpu(
    const at::Tensor& queries, const std::optional<at::Tensor>& query_mask,
    const at::Tensor& doc_tokens, const at::Tensor& doc_offsets,
    const std::optional<at::Tensor>& candidates, const std::optional<at::Tensor>& doc_padded,
    c10::string_view mask_mode) {
  return argmax_forward("maxsim_argmax_brgemm", true, queries, query_mask, doc_tokens, doc_offsets, candidates,
                        doc_padded, mask_mode);
}

std::tuple<at::Tensor, at::Tensor> maxsim_backward_cpu(
    const at::Tensor& grad, const at::Tensor& queries, const std::optional<at::Tensor>& query_mask,
    const at::Tensor& doc_tokens, const at::Tensor& doc_offsets,
    const std::optional<at::Tensor>& candidates, const std::optional<at::Tensor>& doc_padded,
    c10::string_view mask_mode) {
  const char* op = "maxsim_backward";
  Inputs in = prepare(op, queries, query_mask, doc_tokens, doc_offsets, candidates, doc_padded,
                      mask_mode);
  const MaxSimProblem& p = in.p;
  const int64_t ns = lateint::n_slots(p);
  LK_CHECK(grad.dim() == 2 && grad.size(0) == p.nq && grad.size(1) == ns, op,
           "`grad` must have shape [", p.nq, ", ", ns, "], got ", grad.sizes());
  LK_CHECK_DEVICE(grad, queries.device(), op, "grad");
  const at::Tensor g = grad.to(at::kFloat).contiguous();
  at::Tensor dq = at::empty({p.nq, p.lq, p.dim}, queries.options().dtype(at::kFloat));
  at::Tensor dd = at::zeros({in.docs.size(0), p.dim}, queries.options().dtype(at::kFloat));
  const float* gp = g.data_ptr<float>();
  float* dqp = dq.data_ptr<float>();
  float* ddp = dd.data_ptr<float>();
  // The argmax ([nq, Lq, n_slots] int32) is recomputed here, a chunk of queries at a time so
  // its memory stays bounded. Each output row has exactly one owner and a fixed summation
  // order ((query, slot) ascending, across chunks too): the result depends neither on the
  // thread count nor on the chunking (deterministic by construction).
  const int64_t per_query = std::max<int64_t>(1, p.lq * ns * (int64_t)sizeof(int32_t));
  const int64_t qchunk = std::max<int64_t>(1, bwd_chunk_bytes() / per_query);
  for (int64_t q0 = 0; q0 < p.nq; q0 += qchunk) {
    const int64_t q1 = std::min(p.nq, q0 + qchunk);
    const MaxSimProblem sp = query_slice(p, q0, q1);
    at::Tensor scores = at::empty({sp.nq, ns}, queries.options().dtype(at::kFloat));
    at::Tensor arg = at::empty({sp.nq, p.lq, ns}, queries.options().dtype(at::kInt));
    run_forward_problem(op, in, sp, scores.data_ptr<float>(), arg.data_ptr<int32_t>());
    const int32_t* am = arg.data_ptr<int32_t>();
    const float* gq = gp + q0 * ns;
    float* dq_chunk = dqp + q0 * p.lq * p.dim;
    at::parallel_for(0, sp.nq * p.lq, 16, [&](int64_t b, int64_t e) {
      lateint::maxsim_grad_queries_range(sp, am, gq, b, e, dq_chunk);
    });
    lateint::DocPairs pairs;
    lateint::build_doc_pairs(sp, &pairs);
    at::parallel_for(0, p.nd, 16, [&](int64_t b, int64_t e) {
      lateint::maxsim_grad_docs_range(sp, pairs, am, gq, b, e, ddp);
    });
  }
  return {dq.to(queries.scalar_type()), dd.to(doc_tokens.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(lateint_kernels, CPU, m) {
  m.impl("maxsim", &maxsim_cpu);
  m.impl("maxsim_candidates", &maxsim_candidates_cpu);
  m.impl("maxsim_backward", &maxsim_backward_cpu);
}

// Testing hook (schema: lateint_kernels/testing.py): the forward with each query token's
// winning document token, as the backward recomputes it.
TORCH_LIBRARY_IMPL(lateint_testing, CPU, m) {
  m.impl("maxsim_argmax", &maxsim_argmax_cpu);
  m.impl("maxsim_argmax_brgemm", &maxsim_argmax_brgemm_cpu);
}
