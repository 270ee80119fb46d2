"""One training step: zero grads, forward, cross-entropy loss, backward, AdamW step (lr 4e-4, weight
decay 0.1) on seeded random token ids of shape (batch, context), for ours or a PyTorch peer.

    python benchmarks/bench_train_step.py --impl ours|book|hf --config CONFIG
        [--batch B] [--context T] [--warmup 2] [--repeat 5] [--dropout 0.0] [--json]

Configs and their peers (benchmarks/common.py defines them once for every implementation):
  book-124m   768 wide, 12 layers, 12 heads, no qkv bias, untied head (163M) -- peer: book
              (llms_from_scratch.ch04.GPTModel, the book's GPT_CONFIG_124M)
  gpt2-small  the same sizes with qkv bias and a tied head (124M) -- peer: hf (GPT2LMHeadModel)
  small-book  256 wide, 4 layers, 4 heads, context 128, vocabulary 50257, book style -- peer: book
  small-hf    the same small sizes, GPT-2 style (qkv bias, tied head) -- peer: hf
  small       an alias: small-hf for hf, small-book for book and ours
Default shape: batch 2, context 256 for the big configs; batch 8, context 128 for the small ones.

Dropout is 0.0 for every implementation by default, so all of them do the same computation (the book
trains with 0.1); `--dropout 0.1` turns it on everywhere (embeddings, attention weights, residuals).
The loss is computed the same way for every implementation from the (B, T, V) logits: mean
cross-entropy over all B*T positions (HF gets no labels, so it does no extra work). PyTorch runs in
float32 with its default thread count and its default AdamW (the foreach implementation).
"""

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/x.py) rather than as python -m benchmarks.x
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
import numpy as np

LR, WEIGHT_DECAY = 4e-4, 0.1
PEER_CONFIGS = {
    "ours": ("book-124m", "gpt2-small", "small-book", "small-hf"),
    "book": ("book-124m", "small-book"),
    "hf": ("gpt2-small", "small-hf"),
}


def resolve_config(impl, config):
    if config == "small":
        config = "small-hf" if impl == "hf" else "small-book"
    if config not in PEER_CONFIGS[impl]:
        raise SystemExit(f"--impl {impl} runs configs {', '.join(PEER_CONFIGS[impl])} (or small), not {config!r}")
    return config


def batch_of(vocab, batch, context, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab, size=(batch, context), dtype=np.int64)
    y = rng.integers(0, vocab, size=(batch, context), dtype=np.int64)
    return x, y


# ---------------------------------------------------------------------------------------------------
# Implementations: each returns (step function, parameter count, notes)


def build_ours(config, batch, context, dropout):
    """Our model in training mode, its AdamW and a seeded batch (x, y) for `config`."""
    from autograd.optim import AdamW
    from tinygrad_llm.models.gpt import GPT, GPTConfig

    dims, qkv_bias, tie = common.CONFIGS[config]
    if config in ("book-124m", "gpt2-small"):
        cfg = GPTConfig.preset(config, context_length=context, drop_rate=dropout)
    else:
        cfg = GPTConfig(**{**dims, "context_length": context}, drop_rate=dropout, qkv_bias=qkv_bias, tie_weights=tie)
    model = GPT(cfg, seed=0)
    model.train()
    opt = AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    x, y = batch_of(cfg.vocab_size, batch, context)
    return model, opt, x, y


def setup_ours(config, batch, context, dropout):
    import autograd.functional as F

    model, opt, x, y = build_ours(config, batch, context, dropout)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    n_params = sum(p.data.size for p in model.parameters())
    return step, n_params, f"numpy autograd, float32, dropout {dropout}"


def _torch_step(model, x, y, logits_of):
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def step():
        opt.zero_grad()
        logits = logits_of(model, x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()

    return step


def setup_book(config, batch, context, dropout):
    import torch
    from llms_from_scratch.ch04 import GPTModel

    torch.manual_seed(0)
    dims, qkv_bias, _ = common.CONFIGS[config]
    cfg = {"vocab_size": dims["vocab_size"], "context_length": context, "emb_dim": dims["emb_dim"],
           "n_heads": dims["n_heads"], "n_layers": dims["n_layers"], "drop_rate": dropout, "qkv_bias": qkv_bias}
    model = GPTModel(cfg).float().train()
    x, y = (torch.from_numpy(a) for a in batch_of(cfg["vocab_size"], batch, context))
    step = _torch_step(model, x, y, lambda m, ids: m(ids))
    n_params = sum(p.numel() for p in model.parameters())
    return step, n_params, f"llms_from_scratch ch04.GPTModel, torch AdamW (foreach), dropout {dropout}"


def setup_hf(config, batch, context, dropout):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    dims, _, _ = common.CONFIGS[config]
    n_positions = 1024 if config == "gpt2-small" else max(context, dims["context_length"])
    cfg = GPT2Config(vocab_size=dims["vocab_size"], n_positions=n_positions, n_embd=dims["emb_dim"],
                     n_layer=dims["n_layers"], n_head=dims["n_heads"], resid_pdrop=dropout,
                     embd_pdrop=dropout, attn_pdrop=dropout, use_cache=False)
    model = GPT2LMHeadModel(cfg).float().train()
    x, y = (torch.from_numpy(a) for a in batch_of(cfg.vocab_size, batch, context))
    step = _torch_step(model, x, y, lambda m, ids: m(ids, use_cache=False).logits)
    n_params = sum(p.numel() for p in model.parameters())  # the tied head is counted once
    attn = getattr(model.config, "_attn_implementation", None) or "default"
    return step, n_params, f"transformers GPT2LMHeadModel, attn_implementation={attn}, torch AdamW (foreach), dropout {dropout}"


SETUPS = {"ours": setup_ours, "book": setup_book, "hf": setup_hf}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impl", choices=sorted(SETUPS), default="ours")
    common.add_step_args(p, warmup=2, repeat=5)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)
    from autograd import backend

    backend.keep_freed_memory()  # reuse freed memory: fresh pages for each step's temporaries are slow

    config = resolve_config(args.impl, args.config)
    batch, context = common.default_shape(config)
    batch, context = args.batch or batch, args.context or context
    rss_start = common.current_rss_mib()
    if args.impl != "ours":
        import torch  # noqa: F401  (imported before the RSS reading, so the start figure includes it)

        rss_start = common.current_rss_mib()
    step, n_params, notes = SETUPS[args.impl](config, batch, context, args.dropout)
    timing = common.time_runs(step, args.warmup, args.repeat)
    result = {
        "bench": "train_step", "impl": args.impl, "config": config, "batch": batch, "context": context,
        "dropout": args.dropout, "params": int(n_params), **timing,
        "tokens_per_s": batch * context / timing["median_s"],
        "peak_rss_mib": common.peak_rss_mib(), "rss_start_mib": rss_start,
        "blas": common.blas_info(with_torch=args.impl != "ours"), "notes": notes,
    }
    common.emit(result, args.json)


if __name__ == "__main__":
    main()
