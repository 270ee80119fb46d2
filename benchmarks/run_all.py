"""Run every benchmark pair, each implementation in its own fresh process (so each peak RSS is its
own), and print a markdown table.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/run_all.py [--quick] [--repeat N]
        [--gen-repeat N] [--new-tokens 200] [--save results.json]

speed-up = peer time / our time for the same work (> 1: ours is faster). For a training step the time
is the median step time; for generation it is the wall time of the run, so the speed-up is also our
tokens/s over the peer's. In the "KV cache vs recompute" row the peer is our own generation without the
cache.
The floor (benchmarks/floor.py, measured in its own process on the same machine) is what NumPy here
allows at best: for a training step, its matmuls each timed alone plus AdamW's bytes at the measured
memory bandwidth; for generation, every weight read once per token at the measured matrix-vector speed.
"ours/floor" is our step time over the floor (1.00 would be perfect); for generation, "% of floor" is our
tokens/s over the floor's. Peak RSS is the whole process's (interpreter and libraries included: importing PyTorch alone
takes about 200 MiB).

Some machines set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which a user's machine would not; they change
OpenBLAS's kernels and blocking. Run this under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`; the
child processes get them removed anyway unless --keep-openblas-env is given.
`--quick`: the small configs only, few repetitions and 50 new tokens -- a smoke test, not a measurement.
"""

import argparse
import json
import os
import sys
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/run_all.py) rather than as python -m benchmarks.run_all
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common

TRAIN, GEN, FLOOR = "bench_train_step.py", "bench_generate.py", "floor.py"
GEN_FLOOR_CONFIG = {"gpt2-small": "gpt2-small", "small": "small-hf"}  # generation config -> floor config
PEER_MODULES = {"book": ("torch", "llms_from_scratch"), "book-kv": ("torch", "llms_from_scratch"),
                "hf": ("torch", "transformers")}


def rows_for(quick):
    """(work, (script, impl, config) for ours, (script, impl, config) for the peer, kind)."""
    rows = []
    if not quick:
        rows += [
            ("train step, book-124m (163M) vs book GPTModel", (TRAIN, "ours", "book-124m"), (TRAIN, "book", "book-124m"), "train"),
            ("train step, gpt2-small (124M) vs HF GPT2LMHeadModel", (TRAIN, "ours", "gpt2-small"), (TRAIN, "hf", "gpt2-small"), "train"),
        ]
    rows += [
        ("train step, small (book style) vs book GPTModel", (TRAIN, "ours", "small-book"), (TRAIN, "book", "small-book"), "train"),
        ("train step, small (GPT-2 style) vs HF", (TRAIN, "ours", "small-hf"), (TRAIN, "hf", "small-hf"), "train"),
    ]
    gen_cfgs = ["small"] if quick else ["gpt2-small", "small"]
    for cfg in gen_cfgs:
        rows += [
            (f"generate, {cfg}, KV cache, vs HF generate", (GEN, "ours", cfg), (GEN, "hf", cfg), "gen"),
            (f"generate, {cfg}, KV cache, vs book KV cache", (GEN, "ours", cfg), (GEN, "book-kv", cfg), "gen"),
            (f"generate, {cfg}: KV cache (ours) vs recompute (ours-nocache)", (GEN, "ours", cfg), (GEN, "ours-nocache", cfg), "gen"),
        ]
    return rows


def fmt_result(r, kind):
    if r is None:
        return "skipped"
    if "error" in r:
        return "error"
    if kind == "train":
        return f"{r['median_s']:.3f} s ({r['tokens_per_s']:.0f} tok/s)"
    return f"{r['tokens_per_s']:.1f} tok/s ({r['median_s']:.2f} s)"


def fmt_floor(ours, floor, kind):
    if not ours or not floor or "error" in ours or "error" in floor:
        return "-"
    if kind == "train":
        return f"{ours['median_s'] / floor['train']['floor_s']:.2f} ({floor['train']['floor_s']:.3f} s)"
    return f"{100 * ours['tokens_per_s'] / floor['decode']['tokens_per_s']:.0f} % ({floor['decode']['tokens_per_s']:.0f} tok/s)"


def fmt_rss(r):
    return f"{r['peak_rss_mib']:.0f} MiB" if r and "error" not in r else "-"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small configs only, few repetitions (a smoke test)")
    p.add_argument("--repeat", type=int, default=None, help="timed training steps (default 5; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed training steps (default 2; 1 with --quick)")
    p.add_argument("--gen-repeat", type=int, default=3, help="timed generation runs (the median is reported; the first full-length run of a process is about 15%% slower)")
    p.add_argument("--new-tokens", type=int, default=None, help="new tokens per generation (200; 50 with --quick)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per measurement process")
    p.add_argument("--keep-openblas-env", action="store_true",
                   help="pass OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE on to the measurements")
    p.add_argument("--no-floor", action="store_true", help="leave out the floor column (saves a minute or two)")
    p.add_argument("--save", metavar="JSON", help="also write every raw result to this file")
    args = p.parse_args(argv)
    repeat = args.repeat or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    new_tokens = args.new_tokens or (50 if args.quick else 200)

    env = dict(os.environ)
    stray = common.openblas_env_set()
    if stray and not args.keep_openblas_env:
        for k in stray:
            env.pop(k)
    missing = {impl: [m for m in mods if not common.module_available(m)] for impl, mods in PEER_MODULES.items()}

    results = {}  # (script, impl, config) -> result, each measured once

    def measure(spec):
        script, impl, config = spec
        if missing.get(impl):
            return None
        if spec not in results:
            if script == FLOOR:
                extra = []
            elif script == TRAIN:
                extra = ["--warmup", warmup, "--repeat", repeat]
            else:
                extra = ["--new-tokens", new_tokens, "--repeat", args.gen_repeat]
            print(f"running {script} --impl {impl} --config {config} ...", file=sys.stderr, flush=True)
            impl_args = [] if script == FLOOR else ["--impl", impl]
            results[spec] = common.run_json(script, [*impl_args, "--config", config, *extra], env=env,
                                            timeout=args.timeout)
            if "error" in results[spec]:
                print(f"  {impl} {config}: {results[spec]['error']}", file=sys.stderr)
        return results[spec]

    table = []
    for work, ours_spec, peer_spec, kind in rows_for(args.quick):
        ours, peer = measure(ours_spec), measure(peer_spec)
        ok = ours and peer and "error" not in ours and "error" not in peer
        speedup = f"{peer['median_s'] / ours['median_s']:.2f}x" if ok else "-"
        floor = None
        if not args.no_floor:
            config = ours_spec[2] if kind == "train" else GEN_FLOOR_CONFIG[ours_spec[2]]
            floor = measure((FLOOR, "floor", config))
        table.append((work, fmt_result(ours, kind), f"{peer_spec[1]}: {fmt_result(peer, kind)}", speedup,
                      fmt_floor(ours, floor, kind), fmt_rss(ours), fmt_rss(peer)))

    # header: how it was run
    print("# Benchmarks" + (" (--quick: a smoke test, not a measurement)" if args.quick else ""))
    print()
    blas = sorted({r["blas"] for r in results.values() if r and "blas" in r}, key=len)
    print(f"- BLAS: {blas[-1] if blas else common.blas_info()}")
    print(f"- CPU: {common.cpu_model()}")
    print(f"- python {sys.version.split()[0]}, {os.cpu_count()} CPUs; training: warm-up {warmup}, median of {repeat} "
          f"steps, dropout 0.0 everywhere; generation: batch 1, 16-token prompt, {new_tokens} new greedy tokens, "
          f"{args.gen_repeat} timed run(s) after a warm-up")
    notes = sorted({f"{r['impl']}: {r['notes']}" for r in results.values() if r and "notes" in r})
    for n in notes:
        print(f"- {n}")
    if stray:
        action = "passed on (--keep-openblas-env)" if args.keep_openblas_env else "removed for the measurements"
        print(f"- NOTE: this shell sets {', '.join(f'{k}={v}' for k, v in stray.items())}; {action}. "
              "Run as `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/run_all.py` "
              "(a user's machine does not set them).")
    else:
        print("- OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE not set (as on a user's machine; where a machine sets "
              "them, run under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`).")
    for impl, mods in missing.items():
        if mods:
            print(f"- peer {impl} skipped: {', '.join(mods)} not installed")
    print("- speed-up = peer time / our time for the same work (> 1: ours is faster)")
    floors = {c: r for (s, _, c), r in results.items() if s == FLOOR and r and "error" not in r}
    for c, r in floors.items():
        t = r["train"]
        print(f"- floor {c}: step {t['floor_s']:.3f} s = matmuls {t['matmul_s']:.3f} s ({t['matmul_gflop']:.0f} GFLOP "
              f"at {t['matmul_gflops']:.0f} GFLOP/s, each shape alone) + AdamW {t['optimizer_s']:.3f} s "
              f"(at {t['bandwidth_gbs']:.1f} GB/s); decode {r['decode']['tokens_per_s']:.0f} tok/s "
              f"({r['decode']['weight_mib']:.0f} MiB of weights at {r['decode']['gemv_gbs']:.1f} GB/s)")
    print()
    head = ("work", "ours", "peer", "speed-up", "ours/floor (floor)", "peak RSS ours", "peak RSS peer")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for row in table:
        print("| " + " | ".join(row) + " |")

    if args.save:
        raw = [{"script": s, "impl": i, "config": c, **(r or {"skipped": True})} for (s, i, c), r in results.items()]
        Path(args.save).write_text(json.dumps(raw, indent=1))
        print(f"\nraw results: {args.save}")


if __name__ == "__main__":
    main()
