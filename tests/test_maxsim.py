"""MaxSim ops against the float64 reference, on every backend this machine has."""
import os
import subprocess
import sys

import pytest
import torch

import lateint_kernels as lk
import lateint_kernels.testing as lkt
from lateint_kernels import reference as ref

from _data import corpus, random_lengths

ISAS = [i for i in ("scalar", "avx2", "avx512", "avx512bf16")
        if lk.NATIVE_LOADED and ("scalar", "avx2", "avx512", "avx512bf16").index(i)
        <= ("scalar", "avx2", "avx512", "avx512bf16").index(lk.cpu_isa("best"))]

AWKWARD_LENGTHS = [1, 0, 13, 64, 300, 5, 12, 24, 1, 97, 700, 2, 33]


@pytest.fixture(params=ISAS or ["reference"])
def isa(request):
    if request.param != "reference":
        lk.cpu_isa(request.param)
    yield request.param
    if request.param != "reference":
        lk.cpu_isa("best")


def _ref64(q, d, off, **kw):
    return ref.maxsim_argmax_ref(q.double(), d.double(), off, **kw)


def _close(got, want, rtol, atol):
    got = got.double()
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), "non-finite entries differ"
    torch.testing.assert_close(got[finite], want[finite], rtol=rtol, atol=atol)


# -------------------------------------------------------------------------------------
# forward
@pytest.mark.parametrize("lq", [1, 31, 32, 33])
@pytest.mark.parametrize("dim", [96, 128])
def test_maxsim_matches_reference_fp32(isa, lq, dim):
    q, d, off = corpus(AWKWARD_LENGTHS, dim, nq=3, lq=lq, seed=lq * 1000 + dim)
    got = lk.maxsim(q, d, off)  # outputs are NaN-poisoned (conftest)
    want, _ = _ref64(q, d, off)
    assert got.dtype == torch.float32 and got.shape == (3, len(AWKWARD_LENGTHS))
    _close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.all(got[:, 1] == 0), "an empty document scores 0"


@pytest.mark.parametrize("mask_mode", ["ignore", "zero"])
def test_maxsim_masks(isa, mask_mode):
    q, d, off = corpus(random_lengths(40, 1, 90, seed=3), 128, nq=4, lq=32, seed=7)
    qm = torch.rand(4, 32) > 0.3
    qm[2] = False  # a query with every token masked scores 0
    padded = torch.rand(40) > 0.5
    got = lk.maxsim(q, d, off, query_mask=qm, mask_mode=mask_mode, doc_padded=padded)
    want, _ = _ref64(q, d, off, query_mask=qm, mask_mode=mask_mode, doc_padded=padded)
    _close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.all(got[2] == 0)
    if mask_mode == "zero":  # the floor really changes scores of padded docs
        plain, _ = _ref64(q, d, off, query_mask=qm)
        assert not torch.allclose(plain[:, padded], want[:, padded])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dim", [96, 128, 33])
def test_maxsim_low_precision(isa, dtype, dim):
    """Low-precision inputs, float32 accumulation: compare with float64 on the same
    (rounded) inputs; only accumulation order differs."""
    q, d, off = corpus(AWKWARD_LENGTHS, dim, nq=2, lq=33, seed=11, dtype=dtype)
    got = lk.maxsim(q, d, off)
    want, _ = _ref64(q, d, off)
    _close(got, want, rtol=2e-5, atol=2e-5)


def test_maxsim_many_docs_long_docs(isa):
    lengths = random_lengths(3000, 1, 40, seed=5) + [2000, 4100]
    q, d, off = corpus(lengths, 128, nq=3, lq=32, seed=9)
    got = lk.maxsim(q, d, off)
    want, _ = _ref64(q, d, off)
    _close(got, want, rtol=1e-5, atol=2e-5)


def test_argmax_matches_reference(isa):
    q, d, off = corpus(AWKWARD_LENGTHS, 96, nq=2, lq=33, seed=13)
    qm = torch.rand(2, 33) > 0.2
    s, a = lkt.ops.maxsim_argmax(q, qm, d, off, None, None, "ignore")
    ws, wa = _ref64(q, d, off, query_mask=qm)
    _close(s, ws, 1e-5, 1e-5)
    assert a.dtype == torch.int32 and a.shape == (2, 33, len(AWKWARD_LENGTHS))
    assert torch.equal(a.long(), wa)


def test_candidates(isa):
    lengths = random_lengths(50, 0, 120, seed=17)
    q, d, off = corpus(lengths, 128, nq=5, lq=32, seed=19)
    cand = torch.randint(0, 50, (5, 9))
    cand[1, 3] = -1
    cand[2, :] = cand[2, 0]  # duplicates
    qm = torch.rand(5, 32) > 0.25
    got = lk.maxsim_candidates(q, d, off, cand, query_mask=qm)
    want = ref.maxsim_candidates_ref(q.double(), d.double(), off, cand, query_mask=qm)
    _close(got, want, 1e-5, 1e-5)
    assert got[1, 3] == float("-inf")
    full = lk.maxsim(q, d, off, query_mask=qm)
    _close(got.masked_fill(cand < 0, 0), full.gather(1, cand.clamp_min(0)).double().masked_fill(cand < 0, 0),
           1e-6, 1e-6)


# -------------------------------------------------------------------------------------
# backward
@pytest.mark.parametrize("mask_mode", ["ignore", "zero"])
@pytest.mark.parametrize("use_cand", [False, True])
def test_backward_matches_reference_autograd(isa, mask_mode, use_cand):
    lengths = [3, 0, 17, 40, 1, 64]
    q, d, off = corpus(lengths, 96, nq=3, lq=31, seed=23)
    qm = torch.rand(3, 31) > 0.2
    padded = torch.tensor([True, False, True, False, True, False])
    cand = torch.tensor([[0, 2, 5, -1], [5, 5, 1, 3], [4, 3, 2, 0]]) if use_cand else None
    g = torch.randn(3, 4 if use_cand else 6)
    qa = q.clone().requires_grad_(True)
    da = d.clone().requires_grad_(True)
    if use_cand:
        out = lk.maxsim_candidates(qa, da, off, cand, query_mask=qm, mask_mode=mask_mode, doc_padded=padded)
    else:
        out = lk.maxsim(qa, da, off, query_mask=qm, mask_mode=mask_mode, doc_padded=padded)
    out = torch.where(torch.isfinite(out), out, torch.zeros_like(out))
    (out * g).sum().backward()

    q64 = q.double().requires_grad_(True)
    d64 = d.double().requires_grad_(True)
    s, _ = ref.maxsim_argmax_ref(q64, d64, off, cand, query_mask=qm, mask_mode=mask_mode, doc_padded=padded)
    s = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
    (s * g.double()).sum().backward()
    torch.testing.assert_close(qa.grad.double(), q64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(da.grad.double(), d64.grad, rtol=1e-5, atol=1e-5)
    assert qa.grad.abs().sum() > 0 and da.grad.abs().sum() > 0


def test_reference_gradcheck_float64():
    """The reference's autograd (the oracle for our backward) is itself right: finite
    differences in float64 on tiny inputs."""
    q, d, off = corpus([3, 1, 4], 8, nq=2, lq=3, seed=29)
    q = q.double().requires_grad_(True)
    d = d.double().requires_grad_(True)
    qm = torch.tensor([[True, False, True], [True, True, True]])
    for mode, padded in (("ignore", None), ("zero", torch.tensor([True, False, True]))):
        assert torch.autograd.gradcheck(
            lambda a, b: ref.maxsim_ref(a, b, off, query_mask=qm, mask_mode=mode, doc_padded=padded),
            (q, d), eps=1e-6, atol=1e-6)


def test_op_gradcheck_float32():
    """Our op's backward against finite differences of our own forward (float32, so loose
    step and tolerance; the tight comparison is against the float64 reference above)."""
    q, d, off = corpus([3, 1, 4], 16, nq=2, lq=3, seed=31)
    q.requires_grad_(True)
    d.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: lk.maxsim(a, b, off), (q, d), eps=1e-3, atol=5e-3,
                                     rtol=5e-3, fast_mode=True)


def test_backward_deterministic_across_thread_counts(isa):
    lengths = random_lengths(300, 1, 60, seed=37)
    q, d, off = corpus(lengths, 128, nq=6, lq=32, seed=41)
    g = torch.randn(6, 300)
    outs = []
    before = torch.get_num_threads()
    try:
        for th in (1, 2, 1):
            torch.set_num_threads(th)
            outs.append(torch.ops.lateint_kernels.maxsim_backward(g, q, None, d, off, None, None, "ignore"))
    finally:
        torch.set_num_threads(before)
    for dq, dd in outs[1:]:
        assert torch.equal(dq, outs[0][0]) and torch.equal(dd, outs[0][1])


# -------------------------------------------------------------------------------------
# torch.library integration
def _samples(requires_grad):
    out = []
    for lq, lengths in ((4, [3, 0, 5]), (33, [1, 40, 7, 2])):
        q, d, off = corpus(lengths, 16, nq=2, lq=lq, seed=lq)
        q.requires_grad_(requires_grad)
        d.requires_grad_(requires_grad)
        qm = torch.rand(2, lq) > 0.3
        pad = torch.rand(len(lengths)) > 0.5
        out.append(((q, qm, d, off, pad, "zero"), (q, None, d, off, None, "ignore")))
    return out


@pytest.mark.skipif(not lk.NATIVE_LOADED, reason="native extension not built")
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    for pair in _samples(requires_grad):
        for args in pair:
            torch.library.opcheck(torch.ops.lateint_kernels.maxsim.default, args)
            q, qm, d, off, pad, mode = args
            cand = torch.tensor([[0, 1], [2, -1]])
            torch.library.opcheck(torch.ops.lateint_kernels.maxsim_candidates.default,
                                  (q, qm, d, off, cand, pad, mode))


def test_torch_compile_fullgraph():
    q, d, off = corpus([5, 9, 0, 30], 32, nq=2, lq=8, seed=43)

    def f(q, d, off):
        return lk.maxsim(q, d, off).softmax(-1)

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(cf(q, d, off), f(q, d, off))
    qg = q.clone().requires_grad_(True)
    cf(qg, d, off)[:, 0].sum().backward()
    assert qg.grad is not None and torch.isfinite(qg.grad).all()


def test_torch_compile_inductor():
    q, d, off = corpus([5, 9, 0, 30], 32, nq=2, lq=8, seed=47)
    cf = torch.compile(lambda q, d, off: lk.maxsim(q, d, off) * 2, fullgraph=True)
    torch.testing.assert_close(cf(q, d, off), lk.maxsim(q, d, off) * 2)


# -------------------------------------------------------------------------------------
# PyLate compatibility (mask_mode="zero")
def _pylate_scores():
    try:
        from pylate.scores import colbert_scores
        return colbert_scores
    except Exception:
        return ref.pylate_colbert_scores_ref


def test_pylate_zero_mode_matches_colbert_scores():
    colbert_scores = _pylate_scores()
    g = torch.Generator().manual_seed(53)
    nq, lq, nd, L, dim = 4, 32, 7, 50, 128
    qe = torch.nn.functional.normalize(torch.randn(nq, lq, dim, generator=g), dim=-1)
    de = torch.nn.functional.normalize(torch.randn(nd, L, dim, generator=g), dim=-1)
    qmask = (torch.rand(nq, lq, generator=g) > 0.2).float()
    lens = torch.tensor([50, 10, 1, 49, 25, 50, 3])
    dmask = (torch.arange(L)[None, :] < lens[:, None]).float()
    dmask[0, 7] = 0  # a skiplist token inside a full-length doc
    want = colbert_scores(qe.double(), de.double(), qmask.double(), dmask.double())
    packed = lk.pack(de, dmask.bool())
    got = lk.maxsim(qe, packed.tokens, packed.offsets, query_mask=qmask.bool(), mask_mode="zero",
                    doc_padded=packed.padded)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    # the default mode differs exactly where PyLate's zero floor bites
    ign = lk.maxsim(qe, packed.tokens, packed.offsets, query_mask=qmask.bool())
    assert torch.allclose(ign[:, ~packed.padded], got[:, ~packed.padded])
    assert not torch.allclose(ign[:, packed.padded], got[:, packed.padded])


def test_pack_roundtrip():
    de = torch.randn(3, 6, 4)
    m = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 0, 0]], dtype=torch.bool)
    p = lk.pack(de, m)
    assert p.offsets.tolist() == [0, 3, 9, 11]
    assert p.padded.tolist() == [True, False, True]
    assert torch.equal(p.tokens[9:], de[2, [1, 3]])
    up, um = lk.unpack(p.tokens, p.offsets)  # compacts the masked tokens to the front
    assert um.tolist() == [[True] * 3 + [False] * 3, [True] * 6, [True] * 2 + [False] * 4]
    assert torch.equal(up[um], p.tokens) and torch.all(up[~um] == 0)
    pl = lk.pack_list([de[0, :3], de[1]])
    assert pl.offsets.tolist() == [0, 3, 9] and not pl.padded.any()


# -------------------------------------------------------------------------------------
# bad input: clear errors naming the argument
def _base():
    q, d, off = corpus([3, 4, 5], 16, nq=2, lq=4, seed=59)
    return q, d, off


@pytest.mark.parametrize("case, match", [
    ("q2d", "queries"), ("d3d", "doc_tokens"), ("dim", "dim"), ("dtype", "doc_tokens"),
    ("qint", "queries"), ("off_dtype", "doc_offsets"), ("off_nonmono", "doc_offsets"),
    ("off_range", "doc_offsets"), ("off_start", "doc_offsets"), ("qmask_shape", "query_mask"),
    ("qmask_dtype", "query_mask"), ("pad_shape", "doc_padded"), ("mode", "mask_mode"),
    ("cand_range", "candidates"), ("cand_neg", "candidates"), ("cand_shape", "candidates"),
    ("q_nan", "queries"), ("d_nan", "doc_tokens"), ("d_inf", "doc_tokens"),
])
@pytest.mark.parametrize("direct", [False, True])
def test_bad_input(case, match, direct):
    q, d, off = _base()
    qm, pad, mode, cand = None, None, "ignore", torch.tensor([[0, 2], [1, 1]])
    if case == "q2d": q = q[0]
    if case == "d3d": d = d[None]
    if case == "dim": d = d[:, :8]
    if case == "dtype": d = d.double()
    if case == "qint": q, d = q.int(), d.int()
    if case == "off_dtype": off = off.int()
    if case == "off_nonmono": off = torch.tensor([0, 5, 3, 12])
    if case == "off_range": off = torch.tensor([0, 3, 7, 13])
    if case == "off_start": off = torch.tensor([1, 3, 7, 12])
    if case == "qmask_shape": qm = torch.ones(2, 5, dtype=torch.bool)
    if case == "qmask_dtype": qm = torch.ones(2, 4)
    if case == "pad_shape": pad = torch.ones(4, dtype=torch.bool)
    if case == "mode": mode = "multiply"
    if case == "cand_range": cand = torch.tensor([[0, 3], [1, 1]])
    if case == "cand_neg": cand = torch.tensor([[0, -2], [1, 1]])
    if case == "cand_shape": cand = torch.tensor([[0, 1]])
    if case == "q_nan": q[1, 2, 3] = float("nan")
    if case == "d_nan": d[5, 0] = float("nan")
    if case == "d_inf": d[11, 15] = float("inf")
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        if case.startswith("cand"):
            if direct:
                torch.ops.lateint_kernels.maxsim_candidates(q, qm, d, off, cand, pad, mode)
            else:
                lk.maxsim_candidates(q, d, off, cand, query_mask=qm, mask_mode=mode, doc_padded=pad)
        elif direct:
            if not lk.NATIVE_LOADED and case in ("q_nan", "d_nan", "d_inf"):
                pytest.skip("reference op does not check NaN")
            torch.ops.lateint_kernels.maxsim(q, qm, d, off, pad, mode)
        else:
            lk.maxsim(q, d, off, query_mask=qm, mask_mode=mode, doc_padded=pad)


def test_nan_in_masked_query_token_is_fine():
    q, d, off = _base()
    q[0, 1] = float("nan")
    qm = torch.ones(2, 4, dtype=torch.bool)
    qm[0, 1] = False
    out = lk.maxsim(q, d, off, query_mask=qm)
    assert torch.isfinite(out).all()


def test_wrong_device_named():
    q, d, off = _base()
    with pytest.raises(ValueError, match="doc_tokens"):
        lk.maxsim(q, d.to("meta"), off)


def test_degenerate_shapes():
    q, d, off = _base()
    assert lk.maxsim(q[:0], d, off).shape == (0, 3)
    empty = lk.maxsim(q, d[:0], torch.zeros(4, dtype=torch.int64))
    assert empty.shape == (2, 3) and torch.all(empty == 0)
    assert lk.maxsim(q, d[:0], torch.zeros(1, dtype=torch.int64)).shape == (2, 0)


# -------------------------------------------------------------------------------------
# Triton kernels (interpreter on CPU, real on CUDA)
triton_mod = pytest.importorskip("lateint_kernels.triton.maxsim", reason="triton not installed")


TRITON_DEVICES = ["cuda"] if torch.cuda.is_available() else ["cpu"]  # cpu = interpreter


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("lq, dim, mask_mode", [(1, 16, "ignore"), (33, 32, "zero"), (32, 96, "ignore")])
def test_triton_forward_and_argmax(device, lq, dim, mask_mode):
    lengths = [1, 0, 7, 40, 33, 2]
    q, d, off = corpus(lengths, dim, nq=2, lq=lq, seed=61 + lq)
    qm = torch.rand(2, lq) > 0.25
    pad = torch.tensor([True, False, True, False, True, True])
    cand = torch.tensor([[0, 5, -1], [3, 3, 1]])
    args = [t.to(device) for t in (q, qm, d, off)] + [pad.to(device)]
    s, a = triton_mod.maxsim_argmax_triton(args[0], args[1], args[2], args[3], None, args[4], mask_mode)
    ws, wa = _ref64(q, d, off, query_mask=qm, mask_mode=mask_mode, doc_padded=pad)
    _close(s.cpu(), ws, 1e-5, 1e-5)
    assert torch.equal(a.cpu().long(), wa)
    sc = triton_mod.maxsim_candidates_triton(args[0], args[1], args[2], args[3], cand.to(device), args[4],
                                             mask_mode)
    wc = ref.maxsim_candidates_ref(q.double(), d.double(), off, cand, query_mask=qm, mask_mode=mask_mode,
                                   doc_padded=pad)
    _close(sc.cpu(), wc, 1e-5, 1e-5)


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("use_cand", [False, True])
def test_triton_backward(device, use_cand):
    lengths = [3, 0, 17, 20, 1]
    q, d, off = corpus(lengths, 32, nq=2, lq=17, seed=67)
    qm = torch.rand(2, 17) > 0.2
    cand = torch.tensor([[0, 2, 4], [4, 4, -1]]) if use_cand else None
    g = torch.randn(2, 3 if use_cand else 5)
    dq, dd = triton_mod.maxsim_backward_triton(g.to(device), q.to(device), qm.to(device), d.to(device),
                                               off.to(device), None if cand is None else cand.to(device),
                                               None, "ignore")
    q64 = q.double().requires_grad_(True)
    d64 = d.double().requires_grad_(True)
    s, _ = ref.maxsim_argmax_ref(q64, d64, off, cand, query_mask=qm)
    s = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
    (s * g.double()).sum().backward()
    torch.testing.assert_close(dq.cpu().double(), q64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dd.cpu().double(), d64.grad, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------
# backend choice and fallback
def test_backend_for():
    assert lk.backend_for("maxsim", "cpu") == ("cpp" if lk.NATIVE_LOADED else "reference")
    assert lk.backend_for("maxsim_candidates", "cuda") in ("cuda", "triton", "reference")
    with pytest.raises(ValueError, match="unknown op"):
        lk.backend_for("maxsum", "cpu")


def _run_py(code, **env):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    e = dict(os.environ, **env)
    e["PYTHONPATH"] = os.pathsep.join([root, e.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                          cwd=os.path.dirname(__file__), timeout=300)


def _backend_and_error_in_subprocess(**env):
    """(backend of maxsim on CPU, max |ours - float64 reference|, stderr) in a fresh process."""
    code = ("import warnings; warnings.simplefilter('always');"
            "import torch, lateint_kernels as lk; from _data import corpus;"
            "q,d,off=corpus([3,0,9],16,nq=2,lq=5);"
            "s=lk.maxsim(q,d,off, query_mask=torch.ones(2,5,dtype=torch.bool));"
            "w=lk.reference.maxsim_ref(q.double(),d.double(),off);"
            "print(lk.backend_for('maxsim','cpu'), float((s.double()-w).abs().max()))")
    r = _run_py(code, **env)
    assert r.returncode == 0, r.stderr
    name, err = r.stdout.split()
    return name, float(err), r.stderr


def test_forced_reference_env():
    name, err, _ = _backend_and_error_in_subprocess(LATEINT_BACKEND="reference")
    assert name == "reference" and err < 1e-5


def test_fallback_without_native_extension_warns_once():
    name, err, stderr = _backend_and_error_in_subprocess(LATEINT_SKIP_EXT="1")
    assert name == "reference" and err < 1e-5
    assert stderr.count("native extension not available") == 1


@pytest.mark.parametrize("mask_mode", ["ignore", "zero"])
def test_fallback_backward_matches_autograd_of_the_reference(mask_mode):
    """Without the extension the backward op runs on the reference, below the autograd key
    (where autograd records nothing): its closed form must equal autograd through the
    float64 reference, with masks, an empty document and candidates."""
    code = ("import torch, lateint_kernels as lk; from _data import corpus;"
            "q,d,off=corpus([3,0,9,17],16,nq=3,lq=5,seed=4); qm=torch.rand(3,5)>0.3;"
            "pad=torch.tensor([True,False,True,False]); c=torch.tensor([[2,0,-1],[1,1,3],[-1,-1,0]]);"
            "out=[]\n"
            "for cand in (None, c):\n"
            " q1=q.clone().requires_grad_(); d1=d.clone().requires_grad_(); q2=q.double().requires_grad_();"
            " d2=d.double().requires_grad_(); kw=dict(query_mask=qm, mask_mode=%r, doc_padded=pad)\n"
            " s=lk.maxsim(q1,d1,off,**kw) if cand is None else lk.maxsim_candidates(q1,d1,off,cand,**kw)\n"
            " r=lk.reference.maxsim_ref(q2,d2,off,**kw) if cand is None else "
            "lk.reference.maxsim_candidates_ref(q2,d2,off,cand,**kw)\n"
            " g=torch.randn(s.shape).masked_fill(~torch.isfinite(s),0); s.backward(g); r.backward(g.double())\n"
            " out += [float((q1.grad-q2.grad).abs().max()), float((d1.grad-d2.grad).abs().max())]\n"
            "print(max(out), lk.backend_for('maxsim_backward','cpu'))" % mask_mode)
    r = _run_py(code, LATEINT_SKIP_EXT="1")
    assert r.returncode == 0, r.stderr[-2000:]
    err, backend = r.stdout.split()
    assert backend == "reference" and float(err) < 1e-5


# -------------------------------------------------------------------------------------
# the op on CUDA (Triton when importable, else the CUDA C++ kernel) — runs only with a GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-5), (torch.float16, 2e-5)])
@pytest.mark.parametrize("lq", [1, 32, 33])
@pytest.mark.parametrize("mask_mode", ["ignore", "zero"])
def test_cuda_op_matches_reference(dtype, tol, lq, mask_mode):
    lengths = AWKWARD_LENGTHS + random_lengths(200, 1, 300, seed=lq)
    q, d, off = corpus(lengths, 128, nq=3, lq=lq, seed=71 + lq, dtype=dtype)
    nd = len(lengths)
    qm = torch.rand(3, lq) > 0.2
    pad = torch.rand(nd) > 0.5
    cand = torch.randint(-1, nd, (3, 17))
    c = lambda t: t.cuda()
    got = lk.maxsim(c(q), c(d), c(off), query_mask=c(qm), mask_mode=mask_mode, doc_padded=c(pad))
    want, wa = _ref64(q, d, off, query_mask=qm, mask_mode=mask_mode, doc_padded=pad)
    _close(got.cpu(), want, tol, tol)
    s, a = lkt.ops.maxsim_argmax(c(q), c(qm), c(d), c(off), None, c(pad), mask_mode)
    assert (a.cpu().long() == wa).float().mean() > 0.999
    gc = lk.maxsim_candidates(c(q), c(d), c(off), c(cand), query_mask=c(qm), mask_mode=mask_mode, doc_padded=c(pad))
    wc = ref.maxsim_candidates_ref(q.double(), d.double(), off, cand, query_mask=qm, mask_mode=mask_mode,
                                   doc_padded=pad)
    _close(gc.cpu(), wc, tol, tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("use_cand", [False, True])
def test_cuda_op_backward(use_cand):
    lengths = [3, 0, 17, 40, 1, 64, 300]
    q, d, off = corpus(lengths, 128, nq=3, lq=32, seed=73)
    qm = torch.rand(3, 32) > 0.2
    cand = torch.tensor([[0, 2, 5, -1], [5, 5, 1, 3], [4, 3, 6, 0]]) if use_cand else None
    g = torch.randn(3, 4 if use_cand else 7)
    qa = q.cuda().requires_grad_(True)
    da = d.cuda().requires_grad_(True)
    if use_cand:
        out = lk.maxsim_candidates(qa, da, off.cuda(), cand.cuda(), query_mask=qm.cuda())
    else:
        out = lk.maxsim(qa, da, off.cuda(), query_mask=qm.cuda())
    out = torch.where(torch.isfinite(out), out, torch.zeros_like(out))
    (out * g.cuda()).sum().backward()
    q64 = q.double().requires_grad_(True)
    d64 = d.double().requires_grad_(True)
    s, _ = ref.maxsim_argmax_ref(q64, d64, off, cand, query_mask=qm)
    s = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
    (s * g.double()).sum().backward()
    torch.testing.assert_close(qa.grad.cpu().double(), q64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(da.grad.cpu().double(), d64.grad, rtol=1e-5, atol=1e-5)
    # deterministic: same bits twice
    g1 = torch.ops.lateint_kernels.maxsim_backward(g.cuda(), q.cuda(), qm.cuda(), d.cuda(), off.cuda(),
                                                   None if cand is None else cand.cuda(), None, "ignore")
    g2 = torch.ops.lateint_kernels.maxsim_backward(g.cuda(), q.cuda(), qm.cuda(), d.cuda(), off.cuda(),
                                                   None if cand is None else cand.cuda(), None, "ignore")
    assert torch.equal(g1[0], g2[0]) and torch.equal(g1[1], g2[1])


@pytest.mark.skipif(not (torch.cuda.is_available() and lk.NATIVE_LOADED
                         and torch._C._dispatch_has_kernel_for_dispatch_key("lateint_kernels::maxsim_cuda_simt", "CUDA")),
                    reason="CUDA C++ kernels not built")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-5)])
def test_cuda_simt_kernels(dtype, tol):
    lengths = AWKWARD_LENGTHS + random_lengths(100, 1, 300, seed=3)
    q, d, off = corpus(lengths, 128, nq=3, lq=33, seed=79, dtype=dtype)
    nd = len(lengths)
    qm = torch.rand(3, 33) > 0.2
    pad = torch.rand(nd) > 0.5
    cand = torch.randint(-1, nd, (3, 11))
    ops = torch.ops.lateint_kernels
    c = lambda t: t.cuda()
    for mode in ("ignore", "zero"):
        s, a = lkt.ops.maxsim_argmax_cuda_simt(c(q), c(qm), c(d), c(off), None, c(pad), mode)
        ws, wa = _ref64(q, d, off, query_mask=qm, mask_mode=mode, doc_padded=pad)
        _close(s.cpu(), ws, tol, tol)
        _close(ops.maxsim_cuda_simt(c(q), c(qm), c(d), c(off), c(pad), mode).cpu(), ws, tol, tol)
        assert (a.cpu().long() == wa).float().mean() > 0.999
        wc = ref.maxsim_candidates_ref(q.double(), d.double(), off, cand, query_mask=qm, mask_mode=mode, doc_padded=pad)
        _close(ops.maxsim_candidates_cuda_simt(c(q), c(qm), c(d), c(off), c(cand), c(pad), mode).cpu(), wc, tol, tol)
    g = torch.randn(3, nd)
    dq, dd = ops.maxsim_backward_cuda_simt(c(g), c(q), c(qm), c(d), c(off), None, None, "ignore")
    rq, rd = ops.maxsim_backward(g, q, qm, d, off, None, None, "ignore")  # CPU kernel, checked above
    # gradients come back in the input dtype: two float32 sums rounded to bf16 may differ by an ulp
    out_tol = 1e-2 if dtype == torch.bfloat16 else tol * 10
    torch.testing.assert_close(dq.cpu().float(), rq.float(), rtol=out_tol, atol=out_tol)
    torch.testing.assert_close(dd.cpu().float(), rd.float(), rtol=out_tol, atol=out_tol)


@pytest.mark.parametrize("case, match", [("off_nonmono", "doc_offsets"), ("off_end", "doc_offsets"),
                                         ("cand", "candidates"), ("q_nan", "queries"), ("d_inf", "doc_tokens")])
def test_triton_in_kernel_checks(case, match):
    dev = TRITON_DEVICES[0]
    q, d, off = corpus([3, 4, 5], 16, nq=2, lq=4, seed=83)
    cand = torch.tensor([[0, 2], [1, -1]])
    if case == "off_nonmono": off = torch.tensor([0, 5, 3, 12])
    if case == "off_end": off = torch.tensor([0, 3, 7, 11])
    if case == "cand": cand = torch.tensor([[0, 3], [1, 1]])
    if case == "q_nan": q[0, 3, 1] = float("nan")
    if case == "d_inf": d[4, 2] = float("-inf")
    c = lambda t: t.to(dev)
    with pytest.raises(ValueError, match=match):
        triton_mod.maxsim_candidates_triton(c(q), None, c(d), c(off), c(cand), None, "ignore")
    # masked NaN query tokens are allowed
    if case == "q_nan":
        qm = torch.ones(2, 4, dtype=torch.bool)
        qm[0, 3] = False
        out = triton_mod.maxsim_triton(c(q), c(qm), c(d), c(off), None, "ignore")
        assert torch.isfinite(out).all()


@pytest.mark.skipif(not lk.NATIVE_LOADED, reason="native extension not built")
def test_opcheck_argmax_and_backward():
    for pair in _samples(False):
        for q, qm, d, off, pad, mode in pair:
            for cand in (None, torch.tensor([[0, 1], [2, -1]])):
                torch.library.opcheck(lkt.ops.maxsim_argmax.default,
                                      (q, qm, d, off, cand, pad, mode))
                ns = cand.shape[1] if cand is not None else off.shape[0] - 1
                g = torch.randn(q.shape[0], ns)
                torch.library.opcheck(torch.ops.lateint_kernels.maxsim_backward.default,
                                      (g, q, qm, d, off, cand, pad, mode))


@pytest.mark.skipif(not lk.NATIVE_LOADED, reason="native extension not built")
def test_cpu_isa_switch():
    best = lk.cpu_isa("best")
    assert lk.cpu_isa() == best
    assert lk.cpu_isa("scalar") == "scalar" and lk.cpu_isa() == "scalar"
    assert lk.cpu_isa("best") == best
    with pytest.raises(ValueError, match="set"):
        lk.cpu_isa("sse9")
    assert lkt.bf16_dot() in (0, 1)


def test_fuzz_fresh_inputs_against_float64():
    """Fresh random problems on every run (the seed is printed on failure): random shapes,
    lengths, masks, mode, dtype and ISA, forward + candidates + backward vs float64."""
    seed = int.from_bytes(os.urandom(4), "little")
    g = torch.Generator().manual_seed(seed)
    ri = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))
    for it in range(25):
        nq, lq, dim, nd = ri(1, 4), ri(1, 40), ri(1, 160), ri(1, 30)
        lengths = [ri(0, 3) if ri(0, 3) == 0 else ri(1, 120) for _ in range(nd)]
        dtype = [torch.float32, torch.float16, torch.bfloat16][ri(0, 2)]
        q, d, off = corpus(lengths, dim, nq=nq, lq=lq, seed=seed % 100000 + it, dtype=dtype)
        qm = torch.rand(nq, lq, generator=g) > 0.3
        pad = torch.rand(nd, generator=g) > 0.5
        mode = ["ignore", "zero"][ri(0, 1)]
        isa_name = ISAS[ri(0, len(ISAS) - 1)] if ISAS else None
        ctx = f"seed={seed} it={it} nq={nq} lq={lq} dim={dim} dtype={dtype} mode={mode} isa={isa_name}"
        if isa_name:
            lk.cpu_isa(isa_name)
        try:
            got = lk.maxsim(q, d, off, query_mask=qm, mask_mode=mode, doc_padded=pad)
            want, _ = _ref64(q, d, off, query_mask=qm, mask_mode=mode, doc_padded=pad)
            assert torch.allclose(got.double(), want, rtol=3e-5, atol=3e-5), ctx
            cand = torch.randint(-1, nd, (nq, ri(1, 6)), generator=g)
            gc = lk.maxsim_candidates(q, d, off, cand, query_mask=qm, mask_mode=mode, doc_padded=pad)
            wc = ref.maxsim_candidates_ref(q.double(), d.double(), off, cand, query_mask=qm, mask_mode=mode,
                                           doc_padded=pad)
            fin = torch.isfinite(wc)
            assert torch.equal(fin, torch.isfinite(gc)), ctx
            assert torch.allclose(gc.double()[fin], wc[fin], rtol=3e-5, atol=3e-5), ctx
            if dtype == torch.float32:
                gr = torch.randn(nq, nd, generator=g)
                dq, dd = torch.ops.lateint_kernels.maxsim_backward(gr, q, qm, d, off, None, pad, mode)
                q64 = q.double().requires_grad_(True)
                d64 = d.double().requires_grad_(True)
                s = ref.maxsim_ref(q64, d64, off, query_mask=qm, mask_mode=mode, doc_padded=pad)
                (s * gr.double()).sum().backward()
                # no path to an input (every token masked or every document empty): grad None = 0
                wq = q64.grad if q64.grad is not None else torch.zeros_like(q64)
                wd = d64.grad if d64.grad is not None else torch.zeros_like(d64)
                assert torch.allclose(dq.double(), wq, rtol=1e-5, atol=1e-5), ctx
                assert torch.allclose(dd.double(), wd, rtol=1e-5, atol=1e-5), ctx
        finally:
            if isa_name:
                lk.cpu_isa("best")


@pytest.mark.skipif("avx512bf16" not in ISAS, reason="processor has no AVX512-BF16")
@pytest.mark.parametrize("path", ["dot", "convert"])
def test_bf16_paths_forced(path):
    """Both bf16 CPU paths through the whole op (the process picks one by timing)."""
    code = ("import torch, lateint_kernels as lk; from _data import corpus;"
            "from lateint_kernels import reference as ref; import lateint_kernels.testing as lkt;"
            "q,d,off=corpus([1,0,13,64,300,5,97],128,nq=3,lq=33,seed=5,dtype=torch.bfloat16);"
            "qm=torch.rand(3,33)>0.2;"
            "s=lk.maxsim(q,d,off,query_mask=qm); c=lk.maxsim_candidates(q,d,off,torch.tensor([[6,0],[4,4],[1,-1]]));"
            "w=ref.maxsim_ref(q.double(),d.double(),off,query_mask=qm);"
            "print(lkt.bf16_dot(), float((s.double()-w).abs().max()/w.abs().max()))")
    r = _run_py(code, LATEINT_BF16_PATH=path)
    assert r.returncode == 0, r.stderr
    dot, err = r.stdout.split()
    assert int(dot) == (1 if path == "dot" else 0)
    assert float(err) < 2e-5


@pytest.mark.skipif(not lk.NATIVE_LOADED, reason="native extension not built")
@pytest.mark.parametrize("use_cand", [False, True])
def test_backward_query_chunking_is_bit_identical(use_cand):
    """The CPU backward holds the recomputed argmax for a chunk of queries at a time; with a
    tiny chunk (one query per chunk) the gradients must be the same bits."""
    code = ("import torch, lateint_kernels as lk; from _data import corpus, random_lengths;"
            "q,d,off=corpus(random_lengths(60,0,90,seed=2),64,nq=7,lq=33,seed=3);"
            "qm=torch.rand(7,33,generator=torch.Generator().manual_seed(1))>0.2;"
            f"cand=torch.randint(-1,60,(7,9),generator=torch.Generator().manual_seed(2)) if {use_cand} else None;"
            "g=torch.randn(7,9 if cand is not None else 60,generator=torch.Generator().manual_seed(4));"
            "dq,dd=torch.ops.lateint_kernels.maxsim_backward(g,q,qm,d,off,cand,None,'ignore');"
            "import hashlib;print(hashlib.sha256(dq.numpy().tobytes()+dd.numpy().tobytes()).hexdigest())")
    full = _run_py(code)
    tiny = _run_py(code, LATEINT_BWD_CHUNK_BYTES="1")
    assert full.returncode == 0 and tiny.returncode == 0, full.stderr + tiny.stderr
    assert full.stdout.strip() == tiny.stdout.strip()


def test_non_contiguous_inputs(isa):
    q, d, off = corpus([5, 0, 40, 7], 64, nq=3, lq=9, seed=89)
    big_q = torch.randn(9, 3, 128)
    big_q[:, :, ::2] = q.transpose(0, 1)
    qv = big_q[:, :, ::2].transpose(0, 1)          # [3, 9, 64] view, strided
    big_d = torch.randn(d.shape[0], 128)
    big_d[:, 1::2] = d
    dv = big_d[:, 1::2]
    assert not qv.is_contiguous() and not dv.is_contiguous()
    want, _ = _ref64(q, d, off)
    _close(lk.maxsim(qv, dv, off), want, 1e-5, 1e-5)
    qg = qv.detach().clone().requires_grad_(True)
    lk.maxsim(qg, dv, off).sum().backward()
    assert qg.grad.shape == qv.shape and torch.isfinite(qg.grad).all()


@pytest.mark.parametrize("dim", [1, 300])
def test_unusual_dims(isa, dim):
    q, d, off = corpus([3, 1, 20, 0], dim, nq=2, lq=5, seed=97)
    want, _ = _ref64(q, d, off)
    _close(lk.maxsim(q, d, off), want, 1e-5, 1e-5)


@pytest.mark.parametrize("case, match", [("q_nan", "queries"), ("d_inf", "doc_tokens"),
                                         ("off_nonmono", "doc_offsets"), ("cand", "candidates")])
def test_bad_data_named_on_the_reference_path(monkeypatch, case, match):
    """The forced-reference path has no kernel-side checks: the wrapper makes them."""
    monkeypatch.setenv("LATEINT_BACKEND", "reference")
    q, d, off = _base()
    cand = torch.tensor([[0, 2], [1, 1]])
    if case == "q_nan": q[0, 0, 0] = float("nan")
    if case == "d_inf": d[2, 3] = float("inf")
    if case == "off_nonmono": off = torch.tensor([0, 5, 3, 12])
    if case == "cand": cand = torch.tensor([[0, 3], [1, 1]])
    with pytest.raises(ValueError, match=match):
        lk.maxsim_candidates(q, d, off, cand)
