"""Benchmarks against PyTorch peers: run as files (python benchmarks/run_all.py) or as modules
(python -m benchmarks.run_all); docs/performance.md has the tables and the commands."""
