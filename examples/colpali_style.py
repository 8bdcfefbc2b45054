"""Late interaction without PyLate: ColPali-style page retrieval on lateint's ops.

A visual retriever embeds each page image into a variable number of patch vectors and each
query into token vectors; nothing else about it matters to the ops. Here the embeddings are
stand-ins (clustered, L2-normalized, 700-1030 patches per page, d=128) so the script runs
anywhere; replace `embed_pages` / `embed_queries` with the model's calls.

    python examples/colpali_style.py
"""
import torch

import lateint_kernels as lk
from lateint.plaid import PLAIDIndex


def embed_pages(n_pages: int, gen: torch.Generator):
    topics = torch.nn.functional.normalize(torch.randn(64, 128, generator=gen), dim=-1)
    pages = []
    for _ in range(n_pages):
        n = int(torch.randint(700, 1031, (1,), generator=gen))
        mine = topics[torch.randint(0, 64, (6,), generator=gen)]
        x = mine[torch.randint(0, 6, (n,), generator=gen)] + 0.25 * torch.randn(n, 128, generator=gen)
        pages.append(torch.nn.functional.normalize(x, dim=-1))
    return pages


def embed_queries(pages, page_ids, gen: torch.Generator):
    """Queries made from a few patches of a known page, perturbed: [n, 20, 128]."""
    qs = []
    for p in page_ids:
        idx = torch.randint(0, pages[p].shape[0], (20,), generator=gen)
        qs.append(torch.nn.functional.normalize(pages[p][idx] + 0.1 * torch.randn(20, 128, generator=gen), dim=-1))
    return torch.stack(qs)


def main():
    gen = torch.Generator().manual_seed(0)
    pages = embed_pages(300, gen)
    packed = lk.pack_list(pages)                                   # tokens [sum n_i, 128] + offsets
    pooled, offsets = lk.token_pool(packed.tokens, packed.offsets, pool_factor=3)
    target = torch.randint(0, len(pages), (16,), generator=gen)
    q = embed_queries(pages, target.tolist(), gen)
    exact = lk.maxsim(q, pooled, offsets)                          # [16, 300], exact late interaction
    index = PLAIDIndex.build(pooled, offsets, nbits=2)             # compressed, for scale
    ids, _ = index.search(q, k=5)
    print(f"{len(pages)} pages, {packed.tokens.shape[0]:,} patches -> {pooled.shape[0]:,} after pooling")
    print(f"exact MaxSim: top-1 = the query's page for {int((exact.argmax(1) == target).sum())}/16 queries")
    print(f"PLAID nbits 2 ({index.bytes_per_token('disk'):.0f} bytes/patch): page in the top 5 for "
          f"{int((ids == target[:, None]).any(1).sum())}/16 queries")
    return exact, ids, target


if __name__ == "__main__":
    main()
