"""lateint.colpali against colpali-engine 0.3.18's own calls with the switch off and on:
HierarchicalTokenPooler bit for bit (lists, padded batches, the cluster maps),
score_multi_vector and ColbertLoss scores and gradients. Runs where colpali-engine is
installed (the adapters' environment, .venv-st6); elsewhere it skips.
tests/test_adapters_env.py runs it there with LATEINT_ADAPTERS_ENV=1, which makes a
missing colpali-engine a failure instead of a skip."""
import functools
import os

import pytest
import torch
import torch.nn.functional as F

import lateint_kernels as lk

from _data import clustered_docs

if os.environ.get("LATEINT_ADAPTERS_ENV") == "1":
    import colpali_engine  # noqa: F401
else:
    pytest.importorskip("colpali_engine", reason="colpali-engine lives in the adapters' environment (.venv-st6)")

import lateint.colpali as lcp  # noqa: E402
from colpali_engine.compression.token_pooling import HierarchicalTokenPooler  # noqa: E402
from colpali_engine.loss.late_interaction_losses import ColbertLoss  # noqa: E402
from colpali_engine.utils.processing_utils import BaseVisualRetrieverProcessor  # noqa: E402

pytestmark = pytest.mark.skipif(not lk.NATIVE_LOADED, reason="native extension not built")


@pytest.fixture(autouse=True)
def _switched_off_after():
    yield
    lcp.disable()


pages = functools.partial(clustered_docs, dim=32, lo=2, hi=60)


@pytest.mark.parametrize("pool_factor", [1, 2, 3])
def test_pooler_lists_bit_identical_with_cluster_maps(pool_factor, spy):
    p = pages(40, seed=pool_factor)
    pooler = HierarchicalTokenPooler()
    off = pooler.pool_embeddings(p, pool_factor=pool_factor, return_dict=True)
    calls = spy("token_pool_list")
    lcp.enable()
    on = pooler.pool_embeddings(p, pool_factor=pool_factor, return_dict=True)
    assert calls.n == (0 if pool_factor == 1 else 1)
    assert all(torch.equal(a, b) for a, b in zip(on.pooled_embeddings, off.pooled_embeddings))
    for m_on, m_off in zip(on.cluster_id_to_indices, off.cluster_id_to_indices):
        assert m_on.keys() == m_off.keys()
        assert all(torch.equal(m_on[c][0], m_off[c][0]) for c in m_off)


def test_pooler_padded_batch_and_half_precision():
    p = pages(10, seed=7, dtype=torch.bfloat16)
    padded = torch.nn.utils.rnn.pad_sequence(p, batch_first=True, padding_side="left")
    pooler = HierarchicalTokenPooler()
    off = pooler.pool_embeddings(padded, pool_factor=2, padding=True, padding_side="left")
    lcp.enable()
    on = pooler.pool_embeddings(padded, pool_factor=2, padding=True, padding_side="left")
    assert on.dtype == torch.bfloat16 and torch.equal(on, off)


def test_pooler_refuses_one_token_pages_like_theirs():
    p = pages(3, seed=1) + [torch.ones(1, 32) / 32 ** 0.5]
    lcp.enable()
    with pytest.raises(ValueError, match="more than one token"):
        HierarchicalTokenPooler().pool_embeddings(p, pool_factor=2)


def test_score_multi_vector_and_backend_switch(monkeypatch, spy):
    qs, ps = pages(5, seed=2, lo=3, hi=12), pages(9, seed=3, lo=20, hi=80)
    off = BaseVisualRetrieverProcessor.score_multi_vector(qs, ps, batch_size=4, device="cpu")
    calls = spy("maxsim")
    lcp.enable()
    on = BaseVisualRetrieverProcessor.score_multi_vector(qs, ps, batch_size=4, device="cpu")
    assert calls.n and on.dtype == torch.float32
    torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-5)
    calls.n = 0
    monkeypatch.setenv("COLPALI_SCORES_BACKEND", "torch")  # their reference, as asked
    again = BaseVisualRetrieverProcessor.score_multi_vector(qs, ps, batch_size=4, device="cpu")
    assert not calls.n and torch.equal(again, off)


def test_colbert_loss_and_gradients_off_and_on():
    def run():
        g = torch.Generator().manual_seed(4)
        q = F.normalize(torch.randn(6, 7, 24, generator=g), dim=-1)
        d = F.normalize(torch.randn(6, 15, 24, generator=g), dim=-1)
        d[2, 11:] = 0  # a shorter page, zero-padded
        q[1, 5:] = 0
        q.requires_grad_()
        d.requires_grad_()
        loss = ColbertLoss()(q, d)
        loss.backward()
        # padding rows: the einsum's amax splits their gradient over tied zeros, the kernel
        # gives it to one; either way the model's mask multiplies it by 0 on the way back
        real_q, real_d = q.detach().ne(0).any(-1), d.detach().ne(0).any(-1)
        return loss.detach(), q.grad[real_q], d.grad[real_d]

    off = run()
    lcp.enable()
    on = run()
    for a, b in zip(on, off):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_enable_disable_restore_and_version_gate(monkeypatch):
    import colpali_engine.utils.processing_utils as pu

    before = pu.maxsim_inbatch
    lcp.enable()
    assert pu.maxsim_inbatch is lcp.maxsim_inbatch and lcp.is_enabled()
    assert "pool_embeddings" in HierarchicalTokenPooler.__dict__
    lcp.disable()
    assert pu.maxsim_inbatch is before and not lcp.is_enabled()
    assert "pool_embeddings" not in HierarchicalTokenPooler.__dict__  # back to BaseTokenPooler's
    import importlib.metadata as md
    monkeypatch.setattr(md, "version", lambda name: "0.3.17")
    with pytest.raises(RuntimeError, match="tested with colpali-engine 0.3.18"):
        lcp.enable()
