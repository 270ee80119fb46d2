"""Where OUR training step spends its time: per op class and per category (matmul, attention,
softmax/cross-entropy, layer norm, elementwise, embedding, optimizer, Python overhead).

    python benchmarks/profile_step.py [--config book-124m] [--batch 2] [--context 256]
        [--warmup 1] [--repeat 3] [--dropout 0.0]

The step is bench_train_step's (zero grads, forward, cross-entropy, backward, AdamW lr 4e-4 wd 0.1).
Method: every op's `forward` and `backward` (each autograd.function.Function subclass, found after
importing the engine and the model, so ops added later are picked up) and `Function.apply` are wrapped
with perf_counter timers by monkeypatching; nested calls are counted once, in the outermost op.
  - op forward / backward: time inside the op's own forward / backward (the NumPy work);
  - apply bookkeeping: Function.apply minus the forward inside it (device checks, Tensor creation);
  - backward engine: loss.backward() minus the ops' backward (graph walk, gradient accumulation of
    tensors used twice -- real NumPy adds -- and unbroadcast sums);
  - optimizer: AdamW.step; other: the rest of the step (zero_grad, module __call__s, reshapes' Python).
"Python overhead" = step total - op forward - op backward - optimizer. The unprofiled step time is
measured first, so the cost of the timers themselves shows as the difference.
Minor page faults per step (ru_minflt delta x page size) measure how much freshly mapped memory a
step touches: each fresh page costs a fault and a zero-fill, which is slow on these machines.
"""

import argparse
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/x.py) rather than as python -m benchmarks.x
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks.bench_train_step import build_ours, resolve_config

CATEGORY = {
    "Linear": "matmul", "MatMul": "matmul",
    "ScaledDotProductAttention": "attention", "MultiHeadAttention": "attention",
    "CrossEntropy": "softmax/cross-entropy", "Softmax": "softmax/cross-entropy",
    "LogSoftmax": "softmax/cross-entropy",
    "LayerNorm": "layer norm",
    "Embedding": "embedding",
    **{name: "elementwise" for name in (
        "Gelu", "Add", "Sub", "Mul", "Div", "Neg", "Pow", "PowScalar", "Exp", "Log", "Sqrt", "Tanh",
        "Relu", "Dropout", "Where", "Cast")},
    **{name: "reduction" for name in ("Sum", "Mean", "Max", "Var")},
    **{name: "shape/copy" for name in ("Reshape", "Permute", "Expand", "GetItem", "Concatenate", "Stack")},
}
# for op classes not in the table (fused ops added later): the first matching part of the name
FALLBACK = (("Attention", "attention"), ("CrossEntropy", "softmax/cross-entropy"),
            ("Softmax", "softmax/cross-entropy"), ("Linear", "matmul"), ("MatMul", "matmul"),
            ("Matmul", "matmul"), ("Norm", "layer norm"), ("Embedding", "embedding"),
            ("Gelu", "elementwise"), ("Dropout", "elementwise"))
BLAS_HEAVY = ("matmul", "attention")


def category(name):
    if name in CATEGORY:
        return CATEGORY[name]
    for part, cat in FALLBACK:
        if part in name:
            return cat
    return "other ops"


def _subclasses(cls):
    out, stack = [], [cls]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in out:
                out.append(sub)
                stack.append(sub)
    return out


class OpProfiler:
    """Timers around Function.apply and every op class's forward and backward."""

    def __init__(self):
        self.fwd, self.bwd, self.apply = defaultdict(float), defaultdict(float), defaultdict(float)
        self.fwd_calls, self.bwd_calls = defaultdict(int), defaultdict(int)
        self._depth = {"apply": 0, "forward": 0, "backward": 0}
        self._patched = []

    def reset(self):
        for d in (self.fwd, self.bwd, self.apply, self.fwd_calls, self.bwd_calls):
            d.clear()

    def _timed(self, kind, fn, totals, calls=None):
        depth = self._depth

        def wrapper(obj, *args, **kwargs):
            if depth[kind]:
                return fn(obj, *args, **kwargs)
            name = obj.__name__ if kind == "apply" else type(obj).__name__
            depth[kind] += 1
            start = time.perf_counter()
            try:
                return fn(obj, *args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - start
                if calls is not None:
                    calls[name] += 1
                depth[kind] -= 1

        return wrapper

    def install(self):
        import autograd.ops  # noqa: F401
        from autograd.function import Function

        for cls in [Function, *_subclasses(Function)]:
            for kind, totals, calls in (("apply", self.apply, None), ("forward", self.fwd, self.fwd_calls),
                                        ("backward", self.bwd, self.bwd_calls)):
                if kind not in cls.__dict__:
                    continue
                orig = cls.__dict__[kind]
                if kind == "apply":  # a classmethod
                    new = classmethod(self._timed(kind, orig.__func__, totals))
                else:
                    new = self._timed(kind, orig, totals, calls)
                setattr(cls, kind, new)
                self._patched.append((cls, kind, orig))

    def uninstall(self):
        for cls, kind, orig in reversed(self._patched):
            setattr(cls, kind, orig)
        self._patched.clear()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_step_args(p, warmup=1, repeat=3)
    args = p.parse_args(argv)
    from autograd import backend

    backend.keep_freed_memory()  # reuse freed memory: fresh pages for each step's temporaries are slow

    import autograd.functional as F

    config = resolve_config("ours", args.config)
    batch, context = common.default_shape(config)
    batch, context = args.batch or batch, args.context or context
    model, opt, x, y = build_ours(config, batch, context, args.dropout)
    n_params = sum(p.data.size for p in model.parameters())
    page = resource.getpagesize()

    def plain_step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    # 1. the step as benchmarked, without timers
    for _ in range(args.warmup):
        plain_step()
    f0 = common.minor_faults()
    plain = common.time_runs(plain_step, 0, args.repeat)
    faults_plain = (common.minor_faults() - f0) / args.repeat

    # 2. the same step with timers on every op and each phase
    prof = OpProfiler()
    prof.install()
    phases = defaultdict(list)

    def profiled_step():
        t0 = time.perf_counter()
        opt.zero_grad()
        t1 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        for k, v in (("zero_grad", t1 - t0), ("forward", t2 - t1), ("backward", t3 - t2),
                     ("optimizer", t4 - t3), ("total", t4 - t0)):
            phases[k].append(v)

    try:
        profiled_step()  # warm the wrappers
        prof.reset()
        phases.clear()
        f0 = common.minor_faults()
        for _ in range(args.repeat):
            profiled_step()
        faults = (common.minor_faults() - f0) / args.repeat
    finally:
        prof.uninstall()

    n = args.repeat
    ph = {k: sum(v) / n for k, v in phases.items()}
    total = ph["total"]
    fwd = {k: v / n for k, v in prof.fwd.items()}
    bwd = {k: v / n for k, v in prof.bwd.items()}
    apply_overhead = sum(prof.apply.values()) / n - sum(fwd.values())

    def ms(s):
        return f"{1000 * s:9.1f}"

    def pct(s):
        return f"{100 * s / total:5.1f}%"

    print(f"# Profile of our training step: {config}, batch {batch}, context {context}, "
          f"{n_params / 1e6:.1f}M parameters, dropout {args.dropout}")
    print(f"BLAS: {common.blas_info()}")
    envs = common.openblas_env_set()
    if envs:
        print(f"NOTE: {envs} set; run under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` as a user's machine would")
    print(f"step without timers: median {plain['median_s']:.3f} s (min {plain['min_s']:.3f}) over {args.repeat}; "
          f"with timers: mean {total:.3f} s over {n}")
    print()

    # per op class
    print(f"{'op':<28}{'category':<24}{'fwd ms':>9}{'bwd ms':>9}{'total':>9}{'share':>7}{'calls':>7}")
    names = sorted(set(fwd) | set(bwd), key=lambda k: -(fwd.get(k, 0) + bwd.get(k, 0)))
    for name in names:
        f, b = fwd.get(name, 0.0), bwd.get(name, 0.0)
        calls = prof.fwd_calls.get(name, 0) // n
        print(f"{name:<28}{category(name):<24}{ms(f)}{ms(b)}{ms(f + b)} {pct(f + b)}{calls:7d}")
    print()

    # per category
    cats = defaultdict(float)
    for name in names:
        cat = category(name)
        if cat == "embedding":
            cats["embedding (forward)"] += fwd.get(name, 0.0)
            cats["embedding gradient"] += bwd.get(name, 0.0)
        else:
            cats[cat] += fwd.get(name, 0.0) + bwd.get(name, 0.0)
    op_time = sum(fwd.values()) + sum(bwd.values())
    cats["optimizer (AdamW.step)"] = ph["optimizer"]
    overhead = total - op_time - ph["optimizer"]
    cats["Python overhead (step - ops - optimizer)"] = overhead
    print(f"{'category':<44}{'ms/step':>9}{'share':>7}")
    for cat, s in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"{cat:<44}{ms(s)} {pct(s)}")
    backward_engine = ph["backward"] - sum(bwd.values())
    rest = overhead - apply_overhead - backward_engine
    print("  Python overhead, of which:")
    for label, s in (("apply bookkeeping (forward)", apply_overhead),
                     ("backward engine (walk, accumulate)", backward_engine),
                     ("other (modules, zero_grad, timers)", rest)):
        print(f"{'    - ' + label:<44}{ms(s)} {pct(s)}")
    print()
    blas = sum(cats.get(c, 0.0) for c in BLAS_HEAVY)
    print("phases (ms): " + ", ".join(f"{k} {1000 * v:.1f}" for k, v in ph.items()))
    print(f"BLAS-heavy ops ({' + '.join(BLAS_HEAVY)}): {1000 * blas:.1f} ms = {pct(blas).strip()} of the step")
    print(f"minor page faults per step: {faults_plain:.0f} = {faults_plain * page / 2**20:.1f} MiB of fresh pages "
          f"(unprofiled steps; {faults:.0f} = {faults * page / 2**20:.1f} MiB in the profiled ones)")
    print(f"peak RSS: {common.peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
