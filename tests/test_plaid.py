"""PLAID centroid interaction ops against their references: ivf_candidates (exact sets,
tie-breaking, masks), approx_scores (float64 reference, pruning, -1 candidates) and
decompress_maxsim (float64 reference, bit-identical to the unfused path), bad input, opcheck."""
import pytest
import torch

import lateint_kernels as lk
from lateint_kernels import reference as ref

from _data import clustered


def laid_out(scores, layout):
    """The same scores [nq, lq, k] token-major (contiguous), code-major per query (storage
    [nq, k, lq]) or code-major with the queries interleaved (storage [k, nq, lq]), the two
    layouts centroid_scores returns on the CPU: the CPU kernels read token-major and
    code-major scores by different paths."""
    if layout == "token":
        return scores.contiguous()
    if layout == "code":
        return scores.transpose(1, 2).contiguous().transpose(1, 2)
    return scores.permute(2, 0, 1).contiguous().permute(1, 2, 0)


def problem(nq=3, lq=8, k=50, nd=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    dim = 32
    centres = torch.nn.functional.normalize(torch.randn(12, dim, generator=g), dim=-1)
    c = clustered(k, dim, generator=g, centres=centres)
    lens = torch.randint(0, 30, (nd,), generator=g)
    off = torch.zeros(nd + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lens, 0)
    tokens = clustered(int(off[-1]), dim, generator=g, centres=centres)
    codes = lk.kmeans_assign(tokens, c)
    q = clustered(nq * lq, dim, generator=g, centres=centres).reshape(nq, lq, dim)
    scores = lk.centroid_scores(q, c)
    # IVF: centroid -> sorted unique documents holding one of its tokens
    doc_of = torch.repeat_interleave(torch.arange(nd), lens)
    pairs = torch.unique(torch.stack([codes.long(), doc_of], 1), dim=0)
    ivf_docs = pairs[:, 1].contiguous()
    ivf_off = torch.zeros(k + 1, dtype=torch.int64)
    ivf_off[1:] = torch.cumsum(torch.bincount(pairs[:, 0], minlength=k), 0)
    mask = torch.rand(nq, lq, generator=g) > 0.2
    return scores, mask, codes, off, ivf_off, ivf_docs, nd


@pytest.mark.parametrize("layout", ["token", "code", "interleaved"])
@pytest.mark.parametrize("ncells", [1, 2, 4, 100])
@pytest.mark.parametrize("masked", [False, True])
def test_ivf_candidates(ncells, masked, layout):
    scores, mask, codes, off, ivf_off, ivf_docs, nd = problem(seed=int(torch.randint(0, 2**31 - 1, ())))
    scores = laid_out(scores, layout)
    m = mask if masked else None
    got = lk.ivf_candidates(scores, ivf_off, ivf_docs, nd, ncells, query_mask=m)
    want = ref.ivf_candidates_ref(scores, m, ivf_off, ivf_docs, nd, ncells)
    assert torch.equal(got, want)
    if ncells >= scores.shape[2]:  # every centroid: every document that has a token
        assert set(got[0][got[0] >= 0].tolist()) == set(torch.unique(ivf_docs).tolist())


@pytest.mark.parametrize("layout", ["token", "code", "interleaved"])
@pytest.mark.parametrize("isa", ["scalar", "avx2", "best"])
@pytest.mark.parametrize("ncells", [1, 3, 16, 17])
def test_ivf_candidates_many_ties_both_scans(isa, ncells, layout):
    """Token-major scores: a token's best cells are found 16 scores at a time with AVX-512
    (a block that cannot beat the current m-th best is skipped), one by one otherwise.
    Code-major: one pass over the rows for every token, a row that beats no token's m-th
    best skipped (ncells > 16: each token's column gathered and sorted). All must pick the
    reference's cells when scores tie massively (rounded to 0.1) and k is off a multiple of 16."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    nq, lq, k, nd = 4, 9, 1000 + int(torch.randint(1, 16, (), generator=g)), 300
    scores = laid_out((torch.randn(nq, lq, k, generator=g) * 3).round() / 10, layout)
    codes = torch.randint(0, k, (5000,), generator=g, dtype=torch.int32)
    doc_of = torch.randint(0, nd, (5000,), generator=g).sort().values
    pairs = torch.unique(torch.stack([codes.long(), doc_of], 1), dim=0)
    ivf_docs = pairs[:, 1].contiguous()
    ivf_off = torch.zeros(k + 1, dtype=torch.int64)
    ivf_off[1:] = torch.cumsum(torch.bincount(pairs[:, 0], minlength=k), 0)
    mask = torch.rand(nq, lq, generator=g) > 0.2
    before = lk.cpu_isa()
    try:
        lk.cpu_isa(isa)
        got = lk.ivf_candidates(scores, ivf_off, ivf_docs, nd, ncells, query_mask=mask)
    finally:
        lk.cpu_isa(before)
    assert torch.equal(got, ref.ivf_candidates_ref(scores, mask, ivf_off, ivf_docs, nd, ncells))


def test_ivf_ties_go_to_the_lower_centroid():
    scores = torch.zeros(1, 1, 4)
    scores[0, 0, 1] = scores[0, 0, 3] = 1.0  # tie for the best cell
    ivf_off = torch.tensor([0, 1, 2, 3, 4])
    ivf_docs = torch.tensor([0, 1, 2, 3])
    assert lk.ivf_candidates(scores, ivf_off, ivf_docs, 4, 1).tolist() == [[1]]


@pytest.mark.parametrize("layout", ["token", "code", "interleaved"])
@pytest.mark.parametrize("threshold", [float("-inf"), 0.3, 0.6, 2.0])
@pytest.mark.parametrize("masked", [False, True])
def test_approx_scores(threshold, masked, layout):
    scores, mask, codes, off, ivf_off, ivf_docs, nd = problem(seed=int(torch.randint(0, 2**31 - 1, ())))
    scores = laid_out(scores, layout)
    m = mask if masked else None
    cand = lk.ivf_candidates(scores, ivf_off, ivf_docs, nd, 3, query_mask=m)
    cand = torch.cat([cand, torch.full((cand.shape[0], 2), -1), torch.zeros(cand.shape[0], 1, dtype=torch.int64)], 1)
    got = lk.approx_scores(scores, codes, off, cand, threshold=threshold, query_mask=m)
    want = ref.approx_scores_ref(scores, m, codes, off, cand, threshold)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    assert torch.isneginf(got[cand < 0]).all()


@pytest.mark.parametrize("layout", ["token", "code", "interleaved"])
@pytest.mark.parametrize("threshold", [float("-inf"), 0.3])
def test_approx_scores_many_centroids_and_queries(threshold, layout):
    """Large k: the per-query table is built in blocks of 2,048 centroids (k = 4,133 ends
    in a partial block and a partial 64-wide tile), and the queries go in chunks bounded
    to ~16 MB of tables (lq = 64: 15 queries per chunk, so 17 queries take two chunks);
    code-major scores are pruned in blocks of 2,048 rows."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    nq, lq, k, nd = 17, 64, 4133, 300
    scores = laid_out((torch.randn(nq, lq, k, generator=g) * 0.3).float(), layout)
    mask = torch.rand(nq, lq, generator=g) > 0.3
    mask[3] = False  # a query with every token masked
    lens = torch.randint(0, 40, (nd,), generator=g)
    off = torch.zeros(nd + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lens, 0)
    codes = torch.randint(0, k, (int(off[-1]),), generator=g, dtype=torch.int32)
    cand = torch.randint(-1, nd, (nq, 90), generator=g)
    got = lk.approx_scores(scores, codes, off, cand, threshold=threshold, query_mask=mask)
    want = ref.approx_scores_ref(scores, mask, codes, off, cand, threshold)
    # sums of up to 64 float32 maxima of size ~1: float32 summation error, not more
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)
    assert (got[3][cand[3] >= 0] == 0).all()


@pytest.mark.parametrize("lq", [5, 16, 32, 40])
def test_approx_scores_register_transpose_is_bit_identical(lq):
    """With AVX-512 the table is built 16 centroids x 16 query tokens at a time (transposed
    in registers, rows padded to 16 with -inf); cpu_isa "avx2" builds it element by element.
    Same scores bit for bit, with masks, pruning and k off a multiple of 16."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    nq, k, nd = 3, 1000 + int(torch.randint(0, 16, (), generator=g)), 120
    scores = (torch.randn(nq, lq, k, generator=g) * 0.3).float()
    mask = torch.rand(nq, lq, generator=g) > 0.25
    lens = torch.randint(0, 40, (nd,), generator=g)
    off = torch.zeros(nd + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lens, 0)
    codes = torch.randint(0, k, (int(off[-1]),), generator=g, dtype=torch.int32)
    cand = torch.randint(-1, nd, (nq, 50), generator=g)
    before = lk.cpu_isa()
    try:
        got = {}
        for isa in ("avx2", "best"):
            lk.cpu_isa(isa)
            got[isa] = [lk.approx_scores(scores, codes, off, cand, threshold=t, query_mask=m)
                        for t in (float("-inf"), 0.5) for m in (None, mask)]
    finally:
        lk.cpu_isa(before)
    for a, b in zip(got["avx2"], got["best"]):
        assert torch.equal(a, b)
    want = ref.approx_scores_ref(scores, mask, codes, off, cand, 0.5)
    torch.testing.assert_close(got["best"][3].double(), want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("layout", ["code", "interleaved"])
@pytest.mark.parametrize("lq", [5, 8, 32, 40])
@pytest.mark.parametrize("isa", ["scalar", "best"])
def test_approx_scores_code_major_is_bit_identical_to_the_table(lq, isa, layout):
    """Code-major scores are read in place (pruned centroids read a -inf row, or, when
    fewer than 1 in 16 survive, are skipped by a branch); token-major ones go through the
    transposed table. Same scores bit for bit, with masks (a query fully masked), pruning
    from none to nearly all, validate on and off, and lq off a multiple of 8."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    nq, k, nd = 4, 700 + int(torch.randint(0, 16, (), generator=g)), 120
    scores = (torch.randn(nq, lq, k, generator=g) * 0.3).float()
    mask = torch.rand(nq, lq, generator=g) > 0.25
    mask[2] = False
    lens = torch.randint(0, 40, (nd,), generator=g)
    off = torch.zeros(nd + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lens, 0)
    codes = torch.randint(0, k, (int(off[-1]),), generator=g, dtype=torch.int32)
    cand = torch.randint(-1, nd, (nq, 50), generator=g)
    cm = laid_out(scores, layout)
    kept = scores.amax(1).ge(0.9).float().mean().item()
    assert 0 < kept < 1 / 16  # the threshold 0.9 takes the sparse path
    before = lk.cpu_isa()
    try:
        lk.cpu_isa(isa)
        for t in (float("-inf"), 0.0, 0.5, 0.9, 9.0):
            for m in (None, mask):
                for validate in (True, False):
                    want = lk.approx_scores(scores, codes, off, cand, threshold=t, query_mask=m, validate=validate)
                    got = lk.approx_scores(cm, codes, off, cand, threshold=t, query_mask=m, validate=validate)
                    assert torch.equal(got, want), (t, m is None, validate)
    finally:
        lk.cpu_isa(before)
    torch.testing.assert_close(got.double(), ref.approx_scores_ref(scores, mask, codes, off, cand, 9.0),
                               rtol=0, atol=0)


@pytest.mark.parametrize("threshold", [float("-inf"), 0.5])
def test_approx_scores_code_major_refuses_nan_in_unmasked_tokens(threshold):
    scores, mask, codes, off, ivf_off, ivf_docs, nd = problem()
    scores = laid_out(scores, "code")
    mask[1, 2], mask[1, 3] = False, True
    cand = torch.zeros(3, 1, dtype=torch.int64)
    masked_nan = scores.clone()
    masked_nan[1, 2, 7] = float("nan")  # in a masked token: not read
    assert not masked_nan.is_contiguous() and masked_nan.stride(1) == 1
    lk.approx_scores(masked_nan, codes, off, cand, threshold=threshold, query_mask=mask)
    bad = scores.clone()
    bad[1, 3, 7] = float("nan")
    with pytest.raises(RuntimeError, match="scores"):
        lk.approx_scores(bad, codes, off, cand, threshold=threshold, query_mask=mask)


@pytest.mark.parametrize("one_matmul", [True, False])
def test_centroid_scores_layout_blocks_and_workspace(monkeypatch, one_matmul):
    """On the CPU the scores come code-major: from one matmul ([k, nq, lq] storage) when
    they are small, else per query in blocks of centroids ([nq, k, lq]; a block of 7 here,
    so k = 30 ends in a partial one), optionally into a caller's workspace."""
    from lateint_kernels.ops import plaid as lkp

    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    q = torch.randn(3, 5, 16, generator=g, dtype=torch.float64).to(torch.bfloat16)
    c = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=-1)
    want = q.double() @ c.double().T
    monkeypatch.setattr(lkp, "_CENTROID_BLOCK", 7)
    monkeypatch.setattr(lkp, "_ONE_MATMUL_BYTES", 4 * 450 if one_matmul else 4 * 449)
    s = lk.centroid_scores(q, c)
    assert s.dtype == torch.float32 and s.shape == (3, 5, 30)
    assert s.stride() == ((5, 1, 15) if one_matmul else (150, 1, 5))
    torch.testing.assert_close(s.double(), want, rtol=0, atol=1e-5)
    ws = torch.full((500,), float("nan"))
    s2 = lk.centroid_scores(q, c, workspace=ws)
    assert s2.data_ptr() == ws.data_ptr() and s2.stride() == s.stride() and torch.equal(s2, s)
    assert torch.isnan(ws[450:]).all()  # past the scores: untouched
    assert lk.centroid_scores(q[:0], c).shape == (0, 5, 30) and lk.centroid_scores(q, c[:0]).shape == (3, 5, 0)
    with pytest.raises(ValueError, match="workspace"):
        lk.centroid_scores(q, c, workspace=torch.empty(449))
    with pytest.raises(ValueError, match="workspace"):
        lk.centroid_scores(q, c, workspace=torch.empty(450, dtype=torch.float64))


def test_approx_scores_without_pruning_is_maxsim_of_the_centroids():
    """With no pruning, the approximate score is exact MaxSim against the documents'
    centroid vectors (every token replaced by its centroid)."""
    g = torch.Generator().manual_seed(3)
    c = torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=-1)
    off = torch.tensor([0, 5, 9, 9, 30])
    codes = torch.randint(0, 20, (30,), generator=g, dtype=torch.int32)
    q = torch.nn.functional.normalize(torch.randn(2, 6, 16, generator=g), dim=-1)
    s = lk.approx_scores(lk.centroid_scores(q, c), codes, off, torch.arange(4).repeat(2, 1))
    exact = lk.maxsim(q, c[codes.long()], off)
    torch.testing.assert_close(s, exact, rtol=0, atol=1e-5)


def test_bad_input():
    scores, mask, codes, off, ivf_off, ivf_docs, nd = problem()
    with pytest.raises(ValueError, match="scores"):
        lk.approx_scores(scores.double(), codes, off, torch.zeros(3, 1, dtype=torch.int64))
    with pytest.raises((ValueError, RuntimeError), match="candidates"):
        lk.approx_scores(scores, codes, off, torch.full((3, 1), nd))
    bad = codes.clone()
    bad[0] = 50
    with pytest.raises((ValueError, RuntimeError), match="codes"):
        lk.approx_scores(scores, bad, off, torch.zeros(3, 1, dtype=torch.int64))
    with pytest.raises((ValueError, RuntimeError), match="ivf_docs"):
        lk.ivf_candidates(scores, ivf_off, ivf_docs + nd, nd, 2)
    with pytest.raises((ValueError, RuntimeError), match="ncells"):
        lk.ivf_candidates(scores, ivf_off, ivf_docs, nd, 0)
    with pytest.raises((ValueError, RuntimeError), match="ivf_offsets"):
        lk.ivf_candidates(scores, ivf_off[:-1], ivf_docs, nd, 2)


def test_opcheck():
    scores, mask, codes, off, ivf_off, ivf_docs, nd = problem(nq=2, lq=4, k=10, nd=8)
    torch.library.opcheck(torch.ops.lateint_kernels.approx_scores.default,
                          (scores, mask, codes, off, torch.tensor([[0, 3, -1], [7, 1, 2]]), 0.1))
    torch.library.opcheck(torch.ops.lateint_kernels.ivf_candidates.default,
                          (scores, mask, ivf_off, ivf_docs, nd, 2))
    for validate in (True, False):
        torch.library.opcheck(torch.ops.lateint_kernels.approx_scores.default,
                              (scores, None, codes, off, torch.tensor([[5, 3], [0, -1]]), float("-inf"), validate))
        torch.library.opcheck(torch.ops.lateint_kernels.ivf_candidates.default,
                              (scores, None, ivf_off, ivf_docs, nd, 3, validate))


def test_torch_compile_of_the_search_stages():
    """The PLAID stages in one compiled graph (fullgraph; ivf_candidates' width is a
    data-dependent size): the eager answers."""
    scores, mask, codes, off, ivf_off, ivf_docs, nd = problem(nq=3, lq=6, k=20, nd=30,
                                                             seed=int(torch.randint(0, 2**31 - 1, ())))

    def stages(scores, mask):
        cand = lk.ivf_candidates(scores, ivf_off, ivf_docs, nd, 2, query_mask=mask, validate=False)
        return cand, lk.approx_scores(scores, codes, off, cand, threshold=0.2, query_mask=mask, validate=False)

    want = stages(scores, mask)
    import torch._dynamo.config as dc
    with dc.patch(capture_dynamic_output_shape_ops=True):
        got = torch.compile(stages, fullgraph=True, backend="aot_eager")(scores, mask)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ---------------------------------------------------------------------------------------
# decompress_maxsim: the fused final stage
def compressed(nbits, seed, nd=40, dim=32, k=24):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(8, dim, generator=g), dim=-1)
    lens = torch.randint(0, 25, (nd,), generator=g)
    lens[3] = 0  # an empty document among the candidates
    off = torch.zeros(nd + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lens, 0)
    x = clustered(int(off[-1]), dim, generator=g, centres=centres)
    c = clustered(k, dim, generator=g, centres=centres)
    codes = lk.kmeans_assign(x, c)
    cut, w = lk.residual_buckets(x - c[codes.long()], nbits)
    packed = lk.compress_residuals(x, c, codes, cut, nbits)
    q = clustered(4 * 6, dim, generator=g, centres=centres).reshape(4, 6, dim)
    cand = torch.randint(-1, nd, (4, 9), generator=g)
    cand[0, :3] = 3
    cand[1, 0] = cand[2, 0] = 5  # one document listed by several queries and twice by one
    cand[1, 1] = 5
    mask = torch.rand(4, 6, generator=g) > 0.25
    return q, mask, codes, packed, off, c, w, cand


@pytest.mark.parametrize("nbits", [1, 2, 4, 8])
@pytest.mark.parametrize("masked", [False, True])
def test_decompress_maxsim(nbits, masked):
    q, mask, codes, packed, off, c, w, cand = compressed(nbits, int(torch.randint(0, 2**31 - 1, ())))
    m = mask if masked else None
    got = lk.decompress_maxsim(q, codes, packed, off, c, w, nbits, cand, query_mask=m)
    want = ref.decompress_maxsim_ref(q.double(), m, codes, packed, off, c.double(), w.double(), nbits, cand)
    assert got.dtype == torch.float32 and got.shape == cand.shape
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)
    assert torch.isinf(got[cand < 0]).all() and (got[cand < 0] < 0).all()
    # bit-identical to the unfused path: decompress the corpus, then maxsim_candidates
    docs = lk.decompress_residuals(codes, packed, c, w, nbits)
    assert torch.equal(got, lk.maxsim_candidates(q, docs, off, cand, query_mask=m))


def test_decompress_maxsim_bad_input():
    q, mask, codes, packed, off, c, w, cand = compressed(2, 0)
    with pytest.raises((ValueError, RuntimeError), match="candidates"):
        lk.decompress_maxsim(q, codes, packed, off, c, w, 2, torch.full((4, 2), off.shape[0] - 1))
    with pytest.raises((ValueError, RuntimeError), match="candidates"):
        lk.decompress_maxsim(q, codes, packed, off, c, w, 2, cand[:2])
    bad = codes.clone()
    bad[int(off[5])] = c.shape[0]  # a token of document 5, which is a candidate
    with pytest.raises(RuntimeError, match="codes"):
        lk.decompress_maxsim(q, bad, packed, off, c, w, 2, cand)
    with pytest.raises(RuntimeError, match="packed"):
        lk.decompress_maxsim(q, codes, packed[:, :-1], off, c, w, 2, cand)
    with pytest.raises(RuntimeError, match="nbits"):
        lk.decompress_maxsim(q, codes, packed, off, c, w, 3, cand)
    with pytest.raises(RuntimeError, match="dim"):
        lk.decompress_maxsim(q[..., :16], codes, packed, off, c, w, 2, cand)
    with pytest.raises(RuntimeError, match="doc_offsets"):
        lk.decompress_maxsim(q, codes, packed, off.flip(0), c, w, 2, cand)
    nan_c = c.clone()
    nan_c[int(codes[int(off[5])])] = float("nan")
    with pytest.raises(RuntimeError, match="NaN"):
        lk.decompress_maxsim(q, codes, packed, off, nan_c, w, 2, cand)
    nan_q = q.clone()
    nan_q[1, 0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="queries"):
        lk.decompress_maxsim(nan_q, codes, packed, off, c, w, 2, cand)


def test_decompress_maxsim_opcheck():
    q, mask, codes, packed, off, c, w, cand = compressed(4, 1, nd=10)
    cand = cand.clamp(max=9)
    torch.library.opcheck(torch.ops.lateint_kernels.decompress_maxsim.default,
                          (q, mask, codes, packed, off, c, w, 4, cand))
    torch.library.opcheck(torch.ops.lateint_kernels.decompress_maxsim.default,
                          (q, mask, codes, packed, off, c, w, 4, cand, False))


def test_final_stage_scorers_compile():
    q, mask, codes, packed, off, c, w, cand = compressed(4, 1, nd=10)
    cand = cand.clamp(max=9)

    def score(q, mask):
        s = lk.centroid_scores(q, c)
        return (lk.decompress_maxsim(q, codes, packed, off, c, w, 4, cand, query_mask=mask),
                lk.lut_maxsim(q, s, codes, packed, off, w, 4, cand, query_mask=mask))

    want = score(q, mask)
    got = torch.compile(score, fullgraph=True, backend="aot_eager")(q, mask)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ---------------------------------------------------------------------------------------
# lut_maxsim: the final stage in the compressed domain (unnormalized reconstructions)
@pytest.mark.parametrize("layout", ["token", "code", "interleaved"])
@pytest.mark.parametrize("nbits", [1, 2, 4, 8])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("lq", [6, 32, 37])
def test_lut_maxsim(nbits, masked, lq, layout):
    q, mask, codes, packed, off, c, w, cand = compressed(nbits, int(torch.randint(0, 2**31 - 1, ())))
    g = torch.Generator().manual_seed(lq)
    if lq != q.shape[1]:  # query lengths hitting the fixed-width (16/32/48/64) and generic paths
        q = torch.nn.functional.normalize(torch.randn(4, lq, q.shape[2], generator=g), dim=-1)
        mask = torch.rand(4, lq, generator=g) > 0.25
    m = mask if masked else None
    s = laid_out(lk.centroid_scores(q, c), layout)
    got = lk.lut_maxsim(q, s, codes, packed, off, w, nbits, cand, query_mask=m)
    want = ref.lut_maxsim_ref(q.double(), m, s.double(), codes, packed, off, w.double(), nbits, cand)
    assert got.dtype == torch.float32 and got.shape == cand.shape
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)
    assert torch.isinf(got[cand < 0]).all() and (got[cand < 0] < 0).all()
    assert (got[cand == 3] == 0).all()  # the empty document
    # it is MaxSim against the unnormalized reconstructions C[code] + residual
    recon = c.double()[codes.long()] + ref.codec._residuals(packed, w, nbits, q.shape[2], torch.float64)
    fin = cand >= 0
    torch.testing.assert_close(got.double()[fin], ref.maxsim_candidates_ref(q.double(), recon, off, cand,
                                                                            query_mask=m)[fin], rtol=0, atol=2e-5)


def test_lut_maxsim_bad_input():
    q, mask, codes, packed, off, c, w, cand = compressed(2, 0)
    s = lk.centroid_scores(q, c)
    with pytest.raises((ValueError, RuntimeError), match="candidates"):
        lk.lut_maxsim(q, s, codes, packed, off, w, 2, torch.full((4, 2), off.shape[0] - 1))
    with pytest.raises(ValueError, match="scores"):
        lk.lut_maxsim(q, s[:2], codes, packed, off, w, 2, cand)
    bad = codes.clone()
    bad[int(off[5])] = c.shape[0]  # a token of document 5, which is a candidate
    with pytest.raises(RuntimeError, match="codes"):
        lk.lut_maxsim(q, s, bad, packed, off, w, 2, cand)
    with pytest.raises(RuntimeError, match="packed"):
        lk.lut_maxsim(q, s, codes, packed[:, :-1], off, w, 2, cand)
    with pytest.raises(RuntimeError, match="nbits"):
        lk.lut_maxsim(q, s, codes, packed, off, w, 3, cand)
    with pytest.raises(RuntimeError, match="doc_offsets"):
        lk.lut_maxsim(q, s, codes, packed, off.flip(0), w, 2, cand)
    with pytest.raises(RuntimeError, match="bucket_weights"):
        lk.lut_maxsim(q, s, codes, packed, off, w[:3], 2, cand)
    nan_q = q.clone()
    nan_q[1, 0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="queries"):
        lk.lut_maxsim(nan_q, lk.centroid_scores(q, c), codes, packed, off, w, 2, cand)
    nan_s = s.clone()
    nan_s[2, 1, int(codes[int(off[5])])] = float("nan")
    with pytest.raises(RuntimeError, match="scores"):
        lk.lut_maxsim(q, nan_s, codes, packed, off, w, 2, cand)


def test_lut_maxsim_opcheck():
    q, mask, codes, packed, off, c, w, cand = compressed(4, 1, nd=10)
    cand = cand.clamp(max=9)
    s = lk.centroid_scores(q, c)
    torch.library.opcheck(torch.ops.lateint_kernels.lut_maxsim.default,
                          (q, mask, s, codes, packed, off, w, 4, cand))
    torch.library.opcheck(torch.ops.lateint_kernels.lut_maxsim.default,
                          (q, mask, s, codes, packed, off, w, 4, cand, False))


def test_search_with_the_lut_scorer():
    from lateint.plaid import PLAIDIndex
    g = torch.Generator().manual_seed(3)
    centres = torch.nn.functional.normalize(torch.randn(16, 64, generator=g), dim=-1)
    lens = torch.randint(10, 40, (150,), generator=g)
    off = torch.zeros(151, dtype=torch.int64)
    off[1:] = torch.cumsum(lens, 0)
    x = clustered(int(off[-1]), 64, generator=g, centres=centres)
    q = clustered(3 * 8, 64, generator=g, centres=centres).reshape(3, 8, 64)
    index = PLAIDIndex.build(x, off, nbits=4, kmeans_niter=4)
    ids_e, sc_e = index.search(q, 5)
    ids_l, sc_l = index.search(q, 5, scorer="lut")
    # same candidates, rescored against unnormalized reconstructions: close, mostly the same order
    assert (ids_e[:, 0] == ids_l[:, 0]).float().mean() >= 2 / 3
    torch.testing.assert_close(sc_l[:, 0], sc_e[:, 0], rtol=0.05, atol=0)
    with pytest.raises(ValueError, match="scorer"):
        index.search(q, 5, scorer="fast")


def test_lut_maxsim_off_the_cpu_says_the_reference_runs():
    """lut_maxsim has a CPU kernel only: on another device it says, once, that the
    reference runs instead of running it silently (meta stands in for a GPU here)."""
    from lateint_kernels.ops import plaid as lkp

    q, mask, codes, packed, off, c, w, cand = compressed(4, 1, nd=10)
    cand = cand.clamp(max=9)
    s = lk.centroid_scores(q, c)
    args = [t.to("meta") for t in (q, s, codes, packed, off, w)]
    lkp._WARNED.discard("lut_maxsim")
    with pytest.warns(RuntimeWarning, match="no kernel for meta"):
        out = lk.lut_maxsim(*args, 4, cand.to("meta"))
    assert out.shape == cand.shape and out.device.type == "meta"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lk.lut_maxsim(*args, 4, cand.to("meta"))  # once
