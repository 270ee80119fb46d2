"""Forward + backward of single fused ops at gpt2-small's shapes (batch 2 x 256, width 768, 12 heads):
the measurements behind the speed choices in autograd/ (docs/performance.md, "Measurements behind
choices in the code").

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_ops [--repeat 60]
        [--attention-chunk 128] [--adamw-block 131072] [--json]

Ops: GELU on (2, 256, 3072); layer norm on (2, 256, 768); multi-head attention from a (2, 256, 2304)
qkv; the tied embedding table's two gradients summed (the head's and the embedding's rows), both as
the backward walk does it and as a zero table plus a sum; one AdamW
update of GPT-2 124M's parameters. Each is timed `repeat` times after a warm-up, in this process, with
`backend.keep_freed_memory()` as the examples run; min and median in milliseconds.
`--attention-chunk` sets causal attention's query chunk (a large value: one chunk); `--adamw-block` sets
AdamW's block size. OpenBLAS's spin is set by the environment: `OPENBLAS_THREAD_TIMEOUT=28 python -m ...`
measures OpenBLAS's default (see autograd/backend.py).
"""

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/x.py) rather than as python -m benchmarks.x
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
import numpy as np  # noqa: E402

B, T, C, H, V = 2, 256, 768, 12, 50257


def timed(fn, repeat):
    """Min and median of `repeat` timed runs, in ms, after one warm-up (first-touch pages, threads started)."""
    t = common.time_runs(fn, warmup=1, repeat=repeat)
    return {"min_ms": 1e3 * t["min_s"], "median_ms": 1e3 * t["median_s"]}


def op_cases(rng):
    """{name: function running one forward + backward}."""
    import autograd.functional as F
    from autograd import Tensor

    def forward_backward(op, *arrays):
        def run():
            ts = [Tensor(a, requires_grad=True) for a in arrays]
            y = op(*ts)
            y.backward(np.ones(y.shape, np.float32))
        return run

    x_mlp = rng.standard_normal((B, T, 4 * C), dtype=np.float32)
    x = rng.standard_normal((B, T, C), dtype=np.float32)
    w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    qkv = rng.standard_normal((B, T, 3 * C), dtype=np.float32)
    return {
        "gelu (2, 256, 3072)": forward_backward(F.gelu, x_mlp),
        "layer_norm (2, 256, 768)": forward_backward(F.layer_norm, x, w, b),
        "multi_head_attention (2, 256, 2304) -> (2, 256, 768)": forward_backward(
            lambda t: F.multi_head_attention(t, H), qkv),
    }


def tied_table_cases(rng):
    """GPT-2's tied table gets the head's full gradient and the embedding's rows for 512 ids: summed as
    the backward walk does (the rows scatter-added into the head's gradient), and as a zero table with
    the rows added, then summed with the head's gradient (what the walk did before `RowGradient`)."""
    from autograd import Tensor
    from autograd.function import RowGradient
    from autograd.backward import _GradientSums

    table = Tensor(np.zeros((V, C), np.float32), requires_grad=True)
    head_grad = rng.standard_normal((V, C), dtype=np.float32)
    rows = RowGradient(rng.integers(0, V, size=B * T), rng.standard_normal((B * T, C), dtype=np.float32), (V, C))

    def walk():
        sums = _GradientSums()
        sums.add(table, head_grad, fresh=True)  # the head's new gradient (the rows pile up in it here)
        sums.add(table, rows)

    def zero_table_and_sum():
        return head_grad + rows.dense()

    return {"tied table (50257, 768): head gradient + embedding rows, as the walk sums them": walk,
            "tied table (50257, 768): head gradient + a zero table with the rows (before)": zero_table_and_sum}


def adamw_case(rng, block):
    from autograd.optim import AdamW
    from benchmarks.bench_train_step import build_ours

    model, _, _, _ = build_ours("gpt2-small", B, T, 0.0)
    params = list(model.parameters())
    for p in params:
        p.grad = rng.standard_normal(p.data.shape, dtype=np.float32) * 1e-3
    return AdamW(params, lr=4e-4, weight_decay=0.1, block_size=block).step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=60)
    p.add_argument("--attention-chunk", type=int, default=None, help="causal attention's query chunk (rows)")
    p.add_argument("--adamw-block", type=int, default=131072, help="AdamW's block size (entries)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)
    import autograd.functional as F
    from autograd import backend

    backend.keep_freed_memory()
    if args.attention_chunk:
        F.attention.ATTENTION_CHUNK = args.attention_chunk
    rng = np.random.default_rng(0)
    cases = {**op_cases(rng), **tied_table_cases(rng)}
    ops = {name: timed(fn, args.repeat) for name, fn in cases.items()}
    ops[f"AdamW step, GPT-2 124M, blocks of {args.adamw_block}"] = timed(adamw_case(rng, args.adamw_block),
                                                                        max(3, args.repeat // 10))
    result = {"bench": "ops", "attention_chunk": F.attention.ATTENTION_CHUNK, "ops": ops, "blas": common.blas_info()}
    if args.json:
        common.emit(result, True)
        return
    print(f"# fused ops, forward + backward; {result['blas']}; attention chunk {F.attention.ATTENTION_CHUNK} rows")
    for name, t in ops.items():
        print(f"{name}: min {t['min_ms']:.2f} ms, median {t['median_ms']:.2f} ms")


if __name__ == "__main__":
    main()
