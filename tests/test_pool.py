"""token_pool / token_pool_labels against the scipy reference (float64), scipy itself
(bit-exact linkage), PyLate's pool_embeddings_hierarchical (when installed), edge cases,
every CPU ISA path, thread counts, dtypes, bad input, opcheck and torch.compile."""
import numpy as np
import pytest
import torch

import lateint_kernels as lk
import lateint_kernels.testing as lkt
from lateint_kernels import reference as ref

from _data import clustered

scipy_hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
from scipy.spatial.distance import squareform  # noqa: E402

NATIVE = pytest.mark.skipif(not lk.NATIVE_LOADED, reason="native extension not built")
ISAS = ("scalar", "avx2", "avx512")


def docs_packed(lengths, dim=64, *, seed=0, dtype=torch.float32, n_topics=6, noise=0.5):
    """Clustered, normalized documents of the given lengths (fresh per seed), packed."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for n in lengths:  # each document draws its own topics, as real documents do
        centres = torch.nn.functional.normalize(torch.randn(n_topics, dim, generator=g), dim=-1)
        docs.append(clustered(n, dim, generator=g, centres=centres, noise=noise))
    lens = torch.tensor(list(lengths), dtype=torch.int64)
    off = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lens, 0)
    tokens = torch.cat(docs) if docs else torch.zeros(0, dim)
    return tokens.to(dtype), off


def split(tokens, offsets):
    return list(torch.split(tokens, (offsets[1:] - offsets[:-1]).tolist()))


@pytest.fixture(params=ISAS)
def isa(request):
    if not lk.NATIVE_LOADED:
        pytest.skip("native extension not built")
    got = lk.cpu_isa(request.param)
    if got != request.param:
        lk.cpu_isa("best")
        pytest.skip(f"processor lacks {request.param}")
    yield got
    lk.cpu_isa("best")


# ---------------------------------------------------------------------------------------
# The clustering itself, bit for bit against scipy on identical float64 distances.
@NATIVE
def test_ward_linkage_bit_exact_vs_scipy(isa):
    rng = np.random.default_rng()  # fresh problems every run
    for trial in range(120):
        n = int(rng.integers(2, 160))
        if trial % 3 == 0:
            A = rng.integers(0, 4, (n, n)).astype(float)  # many exact ties
        elif trial % 3 == 1:
            A = rng.random((n, n))  # not a metric
        else:
            x = rng.standard_normal((n, 24))
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            A = 1 - x @ x.T  # cosine distances, slightly negative diagonal residues
        D = (A + A.T) / 2
        np.fill_diagonal(D, 0)
        Zs = scipy_hierarchy.linkage(squareform(D, checks=False), method="ward")
        Zo = lkt.ops.ward_linkage(torch.from_numpy(D)).numpy()
        assert np.array_equal(Zs, Zo), (trial, n)


@NATIVE
def test_ward_linkage_rounding_inversions_vs_scipy(isa):
    """Equal distances: the Ward update's rounding makes a later merge's distance
    (0.9999999999999999) smaller than that of the merge that formed one of its clusters
    (1.0). scipy's sorted order then no longer follows the tree, and its union-find builds a
    different tree, which the linkage must reproduce (through the union-find, not the
    chain's own cluster ids); n <= 5 stays in tree order."""
    for n in range(3, 12):
        D = np.ones((n, n)) - np.eye(n)
        Zs = scipy_hierarchy.linkage(squareform(D, checks=False), method="ward")
        Zo = lkt.ops.ward_linkage(torch.from_numpy(D)).numpy()
        assert np.array_equal(Zs, Zo), n
        for k in sorted({1, 2, n // 2, n - 1}):
            Ts = scipy_hierarchy.fcluster(Zs, k, criterion="maxclust")
            To = lkt.ops.fcluster_maxclust(torch.from_numpy(Zo), k).numpy()
            assert np.array_equal(Ts, To), (n, k)


@NATIVE
def test_fcluster_maxclust_matches_scipy():
    """Ward trees, centroid-linkage trees with inversions, ties, and a hand-made valid
    linkage whose subtree maxima are out of order (the cut then counts by a scan instead
    of bisection; this case fails if the scan is skipped)."""
    def same_cut(Z, ks, where):
        for k in ks:
            Ts = scipy_hierarchy.fcluster(Z, k, criterion="maxclust")
            To = lkt.ops.fcluster_maxclust(torch.from_numpy(Z), k).numpy()
            assert np.array_equal(Ts, To), (where, k)

    rng = np.random.default_rng()
    inversions = 0
    for trial in range(160):
        n = int(rng.integers(2, 120))
        if trial % 4 == 3:
            Z = scipy_hierarchy.linkage(rng.standard_normal((n, 3)), method="centroid")
            inversions += bool((np.diff(Z[:, 2]) < 0).any())
        else:
            A = rng.integers(0, 3, (n, n)).astype(float) if trial % 2 else rng.random((n, n))
            D = (A + A.T) / 2
            np.fill_diagonal(D, 0)
            Z = scipy_hierarchy.linkage(squareform(D, checks=False), method="ward")
        same_cut(Z, sorted({1, 2, 3, n // 2 or 1, n // 4 or 1, n - 1, n}), (trial, n))
    assert inversions >= 5
    # A valid linkage whose rows are not in height order (subtree maxima 5, 1, 6, 0.5, 7):
    # the cut must then scan rather than bisect.
    Z = np.array([[0, 1, 5.0, 2], [2, 3, 1.0, 2], [6, 7, 6.0, 4], [4, 5, 0.5, 2],
                  [8, 9, 7.0, 6]])
    same_cut(Z, range(1, 7), "out-of-order maxima")


@NATIVE
def test_fcluster_rejects_invalid_linkage():
    Z = torch.tensor([[0.0, 1.0, 0.5, 2.0], [0.0, 2.0, 0.7, 3.0]], dtype=torch.float64)  # node 0 twice
    with pytest.raises(RuntimeError, match="not a valid linkage"):
        lkt.ops.fcluster_maxclust(Z, 1)


# ---------------------------------------------------------------------------------------
# The op against the float64 reference.
LENGTHS = [0, 1, 2, 3, 5, 17, 40, 64, 129, 1, 250]


@pytest.mark.parametrize("pool_factor", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("protected", [0, 1, 3])
def test_op_vs_float64_reference(pool_factor, protected):
    seed = int(torch.randint(0, 2**31 - 1, ()))  # fresh inputs every run
    tokens, off = docs_packed(LENGTHS, 48, seed=seed, dtype=torch.float64)
    out, new_off = lk.token_pool(tokens, off, pool_factor, protected_tokens=protected)
    rows, off2 = lk.token_pool_labels(tokens, off, pool_factor, protected_tokens=protected)
    r_out, r_off = ref.token_pool_ref(tokens, off, pool_factor, protected)
    r_rows, _ = ref.token_pool_labels_ref(tokens, off, pool_factor, protected)
    assert torch.equal(new_off, r_off) and torch.equal(off2, r_off)
    assert torch.equal(rows, r_rows), f"seed {seed}"
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, r_out, rtol=0, atol=1e-12)
    # the contract, independently of the reference: sizes and kept rows
    for d in range(len(LENGTHS)):
        n_in = LENGTHS[d]
        p = min(protected, n_in)
        k = max((n_in - p) // pool_factor, 1)
        expect = n_in if k >= n_in - p else p + k
        assert int(new_off[d + 1] - new_off[d]) <= expect
        assert torch.equal(out[new_off[d]:new_off[d] + p], tokens[off[d]:off[d] + p])


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("normalize", [False, True])
def test_options_vs_reference(distance, normalize):
    seed = int(torch.randint(0, 2**31 - 1, ()))
    tokens, off = docs_packed([30, 77, 2, 150], 32, seed=seed, dtype=torch.float64)
    if distance == "euclidean":
        tokens = tokens * 1.7  # not unit length: the euclidean variant normalizes first
    out, new_off = lk.token_pool(tokens, off, 3, normalize=normalize, distance=distance)
    r_out, r_off = ref.token_pool_ref(tokens, off, 3, 1, normalize, distance)
    assert torch.equal(new_off, r_off)
    torch.testing.assert_close(out, r_out, rtol=0, atol=1e-12)
    if normalize:
        means = torch.cat([out[new_off[d] + 1:new_off[d + 1]] for d in range(4) if d != 2])
        torch.testing.assert_close(means.norm(dim=-1), torch.ones(means.shape[0], dtype=torch.float64))


def _rounding_robust(tokens, off, pool_factor):
    """Documents whose clustering is the same on float64 and on float32-rounded distances:
    on those, float32 implementations (ours, PyLate's torch.mm) cannot disagree by a tie."""
    keep = []
    for d in range(off.shape[0] - 1):
        x = tokens[off[d]:off[d + 1]]
        o = torch.tensor([0, x.shape[0]])
        a, _ = ref.token_pool_labels_ref(x.double(), o, pool_factor)
        b, _ = ref.token_pool_labels_ref(x.float(), o, pool_factor)
        keep.append(bool(torch.equal(a, b)))
    return keep


def test_float32_matches_reference_on_tie_free_documents():
    seed = int(torch.randint(0, 2**31 - 1, ()))
    lengths = [int(v) for v in torch.randint(2, 120, (40,))]
    tokens, off = docs_packed(lengths, 64, seed=seed)
    keep = _rounding_robust(tokens, off, 2)
    assert sum(keep) >= 0.8 * len(keep)  # the test compares most documents, not a few
    out, new_off = lk.token_pool(tokens, off, 2)
    r_out, r_off = ref.token_pool_ref(tokens, off, 2)
    for d, ok in enumerate(keep):
        if ok:
            a, b = out[new_off[d]:new_off[d + 1]], r_out[r_off[d]:r_off[d + 1]]
            assert a.shape == b.shape, (seed, d)
            torch.testing.assert_close(a, b, rtol=0, atol=2e-7)


def test_matches_pylate_pool_embeddings_hierarchical():
    pylate_colbert = pytest.importorskip("pylate.models.colbert", reason="pylate not installed (opt-in)")
    pool = pylate_colbert.ColBERT.pool_embeddings_hierarchical
    seed = int(torch.randint(0, 2**31 - 1, ()))
    lengths = [1, 2, 3] + [int(v) for v in torch.randint(4, 200, (40,))]
    tokens, off = docs_packed(lengths, 64, seed=seed)
    docs = split(tokens, off)
    keep = _rounding_robust(tokens, off, 2)
    for pf in (1, 2, 3, 4):
        theirs = pool(None, docs, pool_factor=pf, protected_tokens=1)
        ours = lk.token_pool_list(docs, pf, protected_tokens=1)
        for d, (a, b) in enumerate(zip(ours, theirs)):
            if pf != 2 or keep[d]:
                # same clusters, same rows, and the same bits: the means are PyLate's float32
                # token-order sums divided by the counts
                assert a.shape == b.shape, (seed, pf, d)
                assert torch.equal(a, b), (seed, pf, d)


# ---------------------------------------------------------------------------------------
# The list op: PyLate's layout read in place must give token_pool's answer on the packed list.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("options", [{}, {"normalize": True, "protected_tokens": 0},
                                     {"distance": "euclidean", "protected_tokens": 2}])
def test_list_op_equals_packed(dtype, options):
    seed = int(torch.randint(0, 2**31 - 1, ()))
    lengths = [0, 1, 2, 5] + [int(v) for v in torch.randint(3, 120, (20,))]
    tokens, off = docs_packed(lengths, 24, seed=seed, dtype=dtype)
    # documents as separate allocations, one of them a non-contiguous view
    docs = [d.clone() for d in split(tokens, off)]
    docs[7] = docs[7].t().contiguous().t()
    assert not docs[7].is_contiguous()
    want_t, want_o = lk.token_pool(tokens, off, 3, **options)
    got = lk.token_pool_list(docs, 3, **options)
    assert [g.shape[0] for g in got] == (want_o[1:] - want_o[:-1]).tolist()
    assert all(g.dtype == dtype for g in got)
    assert torch.equal(torch.cat(got), want_t), seed
    if lk.NATIVE_LOADED:  # the op itself, not the wrapper's fallback
        op_out = torch.ops.lateint_kernels.token_pool_list(
            docs, 3, options.get("protected_tokens", 1), options.get("normalize", False),
            options.get("distance", "cosine"))
        assert len(op_out) == len(docs)
        for g, w in zip(op_out, split(want_t, want_o)):
            assert g.shape == w.shape and torch.equal(g, w)
        # each document its own allocation (PyLate's layout), none aliasing an input
        ptrs = [g.untyped_storage().data_ptr() for g in op_out if g.numel()]
        assert len(set(ptrs)) == len(ptrs)
        assert not set(ptrs) & {d.untyped_storage().data_ptr() for d in docs if d.numel()}


def test_list_forced_reference_backend(monkeypatch):
    tokens, off = docs_packed([9, 30, 1], 16, seed=11, dtype=torch.float64)
    docs = split(tokens, off)
    a = lk.token_pool_list(docs, 2)
    monkeypatch.setenv("LATEINT_BACKEND", "reference")
    b = lk.token_pool_list(docs, 2)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


def _bad_list_cases():
    t, o = docs_packed([4, 6, 5], 8, seed=12)
    docs = split(t, o)
    nan = [d.clone() for d in docs]
    nan[2][3, 1] = float("nan")
    return [
        ([docs[0], docs[1][:, :5]], "(docs|documents)\\[1\\]"),
        ([docs[0], docs[1].double()], "(docs|documents)\\[1\\]"),
        ([docs[0], docs[1][None]], "(docs|documents)\\[1\\]"),
        ([docs[0].to(torch.int32)], "float32"),
        (nan, "NaN or Inf \\(in document 2\\)"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_list_bad_input(case):
    docs, match = _bad_list_cases()[case]
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        lk.token_pool_list(docs, 2)
    if lk.NATIVE_LOADED and docs[0].dim() == 2:
        with pytest.raises(RuntimeError, match=match if case != 3 else "float32"):
            torch.ops.lateint_kernels.token_pool_list(docs, 2, 1, False, "cosine")


def test_list_empty_and_bad_options():
    assert lk.token_pool_list([], 2) == []
    t, o = docs_packed([4, 6], 8, seed=13)
    with pytest.raises(ValueError, match="pool_factor"):
        lk.token_pool_list(split(t, o), 0)
    with pytest.raises(ValueError, match="distance"):
        lk.token_pool_list(split(t, o), 2, distance="dot")
    if lk.NATIVE_LOADED:
        # (the dispatcher itself refuses an empty tensor list before any kernel runs)
        with pytest.raises(RuntimeError, match="empty list of Tensors|at least one document"):
            torch.ops.lateint_kernels.token_pool_list([], 2, 1, False, "cosine")


# ---------------------------------------------------------------------------------------
# Edge cases
def test_pool_factor_one_is_identity():
    tokens, off = docs_packed([5, 0, 1, 33], 16, seed=1)
    out, new_off = lk.token_pool(tokens, off, 1)
    assert torch.equal(out, tokens) and torch.equal(new_off, off)


def test_short_documents():
    tokens, off = docs_packed([1, 2, 3, 4], 16, seed=2)
    out, new_off = lk.token_pool(tokens, off, 4, protected_tokens=1)
    # n after the protected token: 0, 1, 2, 3 -> max(n // 4, 1) = 1 cluster, kept as is when
    # that does not reduce it (PyLate's rule)
    assert (new_off[1:] - new_off[:-1]).tolist() == [1, 2, 2, 2]
    assert torch.equal(out[:3], tokens[:3])
    x = tokens[off[3]:off[4]]
    torch.testing.assert_close(out[new_off[3] + 1], x[1:].double().mean(0).float(), rtol=0, atol=1e-7)


def test_empty_corpus_and_empty_documents():
    out, new_off = lk.token_pool(torch.zeros(0, 8) + 1, torch.zeros(1, dtype=torch.int64), 2)
    assert out.shape == (0, 8) and new_off.tolist() == [0]
    tokens, off = docs_packed([0, 0, 6], 8, seed=3)
    out, new_off = lk.token_pool(tokens, off, 2, protected_tokens=0)
    assert new_off.tolist() == [0, 0, 0, 3]


def test_all_identical_tokens():
    v = torch.nn.functional.normalize(torch.randn(1, 32), dim=-1)
    tokens = v.repeat(41, 1)
    off = torch.tensor([0, 41])
    out, new_off = lk.token_pool(tokens, off, 2)
    assert 2 <= int(new_off[1]) <= 21
    torch.testing.assert_close(out, v.expand(out.shape[0], 32), rtol=0, atol=1e-6)
    r_out, r_off = ref.token_pool_ref(tokens, off, 2)
    assert torch.isfinite(out).all() and r_off[1] >= 2


def test_documents_short_of_their_target_among_others():
    """The CPU op writes each document at its target cluster count and moves rows down when
    scipy's maxclust gives fewer (ties: all-identical tokens); here such documents sit first,
    in the middle and last."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    g = torch.Generator().manual_seed(seed)
    lengths = [int(v) for v in torch.randint(64, 300, (60,), generator=g)]
    tokens, off = docs_packed(lengths, 128, seed=seed, dtype=torch.float64)
    docs = split(tokens, off)
    for i in (0, 27, len(docs) - 1):  # all-identical tokens: one cluster, not n // 2
        # a one-hot token: <a, a> = 1 exactly in any summation order, so every distance is
        # exactly 0 (a dense repeated token leaves +-1e-16 residues that depend on the order,
        # and the ties then break differently in the kernel and in torch's matmul)
        one_hot = torch.zeros(1, docs[i].shape[1], dtype=docs[i].dtype)
        one_hot[0, i % docs[i].shape[1]] = 1.0
        docs[i] = one_hot.repeat(docs[i].shape[0], 1)
    tokens = torch.cat(docs)
    out, new_off = lk.token_pool(tokens, off, 2)
    r_out, r_off = ref.token_pool_ref(tokens, off, 2)
    assert torch.equal(new_off, r_off), f"seed {seed}"
    assert int(r_off[1] - r_off[0]) < 1 + (lengths[0] - 1) // 2  # the tie case did come short
    torch.testing.assert_close(out, r_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(lk.token_pool_list(docs, 2), split(out, new_off), rtol=0, atol=0)


@NATIVE
def test_isa_paths_and_threads_bit_identical(isa):
    tokens, off = docs_packed([int(v) for v in torch.randint(1, 180, (25,))], 40, seed=4)
    lk.cpu_isa("best")
    base = lk.token_pool(tokens, off, 3)
    lk.cpu_isa(isa)
    got = lk.token_pool(tokens, off, 3)
    assert torch.equal(got[0], base[0]) and torch.equal(got[1], base[1])
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lk.token_pool(tokens, off, 3)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(one[0], base[0]) and torch.equal(one[1], base[1])


@NATIVE
@pytest.mark.parametrize("dim", [128, 40, 13])
def test_distance_kernels_bit_identical_across_isa_paths(dim):
    """The AVX-512 panel kernel (lower triangle in 8 x 32 / 8 x 16 tiles, mirrored through
    register transposes) and the portable tile kernel at the AVX2 and baseline levels: every
    entry written (the hook poisons with NaN) at every length around the 8 / 16 / 32 tile
    edges, both triangles, 1 - <a, b> to float32 rounding. The portable kernel's levels
    (no FMA: each product rounded before it is added) agree bit for bit with each other; the
    panel kernel (FMA) agrees with them to float32 rounding."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    g = torch.Generator().manual_seed(seed)
    lengths = list(range(1, 70)) + [95, 96, 97, 127, 128, 129, 182, 255, 256, 257, 300]
    try:
        for n in lengths:
            centres = torch.nn.functional.normalize(torch.randn(4, dim, generator=g), dim=-1)
            x = clustered(n, dim, generator=g, centres=centres, noise=0.5)
            out = {}
            for isa in ("best", "avx2", "scalar"):
                lk.cpu_isa(isa)
                out[isa] = lkt.ops.pool_distances(x, "cosine")
            best = out["best"]
            assert not torch.isnan(best).any(), (seed, n)
            assert torch.equal(out["avx2"], out["scalar"]), (seed, n)
            if lk.isa.cpu_best_isa() in ("avx512", "avx512bf16"):
                torch.testing.assert_close(out["avx2"], best, rtol=0, atol=dim * 1.2e-7)
            xd = x.double()
            want = 1.0 - xd @ xd.T
            eye = torch.eye(n, dtype=torch.bool)
            assert torch.isinf(best[eye]).all(), (seed, n)
            torch.testing.assert_close(best[~eye], want[~eye], rtol=0, atol=dim * 1.2e-7)
    finally:
        lk.cpu_isa("best")


@NATIVE
@pytest.mark.parametrize("dim", [128, 37])
def test_float64_gram_paths_bit_identical_across_isa_levels(dim):
    """The float64 Gram behind distance="euclidean" and float64 cosine inputs: the AVX2
    level's 4 x 8 register tiles and the baseline level's generic loop give the same bits
    (no FMA in either), at lengths around the 4 / 8 / 16 tile edges, with every entry
    written, and the distances match float64 formulas."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    g = torch.Generator().manual_seed(seed)
    if lk.cpu_isa("avx2") != "avx2":
        lk.cpu_isa("best")
        pytest.skip("this CPU has no AVX2 path")
    try:
        for n in list(range(1, 34)) + [63, 64, 65, 127, 128, 129, 200]:
            x = torch.randn(n, dim, generator=g) * 1.5
            out = {}
            for isa in ("avx2", "scalar"):
                lk.cpu_isa(isa)
                out[isa] = (lkt.ops.pool_distances(x, "euclidean"), lkt.ops.pool_distances(x.double(), "cosine"))
            for a, b in zip(out["avx2"], out["scalar"]):
                assert not torch.isnan(a).any() and torch.equal(a, b), (seed, n)
            xn = torch.nn.functional.normalize(x.double(), dim=-1)
            eye = torch.eye(n, dtype=torch.bool)
            want_eu = torch.cdist(xn, xn)
            want_cos = 1.0 - x.double() @ x.double().T
            torch.testing.assert_close(out["avx2"][0][~eye], want_eu[~eye], rtol=0, atol=1e-7)
            torch.testing.assert_close(out["avx2"][1][~eye], want_cos[~eye], rtol=0, atol=1e-12)
    finally:
        lk.cpu_isa("best")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_cluster_in_float32(dtype):
    tokens, off = docs_packed([20, 50, 3], 32, seed=5, dtype=dtype)
    out, new_off = lk.token_pool(tokens, off, 2)
    assert out.dtype == dtype
    r_out, r_off = ref.token_pool_ref(tokens.float(), off, 2)  # the same values, in float32
    keep = _rounding_robust(tokens.float(), off, 2)
    for d, ok in enumerate(keep):
        if ok:
            torch.testing.assert_close(out[new_off[d]:new_off[d + 1]].float(),
                                       r_out[r_off[d]:r_off[d + 1]].to(dtype).float())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_means_round_like_torch(dtype):
    """The cluster means of float16/bfloat16 rows: float32 sums in token order, / count,
    rounded to nearest even into the input type -- torch's own index_add_ and .to(dtype),
    bit for bit (many tiny components: float16 subnormals included)."""
    tokens, off = docs_packed(list(range(2, 300, 3)), 64, seed=int(torch.randint(0, 2**31 - 1, ())), dtype=dtype)
    rows, new_off = lk.token_pool_labels(tokens, off, 3)
    out, out_off = lk.token_pool(tokens, off, 3)
    assert torch.equal(out_off, new_off)
    n_out = int(new_off[-1])
    sums = torch.zeros(n_out, tokens.shape[1]).index_add_(0, rows, tokens.float())
    counts = torch.zeros(n_out).index_add_(0, rows, torch.ones(rows.shape[0]))
    want = (sums / counts[:, None]).to(dtype)
    assert torch.equal(out.view(torch.int16), want.view(torch.int16))
    if dtype == torch.float16:
        assert ((want.abs() < 6.1e-5) & (want != 0)).any()  # subnormal results were exercised


def test_forced_reference_backend(monkeypatch):
    tokens, off = docs_packed([9, 30], 16, seed=6, dtype=torch.float64)
    a = lk.token_pool(tokens, off, 2)
    monkeypatch.setenv("LATEINT_BACKEND", "reference")
    assert lk.backend_for("token_pool", "cpu") == "reference"
    b = lk.token_pool(tokens, off, 2)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-12)
    assert torch.equal(a[1], b[1])


# ---------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument, from the wrapper and from the op itself.
def _bad_cases():
    t, o = docs_packed([4, 6], 8, seed=7)
    nan = t.clone()
    nan[5, 2] = float("nan")
    return [
        ((t[None], o, 2), "doc_tokens"),
        ((t.to(torch.int32), o, 2), "doc_tokens"),
        ((t, o.to(torch.int32), 2), "doc_offsets"),
        ((t, torch.tensor([1, 4, 10]), 2), "doc_offsets"),
        ((t, torch.tensor([0, 6, 4]), 2), "doc_offsets"),
        ((t, torch.tensor([0, 4, 9]), 2), "doc_offsets"),
        ((nan, o, 2), "NaN"),
        ((t, o, 0), "pool_factor"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_bad_input_wrapper(case):
    args, match = _bad_cases()[case]
    # (on CPU the C++ op makes the data checks: RuntimeError, same message)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        lk.token_pool(*args)


@NATIVE
@pytest.mark.parametrize("case", range(8))
def test_bad_input_direct_op(case):
    args, match = _bad_cases()[case]
    if args[0].dim() == 2 and args[0].dtype == torch.int32:
        match = "float32"
    with pytest.raises(RuntimeError, match=match):
        torch.ops.lateint_kernels.token_pool(*args, 1, False, "cosine")


def test_bad_options():
    t, o = docs_packed([4, 6], 8, seed=8)
    with pytest.raises(ValueError, match="protected_tokens"):
        lk.token_pool(t, o, 2, protected_tokens=-1)
    with pytest.raises(ValueError, match="distance"):
        lk.token_pool(t, o, 2, distance="manhattan")
    with pytest.raises(ValueError, match="pool_factor"):
        lk.token_pool(t, o, 2.5)


# ---------------------------------------------------------------------------------------
# Registration: opcheck (fake kernel with a data-dependent size) and torch.compile.
def test_opcheck():
    t, o = docs_packed([7, 0, 12, 1], 16, seed=9)
    torch.library.opcheck(torch.ops.lateint_kernels.token_pool.default, (t, o, 2, 1, False, "cosine"))
    torch.library.opcheck(torch.ops.lateint_kernels.token_pool_labels.default, (t, o, 2, 1, "cosine"))
    torch.library.opcheck(torch.ops.lateint_kernels.token_pool_list.default,
                          (split(t, o), 2, 1, False, "cosine"))


def test_torch_compile():
    t, o = docs_packed([7, 3, 12], 16, seed=10)

    def f(t, o):
        pooled, off = lk.token_pool(t, o, 2)
        return pooled.sum(0), off

    got = torch.compile(f, backend="aot_eager")(t, o)
    want = f(t, o)
    torch.testing.assert_close(got[0], want[0])
    assert torch.equal(got[1], want[1])

    def g(a, b, c):
        return torch.stack([x.sum(0) for x in lk.token_pool_list([a, b, c], 2)])

    docs = split(t, o)
    torch.testing.assert_close(torch.compile(g, backend="aot_eager")(*docs), g(*docs))


@pytest.mark.parametrize("normalize", [False, True])
def test_cuda_path_logic(normalize):
    """The CUDA kernel registration (device clustering + host cut + device segment mean)
    against the CPU op; without a GPU it is driven with CPU tensors (Triton interpreted)."""
    from lateint_kernels.ops import pool as pooling

    tokens, off = docs_packed([1, 9, 40, 3, 0, 77], 32, seed=11)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    got, got_off = pooling._pool_cuda(tokens.to(dev), off.to(dev), 3, 2, normalize, "cosine")
    want, want_off = lk.token_pool(tokens, off, 3, protected_tokens=2, normalize=normalize)
    assert torch.equal(got_off.cpu(), want_off)
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------
# The Triton (GPU) path, under TRITON_INTERPRET=1 on CPU tensors when there is no GPU.
def _triton_pool():
    pytest.importorskip("triton")
    if not lk.NATIVE_LOADED:
        pytest.skip("native extension not built (the host cut is C++)")
    from lateint_kernels.triton import pool as tp
    return tp


def _dev():
    return "cuda" if torch.cuda.is_available() else "cpu"


def test_triton_distances():
    tp = _triton_pool()
    tokens, off = docs_packed([5, 20, 1, 33, 0, 2], 24, seed=12)
    ds = tp.pool_distances_triton(tokens.to(_dev()), off.to(_dev()), 1, 0, 6, 64).cpu()
    for d in range(6):
        x = tokens[off[d] + 1:off[d + 1]].double()
        n = x.shape[0]
        want = 1 - x @ x.T
        want.fill_diagonal_(float("inf"))
        torch.testing.assert_close(ds[d, :n, :n], want, rtol=0, atol=3e-7)
        assert torch.isinf(ds[d, n:, :]).all() and torch.isinf(ds[d, :, n:]).all()


def test_triton_ward_chain_bit_exact_vs_scipy():
    tp = _triton_pool()
    rng = np.random.default_rng()
    NP = 64
    for trial in range(6):
        n = int(rng.integers(2, 48))
        A = rng.integers(0, 3, (n, n)).astype(float) if trial % 2 else rng.random((n, n))
        D = (A + A.T) / 2
        np.fill_diagonal(D, np.inf)
        ds = torch.full((1, NP, NP), float("inf"), dtype=torch.float64)
        ds[0, :n, :n] = torch.from_numpy(D)
        o = torch.tensor([0, n])
        mx = torch.full((1, NP - 1), -1, dtype=torch.int32)
        my, md = mx.clone(), torch.full((1, NP - 1), float("nan"), dtype=torch.float64)
        dev = _dev()
        mx, my, md, o_d = mx.to(dev), my.to(dev), md.to(dev), o.to(dev)
        tp.ward_chain_triton(ds.to(dev), o_d, 0, 1, 0, mx, my, md, force=True)
        mx, my, md = mx.cpu(), my.cpu(), md.cpu()
        np.fill_diagonal(D, 0)
        Z = scipy_hierarchy.linkage(squareform(D, checks=False), method="ward")
        # the merge heights, bit for bit, and the cut built from the device's merge list
        assert np.array_equal(np.sort(md[0, :n - 1].numpy(), kind="mergesort"), Z[:, 2]), trial
        pf = 3
        rows, _ = torch.ops.lateint_kernels._token_pool_finish(mx, my, md, o, pf, 0)
        want = scipy_hierarchy.fcluster(Z, max(n // pf, 1), criterion="maxclust") - 1
        if max(n // pf, 1) < n:
            assert np.array_equal(rows.numpy(), want), trial


def test_triton_labels_end_to_end():
    tp = _triton_pool()
    tokens, off = docs_packed([1, 2, 9, 30, 0, 45, 17], 32, seed=int(torch.randint(0, 2**31 - 1, ())))
    keep = _rounding_robust(tokens, off, 2)
    rows, new_off = tp.token_pool_labels_triton(tokens.to(_dev()), off.to(_dev()), 2, 1, "cosine")
    want_rows, want_off = lk.token_pool_labels(tokens, off, 2)
    rows, new_off = rows.cpu(), new_off.cpu()
    assert torch.equal(new_off, want_off) or not all(keep)
    for d, ok in enumerate(keep):
        if ok:
            assert torch.equal(rows[off[d]:off[d + 1]] - new_off[d], want_rows[off[d]:off[d + 1]] - want_off[d]), d


def test_finish_rejects_bad_merge_lists():
    if not lk.NATIVE_LOADED:
        pytest.skip("native extension not built")
    mx = torch.tensor([[0, 5]], dtype=torch.int32)  # slot 5 of a 3-token document
    my = torch.tensor([[1, 6]], dtype=torch.int32)
    md = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="does not hold n - 1 merges"):
        torch.ops.lateint_kernels._token_pool_finish(mx, my, md, torch.tensor([0, 3]), 2, 0)


_COMPILE_SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lateint_kernels.triton import pool as tp
arch = int(sys.argv[1])
# Launch fails (OutOfResources) past the opt-in shared memory per block: 163 KB on sm_80,
# 227 KB on sm_90. Compiling does not check it, so the test does.
smem_max = {80: 166912, 90: 232448}[arch]
sig = {"DS": "*fp64", "OFF": "*i64", "MX": "*i32", "MY": "*i32", "MD": "*fp64", "doc0": "i32",
       "protect": "i32", "pool_factor": "i32", "W": "i32", "FORCE": "constexpr", "NP": "constexpr"}
for NP in (16, 512, int(sys.argv[2])):
    try:
        chain = triton.compile(ASTSource(fn=tp._ward_chain_kernel, signature=sig,
                                         constexprs={"FORCE": False, "NP": NP}),
                               target=GPUTarget("cuda", arch, 32), options={"enable_fp_fusion": False})
    except (RuntimeError, FileNotFoundError, OSError) as e:
        print("NO-PTXAS", e)
        sys.exit(0)
    ptx = chain.asm["ptx"]
    assert "cubin" in chain.asm
    assert "sqrt.rn.f64" in ptx and "div.rn.f64" in ptx and "fma.rn.f64" not in ptx, "chain arithmetic"
    assert chain.metadata.shared <= smem_max, ("chain", NP, chain.metadata.shared)
sig = {"X": "*fp32", "OFF": "*i64", "DS": "*fp64", "doc0": "i32", "protect": "i32", "dim": "i32",
       "NP": "i32", "BLOCK_R": "constexpr", "BLOCK_C": "constexpr", "BLOCK_D": "constexpr"}
for block_c in (16, 128):
    dist = triton.compile(ASTSource(fn=tp._pool_dist_kernel, signature=sig,
                                    constexprs={"BLOCK_R": 16, "BLOCK_C": block_c, "BLOCK_D": 64}),
                          target=GPUTarget("cuda", arch, 32))
    assert "cubin" in dist.asm
    assert dist.metadata.shared <= smem_max, ("distances", block_c, dist.metadata.shared)
print("COMPILED")
"""


@pytest.mark.parametrize("arch", [80, 90])
def test_triton_kernels_compile_for_gpu(arch):
    """Compiles both Triton kernels to a cubin for sm_80 / sm_90 (Triton's bundled ptxas; no
    GPU needed; outside the interpreter, hence a subprocess) and checks the chain's PTX keeps
    scipy's arithmetic: correctly rounded float64 division and square root, no contracted
    multiply-add."""
    _triton_pool()
    from _gpu_compile import compile_for_gpu
    from lateint_kernels.triton.pool import _MAX_NP

    assert "COMPILED" in compile_for_gpu(_COMPILE_SCRIPT, arch, _MAX_NP)
