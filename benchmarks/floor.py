"""The machine's floor: how fast a training step and a decoded token could possibly be with NumPy here.

    python -m benchmarks.floor --config gpt2-small [--batch B] [--context T] [--json]

No implementation that does the model's arithmetic in float32 through this machine's BLAS can beat it,
so `ours / floor` says how much of a step is still ours to win back.

  train floor  = every matmul of the step (forward and backward), each shape timed alone at its best
                 on this machine (np.matmul, the fastest of three operand layouts, BLAS threads as
                 configured)
               + AdamW's traffic (read parameter, gradient, m, v; write parameter, m, v: 28 bytes per
                 parameter) at the memory bandwidth measured here with all cores.
  decode floor = every float32 weight read once per token: the model's matrix-vector products for one
                 token, all matrices allocated and read in the model's order (batch 1, KV cache: the
                 attention over the cache is left out, it is small next to the weights for short
                 contexts).

The step's matmuls, per layer for N = batch x context tokens, width C, T context, V vocabulary:
forward x @ W for qkv (C -> 3C), the output projection (C -> C), the MLP (C -> 4C -> C), attention's
two batched products per head (QK^T and PV, T x T x head size each), and the head (C -> V) once. The
backward of each product is two products of the same size (the input's gradient and the weight's),
so a step is three times the forward's FLOPs. Everything else (layer norm, GELU, softmax,
cross-entropy, embedding) is memory-bound and left out of the floor: it is what we should make small.
"""

import argparse
import sys
import threading
import time
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/floor.py) rather than as python -m benchmarks.floor
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # first: the library's OpenBLAS setting, as in the step it is the floor of
import numpy as np  # noqa: E402

ADAMW_BYTES_PER_PARAM = 7 * 4  # float32: read p, g, m, v; write p, m, v


def best_time(fn, repeat=5, min_time=0.05):
    """The best of `repeat` timed rounds of fn() (each round repeats fn until it took >= min_time)."""
    fn()  # warm up: first-touch pages, BLAS thread start
    best = float("inf")
    for _ in range(repeat):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        best = min(best, elapsed / n)
    return best


def matmul_time(batch, m, k, n, rng, min_time=0.05):
    """Seconds for one (batch x) (m, k) @ (k, n) float32 product: the best of the three operand layouts a
    step uses (both row-major; the second stored transposed, as x @ W.T; the first stored transposed,
    as g.T @ x), since BLAS runs them at different speeds and a floor must not be slower than us."""
    lead = (batch,) if batch > 1 else ()
    out = np.empty(lead + (m, n), np.float32)
    a = rng.standard_normal(lead + (m, k), dtype=np.float32)
    b = rng.standard_normal(lead + (k, n), dtype=np.float32)
    b_t = rng.standard_normal(lead + (n, k), dtype=np.float32).swapaxes(-1, -2)  # (k, n) view of (n, k)
    a_t = rng.standard_normal(lead + (k, m), dtype=np.float32).swapaxes(-1, -2)  # (m, k) view of (k, m)
    return min(best_time(lambda: np.matmul(x, y, out=out), min_time=min_time) for x, y in ((a, b), (a, b_t), (a_t, b)))


def step_products(dims, batch, context):
    """[(count, batch, m, k, n)] of a training step's matmuls: the forward's, then the backward's."""
    C, H, L, V = dims["emb_dim"], dims["n_heads"], dims["n_layers"], dims["vocab_size"]
    N, T, d = batch * context, context, dims["emb_dim"] // dims["n_heads"]
    forward = [  # (count, batch, m, k, n): x (m, k) @ W (k, n)
        (L, 1, N, C, 3 * C),  # qkv
        (L, 1, N, C, C),  # attention output projection
        (L, 1, N, C, 4 * C),  # MLP up
        (L, 1, N, 4 * C, C),  # MLP down
        (L, batch * H, T, d, T),  # scores Q K^T
        (L, batch * H, T, T, d),  # weights @ V
        (1, 1, N, C, V),  # head
    ]
    backward = []
    for count, bt, m, k, n in forward:
        backward.append((count, bt, m, n, k))  # dX = dY @ W^T: (m, n) @ (n, k)
        backward.append((count, bt, k, m, n))  # dW = X^T @ dY: (k, m) @ (m, n)
    return forward + backward


def decode_products(dims):
    """[(count, m, k, n)] of one decoded token's weight products (m = 1)."""
    C, L, V = dims["emb_dim"], dims["n_layers"], dims["vocab_size"]
    return [(L, 1, C, 3 * C), (L, 1, C, C), (L, 1, C, 4 * C), (L, 1, 4 * C, C), (1, 1, C, V)]


def memory_bandwidth(n_floats=1 << 25, threads=None):
    """Bytes/s of c = a + b over float32 arrays far larger than the caches, split over every core (NumPy
    releases the GIL inside the ufunc, so threads run in parallel): 12 bytes moved per element."""
    import os

    threads = threads or os.cpu_count() or 1
    a, b = np.ones(n_floats, np.float32), np.ones(n_floats, np.float32)
    c = np.empty_like(a)
    parts = np.array_split(np.arange(n_floats), threads)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts if len(p)]

    def one(lo, hi):
        np.add(a[lo:hi], b[lo:hi], out=c[lo:hi])

    def all_threads():
        ts = [threading.Thread(target=one, args=bound) for bound in bounds]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    single = 12 * n_floats / best_time(lambda: one(0, n_floats), repeat=3, min_time=0.2)
    multi = 12 * n_floats / best_time(all_threads, repeat=3, min_time=0.2) if len(bounds) > 1 else single
    return max(single, multi)


def train_floor(config, batch, context, dims=None, n_params=None, bandwidth_floats=1 << 25, min_time=0.05):
    """The floor of one training step: a dict of the matmul part, the optimizer part and their sum."""
    dims = dims or common.CONFIGS[config][0]
    rng = np.random.default_rng(0)
    cache, matmul_s, flops = {}, 0.0, 0
    for count, bt, m, k, n in step_products(dims, batch, context):
        key = (bt, m, k, n)
        if key not in cache:
            cache[key] = matmul_time(bt, m, k, n, rng, min_time)
        matmul_s += count * cache[key]
        flops += count * 2 * bt * m * k * n
    n_params = n_params or count_params(config, context)
    bandwidth = memory_bandwidth(bandwidth_floats)
    optimizer_s = n_params * ADAMW_BYTES_PER_PARAM / bandwidth
    return {"matmul_s": matmul_s, "matmul_gflop": flops / 1e9, "matmul_gflops": flops / matmul_s / 1e9,
            "optimizer_s": optimizer_s, "bandwidth_gbs": bandwidth / 1e9, "floor_s": matmul_s + optimizer_s,
            "params": n_params}


def decode_floor(config, dims=None, repeat=7, products=None):
    """The floor of decoding one token at batch 1: every weight matrix read once, in the model's order,
    as one row times the matrix. The matrices are all allocated, as in the model, so each is read from
    memory and not from a cache that still holds it from the last token (timing each shape alone would:
    a 7 MB layer matrix stays in L3 and reads 3-4x faster than it does inside a model of 500 MB).
    `products`: [(count, m, k, n)] of another model's token (benchmarks/bench_llama.py passes the Llama
    family's); GPT-2's `decode_products(dims)` by default."""
    products = products or decode_products(dims or common.CONFIGS[config][0])
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((k, n), dtype=np.float32)
               for count, m, k, n in products for _ in range(count)]
    rows = {w.shape[0]: rng.standard_normal((1, w.shape[0]), dtype=np.float32) for w in weights}
    outs = [np.empty((1, w.shape[1]), np.float32) for w in weights]

    def one_token():
        for w, out in zip(weights, outs):
            np.matmul(rows[w.shape[0]], w, out=out)

    one_token()
    seconds = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        one_token()
        seconds = min(seconds, time.perf_counter() - start)
    weight_bytes = sum(w.nbytes for w in weights)
    return {"token_s": seconds, "tokens_per_s": 1 / seconds, "weight_mib": weight_bytes / 2**20,
            "gemv_gbs": weight_bytes / seconds / 1e9}


def count_params(config, context):
    """The parameter count of a benchmark config at `context` positions (GPT-2's layout), without
    building the model."""
    dims, qkv_bias, tie = common.CONFIGS[config]
    C, L, V, T = dims["emb_dim"], dims["n_layers"], dims["vocab_size"], context
    block = 2 * 2 * C + (3 * C * C + 3 * C * qkv_bias) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    return V * C + T * C + L * block + 2 * C + (0 if tie else V * C)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="gpt2-small", choices=sorted(common.CONFIGS))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--context", type=int, default=None)
    p.add_argument("--no-decode", action="store_true", help="the training floor only")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)
    batch, context = common.default_shape(args.config)
    batch, context = args.batch or batch, args.context or context
    result = {"bench": "floor", "config": args.config, "batch": batch, "context": context,
              "train": train_floor(args.config, batch, context), "blas": common.blas_info()}
    if not args.no_decode:
        result["decode"] = decode_floor(args.config)
    result["median_s"] = result["train"]["floor_s"]  # what run_all's table reads
    if args.json:
        common.emit(result, True)
        return
    t = result["train"]
    print(f"{args.config}, batch {batch} x {context}, {result['blas']}")
    print(f"train step floor {t['floor_s'] * 1e3:.0f} ms: matmuls {t['matmul_s'] * 1e3:.0f} ms "
          f"({t['matmul_gflop']:.0f} GFLOP at {t['matmul_gflops']:.0f} GFLOP/s, each shape alone) + AdamW "
          f"{t['optimizer_s'] * 1e3:.0f} ms ({t['params'] / 1e6:.1f}M params x 28 B at {t['bandwidth_gbs']:.1f} GB/s)")
    if "decode" in result:
        d = result["decode"]
        print(f"decode floor {d['token_s'] * 1e3:.1f} ms/token = {d['tokens_per_s']:.1f} tok/s "
              f"({d['weight_mib']:.0f} MiB of weights at {d['gemv_gbs']:.1f} GB/s)")


if __name__ == "__main__":
    main()
