"""lateint: the thin retrieval layer over lateint_kernels.

    from lateint import PLAIDIndex, ColBERT     # index (lateint.plaid), model (lateint.model)
    lateint.losses      Contrastive, CachedContrastive (GradCache), Distillation
    lateint.train       training loop with checkpoints; lateint.distributed: gathering
    lateint.pylate      PyLate drop-in: enable() / disable()
    lateint.cli         the `lateint` command (demo, train, encode, index, search, evaluate, bench)
"""
__version__ = "0.1.0"
__all__ = ["PLAIDIndex", "ColBERT"]


def __getattr__(name):  # imported on first use: `import lateint` stays light for the CLI
    if name == "PLAIDIndex":
        from .plaid import PLAIDIndex
        return PLAIDIndex
    if name == "ColBERT":
        from .model import ColBERT
        return ColBERT
    raise AttributeError(f"module 'lateint' has no attribute {name!r}")
