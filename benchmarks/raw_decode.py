"""How close to the decode floor can NumPy get at all? The same greedy decoding as ours, written as one
NumPy loop with no autograd, no modules and preallocated buffers (what a framework-free implementation
does at best), timed against our generation and the floor in one process, round after round.

    python -m benchmarks.raw_decode [--config gpt2-small|small] [--new-tokens 100] [--rounds 4]
        [--transposed-head]

Both decode the same model (random weights, seeded) from the same 16-token prompt: ours prefills and
decodes with `generate` (KV cache); the raw loop takes ours's prefilled cache and decodes the tokens one
row at a time. The two must produce the same ids (checked; the run stops otherwise). The floor is
`floor.decode_floor`: the model's weight products alone. `--transposed-head` gives the raw loop a
(in, out) copy of the tied output head, the layout the floor reads, to show what the layout costs.
Printed: ms per token of each, per round, and each one's share of the floor's speed (medians).
"""

import argparse
import sys
import time
from pathlib import Path
from statistics import median

if not __package__:  # run as a file (python benchmarks/x.py) rather than as python -m benchmarks.x
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, floor
from benchmarks.bench_generate import GEN_CONFIGS, GEN_CONTEXT, PROMPT_LEN, prompt_ids
from benchmarks.run_all import GEN_FLOOR_CONFIG
import numpy as np


class RawDecoder:
    """Greedy decoding of a tied GPT-2 model (qkv bias, batch 1), one token per `step`, on raw arrays."""

    def __init__(self, model, transposed_head=False):
        cfg = model.config
        self.model, self.C, self.H = model, cfg.emb_dim, cfg.n_heads
        self.wte, self.wpe = model.wte.weight.data, model.wpe.weight.data
        self.head = np.ascontiguousarray(self.wte.T) if transposed_head else None  # (C, V)
        self.x, self.h = np.empty(self.C, np.float32), np.empty(self.C, np.float32)
        self.u, self.t = np.empty(4 * self.C, np.float32), np.empty(4 * self.C, np.float32)

    def layer_norm(self, x, ln):  # into self.h: (x - mean) / sqrt(var + eps) * w + b, one row
        h = self.h
        np.subtract(x, x.sum() * (1.0 / self.C), out=h)
        h *= 1.0 / np.sqrt(np.dot(h, h) * (1.0 / self.C) + 1e-5)
        h *= ln.weight.data
        h += ln.bias.data
        return h

    def step(self, token, cache):
        """The next token's logits (V,), with the token's keys and values stored in `cache`."""
        pos, C, H = cache.length, self.C, self.H
        D = C // H
        x = self.x
        np.add(self.wte[token], self.wpe[pos], out=x)
        for i, block in enumerate(self.model.h):
            attn, mlp = block.attn, block.mlp
            qkv = attn.c_attn.weight.data @ self.layer_norm(x, block.ln_1)  # (3C,)
            qkv += attn.c_attn.bias.data
            q, k, v = qkv.reshape(3, H, D)
            keys, values = cache.keys[i][0], cache.values[i][0]  # (H, max_len, D)
            keys[:, pos], values[:, pos] = k, v
            s = np.matmul(keys[:, :pos + 1], q[:, :, None])[..., 0]  # (H, pos + 1)
            s *= 1.0 / np.sqrt(D)
            s -= s.max(axis=-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=-1, keepdims=True)
            y = np.matmul(s[:, None, :], values[:, :pos + 1])  # (H, 1, D)
            x += attn.c_proj.weight.data @ y.reshape(C)
            x += attn.c_proj.bias.data
            u, t = self.u, self.t
            np.matmul(mlp.c_fc.weight.data, self.layer_norm(x, block.ln_2), out=u)
            u += mlp.c_fc.bias.data
            np.multiply(u, u, out=t)  # GELU as u * sigmoid(2 z), z = sqrt(2/pi) (u + 0.044715 u^3)
            t *= 0.044715
            t += 1.0
            t *= u
            t *= -2.0 * np.sqrt(2.0 / np.pi)
            np.minimum(t, 80.0, out=t)
            np.exp(t, out=t)
            t += 1.0
            np.divide(u, t, out=u)
            x += mlp.c_proj.weight.data @ u
            x += mlp.c_proj.bias.data
        cache.length += 1
        h = self.layer_norm(x, self.model.ln_f)
        return h @ self.head if self.head is not None else self.wte @ h


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=list(GEN_CONFIGS), default="gpt2-small")
    p.add_argument("--new-tokens", type=int, default=100)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--transposed-head", action="store_true")
    args = p.parse_args(argv)
    from autograd import backend, no_grad
    from tinygrad_llm.models.generate import generate
    from tinygrad_llm.models.gpt import GPT, GPTConfig, KVCache

    backend.keep_freed_memory()
    cfg = GPTConfig(**{**GEN_CONFIGS[args.config], "context_length": GEN_CONTEXT}, drop_rate=0.0, qkv_bias=True,
                    tie_weights=True)
    model = GPT(cfg, seed=0).eval()
    ids = prompt_ids(cfg.vocab_size)
    raw = RawDecoder(model, args.transposed_head)

    def ours(n):
        return generate(model, ids, n)[0, PROMPT_LEN:]

    def raw_loop(n):
        cache = KVCache(cfg, 1)
        with no_grad():
            logits = model(ids, cache, last_only=True).data[0, -1]
        out = []
        for _ in range(n):
            out.append(int(logits.argmax()))
            logits = raw.step(out[-1], cache)
        return np.array(out)

    if not np.array_equal(ours(20), raw_loop(20)):
        sys.exit("the raw loop's ids differ from ours: it does not compute the same model")
    times = {"floor": [], "raw": [], "ours": []}
    for _ in range(args.rounds):
        for name, fn in (("ours", ours), ("raw", raw_loop)):
            start = time.perf_counter()
            fn(args.new_tokens)
            times[name].append((time.perf_counter() - start) / args.new_tokens)
        times["floor"].append(floor.decode_floor(GEN_FLOOR_CONFIG[args.config])["token_s"])
    print(f"# {args.config}, {args.new_tokens} greedy tokens after {PROMPT_LEN}, {args.rounds} rounds"
          f"{', raw loop with a transposed head' if args.transposed_head else ''}; {common.blas_info()}")
    for name, ts in times.items():
        shares = [f / t for f, t in zip(times["floor"], ts)]
        print(f"{name:6s} ms/token {' '.join(f'{t * 1e3:6.2f}' for t in ts)}   "
              f"median {median(ts) * 1e3:6.2f}, {100 * median(shares):3.0f} % of the floor's speed")


if __name__ == "__main__":
    main()
