"""Run every benchmark pair, each implementation in its own fresh process (so each peak RSS is its
own), and print a markdown table.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/run_all.py [--quick] [--rounds N]
        [--repeat N] [--gen-repeat N] [--new-tokens 200] [--save results.json]

speed-up = peer time / our time for the same work (> 1: ours is faster). For a training step the time
is the median step time; for generation it is the wall time of the run, so the speed-up is also our
tokens/s over the peer's. In the "KV cache vs recompute" row the peer is our own generation without the
cache; in the row after it, that generation without a cache is ours, against the book's
(`generate_text_simple`, which computes the head for every position and keeps the last).
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
`--only train` / `--only generate`: those rows alone.
`--rounds N`: measure every row N times, round after round, each round with ours, the peer and the floor
of a row run one after the other; the table gives the median over the rounds of each time and of each
ratio (a ratio is taken within its round, so a machine that slows down for a few minutes, as a shared
one does, moves both sides of it).
"""

import argparse
import json
import os
import sys
from statistics import median as _median
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/run_all.py) rather than as python -m benchmarks.run_all
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common

TRAIN, GEN, FLOOR = "bench_train_step.py", "bench_generate.py", "floor.py"
GEN_FLOOR_CONFIG = {"gpt2-small": "gpt2-small", "small": "small-hf"}  # generation config -> floor config
PEER_MODULES = {"book": ("torch", "llms_from_scratch"), "book-kv": ("torch", "llms_from_scratch"),
                "book-nocache": ("torch", "llms_from_scratch", "matplotlib"),  # the book's ch05 imports matplotlib
                "hf": ("torch", "transformers")}


def rows_for(quick, only=None):
    """(work, (script, impl, config) for ours, (script, impl, config) for the peer, kind); `only`: "train"
    or "generate" keeps those rows."""
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
            # no floor column: the floor is for one token from a cache, not for recomputing the context
            (f"generate, {cfg}: recompute (ours-nocache) vs the book's recompute", (GEN, "ours-nocache", cfg),
             (GEN, "book-nocache", cfg), "recompute"),
        ]
    if only:
        rows = [r for r in rows if (r[3] == "train") == (only == "train")]
    return rows


def _ok(*results):
    return all(r and "error" not in r for r in results)


def fmt_result(runs, kind):
    """A row's time over the rounds: the median of each round's figure."""
    ok = [r for r in runs if _ok(r)]
    if not ok:
        return "error" if any(runs) else "skipped"  # a result with an error, or none (peer not installed)
    seconds, tokens = _median([r["median_s"] for r in ok]), _median([r["tokens_per_s"] for r in ok])
    if kind == "train":
        return f"{seconds:.3f} s ({tokens:.0f} tok/s)"
    return f"{tokens:.1f} tok/s ({seconds:.2f} s)"


def speedup(ours_runs, peer_runs):
    """The median over the rounds of peer time / our time, each ratio from one round."""
    ratios = [p["median_s"] / o["median_s"] for o, p in zip(ours_runs, peer_runs) if _ok(o, p)]
    return f"{_median(ratios):.2f}x" if ratios else "-"


def fmt_floor(ours_runs, floor_runs, kind):
    """ours / floor (training) or ours as a percentage of the floor's tokens/s (generation), the median
    over the rounds of each round's ratio, with the median floor."""
    pairs = [(o, f) for o, f in zip(ours_runs, floor_runs) if _ok(o, f)]
    if not pairs:
        return "-"
    if kind == "train":
        ratio = _median([o["median_s"] / f["train"]["floor_s"] for o, f in pairs])
        return f"{ratio:.2f} ({_median([f['train']['floor_s'] for _, f in pairs]):.3f} s)"
    share = _median([100 * o["tokens_per_s"] / f["decode"]["tokens_per_s"] for o, f in pairs])
    return f"{share:.0f} % ({_median([f['decode']['tokens_per_s'] for _, f in pairs]):.0f} tok/s)"


def fmt_rss(runs):
    runs = [r for r in runs if _ok(r)]
    return f"{max(r['peak_rss_mib'] for r in runs):.0f} MiB" if runs else "-"


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
    p.add_argument("--rounds", type=int, default=1, help="measure every row this many times and report medians (default 1)")
    p.add_argument("--only", choices=("train", "generate"), help="only the training rows, or only the generation rows")
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

    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    results = {}  # (script, impl, config, round) -> result, each measured once a round

    def measure(spec, rnd):
        script, impl, config = spec
        if missing.get(impl):
            return None
        key = (*spec, rnd)
        if key not in results:
            if script == FLOOR:
                extra = []
            elif script == TRAIN:
                extra = ["--warmup", warmup, "--repeat", repeat]
            else:
                extra = ["--new-tokens", new_tokens, "--repeat", args.gen_repeat]
            round_note = f" (round {rnd + 1} of {args.rounds})" if args.rounds > 1 else ""
            print(f"running {script} --impl {impl} --config {config}{round_note} ...", file=sys.stderr, flush=True)
            impl_args = [] if script == FLOOR else ["--impl", impl]
            results[key] = common.run_json(script, [*impl_args, "--config", config, *extra], env=env,
                                           timeout=args.timeout)
            if "error" in results[key]:
                print(f"  {impl} {config}: {results[key]['error']}", file=sys.stderr)
        return results[key]

    rows = rows_for(args.quick, args.only)
    runs = {}  # row index -> (ours results, peer results, floor results), one of each per round
    for rnd in range(args.rounds):
        for i, (work, ours_spec, peer_spec, kind) in enumerate(rows):
            ours, peer = measure(ours_spec, rnd), measure(peer_spec, rnd)
            floor = None
            if not args.no_floor and kind != "recompute":
                config = ours_spec[2] if kind == "train" else GEN_FLOOR_CONFIG[ours_spec[2]]
                floor = measure((FLOOR, "floor", config), rnd)
            for runs_of, r in zip(runs.setdefault(i, ([], [], [])), (ours, peer, floor)):
                runs_of.append(r)
    table = []
    for i, (work, ours_spec, peer_spec, kind) in enumerate(rows):
        ours, peer, floor = runs[i]
        table.append((work, fmt_result(ours, kind), f"{peer_spec[1]}: {fmt_result(peer, kind)}",
                      speedup(ours, peer), fmt_floor(ours, floor, kind), fmt_rss(ours), fmt_rss(peer)))

    # header: how it was run
    print("# Benchmarks" + (" (--quick: a smoke test, not a measurement)" if args.quick else ""))
    print()
    blas = sorted({r["blas"] for r in results.values() if r and "blas" in r}, key=len)
    print(f"- BLAS: {blas[-1] if blas else common.blas_info()}")
    print(f"- CPU: {common.cpu_model()}")
    print(f"- python {sys.version.split()[0]}, {os.cpu_count()} CPUs; training: warm-up {warmup}, median of {repeat} "
          f"steps, dropout 0.0 everywhere; generation: batch 1, 16-token prompt, {new_tokens} new greedy tokens, "
          f"{args.gen_repeat} timed run(s) after a warm-up")
    if args.rounds > 1:
        print(f"- {args.rounds} rounds: every figure is the median over the rounds, each ratio taken within its round; "
              "peak RSS is the largest")
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
    floors = {}
    for (s, _, c, _), r in results.items():
        if s == FLOOR and _ok(r):
            floors.setdefault(c, []).append(r)
    for c, rs in floors.items():
        r = sorted(rs, key=lambda r: r["train"]["floor_s"])[len(rs) // 2]  # the round with the median floor
        t = r["train"]
        which = " (the round with the median step floor)" if len(rs) > 1 else ""
        print(f"- floor {c}{which}: step {t['floor_s']:.3f} s = matmuls {t['matmul_s']:.3f} s ({t['matmul_gflop']:.0f} GFLOP "
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
        raw = [{"script": s, "impl": i, "config": c, "round": k + 1, **(r or {"skipped": True})}
               for (s, i, c, k), r in results.items()]
        Path(args.save).write_text(json.dumps(raw, indent=1))
        print(f"\nraw results: {args.save}")


if __name__ == "__main__":
    main()
