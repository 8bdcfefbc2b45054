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
