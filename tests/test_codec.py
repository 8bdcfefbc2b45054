"""Residual codec: compress bit for bit against the reference and against numpy.packbits of
ColBERTv2's bit order, decompress against the float64 reference, round-trip error falling
with nbits, quantile buckets without torch.quantile's size limit, Lloyd buckets, bad input,
opcheck."""
import numpy as np
import pytest
import torch

import lateint_kernels as lk
from lateint_kernels import reference as ref

from _data import clustered


def setup(n, dim, k, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(max(k // 2, 1), dim, generator=g), dim=-1)
    x = clustered(n, dim, generator=g, centres=centres)
    c = clustered(k, dim, generator=g, centres=centres)
    codes = lk.kmeans_assign(x, c)
    return x.to(dtype), c.to(dtype), codes


@pytest.mark.parametrize("nbits", [1, 2, 4, 8])
@pytest.mark.parametrize("dim", [8, 96, 128])
def test_compress_bit_exact_and_decompress(nbits, dim):
    seed = int(torch.randint(0, 2**31 - 1, ()))
    x, c, codes = setup(300, dim, 40, seed)
    cut, w = lk.residual_buckets(x - c[codes.long()], nbits)
    packed = lk.compress_residuals(x, c, codes, cut, nbits)
    assert packed.dtype == torch.uint8 and packed.shape == (300, dim * nbits // 8)
    assert torch.equal(packed, ref.compress_residuals_ref(x, c, codes, cut, nbits)), seed
    xh = lk.decompress_residuals(codes, packed, c, w, nbits)
    want = ref.decompress_residuals_ref(codes, packed, c.double(), w.double(), nbits)
    torch.testing.assert_close(xh.double(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("nbits, dim", [(n, d) for n in (1, 2, 4) for d in (16, 40, 128, 384)] + [(2, 12), (4, 6)])
def test_decompress_fast_path_is_bit_identical(nbits, dim):
    """Rows of nbits 1/2/4 decompress through in-register weight lookups with AVX-512 (dim
    a multiple of 16) and through vector table loads with AVX2 (dim a multiple of 8), four
    rows at a time; the byte-table loop (cpu_isa "scalar", and any dim off those multiples)
    must give the same bits, also through decompress_maxsim, and row counts that leave a
    short group of four."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    x, c, codes = setup(301, dim, 40, seed)
    cut, w = lk.residual_buckets(x - c[codes.long()], nbits)
    packed = lk.compress_residuals(x, c, codes, cut, nbits)
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(3, 5, dim, generator=g), dim=-1)
    off = torch.tensor([0, 7, 7, 150, 301])
    cand = torch.tensor([[0, 2, -1], [3, 1, 0], [2, 2, 3]])
    before = lk.cpu_isa()
    isas = ("scalar", "avx2", "best")
    try:
        out = {}
        for isa in isas:
            lk.cpu_isa(isa)
            out[isa] = (lk.decompress_residuals(codes, packed, c, w, nbits),
                        lk.decompress_maxsim(q, codes, packed, off, c, w, nbits, cand))
    finally:
        lk.cpu_isa(before)
    for isa in isas[1:]:
        assert torch.equal(out["scalar"][0], out[isa][0]), f"{isa}, seed {seed}"
    # the scores also go through each ISA's MaxSim kernel: compare at the same ISA
    docs = out["best"][0]
    assert torch.equal(out["best"][1], lk.maxsim_candidates(q, docs, off, cand)), f"seed {seed}"
    want = ref.decompress_residuals_ref(codes, packed, c.double(), w.double(), nbits)
    torch.testing.assert_close(out["best"][0].double(), want, rtol=0, atol=1e-5)


def test_layout_is_colbert_packbits():
    """Independent oracle: ColBERTv2's binarize (bits of each bucket, least significant
    first, flattened, numpy.packbits)."""
    x, c, codes = setup(7, 16, 5, 3)
    cut, _ = lk.residual_buckets(x - c[codes.long()], 2)
    packed = lk.compress_residuals(x, c, codes, cut, 2).numpy()
    r = (x - c[codes.long()]).numpy()
    for i in range(7):
        buckets = [int(np.sum(cut.numpy() < v)) for v in r[i]]
        bits = [(b >> t) & 1 for b in buckets for t in range(2)]
        assert np.array_equal(packed[i], np.packbits(np.array(bits, dtype=np.uint8)))


def test_round_trip_error_falls_with_nbits():
    x, c, codes = setup(2000, 128, 64, 4)
    errs = []
    for nbits in (1, 2, 4, 8):
        cut, w = lk.residual_buckets(x - c[codes.long()], nbits)
        xh = lk.decompress_residuals(codes, lk.compress_residuals(x, c, codes, cut, nbits), c, w, nbits)
        errs.append(float((xh - x).norm(dim=-1).mean()))
    assert errs == sorted(errs, reverse=True) and errs[-1] < 0.25 * errs[0], errs
    assert errs[-1] < 0.05


def test_half_inputs():
    x, c, codes = setup(100, 32, 10, 5, torch.float16)
    cut, _ = lk.residual_buckets(x.float() - c.float()[codes.long()], 4)
    assert torch.equal(lk.compress_residuals(x, c, codes, cut, 4),
                       ref.compress_residuals_ref(x.float(), c.float(), codes, cut, 4))


def test_buckets_match_torch_quantile_and_scale_past_its_limit():
    v = torch.randn(10_001)
    for nbits in (1, 2, 4, 8):
        m = 1 << nbits
        cut, w = lk.residual_buckets(v, nbits)
        torch.testing.assert_close(cut, v.quantile(torch.arange(1, m, dtype=torch.float32) / m))
        torch.testing.assert_close(w, v.quantile((torch.arange(m, dtype=torch.float32) + 0.5) / m))
    big = torch.randn((1 << 24) + 7)
    try:
        want = big.quantile(torch.tensor([0.25, 0.5, 0.75]))
    except RuntimeError:  # torch before 2.15 refuses more than 2^24 values: the limit this helper removes
        want = None
    cut, w = lk.residual_buckets(big, 2)
    assert cut.shape == (3,) and abs(float(cut[1])) < 1e-2  # the median of N(0, 1)
    if want is not None:
        torch.testing.assert_close(cut, want)


def _bucket_mse(v, cut, w):
    return float(((v.double() - w.double()[torch.bucketize(v, cut)]) ** 2).mean())


@pytest.mark.parametrize("nbits", [1, 2, 4, 8])
def test_lloyd_buckets_are_a_fixed_point_with_less_error(nbits):
    """method="lloyd": every weight is the mean of the values its bucket takes (compress's
    bucketize rule), every cutoff the midpoint of its two weights, and the squared error is
    below PLAID's quantile buckets'; on Gaussian values the 2-bit levels are Lloyd-Max's
    (+-0.4528, +-1.510) and the error ~0.1175 against the quantile buckets' ~0.147."""
    g = torch.Generator().manual_seed(nbits)
    v = torch.randn(200_000, generator=g) * 0.05 + 0.01
    q_cut, q_w = lk.residual_buckets(v, nbits)
    cut, w = lk.residual_buckets(v, nbits, "lloyd", iters=5000)
    assert cut.shape == (2 ** nbits - 1,) and w.shape == (2 ** nbits,) and cut.dtype == w.dtype == torch.float32
    assert bool((w[1:] > w[:-1]).all()) and bool((cut >= w[:-1]).all()) and bool((cut <= w[1:]).all())
    b = torch.bucketize(v, cut)
    for j in range(2 ** nbits):
        sel = v[b == j].double()
        if sel.numel():
            assert abs(float(sel.mean()) - float(w[j])) <= 1e-6, (j, float(sel.mean()), float(w[j]))
    torch.testing.assert_close(cut, (w[1:] + w[:-1]) / 2)
    assert _bucket_mse(v, cut, w) < _bucket_mse(v, q_cut, q_w)
    if nbits == 2:
        z = torch.randn(2_000_000, generator=g)
        cut, w = lk.residual_buckets(z, 2, "lloyd")
        torch.testing.assert_close(w, torch.tensor([-1.510, -0.4528, 0.4528, 1.510]), atol=0.01, rtol=0)
        assert abs(_bucket_mse(z, cut, w) - 0.1175) < 0.002
        q_cut, q_w = lk.residual_buckets(z, 2)
        assert _bucket_mse(z, q_cut, q_w) > 0.14


def test_lloyd_buckets_on_degenerate_values_and_bad_arguments():
    """Few distinct values leave buckets empty: the weights stay finite and ordered, and the
    values are reproduced exactly where there are no more of them than buckets."""
    v = torch.tensor([0.5] * 100 + [-0.25] * 50 + [0.125] * 7)
    cut, w = lk.residual_buckets(v, 4, "lloyd")
    assert bool(torch.isfinite(w).all()) and bool((w[1:] >= w[:-1]).all())
    assert _bucket_mse(v, cut, w) == 0.0
    one = torch.full((64,), 0.3)
    cut, w = lk.residual_buckets(one, 2, "lloyd")
    assert bool(torch.isfinite(cut).all()) and _bucket_mse(one, cut, w) < 1e-12
    with pytest.raises(ValueError, match="`method`"):
        lk.residual_buckets(v, 2, "kmeans")
    with pytest.raises(ValueError, match="`iters`"):
        lk.residual_buckets(v, 2, "lloyd", iters=0)
    with pytest.raises(ValueError, match="`residuals` must be a tensor"):
        lk.residual_buckets([0.1, 0.2], 2)


def _bad():
    x, c, codes = setup(20, 16, 4, 6)
    cut, w = lk.residual_buckets(x - c[codes.long()], 2)
    packed = lk.compress_residuals(x, c, codes, cut, 2)
    nan = x.clone()
    nan[3, 3] = float("nan")
    bad_codes = codes.clone()
    bad_codes[5] = 4
    return [
        (lambda: lk.compress_residuals(x, c, codes, cut, 3), "nbits"),
        (lambda: lk.compress_residuals(x[:, :12], c[:, :12], codes, lk.residual_buckets(x, 1)[0], 1), "multiple of 8"),
        (lambda: lk.compress_residuals(x, c, bad_codes, cut, 2), "codes"),
        (lambda: lk.compress_residuals(x, c, codes.long(), cut, 2), "codes"),
        (lambda: lk.compress_residuals(x, c, codes, cut[:2], 2), "bucket_cutoffs"),
        (lambda: lk.compress_residuals(nan, c, codes, cut, 2), "NaN"),
        (lambda: lk.compress_residuals(x, c, codes, cut.flip(0), 2), "non-decreasing"),
        (lambda: lk.decompress_residuals(codes, packed[:, :3], c, w, 2), "packed"),
        (lambda: lk.decompress_residuals(codes, packed, c, w[:3], 2), "bucket_weights"),
        (lambda: lk.decompress_residuals(bad_codes, packed, c, w, 2), "codes"),
        (lambda: lk.residual_buckets(torch.tensor([]), 2), "empty"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_bad_input(case):
    fn, match = _bad()[case]
    with pytest.raises((ValueError, RuntimeError), match=match):
        fn()


@pytest.mark.skipif(not lk.NATIVE_LOADED, reason="native extension not built")
def test_direct_op_checks():
    x, c, codes = setup(20, 16, 4, 7)
    cut, w = lk.residual_buckets(x - c[codes.long()], 2)
    bad = codes.clone()
    bad[0] = -1
    with pytest.raises(RuntimeError, match="codes"):
        torch.ops.lateint_kernels.compress_residuals(x, c, bad, cut, 2)
    with pytest.raises(RuntimeError, match="nbits"):
        torch.ops.lateint_kernels.decompress_residuals(codes, torch.zeros(20, 4, dtype=torch.uint8), c, w, 5)


def test_opcheck():
    x, c, codes = setup(30, 16, 4, 8)
    cut, w = lk.residual_buckets(x - c[codes.long()], 4)
    packed = lk.compress_residuals(x, c, codes, cut, 4)
    torch.library.opcheck(torch.ops.lateint_kernels.compress_residuals.default, (x, c, codes, cut, 4))
    torch.library.opcheck(torch.ops.lateint_kernels.decompress_residuals.default, (codes, packed, c, w, 4))


@pytest.mark.parametrize("nbits", [1, 2, 4, 8])
def test_torch_compile(nbits):
    """compress + decompress inside one compiled graph (fullgraph: no break at the ops)
    give the eager results bit for bit."""
    x, c, codes = setup(40, 16, 5, int(torch.randint(0, 2**31 - 1, ())))
    cut, w = lk.residual_buckets(x - c[codes.long()], nbits)

    def round_trip(x, c, codes, cut, w):
        packed = lk.compress_residuals(x, c, codes, cut, nbits)
        return packed, lk.decompress_residuals(codes, packed, c, w, nbits)

    want = round_trip(x, c, codes, cut, w)
    got = torch.compile(round_trip, fullgraph=True, backend="aot_eager")(x, c, codes, cut, w)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
