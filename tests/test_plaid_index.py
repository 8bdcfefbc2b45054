"""PLAIDIndex (in progress: build + search in memory) against exact MaxSim search, subset
filtering, determinism and bad input. Small corpora with few centroids keep it fast."""
import os
import sys

import pytest
import torch

import lateint_kernels as lk

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
from lateint.plaid import PLAIDIndex  # noqa: E402
from lateint.synthetic import clustered_corpus  # noqa: E402


@pytest.fixture(scope="module")
def corpus():
    q, tokens, off, rel = clustered_corpus(400, 20, 120, 64, nq=16, lq=16, n_topics=128, seed=3)
    return q, tokens, off


@pytest.fixture(scope="module")
def index(corpus):
    _, tokens, off = corpus
    return PLAIDIndex.build(tokens, off, ids=list(range(1000, 1400)), nbits=4, n_centroids=128, kmeans_niter=6)


def _recall(ids, exact_ids):
    return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, exact_ids)) / ids.numel()


def test_search_recall_vs_exact(corpus, index):
    q, tokens, off = corpus
    exact = lk.maxsim(q, tokens, off).topk(10, dim=1).indices + 1000
    ids, scores = index.search(q, 10, ncells=4, centroid_score_threshold=0.2, ndocs=200)
    assert ids.shape == (16, 10) and scores.shape == (16, 10)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    assert _recall(ids, exact) >= 0.85
    # scores are MaxSim of the decompressed documents: close to the exact scores
    full = lk.maxsim(q, tokens, off)
    got = torch.gather(full, 1, ids - 1000)
    assert (got - scores).abs().max() < 0.05 * q.shape[1]


def test_subset_restricts_results(corpus, index):
    q, _, _ = corpus
    allowed = list(range(1000, 1400, 3))
    ids, _ = index.search(q, 10, ncells=8, ndocs=400, subset=allowed)
    assert set(ids[ids >= 0].tolist()) <= set(allowed)
    assert (ids >= 0).float().mean() > 0.9


def test_deterministic(corpus, index):
    q, tokens, off = corpus
    again = PLAIDIndex.build(tokens, off, ids=list(range(1000, 1400)), nbits=4, n_centroids=128, kmeans_niter=6)
    for name in ("centroids", "codes", "packed", "ivf_offsets", "ivf_docs", "bucket_cutoffs", "bucket_weights"):
        assert torch.equal(getattr(index, name), getattr(again, name)), name
    a = index.search(q, 5)
    b = again.search(q, 5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_input(corpus, index):
    q, tokens, off = corpus
    with pytest.raises(ValueError, match="queries"):
        index.search(q[..., :32], 10)
    with pytest.raises(ValueError, match="nbits"):
        PLAIDIndex.build(tokens, off, nbits=3)
    with pytest.raises(ValueError, match="ids"):
        PLAIDIndex.build(tokens, off, ids=[0] * 400)
    with pytest.raises(ValueError, match="doc_offsets"):
        PLAIDIndex.build(tokens, off + 1)
