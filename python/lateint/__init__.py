"""lateint: the thin retrieval layer over lateint_kernels (PLAID index, ColBERT model,
GradCache training, PyLate adapters — to come; see the project's issues). Today: the CLI
with the MaxSim demo."""
__version__ = "0.1.0"
