"""Input checks of the PLAID ops' device (CUDA) entries, the counterpart of the C++ CPU
binding's checks (csrc/cpu/residual.cpp, plaid.cpp, checks.h): shape, dtype and device
at once; the data-dependent conditions (ids in range, offsets, NaN/Inf) gathered as 0-d
bool tensors and read back in one host sync, then raised as a ValueError naming the
argument. Errors read like the CPU op's: "<op>: `<argument>` must ..."."""
from __future__ import annotations

import torch

from .ops import offsets_flags, raise_bad_offsets

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class Checks:
    def __init__(self, op: str, device: torch.device):
        self.op = op
        self.device = device
        self._later = []  # (0-d bool tensor: True = bad, message or callable raising)

    def fail(self, msg: str):
        raise ValueError(f"{self.op}: {msg}")

    def tensor(self, t, name: str, dim: int, layout: str, dtypes=None):
        if not isinstance(t, torch.Tensor) or t.dim() != dim:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            self.fail(f"`{name}` must be a {dim}-D tensor {layout}, got {got}")
        if dtypes is not None and t.dtype not in dtypes:
            self.fail(f"`{name}` must be {' or '.join(str(d).replace('torch.', '') for d in dtypes)}, got {t.dtype}")
        if self.device is None:
            self.device = t.device
        if t.device != self.device:
            self.fail(f"`{name}` must be on {self.device} like the other inputs, got {t.device}")
        return t

    def nbits(self, nbits, dim: int):
        if isinstance(nbits, bool) or nbits not in (1, 2, 4, 8):
            self.fail(f"`nbits` must be 1, 2, 4 or 8, got {nbits!r}")
        if dim * nbits % 8:
            self.fail(f"dim * nbits must be a multiple of 8, got dim {dim}, nbits {nbits}")

    def later(self, bad: torch.Tensor, msg):
        self._later.append((bad, msg))

    def ids(self, t, name: str, lo: int, hi: int, what: str):
        """t's values must lie in [lo, hi)."""
        if t.numel():
            self.later((t < lo).any() | (t >= hi).any(),
                       lambda: self.fail(f"`{name}` must hold {what} in [{lo}, {hi}), got values in "
                                         f"[{int(t.min())}, {int(t.max())}]"))

    def finite(self, t, name: str, where: str = ""):
        if t.numel() and t.is_floating_point():
            self.later(~torch.isfinite(t).all(), f"`{name}` contains NaN or Inf{where}")

    def offsets(self, off, name: str, n_rows: int):
        self.tensor(off, name, 1, "[n + 1]", (torch.int64,))
        if off.shape[0] < 1:
            self.fail(f"`{name}` must hold n + 1 >= 1 entries (it starts with 0)")
        flags = offsets_flags(off, n_rows)
        self.later(torch.stack(flags).any(), lambda: raise_bad_offsets(self.op, off, n_rows,
                                                                        torch.stack(flags).tolist()))

    def run(self):
        if not self._later or torch.compiler.is_compiling():
            return
        bad = torch.stack([b for b, _ in self._later]).tolist()
        for flag, (_, msg) in zip(bad, self._later):
            if flag:
                if callable(msg):
                    msg()
                self.fail(msg)


def codec_common(ck: Checks, centroids, codes, nbits, n: int):
    ck.tensor(centroids, "centroids", 2, "[k, dim]", _FLOATS)
    ck.nbits(nbits, centroids.shape[1])
    ck.tensor(codes, "codes", 1, f"[n] = [{n}]", (torch.int32,))
    if codes.shape[0] != n:
        ck.fail(f"`codes` must be an int32 tensor [n] = [{n}], got [{codes.shape[0]}]")
    ck.ids(codes, "codes", 0, centroids.shape[0], "centroid ids")
    ck.finite(centroids, "centroids")


def check_compress(x, centroids, codes, bucket_cutoffs, nbits):
    ck = Checks("compress_residuals", x.device)
    ck.tensor(x, "x", 2, "[n, dim]", _FLOATS)
    codec_common(ck, centroids, codes, nbits, x.shape[0])
    if centroids.shape[1] != x.shape[1]:
        ck.fail(f"`centroids` has dim {centroids.shape[1]} but `x` has dim {x.shape[1]}")
    ck.tensor(bucket_cutoffs, "bucket_cutoffs", 1, "[2^nbits - 1]", _FLOATS)
    if bucket_cutoffs.shape[0] != (1 << nbits) - 1:
        ck.fail(f"`bucket_cutoffs` must hold 2^nbits - 1 = {(1 << nbits) - 1} values, got {bucket_cutoffs.shape[0]}")
    ck.finite(bucket_cutoffs, "bucket_cutoffs")
    if nbits > 1:
        ck.later((bucket_cutoffs[1:] < bucket_cutoffs[:-1]).any(), "`bucket_cutoffs` must be ascending")
    ck.finite(x, "x")
    ck.run()


def check_decompress(codes, packed, centroids, bucket_weights, nbits):
    ck = Checks("decompress_residuals", centroids.device if isinstance(centroids, torch.Tensor) else None)
    ck.tensor(packed, "packed", 2, "[n, dim * nbits / 8]", (torch.uint8,))
    codec_common(ck, centroids, codes, nbits, packed.shape[0])
    _packed_and_weights(ck, packed, bucket_weights, centroids.shape[1], nbits)
    ck.run()


def _packed_and_weights(ck, packed, bucket_weights, dim, nbits):
    if packed.shape[1] != dim * nbits // 8:
        ck.fail(f"`packed` must have dim * nbits / 8 = {dim * nbits // 8} bytes per row, got {packed.shape[1]}")
    ck.tensor(bucket_weights, "bucket_weights", 1, "[2^nbits]", _FLOATS)
    if bucket_weights.shape[0] != 1 << nbits:
        ck.fail(f"`bucket_weights` must hold 2^nbits = {1 << nbits} values, got {bucket_weights.shape[0]}")
    ck.finite(bucket_weights, "bucket_weights")


def _scores(ck, scores, query_mask):
    ck.tensor(scores, "scores", 3, "[n_queries, query_len, n_centroids]", (torch.float32,))
    if scores.shape[2] < 1:
        ck.fail("`scores` must have at least one centroid")
    _query_mask(ck, query_mask, scores.shape[:2])


def _query_mask(ck, query_mask, shape):
    if query_mask is not None:
        ck.tensor(query_mask, "query_mask", 2, f"[n_queries, query_len] = {list(shape)}", (torch.bool,))
        if query_mask.shape != shape:
            ck.fail(f"`query_mask` must have shape {list(shape)}, got {list(query_mask.shape)}")


def _candidates(ck, candidates, nq, n_docs):
    ck.tensor(candidates, "candidates", 2, "[n_queries, n_candidates]", (torch.int64,))
    if candidates.shape[0] != nq:
        ck.fail(f"`candidates` must have n_queries = {nq} rows, got {candidates.shape[0]}")
    ck.ids(candidates, "candidates", -1, n_docs, "document ids (or -1 for none)")


def check_ivf(scores, query_mask, ivf_offsets, ivf_docs, n_docs, ncells):
    ck = Checks("ivf_candidates", scores.device if isinstance(scores, torch.Tensor) else None)
    _scores(ck, scores, query_mask)
    if ncells < 1:
        ck.fail(f"`ncells` must be >= 1, got {ncells}")
    if n_docs < 0:
        ck.fail(f"`n_docs` must be >= 0, got {n_docs}")
    ck.tensor(ivf_docs, "ivf_docs", 1, "[total]", (torch.int64,))
    if not isinstance(ivf_offsets, torch.Tensor) or ivf_offsets.shape != (scores.shape[2] + 1,):
        ck.fail(f"`ivf_offsets` must hold n_centroids + 1 = {scores.shape[2] + 1} entries")
    ck.offsets(ivf_offsets, "ivf_offsets", ivf_docs.shape[0])
    ck.ids(ivf_docs, "ivf_docs", 0, n_docs, "document ids")
    ck.run()


def check_approx(scores, query_mask, codes, doc_offsets, candidates):
    ck = Checks("approx_scores", scores.device if isinstance(scores, torch.Tensor) else None)
    _scores(ck, scores, query_mask)
    ck.tensor(codes, "codes", 1, "[total_tokens]", (torch.int32,))
    ck.offsets(doc_offsets, "doc_offsets", codes.shape[0])
    _candidates(ck, candidates, scores.shape[0], doc_offsets.shape[0] - 1)
    ck.ids(codes, "codes", 0, scores.shape[2], "centroid ids")
    ck.run()


def check_decompress_maxsim(queries, query_mask, codes, packed, doc_offsets, centroids, bucket_weights, nbits,
                            candidates):
    ck = Checks("decompress_maxsim", queries.device if isinstance(queries, torch.Tensor) else None)
    ck.tensor(queries, "queries", 3, "[n_queries, query_len, dim]", (torch.float32,))
    _query_mask(ck, query_mask, queries.shape[:2])
    ck.tensor(packed, "packed", 2, "[total_tokens, dim * nbits / 8]", (torch.uint8,))
    codec_common(ck, centroids, codes, nbits, packed.shape[0])
    if centroids.shape[1] != queries.shape[2]:
        ck.fail(f"`centroids` has dim {centroids.shape[1]} but `queries` has dim {queries.shape[2]}")
    _packed_and_weights(ck, packed, bucket_weights, queries.shape[2], nbits)
    ck.offsets(doc_offsets, "doc_offsets", codes.shape[0])
    _candidates(ck, candidates, queries.shape[0], doc_offsets.shape[0] - 1)
    q = queries if query_mask is None else queries[query_mask]
    ck.finite(q, "queries", " (in an unmasked token)")
    ck.run()
