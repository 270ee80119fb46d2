"""Beyond the book: the Llama family (Llama 3, SmolLM2, Qwen3) on the same engine.

What changed since GPT-2 (book chapter 4), each a few lines below, in the order a token meets them:
- no position embedding table: the position is a rotation of each query and key (rotary position
  embedding, RoPE, `rope_angles` and `apply_rope`), so attention scores depend on the distance between
  two tokens; Llama 3 stretches its long wavelengths for a longer context (`rope_frequencies`, in
  llama_config.py beside the settings it reads);
- RMSNorm instead of LayerNorm: no mean subtracted, no bias, x * rsqrt(mean(x^2) + eps) * weight;
- grouped-query attention: n_kv_heads key/value heads, each shared by n_heads / n_kv_heads query heads,
  so the KV cache is that many times smaller; Qwen3 also normalises q and k per head (QK-norm);
- the SwiGLU feed-forward, down(silu(gate(x)) * up(x)), instead of Linear-GELU-Linear;
- no biases, no dropout; the output head tied to the embedding (SmolLM2, Llama 3.2 1B) or not.

The book's repository rebuilds these from scratch in ch05/07_gpt_to_llama (`standalone-llama32.ipynb`:
`compute_rope_params`, `apply_rope`, `GroupedQueryAttention`, `FeedForward`) and ch05/11_qwen3 (the same
with QK-norm); `LlamaAttention.attend_reference` and the functions below follow them.

Two paths, as for GPT (`LlamaConfig.fused`): the reference path composes every stage from Tensor ops
(`rms_norm`, `rope_angles` and `apply_rope`, `silu`) and repeats each key/value head for its group of
query heads, as the book does; the fast path runs each stage as one fused op of autograd/functional:
`F.rms_norm` for every norm (QK-norm too), `F.rope` with the angles' table made once per model
(`Llama.rope_table`: `F.rope_cos_sin`, a view of its rows start..start+T per forward), `F.swiglu` in the
feed-forward, and grouped-query attention straight through `F.scaled_dot_product_attention`, which
stacks each group's query rows against its key/value head (no copy of k and v per query head).
Decoding one token with the KV cache is then seven matrix-vector products per layer and a few small
ops around them. tests/test_llama.py holds the two paths equal, in logits and gradients. Inference
without a graph (the stacked products, a decoded token run on the arrays) is in llama_inference.py.

Parameter names are Hugging Face's without the "model." prefix of its `LlamaForCausalLM`
(embed_tokens, layers.N.self_attn.q_proj, layers.N.mlp.gate_proj, layers.N.input_layernorm, norm,
lm_head), so the checkpoint's name map is that prefix (`tinygrad_llm/models/llama_weights.py`). The
configuration, `LlamaConfig`, and its reading from config.json and GGUF metadata are in llama_config.py.
"""

import contextlib
import math
from dataclasses import replace

import numpy as np

import autograd.functional as F
import autograd.reference as R
from autograd import Tensor, backend, cat, is_grad_enabled, nn
from tinygrad_llm.models import llama_inference, llama_save
from tinygrad_llm.models.gpt import KVCache, recorded_attention_weights
from tinygrad_llm.models.llama_config import PRESETS, LlamaConfig, RopeScaling, rope_frequencies  # noqa: F401
from tinygrad_llm.models.llama_inference import GATE_UP, QKV, stacked_weight  # noqa: F401  (re-exported)

# ---------------------------------------------------------------------------------------------------
# The stages, composed of Tensor ops (the book's standalone Llama 3.2 and Qwen3)


def rms_norm(x, weight, eps):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis: LayerNorm without the mean and the bias.
    [3, 4] with weight 1 -> [3, 4] / sqrt(12.5) = [0.849, 1.131]."""
    return x / ((x * x).mean(axis=-1, keepdims=True) + eps).sqrt() * weight


def silu(x):
    """x * sigmoid(x), the activation inside SwiGLU (also called swish)."""
    return x * x.sigmoid()


def rope_angles(inv_freq, positions):
    """cos and sin, (T, D) float32 host arrays, of the angles position * frequency for `positions` (T,),
    each frequency twice, in Hugging Face's rotate-half layout: dimension i and i + D/2 rotate together."""
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]  # (T,) x (D/2,) -> (T, D/2)
    angles = np.concatenate([angles, angles], axis=-1)  # (T, D/2) -> (T, D)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x, cos, sin):
    """Rotate each pair (x_i, x_{i+D/2}) of x (..., T, D) by its angle: x * cos + rotate_half(x) * sin,
    rotate_half(x) = [-x2, x1] for the halves x1, x2 (the book's `apply_rope`)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = cat([-x2, x1], axis=-1)  # (..., T, D)
    return x * cos + rotated * sin


# ---------------------------------------------------------------------------------------------------
# The layers


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last axis with a learned scale (ones): the fused op
    `F.rms_norm` (fused=True, the fast path), or `rms_norm` composed of Tensor ops (the reference)."""

    def __init__(self, dim, eps=1e-5, fused=True):
        super().__init__()
        self.dim, self.eps, self.fused = int(dim), float(eps), bool(fused)
        self.weight = nn.Parameter(np.ones(self.dim, dtype=np.float32))

    def forward(self, x):
        if self.fused:
            return F.rms_norm(x, self.weight, self.eps)
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self):
        return f"({self.dim},), eps={self.eps}"


class LlamaKVCache(KVCache):
    """GPT's KV cache (models/gpt.py) holding n_kv_heads heads per layer, not n_heads: with grouped-query
    attention each key/value head serves a group of query heads, so the cache is n_heads / n_kv_heads
    times smaller. `update` takes and returns (B, n_kv_heads, T, head_dim) arrays."""

    def _heads(self, config):
        return config.n_kv_heads


class LlamaAttention(nn.Module):
    """Causal grouped-query self-attention with rotary positions (the book's `GroupedQueryAttention`),
    and QK-norm for Qwen3.

    The stages: `project` (q, k, v in heads, QK-norm), RoPE (`apply_rope`, or `F.rope` on the fast path),
    then `attend_reference`, the book's way (each key/value head repeated for its group, a masked
    softmax of Tensor ops), or `attend_fused`, one attention op that takes the n_kv_heads keys and
    values as they are. A KV cache stores the new keys and values first."""

    def __init__(self, cfg, rng):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim, self.fused = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.fused
        H, KV, D, C = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.emb_dim
        self.q_proj = nn.Linear(C, H * D, bias=cfg.attention_bias, rng=rng)
        self.k_proj = nn.Linear(C, KV * D, bias=cfg.attention_bias, rng=rng)
        self.v_proj = nn.Linear(C, KV * D, bias=cfg.attention_bias, rng=rng)
        self.o_proj = nn.Linear(H * D, C, bias=cfg.attention_bias, rng=rng)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(D, cfg.rms_norm_eps, cfg.fused)
            self.k_norm = RMSNorm(D, cfg.rms_norm_eps, cfg.fused)
        self.record_weights, self.attn_weights = False, None  # see Llama.attention_weights

    def forward(self, x, cos, sin, cache=None, layer=0, last_only=False):
        """(B, T, C) -> (B, T, C); last_only: the last position's output alone, (B, 1, C), every position's
        keys and values still stored in the cache (what the last block of a prefill needs)."""
        B, T, _ = x.shape
        # inference on the fast path (no graph to build): q, k and v from one product, heads cut on the array
        qkv = stacked_weight(self, QKV) if self.fused and not is_grad_enabled() else None
        if qkv is not None:
            q, k, v = self.project_stacked(x, qkv, cos, sin)  # rotated: (B, H, T, D), (B, KV, T, D) twice
        else:
            q, k, v = self.project(x)  # (B, H, T, D), (B, KV, T, D), (B, KV, T, D)
            if self.fused:  # one op each; cos and sin (T, D) broadcast over batch and heads
                q, k = F.rope(q, cos, sin), F.rope(k, cos, sin)
            else:
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # decoding: attend to the cached positions too (constants: no gradient)
            if x.requires_grad:
                raise RuntimeError("a KV cache is for inference; run the model under no_grad()")
            keys, values = cache.update(layer, k.data, v.data)
            k, v = Tensor(keys), Tensor(values)  # (B, KV, cached + T, D)
        if last_only and T > 1:
            q, T = q[:, :, -1:], 1  # the last query, which sees every key
        fused = self.fused and not self.record_weights  # the fused op keeps no weights to show
        y = self.attend_fused(q, k, v) if fused else self.attend_reference(q, k, v)  # (B, H, T, D)
        if qkv is not None:  # no gradient: the heads merged on the array, (B, H, T, D) -> (B, T, H*D)
            return self.o_proj(Tensor(y.data.transpose(0, 2, 1, 3).reshape(B, T, -1)))
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))  # (B, T, H*D) -> (B, T, C)

    def project(self, x):
        """Queries, keys and values in heads: (B, T, C) -> (B, H, T, D) and twice (B, KV, T, D), with
        QK-norm (Qwen3) over each head's D."""
        B, T, _ = x.shape
        D = self.head_dim
        q = self.q_proj(x).reshape(B, T, self.n_heads, D)  # (B, T, H*D) -> (B, T, H, D)
        k = self.k_proj(x).reshape(B, T, self.n_kv_heads, D)  # (B, T, KV*D) -> (B, T, KV, D)
        v = self.v_proj(x).reshape(B, T, self.n_kv_heads, D)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, T, heads, D) -> (B, heads, T, D)

    def project_stacked(self, x, qkv, cos, sin):
        """`project` and RoPE without a graph (inference on the fast path): one product with the stacked
        weights `qkv` ((H + 2 KV) * D, C), the heads views of its output; the queries and keys, side by
        side in it, rotated by one F.rope (QK-norm's two norms, Qwen3, rotate them apart). Returns q
        (B, H, T, D) and k, v (B, KV, T, D), rotated."""
        B, T, _ = x.shape
        H, KV, D = self.n_heads, self.n_kv_heads, self.head_dim
        y = F.linear(x, Tensor(qkv)).data.reshape(B, T, H + 2 * KV, D)  # (B, T, C) -> (B, T, H + 2 KV, D)
        heads = y.transpose(0, 2, 1, 3)  # (B, H + 2 KV, T, D), a view
        v = Tensor(heads[:, H + KV:])
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(Tensor(y[:, :, :H])), self.k_norm(Tensor(y[:, :, H:H + KV]))  # (B, T, heads, D)
            return F.rope(q.transpose(1, 2), cos, sin), F.rope(k.transpose(1, 2), cos, sin), v
        qk = F.rope(Tensor(heads[:, :H + KV]), cos, sin).data  # (B, H + KV, T, D): both rotated at once
        return Tensor(qk[:, :H]), Tensor(qk[:, H:]), v

    def attend_reference(self, q, k, v):
        """The book's grouped-query attention: repeat each key/value head for the group of query heads
        that share it, then causal multi-head attention as in chapter 3. q (B, H, T, D), k and v
        (B, KV, Tk, D) with Tk >= T (the cache's positions come first) -> (B, H, T, D)."""
        B, H, T, D = q.shape
        KV, Tk = k.shape[1], k.shape[2]
        group = H // KV
        # (B, KV, Tk, D) -> (B, KV, group, Tk, D) -> (B, H, Tk, D): the book's repeat_interleave(group, dim=1)
        k = k.unsqueeze(2).expand(B, KV, group, Tk, D).reshape(B, H, Tk, D)
        v = v.unsqueeze(2).expand(B, KV, group, Tk, D).reshape(B, H, Tk, D)
        scores = q @ k.transpose(2, 3)  # (B, H, T, D) @ (B, H, D, Tk) -> (B, H, T, Tk)
        # causal mask: query i (at position Tk - T + i) sees keys 0 .. Tk - T + i
        xp = backend.xp_for(q.device)
        mask = xp.triu(xp.ones((T, Tk), dtype=bool), k=Tk - T + 1)
        weights = R.softmax(scores.masked_fill(mask, -math.inf) / math.sqrt(D), axis=-1)  # (B, H, T, Tk)
        if self.record_weights:
            self.attn_weights = backend.to_host(weights.data)
        return weights @ v  # (B, H, T, Tk) @ (B, H, Tk, D) -> (B, H, T, D)

    def attend_fused(self, q, k, v):
        """The same attention as one op, `F.scaled_dot_product_attention`, given the n_kv_heads keys and
        values as they are: q (B, H, T, D), k and v (B, KV, Tk, D). Query head h uses key/value head
        h // group (heads grouped contiguously, as Hugging Face's repeat_kv); inside the op a group's
        query rows are stacked into one product with its key/value head, so k and v are never copied per
        query head and their gradients are the sums over the group. A single new token (decoding with
        the cache) sees every key: one product per key/value head, its group's queries as the rows, no
        mask."""
        return F.scaled_dot_product_attention(q, k, v, causal=True)  # (B, H, T, D)


class LlamaMLP(nn.Module):
    """The SwiGLU feed-forward (the book's Llama `FeedForward`): down(silu(gate(x)) * up(x)), C -> hidden -> C.
    The middle is one op on the fast path (`F.swiglu(gate, up)`), `silu` and a product in the reference."""

    def __init__(self, cfg, rng):
        super().__init__()
        self.fused = cfg.fused
        self.gate_proj = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False, rng=rng)
        self.up_proj = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False, rng=rng)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.emb_dim, bias=False, rng=rng)

    def forward(self, x):
        stacked = stacked_weight(self, GATE_UP) if self.fused and not is_grad_enabled() else None
        if stacked is not None:  # inference: gate and up from one product, (B, T, C) -> (B, T, 2 hidden)
            y = F.linear(x, Tensor(stacked)).data
            hidden = y.shape[-1] // 2
            gate, up = Tensor(y[..., :hidden]), Tensor(y[..., hidden:])  # views, (B, T, hidden) each
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)  # (B, T, C) -> (B, T, hidden) each
        h = F.swiglu(gate, up) if self.fused else silu(gate) * up
        return self.down_proj(h)  # (B, T, hidden) -> (B, T, C)


class LlamaBlock(nn.Module):
    """Pre-norm transformer block: x + attn(rmsnorm(x)), then x + mlp(rmsnorm(x)) (Hugging Face's
    LlamaDecoderLayer; the book's TransformerBlock with RMSNorm and without dropout)."""

    def __init__(self, cfg, rng):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.emb_dim, cfg.rms_norm_eps, cfg.fused)
        self.self_attn = LlamaAttention(cfg, rng)
        self.post_attention_layernorm = RMSNorm(cfg.emb_dim, cfg.rms_norm_eps, cfg.fused)
        self.mlp = LlamaMLP(cfg, rng)

    def forward(self, x, cos, sin, cache=None, layer=0, last_only=False):
        """(B, T, C) -> (B, T, C), or the last position's alone, (B, 1, C), with last_only (the cache still
        gets every position's keys and values)."""
        h = self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, last_only)
        x = (x[:, -1:] if h.shape[1] < x.shape[1] else x) + h
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """A Llama-family language model (Llama 3, SmolLM2, Qwen3): the token embedding, `n_layers` blocks,
    a final RMSNorm and the output head (the embedding's transpose when `tie_weights`, else `lm_head`).

    The same interface as `GPT`: `model(ids)` gives logits (B, T, vocab); `forward(ids, cache=None,
    last_only=False)`; `hidden_states(ids, cache)`; `new_cache(batch_size)` makes the KV cache that
    `tinygrad_llm.models.generate` fills. Published weights: `tinygrad_llm.load_pretrained(source)`, or
    `llama_weights.load_llama` for the model alone; `save_pretrained(directory)` writes it back in Hugging Face's
    layout, as GPT's writes GPT-2's. `init=False` keeps the layers' first draws instead of
    Hugging Face's N(0, 0.02), for a loader that overwrites every parameter. Replacing the head (`model.lm_head = ...`) unties a tied model
    as GPT's does.
    """

    def __init__(self, config, seed=0, init=True):
        super().__init__()
        self.config = cfg = config
        rng = np.random.default_rng(seed)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.emb_dim, rng=rng)
        self.layers = nn.ModuleList([LlamaBlock(cfg, rng) for _ in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.emb_dim, cfg.rms_norm_eps, cfg.fused)
        if not cfg.tie_weights:
            self.lm_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False, rng=rng)
        # the rotary frequencies (D/2,), a host array and not a parameter; a GGUF file of Llama 3.1+
        # stores its scaled frequencies' factors as a tensor, and the loader replaces this with them
        self.inv_freq = self._config_inv_freq = rope_frequencies(cfg.head_dim, cfg.rope_base, cfg.rope_scaling)
        self._rope_table = None  # the fast path's (inv_freq, device, cos, sin), made by `rope_table`
        if init:  # a loader that overwrites every parameter skips the second draw
            self._init_weights(rng)

    def _init_weights(self, rng):
        """N(0, 0.02) weights (Hugging Face's initializer_range), zero biases, norm scales at one."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.data[...] = 0.0
            elif not name.endswith("norm.weight"):
                rng.standard_normal(dtype=np.float32, out=p.data)  # in place: no full-size temporaries
                p.data *= 0.02

    def __setattr__(self, name, value):
        if name == "lm_head" and isinstance(value, nn.Module) and "config" in self.__dict__ and self.config.tie_weights:
            self.config = replace(self.config, tie_weights=False)  # a replaced head unties (see GPT)
        super().__setattr__(name, value)

    def to(self, device):
        """Move every parameter to `device` (nn.Module.to), and drop the inference path's stacked weights
        (`stacked_weight`): the moved parameters no longer view them, and they are stacked anew, on the
        device, by the next forward without a graph."""
        super().to(device)
        for m in self.modules():
            for key in [k for k in m.__dict__ if k.startswith("_stacked_")]:
                del m.__dict__[key]
        return self

    def save_pretrained(self, directory):
        """Write config.json + model.safetensors in Hugging Face's layout (`llama_save.save_pretrained`: a
        LoRA layer merged), which `tinygrad_llm.load_pretrained` and transformers' AutoModelForCausalLM read.
        The tokenizer's files are not written (as GPT's method; `pretrained.save_model` writes both)."""
        llama_save.save_pretrained(self, directory)

    def new_cache(self, batch_size, max_len=None):
        """An empty KV cache for `batch_size` sequences of up to `max_len` (default context_length)
        positions, on the model's device, n_kv_heads heads per layer."""
        w = self.embed_tokens.weight
        return LlamaKVCache(self.config, batch_size, max_len, dtype=w.dtype, device=w.device)

    def forward(self, ids, cache=None, last_only=False):
        """Logits (B, T, vocab) for integer ids (B, T); with a KV cache, ids continue the cached sequence.
        last_only=True: only the last position's logits, (B, 1, vocab), which is all generation reads."""
        if (cache is not None and ids.shape[-1] == 1 and cache.length < self.config.context_length
                and not is_grad_enabled()):  # one decoded token that fits (hidden_states says when not)
            logits = llama_inference.decode_step(self, ids.data if isinstance(ids, Tensor) else ids, cache)
            if logits is not None:  # the same ops on the arrays, without the graph (models/llama_inference.py)
                return Tensor(logits)
        # a long prefill (no graph): BLAS on one thread, the work split by our threads (backend.host_parallel)
        with backend.host_parallel(math.prod(ids.shape)) if not is_grad_enabled() else contextlib.nullcontext():
            x = self.hidden_states(ids, cache, last_only)  # (B, 1, C) with last_only
        if self.config.tie_weights:
            return F.linear(x, self.embed_tokens.weight)  # (B, T, C) -> (B, T, vocab)
        return self.lm_head(x)  # (B, T, C) -> (B, T, vocab)

    def hidden_states(self, ids, cache=None, last_only=False):
        """The last block's output after the final RMSNorm, (B, T, C); with last_only, (B, 1, C): the last
        block works on the last position alone once every position's keys and values are stored."""
        ids = ids.data if isinstance(ids, Tensor) else ids
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.context_length:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than the context length {self.config.context_length}; "
                "crop the input to its last context_length tokens")
        # the angles of this call's positions (after the cached ones), (T, D) each, for every layer
        if self.config.fused:
            cos, sin = self.rope_table(start + T)
            cos, sin = cos[start:start + T], sin[start:start + T]  # views of the model's table: no copy
        else:
            cos, sin = rope_angles(self.inv_freq, np.arange(start, start + T))
            device = self.embed_tokens.weight.device
            cos, sin = Tensor(backend.to_device(cos, device)), Tensor(backend.to_device(sin, device))
        x = self.embed_tokens(ids)  # (B, T) -> (B, T, C)
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, cache, i, last_only and i == len(self.layers) - 1)
        if cache is not None:
            cache.length += T
        return self.norm(x)

    def attention_weights(self, ids):
        """Each layer's attention weights for ids (B, T): a list of n_layers host arrays (B, n_heads, T, T),
        one per query head (the heads of a group share their keys, not their weights), row i holding how
        much token i attends to each token up to itself. Runs the reference attention in eval mode,
        without gradients, as `GPT.attention_weights` does."""
        return recorded_attention_weights(self, [block.self_attn for block in self.layers], ids)

    def rope_table(self, length):
        """The fast path's cos and sin, arrays (n, D) on the model's device for positions 0 .. n-1 with
        n >= length, made once by `F.rope_cos_sin` and kept, so that a forward (a decoded token) takes a
        view of its rows start..start+T instead of computing and moving new angles. The table grows by
        doubling (at least 256 rows, at most context_length): a model of a long context does not hold
        the whole of it for a short chat. Where a loader replaced `inv_freq` (a GGUF file's own rotary
        factors, Llama 3.1+), the table is made from those frequencies as the reference path's are."""
        cfg, device = self.config, self.embed_tokens.weight.device
        table = self._rope_table
        if table is not None and table[0] is self.inv_freq and table[1] == device and len(table[2]) >= length:
            return table[2], table[3]
        have = len(table[2]) if table is not None else 0
        n = min(cfg.context_length, max(length, 256, 2 * have))
        if self.inv_freq is self._config_inv_freq:
            s = cfg.rope_scaling
            scaling = None if s is None else {
                "factor": s.factor, "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_context_length}
            cos, sin = F.rope_cos_sin(cfg.head_dim, n, cfg.rope_base, scaling, xp=backend.xp_for(device))
        else:
            cos, sin = (backend.to_device(a, device) for a in rope_angles(self.inv_freq, np.arange(n)))
        self._rope_table = (self.inv_freq, device, cos, sin)
        return cos, sin


__all__ = ["LlamaConfig", "RopeScaling", "PRESETS", "Llama", "LlamaAttention", "LlamaMLP", "LlamaBlock", "RMSNorm",
           "LlamaKVCache", "rms_norm", "silu", "rope_frequencies", "rope_angles", "apply_rope"]
