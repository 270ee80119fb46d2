"""The LLM stack of "Build a Large Language Model from Scratch" on the autograd library."""

import autograd.backend  # noqa: F401  (first: it tunes OpenBLAS's threads before NumPy loads)
