"""lk.maxsim on fixed clustered data (32 queries x 32 tokens against 1,000 documents of
64-300 tokens, d = 128, float32; and 1 query x 10,000 documents), timed with the
lateint_kernels of a given checkout, so that two builds can be compared in alternating
processes on the same data:

    python bench/ab_maxsim.py /path/to/old/checkout
    python bench/ab_maxsim.py .
"""
import sys
import time

import torch

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else ".")
import lateint_kernels as lk  # noqa: E402

torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
lens = torch.randint(64, 301, (10_000,), generator=g)
centres = torch.nn.functional.normalize(torch.randn(256, 128, generator=g), dim=-1)
tokens = centres[torch.randint(0, 256, (int(lens.sum()),), generator=g)]
tokens = torch.nn.functional.normalize(tokens + 0.3 * torch.randn(tokens.shape, generator=g) / 128 ** 0.5, dim=-1)
off = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens, 0)])
q = torch.nn.functional.normalize(centres[torch.randint(0, 256, (32, 32), generator=g)], dim=-1)
off1k = off[:1001]
tok1k = tokens[:int(off1k[-1])]


def best_median(fn, n=15):
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[0] * 1e3, ts[n // 2] * 1e3


a = best_median(lambda: lk.maxsim(q, tok1k, off1k))
b = best_median(lambda: lk.maxsim(q[:1], tokens, off))
t0 = time.perf_counter()
for _ in range(40):
    lk.maxsim(q[:1], tokens, off)
mean = (time.perf_counter() - t0) / 40 * 1e3
print(f"{lk.__file__}: 32q x 1000 docs best {a[0]:.1f} ms median {a[1]:.1f} ms; "
      f"1q x 10000 docs best {b[0]:.1f} ms median {b[1]:.1f} ms, mean of 40 back to back {mean:.1f} ms "
      f"(isa {lk.cpu_isa()}, 2 threads)")
