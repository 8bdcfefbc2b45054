// Standalone (torch-free) checks of the CPU MaxSim cores against a double-precision loop,
// for every ISA this processor supports. Run by ctest.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "maxsim/maxsim_core.h"

using namespace lateint;

static int failures = 0;
#define EXPECT(c, ...)                 \
  do {                                 \
    if (!(c)) {                        \
      std::printf(__VA_ARGS__);        \
      std::printf("\n");               \
      ++failures;                      \
    }                                  \
  } while (0)

static void check(Isa isa, int64_t nq, int64_t lq, int64_t dim, const std::vector<int64_t>& lens,
                  bool use_mask, std::mt19937& rng, bool bf16 = false, bool bf16_dot = false) {
  std::normal_distribution<float> nd;
  std::vector<int64_t> off(lens.size() + 1, 0);
  for (size_t i = 0; i < lens.size(); ++i) off[i + 1] = off[i] + lens[i];
  const int64_t T = off.back();
  std::vector<float> Q(nq * lq * dim), D(T * dim);
  for (auto& v : Q) v = nd(rng);
  for (auto& v : D) v = nd(rng);
  std::vector<uint16_t> Qb(Q.size()), Db(D.size());
  if (bf16) {  // round the inputs to bf16; the float64 reference then sees the same values
    for (size_t i = 0; i < Q.size(); ++i) Q[i] = bf16_to_f32(Qb[i] = f32_to_bf16(Q[i]));
    for (size_t i = 0; i < D.size(); ++i) D[i] = bf16_to_f32(Db[i] = f32_to_bf16(D[i]));
  }
  std::vector<uint8_t> mask(nq * lq, 1);
  if (use_mask)
    for (auto& m : mask) m = (rng() % 4) != 0;
  MaxSimProblem p;
  p.nq = nq; p.lq = lq; p.dim = dim; p.queries = Q.data();
  p.query_mask = use_mask ? mask.data() : nullptr;
  p.docs = D.data(); p.offsets = off.data(); p.nd = (int64_t)lens.size();
  if (bf16) {
    p.queries = Qb.data();
    p.docs = Db.data();
    p.dtype = DType::BF16;
  }
  PackedQueries pq;
  pack_queries_with(p, isa, bf16_dot, &pq);
  std::vector<float> S(nq * p.nd, NAN);
  std::vector<int32_t> A(nq * lq * p.nd, -7);
  bool ok = maxsim_forward_range(p, pq, 0, nq, 0, p.nd, S.data(), A.data());
  EXPECT(ok, "unexpected non-finite flag");
  // candidates (with -1 = none and repeats) must reproduce the all-pairs scores
  {
    std::vector<int64_t> cand(nq * 5);
    for (auto& c : cand) c = (int64_t)(rng() % (p.nd + 1)) - 1;
    MaxSimProblem pc = p;
    pc.has_cand = true;
    pc.cand = cand.data();
    pc.ncand = 5;
    std::vector<float> SC(nq * 5, NAN);
    maxsim_forward_range(pc, pq, 0, nq, 0, 5, SC.data(), nullptr);
    for (int64_t i = 0; i < nq * 5; ++i) {
      const int64_t d = cand[i];
      const float want = d < 0 ? -INFINITY : S[(i / 5) * p.nd + d];
      EXPECT(SC[i] == want, "candidate isa=%s i=%ld got %f want %f", isa_name(isa), (long)i, SC[i], want);
    }
  }
  for (int64_t q = 0; q < nq; ++q) {
    for (int64_t d = 0; d < p.nd; ++d) {
      double tot = 0;
      for (int64_t r = 0; r < lq; ++r) {
        if (!mask[q * lq + r]) {
          EXPECT(A[(q * lq + r) * p.nd + d] == -1, "masked row argmax");
          continue;
        }
        double best = -INFINITY;
        int64_t arg = -1;
        for (int64_t t = off[d]; t < off[d + 1]; ++t) {
          double s = 0;
          for (int64_t k = 0; k < dim; ++k) s += (double)Q[(q * lq + r) * dim + k] * D[t * dim + k];
          if (s > best) { best = s; arg = t; }
        }
        if (arg >= 0) tot += best;
        const int32_t got = A[(q * lq + r) * p.nd + d];
        EXPECT(got == arg || (got >= 0 && arg >= 0 && std::fabs([&] {
                 double s = 0;
                 for (int64_t k = 0; k < dim; ++k) s += (double)Q[(q * lq + r) * dim + k] * D[got * dim + k];
                 return s - best; }()) < 1e-4),
               "argmax isa=%s q=%ld r=%ld d=%ld got %d want %ld", isa_name(isa), (long)q, (long)r,
               (long)d, got, (long)arg);
      }
      const double err = std::fabs(S[q * p.nd + d] - tot);
      EXPECT(err <= 1e-4 * (1 + std::fabs(tot)), "score isa=%s lq=%ld dim=%ld q=%ld d=%ld got %f want %f",
             isa_name(isa), (long)lq, (long)dim, (long)q, (long)d, S[q * p.nd + d], tot);
    }
  }
}

int main() {
  std::mt19937 rng(1234);
  const int best = (int)cpu_best_isa();
  std::printf("best ISA: %s, bf16 path: %s\n", isa_name(cpu_best_isa()),
              bf16_use_dot() ? "VDPBF16PS" : "widen to float32");
  for (int isa = 0; isa <= best; ++isa) {
    for (int64_t lq : {1, 31, 32, 33, 70}) {
      for (int64_t dim : {96, 128, 7}) {
        check((Isa)isa, 3, lq, dim, {1, 0, 13, 64, 300, 5, 12, 24}, false, rng);
        check((Isa)isa, 2, lq, dim, {2, 17, 100}, true, rng);
        check((Isa)isa, 2, lq, dim, {2, 0, 17, 100}, true, rng, /*bf16=*/true, /*dot=*/false);
        if (isa == (int)Isa::Avx512Bf16)
          check((Isa)isa, 2, lq, dim, {2, 0, 17, 100}, true, rng, /*bf16=*/true, /*dot=*/true);
      }
    }
    // NaN is flagged
    std::vector<float> Q(32 * 8, 0.5f), D(10 * 8, 0.25f);
    D[37] = NAN;
    std::vector<int64_t> off{0, 4, 10};
    MaxSimProblem p;
    p.nq = 1; p.lq = 32; p.dim = 8; p.queries = Q.data(); p.docs = D.data();
    p.offsets = off.data(); p.nd = 2;
    PackedQueries pq;
    pack_queries(p, (Isa)isa, &pq);
    float S[2];
    EXPECT(!maxsim_forward_range(p, pq, 0, 1, 0, 2, S, nullptr), "NaN not flagged (%s)",
           isa_name((Isa)isa));
  }
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
