// CPU binding of the residual codec ops: checks, float32 views, then the torch-free core
// (csrc/codec/codec_core) over row ranges.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <vector>

#include "common/checks.h"
#include "codec/codec_core.h"

namespace {

void check_float(const at::Tensor& t, const char* op, const char* name) {
  LK_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf ||
               t.scalar_type() == at::kBFloat16,
           op, "`", name, "` must be float32, float16 or bfloat16, got ", t.scalar_type());
}

void check_codes(const at::Tensor& codes, int64_t n, int64_t k, const char* op) {
  LK_CHECK(codes.dim() == 1 && codes.size(0) == n, op, "`codes` must be a 1-D tensor [n] = [", n,
           "], got shape ", codes.sizes());
  LK_CHECK_DTYPE(codes, at::kInt, op, "codes");
  const int32_t* c = codes.data_ptr<int32_t>();
  for (int64_t i = 0; i < n; ++i)
    LK_CHECK(c[i] >= 0 && c[i] < k, op, "`codes` must hold centroid ids in [0, ", k, "); codes[", i,
             "] = ", c[i]);
}

at::Tensor compress_residuals_cpu(const at::Tensor& x, const at::Tensor& centroids,
                                  const at::Tensor& codes, const at::Tensor& bucket_cutoffs,
                                  int64_t nbits) {
  const char* op = "compress_residuals";
  LK_CHECK_DIM(x, 2, op, "x", "[n, dim]");
  LK_CHECK_DIM(centroids, 2, op, "centroids", "[k, dim]");
  check_float(x, op, "x");
  check_float(centroids, op, "centroids");
  LK_CHECK(centroids.size(1) == x.size(1), op, "`centroids` has dim ", centroids.size(1),
           " but `x` has dim ", x.size(1));
  const int64_t n = x.size(0), dim = x.size(1), k = centroids.size(0);
  check_nbits(nbits, dim, op);
  LK_CHECK(bucket_cutoffs.dim() == 1 && bucket_cutoffs.size(0) == (1 << nbits) - 1, op,
           "`bucket_cutoffs` must be a 1-D tensor of 2^nbits - 1 = ", (1 << nbits) - 1,
           " values, got shape ", bucket_cutoffs.sizes());
  for (const at::Tensor* t : {&centroids, &codes, &bucket_cutoffs})
    LK_CHECK(t->device() == x.device() && x.device().is_cpu(), op,
             "all inputs must be CPU tensors here");
  const at::Tensor xc = x.to(at::kFloat).contiguous(), cc = centroids.to(at::kFloat).contiguous();
  const at::Tensor cut = bucket_cutoffs.to(at::kFloat).contiguous(), cd = codes.contiguous();
  check_codes(cd, n, k, op);
  LK_CHECK(at::isfinite(cut).all().item<bool>(), op, "`bucket_cutoffs` contains NaN or Inf");
  LK_CHECK(nbits == 1 || (cut.slice(0, 1) >= cut.slice(0, 0, -1)).all().item<bool>(), op,
           "`bucket_cutoffs` must be non-decreasing");
  LK_CHECK(at::isfinite(xc).all().item<bool>(), op, "`x` contains NaN or Inf");
  LK_CHECK(at::isfinite(cc).all().item<bool>(), op, "`centroids` contains NaN or Inf");
  at::Tensor out = at::empty({n, dim * nbits / 8}, x.options().dtype(at::kByte));
  at::parallel_for(0, n, 256, [&](int64_t b, int64_t e) {
    lateint::compress_residuals_range(xc.data_ptr<float>(), cc.data_ptr<float>(),
                                      cd.data_ptr<int32_t>(), cut.data_ptr<float>(), (int)nbits,
                                      dim, b, e, out.data_ptr<uint8_t>());
  });
  return out;
}

at::Tensor decompress_residuals_cpu(const at::Tensor& codes, const at::Tensor& packed,
                                    const at::Tensor& centroids, const at::Tensor& bucket_weights,
                                    int64_t nbits) {
  const char* op = "decompress_residuals";
  LK_CHECK_DIM(centroids, 2, op, "centroids", "[k, dim]");
  LK_CHECK_DIM(packed, 2, op, "packed", "[n, dim * nbits / 8]");
  check_float(centroids, op, "centroids");
  LK_CHECK_DTYPE(packed, at::kByte, op, "packed");
  const int64_t n = packed.size(0), dim = centroids.size(1), k = centroids.size(0);
  check_nbits(nbits, dim, op);
  LK_CHECK(packed.size(1) == dim * nbits / 8, op, "`packed` must have dim * nbits / 8 = ",
           dim * nbits / 8, " bytes per row, got ", packed.size(1));
  check_bucket_weights(bucket_weights, nbits, op);
  for (const at::Tensor* t : {&codes, &packed, &bucket_weights})
    LK_CHECK(t->device() == centroids.device() && centroids.device().is_cpu(), op,
             "all inputs must be CPU tensors here");
  const at::Tensor cd = codes.contiguous(), pk = packed.contiguous();
  const at::Tensor cc = centroids.to(at::kFloat).contiguous();
  const at::Tensor w = bucket_weights.to(at::kFloat).contiguous();
  check_codes(cd, n, k, op);
  LK_CHECK(at::isfinite(w).all().item<bool>(), op, "`bucket_weights` contains NaN or Inf");
  LK_CHECK(at::isfinite(cc).all().item<bool>(), op, "`centroids` contains NaN or Inf");
  std::vector<float> table(256 * 8 / nbits);
  lateint::residual_byte_table(w.data_ptr<float>(), (int)nbits, table.data());
  at::Tensor out = at::empty({n, dim}, centroids.options().dtype(at::kFloat));
  at::parallel_for(0, n, 256, [&](int64_t b, int64_t e) {
    lateint::decompress_residuals_range(cd.data_ptr<int32_t>(), pk.data_ptr<uint8_t>(),
                                        cc.data_ptr<float>(), table.data(), (int)nbits, dim, b, e,
                                        out.data_ptr<float>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lateint_kernels, CPU, m) {
  m.impl("compress_residuals", &compress_residuals_cpu);
  m.impl("decompress_residuals", &decompress_residuals_cpu);
}
