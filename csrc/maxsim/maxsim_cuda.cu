// CUDA binding of the MaxSim ops: checks, allocation, stream; the kernels are in
// maxsim_kernels.cu (torch-free). Data-dependent checks (offsets, ids, NaN) are made by the
// Python wrapper on CUDA tensors, where they cost one small reduction each.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include "common/checks.h"
#include "maxsim_cuda.h"

namespace {

int dtype_code(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default:
      TORCH_CHECK(false, op, ": `queries` must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

struct In {
  at::Tensor q, qm, d, off, pad, cand;
  int zero_mode = 0, dtype = 0;
  int64_t nq = 0, lq = 0, dim = 0, nd = 0, ns = 0;
};

In prepare(const char* op, const at::Tensor& q, const std::optional<at::Tensor>& qm,
           const at::Tensor& d, const at::Tensor& off, const std::optional<at::Tensor>& cand,
           const std::optional<at::Tensor>& pad, c10::string_view mode) {
  In in;
  LK_CHECK_DIM(q, 3, op, "queries", "[n_queries, query_len, dim]");
  LK_CHECK_DIM(d, 2, op, "doc_tokens", "[total_tokens, dim]");
  LK_CHECK_DIM(off, 1, op, "doc_offsets", "[n_docs + 1]");
  LK_CHECK(q.is_cuda(), op, "`queries` must be a CUDA tensor here, got ", q.device());
  LK_CHECK_DEVICE(d, q.device(), op, "doc_tokens");
  LK_CHECK_DEVICE(off, q.device(), op, "doc_offsets");
  in.dtype = dtype_code(q, op);
  LK_CHECK(d.scalar_type() == q.scalar_type(), op, "`doc_tokens` must have the dtype of `queries`");
  LK_CHECK(d.size(1) == q.size(2), op, "`doc_tokens` has dim ", d.size(1), " but `queries` has dim ",
           q.size(2));
  LK_CHECK_DTYPE(off, at::kLong, op, "doc_offsets");
  LK_CHECK(off.size(0) >= 1, op, "`doc_offsets` must hold n_docs + 1 >= 1 entries");
  LK_CHECK(mode == "ignore" || mode == "zero", op, "`mask_mode` must be \"ignore\" or \"zero\"");
  in.q = q.contiguous();
  in.d = d.contiguous();
  in.off = off.contiguous();
  in.nq = q.size(0);
  in.lq = q.size(1);
  in.dim = q.size(2);
  in.nd = off.size(0) - 1;
  in.zero_mode = mode == "zero";
  if (qm) {
    LK_CHECK_DEVICE(*qm, q.device(), op, "query_mask");
    LK_CHECK(qm->dim() == 2 && qm->size(0) == in.nq && qm->size(1) == in.lq, op,
             "`query_mask` must have shape [n_queries, query_len]");
    LK_CHECK_DTYPE(*qm, at::kBool, op, "query_mask");
    in.qm = qm->contiguous();
  }
  if (pad) {
    LK_CHECK_DEVICE(*pad, q.device(), op, "doc_padded");
    LK_CHECK(pad->dim() == 1 && pad->size(0) == in.nd, op, "`doc_padded` must have shape [n_docs]");
    LK_CHECK_DTYPE(*pad, at::kBool, op, "doc_padded");
    in.pad = pad->contiguous();
  }
  in.ns = in.nd;
  if (cand) {
    LK_CHECK_DEVICE(*cand, q.device(), op, "candidates");
    LK_CHECK(cand->dim() == 2 && cand->size(0) == in.nq, op, "`candidates` must have shape [n_queries, k]");
    LK_CHECK_DTYPE(*cand, at::kLong, op, "candidates");
    in.cand = cand->contiguous();
    in.ns = cand->size(1);
  }
  return in;
}

void forward(const char* op, const In& in, float* scores, int32_t* argmax) {
  const int64_t chunk = 65535;  // grid y limit: split the queries
  for (int64_t q0 = 0; q0 < in.nq; q0 += chunk) {
    lateint::cuda::FwdParams p;
    p.nq = std::min(chunk, in.nq - q0);
    p.lq = in.lq;
    p.dim = in.dim;
    p.nd = in.nd;
    p.ns = in.ns;
    p.queries = static_cast<const char*>(in.q.data_ptr()) + q0 * in.lq * in.dim * in.q.element_size();
    p.query_mask = in.qm.defined() ? in.qm.data_ptr<bool>() + q0 * in.lq : nullptr;
    p.docs = in.d.data_ptr();
    p.offsets = in.off.data_ptr<int64_t>();
    p.doc_padded = in.pad.defined() ? in.pad.data_ptr<bool>() : nullptr;
    p.cand = in.cand.defined() ? in.cand.data_ptr<int64_t>() + q0 * in.ns : nullptr;
    p.zero_mode = in.zero_mode;
    p.dtype = in.dtype;
    p.scores = scores + q0 * in.ns;
    p.argmax = argmax ? argmax + q0 * in.lq * in.ns : nullptr;
    const cudaError_t e = lateint::cuda::maxsim_forward(p, at::cuda::getCurrentCUDAStream());
    TORCH_CHECK(e == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(e));
  }
}

at::Tensor maxsim_cuda(const at::Tensor& q, const std::optional<at::Tensor>& qm, const at::Tensor& d,
                       const at::Tensor& off, const std::optional<at::Tensor>& pad, c10::string_view mode) {
  const c10::cuda::CUDAGuard guard(q.device());
  In in = prepare("maxsim", q, qm, d, off, std::nullopt, pad, mode);
  at::Tensor out = at::empty({in.nq, in.ns}, q.options().dtype(at::kFloat));
  forward("maxsim", in, out.data_ptr<float>(), nullptr);
  return out;
}

at::Tensor maxsim_candidates_cuda(const at::Tensor& q, const std::optional<at::Tensor>& qm,
                                  const at::Tensor& d, const at::Tensor& off, const at::Tensor& cand,
                                  const std::optional<at::Tensor>& pad, c10::string_view mode) {
  const c10::cuda::CUDAGuard guard(q.device());
  In in = prepare("maxsim_candidates", q, qm, d, off, cand, pad, mode);
  at::Tensor out = at::empty({in.nq, in.ns}, q.options().dtype(at::kFloat));
  forward("maxsim_candidates", in, out.data_ptr<float>(), nullptr);
  return out;
}

std::tuple<at::Tensor, at::Tensor> maxsim_argmax_cuda(
    const at::Tensor& q, const std::optional<at::Tensor>& qm, const at::Tensor& d, const at::Tensor& off,
    const std::optional<at::Tensor>& cand, const std::optional<at::Tensor>& pad, c10::string_view mode) {
  const c10::cuda::CUDAGuard guard(q.device());
  In in = prepare("maxsim_argmax", q, qm, d, off, cand, pad, mode);
  at::Tensor out = at::empty({in.nq, in.ns}, q.options().dtype(at::kFloat));
  at::Tensor arg = at::empty({in.nq, in.lq, in.ns}, q.options().dtype(at::kInt));
  forward("maxsim_argmax", in, out.data_ptr<float>(), arg.data_ptr<int32_t>());
  return {out, arg};
}

std::tuple<at::Tensor, at::Tensor> maxsim_backward_cuda(
    const at::Tensor& grad, const at::Tensor& q, const std::optional<at::Tensor>& qm, const at::Tensor& d,
    const at::Tensor& off, const std::optional<at::Tensor>& cand, const std::optional<at::Tensor>& pad,
    c10::string_view mode) {
  const char* op = "maxsim_backward";
  const c10::cuda::CUDAGuard guard(q.device());
  In in = prepare(op, q, qm, d, off, cand, pad, mode);
  LK_CHECK(grad.dim() == 2 && grad.size(0) == in.nq && grad.size(1) == in.ns, op,
           "`grad` must have shape [n_queries, n_slots]");
  at::Tensor scores = at::empty({in.nq, in.ns}, q.options().dtype(at::kFloat));
  at::Tensor arg = at::empty({in.nq, in.lq, in.ns}, q.options().dtype(at::kInt));
  forward(op, in, scores.data_ptr<float>(), arg.data_ptr<int32_t>());
  const at::Tensor g = grad.to(at::kFloat).contiguous();
  // CSR of (query, slot) pairs per document, in (query, slot) order (fixed reduction order)
  at::Tensor ptr, pq, ps;
  auto lopt = q.options().dtype(at::kLong);
  if (!in.cand.defined()) {
    ptr = at::arange(in.nd + 1, lopt) * in.nq;
    pq = at::arange(in.nq, lopt).repeat({in.nd});
    ps = at::arange(in.nd, lopt).repeat_interleave(in.nq);
  } else {
    at::Tensor flat = in.cand.reshape({-1});
    at::Tensor keep = flat >= 0;
    at::Tensor key = at::where(keep, flat, at::full_like(flat, in.nd));
    at::Tensor order = std::get<1>(key.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
    const int64_t n_keep = keep.sum().item<int64_t>();
    order = order.slice(0, 0, n_keep);
    at::Tensor counts = at::bincount(flat.index_select(0, order), {}, in.nd);
    ptr = at::zeros({in.nd + 1}, lopt);
    ptr.slice(0, 1).copy_(counts.cumsum(0));
    pq = at::floor_divide(order, std::max<int64_t>(in.ns, 1));
    ps = at::remainder(order, std::max<int64_t>(in.ns, 1));
  }
  at::Tensor dq = at::empty({in.nq, in.lq, in.dim}, q.options().dtype(at::kFloat));
  at::Tensor dd = at::empty({in.d.size(0), in.dim}, q.options().dtype(at::kFloat));
  lateint::cuda::BwdParams p;
  p.nq = in.nq; p.lq = in.lq; p.dim = in.dim; p.nd = in.nd; p.ns = in.ns;
  p.queries = in.q.data_ptr(); p.docs = in.d.data_ptr(); p.offsets = in.off.data_ptr<int64_t>();
  p.argmax = arg.data_ptr<int32_t>(); p.grad = g.data_ptr<float>();
  p.pair_ptr = ptr.data_ptr<int64_t>(); p.pair_q = pq.data_ptr<int64_t>(); p.pair_s = ps.data_ptr<int64_t>();
  p.dtype = in.dtype; p.dq = dq.data_ptr<float>(); p.dd = dd.data_ptr<float>();
  const cudaError_t e = lateint::cuda::maxsim_backward(p, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(e));
  return {dq.to(q.scalar_type()), dd.to(d.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(lateint_kernels, CUDA, m) {
  m.impl("maxsim_cuda_simt", &maxsim_cuda);
  m.impl("maxsim_candidates_cuda_simt", &maxsim_candidates_cuda);
  m.impl("maxsim_backward_cuda_simt", &maxsim_backward_cuda);
}

TORCH_LIBRARY_IMPL(lateint_testing, CUDA, m) { m.impl("maxsim_argmax_cuda_simt", &maxsim_argmax_cuda); }
