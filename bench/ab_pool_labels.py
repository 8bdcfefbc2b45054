"""token_pool_labels (the clustering alone) on 200 clustered documents of one length, for
lengths 64 / 100 / 150 / 250 / 300, one thread, timed with the lateint_kernels of a given
checkout, so that two builds can be compared in alternating processes:

    python bench/ab_pool_labels.py /path/to/old/checkout
    python bench/ab_pool_labels.py .
"""
import sys
import time

import torch

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else ".")
import lateint_kernels as lk  # noqa: E402

torch.set_num_threads(1)


def make(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    docs = []
    for n in lengths:
        c = torch.nn.functional.normalize(torch.randn(6, 128, generator=g), dim=-1)
        x = c[torch.randint(0, 6, (n,), generator=g)] + 0.5 * torch.randn(n, 128, generator=g) / 128 ** 0.5
        docs.append(torch.nn.functional.normalize(x, dim=-1))
    return lk.pack_list(docs)


def best(fn, n=5):
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts) * 1e3


out = []
for L in (64, 100, 150, 250, 300):
    p = make([L]*200)
    out.append("L%d %.1f" % (L, best(lambda: lk.token_pool_labels(p.tokens, p.offsets, 2))))
print(lk.__file__, " ".join(out), f"(isa {lk.cpu_isa()}, 1 thread, best of 5, ms)")
