"""fast-plaid 1.7 driver (run with the fast-plaid venv's python)."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from fast_plaid import search as fp  # noqa: E402

corpus, work, nbits, report = common.args()
tokens, offsets, queries = common.load_corpus(corpus)
docs = common.doc_list(tokens, offsets)
path = os.path.join(work, f"fastplaid-{nbits}")


def make():
    index = fp.FastPlaid(index=common.fresh_dir(work, f"fastplaid-{nbits}"), device="cpu")
    index.create(documents_embeddings=docs, nbits=nbits)
    return index


build, index = common.timed_build(make, int(tokens.shape[0]))


def search(q, k, n_ivf_probe, n_full_scores):
    res = index.search(q, top_k=k, n_ivf_probe=n_ivf_probe, n_full_scores=n_full_scores, show_progress=False)
    return [[doc for doc, _ in r] + [-1] * (k - len(r)) for r in res]


settings = [dict(n_ivf_probe=p, n_full_scores=f) for p, f in ((1, 256), (2, 512), (4, 1024), (8, 4096), (16, 8192))]
common.write({"library": "fast-plaid 1.7.0", "build_s": build, "disk_bytes": common.dir_bytes(path),
              "n_tokens": int(tokens.shape[0]), "results": common.time_searches(search, queries, settings)}, report)
