"""token_pool's variants ("sentence-transformers", "colpali") against their formulas written
out here on torch + scipy (the libraries themselves: tests/adapters/, in the adapters'
environment), the reference backend, every CPU ISA path, fractional pool factors, the
cascade order of colpali-engine's means, and bad input."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lateint_kernels as lk
import lateint_kernels.testing  # noqa: F401  (registers the testing ops)

from test_pool import docs_packed, split

scipy_hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
from scipy.spatial.distance import pdist, squareform  # noqa: E402

pytestmark = pytest.mark.skipif(not lk.NATIVE_LOADED, reason="native extension not built")


def st_formula(doc, pool_factor, protected=1, normalize=True):
    """sentence-transformers 6's HierarchicalTokenPooling on one document, step by step:
    clamped float32 cosine distances, scipy Ward + maxclust, dense labels, scatter_add
    means in the input dtype, every row L2-normalized (in float32 for half inputs)."""
    prot, rest = doc[:protected], doc[protected:]
    n = rest.shape[0]
    k = max(int(n // pool_factor), 1)
    out = doc
    if k < n:
        xf = rest.float()
        dist = (1 - xf @ xf.T).clamp_(0, 2).numpy()
        z = scipy_hierarchy.linkage(squareform(dist, checks=False), method="ward")
        labels = torch.from_numpy(scipy_hierarchy.fcluster(z, t=k, criterion="maxclust").astype(np.int64) - 1)
        uniq, inv = torch.unique(labels, return_inverse=True)
        sums = torch.zeros(uniq.numel(), rest.shape[1], dtype=rest.dtype)
        cnt = torch.zeros(uniq.numel(), dtype=torch.long)
        sums.scatter_add_(0, inv[:, None].expand_as(rest), rest)
        cnt.scatter_add_(0, inv, torch.ones(n, dtype=torch.long))
        out = torch.cat([prot, sums / cnt[:, None]])
    if not normalize:
        return out
    if out.dtype in (torch.float16, torch.bfloat16):
        return F.normalize(out.float(), dim=-1).to(out.dtype)
    return F.normalize(out, dim=-1)


def colpali_formula(doc, pool_factor):
    """colpali-engine's HierarchicalTokenPooler on one document: Ward on the rows of the
    float32 cosine distance matrix (scipy linkage of the matrix as observations), one
    normalized float32 mean per non-empty cluster, cast back."""
    if pool_factor == 1:
        return doc
    x = doc.float()
    m = (1 - x @ x.T).numpy()
    z = scipy_hierarchy.linkage(pdist(m, "euclidean"), method="ward")
    k = max(x.shape[0] // pool_factor, 1)
    labels = scipy_hierarchy.fcluster(z, t=k, criterion="maxclust") - 1
    rows = []
    for c in range(k):
        idx = torch.where(torch.tensor(labels == c))
        if idx[0].numel():
            rows.append(F.normalize(x[idx].mean(dim=0), p=2, dim=-1))
    return torch.stack(rows).to(doc.dtype)


@pytest.mark.parametrize("pool_factor", [2, 3, 1.5, 2.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_sentence_transformers_variant_bit_identical_to_formula(pool_factor, seed):
    lens = [1, 2, 3, 5, 17, 40, 96, 150]
    tokens, off = docs_packed(lens, 48, seed=seed)
    got, got_off = lk.token_pool(tokens, off, pool_factor, variant="sentence-transformers")
    want = [st_formula(d, pool_factor) for d in split(tokens, off)]
    assert (got_off[1:] - got_off[:-1]).tolist() == [w.shape[0] for w in want]
    for a, b in zip(split(got, got_off), want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("protected", [0, 1, 3])
def test_sentence_transformers_variant_options(normalize, protected):
    tokens, off = docs_packed([2, 9, 33, 70], 32, seed=3)
    got = lk.token_pool_list(split(tokens, off), 2, variant="sentence-transformers", normalize=normalize,
                             protected_tokens=protected)
    for a, d in zip(got, split(tokens, off)):
        assert torch.equal(a, st_formula(d, 2, protected, normalize))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("dim", [7, 130])
def test_sentence_transformers_list_rows_normalized_as_torch(dtype, dim):
    """Every output row (protected, pooled, and documents left as they are) as their
    formula gives it in every dtype: half-type sums rounded to the dtype before the division
    (their scatter_add into a half tensor), every row normalized by F.normalize (in float32
    for half types), for dims with a tail past torch's vector width."""
    tokens, off = docs_packed([1, 4, 60, 200, 333], dim, seed=dim, dtype=dtype)
    docs = split(tokens, off)
    got = lk.token_pool_list(docs, 2.5, variant="sentence-transformers")
    packed, packed_off = lk.token_pool(tokens, off, 2.5, variant="sentence-transformers")
    raw = lk.token_pool_list(docs, 2.5, variant="sentence-transformers", normalize=False)
    for a, b, r, d in zip(got, split(packed, packed_off), raw, docs):
        want = st_formula(d, 2.5)
        assert a.dtype == dtype and torch.equal(a, want) and torch.equal(b, want)
        assert torch.equal(r, st_formula(d, 2.5, normalize=False))


@pytest.mark.parametrize("level", ["scalar", "avx2", "avx512"])
def test_kernel_row_norm_is_torch_normalize(level):
    """The row normalization the variants end with, on rows of varied scales and dims on
    both sides of torch's vector width: bit for bit torch.nn.functional.normalize, whether
    the kernel's own summation served the dim or torch's ops did."""
    import lateint_kernels.testing as lkt

    if lk.cpu_isa(level) != level:
        lk.cpu_isa("best")
        pytest.skip(f"this CPU has no {level} path")
    try:
        g = torch.Generator().manual_seed(1234)
        own = {}
        for dim in (1, 3, 7, 8, 9, 16, 17, 33, 48, 100, 128, 130, 384, 768):
            scale = torch.pow(2.0, torch.randint(-8, 9, (3000, 1), generator=g).float())
            x = torch.randn(3000, dim, generator=g) * scale
            x[::7] = F.normalize(x[::7], dim=-1)  # unit rows, as pooled means of unit tokens nearly are
            x[5] = 0.0  # a zero row: the 1e-12 floor
            out, own[dim] = lkt.ops.l2_rows(x)
            assert torch.equal(out, F.normalize(x, dim=-1)), (dim, own[dim])
    finally:
        lk.cpu_isa("best")
    print("dims served by the kernel's own summation:", [d for d, o in own.items() if o])


_CAPABILITY_CHECK = """
import torch, torch.nn.functional as F
import lateint_kernels as lk
g = torch.Generator().manual_seed(3)
bad = []
for dim in (48, 100, 120, 128):
    x = F.normalize(torch.randn(200, dim, generator=g), dim=-1)
    off = torch.tensor([0, 200])
    rows, _ = lk.token_pool_labels(x, off, 8, variant="colpali")
    got, _ = lk.token_pool(x, off, 8, variant="colpali")
    for r in range(got.shape[0]):
        if not torch.equal(got[r], F.normalize(x[rows == r].mean(0), dim=-1)):
            bad.append((dim, r))
print(torch.backends.cpu.get_cpu_capability(), "differ:", bad)
assert not bad
"""


@pytest.mark.parametrize("capability", [None, "avx2", "default"])
def test_colpali_means_follow_the_capability_torch_dispatched(capability):
    """torch picks its kernels by CPU capability (ATEN_CPU_CAPABILITY overrides it); its dim-0
    sum need not run at that capability's vector width (on AVX-512 CPUs it runs 8 wide).
    Under each capability this CPU offers, a fresh process's colpali means are torch's."""
    import subprocess
    import sys

    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    r = subprocess.run([sys.executable, "-c", _CAPABILITY_CHECK], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]


@pytest.mark.parametrize("pool_factor", [2, 3, 4])
@pytest.mark.parametrize("dim", [3, 64, 130])
def test_colpali_variant_bit_identical_to_formula(pool_factor, dim):
    lens = [2, 3, 8, 41, 120]
    tokens, off = docs_packed(lens, dim, seed=dim + pool_factor)
    got, got_off = lk.token_pool(tokens, off, pool_factor, variant="colpali")
    for a, d in zip(split(got, got_off), split(tokens, off)):
        assert torch.equal(a, colpali_formula(d, pool_factor))


@pytest.mark.parametrize("dim", [100, 120])
def test_colpali_means_follow_torch_sum_order_on_large_clusters(dim):
    """Clusters of 16 to ~200 rows (where torch's cascaded sum departs from a running sum;
    below the 32,768 values past which torch may split a sum over threads), dims with blocks
    of four vectors, single vectors (at 8 and at 16 floats per vector) and leftover columns,
    each summed in its own order: the kernel's means are torch's `rows.mean(0)` bit for bit."""
    tokens, off = docs_packed([500], dim, seed=11, n_topics=3, noise=0.3)
    rows, new_off = lk.token_pool_labels(tokens, off, 50, variant="colpali")
    sizes = torch.bincount(rows)
    assert int(sizes.max()) > 64 and int((sizes > 16).sum()) >= 3  # the cascade's levels are exercised
    got, got_off = lk.token_pool(tokens, off, 50, variant="colpali")
    assert torch.equal(got_off, new_off)
    running = torch.zeros_like(got)
    for r in range(got.shape[0]):
        members = tokens[rows == r]
        want = F.normalize(members.mean(dim=0), p=2, dim=-1)
        assert torch.equal(got[r], want), r
        acc = torch.zeros(tokens.shape[1])
        for t in members:
            acc = acc + t
        running[r] = F.normalize(acc / members.shape[0], p=2, dim=-1)
    assert not torch.equal(running, got)  # a running sum would have given other bits


@pytest.mark.parametrize("variant", ["sentence-transformers", "colpali"])
def test_variants_agree_across_isa_paths_and_with_reference(variant, monkeypatch):
    tokens, off = docs_packed([5, 30, 64, 100], 40, seed=21)
    outs = []
    for level in ("scalar", "avx2", "avx512"):
        if lk.cpu_isa(level) != level:
            continue
        outs.append(lk.token_pool(tokens, off, 3, variant=variant))
    lk.cpu_isa("best")
    for a, b in outs[1:]:
        assert torch.equal(a, outs[0][0]) and torch.equal(b, outs[0][1])
    monkeypatch.setenv("LATEINT_BACKEND", "reference")
    r, r_off = lk.token_pool(tokens, off, 3, variant=variant)
    assert torch.equal(r_off, outs[0][1])
    torch.testing.assert_close(r, outs[0][0], rtol=0, atol=2e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_colpali_variant_other_dtypes(dtype):
    tokens, off = docs_packed([6, 50], 32, seed=4, dtype=dtype)
    got, got_off = lk.token_pool(tokens, off, 2, variant="colpali")
    assert got.dtype == dtype
    for a, d in zip(split(got, got_off), split(tokens, off)):
        assert torch.equal(a, colpali_formula(d, 2))


def test_fractional_pool_factor_counts_match_python_floor_division():
    lens = list(range(2, 80))
    tokens, off = docs_packed(lens, 16, seed=5)
    for pf in (1.1, 1.5, 2.5, 3.7, 7.0, 1.0):
        _, new_off = lk.token_pool_labels(tokens, off, pf, variant="sentence-transformers", protected_tokens=0)
        want = [n if max(int(n // pf), 1) >= n else max(int(n // pf), 1) for n in lens]
        assert (new_off[1:] - new_off[:-1]).tolist() == want, pf


def test_row_distances_match_scipy_pdist_of_the_cosine_matrix():
    tokens, off = docs_packed([70], 64, seed=8)
    d = torch.ops.lateint_testing.pool_distances(tokens, "cosine", "colpali")
    x = tokens.float()
    want = squareform(pdist((1 - x @ x.T).numpy(), "euclidean"))
    off_diag = ~torch.eye(70, dtype=torch.bool)
    torch.testing.assert_close(d[off_diag], torch.from_numpy(want)[off_diag], rtol=1e-6, atol=1e-6)
    clamped = torch.ops.lateint_testing.pool_distances(tokens, "cosine", "sentence-transformers")[off_diag]
    assert bool((clamped >= 0).all() and (clamped <= 2).all())


def test_clamped_distance_handles_duplicate_tokens():
    """A token repeated a hair longer gives 1 - <a, a'> below 0 in float32: sentence-
    transformers clamps it to 0 and pools; so does the variant."""
    tokens, _ = docs_packed([15], 32, seed=9)
    tokens = torch.cat([tokens, tokens[4:5] * (1 + 2e-6)])
    off = torch.tensor([0, 16])
    raw = torch.ops.lateint_testing.pool_distances(tokens[1:], "cosine")
    assert float(raw[3, 14]) < 0  # the pair PyLate's distance makes negative
    clamped = torch.ops.lateint_testing.pool_distances(tokens[1:], "cosine", "sentence-transformers")
    assert float(clamped[3, 14]) == 0.0
    got, got_off = lk.token_pool(tokens, off, 2, variant="sentence-transformers")
    assert torch.equal(got, st_formula(tokens, 2))


@pytest.mark.parametrize("kwargs, match", [
    (dict(variant="spacy"), "variant"),
    (dict(variant="colpali", protected_tokens=1), "protected_tokens"),
    (dict(variant="colpali", normalize=False), "normalize"),
    (dict(variant="sentence-transformers", distance="euclidean"), "distance"),
])
def test_bad_variant_options(kwargs, match):
    tokens, off = docs_packed([5, 9], 8, seed=1)
    with pytest.raises(ValueError, match=match):
        lk.token_pool(tokens, off, 2, **kwargs)


def test_bad_pool_factors():
    tokens, off = docs_packed([5, 9], 8, seed=1)
    for pf in (0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="pool_factor"):
            lk.token_pool(tokens, off, pf, variant="sentence-transformers")
    with pytest.raises(ValueError, match="pool_factor.*integer"):
        lk.token_pool(tokens, off, 1.5, variant="colpali")
    with pytest.raises(ValueError, match="pool_factor.*integer"):
        lk.token_pool(tokens, off, 1.5)


def test_colpali_refuses_one_token_documents_by_index():
    tokens, off = docs_packed([5, 1, 9], 8, seed=1)
    with pytest.raises(ValueError, match="document 1 has fewer than 2 tokens"):
        lk.token_pool(tokens, off, 2, variant="colpali")
    same, same_off = lk.token_pool(tokens, off, 1, variant="colpali")  # pool_factor 1: returned as is
    assert torch.equal(same, tokens) and torch.equal(same_off, off)


def test_op_refuses_unknown_variant_itself():
    tokens, off = docs_packed([5, 9], 8, seed=1)
    with pytest.raises(RuntimeError, match="variant"):
        torch.ops.lateint_kernels.token_pool(tokens, off, 2.0, 1, False, "cosine", "bogus")
    with pytest.raises(RuntimeError, match="pool_factor"):
        torch.ops.lateint_kernels.token_pool(tokens, off, float("nan"), 1, False, "cosine", "pylate")


def test_opcheck_with_variants():
    tokens, off = docs_packed([7, 20], 16, seed=2)
    for v in ("sentence-transformers", "colpali"):
        torch.library.opcheck(torch.ops.lateint_kernels.token_pool.default, (tokens, off, 2.5 if v[0] == "s" else 2.0,
                                                                             0, False, "cosine", v))
