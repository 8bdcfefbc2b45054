// Host-side argument checks used at the C++ boundary of every op. Messages name the op,
// the argument and what was expected, so a bad call is fixed from the error alone.
#pragma once
#include <torch/types.h>

#define LK_CHECK(cond, op, ...) TORCH_CHECK(cond, op, ": ", __VA_ARGS__)
#define LK_CHECK_DIM(t, n, op, name, layout)                                               \
  LK_CHECK((t).dim() == (n), op, "`" name "` must be ", n, "-D ", layout, ", got shape ", \
           (t).sizes())
#define LK_CHECK_DEVICE(t, dev, op, name)                                                  \
  LK_CHECK((t).device() == (dev), op, "`" name "` must be on ", (dev), " like `queries`, got ", \
           (t).device())
#define LK_CHECK_DTYPE(t, dt, op, name)                                                    \
  LK_CHECK((t).scalar_type() == (dt), op, "`" name "` must have dtype ", (dt), ", got ",    \
           (t).scalar_type())

// A CSR offsets vector (contiguous): 1-D int64 [n + 1], from 0 to `total`, non-decreasing.
inline void check_offsets(const at::Tensor& off, int64_t total, const char* op, const char* name) {
  LK_CHECK(off.dim() == 1 && off.size(0) >= 1, op, "`", name, "` must be a 1-D tensor [n + 1]");
  LK_CHECK(off.scalar_type() == at::kLong, op, "`", name, "` must have dtype int64, got ",
           off.scalar_type());
  const int64_t* o = off.data_ptr<int64_t>();
  const int64_t n = off.size(0) - 1;
  LK_CHECK(o[0] == 0 && o[n] == total, op, "`", name, "` must start at 0 and end at ", total,
           ", got ", o[0], " ... ", o[n]);
  for (int64_t i = 0; i < n; ++i)
    LK_CHECK(o[i + 1] >= o[i], op, "`", name, "` must be non-decreasing at ", i + 1);
}

// The residual codec's bit width: 1, 2, 4 or 8, and whole bytes per row of dim values.
inline void check_nbits(int64_t nbits, int64_t dim, const char* op) {
  LK_CHECK(nbits == 1 || nbits == 2 || nbits == 4 || nbits == 8, op,
           "`nbits` must be 1, 2, 4 or 8, got ", nbits);
  LK_CHECK(dim * nbits % 8 == 0, op, "dim * nbits must be a multiple of 8 (whole bytes per row), got dim ",
           dim, " with nbits ", nbits);
}

// One decompression weight per bucket (call after check_nbits).
inline void check_bucket_weights(const at::Tensor& w, int64_t nbits, const char* op) {
  LK_CHECK(w.dim() == 1 && w.size(0) == (int64_t(1) << nbits), op,
           "`bucket_weights` must be a 1-D tensor of 2^nbits = ", (int64_t(1) << nbits),
           " values, got shape ", w.sizes());
}
