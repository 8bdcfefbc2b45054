// bf16 MaxSim on torch's batch-reduce GEMM micro-kernel (at::native::cpublas::brgemm): the
// oneDNN kernel that runs on AMX tiles where the processor has them (the resident operand
// packed into VNNI pairs once per query), torch's portable loops elsewhere. This is the
// MaxSim engine of the "amx" ISA level; on other CPUs it runs only when asked for (the
// lateint_testing hook), so the same code is tested on every machine.
//
// The queries are the resident operand B = Q^T [dim, n] (n = the query's unmasked rows);
// document tokens are streamed in place as A [rows, dim] in blocks of up to kRows rows, and
// the float32 block C = A B [rows, n] is folded row by row, in token order, into a running
// max and argmax per query row (strict >: the first token wins ties, NaN never wins), cut at
// document boundaries. Semantics are the kernel family's (maxsim_core.h): masked query rows
// contribute 0 and argmax -1, an empty document scores 0, in zero mask mode a padded
// document floors every row's max at 0, a candidate -1 scores -inf; a non-finite
// similarity is reported as in the vector kernels.
#include <ATen/native/CPUBlas.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "maxsim/maxsim_core.h"

namespace lateint {
namespace {

constexpr int64_t kRows = 256;  // document tokens per micro-kernel call

struct QueryOperand {
  std::vector<int64_t> rows;        // unmasked query rows, in order
  std::vector<c10::BFloat16> b;     // [k, n] row-major, or VNNI-packed when vnni
  int64_t k = 0, n = 0;
};

void load_query(const MaxSimProblem& p, int64_t q, bool vnni, QueryOperand* out,
                std::vector<c10::BFloat16>* tmp) {
  QueryOperand& o = *out;
  o.rows.clear();
  for (int64_t r = 0; r < p.lq; ++r)
    if (!p.query_mask || p.query_mask[q * p.lq + r]) o.rows.push_back(r);
  o.n = (int64_t)o.rows.size();
  o.k = p.dim;
  if (o.n == 0) return;
  const c10::BFloat16* Q = static_cast<const c10::BFloat16*>(p.queries) + q * p.lq * p.dim;
  std::vector<c10::BFloat16>& bt = vnni ? *tmp : o.b;
  bt.assign((size_t)(o.k * o.n), c10::BFloat16(0.0f));
  for (int64_t j = 0; j < o.n; ++j) {
    const c10::BFloat16* row = Q + o.rows[j] * p.dim;
    for (int64_t kk = 0; kk < p.dim; ++kk) bt[kk * o.n + j] = row[kk];
  }
  if (vnni) {
    o.b.assign((size_t)(o.k * o.n), c10::BFloat16(0.0f));
    at::native::cpublas::pack(o.k, o.n, o.n, o.n, at::kBFloat16, at::kBFloat16, bt.data(), o.b.data());
  }
}

// Running state of one (query, document) pair.
struct Running {
  std::vector<float> m;
  std::vector<int32_t> a;
  void reset(int64_t n) {
    m.assign((size_t)n, -INFINITY);
    a.assign((size_t)n, -1);
  }
};

// Folds rows [0, rows) of c (ld n), global tokens tok0.., into st; false if a value is
// not finite.
inline bool fold(const float* c, int64_t rows, int64_t n, int32_t tok0, Running* st, bool want_arg) {
  bool finite = true;
  float* m = st->m.data();
  int32_t* a = st->a.data();
  for (int64_t r = 0; r < rows; ++r) {
    const float* cr = c + r * n;
    for (int64_t j = 0; j < n; ++j) {
      const float v = cr[j];
      if (!std::isfinite(v)) finite = false;
      if (v > m[j]) {
        m[j] = v;
        if (want_arg) a[j] = tok0 + (int32_t)r;
      }
    }
  }
  return finite;
}

// Writes the score (and argmax column) of a finished pair.
inline float finish(const QueryOperand& qo, const Running& st, bool floor0,
                    int32_t* arg, int64_t arg_stride) {
  float total = 0.0f;
  for (int64_t j = 0; j < qo.n; ++j) {
    float m = st.m[j];
    int32_t a = st.a[j];
    if (floor0 && !(m > 0.0f)) {
      m = 0.0f;
      a = -1;
    }
    total += m;
    if (arg) arg[qo.rows[j] * arg_stride] = a;
  }
  return total;
}

// Scores one document's tokens [t0, t1) against the query operand.
bool score_doc(const MaxSimProblem& p, const QueryOperand& qo, bool vnni, int64_t t0, int64_t t1,
               std::vector<float>* cbuf, Running* st, bool want_arg) {
  bool finite = true;
  const c10::BFloat16* D = static_cast<const c10::BFloat16*>(p.docs);
  st->reset(qo.n);
  for (int64_t r0 = t0; r0 < t1; r0 += kRows) {
    const int64_t rows = std::min(kRows, t1 - r0);
    at::native::cpublas::brgemm(rows, qo.n, qo.k, p.dim, qo.n, qo.n, false, D + r0 * p.dim, qo.b.data(),
                                cbuf->data(), vnni);
    finite &= fold(cbuf->data(), rows, qo.n, (int32_t)r0, st, want_arg);
  }
  return finite;
}

}  // namespace

bool maxsim_forward_brgemm_range(const MaxSimProblem& p, int64_t q0, int64_t q1, int64_t s0, int64_t s1,
                                 float* scores, int32_t* argmax) {
  const bool vnni = at::native::cpublas::could_pack(at::kBFloat16);  // operands in VNNI pairs (AMX)
  const int64_t ns = n_slots(p);
  const bool zero_mode = p.mode == MaskMode::Zero;
  auto floor_of = [&](int64_t doc) { return zero_mode && p.doc_padded && p.doc_padded[doc]; };
  QueryOperand qo;
  std::vector<c10::BFloat16> tmp;
  std::vector<float> cbuf((size_t)(kRows * std::max<int64_t>(p.lq, 1)));
  Running st;
  bool finite = true;
  for (int64_t q = q0; q < q1; ++q) {
    load_query(p, q, vnni, &qo, &tmp);
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t doc = p.has_cand ? p.cand[q * p.ncand + s] : s;
      int32_t* arg = argmax ? argmax + q * p.lq * ns + s : nullptr;
      if (arg)
        for (int64_t r = 0; r < p.lq; ++r) arg[r * ns] = -1;
      if (doc < 0) {
        scores[q * ns + s] = -INFINITY;
        continue;
      }
      const int64_t t0 = p.offsets[doc], t1 = p.offsets[doc + 1];
      if (t1 == t0 || qo.n == 0) {  // empty document or no query row: every row adds 0
        scores[q * ns + s] = 0.0f;
        continue;
      }
      finite &= score_doc(p, qo, vnni, t0, t1, &cbuf, &st, arg != nullptr);
      scores[q * ns + s] = finish(qo, st, floor_of(doc), arg, ns);
    }
  }
  if (vnni) at::native::cpublas::brgemm_release(vnni);
  return finite;
}

}  // namespace lateint
