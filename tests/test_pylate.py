"""The PyLate drop-in (`lateint.pylate`): PyLate's own code paths with the switch on.

Needs PyLate 1.6 (scripts/install.sh installs it without its fast-plaid pin) and the
MiniLM package; skipped without them unless LATEINT_REQUIRE_PYLATE=1 (CI)."""
import os
import sys
from unittest import mock

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import pylate  # noqa: F401
    from pylate import indexes, losses, models, rank, retrieve, scores  # noqa: F401

    from lateint.model import minilm_dir
    minilm_dir()
    _MISSING = None
except (ImportError, FileNotFoundError) as e:  # pragma: no cover - depends on the machine
    _MISSING = str(e)
if _MISSING and os.environ.get("LATEINT_REQUIRE_PYLATE") == "1":
    raise RuntimeError(f"LATEINT_REQUIRE_PYLATE=1 but PyLate or the model is unavailable: {_MISSING}")
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"PyLate unavailable: {_MISSING}")

import lateint_kernels as lk  # noqa: E402

if _MISSING is None:
    import lateint.pylate as lp
    from lateint.plaid import PLAIDIndex
    from lateint.synthetic import clustered_corpus

    ORIG = {name: getattr(scores, name) for name in ("colbert_scores", "colbert_kd_scores",
                                                     "colbert_scores_pairwise", "ColBERTScores")}


@pytest.fixture(autouse=True)
def _switch_off_after():
    yield
    lp.disable()


@pytest.fixture
def count_kernel_calls():
    """Counts calls of lk.maxsim / lk.maxsim_candidates made through lateint.pylate."""
    calls = {"n": 0}
    real_m, real_c = lk.maxsim, lk.maxsim_candidates

    def m(*a, **k):
        calls["n"] += 1
        return real_m(*a, **k)

    def c(*a, **k):
        calls["n"] += 1
        return real_c(*a, **k)

    with mock.patch.object(lp.lk, "maxsim", m), mock.patch.object(lp.lk, "maxsim_candidates", c):
        yield calls


def _embeddings(n, L, h, gen, min_len=1, holes=True):
    centres = torch.nn.functional.normalize(torch.randn(8, h, generator=gen), dim=-1)
    x = centres[torch.randint(0, 8, (n, L), generator=gen)] + 0.6 * torch.randn(n, L, h, generator=gen)
    x = torch.nn.functional.normalize(x, dim=-1)
    lens = torch.randint(min_len, L + 1, (n,), generator=gen)
    mask = (torch.arange(L)[None] < lens[:, None]).float()
    if holes:
        mask[:, 2] *= (torch.rand(n, generator=gen) > 0.4).float()    # skiplisted tokens inside
    return x * mask[..., None], mask                                    # PyLate pads with zeros


# ---------------------------------------------------------------------------------------
# scores
@pytest.mark.parametrize("with_masks", [True, False])
def test_colbert_scores_equal_pylates(with_masks, count_kernel_calls):
    gen = torch.Generator().manual_seed(3)
    q, qm = _embeddings(5, 12, 64, gen, min_len=6)
    d, dm = _embeddings(9, 20, 64, gen)
    qm_, dm_ = (qm, dm) if with_masks else (None, None)
    ref64 = ORIG["colbert_scores"](q.double(), d.double(), qm_, dm_)     # PyLate's formula, float64
    ref32 = ORIG["colbert_scores"](q, d, qm_, dm_)
    got = lp.colbert_scores(q, d, qm_, dm_)
    assert count_kernel_calls["n"] == 1
    assert got.dtype == torch.float32 and got.shape == (5, 9)
    torch.testing.assert_close(got.double(), ref64, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, ref32, atol=1e-5, rtol=1e-5)


def test_colbert_scores_gradients_equal_pylates():
    gen = torch.Generator().manual_seed(4)
    # (no all-zero query token: its similarities all tie at 0 and the argmax, hence the
    # gradient, is an arbitrary choice in both implementations)
    q, qm = _embeddings(4, 10, 32, gen, min_len=10, holes=False)
    d, dm = _embeddings(6, 15, 32, gen)
    w = torch.randn(4, 6, generator=gen)
    a_q, a_d = q.clone().requires_grad_(), d.clone().requires_grad_()
    (lp.colbert_scores(a_q, a_d, None, dm) * w).sum().backward()
    b_q, b_d = q.double().requires_grad_(), d.double().requires_grad_()
    (ORIG["colbert_scores"](b_q, b_d, None, dm.double()) * w.double()).sum().backward()
    torch.testing.assert_close(a_q.grad.double(), b_q.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a_d.grad.double(), b_d.grad, atol=1e-5, rtol=1e-5)


def test_kd_pairwise_and_class_equal_pylates(count_kernel_calls):
    gen = torch.Generator().manual_seed(5)
    q, qm = _embeddings(3, 8, 32, gen, min_len=8)
    d, dm = _embeddings(3 * 4, 11, 32, gen)
    d4, dm4 = d.view(3, 4, 11, 32), dm.view(3, 4, 11)
    torch.testing.assert_close(lp.colbert_kd_scores(q, d4, qm, dm4),
                               ORIG["colbert_kd_scores"](q.double(), d4.double(), qm, dm4).float(), atol=1e-5, rtol=1e-5)
    dp = d[:3]
    torch.testing.assert_close(lp.colbert_scores_pairwise(q, dp),
                               ORIG["colbert_scores_pairwise"](q.double(), dp.double()).float(), atol=1e-5, rtol=1e-5)
    ragged_q = [q[0, :5], q[1], q[2, :2]]                                 # lists of any lengths
    ragged_d = [dp[0, :3], dp[1, :11], dp[2, :7]]
    torch.testing.assert_close(lp.colbert_scores_pairwise(ragged_q, ragged_d),
                               ORIG["colbert_scores_pairwise"]([t.double() for t in ragged_q],
                                                               [t.double() for t in ragged_d]).float(),
                               atol=1e-5, rtol=1e-5)
    cls = lp._colbert_scores_class()
    torch.testing.assert_close(cls()(q, d4, None, dm4), ORIG["ColBERTScores"]()(q.double(), d4.double(), None, dm4).float(),
                               atol=1e-5, rtol=1e-5)
    assert count_kernel_calls["n"] == 4


def test_pylates_backend_switch_is_honoured(count_kernel_calls, monkeypatch):
    gen = torch.Generator().manual_seed(6)
    q, _ = _embeddings(2, 6, 16, gen, min_len=6)
    d, dm = _embeddings(3, 7, 16, gen)
    lp.colbert_scores(q, d, None, dm, backend="torch")
    assert count_kernel_calls["n"] == 0
    monkeypatch.setenv("PYLATE_SCORES_BACKEND", "torch")
    lp.colbert_scores(q, d, None, dm)
    assert count_kernel_calls["n"] == 0
    monkeypatch.setenv("PYLATE_SCORES_BACKEND", "auto")
    lp.colbert_scores(q, d, None, dm)
    assert count_kernel_calls["n"] == 1
    lp.colbert_scores(q.double(), d.double(), None, dm)                 # float64: PyLate's own
    lp.colbert_scores(q, d, None, dm * 0.5)                             # non-binary mask: PyLate's own
    assert count_kernel_calls["n"] == 1
    with pytest.raises(ValueError, match="backend"):
        lp.colbert_scores(q, d, backend="nonsense")


# ---------------------------------------------------------------------------------------
# the switch
def test_enable_disable_patches_every_binding():
    from pylate.losses.distillation import Distillation
    from pylate.models.colbert import ColBERT
    pool = ColBERT.pool_embeddings_hierarchical
    lp.enable()
    lp.enable()                                                         # idempotent
    assert lp.is_enabled()
    assert scores.colbert_scores is lp.colbert_scores
    assert sys.modules["pylate.scores.colbert"].colbert_scores is lp.colbert_scores
    assert sys.modules["pylate.rank.rank"].colbert_scores is lp.colbert_scores
    assert sys.modules["pylate.scores.similarity_functions"].colbert_scores_pairwise is lp.colbert_scores_pairwise
    assert lp.colbert_kd_scores in Distillation.__init__.__defaults__
    assert sys.modules["pylate.evaluation.colbert_distillation"].colbert_kd_scores is lp.colbert_kd_scores
    assert sys.modules["pylate.evaluation.colbert_triplet"].colbert_scores_pairwise is lp.colbert_scores_pairwise
    assert issubclass(scores.ColBERTScores, ORIG["ColBERTScores"]) and scores.ColBERTScores is not ORIG["ColBERTScores"]
    assert indexes.PLAID is lp.PLAID
    assert ColBERT.pool_embeddings_hierarchical is lp.pool_embeddings_hierarchical
    lp.disable()
    assert not lp.is_enabled()
    assert scores.colbert_scores is ORIG["colbert_scores"]
    assert sys.modules["pylate.rank.rank"].colbert_scores is ORIG["colbert_scores"]
    assert ORIG["colbert_kd_scores"] in Distillation.__init__.__defaults__
    assert scores.ColBERTScores is ORIG["ColBERTScores"]
    assert ColBERT.pool_embeddings_hierarchical is pool
    with lp.enabled():
        assert scores.colbert_scores is lp.colbert_scores
    assert scores.colbert_scores is ORIG["colbert_scores"]


@pytest.mark.parametrize("version", ["1.3.2", "2.0.0", "0.9"])
def test_unsupported_versions_are_refused(version, monkeypatch):
    monkeypatch.setattr(pylate, "__version__", version)
    with pytest.raises(RuntimeError, match=version.replace(".", r"\.")):
        lp.enable()
    assert not lp.is_enabled()


# ---------------------------------------------------------------------------------------
# PyLate's own code paths with the switch on
@pytest.fixture(scope="module")
def pylate_model():
    return models.ColBERT(model_name_or_path=minilm_dir(), device="cpu", query_length=16, document_length=40).eval()


def test_rerank_runs_on_our_kernels(pylate_model, count_kernel_calls):
    docs = ["The central bank raised interest rates again.", "The striker scored twice in the final.",
            "New phones were unveiled at the show.", "Rates were left unchanged by the bank."]
    q = pylate_model.encode(["bank rates", "football final"], is_query=True)
    d = pylate_model.encode(docs, is_query=False)
    ids = [["a", "b", "c", "d"], ["d", "c", "b", "a"]]
    groups = [d, d[::-1]]
    before = rank.rerank(documents_ids=ids, queries_embeddings=q, documents_embeddings=groups)
    lp.enable()
    after = rank.rerank(documents_ids=ids, queries_embeddings=q, documents_embeddings=groups)
    assert count_kernel_calls["n"] == 2                                # PyLate's loop: one call per query
    for b, a in zip(before, after):
        assert [x["id"] for x in b] == [x["id"] for x in a]
        assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], rel=1e-5)


def test_rerank_reproduces_pylates_padding_floor():
    """PyLate's rerank pads each query's candidates to its longest with zeros: a shorter
    candidate's token maxima are floored at 0. Unnormalized random vectors make many
    similarities negative, so the floor changes scores here, and the switched-on scoring
    must change them the same way."""
    gen = torch.Generator().manual_seed(9)
    q = [torch.randn(5, 16, generator=gen), torch.randn(3, 16, generator=gen)]
    groups = [[torch.randn(n, 16, generator=gen) for n in (2, 7, 1, 4)], [torch.randn(n, 16, generator=gen)
                                                                          for n in (3, 3, 6)]]
    ids = [["a", "b", "c", "d"], ["x", "y", "z"]]
    before = rank.rerank(documents_ids=ids, queries_embeddings=q, documents_embeddings=groups)
    lp.enable()
    after = rank.rerank(documents_ids=ids, queries_embeddings=q, documents_embeddings=groups)
    for b, a in zip(before, after):
        assert [x["id"] for x in a] == [x["id"] for x in b]
        assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], rel=1e-5, abs=1e-5)
    # the floor mattered: without it (each candidate scored alone) some scores differ
    alone = [float(lp.colbert_scores(q[0][None], g[None])[0, 0]) for g in groups[0]]
    by_id = {x["id"]: x["score"] for x in before[0]}
    assert any(abs(alone[j] - by_id[i]) > 1e-3 for j, i in enumerate(ids[0]))


def test_pooling_in_encode_is_ours_and_identical(pylate_model):
    docs = ["Markets fell sharply on Monday as investors worried about growth, jobs and prices.",
            "The film won three awards at the festival, including best director and best actor.", "Short."]
    before = pylate_model.encode(docs, is_query=False, pool_factor=2)
    lp.enable()
    with mock.patch.object(lp.lk, "token_pool_list", wraps=lk.token_pool_list) as spy:
        after = pylate_model.encode(docs, is_query=False, pool_factor=2)
    assert spy.call_count == 1
    for b, a in zip(before, after):
        assert torch.equal(torch.as_tensor(b), torch.as_tensor(a))


@pytest.mark.parametrize("loss_name", ["Contrastive", "CachedContrastive"])
def test_pylate_training_step_runs_on_our_ops(pylate_model, loss_name, count_kernel_calls):
    """PyLate's own loss classes, switch on vs off: same loss, same gradients."""
    m = pylate_model
    qs = ["what did the bank do with rates", "who won the final", "what was shown at the fair", "film awards"]
    ps = ["The bank raised rates.", "The home side won the final on penalties.", "Phones were shown.",
          "The film won three awards."]
    ns = ["A recipe for soup.", "The weather was mild.", "Prices of houses rose.", "A new bridge opened."]
    feats = [m.tokenize(qs, is_query=True), m.tokenize(ps, is_query=False, pad=True),
             m.tokenize(ns, is_query=False, pad=True)]

    def step():
        kw = {"mini_batch_size": 2} if loss_name == "CachedContrastive" else {}
        loss = getattr(losses, loss_name)(model=m, **kw)(sentence_features=feats)
        loss.backward()
        g = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
        m.zero_grad(set_to_none=True)
        return float(loss.detach()), g

    l0, g0 = step()
    assert count_kernel_calls["n"] == 0
    lp.enable()
    l1, g1 = step()
    assert count_kernel_calls["n"] >= 1
    assert l1 == pytest.approx(l0, rel=1e-5)
    assert float((g1 - g0).norm() / g0.norm()) <= 1e-4


def test_distillation_uses_our_kd_scores(pylate_model, count_kernel_calls):
    m = pylate_model
    lp.enable()
    loss_fn = losses.Distillation(model=m)                            # default score_metric: ours now
    feats = [m.tokenize(["bank rates"], is_query=True),
             m.tokenize(["The bank raised rates.", "Soup recipe."], is_query=False)]
    loss = loss_fn(sentence_features=feats, labels=torch.tensor([[0.9, 0.1]]))
    loss.backward()
    m.zero_grad(set_to_none=True)
    assert count_kernel_calls["n"] == 1 and torch.isfinite(loss)


# ---------------------------------------------------------------------------------------
# the index through pylate.retrieve.ColBERT
@pytest.fixture(scope="module")
def corpus():
    q, tokens, offsets, _ = clustered_corpus(300, 20, 60, 64, nq=6, lq=16, n_topics=64, topics_per_doc=4,
                                             query_topics=2, noise=1.5, seed=2)
    docs = lk.unpack(tokens, offsets)
    lens = (offsets[1:] - offsets[:-1]).tolist()
    return q, [docs[0][i, :n] for i, n in enumerate(lens)], tokens, offsets


def test_retrieve_through_pylate_equals_our_index(corpus, tmp_path):
    q, docs, tokens, offsets = corpus
    names = [f"doc-{i}" for i in range(len(docs))]
    index = lp.PLAID(index_folder=str(tmp_path), index_name="idx", nbits=4, seed=0, show_progress=False,
                     kmeans_niters=4)                                 # a fast-plaid knob: accepted, ignored
    index.add_documents(documents_ids=names, documents_embeddings=docs)
    got = retrieve.ColBERT(index=index).retrieve(queries_embeddings=list(q), k=10)
    direct = PLAIDIndex.build(tokens, offsets, nbits=4, seed=0)
    ids, sc = direct.search(q, 10)
    assert len(got) == q.shape[0]
    for row, r_ids, r_sc in zip(got, ids.tolist(), sc.tolist()):
        assert [x["id"] for x in row] == [names[i] for i in r_ids]
        assert [x["score"] for x in row] == pytest.approx(r_sc, rel=1e-6)
    # subset (one list for all queries, and one per query), persisted across instances
    sub = names[:100]
    for row in index(q, k=5, subset=sub):
        assert {x["id"] for x in row} <= set(sub)
    per_q = [names[i::7] for i in range(q.shape[0])]
    for row, s in zip(index(q, k=5, subset=per_q), per_q):
        assert {x["id"] for x in row} <= set(s)
    again = lp.PLAID(index_folder=str(tmp_path), index_name="idx")
    assert again(q, k=10) == index(q, k=10)


def test_index_updates_and_switch(corpus, tmp_path):
    q, docs, _, _ = corpus
    names = [f"d{i}" for i in range(len(docs))]
    lp.enable()
    index = indexes.PLAID(index_folder=str(tmp_path), index_name="x", override=True, show_progress=False)
    assert isinstance(index, lp.PLAID)
    index.add_documents(names[:250], docs[:250])
    index.add_documents(names[250:], docs[250:])                       # added to the existing centroids
    top = index(q[:1], k=3)[0][0]["id"]
    index.remove_documents([top, "never-added"])
    assert all(x["id"] != top for x in index(q[:1], k=10)[0])
    index.add_documents([top], [docs[names.index(top)]])               # back under the same id
    assert index(q[:1], k=3)[0][0]["id"] == top
    emb = index.get_documents_embeddings([[names[0], names[5]]])
    assert emb[0][0].shape == tuple(docs[0].shape)
    assert float(torch.nn.functional.cosine_similarity(torch.as_tensor(emb[0][0]), docs[0], dim=1).mean()) > 0.9
    with pytest.raises(ValueError, match="ids for"):
        index.add_documents(["a", "b"], docs[:1])
    with pytest.raises(ValueError, match="empty"):
        lp.PLAID(index_folder=str(tmp_path), index_name="empty")(q, k=3)
