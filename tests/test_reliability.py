"""Inputs a hostile new user tries: each once crashed the process, lost a user's files,
loaded damaged data or was silently accepted. Calls that once died on a signal run in a
subprocess, so a regression fails its test instead of ending the test run."""
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import lateint_kernels as lk
import lateint_kernels.testing as lkt
from lateint.plaid import IndexFormatError, PLAIDIndex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_isolated(code: str, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter (lateint importable); a signal shows as a negative
    return code."""
    full = "import sys; sys.path.insert(0, %r)\n" % os.path.join(ROOT, "python") + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", full], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def assert_clean(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"


def _unit(*shape, dtype=torch.float32):
    return torch.nn.functional.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1).to(dtype)


@pytest.fixture(scope="module")
def small_index():
    g = torch.Generator().manual_seed(3)
    lens = torch.randint(5, 30, (60,), generator=g)
    off = torch.zeros(61, dtype=torch.int64)
    off[1:] = torch.cumsum(lens, 0)
    x = torch.nn.functional.normalize(torch.randn(int(off[-1]), 32, generator=g), dim=-1)
    return PLAIDIndex.build(x, off, nbits=2, n_centroids=16, kmeans_niter=3), x, off


# ---------------------------------------------------------------------------------------
# 1. A save never deletes what it did not write
def test_save_refuses_a_users_directory_and_leaves_it_whole(small_index, tmp_path):
    index = small_index[0]
    d = tmp_path / "d"
    for sub in ("venv/lib", "videos", ".vscode", "data", "v7"):
        os.makedirs(d / sub)
    (d / "videos" / "clip.mp4").write_bytes(b"mine")
    before = sorted(os.listdir(d))
    with pytest.raises(IndexFormatError, match="not a lateint index"):
        index.save(str(d))
    assert sorted(os.listdir(d)) == before
    assert (d / "videos" / "clip.mp4").read_bytes() == b"mine"


def test_save_into_an_index_removes_only_its_own_entries(small_index, tmp_path):
    index = small_index[0]
    d = str(tmp_path / "idx")
    index.save(d)
    os.makedirs(os.path.join(d, "videos"))
    os.makedirs(os.path.join(d, "v9"))                       # a user's folder with a version-like name
    open(os.path.join(d, "v9", "notes.txt"), "w").write("mine")
    open(os.path.join(d, "vault.txt"), "w").write("mine")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.makedirs(os.path.join(d, f".v5.tmp-{dead.pid}"))       # what a crashed (dead) save leaves
    os.makedirs(os.path.join(d, ".v6.tmp-1"))                 # a save in progress (pid 1 lives): kept
    index.save(d)
    index.save(d)
    assert sorted(os.listdir(d)) == [".v6.tmp-1", "CURRENT", "v3", "v9", "vault.txt", "videos"]
    assert open(os.path.join(d, "v9", "notes.txt")).read() == "mine"


def test_cli_build_refuses_a_users_directory(small_index, tmp_path, capsys):
    from lateint.cli import main
    from lateint.commands import write_embeddings

    _, x, off = small_index
    write_embeddings(str(tmp_path / "emb"), x, off, [f"d{i}" for i in range(60)], {"kind": "documents"})
    user = tmp_path / "userdir"
    os.makedirs(user / "venv")
    os.makedirs(user / "videos")
    rc = main(["index", "build", "--embeddings", str(tmp_path / "emb"), "--index", str(user)])
    assert rc == 2 and "not an index" in capsys.readouterr().err
    assert sorted(os.listdir(user)) == ["venv", "videos"]


# ---------------------------------------------------------------------------------------
# 2. Zero candidate columns
def test_zero_candidate_columns_in_every_path():
    out = run_isolated("""
        import torch, lateint_kernels as lk
        import lateint_kernels.testing as lkt
        q = torch.nn.functional.normalize(torch.randn(3, 4, 8), dim=-1).requires_grad_()
        x = torch.nn.functional.normalize(torch.randn(10, 8), dim=-1)
        o = torch.tensor([0, 4, 10])
        c = torch.zeros(3, 0, dtype=torch.long)
        s = lk.maxsim_candidates(q, x, o, c)
        assert s.shape == (3, 0), s.shape
        s.sum().backward()
        assert torch.equal(q.grad, torch.zeros_like(q))
        s, a = lkt.ops.maxsim_argmax(q.detach(), None, x, o, c, None, "ignore")
        assert s.shape == (3, 0) and a.shape == (3, 4, 0), (s.shape, a.shape)
        f = torch.compile(lambda q: lk.maxsim_candidates(q, x, o, c), fullgraph=True)
        assert f(q.detach()).shape == (3, 0)
        assert lk.reference.maxsim_candidates_ref(q.detach().double(), x.double(), o, c).shape == (3, 0)
        print("ok")
    """)
    assert_clean(out)


# ---------------------------------------------------------------------------------------
# 3 and 6. Token pooling refuses tokens the cosine distance cannot cluster
@pytest.mark.parametrize("isa", ["best", "scalar"])
def test_token_pool_overflowing_products_are_refused(isa):
    out = run_isolated("""
        import torch, lateint_kernels as lk
        lk.cpu_isa(%r)
        x, o = torch.tensor([[-1e20], [1e20]]), torch.tensor([0, 2])
        for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            for call in (lambda: lk.token_pool(x.to(dt), o, 2, protected_tokens=0),
                         lambda: lk.token_pool_labels(x.to(dt), o, 2, protected_tokens=0),
                         lambda: lk.token_pool_list([x.to(dt)], 2, protected_tokens=0)):
                try:
                    call()
                except (RuntimeError, ValueError) as e:
                    assert "not L2-normalized" in str(e) or "NaN or Inf" in str(e), e
                else:
                    raise AssertionError("accepted")
        print("ok")
    """ % isa)
    assert_clean(out)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_token_pool_refuses_unnormalized_tokens(backend, monkeypatch):
    if backend == "reference":
        monkeypatch.setenv("LATEINT_BACKEND", "reference")
    x = torch.randn(150, 16)
    off = torch.tensor([0, 150])
    with pytest.raises((RuntimeError, ValueError), match="`doc_tokens`: document 0 has tokens that are not L2"):
        lk.token_pool(x, off, 2)
    with pytest.raises((RuntimeError, ValueError), match="not L2-normalized"):
        lk.token_pool_list([_unit(20, 16), torch.randn(30, 16)], 2)
    # Euclidean pooling normalizes the tokens itself: accepted, equal to the reference
    got = lk.token_pool_labels(x, off, 2, distance="euclidean")
    ref = lk.reference.token_pool_labels_ref(x, off, 2, distance="euclidean")
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_token_pool_norms_at_most_one_match_the_reference():
    """Shorter than unit vectors keep every cosine distance >= 0, where scipy's Ward is
    well defined: the op equals the reference on them (documents kept whole are not checked)."""
    g = torch.Generator().manual_seed(5)
    lens = torch.tensor([1, 2, 3, 17, 40, 64])
    off = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens, 0)])
    x = _unit(int(off[-1]), 24) * torch.empty(int(off[-1]), 1).uniform_(0.3, 1.0, generator=g)
    x[0] *= 50  # a protected token: never clustered, so never refused
    got = lk.token_pool_labels(x, off, 2)
    ref = lk.reference.token_pool_labels_ref(x, off, 2)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


# ---------------------------------------------------------------------------------------
# 4. The testing hooks check their input
def test_ward_linkage_hook_checks_its_input():
    out = run_isolated("""
        import torch, lateint_kernels as lk
        import lateint_kernels.testing as lkt
        d = torch.rand(6, 6, dtype=torch.float64)
        for bad, msg in ((d, "symmetric"), (torch.full((6, 6), float("nan"), dtype=torch.float64), "finite"),
                         (torch.rand(6, 5, dtype=torch.float64), "square")):
            try:
                lkt.ops.ward_linkage(bad)
            except RuntimeError as e:
                assert msg in str(e), e
            else:
                raise AssertionError("accepted")
        print("ok")
    """)
    assert_clean(out)


def test_token_pool_finish_hook_checks_offsets_and_merges():
    out = run_isolated("""
        import torch, lateint_kernels as lk
        ops = torch.ops.lateint_kernels
        m = torch.zeros(1, 3, dtype=torch.int32)
        cases = [
            ((m, m, m.double(), torch.tensor([0, 100000])), "merges"),
            ((m, m, m.double(), torch.tensor([0, -5])), "non-decreasing"),
            ((m, m, m.double(), torch.tensor([3, 4])), "must be 0"),
            ((m, m, m.double(), torch.tensor([[0, 4]])), "doc_offsets"),
            ((torch.tensor([[0, 0, 2]], dtype=torch.int32), torch.tensor([[1, 1, 3]], dtype=torch.int32),
              torch.ones(1, 3, dtype=torch.float64), torch.tensor([0, 4])), "one tree"),   # (0, 1) twice
        ]
        for args, msg in cases:
            try:
                ops._token_pool_finish(*args, 2, 0)
            except RuntimeError as e:
                assert msg in str(e), (msg, e)
            else:
                raise AssertionError(("accepted", msg))
        # a valid list still works: 4 tokens, chain (0,1) (2,3) (1,3)
        mx = torch.tensor([[0, 2, 1]], dtype=torch.int32)
        my = torch.tensor([[1, 3, 3]], dtype=torch.int32)
        rows, off = ops._token_pool_finish(mx, my, torch.tensor([[0.1, 0.2, 0.9]], dtype=torch.float64),
                                           torch.tensor([0, 4]), 2, 0)
        assert off.tolist() == [0, 2] and rows.tolist() in ([0, 0, 1, 1], [1, 1, 0, 0]), (rows, off)
        print("ok")
    """)
    assert_clean(out)


# ---------------------------------------------------------------------------------------
# 5. Damaged meta.json and CURRENT are refused by name
def _vdir(path):
    return os.path.join(path, open(os.path.join(path, "CURRENT")).read().split()[0])


def test_a_flipped_bit_in_the_user_section_is_refused(small_index, tmp_path):
    index = small_index[0]
    index.metadata = {"names": [f"d{i}" for i in range(60)]}
    path = str(tmp_path / "idx")
    index.save(path)
    meta = os.path.join(_vdir(path), "meta.json")
    raw = bytearray(open(meta, "rb").read())
    at = raw.index(b'"d1"') + 2
    raw[at] ^= 0x01  # "d1" -> "d0"
    open(meta, "wb").write(bytes(raw))
    with pytest.raises(IndexFormatError, match="meta.json is damaged"):
        PLAIDIndex.load(path)


@pytest.mark.parametrize("change", ["not_a_dict", "no_arrays", "arrays_list", "bad_shape", "extra_key",
                                    "user_list", "nbits_str"])
def test_malformed_meta_is_refused_as_index_format_error(small_index, tmp_path, change):
    index = small_index[0]
    path = str(tmp_path / "idx")
    index.save(path)
    mpath = os.path.join(_vdir(path), "meta.json")
    meta = json.load(open(mpath))
    if change == "not_a_dict":
        meta = [meta]
    elif change == "no_arrays":
        del meta["arrays"]
    elif change == "arrays_list":
        meta["arrays"] = list(meta["arrays"])
    elif change == "bad_shape":
        meta["arrays"]["codes"]["shape"] = "12"
    elif change == "extra_key":
        meta["extra"] = 1
    elif change == "user_list":
        meta["user"] = []
    else:
        meta["nbits"] = "2"
    raw = json.dumps(meta).encode()
    open(mpath, "wb").write(raw)
    name = open(os.path.join(path, "CURRENT")).read().split()[0]
    # CURRENT made to match, so that the content checks themselves are what refuses it
    open(os.path.join(path, "CURRENT"), "w").write(f"{name} {hashlib.sha256(raw).hexdigest()}\n")
    with pytest.raises(IndexFormatError, match="meta.json"):
        PLAIDIndex.load(path)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00v1\n", b"/etc\n", b"../other\n", b"v1/../../x\n", b"",
                                     b"v1 " + b"0" * 64 + b"\n", b"v1 abc\n"])
def test_a_damaged_current_is_refused(small_index, tmp_path, content):
    index = small_index[0]
    path = str(tmp_path / "idx")
    index.save(path)
    index.save(str(tmp_path / "other"))
    if content == b"../other\n":
        content = f"{os.path.relpath(tmp_path / 'other', path)}\n".encode()
    open(os.path.join(path, "CURRENT"), "wb").write(content)
    with pytest.raises(IndexFormatError, match="CURRENT|meta.json"):
        PLAIDIndex.load(path)


def test_an_index_written_before_the_current_checksum_still_loads(small_index, tmp_path):
    index = small_index[0]
    path = str(tmp_path / "idx")
    index.save(path)
    name = open(os.path.join(path, "CURRENT")).read().split()[0]
    open(os.path.join(path, "CURRENT"), "w").write(name + "\n")
    assert torch.equal(PLAIDIndex.load(path).codes, index.codes)


# ---------------------------------------------------------------------------------------
# 7. Nonsense arguments are refused, not truncated or clamped
def test_search_refuses_nonsense_settings(small_index):
    index, x, off = small_index
    q = x[None, :6]
    for kw, err, msg in ((dict(centroid_score_threshold=float("nan")), ValueError, "threshold"),
                         (dict(ndocs=0), ValueError, "ndocs"), (dict(ndocs=-3), ValueError, "ndocs"),
                         (dict(ncells=0), ValueError, "ncells"), (dict(ndocs_exact=0), ValueError, "ndocs_exact"),
                         (dict(subset=[0.5, 1.5]), TypeError, "subset"),
                         (dict(subset=[0, 10_000]), ValueError, "not in the index"),
                         (dict(subset=[[0, 1], [2, 999]]), ValueError, "not in the index"),
                         (dict(subset="abc"), TypeError, "subset")):
        with pytest.raises(err, match=msg):
            index.search(q.expand(2, -1, -1) if "subset" in kw and isinstance(kw["subset"][0], list) else q,
                         5, **kw)
    for k in (10.0, True, 0, -1, "10"):
        with pytest.raises((TypeError, ValueError), match="`k`"):
            index.search(q, k)
    with pytest.raises(ValueError, match="threshold"):
        lk.approx_scores(lk.centroid_scores(q, index.centroids), index.codes, index.doc_offsets,
                         torch.zeros(1, 2, dtype=torch.long), threshold=float("nan"))
    with pytest.raises(RuntimeError, match="threshold"):
        torch.ops.lateint_kernels.approx_scores(lk.centroid_scores(q, index.centroids), None, index.codes,
                                                index.doc_offsets, torch.zeros(1, 2, dtype=torch.long), float("nan"))


def test_build_and_add_refuse_ids_that_are_not_integers(small_index):
    _, x, off = small_index
    n = off.shape[0] - 1
    for ids, err, msg in (([0.5 + i for i in range(n)], TypeError, "integers"), (["a"] * n, TypeError, "integers"),
                          ([-1] + list(range(1, n)), ValueError, ">= 0"), ([True] * n, TypeError, "integers"),
                          ("abc", TypeError, "string"), (list(range(n - 1)) + [0], ValueError, "distinct")):
        with pytest.raises(err, match=msg):
            PLAIDIndex.build(x, off, ids=ids, nbits=2, n_centroids=8, kmeans_niter=1)
    index = PLAIDIndex.build(x, off, nbits=2, n_centroids=8, kmeans_niter=1)
    with pytest.raises(TypeError, match="integers"):
        index.add(x[:10], torch.tensor([0, 10]), ids=[100.5])
    with pytest.raises(ValueError, match=">= 0"):
        index.add(x[:10], torch.tensor([0, 10]), ids=[-1])
    with pytest.raises(ValueError, match=r"\[T, 32\]"):
        index.add(torch.randn(10, 16), torch.tensor([0, 10]), ids=[100])
    bad = x[:10].clone()
    bad[3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        index.add(bad, torch.tensor([0, 10]), ids=[100])
    with pytest.raises(TypeError, match="integers"):
        index.delete([0.5])
    assert index.n_docs == n  # nothing was added by the refused calls


def test_ops_without_a_gradient_do_not_claim_one():
    x = _unit(40, 16).requires_grad_()
    off = torch.tensor([0, 15, 40])
    assert not lk.token_pool(x, off, 2)[0].requires_grad
    assert not any(t.requires_grad for t in lk.token_pool_list([x[:15], x[15:]], 2))
    c = x[:6].detach().clone().requires_grad_()
    codes = lk.kmeans_assign(x.detach(), c.detach())
    cut, w = lk.residual_buckets(x.detach() - c.detach()[codes.long()], 2)
    packed = lk.compress_residuals(x.detach(), c.detach(), codes, cut, 2)
    assert not lk.decompress_residuals(codes, packed, c, w.requires_grad_(), 2).requires_grad
    q = x[None, :4]
    cand = torch.tensor([[0, 1]])
    assert not lk.decompress_maxsim(q, codes, packed, off, c, w, 2, cand).requires_grad
    # the MaxSim ops keep their gradients
    assert lk.maxsim(q, x, off).requires_grad


# ---------------------------------------------------------------------------------------
# 8. Readers during writes, across processes
def test_readers_in_other_processes_see_the_old_or_the_new_index(tmp_path):
    """One process saves two different indexes over the same directory in turn; two other
    processes load it meanwhile. Every load succeeds and is exactly one of the two."""
    path = str(tmp_path / "idx")
    script = """
        import os, sys, time, torch
        from lateint.plaid import PLAIDIndex
        role, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        def make(seed):
            g = torch.Generator().manual_seed(seed)
            off = torch.arange(0, 20 * (40 + seed) + 1, 20)
            x = torch.nn.functional.normalize(torch.randn(int(off[-1]), 16, generator=g), dim=-1)
            return PLAIDIndex.build(x, off, nbits=2, n_centroids=8, kmeans_niter=1, seed=seed)
        if role == "writer":
            a, b = make(0), make(1)
            for i in range(n):
                (a if i % 2 else b).save(path)
            open(path + ".done", "w").close()
        else:
            sizes, loads = set(), 0
            while not os.path.exists(path + ".done") or loads < 5:
                idx = PLAIDIndex.load(path)   # raises on any failure: the test fails
                assert idx.n_docs in (40, 41), idx.n_docs
                assert int(idx.doc_offsets[-1]) == idx.codes.shape[0]
                sizes.add(idx.n_docs)
                loads += 1
            print(loads, sorted(sizes))
    """
    first = run_isolated("""
        import torch
        from lateint.plaid import PLAIDIndex
        off = torch.arange(0, 20 * 40 + 1, 20)
        x = torch.nn.functional.normalize(torch.randn(int(off[-1]), 16), dim=-1)
        PLAIDIndex.build(x, off, nbits=2, n_centroids=8, kmeans_niter=1).save(%r)
    """ % path)
    assert_clean(first)
    prog = "import sys; sys.path.insert(0, %r)\n" % os.path.join(ROOT, "python") + textwrap.dedent(script)
    readers = [subprocess.Popen([sys.executable, "-c", prog, "reader", path, "0"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    writer = subprocess.run([sys.executable, "-c", prog, "writer", path, "60"], capture_output=True, text=True,
                            timeout=600)
    assert writer.returncode == 0, writer.stderr[-3000:]
    total = 0
    for r in readers:
        out, err = r.communicate(timeout=600)
        assert r.returncode == 0, err[-3000:]
        total += int(out.split()[0])
    assert total >= 10
