"""lateint.sentence_transformers against sentence-transformers 6.2.0's own calls, with the
switch off and on: MaxSim scores and gradients (util functions, MultiVectorEncoder,
the cached multi-vector loss), HierarchicalTokenPooling bit for bit (their class
switched, our subclass, a saved checkpoint), and the version gate.

Runs in the adapters' environment (scripts/install.sh makes .venv-st6, where
sentence-transformers 6 lives apart from PyLate's 5.3.0); elsewhere it skips.
tests/test_adapters_env.py runs it there with LATEINT_ADAPTERS_ENV=1, which makes a
missing or wrong sentence-transformers a failure instead of a skip."""
import functools
import os

import pytest
import torch
import torch.nn.functional as F

import lateint_kernels as lk

from _data import clustered_docs

if os.environ.get("LATEINT_ADAPTERS_ENV") == "1":
    import sentence_transformers as st
else:
    st = pytest.importorskip("sentence_transformers")
if not st.__version__.startswith("6."):
    if os.environ.get("LATEINT_ADAPTERS_ENV") == "1":
        raise RuntimeError(f"LATEINT_ADAPTERS_ENV=1 but sentence-transformers is {st.__version__}")
    pytest.skip(f"sentence-transformers {st.__version__} here; these tests run in .venv-st6 (6.2.0)",
                allow_module_level=True)

import lateint.sentence_transformers as lst  # noqa: E402
from sentence_transformers.multi_vector_encoder.modules.token_pooling import (  # noqa: E402
    HierarchicalTokenPooling as TheirPooling,
)
from sentence_transformers.util import similarity as sim  # noqa: E402

pytestmark = pytest.mark.skipif(not lk.NATIVE_LOADED, reason="native extension not built")


@pytest.fixture(autouse=True)
def _switched_off_after():
    yield
    lst.disable()


docs = functools.partial(clustered_docs, dim=32, lo=1, hi=40)


# ---------------------------------------------------------------------------------------
# scores
@pytest.mark.parametrize("fn, kernel", [("maxsim", "maxsim"), ("mean_maxsim", "maxsim"),
                                        ("maxsim_pairwise", "maxsim_candidates"),
                                        ("mean_maxsim_pairwise", "maxsim_candidates")])
def test_maxsim_lists_off_and_on(fn, kernel, spy):
    pairwise = fn.endswith("pairwise")
    q, d = docs(7 if pairwise else 5, seed=1, lo=2, hi=12), docs(7 if pairwise else 9, seed=2)
    off = getattr(st.util, fn)(q, d)
    calls = spy(kernel)
    lst.enable()
    on = getattr(st.util, fn)(q, d)
    assert calls.n >= 1
    assert on.dtype == off.dtype == torch.float32 and on.shape == off.shape
    torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn", ["maxsim", "mean_maxsim", "maxsim_pairwise", "mean_maxsim_pairwise"])
def test_lists_with_an_empty_document_and_gradients(fn):
    """The list fast path: ragged queries, a document without tokens (their sentinel), and
    gradients into every list entry."""
    def run():
        q = [t.clone().requires_grad_() for t in docs(4, seed=14, lo=2, hi=9)]
        d = docs(4, seed=15)
        d[1] = torch.zeros(0, 32)
        d = [t.clone().requires_grad_() for t in d]
        s = getattr(st.util, fn)(q, d)
        (s * torch.linspace(-1, 1, s.numel()).view_as(s)).sum().backward()
        return [s.detach()] + [t.grad if t.grad is not None else torch.zeros_like(t) for t in q + d]

    off = run()
    lst.enable()
    on = run()
    assert float(off[0].min()) < -1e3  # the empty document's sentinel is in there
    for x, y in zip(on, off):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_padded_with_masks_and_an_empty_document_off_and_on():
    g = torch.Generator().manual_seed(5)
    a = F.normalize(torch.randn(3, 6, 16, generator=g), dim=-1)
    b = F.normalize(torch.randn(4, 9, 16, generator=g), dim=-1)
    a_mask = torch.ones(3, 6, dtype=torch.bool)
    a_mask[1, 4:] = False
    b_mask = torch.rand(4, 9, generator=g) > 0.3
    b_mask[2] = False  # no token left: sentence-transformers' sentinel score
    b_mask[0, 0] = True
    off = st.util.maxsim(a, b, a_mask=a_mask, b_mask=b_mask)
    off_pairs = st.util.maxsim_pairwise(a, b[:3], a_mask=a_mask, b_mask=b_mask[:3])
    lst.enable()
    on = st.util.maxsim(a, b, a_mask=a_mask, b_mask=b_mask)
    on_pairs = st.util.maxsim_pairwise(a, b[:3], a_mask=a_mask, b_mask=b_mask[:3])
    torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(on_pairs, off_pairs, rtol=1e-5, atol=1e-5)
    assert bool((on[:, 2] == off[:, 2]).all()) and float(on[0, 2]) < -1e3


def test_gradients_off_and_on():
    def run():
        g = torch.Generator().manual_seed(6)
        a = F.normalize(torch.randn(4, 5, 24, generator=g), dim=-1).requires_grad_()
        b = F.normalize(torch.randn(6, 11, 24, generator=g), dim=-1).requires_grad_()
        b_mask = torch.rand(6, 11, generator=g) > 0.2
        b_mask[:, 0] = True
        s = st.util.maxsim(a, b, b_mask=b_mask)
        (s * torch.linspace(-1, 1, s.numel()).view_as(s)).sum().backward()
        return s.detach(), a.grad, b.grad

    off = run()
    lst.enable()
    on = run()
    for x, y in zip(on, off):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_bfloat16_and_float64_inputs():
    q = [t.to(torch.bfloat16) for t in docs(3, seed=7, lo=2, hi=8)]
    d = [t.to(torch.bfloat16) for t in docs(5, seed=8)]
    off = st.util.maxsim(q, d)
    lst.enable()
    on = st.util.maxsim(q, d)
    torch.testing.assert_close(on, off, rtol=2e-2, atol=5e-2)  # theirs multiplies in bf16
    q64, d64 = [t.double() for t in docs(2, seed=9)], [t.double() for t in docs(3, seed=10)]
    lst.disable()
    off64 = st.util.maxsim(q64, d64)
    lst.enable()
    assert torch.equal(st.util.maxsim(q64, d64), off64)  # float64 runs their code


# ---------------------------------------------------------------------------------------
# the model and the cached loss
@pytest.fixture(scope="module")
def model():
    from lateint.model import minilm_dir

    m = st.MultiVectorEncoder(minilm_dir(), device="cpu")
    torch.manual_seed(0)
    return m


QUERIES = ["what is late interaction", "how are cats and dogs different", "which kernel scores tokens"]
DOCS = ["ColBERT scores every query token against the tokens of a document and sums the maxima.",
        "Cats sleep most of the day while dogs want to walk.",
        "A kernel computes MaxSim over packed, variable-length documents on the CPU.",
        "The weather is mild today."]


def test_model_similarity_off_and_on(model):
    q = model.encode_query(QUERIES)
    d = model.encode_document(DOCS)
    off, off_p = model.similarity(q, d), model.similarity_pairwise(q, d[:3])
    lst.enable()
    on, on_p = model.similarity(q, d), model.similarity_pairwise(q, d[:3])
    torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(on_p, off_p, rtol=1e-5, atol=1e-5)


def test_cached_loss_and_gradients_off_and_on(model, spy):
    from sentence_transformers.multi_vector_encoder.losses import CachedMultiVectorMultipleNegativesRankingLoss

    loss_fn = CachedMultiVectorMultipleNegativesRankingLoss(model, mini_batch_size=2)

    def run():
        model.zero_grad(set_to_none=True)
        feats = [model.preprocess(QUERIES), model.preprocess(DOCS[:3])]
        loss = loss_fn(feats, None)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads

    off_loss, off_grads = run()
    calls = spy("maxsim")
    lst.enable()
    on_loss, on_grads = run()
    assert calls.n >= 1
    torch.testing.assert_close(on_loss, off_loss, rtol=1e-5, atol=1e-6)
    assert off_grads.keys() == on_grads.keys() and len(off_grads) > 10
    for name in off_grads:
        torch.testing.assert_close(on_grads[name], off_grads[name], rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------
# token pooling
@pytest.mark.parametrize("pool_factor", [2, 3, 1.5])
def test_their_pooling_class_switched_is_bit_identical(pool_factor, spy):
    d = docs(60, dim=48, lo=1, hi=90, seed=11)
    pooling = TheirPooling(pool_factor=pool_factor)
    off = pooling.pool(d)
    calls = spy("token_pool_list")
    lst.enable()
    on = pooling.pool(d)
    assert calls.n == 1  # one call for the whole batch
    assert len(on) == len(off) and all(torch.equal(x, y) for x, y in zip(on, off))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("dim", [7, 130])
def test_their_pooling_class_switched_other_dtypes(dtype, dim, spy):
    """Half types (their half-precision sums, then F.normalize in float32), float64, and
    dims with a tail past torch's vector width: bit for bit."""
    d = [t.to(dtype) for t in docs(40, dim=dim, lo=1, hi=90, seed=dim)]
    pooling = TheirPooling(pool_factor=2)
    off = pooling.pool(d)
    calls = spy("token_pool_list")
    lst.enable()
    on = pooling.pool(d)
    assert calls.n == 1
    assert all(x.dtype == dtype for x in on)
    assert len(on) == len(off) and all(torch.equal(x, y) for x, y in zip(on, off))


@pytest.mark.parametrize("side", ["left", "right"])
def test_our_subclass_on_padded_input(side):
    d = docs(12, dim=16, lo=2, hi=30, seed=12)
    padded = torch.nn.utils.rnn.pad_sequence(d, batch_first=True, padding_side=side)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(t), dtype=torch.bool) for t in d], batch_first=True,
                                           padding_side=side)
    theirs = TheirPooling(pool_factor=2, normalize_embeddings=False)
    ours = lst.HierarchicalTokenPooling(pool_factor=2, normalize_embeddings=False)
    assert isinstance(ours, TheirPooling)
    for kw in (dict(attention_mask=mask), dict()):
        want = theirs.pool(padded, padding_side=side, **kw)
        got = ours.pool(padded, padding_side=side, **kw)
        assert torch.equal(got, want)
    assert ours.pool(d, task="query") is d  # tasks other than "document" pass through


def test_pooling_gradients_match_theirs():
    d = docs(6, dim=16, lo=3, hi=30, seed=13)

    def run(module):
        xs = [t.clone().requires_grad_() for t in d]
        out = module.pool(xs)
        sum(((o * torch.arange(o.numel()).view_as(o) / o.numel()).sum() for o in out)).backward()
        return out, [x.grad for x in xs]

    (o1, g1), (o2, g2) = run(TheirPooling(pool_factor=2)), run(lst.HierarchicalTokenPooling(pool_factor=2))
    assert all(torch.equal(a, b) for a, b in zip(o1, o2))
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_checkpoint_with_our_pooling_saves_loads_and_encodes_identically(model, tmp_path):
    modules = [model[i] for i in range(len(model))] + [lst.HierarchicalTokenPooling(pool_factor=2)]
    ours = st.MultiVectorEncoder(modules=modules, device="cpu")
    theirs = st.MultiVectorEncoder(modules=[model[i] for i in range(len(model))] + [TheirPooling(pool_factor=2)],
                                   device="cpu")
    want = theirs.encode_document(DOCS)
    got = ours.encode_document(DOCS)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert any(a.shape[0] < b.shape[0] for a, b in zip(got, model.encode_document(DOCS)))  # it pooled
    ours.save(str(tmp_path / "ckpt"))
    import json
    mods = json.loads((tmp_path / "ckpt" / "modules.json").read_text())
    assert mods[-1]["type"] == "lateint.sentence_transformers.HierarchicalTokenPooling"
    with pytest.raises(ValueError, match="trust_remote_code"):  # their rule for any module of another package
        st.MultiVectorEncoder(str(tmp_path / "ckpt"), device="cpu")
    loaded = st.MultiVectorEncoder(str(tmp_path / "ckpt"), device="cpu", trust_remote_code=True)
    assert type(loaded[len(loaded) - 1]).__name__ == "HierarchicalTokenPooling"
    assert loaded[len(loaded) - 1].pool_factor == 2 and loaded[len(loaded) - 1].normalize_embeddings is True
    again = loaded.encode_document(DOCS)
    assert all(torch.equal(a, b) for a, b in zip(again, want))
    assert all(a.shape == b.shape for a, b in zip(loaded.encode_query(QUERIES), model.encode_query(QUERIES)))


def test_their_class_in_a_model_switched_encodes_identically(model):
    m = st.MultiVectorEncoder(modules=[model[i] for i in range(len(model))] + [TheirPooling(pool_factor=3)],
                              device="cpu")
    off = m.encode_document(DOCS)
    lst.enable()
    on = m.encode_document(DOCS)
    assert all(torch.equal(a, b) for a, b in zip(on, off))
    lst.disable()
    assert all(torch.equal(a, b) for a, b in zip(m.encode_document(DOCS), off))


# ---------------------------------------------------------------------------------------
# the switch itself
def test_enable_disable_restore_their_functions():
    before = (sim._maxsim_score_documents, sim._maxsim_score_pairs, TheirPooling.forward,
              TheirPooling.__dict__.get("pool"), TheirPooling.pool_one)
    lst.enable()
    assert lst.is_enabled() and sim._maxsim_score_documents is lst._score_documents
    lst.enable()  # idempotent
    lst.disable()
    after = (sim._maxsim_score_documents, sim._maxsim_score_pairs, TheirPooling.forward,
             TheirPooling.__dict__.get("pool"), TheirPooling.pool_one)
    assert before == after and not lst.is_enabled()
    import importlib
    for holder in lst._MAXSIM_HOLDERS:
        mod = importlib.import_module(holder)
        assert mod.maxsim is sim.maxsim and mod.maxsim_pairwise is sim.maxsim_pairwise
        assert mod.maxsim is not lst._maxsim
    with lst.enabled(pooling=False):
        assert sim._maxsim_score_documents is lst._score_documents
        assert TheirPooling.forward is before[2]
    assert sim._maxsim_score_documents is before[0]


def test_version_gate(monkeypatch):
    monkeypatch.setattr(st, "__version__", "6.3.0")
    with pytest.raises(RuntimeError, match="tested with sentence-transformers 6.2.0"):
        lst.enable()
    assert not lst.is_enabled()
    with pytest.warns(UserWarning, match="untested"):
        lst.enable(allow_untested=True)
    lst.disable()
    monkeypatch.setattr(st, "__version__", "5.3.0")
    with pytest.raises(RuntimeError, match="6.x"):
        lst.enable(allow_untested=True)
