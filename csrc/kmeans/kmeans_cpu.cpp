// CPU binding of kmeans_assign: checks, centroid packing, then the torch-free core
// (csrc/kmeans/kmeans_core) over row ranges with at::parallel_for.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <atomic>

#include "common/checks.h"
#include "kmeans/kmeans_core.h"

namespace {

using lateint::DType;

// `screen`: whether the int8 screen may run (where kmeans_int8_screen() allows it).
std::tuple<at::Tensor, at::Tensor> kmeans_assign_impl(const at::Tensor& x, const at::Tensor& centroids,
                                                      bool screen) {
  const char* op = "kmeans_assign";
  LK_CHECK_DIM(x, 2, op, "x", "[n, dim]");
  LK_CHECK_DIM(centroids, 2, op, "centroids", "[k, dim]");
  LK_CHECK(x.device().is_cpu(), op, "`x` must be a CPU tensor here, got ", x.device());
  LK_CHECK(centroids.device() == x.device(), op, "`centroids` must be on ", x.device(),
           " like `x`, got ", centroids.device());
  const DType dt = dtype_of(x, op, "x");
  LK_CHECK(centroids.scalar_type() == x.scalar_type(), op, "`centroids` must have the dtype of `x` (",
           x.scalar_type(), "), got ", centroids.scalar_type());
  LK_CHECK(centroids.size(1) == x.size(1), op, "`centroids` has dim ", centroids.size(1),
           " but `x` has dim ", x.size(1));
  LK_CHECK(centroids.size(0) >= 1, op, "`centroids` must hold at least one centroid");
  LK_CHECK(centroids.size(0) < (int64_t(1) << 31), op, "at most 2^31 - 1 centroids");
  LK_CHECK(x.size(1) >= 1, op, "`x` must have dim >= 1");
  const at::Tensor xc = x.contiguous(), cc = centroids.contiguous();
  const int64_t n = x.size(0), dim = x.size(1), k = centroids.size(0);
  lateint::PackedCentroids pc;
  LK_CHECK(lateint::pack_centroids(cc.data_ptr(), dt, k, dim, &pc, screen), op,
           "`centroids` contains NaN or Inf");
  at::Tensor codes = at::empty({n}, x.options().dtype(at::kInt));
  at::Tensor scores = at::empty({n}, x.options().dtype(at::kFloat));
  std::atomic<bool> finite{true};
  int32_t* cp = codes.data_ptr<int32_t>();
  float* sp = scores.data_ptr<float>();
  at::parallel_for(0, (n + 63) / 64, 1, [&](int64_t b, int64_t e) {
    if (!lateint::kmeans_assign_range(xc.data_ptr(), dt, dim, pc, b * 64, std::min(n, e * 64),
                                      cp, sp))
      finite = false;
  });
  LK_CHECK(finite.load(), op, "`x` contains NaN or Inf (or a product overflows float32)");
  return {codes, scores};
}

std::tuple<at::Tensor, at::Tensor> kmeans_assign_cpu(const at::Tensor& x, const at::Tensor& centroids) {
  return kmeans_assign_impl(x, centroids, true);
}

// Testing hook: the float32 kernel alone at the active ISA (the int8 screen off), the
// reference the screen's answers must equal bit for bit.
std::tuple<at::Tensor, at::Tensor> kmeans_assign_float32_cpu(const at::Tensor& x, const at::Tensor& centroids) {
  return kmeans_assign_impl(x, centroids, false);
}

}  // namespace

TORCH_LIBRARY_IMPL(lateint_kernels, CPU, m) { m.impl("kmeans_assign", &kmeans_assign_cpu); }

TORCH_LIBRARY_IMPL(lateint_testing, CPU, m) { m.impl("kmeans_assign_float32", &kmeans_assign_float32_cpu); }
