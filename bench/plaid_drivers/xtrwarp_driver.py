"""xtr-warp-rs 2.1 driver (run with the xtr-warp venv's python: it pins torch 2.11). WARP's
engine, PyLate's `WARP` index. Sweep: nprobe (inverted-list probes per query token) with
its own defaults for the rest, then its hyperparameter suggestion scaled up."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from xtr_warp.search import XTRWarp  # noqa: E402

corpus, work, nbits, report = common.args()
tokens, offsets, queries = common.load_corpus(corpus)
docs = common.doc_list(tokens, offsets)
path = os.path.join(work, f"xtrwarp-{nbits}")
threads = torch.get_num_threads()


def make():
    index = XTRWarp(index=common.fresh_dir(work, f"xtrwarp-{nbits}"), device="cpu")
    index.create(docs, device="cpu", nbits=nbits, show_progress=False)
    index.load(device="cpu")
    return index


build, index = common.timed_build(make, int(tokens.shape[0]))


def search(q, k, **s):
    res = index.search(q, top_k=k, num_threads=threads, show_progress=False, **s)
    return [[doc for doc, _ in r] + [-1] * (k - len(r)) for r in res]


settings = [dict(nprobe=p) for p in (1, 2, 4, 8, 16, 32)]
settings += [dict(nprobe=p, t_prime=tp) for p, tp in ((32, 200_000), (64, 200_000))]
common.write({"library": "xtr-warp-rs 2.1.0", "build_s": build, "disk_bytes": common.dir_bytes(path),
              "n_tokens": int(tokens.shape[0]), "results": common.time_searches(search, queries, settings)}, report)
