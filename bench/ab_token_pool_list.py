"""token_pool_list on a fixed clustered corpus (2,000 normalized documents of 64-300 tokens,
d = 128, pool_factor 2), timed with the lateint_kernels of a given checkout, so that two
builds can be compared in alternating processes on the same data:

    python bench/ab_token_pool_list.py /path/to/old/checkout
    python bench/ab_token_pool_list.py .
"""
import sys
import time

import torch

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else ".")
import lateint_kernels as lk  # noqa: E402

torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
docs = []
for n in torch.randint(64, 300, (2000,), generator=g).tolist():
    c = torch.nn.functional.normalize(torch.randn(6, 128, generator=g), dim=-1)
    x = c[torch.randint(0, 6, (n,), generator=g)] + 0.5 * torch.randn(n, 128, generator=g) / 128 ** 0.5
    docs.append(torch.nn.functional.normalize(x, dim=-1))
lk.token_pool_list(docs, 2)
ts = []
for _ in range(10):
    t = time.perf_counter()
    lk.token_pool_list(docs, 2)
    ts.append(time.perf_counter() - t)
print(f"{lk.__file__}: best {min(ts) * 1e3:.1f} ms, median {sorted(ts)[5] * 1e3:.1f} ms "
      f"(isa {lk.cpu_isa()}, 2 threads)")
