"""Shared helpers for the benchmarks: timing, peak memory, BLAS description, the shared model configs,
and running one measurement in a fresh subprocess so each implementation's peak memory is its own.

Timing: `warmup` untimed runs, then `repeat` timed runs (time.perf_counter); the median is the figure
reported, the min and every time are kept beside it.
Memory: peak resident set size of the whole process (resource.getrusage ru_maxrss, KiB on Linux), so it
includes the interpreter and the imported libraries (PyTorch alone is a few hundred MiB); `rss_start_mib`
is the resident size just after the imports, before the model is built.
"""

import autograd.backend  # noqa: F401  (before NumPy, as in the examples: it sets OpenBLAS's thread timeout)
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root
BENCH_DIR = Path(__file__).resolve().parent

# Environment variables some machines set for OpenBLAS that a user's machine would not have; they change
# OpenBLAS's kernel choice and blocking, so benchmarks run without them (see run_all.py).
OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

# ---------------------------------------------------------------------------------------------------
# Model configurations shared by every implementation


def _dims(preset, **overrides):
    """The sizes of one of the library's presets (tinygrad_llm.models.gpt.PRESETS), as the peers take them."""
    from tinygrad_llm.models.gpt import GPTConfig

    cfg = GPTConfig.preset(preset, **overrides)
    return {"vocab_size": cfg.vocab_size, "context_length": cfg.context_length, "emb_dim": cfg.emb_dim,
            "n_heads": cfg.n_heads, "n_layers": cfg.n_layers}


VOCAB = 50257
# The "small" model: Python overhead and the vocabulary projection dominate its step. cpu-small's depth
# and context at width 256 with GPT-2's vocabulary.
SMALL = _dims("cpu-small", emb_dim=256, n_heads=4)
SMALL_BATCH = 8
# Big configs: the book's GPT_CONFIG_124M and GPT-2 small (same sizes; they differ in qkv bias and tying).
BIG = {k: v for k, v in _dims("gpt2-small").items() if k != "context_length"}
BIG_BATCH, BIG_CONTEXT = 2, 256

# name -> (dims, qkv_bias, tie_weights). "book" style: no qkv bias, untied head (llms_from_scratch's
# GPTModel). "hf" style: qkv bias, tied head (GPT-2 as published, transformers' GPT2LMHeadModel).
CONFIGS = {
    "book-124m": (BIG, False, False),
    "gpt2-small": (BIG, True, True),
    "small-book": (SMALL, False, False),
    "small-hf": (SMALL, True, True),
}


def default_shape(config):
    """(batch, context) for a training step of `config` when not given on the command line."""
    if config.startswith("small"):
        return SMALL_BATCH, SMALL["context_length"]
    return BIG_BATCH, BIG_CONTEXT


# ---------------------------------------------------------------------------------------------------
# Timing and memory


def add_step_args(parser, warmup, repeat):
    """The flags every training-step measurement takes: config, shape, warm-up, repeats, dropout."""
    parser.add_argument("--config", default="book-124m")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--context", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--repeat", type=int, default=repeat)
    parser.add_argument("--dropout", type=float, default=0.0)


def time_runs(fn, warmup=2, repeat=5):
    """Run fn() `warmup` times untimed, then `repeat` times timed; a dict of median, min and all times."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


def peak_rss_mib():
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mib():
    """Resident set size now, MiB (from /proc on Linux; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mib()


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# ---------------------------------------------------------------------------------------------------
# What BLAS runs the matmuls


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo on Linux, the platform module elsewhere)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info(with_torch=False):
    """A short description of the BLAS libraries loaded and their thread counts (threadpoolctl when
    installed), plus PyTorch's intra-op thread count when `with_torch`."""
    import numpy as np

    parts = [f"numpy {np.__version__}"]
    if with_torch:
        import torch

        parts.append(f"torch {torch.__version__} threads={torch.get_num_threads()} "
                     f"mkl={torch.backends.mkl.is_available()} mkldnn={torch.backends.mkldnn.is_available()}")
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        parts.append("(threadpoolctl not installed: BLAS unknown)")
        return "; ".join(parts)
    for info in threadpool_info():
        where = "torch" if "torch" in info.get("filepath", "") else (
            "numpy" if "numpy" in info.get("filepath", "") else Path(info.get("filepath", "?")).name)
        desc = f"{where}: {info.get('internal_api')} {info.get('version') or ''}".rstrip()
        desc += f" threads={info.get('num_threads')}"
        if info.get("architecture"):
            desc += f" kernel={info['architecture']}"
        parts.append(desc)
    return "; ".join(parts)


def openblas_env_set():
    return {k: os.environ[k] for k in OPENBLAS_ENV if k in os.environ}


# ---------------------------------------------------------------------------------------------------
# Output and subprocesses


def emit(result, as_json):
    """Print one JSON line (--json) or a readable block."""
    if as_json:
        print(json.dumps(result))
        return
    for k, v in result.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, list) and v and isinstance(v[0], float):
            v = "[" + ", ".join(f"{x:.4g}" for x in v) + "]"
        print(f"{k:>16}: {v}")


def run_json(script, args, env=None, timeout=None):
    """Run `python benchmarks/<script> <args> --json` in a fresh process (the same interpreter, from
    the repository root) and return its last JSON line as a dict, or {"error": ...} when it failed."""
    cmd = [sys.executable, "-m", f"benchmarks.{Path(script).stem}", *map(str, args), "--json"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def module_available(name):
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
