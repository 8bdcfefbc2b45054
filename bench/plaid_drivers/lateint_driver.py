"""lateint PLAIDIndex driver (run with the project's python)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from lateint.plaid import PLAIDIndex  # noqa: E402

corpus, work, nbits, report = common.args()
tokens, offsets, queries = common.load_corpus(corpus)
niter = int(os.environ.get("LATEINT_BENCH_KMEANS_NITER", "4"))  # fast-plaid's default: 4
buckets = os.environ.get("LATEINT_BENCH_BUCKETS", "lloyd")  # "quantile": PLAID's residual buckets
path = os.path.join(work, f"lateint-{nbits}")


def make():
    index = PLAIDIndex.build(tokens, offsets, nbits=nbits, kmeans_niter=niter, buckets=buckets)
    index.save(common.fresh_dir(work, f"lateint-{nbits}"))  # on disk, like the others' build
    return index


build, index = common.timed_build(make, int(tokens.shape[0]))


def search(q, k, **s):
    return index.search(q, k, **s)[0].tolist()


settings = [dict(ncells=c, centroid_score_threshold=t, ndocs=n)
            for c, t, n in ((1, 0.5, 64), (1, 0.5, 128), (1, 0.5, 256), (2, 0.45, 256), (2, 0.45, 384), (2, 0.45, 512),
                            (4, 0.4, 1024), (8, 0.3, 2048))]
common.write({"library": "lateint", "build_s": build, "disk_bytes": common.dir_bytes(path),
              "n_tokens": int(tokens.shape[0]), "results": common.time_searches(search, queries, settings)}, report)
