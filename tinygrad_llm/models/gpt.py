"""Book chapter 3, sections 3.3-3.6, and chapter 4, sections 4.1-4.6: the GPT-2 architecture, embeddings,
causal multi-head attention, transformer blocks and the language-model head.

Where the book's listings are: MultiHeadAttention (listing 3.5) is `CausalSelfAttention`, its
`attend_reference` step by step; LayerNorm (listing 4.2) and GELU (listing 4.3) are `nn.LayerNorm` and
`F.gelu` / `R.gelu` in autograd/; FeedForward (listing 4.4) is `MLP`; TransformerBlock (listing 4.6) is
`Block`; GPTModel (listing 4.7) is `GPT`. The token and position embeddings of chapter 2, sections
2.7-2.8, are `GPT.wte` and `GPT.wpe`.

Parameter names follow GPT-2's published checkpoints (wte, wpe, h.N.attn.c_attn, ...), as nanoGPT does,
so loading them is a short, explicit name map (`tinygrad_llm/models/gpt2_weights.py`).
"""

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

import autograd.functional as F
import autograd.reference as R
from autograd import Tensor, backend, nn
from tinygrad_llm.models import gpt2_weights


class ConfigDict:
    """A model config dataclass's dict form (GPTConfig's, and the Llama family's LlamaConfig's): `to_dict`,
    and `from_dict`, which refuses a key that is not a field (a setting from a newer version, dropped,
    would build another model than the one that was saved) and gives the missing ones their defaults."""

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
        return cls(**d)


@dataclass(frozen=True)
class GPTConfig(ConfigDict):
    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.0
    qkv_bias: bool = True
    tie_weights: bool = True  # the output head reuses the token embedding, as GPT-2 does
    # "gpt2": N(0, 0.02) with scaled residual projections (GPT-2, nanoGPT); "torch": PyTorch's layer
    # defaults, N(0, 1) embeddings and U(+-1/sqrt(fan_in)) linears, as the book's GPTModel has them
    init: str = "gpt2"
    # True: the fused ops of autograd/functional.py (fast); False: the book-shaped reference path, each
    # layer composed of Tensor ops (autograd/reference.py, CausalSelfAttention.attend_reference): the same
    # numbers, slower, and the one that can show its attention weights
    fused: bool = True

    def __post_init__(self):
        for name, limit in _SIZE_LIMITS.items():
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= limit:  # bool is an int subclass: excluded
                raise ValueError(f"{name} must be an integer in [1, {limit}], got {value!r}")
        for name in ("qkv_bias", "tie_weights", "fused"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if type(self.drop_rate) not in (int, float):
            raise ValueError(f"drop_rate must be a number, got {self.drop_rate!r}")
        if self.emb_dim % self.n_heads:
            raise ValueError(f"emb_dim {self.emb_dim} must be divisible by n_heads {self.n_heads}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        if self.init not in ("gpt2", "torch"):
            raise ValueError(f"init must be 'gpt2' or 'torch', got {self.init!r}")

    @property
    def head_dim(self):
        return self.emb_dim // self.n_heads

    @classmethod
    def preset(cls, name, **overrides):
        """A named configuration (see PRESETS), with fields overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)


# Upper bounds that catch a corrupt config.json before it allocates: far above any GPT-2 (vocab 50257,
# context 1024, width 1600, 48 layers), far below what would fit in memory
_SIZE_LIMITS = {"vocab_size": 2**31 - 1, "context_length": 2**20, "emb_dim": 2**16, "n_heads": 2**10,
                "n_layers": 2**10}

_BOOK = dict(qkv_bias=False, tie_weights=False, drop_rate=0.1, init="torch")
PRESETS = {
    # GPT-2 as published: qkv bias, tied head, 1024 context
    "gpt2-small": GPTConfig(emb_dim=768, n_layers=12, n_heads=12),
    "gpt2-medium": GPTConfig(emb_dim=1024, n_layers=24, n_heads=16),
    "gpt2-large": GPTConfig(emb_dim=1280, n_layers=36, n_heads=20),
    "gpt2-xl": GPTConfig(emb_dim=1600, n_layers=48, n_heads=25),
    # the book's GPT_CONFIG_124M for pretraining: no qkv bias, untied head, dropout 0.1, PyTorch's init
    "book-124m": GPTConfig(emb_dim=768, n_layers=12, n_heads=12, **_BOOK),
    # small models that train on a CPU in minutes, and a tiny one for tests
    "cpu-small": GPTConfig(context_length=128, emb_dim=192, n_layers=4, n_heads=6, drop_rate=0.1),
    "cpu-tiny": GPTConfig(context_length=64, emb_dim=64, n_layers=2, n_heads=4, drop_rate=0.0),
}


class KVCache:
    """Keys and values of the tokens seen so far, per layer, so each new token attends to them without
    recomputing them, for up to `max_len` positions; `length` is how many are filled.

    The arrays grow as positions come (at least INITIAL_POSITIONS, then doubling, at most max_len),
    as the rope table does: a chat of a few hundred tokens on a model of an 8,192-token context holds
    a few hundred positions, not 8,192 (for SmolLM2, 377 MB of zeros that a prefill would allocate and
    touch first)."""

    INITIAL_POSITIONS = 256

    def __init__(self, config, batch_size, max_len=None, dtype=np.float32, device="cpu"):
        self.max_len = max_len or config.context_length
        self.xp, self.dtype = backend.xp_for(device), dtype
        self.head_shape = (batch_size, self._heads(config), config.head_dim)  # (B, heads, D)
        self.keys = self.values = None
        self.decode_layers = None  # a Llama's decode step keeps its layers' arrays here (llama_inference)
        self._allocate(min(self.max_len, self.INITIAL_POSITIONS), config.n_layers)
        self.length = 0

    def _heads(self, config):
        return config.n_heads

    def _allocate(self, positions, n_layers):
        """Arrays of `positions` positions, (B, heads, positions, D) per layer, holding the cached ones."""
        B, H, D = self.head_shape
        new = [[self.xp.zeros((B, H, positions, D), dtype=self.dtype) for _ in range(n_layers)] for _ in "kv"]
        if self.keys is not None:
            for old, fresh in zip(self.keys + self.values, new[0] + new[1]):
                fresh[:, :, :self.length] = old[:, :, :self.length]
        self.keys, self.values = new

    @property
    def capacity(self):
        """How many positions the arrays hold now (they grow up to max_len)."""
        return self.keys[0].shape[2]

    def update(self, layer, k, v):
        """Store `layer`'s keys and values of the new tokens, k and v (B, H, T, D) arrays, after the
        `length` positions already cached, and return every position's, (B, H, length + T, D) views.
        (The model advances `length` once all its layers have stored theirs.)"""
        start, T = self.length, k.shape[2]
        if start + T > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {start + T} were asked for")
        if start + T > self.capacity:  # grow every layer at once (the first layer asks first)
            self._allocate(min(self.max_len, max(start + T, 2 * self.capacity)), len(self.keys))
        self.keys[layer][:, :, start:start + T] = k
        self.values[layer][:, :, start:start + T] = v
        return self.keys[layer][:, :, :start + T], self.values[layer][:, :, :start + T]

    def reset(self):
        """Forget every cached position, and what a model's decode step kept here about its layers
        (`llama_inference.decode_step`): reset a cache after changing the model's weights."""
        self.length = 0
        self.decode_layers = None


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention (book section 3.6, listing 3.5's MultiHeadAttention) from one fused
    qkv projection.

    `attend_reference` is the book's `MultiHeadAttention.forward` step by step; `forward` runs it when
    the config says `fused=False`, and otherwise `F.multi_head_attention`, one op that does the same
    without the split and merge copies. With a KV cache (generation), the new keys and values are stored
    in it and the queries attend to everything cached (`attend_cached`; the cache lives here, in the
    module, as in the book's kv_cache/gpt2.py, not inside an op). With `record_weights` set, the
    reference path keeps the last attention weights, (B, n_heads, T, T), in `attn_weights` (see
    `GPT.attention_weights`).
    """

    def __init__(self, cfg, rng):
        super().__init__()
        self.n_heads, self.drop_rate, self.fused = cfg.n_heads, cfg.drop_rate, cfg.fused
        self.c_attn = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias, rng=rng)  # one fused qkv
        self.c_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim, rng=rng)
        self.attn_dropout = nn.Dropout(cfg.drop_rate, seed=int(rng.integers(2**31)))
        self.record_weights, self.attn_weights = False, None

    def forward(self, x, cache=None, layer=0):
        qkv = self.c_attn(x)  # (B, T, C) -> (B, T, 3C)
        if not self.fused or self.record_weights:
            y = self.attend_reference(qkv, cache, layer)
        elif cache is not None:
            y = self.attend_cached(qkv, cache, layer)
        else:  # one fused op splits the heads, attends and merges them: (B, T, 3C) -> (B, T, C)
            y = F.multi_head_attention(qkv, self.n_heads, dropout_p=self.drop_rate, training=self.training,
                                       generator=self.attn_dropout.generator_for(x.device))
        return self.c_proj(y)

    def _heads(self, qkv):
        """q, k, v (B, H, T, D) as views of the fused projection's array (no copies)."""
        B, T, C3 = qkv.shape
        heads = qkv.data.reshape(B, T, 3, self.n_heads, C3 // (3 * self.n_heads)).transpose(2, 0, 3, 1, 4)
        return heads[0], heads[1], heads[2]

    def attend_cached(self, qkv, cache, layer):
        """Inference with a KV cache: the new tokens' keys and values join the cached ones, and the new
        queries attend to all of them (causal: each sees the cache and the new tokens up to itself)."""
        if qkv.requires_grad:
            raise RuntimeError("a KV cache is for inference; run the model under no_grad()")
        B, T, C3 = qkv.shape
        q, k, v = self._heads(qkv)  # (B, H, T, D) each
        keys, values = cache.update(layer, k, v)  # (B, H, cached + T, D)
        y = F.scaled_dot_product_attention(Tensor(q), Tensor(keys), Tensor(values), causal=True)
        return y.transpose(1, 2).reshape(B, T, C3 // 3)  # merge the heads: (B, T, H, D) -> (B, T, C)

    def attend_reference(self, qkv, cache=None, layer=0):
        """The book's multi-head attention (listing 3.5's forward) on the fused projection: (B, T, 3C) -> (B, T, C).
        The causal mask is section 3.5.1's, the dropout on the attention weights 3.5.2's."""
        B, T, C3 = qkv.shape
        C, H = C3 // 3, self.n_heads
        D = C // H
        q, k, v = qkv.split(C, axis=2)  # 3 x (B, T, C): queries, keys, values
        # split each into heads: (B, T, C) -> (B, T, H, D) -> (B, H, T, D)
        q = q.reshape(B, T, H, D).transpose(1, 2)
        k = k.reshape(B, T, H, D).transpose(1, 2)
        v = v.reshape(B, T, H, D).transpose(1, 2)
        start = 0
        if cache is not None:  # decoding: attend to the cached positions too (constants: no gradient)
            start = cache.length
            keys, values = cache.update(layer, k.data, v.data)
            k, v = Tensor(keys), Tensor(values)  # (B, H, start + T, D)
        scores = q @ k.transpose(2, 3)  # (B, H, T, D) @ (B, H, D, Tk) -> (B, H, T, Tk)
        # causal mask: query i (at position start + i) sees keys 0 .. start + i, not the ones after it
        xp = backend.xp_for(qkv.device)
        mask = xp.triu(xp.ones((T, start + T), dtype=bool), k=start + 1)
        scores = scores.masked_fill(mask, -math.inf)
        weights = R.softmax(scores / math.sqrt(D), axis=-1)  # (B, H, T, Tk), each row sums to 1
        if self.record_weights:
            self.attn_weights = backend.to_host(weights.data)
        weights = self.attn_dropout(weights)
        context = weights @ v  # (B, H, T, Tk) @ (B, H, Tk, D) -> (B, H, T, D)
        return context.transpose(1, 2).reshape(B, T, C)  # merge the heads: (B, T, H, D) -> (B, T, C)


class MLP(nn.Module):
    """The feed-forward network (book section 4.3, listing 4.4's FeedForward): Linear(C, 4C), GELU
    (listing 4.3), Linear(4C, C)."""

    def __init__(self, cfg, rng):
        super().__init__()
        self.gelu = F.gelu if cfg.fused else R.gelu  # the fused op, or the book's three-line formula
        self.c_fc = nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim, rng=rng)
        self.c_proj = nn.Linear(4 * cfg.emb_dim, cfg.emb_dim, rng=rng)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm transformer block (book section 4.5, listing 4.6's TransformerBlock): x + attn(ln(x)),
    then x + mlp(ln(x)), each with residual dropout (the shortcut connections of section 4.4)."""

    def __init__(self, cfg, rng):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.emb_dim, fused=cfg.fused)
        self.attn = CausalSelfAttention(cfg, rng)
        self.ln_2 = nn.LayerNorm(cfg.emb_dim, fused=cfg.fused)
        self.mlp = MLP(cfg, rng)
        self.drop = nn.Dropout(cfg.drop_rate, seed=int(rng.integers(2**31)))

    def forward(self, x, cache=None, layer=0):
        x = x + self.drop(self.attn(self.ln_1(x), cache, layer))
        return x + self.drop(self.mlp(self.ln_2(x)))


def recorded_attention_weights(model, attns, ids):
    """The attention weights `attns` (modules with `record_weights` / `attn_weights`, one per layer)
    keep while `model` runs on ids in eval mode without gradients; recording is switched off after.
    Serves GPT.attention_weights and Llama.attention_weights."""
    from autograd import no_grad

    try:
        for a in attns:
            a.record_weights = True
        with nn.eval_mode(model), no_grad():
            model.hidden_states(ids)
        return [a.attn_weights for a in attns]
    finally:
        for a in attns:
            a.record_weights, a.attn_weights = False, None


class GPT(nn.Module):
    """GPT-2 (book section 4.6, listing 4.7's GPTModel): token and position embeddings, `n_layers` blocks,
    a final LayerNorm and the output head.

    The head: with `tie_weights` (GPT-2's layout) the logits are x @ wte.weight^T and there is no
    `lm_head`; otherwise `lm_head` is an `nn.Linear(emb_dim, vocab_size, bias=False)` and forward calls it.

    Replacing the head, as the book's chapter 6 does with `model.out_head = nn.Linear(768, 2)`: assign any
    module to `model.lm_head` and forward returns `model.lm_head(x)` (its bias, and a LoRA wrapper, are
    used). On a tied model the assignment unties it: `model.config` becomes a copy with
    `tie_weights=False`, `wte` keeps its weights and stops serving as the head, and `lm_head` is part of
    the parameters, the state dict and the saved checkpoint from then on. `config.vocab_size` still sizes
    `wte`; a head of another width (2 classes) gives logits of that width.
    """

    def __init__(self, config, seed=0):
        super().__init__()
        self.config = cfg = config
        rng = np.random.default_rng(seed)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.emb_dim, rng=rng)
        self.wpe = nn.Embedding(cfg.context_length, cfg.emb_dim, rng=rng)
        self.drop = nn.Dropout(cfg.drop_rate, seed=int(rng.integers(2**31)))
        self.h = nn.ModuleList([Block(cfg, rng) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.emb_dim, fused=cfg.fused)
        if not cfg.tie_weights:
            self.lm_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False, rng=rng)
        if cfg.init == "gpt2":
            self._init_weights(rng)  # otherwise the layers keep the PyTorch-style values they drew

    def _init_weights(self, rng):
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, and residual projections scaled by
        1/sqrt(2 * n_layers) so the residual stream's variance does not grow with depth.
        The parameters are still on the host here (layers are built there)."""
        proj_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.data[...] = 0.0
            elif ".ln_" in name or name.startswith("ln_f"):
                continue  # LayerNorm weights stay at one
            else:
                std = proj_std if name.endswith("c_proj.weight") else 0.02
                rng.standard_normal(dtype=np.float32, out=p.data)  # in place: no full-size temporaries
                p.data *= std

    def __setattr__(self, name, value):
        if name == "lm_head" and isinstance(value, nn.Module) and "config" in self.__dict__ and self.config.tie_weights:
            self.config = replace(self.config, tie_weights=False)  # a replaced head unties (see the class docstring)
        super().__setattr__(name, value)

    def forward(self, ids, cache=None, last_only=False):
        """Logits (B, T, vocab) for integer ids (B, T); with a KV cache, ids continue the cached sequence.

        last_only=True: only the last position's logits, (B, 1, vocab), which is all that generation
        reads. The head is the model's largest product (a vocab-wide row per position), so a prompt, or
        a context recomputed without a cache, skips it for every position but the last."""
        x = self.hidden_states(ids, cache)
        if last_only and x.shape[1] > 1:
            x = x[:, -1:]  # (B, T, C) -> (B, 1, C)
        if self.config.tie_weights:
            return F.linear(x, self.wte.weight)  # (B, T, C) -> (B, T, vocab)
        return self.lm_head(x)  # (B, T, C) -> (B, T, vocab), or the width of a replaced head

    def hidden_states(self, ids, cache=None):
        """The last block's output after the final LayerNorm, (B, T, C): what the language-model head reads,
        and what a classifier head reads instead (`tinygrad_llm.finetune.classifier`)."""
        ids = ids.data if isinstance(ids, Tensor) else ids
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.context_length:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than the context length {self.config.context_length}; "
                "crop the input to its last context_length tokens"
            )
        # positions made on the host: the embedding's range check of them costs no device sync; the token
        # ids are checked there too, once per batch, as they enter the model (-1 would read the last row)
        pos = np.arange(start, start + T)
        x = self.wte(ids) + self.wpe(pos)  # (B, T, C) + (T, C) -> (B, T, C)
        x = self.drop(x)
        for i, block in enumerate(self.h):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def attention_weights(self, ids):
        """Each layer's attention weights for ids (B, T): a list of n_layers host arrays (B, n_heads, T, T),
        row i of a head holding how much token i attends to each token up to itself. Runs the reference
        attention (the fused op keeps no weights) in eval mode, without gradients."""
        return recorded_attention_weights(self, [block.attn for block in self.h], ids)

    def summary(self, batch_size=1, seq_len=None):
        """A table for learners: each layer, its output shape and parameter count, and the total."""
        cfg = self.config
        B, T, C, V = batch_size, seq_len or cfg.context_length, cfg.emb_dim, cfg.vocab_size
        count = lambda m: sum(p.size for p in m.parameters())  # noqa: E731
        rows = [("wte (token embedding)", (B, T, C), count(self.wte)),
                ("wpe (position embedding)", (T, C), count(self.wpe))]
        for i, block in enumerate(self.h):
            rows += [(f"h.{i}.attn (causal self-attention, {cfg.n_heads} heads)", (B, T, C), count(block.ln_1) + count(block.attn)),
                     (f"h.{i}.mlp (feed-forward {C} -> {4 * C} -> {C})", (B, T, C), count(block.ln_2) + count(block.mlp))]
        rows.append(("ln_f (final layer norm)", (B, T, C), count(self.ln_f)))
        head_width = V if cfg.tie_weights else getattr(self.lm_head, "out_features", V)
        rows.append(("lm_head" + (" (tied to wte)" if cfg.tie_weights else ""), (B, T, head_width),
                     0 if cfg.tie_weights else count(self.lm_head)))
        width = max(len(r[0]) for r in rows) + 2
        lines = [f"{'layer':<{width}}{'output shape':<22}{'parameters':>14}", "-" * (width + 36)]
        lines += [f"{name:<{width}}{str(shape):<22}{n:>14,}" for name, shape, n in rows]
        lines += ["-" * (width + 36), f"{'total':<{width}}{'':<22}{self.num_parameters():>14,}"]
        return "\n".join(lines)

    @classmethod
    def from_pretrained(cls, name_or_path, cache_dir=None, device="cpu"):
        """GPT-2's published weights ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", downloaded once and
        cached) or a local Hugging Face checkpoint directory (config.json + model.safetensors). The model
        is built and loaded on the host, then moved to `device`. (Book section 5.5: the book's
        `load_weights_into_gpt`, listing 5.5, is `gpt2_weights.load_weights`.)"""
        fields, path = gpt2_weights.find_pretrained(name_or_path, cache_dir)
        try:
            config = GPTConfig.from_dict(fields)
        except (TypeError, ValueError) as e:
            raise gpt2_weights.CheckpointError(f"{path.parent / 'config.json'}: {e}") from None
        model = cls(config)
        gpt2_weights.load_weights(model, path)
        return model.to(device)

    def save_pretrained(self, directory):
        """Write config.json + model.safetensors in Hugging Face's GPT-2 layout, readable by other tools."""
        gpt2_weights.save_pretrained(self, directory)
