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
