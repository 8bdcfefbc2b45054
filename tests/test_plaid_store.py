"""The streaming build (PLAIDIndex.create) and the segmented on-disk index: bit-identical
files whatever the chunking, segments + merge = one segment, crash safety, corruption,
concurrent readers, bad chunks."""
import hashlib
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

from lateint.plaid import IndexFormatError, PLAIDIndex
from lateint.plaid_source import split
from lateint.plaid_store import SegmentedIndex
from lateint.synthetic import clustered_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KW = dict(nbits=2, kmeans_niter=4, seed=3)


def _files(path):
    out = {}
    for root, _, names in os.walk(path):
        for f in names:
            if f != "LOCK":
                with open(os.path.join(root, f), "rb") as fh:
                    out[os.path.relpath(os.path.join(root, f), path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def corpus():
    q, t, o, _ = clustered_corpus(600, 8, 50, 64, nq=12, lq=16, n_topics=64, seed=11)
    return q, t.half(), o


def _same(a, b):
    assert torch.equal(a[0], b[0]), (a[0], b[0])
    assert torch.equal(a[1], b[1])


def test_streaming_build_is_bit_identical_whatever_the_chunking(tmp_path, corpus):
    q, t, o = corpus
    emb = tmp_path / "emb"
    emb.mkdir()
    np.save(emb / "tokens.npy", t.numpy())
    np.save(emb / "offsets.npy", o.numpy())
    parts = split(t, o, 700)
    assert len(parts) > 5
    one = PLAIDIndex.create(tmp_path / "one", [(t, o)], **KW)
    PLAIDIndex.create(tmp_path / "many", parts, **KW)
    PLAIDIndex.create(tmp_path / "fn", lambda: iter(split(t, o, 2000)), **KW)
    PLAIDIndex.create(tmp_path / "dir", str(emb), chunk_tokens=333, **KW)
    PLAIDIndex.create(tmp_path / "np", [(a.numpy(), b.numpy()) for a, b in parts], **KW)
    ref = _files(tmp_path / "one")
    assert "seg-1/packed.npy" in ref and "codec-1/centroids.npy" in ref
    for name in ("many", "fn", "dir", "np"):
        assert _files(tmp_path / name) == ref, name
    # the in-memory build computes exactly the same arrays and results
    mem = PLAIDIndex.build(t, o, **KW)
    seg = one._state.segments[0]
    for key in ("codes", "packed", "doc_offsets", "ivf_offsets", "ivf_docs"):
        assert torch.equal(getattr(mem, key), getattr(seg, key)), key
    assert torch.equal(mem.centroids, one.centroids)
    assert torch.equal(mem.bucket_weights, one.bucket_weights)
    _same(mem.search(q, 10), one.search(q, 10))
    # a different seed gives different files (the comparison above can fail)
    PLAIDIndex.create(tmp_path / "seed", [(t, o)], **{**KW, "seed": 4})
    assert _files(tmp_path / "seed")["codec-1/centroids.npy"] != ref["codec-1/centroids.npy"]


def test_kmeans_budget_caps_the_points(tmp_path, corpus):
    q, t, o = corpus
    capped = PLAIDIndex.build(t, o, n_centroids=32, max_points_per_centroid=4, **KW)
    free = PLAIDIndex.build(t, o, n_centroids=32, max_points_per_centroid=None, **KW)
    assert capped.centroids.shape == free.centroids.shape == (32, 64)
    assert not torch.equal(capped.centroids, free.centroids)
    with pytest.raises(ValueError, match="max_points_per_centroid"):
        PLAIDIndex.build(t, o, max_points_per_centroid=0)


def test_bad_sources_are_named(tmp_path, corpus):
    _, t, o = corpus
    parts = split(t, o, 700)
    with pytest.raises(TypeError, match="iterator, which can be read only once"):
        PLAIDIndex.create(tmp_path / "x", iter(parts), **KW)
    bad_dim = list(parts)
    bad_dim[2] = (parts[2][0][:, :32], parts[2][1])
    with pytest.raises(ValueError, match="chunk 2: tokens have dim 32, expected 64"):
        PLAIDIndex.create(tmp_path / "x", bad_dim, **KW)
    nan = list(parts)
    tok = parts[3][0].clone()
    tok[int(parts[3][1][5]) + 1, 7] = float("nan")
    nan[3] = (tok, parts[3][1])
    first = sum(p[1].shape[0] - 1 for p in parts[:3])
    with pytest.raises(ValueError, match=rf"chunk 3: document 5 \(document {first + 5} of the corpus\) has NaN"):
        PLAIDIndex.create(tmp_path / "x", nan, **KW)
    order = list(parts)
    off = parts[1][1].clone()
    a4, a5 = int(off[4]), int(off[5])
    off[4], off[5] = a5, a4
    order[1] = (parts[1][0], off)
    with pytest.raises(ValueError, match="chunk 1: `offsets` decrease at document"):
        PLAIDIndex.create(tmp_path / "x", order, **KW)
    end = list(parts)
    end[0] = (parts[0][0][:-1], parts[0][1])
    with pytest.raises(ValueError, match="chunk 0: `offsets` must start at 0 and end at"):
        PLAIDIndex.create(tmp_path / "x", end, **KW)
    n0 = parts[0][1].shape[0] - 1
    ids = [(a, b, torch.arange(b.shape[0] - 1) + 100 * i) for i, (a, b) in enumerate(parts)]
    ids[1] = (ids[1][0], ids[1][1], torch.arange(ids[1][1].shape[0] - 1) + n0 - 1)  # overlaps chunk 0
    with pytest.raises(ValueError, match="chunk 1: duplicate document ids"):
        PLAIDIndex.create(tmp_path / "x", ids, **KW)
    mixed = [(parts[0][0], parts[0][1], torch.arange(n0))] + parts[1:]
    with pytest.raises(ValueError, match="chunk 1 lacks ids"):
        PLAIDIndex.create(tmp_path / "x", mixed, **KW)
    calls = []

    def changing():
        calls.append(1)
        return iter(parts if len(calls) == 1 else parts[:-1])

    with pytest.raises(ValueError, match="gave .* chunks"):
        PLAIDIndex.create(tmp_path / "x", changing, **KW)
    assert not (tmp_path / "x").exists() or not os.listdir(tmp_path / "x") or "CURRENT" not in os.listdir(
        tmp_path / "x")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        PLAIDIndex.create(theirs, parts, **KW)
    assert os.listdir(theirs) == ["notes.txt"]


def _grow(tmp_path, corpus, name, pieces):
    """An index of the first 400 documents, then the other 200 added in `pieces` segments."""
    q, t, o = corpus
    a_end = int(o[400])
    idx = PLAIDIndex.create(tmp_path / name, [(t[:a_end], o[:401])], **KW)
    rest_t, rest_o = t[a_end:], o[400:] - o[400]
    base = 400
    for pt, po in split(rest_t, rest_o, max(1, (rest_t.shape[0] + pieces - 1) // pieces)):
        n = po.shape[0] - 1
        idx.add(pt, po, list(range(base, base + n)), merge_factor=None)
        base += n
    return idx


def test_segments_search_like_one_segment_and_merge_rewrites_them(tmp_path, corpus):
    q, t, o = corpus
    multi = _grow(tmp_path, corpus, "multi", 4)
    single = _grow(tmp_path, corpus, "single", 1)
    assert multi.n_segments >= 4 and single.n_segments == 2
    single.merge()
    assert single.n_segments == 1
    for kw in (dict(k=10), dict(k=5, ndocs=40), dict(k=20, ncells=3, centroid_score_threshold=0.3),
               dict(k=10, scorer="lut")):
        _same(multi.search(q, **kw), single.search(q, **kw))
    before = multi.search(q, 10)
    multi.merge()
    assert multi.n_segments == 1
    _same(before, multi.search(q, 10))
    seg_m = {k.split("/", 1)[1]: v for k, v in _files(multi.path).items() if k.startswith("seg-")}
    seg_s = {k.split("/", 1)[1]: v for k, v in _files(single.path).items() if k.startswith("seg-")}
    assert seg_m == seg_s  # the merged segment is byte for byte the same
    # the documents of the added segments are found
    ids, _ = multi.search(q, 50)
    assert (ids >= 400).any()


def test_delete_tombstones_persist_and_merge_drops_them(tmp_path, corpus):
    q, t, o = corpus
    idx = _grow(tmp_path, corpus, "d", 2)
    ids, _ = idx.search(q, 10)
    victims = sorted(set(ids[:, 0].tolist()))[:3] + [450]
    idx.delete(victims)
    after, _ = idx.search(q, 10)
    assert not torch.isin(after, torch.tensor(victims)).any()
    with pytest.raises(KeyError, match="not in the index"):
        idx.delete([victims[0]])
    with pytest.raises(KeyError, match="not in the index"):
        idx.delete([10 ** 9])
    again = SegmentedIndex.open(idx.path)
    _same(again.search(q, 10), idx.search(q, 10))
    assert int(again.deleted.sum()) == len(victims)
    # an id deleted may be added again: the new document is live, the old one stays gone
    vt, vo = t[int(o[victims[0]]):int(o[victims[0] + 1])], torch.tensor([0, int(o[victims[0] + 1] - o[victims[0]])])
    idx.add(vt, vo, [victims[0]], merge_factor=None)
    assert int((idx.ids == victims[0]).sum()) == 2 and int((~idx.deleted).sum()) == 600 - len(victims) + 1
    before = idx.search(q, 10)
    idx.merge()
    assert idx.n_segments == 1 and idx.n_docs == 600 - len(victims) + 1 and not idx.deleted.any()
    _same(before, idx.search(q, 10))
    assert not any(e.startswith("tombstones") for e in os.listdir(idx.path))
    with pytest.raises(ValueError, match="ids already in the index"):
        idx.add(vt, vo, [victims[0]])


def test_tiered_merge_keeps_few_segments(tmp_path, corpus):
    q, t, o = corpus
    idx = PLAIDIndex.create(tmp_path / "t", [(t[:int(o[300])], o[:301])], **KW)
    rest = split(t[int(o[300]):], o[300:] - o[300], 150)
    base = 300
    counts = []
    for pt, po in rest:
        n = po.shape[0] - 1
        idx.add(pt, po, list(range(base, base + n)), merge_factor=3)
        base += n
        counts.append(idx.n_segments)
    assert len(rest) > 20 and max(counts) <= 8, counts
    assert idx.n_docs == 600
    ref = PLAIDIndex.open(idx.path)
    ref.merge()
    _same(idx.search(q, 10), ref.search(q, 10))


_CRASH = textwrap.dedent("""
    import os, signal, sys, torch
    import lateint.plaid_store as ps
    from lateint.plaid import PLAIDIndex
    path, what, stop, hit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    seen = []
    def step(name):
        if name == stop:
            seen.append(name)
            if len(seen) == hit:
                os.kill(os.getpid(), signal.SIGKILL)
    ps._step = step
    idx = PLAIDIndex.open(path)
    data = torch.load(path + ".add.pt")
    if what == "add":
        idx.add(data["t"], data["o"], data["ids"], merge_factor=None, chunk_tokens=300)
    elif what == "delete":
        idx.delete([1, 2, 3])
    else:
        idx.merge()
    print("finished")
""")


@pytest.mark.parametrize("what,stop,hit", [
    ("add", "segment", 1), ("add", "chunk", 2), ("add", "publish-segment", 1), ("add", "add:manifest", 1),
    ("add", "add:current", 1), ("delete", "delete:current", 1), ("merge", "merge-part", 2),
    ("merge", "publish-segment", 1), ("merge", "merge:current", 1)])
def test_a_killed_change_leaves_the_previous_index_whole(tmp_path, corpus, what, stop, hit):
    q, t, o = corpus
    idx = _grow(tmp_path, corpus, "k", 3)
    path = str(idx.path)
    torch.save({"t": t[:int(o[40])].float(), "o": o[:41], "ids": list(range(1000, 1040))}, path + ".add.pt")
    before = idx.search(q, 10)
    files = _files(path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "python"), ROOT]))
    r = subprocess.run([sys.executable, "-c", _CRASH, path, what, stop, str(hit)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -9 and "finished" not in r.stdout, (r.returncode, r.stdout, r.stderr)
    again = SegmentedIndex.open(path)
    _same(before, again.search(q, 10))
    assert {k: v for k, v in _files(path).items() if k in files} == files  # nothing it had was touched
    # the next change completes and clears what the killed one left
    again.delete([5])
    leftovers = [e for e in os.listdir(path) if e.startswith(".tmp")]
    assert not leftovers, leftovers
    assert 5 not in again.search(q, 50)[0].tolist()


def test_damaged_files_are_refused_by_name(tmp_path, corpus):
    q, t, o = corpus
    idx = _grow(tmp_path, corpus, "c", 2)
    path = str(idx.path)
    seg = sorted(e for e in os.listdir(path) if e.startswith("seg-"))[-1]
    target = os.path.join(path, seg, "packed.npy")
    raw = bytearray(open(target, "rb").read())
    raw[-3] ^= 0x40
    open(target, "wb").write(bytes(raw))
    with pytest.raises(IndexFormatError, match=f"{seg}/packed.npy is damaged"):
        SegmentedIndex.open(path)
    raw[-3] ^= 0x40
    open(target, "wb").write(bytes(raw))
    SegmentedIndex.open(path)
    os.rename(target, target + ".away")
    with pytest.raises(IndexFormatError, match=f"{seg}/packed.npy .*missing"):
        SegmentedIndex.open(path)
    os.rename(target + ".away", target)
    manifest = [e for e in os.listdir(path) if e.startswith("manifest-")][0]
    mpath = os.path.join(path, manifest)
    good = open(mpath, "rb").read()
    open(mpath, "wb").write(good[:len(good) // 2])  # torn
    with pytest.raises(IndexFormatError, match=f"{manifest} is damaged"):
        PLAIDIndex.load(path)
    open(mpath, "wb").write(good)
    cur = os.path.join(path, "CURRENT")
    open(cur, "w").write("manifest-9")
    with pytest.raises(IndexFormatError, match="CURRENT"):
        SegmentedIndex.open(path)


def test_concurrent_searches_see_the_old_or_the_new_state(tmp_path, corpus):
    q, t, o = corpus
    idx = _grow(tmp_path, corpus, "r", 2)
    extra_t, extra_o = t[:int(o[60])], o[:61]
    states = [idx.search(q, 10)]
    got, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            got.append(idx.search(q, 10))

    th = threading.Thread(target=reader)
    th.start()
    try:
        for i in range(3):
            idx.add(extra_t.float() * 0.999 + 0.001 * i, extra_o, list(range(2000 + 100 * i, 2060 + 100 * i)),
                    merge_factor=None)
            states.append(idx.search(q, 10))
        idx.merge()
        states.append(idx.search(q, 10))
    finally:
        stop.set()
        th.join()
    assert len(got) > 3
    for r in got:
        assert any(torch.equal(r[0], s[0]) and torch.equal(r[1], s[1]) for s in states)
    # another process opening the index while this one changes it gets a whole state
    script = textwrap.dedent("""
        import sys, torch
        from lateint.plaid_store import SegmentedIndex
        q = torch.load(sys.argv[2])
        out = []
        for _ in range(int(sys.argv[3])):
            out.append(SegmentedIndex.open(sys.argv[1]).search(q, 10))
        torch.save(out, sys.argv[2] + ".out")
    """)
    torch.save(q, str(tmp_path / "q.pt"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "python"), ROOT]))
    proc = subprocess.Popen([sys.executable, "-c", script, str(idx.path), str(tmp_path / "q.pt"), "25"], env=env)
    states = [idx.search(q, 10)]
    for i in range(3):
        idx.add(extra_t.float(), extra_o, list(range(3000 + 100 * i, 3060 + 100 * i)), merge_factor=2)
        states.append(idx.search(q, 10))
    assert proc.wait(timeout=300) == 0
    for r in torch.load(str(tmp_path / "q.pt.out")):
        assert any(torch.equal(r[0], s[0]) and torch.equal(r[1], s[1]) for s in states)


def test_load_opens_a_segmented_index_and_metadata_round_trips(tmp_path, corpus):
    q, t, o = corpus
    idx = PLAIDIndex.create(tmp_path / "m", [(t, o)], metadata={"names": ["a"]}, **KW)
    assert isinstance(PLAIDIndex.load(str(tmp_path / "m")), SegmentedIndex)
    idx.set_metadata({"model": "x"})
    assert SegmentedIndex.open(idx.path).metadata == {"model": "x"}
    with pytest.raises(TypeError, match="JSON"):
        idx.set_metadata({"bad": object()})


def test_drift_appends_centroids_for_new_topics(tmp_path):
    """Documents from topics the build never saw: their tokens are outliers; the expansion
    appends centroids they are coded to, which shrinks their reconstruction error and
    finds them better than the frozen codec; old segments keep their codes."""
    import lateint_kernels as lk


    q_old, t_old, o_old, _ = clustered_corpus(500, 8, 40, 64, nq=4, n_topics=32, seed=31, noise=0.7)
    q_new, t_new, o_new, _ = clustered_corpus(250, 8, 40, 64, nq=24, lq=16, n_topics=32, seed=32, noise=0.7)
    ids_new = list(range(1000, 1250))
    frozen = PLAIDIndex.create(tmp_path / "frozen", [(t_old, o_old)], **KW)
    grown = PLAIDIndex.create(tmp_path / "grown", [(t_old, o_old)], **KW)
    k0 = grown.centroids.shape[0]
    old_codes = grown._state.segments[0].codes.clone()
    # tokens like the build's are not outliers: no expansion by default
    same = grown.add(t_old[:int(o_old[20])] * 1.0, o_old[:21], list(range(5000, 5020)), merge_factor=None)
    assert same["new_centroids"] == 0 and same["outlier_fraction"] < 0.05
    r_frozen = frozen.add(t_new, o_new, ids_new, expand=False)
    r_grown = grown.add(t_new, o_new, ids_new, merge_factor=None)
    assert r_frozen["new_centroids"] == 0 and r_frozen["outlier_fraction"] is None
    assert r_grown["outlier_fraction"] > 0.5 and r_grown["new_centroids"] > 0
    assert grown.centroids.shape[0] == k0 + r_grown["new_centroids"]
    assert torch.equal(grown.centroids[:k0], frozen.centroids)
    assert torch.equal(grown._state.segments[0].codes, old_codes)
    new_seg = grown._state.segments[-1]
    assert (new_seg.codes >= k0).float().mean() > 0.5

    def err(index):
        seg = index._state.segments[-1]
        rec = lk.decompress_residuals(seg.codes, seg.packed, index.centroids, index.bucket_weights, index.nbits)
        return float(((rec - t_new.float()) ** 2).sum(1).mean())

    assert err(grown) < 0.7 * err(frozen), (err(grown), err(frozen))
    exact = lk.maxsim(q_new, t_new, o_new).topk(10, dim=1).indices + 1000

    def recall(index):
        ids, _ = index.search(q_new, 10)
        return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, exact)) / exact.numel()

    assert recall(grown) > recall(frozen), (recall(grown), recall(frozen))
    # the expanded codec persists, with old segments' IVF padded to the new centroid count
    again = SegmentedIndex.open(grown.path)
    _same(again.search(q_new, 10), grown.search(q_new, 10))
    assert not any(e == "codec-1" for e in os.listdir(grown.path))
    merged = SegmentedIndex.open(grown.path)
    merged.merge()
    _same(merged.search(q_new, 10), grown.search(q_new, 10))


def test_two_level_codec_codes_through_cells(tmp_path, corpus):
    """coarse_cells: hierarchical k-means and assignment through the nprobe best cells.
    Bit-identical whatever the chunking, nearly always the flat nearest centroid, and
    persisted (an add codes through the same cells; appended centroids are always scored)."""
    import lateint_kernels as lk
    from lateint.kmeans import assign_two_level

    q, t, o = corpus
    kw = dict(KW, n_centroids=256, coarse_cells=16, nprobe=4)
    a = PLAIDIndex.create(tmp_path / "a", [(t, o)], **kw)
    PLAIDIndex.create(tmp_path / "b", split(t, o, 900), **kw)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert "codec-1/coarse.npy" in _files(tmp_path / "a")
    st = a._state
    assert st.coarse.shape == (16, 64) and int(st.cell_offsets[-1]) == st.centroids.shape[0] == 256
    codes = st.segments[0].codes
    flat = lk.kmeans_assign(t.float(), st.centroids)
    assert 0.9 < float((codes == flat).float().mean()) < 1.0 + 1e-9
    # with every cell probed it is the flat assignment exactly (ties to the lower centroid)
    full, _ = assign_two_level(t.float(), st.centroids, st.coarse, st.cell_offsets, 16)
    assert torch.equal(full, flat)
    ids, _ = a.search(q, 10)
    exact = lk.maxsim(q, t.float(), o).topk(10, dim=1).indices
    assert sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(ids, exact)) / exact.numel() > 0.6
    # drift on a two-level codec: appended centroids sit outside the cells and are scored for every token
    q2, t2, o2, _ = clustered_corpus(100, 8, 40, 64, nq=4, n_topics=16, seed=77, noise=0.7)
    rep = a.add(t2, o2, list(range(1000, 1100)), merge_factor=None)
    again = SegmentedIndex.open(a.path)
    assert rep["new_centroids"] > 0 and again.centroids.shape[0] == 256 + rep["new_centroids"]
    assert int(again._state.cell_offsets[-1]) == 256
    assert (again._state.segments[-1].codes >= 256).float().mean() > 0.5


@pytest.mark.parametrize("block", [1 << 16, 64, 7])
def test_ivf_on_disk_is_two_bytes_an_entry_and_loads_whole(tmp_path, corpus, monkeypatch, block):
    """The IVF is stored as each document's number modulo a block (uint16) plus the start
    of every (centroid, block) run; loading restores the whole numbers: the arrays and
    results of the in-memory build, with 1 block or many (small blocks here stand in for
    segments of more than 65,536 documents)."""
    from lateint import plaid_store

    monkeypatch.setattr(plaid_store, "IVF_BLOCK", block)
    q, t, o = corpus
    idx = PLAIDIndex.create(tmp_path / "i", [(t, o)], **KW)
    seg_dir = tmp_path / "i" / "seg-1"
    lo = np.load(seg_dir / "ivf_docs.npy")
    runs = np.load(seg_dir / "ivf_offsets.npy")
    nb = -(-600 // block)
    k = idx._state.centroids.shape[0]
    assert lo.dtype == np.uint16 and runs.shape == (k * nb + 1,)
    mem = PLAIDIndex.build(t, o, **KW)
    seg = idx._state.segments[0]
    assert torch.equal(mem.ivf_offsets, seg.ivf_offsets) and torch.equal(mem.ivf_docs, seg.ivf_docs)
    assert int(lo.max()) < block
    _same(mem.search(q, 10), PLAIDIndex.open(tmp_path / "i").search(q, 10))
    # added and merged segments use the same layout
    idx.add(t[:int(o[50])], o[:51], list(range(1000, 1050)), merge_factor=None)
    before = idx.search(q, 10)
    idx.merge()
    _same(before, PLAIDIndex.open(tmp_path / "i").search(q, 10))
    # a run table that does not fit the entries is refused, naming the segment
    seg = [d for d in os.listdir(tmp_path / "i") if d.startswith("seg-")][0]
    bad = np.load(tmp_path / "i" / seg / "ivf_offsets.npy")
    if bad.shape[0] > 2:
        bad[1] = bad[-1] + 5  # runs out of order
        os.chmod(tmp_path / "i" / seg / "ivf_offsets.npy", 0o644)
        np.save(tmp_path / "i" / seg / "ivf_offsets.npy", bad)
        with pytest.raises(IndexFormatError, match=seg):
            PLAIDIndex.open(tmp_path / "i", verify=False)
