"""The Ray-sharded PLAID index on a local Ray cluster: Ray's answer = the same shards in one
process, recall against one index, a shard actor dying, add/delete routing."""
import os

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="ray is an optional extra (scripts/install.sh installs it)") \
    if not os.environ.get("LATEINT_REQUIRE_RAY") else __import__("ray")

from lateint.plaid import PLAIDIndex  # noqa: E402
from lateint.plaid_ray import ShardedIndex, ShardError, create_sharded  # noqa: E402
from lateint.plaid_source import split  # noqa: E402
from lateint.synthetic import clustered_corpus  # noqa: E402

import lateint_kernels as lk  # noqa: E402

KW = dict(nbits=2, kmeans_niter=4, seed=5)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus():
    q, t, o, rel = clustered_corpus(900, 8, 50, 64, nq=24, lq=16, n_topics=64, seed=21)
    return q, t.half(), o


@pytest.fixture(scope="module")
def sharded(cluster, corpus, tmp_path_factory):
    q, t, o = corpus
    path = tmp_path_factory.mktemp("ray") / "idx"
    emb = tmp_path_factory.mktemp("emb")
    np.save(emb / "tokens.npy", t.numpy())
    np.save(emb / "offsets.npy", o.numpy())
    create_sharded(str(path), str(emb), 3, chunk_tokens=2500, **KW)
    return path


def _shard_ids(path):
    from lateint.plaid_store import SegmentedIndex

    return [SegmentedIndex.open(os.path.join(path, f"shard-{i}")).ids for i in range(3)]


def test_ray_search_equals_the_same_shards_in_one_process(sharded, corpus):
    q, t, o = corpus
    index = ShardedIndex.open(sharded)
    try:
        assert index.n_shards == 3
        for kw in (dict(k=10), dict(k=25, ncells=2), dict(k=5, ndocs=64, scorer="lut")):
            got = index.search(q, **kw)
            want = index.search_local(q, **kw)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        # every shard answers: global ids from all three document ranges come back
        ids, _ = index.search(q, 30)
        held = _shard_ids(sharded)
        assert sum(h.numel() for h in held) == 900 and all(torch.isin(ids, h).any() for h in held)
        # recall@10 against exact MaxSim at least the single index's
        exact = lk.maxsim(q, t.float(), o).topk(10, dim=1).indices
        single = PLAIDIndex.build(t, o, **KW).search(q, 10)[0]

        def recall(found):
            return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact)) / exact.numel()

        assert recall(ids[:, :10]) >= recall(single) - 1e-9, (recall(ids[:, :10]), recall(single))
    finally:
        index.close()


def test_a_dead_shard_is_an_error_naming_it_or_a_partial_answer(sharded, corpus):
    q, _, _ = corpus
    index = ShardedIndex.open(sharded)
    try:
        ray.get(index._actors[1].exit_during_next_search.remote())
        with pytest.raises(ShardError, match=r"shard 1 \(.*shard-1\) failed"):
            index.search(q, 10)
        ids, scores, failed = index.search(q, 10, partial=True)
        assert failed == [1]
        assert not torch.isin(ids, _shard_ids(sharded)[1]).any() and (ids >= 0).all()
    finally:
        index.close()
    restarting = ShardedIndex.open(sharded, max_restarts=2)
    try:
        want = restarting.search(q, 10)
        ray.get(restarting._actors[2].exit_during_next_search.remote())
        got = restarting.search(q, 10)  # Ray restarts the actor from disk and retries
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    finally:
        restarting.close()


def test_add_and_delete_are_routed_to_the_owning_shard(cluster, corpus, tmp_path):
    q, t, o = corpus
    path = tmp_path / "rw"
    create_sharded(str(path), split(t, o, 2500), 3, **KW)
    index = ShardedIndex.open(path)
    try:
        before = index.search(q, 10)
        with pytest.raises(ValueError, match="ids already in the index"):
            index.add(t[:int(o[5])], o[:6], [1, 2, 3, 4, 5000])
        shard = index.add(t[:int(o[20])], o[:21], list(range(5000, 5020)))
        assert 0 <= shard < 3
        from lateint.plaid_store import SegmentedIndex
        owner = SegmentedIndex.open(os.path.join(path, f"shard-{shard}"))
        assert owner.n_segments == 2 and torch.isin(torch.arange(5000, 5020), owner.ids).all()
        others = [SegmentedIndex.open(os.path.join(path, f"shard-{i}")) for i in range(3) if i != shard]
        assert all(o_.n_segments == 1 for o_ in others)
        victims = sorted(set(before[0][:, 0].tolist()))[:4]
        with pytest.raises(KeyError, match="not in the index"):
            index.delete(victims + [10 ** 8])
        index.delete(victims)
        after = index.search(q, 10)
        assert not torch.isin(after[0], torch.tensor(victims)).any()
        local = index.search_local(q, 10)
        assert torch.equal(after[0], local[0]) and torch.equal(after[1], local[1])
    finally:
        index.close()
