"""Ours on a GPU against PyTorch on the same GPU (issue #17): a training step and generation, tokens per
second and peak GPU memory, each implementation in its own fresh process; prints a markdown table with
the GPU's name and the ratios ours/peer.

    python -m benchmarks.gpu [--device cuda] [--config gpt2-small] [--batch 8] [--context 1024]
        [--warmup 3] [--steps 10] [--new-tokens 200] [--save results.json]
    python -m benchmarks.gpu --device cpu --config tiny --steps 2   # a smoke test of the whole path

Training step: zero grads, forward, mean cross-entropy over all B*T positions from the (B, T, V) logits,
backward, AdamW (lr 4e-4, weight decay 0.1), dropout 0.0, on seeded random ids already on the device;
`--warmup` untimed steps, then `--steps` timed ones, the device synchronized before and after each; the
median is reported. Implementations:
  ours        our GPT on CuPy, float32
  ours-tf32   the same with float32 matmuls in TensorFloat-32 (`--tf32`: backend.enable_tf32)
  hf          transformers GPT2LMHeadModel, float32, TF32 off (PyTorch's default for matmuls)
  hf-tf32     the same with torch.backends.cuda.matmul.allow_tf32 = True (the peer of ours-tf32)
  hf-bf16     the same under torch.autocast(dtype=bfloat16): what a PyTorch user runs for speed
  book        the book's GPTModel (llms_from_scratch.ch04, qkv bias on to match GPT-2; its head is
              untied, so it has 38M more weights for AdamW to update), float32
Generation: batch 1, a 16-token seeded prompt, `--new-tokens` greedy tokens with a KV cache after an
8-token warm-up run: ours (tinygrad_llm.models.generate) against HF `generate`.

Peak memory: ours is what CuPy's memory pool holds at the end (backend.peak_memory: the pool keeps what
it frees, so this is its high-water mark, cached blocks included); PyTorch's is
torch.cuda.max_memory_allocated() (its caching allocator's reserved peak, the closer match to CuPy's
pool, is in the JSON as peak_reserved_bytes). On `--device cpu` both are the process's peak RSS.
A peer whose package is missing (torch, transformers, llms_from_scratch) is reported as skipped;
TF32 rows are skipped on the CPU, which has no TF32.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/gpu.py) rather than as python -m benchmarks.gpu
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks import common

LR, WEIGHT_DECAY = 4e-4, 0.1
PROMPT_LEN, GEN_WARMUP_TOKENS = 16, 8
# name -> (preset of tinygrad_llm.models.gpt.PRESETS, vocabulary, default batch, default context)
CONFIGS = {
    "gpt2-small": ("gpt2-small", 50257, 8, 1024),  # GPT-2 as published: qkv bias, tied head
    "tiny": ("cpu-tiny", 50257, 2, 64),  # for the smoke test: 64 wide, 2 layers, GPT-2's vocabulary
}
NEEDS = {"hf": ("torch", "transformers"), "hf-tf32": ("torch", "transformers"),
         "hf-bf16": ("torch", "transformers"), "book": ("torch", "llms_from_scratch")}
TF32 = ("ours-tf32", "hf-tf32")
# (what, ours, peer) per table row: the ratio is ours' tokens/s over the peer's
ROWS = [
    ("train step, float32", "train:ours", "train:hf"),
    ("train step, float32", "train:ours", "train:book"),
    ("train step, TF32", "train:ours-tf32", "train:hf-tf32"),
    ("train step, ours TF32 vs PyTorch bf16 autocast", "train:ours-tf32", "train:hf-bf16"),
    ("generate, KV cache, batch 1", "gen:ours", "gen:hf"),
]


def model_config(config, context):
    """Our GPTConfig for `config`, dropout off, with a context of at least `context` positions."""
    from tinygrad_llm.models.gpt import GPTConfig

    preset, vocab, _, default_context = CONFIGS[config]
    return GPTConfig.preset(preset, vocab_size=vocab, context_length=max(context, default_context), drop_rate=0.0)


def seeded_ids(vocab, shape, seed):
    return np.random.default_rng(seed).integers(0, vocab, size=shape, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------
# Each setup returns (run() -> tokens it processed, synchronize(), device facts, peak memory(), notes)


def setup_ours(kind, impl, cfg, device, batch, context):
    from autograd import backend

    if impl == "ours-tf32":
        backend.enable_tf32(device)  # before anything imports CuPy: it reads the mode once
    import autograd.functional as F
    from autograd.optim import AdamW
    from tinygrad_llm.models.generate import generate
    from tinygrad_llm.models.gpt import GPT

    model = GPT(cfg, seed=0).to(device)
    if kind == "train":
        model.train()
        opt = AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        x, y = (backend.to_device(seeded_ids(cfg.vocab_size, (batch, context), s), device) for s in (0, 1))

        def run():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return batch * context
    else:
        model.eval()
        prompt = seeded_ids(cfg.vocab_size, (1, PROMPT_LEN), 0)

        def run(n):
            return generate(model, prompt, n, use_cache=True).shape[-1] - PROMPT_LEN

    info = backend.device_info(device)
    notes = "tinygrad_llm on " + ("CuPy" if device == "cuda" else "NumPy") + (", TF32" if info["tf32"] else "")
    return run, lambda: backend.synchronize(device), info["name"], lambda: {
        "peak_bytes": backend.peak_memory(device)}, notes


def setup_torch(kind, impl, cfg, device, batch, context):
    import torch
    from contextlib import nullcontext

    torch.manual_seed(0)
    dev = torch.device(device)
    torch.backends.cuda.matmul.allow_tf32 = impl == "hf-tf32"  # explicit: off unless asked, as ours
    if impl == "book":
        from llms_from_scratch.ch04 import GPTModel

        model = GPTModel({"vocab_size": cfg.vocab_size, "context_length": cfg.context_length,
                          "emb_dim": cfg.emb_dim, "n_heads": cfg.n_heads, "n_layers": cfg.n_layers,
                          "drop_rate": 0.0, "qkv_bias": True})
        logits_of = lambda ids: model(ids)
        notes = "llms_from_scratch ch04.GPTModel (untied head), float32"
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.emb_dim, n_layer=cfg.n_layers,
            n_head=cfg.n_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        logits_of = lambda ids: model(ids, use_cache=False).logits
        attn = getattr(model.config, "_attn_implementation", None) or "default"
        notes = f"transformers GPT2LMHeadModel, attn_implementation={attn}, " + {
            "hf": "float32", "hf-tf32": "float32, TF32 matmuls", "hf-bf16": "bf16 autocast"}[impl]
    model = model.float().to(dev)
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if impl == "hf-bf16" else nullcontext
    if kind == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        x, y = (torch.from_numpy(seeded_ids(cfg.vocab_size, (batch, context), s)).to(dev) for s in (0, 1))

        def run():
            opt.zero_grad()
            with autocast():
                logits = logits_of(x)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            loss.backward()
            opt.step()
            return batch * context
    else:
        model.eval()
        prompt = torch.from_numpy(seeded_ids(cfg.vocab_size, (1, PROMPT_LEN), 0)).to(dev)
        mask = torch.ones_like(prompt)

        def run(n):
            with torch.no_grad(), autocast():
                out = model.generate(prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                     do_sample=False, use_cache=True, pad_token_id=50256)
            return out.shape[-1] - PROMPT_LEN

    if dev.type == "cuda":
        name, sync = torch.cuda.get_device_name(dev), torch.cuda.synchronize
        memory = lambda: {"peak_bytes": torch.cuda.max_memory_allocated(dev),
                          "peak_reserved_bytes": torch.cuda.max_memory_reserved(dev)}
    else:
        from autograd import backend

        name, sync = backend.device_info("cpu")["name"], lambda: None
        memory = lambda: {"peak_bytes": int(common.peak_rss_mib() * 2**20)}
    return run, sync, name, memory, f"torch {torch.__version__}; {notes}"


def measure(spec, args):
    """One measurement in this process: a dict for the JSON line."""
    kind, impl = spec.split(":")
    _, _, batch, context = CONFIGS[args.config]
    batch, context = args.batch or batch, args.context or context
    cfg = model_config(args.config, context if kind == "train" else PROMPT_LEN + args.new_tokens)
    setup = setup_ours if impl.startswith("ours") else setup_torch
    run, sync, name, memory, notes = setup(kind, impl, cfg, args.device, batch, context)
    times = []
    if kind == "train":
        for i in range(args.warmup + args.steps):
            sync()
            start = time.perf_counter()
            tokens = run()
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    else:
        run(GEN_WARMUP_TOKENS)
        sync()
        start = time.perf_counter()
        tokens = run(args.new_tokens)
        sync()
        times.append(time.perf_counter() - start)
        if tokens != args.new_tokens:
            raise SystemExit(f"{impl} produced {tokens} new tokens, not {args.new_tokens}")
    median = statistics.median(times)
    return {"spec": spec, "device": args.device, "device_name": name, "config": args.config,
            "batch": batch if kind == "train" else 1, "context": context if kind == "train" else None,
            "tokens_per_s": tokens / median, "median_s": median, "times_s": times, **memory(), "notes": notes}


# ---------------------------------------------------------------------------------------------------
# The table


def skip_reason(spec, device):
    impl = spec.split(":")[1]
    if impl in TF32 and device != "cuda":
        return "TF32 is GPU only"
    missing = [m for m in NEEDS.get(impl, ()) if not common.module_available(m)]
    return f"{', '.join(missing)} not installed" if missing else None


def cell(result):
    if "skipped" in result:
        return f"skipped ({result['skipped']})"
    if "error" in result:
        return "error"
    return f"{result['tokens_per_s']:,.0f} tok/s, {result['peak_bytes'] / 2**30:.2f} GiB"


def table(results, args):
    """The markdown report: how it was run, then one row per comparison."""
    names = sorted({r["device_name"] for r in results.values() if "device_name" in r})
    shape = next((f"{r['batch']} x {r['context']}" for r in results.values() if r.get("context")), "-")
    lines = [f"# GPU benchmark: ours vs PyTorch on {', '.join(names) or args.device}", "",
             f"- device {args.device}, config {args.config}; training: batch x context {shape}, AdamW, "
             f"warm-up {args.warmup}, median of {args.steps} steps; generation: batch 1, {PROMPT_LEN}-token prompt, {args.new_tokens} greedy tokens, KV cache",
             "- peak memory: ours = CuPy pool bytes held; PyTorch = torch.cuda.max_memory_allocated "
             "(on the CPU: process peak RSS for both)",
             "- ratio = ours tokens/s / peer tokens/s (> 1: ours is faster)"]
    lines += sorted({f"- {r['spec']}: {r['notes']}" for r in results.values() if "notes" in r})
    lines += [f"- {spec}: {r['error']}" for spec, r in results.items() if "error" in r]
    lines += ["", "| work | ours | peer | ours/peer |", "|---|---|---|---|"]
    for what, ours, peer in ROWS:
        a, b = results[ours], results[peer]
        ratio = f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x" if "tokens_per_s" in a and "tokens_per_s" in b else "-"
        lines.append(f"| {what} | {ours.split(':')[1]}: {cell(a)} | {peer.split(':')[1]}: {cell(b)} | {ratio} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--config", default="gpt2-small", choices=list(CONFIGS))
    p.add_argument("--batch", type=int, default=None, help="training batch (default: 8 for gpt2-small)")
    p.add_argument("--context", type=int, default=None, help="training context (default: 1024 for gpt2-small)")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps")
    p.add_argument("--steps", type=int, default=10, help="timed training steps (the median is reported)")
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--timeout", type=int, default=600, help="seconds per measurement process")
    p.add_argument("--save", metavar="JSON", help="also write every raw result to this file")
    p.add_argument("--one", metavar="KIND:IMPL", help="run one measurement in this process (what the table's "
                   "child processes do), e.g. train:ours")
    p.add_argument("--json", action="store_true", help="with --one: print one JSON line")
    args = p.parse_args(argv)

    if args.one:
        result = measure(args.one, args)
        print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
        return 0

    shared = ["--device", args.device, "--config", args.config, "--warmup", args.warmup, "--steps", args.steps,
              "--new-tokens", args.new_tokens]
    shared += ["--batch", args.batch] if args.batch else []
    shared += ["--context", args.context] if args.context else []
    results = {}
    for spec in dict.fromkeys(s for _, ours, peer in ROWS for s in (ours, peer)):  # each measured once
        reason = skip_reason(spec, args.device)
        if reason:
            results[spec] = {"spec": spec, "skipped": reason}
            continue
        print(f"running {spec} ...", file=sys.stderr, flush=True)
        results[spec] = {"spec": spec, **common.run_json("gpu.py", ["--one", spec, *shared], timeout=args.timeout)}
        if "error" in results[spec]:
            print(f"  {spec}: {results[spec]['error']}", file=sys.stderr)
    print(table(results, args))
    if args.save:
        from autograd.checkpoint import atomic_write

        with atomic_write(args.save, "w", encoding="utf-8") as f:
            json.dump(list(results.values()), f, indent=1)
        print(f"\nraw results: {args.save}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
