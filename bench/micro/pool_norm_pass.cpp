// The squared-norm pass token pooling makes over each clustered document (a copy of
// max_sqnorm_f32 in csrc/pool/pool_gram.cpp, same variants), timed alone:
//   g++ -O3 -std=c++17 bench/micro/pool_norm_pass.cpp -o /tmp/pool_norm_pass && /tmp/pool_norm_pass
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>
__attribute__((target_clones("avx512f", "avx2,fma", "default"))) float max_sqnorm_f32(const float* x, int64_t n, int64_t dim) {
  float m = 0.0f;
  const int64_t d16 = dim / 16 * 16;
  for (int64_t i = 0; i < n; ++i) {
    const float* r = x + i * dim;
    float acc[16] = {};
    for (int64_t k = 0; k < d16; k += 16)
      for (int c = 0; c < 16; ++c) acc[c] += r[k + c] * r[k + c];
    float s = 0.0f;
    for (int c = 0; c < 16; ++c) s += acc[c];
    for (int64_t k = d16; k < dim; ++k) s += r[k] * r[k];
    if (!(s <= m)) m = s;
    if (m != m) return m;
  }
  return m;
}
int main() {
  // 2,000 documents of 180 tokens x 128 (the pooling benchmark's mean), each read from L2 as in the op
  const int64_t n = 180, dim = 128, docs = 2000;
  std::vector<float> x(n * dim);
  std::mt19937 g(0);
  std::normal_distribution<float> nd(0.f, 0.088f);
  for (auto& v : x) v = nd(g);
  float sink = 0;
  for (int rep = 0; rep < 3; ++rep) {
    auto t = std::chrono::steady_clock::now();
    for (int64_t d = 0; d < docs; ++d) sink += max_sqnorm_f32(x.data(), n, dim);
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
    std::printf("norm pass over %ld documents: %.2f ms (one thread)\n", (long)docs, ms);
  }
  return sink == 12345.f;
}
