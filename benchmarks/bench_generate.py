"""Greedy generation speed, batch 1: new tokens per second for a fixed 16-token prompt (seeded random
ids) and random weights (seeded), after one untimed warm-up run with fewer tokens.

    python benchmarks/bench_generate.py --impl IMPL --config gpt2-small|small [--new-tokens 200]
        [--repeat 1] [--json]

Implementations:
  ours          tinygrad_llm.models.generate.generate(model, ids, n, use_cache=True)  (KV cache)
  ours-nocache  the same with use_cache=False: the whole sequence is recomputed every step
  hf            transformers GPT2LMHeadModel.generate(do_sample=False, use_cache=True,
                min_new_tokens=n so it never stops early)
  book-kv       the book's KV-cache GPT-2 (llms_from_scratch.kv_cache.gpt2.GPTModel: separate q/k/v
                projections, a cache grown by torch.cat every step), driven by the greedy loop of
                llms_from_scratch.kv_cache.generate.generate_text_simple (that function calls the model
                with the Llama/Qwen signature, so its loop is reproduced here with use_cache=True)
  book-nocache  llms_from_scratch.ch05.generate_text_simple on ch04.GPTModel (recomputes every step)

Configs (all GPT-2 style, qkv bias, context 1024 so prompt + new tokens fit without cropping):
  gpt2-small  768 wide, 12 layers, 12 heads (the book models have an untied head: same compute)
  small       256 wide, 4 layers, 4 heads, vocabulary 50257
"""

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/x.py) rather than as python -m benchmarks.x
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
import numpy as np

PROMPT_LEN = 16
GEN_CONTEXT = 1024
GEN_CONFIGS = {"gpt2-small": common.BIG, "small": common.SMALL}


def prompt_ids(vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=(1, PROMPT_LEN), dtype=np.int64)


# ---------------------------------------------------------------------------------------------------
# Each setup returns (generate(n) -> number of new tokens produced, parameter count, notes)


def setup_ours(dims, use_cache):
    from tinygrad_llm.models.generate import generate
    from tinygrad_llm.models.gpt import GPT, GPTConfig

    cfg = GPTConfig(**{**dims, "context_length": GEN_CONTEXT}, drop_rate=0.0, qkv_bias=True, tie_weights=True)
    model = GPT(cfg, seed=0)
    ids = prompt_ids(cfg.vocab_size)

    def run(n):
        out = generate(model, ids, n, use_cache=use_cache)
        return out.shape[-1] - PROMPT_LEN

    n_params = sum(p.data.size for p in model.parameters())
    return run, n_params, f"tinygrad_llm.models.generate, use_cache={use_cache}"


def setup_hf(dims):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=dims["vocab_size"], n_positions=GEN_CONTEXT, n_embd=dims["emb_dim"],
                     n_layer=dims["n_layers"], n_head=dims["n_heads"], resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).float().eval()
    ids = torch.from_numpy(prompt_ids(cfg.vocab_size))
    mask = torch.ones_like(ids)

    def run(n):
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 use_cache=True, pad_token_id=50256)
        return out.shape[-1] - PROMPT_LEN

    n_params = sum(p.numel() for p in model.parameters())
    attn = getattr(model.config, "_attn_implementation", None) or "default"
    return run, n_params, f"transformers generate, attn_implementation={attn}"


def _book_cfg(dims):
    return {"vocab_size": dims["vocab_size"], "context_length": GEN_CONTEXT, "emb_dim": dims["emb_dim"],
            "n_heads": dims["n_heads"], "n_layers": dims["n_layers"], "drop_rate": 0.0, "qkv_bias": True}


def _fixed_book_attention_forward(self, x, use_cache=False, start_pos=0, cache=None):
    """llms_from_scratch.kv_cache.gpt2.MultiHeadAttention.forward (Apache 2.0, S. Raschka) with one fix:
    the causal mask keeps its last `num_tokens` rows (the queries), where the packaged 1.0.19 keeps its
    last columns, which fails on every decoding step after the prompt (mask (seq, 1) vs scores (1, seq))."""
    import torch

    b, num_tokens, _ = x.shape
    keys = self.W_key(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
    values = self.W_value(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
    queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
    if use_cache:
        if cache is not None:
            keys = torch.cat([cache[0], keys], dim=2)
            values = torch.cat([cache[1], values], dim=2)
        next_cache = (keys, values)
    else:
        next_cache = None
    seq_len = keys.size(2)
    causal_mask = torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool, device=x.device), diagonal=1)
    causal_mask = causal_mask[-num_tokens:, :][None, None, :, :]  # the fix: rows, not columns
    attn_scores = queries @ keys.transpose(2, 3)
    attn_scores.masked_fill_(causal_mask, -torch.inf)
    attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
    attn_weights = self.dropout(attn_weights)
    context_vec = (attn_weights @ values).transpose(1, 2).contiguous().view(b, num_tokens, self.d_out)
    return self.out_proj(context_vec), next_cache


def setup_book_kv(dims):
    import torch
    from llms_from_scratch.kv_cache import gpt2
    from llms_from_scratch.kv_cache.gpt2 import GPTModel
    from llms_from_scratch.kv_cache.utils import KVCache

    torch.manual_seed(0)
    cfg = _book_cfg(dims)
    model = GPTModel(cfg).float().eval()
    ids = torch.from_numpy(prompt_ids(cfg["vocab_size"]))
    notes = "llms_from_scratch.kv_cache.gpt2.GPTModel, greedy loop with its KVCache"
    try:  # does the packaged attention decode one token after a prompt?
        with torch.no_grad():
            model.current_pos = 0
            probe = KVCache(n_layers=cfg["n_layers"])
            model(ids[:, :2], use_cache=True, cache=probe)
            model(ids[:, 2:3], use_cache=True, cache=probe)
    except RuntimeError:
        gpt2.MultiHeadAttention.forward = _fixed_book_attention_forward
        notes += " (packaged causal-mask slicing bug fixed here: mask[-num_tokens:, :])"

    def run(n):
        idx = ids
        with torch.no_grad():
            cache = KVCache(n_layers=cfg["n_layers"])
            model.current_pos = 0  # the book's reset_kv_cache for this model
            logits = model(idx, use_cache=True, cache=cache)
            for _ in range(n):
                nxt = logits[:, -1].argmax(dim=-1, keepdim=True)
                idx = torch.cat([idx, nxt], dim=1)
                logits = model(nxt, use_cache=True, cache=cache)
        return idx.shape[-1] - PROMPT_LEN

    n_params = sum(p.numel() for p in model.parameters())
    return run, n_params, notes


def setup_book_nocache(dims):
    import torch
    from llms_from_scratch.ch04 import GPTModel
    from llms_from_scratch.ch05 import generate_text_simple

    torch.manual_seed(0)
    cfg = _book_cfg(dims)
    model = GPTModel(cfg).float().eval()
    ids = torch.from_numpy(prompt_ids(cfg["vocab_size"]))

    def run(n):
        with torch.no_grad():
            out = generate_text_simple(model, ids, n, cfg["context_length"])
        return out.shape[-1] - PROMPT_LEN

    n_params = sum(p.numel() for p in model.parameters())
    return run, n_params, "llms_from_scratch.ch05.generate_text_simple (no cache)"


SETUPS = {
    "ours": lambda d: setup_ours(d, True),
    "ours-nocache": lambda d: setup_ours(d, False),
    "hf": setup_hf,
    "book-kv": setup_book_kv,
    "book-nocache": setup_book_nocache,
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impl", choices=list(SETUPS), default="ours")
    p.add_argument("--config", choices=list(GEN_CONFIGS), default="gpt2-small")
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--warmup-tokens", type=int, default=8)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)
    from autograd import backend

    backend.keep_freed_memory()  # reuse freed memory: fresh pages for each step's temporaries are slow

    if args.impl not in ("ours", "ours-nocache"):
        import torch  # noqa: F401  (imported before the RSS reading, so the start figure includes it)
    rss_start = common.current_rss_mib()
    run, n_params, notes = SETUPS[args.impl](GEN_CONFIGS[args.config])
    run(args.warmup_tokens)
    produced = []
    timing = common.time_runs(lambda: produced.append(run(args.new_tokens)), warmup=0, repeat=args.repeat)
    if any(n != args.new_tokens for n in produced):
        raise SystemExit(f"{args.impl} produced {produced} new tokens, not {args.new_tokens}")
    result = {
        "bench": "generate", "impl": args.impl, "config": args.config, "prompt_tokens": PROMPT_LEN,
        "new_tokens": args.new_tokens, "params": int(n_params), **timing,
        "tokens_per_s": args.new_tokens / timing["median_s"],
        "peak_rss_mib": common.peak_rss_mib(), "rss_start_mib": rss_start,
        "blas": common.blas_info(with_torch=not args.impl.startswith("ours")), "notes": notes,
    }
    common.emit(result, args.json)


if __name__ == "__main__":
    main()
