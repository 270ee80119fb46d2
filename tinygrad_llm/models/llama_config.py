"""Beyond the book: the Llama family's configuration (tinygrad_llm/models/llama.py), and how it is read from
a Hugging Face config.json and from a GGUF file's metadata, and written back as a config.json.

`LlamaConfig` is a frozen dataclass with named presets and GPTConfig's dict form (`ConfigDict`); its
fields use the book's names (emb_dim, n_heads, context_length, hidden_dim) and `config_fields_from_hf` /
`config_fields_from_gguf` map the two formats' keys onto them:

    hidden_size -> emb_dim              llama.embedding_length
    num_attention_heads -> n_heads      llama.attention.head_count
    num_key_value_heads -> n_kv_heads   llama.attention.head_count_kv
    intermediate_size -> hidden_dim     llama.feed_forward_length
    max_position_embeddings             llama.context_length -> context_length
    rope_theta -> rope_base             llama.rope.freq_base
    rms_norm_eps                        llama.attention.layer_norm_rms_epsilon
    tie_word_embeddings -> tie_weights  (GGUF: tied when there is no output.weight tensor)

(and qwen3.* for Qwen3). Anything the model does not implement is a CheckpointError naming the key.
"""

import math
from dataclasses import dataclass, replace

import numpy as np

from autograd.checkpoint import CheckpointError
from tinygrad_llm.models.gpt import ConfigDict

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}  # model_type -> HF class
MODEL_TYPES = tuple(ARCHITECTURES)


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3's frequency scaling (Hugging Face's rope_type "llama3"): wavelengths longer than
    original_context_length / low_freq_factor are divided by `factor`, those shorter than
    original_context_length / high_freq_factor are kept, and the ones between are interpolated."""
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_context_length: int

    def __post_init__(self):
        if not (self.factor > 0 and self.high_freq_factor > self.low_freq_factor > 0 and self.original_context_length > 0):
            raise ValueError(f"rope_scaling needs factor > 0, high_freq_factor > low_freq_factor > 0 and "
                             f"original_context_length > 0, got {self}")


@dataclass(frozen=True)
class LlamaConfig(ConfigDict):
    vocab_size: int = 49152
    context_length: int = 8192  # Hugging Face's max_position_embeddings
    emb_dim: int = 576  # hidden_size
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3  # grouped-query attention: n_heads / n_kv_heads query heads share one key/value head
    head_dim: int = None  # None: emb_dim // n_heads (Qwen3 sets it: its heads are wider than emb_dim / n_heads)
    hidden_dim: int = 1536  # the feed-forward's width, intermediate_size
    rope_base: float = 100000.0  # rope_theta
    rope_scaling: RopeScaling = None  # Llama 3.1+'s frequency scaling; None: plain RoPE
    rms_norm_eps: float = 1e-5
    tie_weights: bool = True  # the head reuses the token embedding (tie_word_embeddings)
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    attention_bias: bool = False  # biases on q_proj, k_proj, v_proj and o_proj
    model_type: str = "llama"  # "llama" or "qwen3": Hugging Face's name, written back to config.json
    # True: the fast path (fused attention without per-head copies of K and V); False: the book-shaped
    # reference path composed of Tensor ops. The same numbers either way.
    fused: bool = True

    def __post_init__(self):
        if self.head_dim is None and type(self.emb_dim) is int and type(self.n_heads) is int and self.n_heads > 0:
            object.__setattr__(self, "head_dim", self.emb_dim // self.n_heads)
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        for name, limit in _SIZE_LIMITS.items():  # in order: the heads are checked before the head_dim they give
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= limit:  # bool is an int subclass: excluded
                raise ValueError(f"{name} must be an integer in [1, {limit}], got {value!r}")
            if name == "n_kv_heads" and self.n_heads % self.n_kv_heads:
                raise ValueError(f"n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}")
        for name in ("tie_weights", "qk_norm", "attention_bias", "fused"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("rope_base", "rms_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even (RoPE rotates pairs of dimensions)")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ValueError(f"rope_scaling must be a RopeScaling or None, got {self.rope_scaling!r}")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {self.model_type!r}")

    @property
    def group_size(self):
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    @classmethod
    def preset(cls, name, **overrides):
        """A named configuration (see PRESETS), with fields overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    @classmethod
    def from_hf(cls, d, **overrides):
        """The config of a Hugging Face `config.json` (a dict) of model_type llama or qwen3.

        Rope settings are read where either generation of transformers writes them: `rope_theta` and
        `rope_scaling` (before version 5) or `rope_parameters` {rope_theta, rope_type, ...} (5 on).
        Anything this model does not implement (another activation, MLP biases, sliding windows, another
        rope type) is a ValueError that names the key."""
        return cls(**{**config_fields_from_hf(d), **overrides})

    @classmethod
    def from_gguf_metadata(cls, metadata, vocab_size=None, tied=True, **overrides):
        """The config of a GGUF file's metadata ({key: value}, as `llama_weights.gguf_metadata`
        gives it): `general.architecture` llama or qwen3 and its `<arch>.block_count`, `.embedding_length`,
        `.attention.head_count(_kv)`, ... keys. `vocab_size` defaults to the length of
        tokenizer.ggml.tokens; `tied` is whether the file has no separate output.weight."""
        return cls(**{**config_fields_from_gguf(metadata, vocab_size, tied), **overrides})


# Upper bounds that catch a corrupt config before it allocates (far above Llama 3 405B's 126 layers,
# 128 heads, width 16384, 128K context and 53248 hidden)
_SIZE_LIMITS = {"vocab_size": 2**31 - 1, "context_length": 2**22, "emb_dim": 2**16, "n_layers": 2**10,
                "n_heads": 2**10, "n_kv_heads": 2**10, "head_dim": 2**12, "hidden_dim": 2**18}

PRESETS = {
    # the real models' shapes (their config.json): SmolLM2-135M, Llama 3.2 1B and Qwen3 0.6B
    "smollm2-135m": LlamaConfig(),
    "llama-3.2-1b": LlamaConfig(vocab_size=128256, context_length=131072, emb_dim=2048, n_layers=16, n_heads=32,
                                n_kv_heads=8, hidden_dim=8192, rope_base=500000.0,
                                rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192)),
    "qwen3-0.6b": LlamaConfig(vocab_size=151936, context_length=40960, emb_dim=1024, n_layers=28, n_heads=16,
                              n_kv_heads=8, head_dim=128, hidden_dim=3072, rope_base=1000000.0, rms_norm_eps=1e-6,
                              qk_norm=True, model_type="qwen3"),
    # tiny ones for tests: 2 layers, 4 query heads on 2 key/value heads
    "tiny-llama": LlamaConfig(vocab_size=97, context_length=64, emb_dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                              hidden_dim=64, rope_base=10000.0, tie_weights=False),
    "tiny-qwen3": LlamaConfig(vocab_size=97, context_length=64, emb_dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                              head_dim=16, hidden_dim=64, rope_base=10000.0, rms_norm_eps=1e-6, qk_norm=True,
                              model_type="qwen3"),
}


# ---------------------------------------------------------------------------------------------------
# config.json / GGUF metadata -> LlamaConfig fields, and back


def _hf_config_error(source, message):
    return CheckpointError(f"{source}: {message}")


def config_fields_from_hf(d, source="config.json"):
    """LlamaConfig's fields (a dict) from a Hugging Face config of model_type llama or qwen3."""
    if not isinstance(d, dict):
        raise _hf_config_error(source, f"holds a JSON {type(d).__name__}, not a config object")
    model_type = d.get("model_type")
    if model_type not in ARCHITECTURES:
        raise _hf_config_error(source, f"model_type {model_type!r} is not supported (this loader reads "
                                       f"{', '.join(ARCHITECTURES)}; GPT-2 directories load through GPT.from_pretrained)")
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if key not in d:
            raise _hf_config_error(source, f"lacks the key {key!r}")
    unsupported = []
    if d.get("hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act {d['hidden_act']!r} (only silu)")
    if d.get("mlp_bias", False):
        unsupported.append("mlp_bias true")
    if d.get("use_sliding_window", False):
        unsupported.append("use_sliding_window true")
    if d.get("partial_rotary_factor", 1.0) != 1.0:
        unsupported.append(f"partial_rotary_factor {d['partial_rotary_factor']}")
    # transformers 5 writes rope_parameters {rope_theta, rope_type, ...}; earlier ones rope_theta and rope_scaling
    rope = d.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise _hf_config_error(source, f"rope_parameters is {rope!r:.60}, not an object")
    scaling = d.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    rope_base = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    rope_scaling = None
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else scaling
        if kind == "llama3":
            try:
                rope_scaling = dict(factor=float(scaling["factor"]), low_freq_factor=float(scaling["low_freq_factor"]),
                                    high_freq_factor=float(scaling["high_freq_factor"]),
                                    original_context_length=int(scaling["original_max_position_embeddings"]))
            except (KeyError, TypeError, ValueError) as e:
                raise _hf_config_error(source, f"rope scaling {scaling!r:.120} lacks or garbles {e}") from None
        elif kind != "default":
            unsupported.append(f"rope type {kind!r} (only default and llama3)")
    if unsupported:
        raise _hf_config_error(source, f"unsupported {model_type} variant: " + "; ".join(unsupported))
    n_heads = d["num_attention_heads"]
    return dict(
        vocab_size=d["vocab_size"], context_length=d.get("max_position_embeddings", 2048), emb_dim=d["hidden_size"],
        n_layers=d["num_hidden_layers"], n_heads=n_heads, n_kv_heads=d.get("num_key_value_heads") or n_heads,
        head_dim=d.get("head_dim"), hidden_dim=d["intermediate_size"], rope_base=rope_base,
        rope_scaling=rope_scaling, rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        tie_weights=d.get("tie_word_embeddings", False), qk_norm=model_type == "qwen3",
        attention_bias=d.get("attention_bias", False), model_type=model_type,
    )


def config_to_hf(cfg):
    """A Hugging Face config.json (a dict) for a LlamaConfig: what `AutoModelForCausalLM.from_pretrained`
    needs to build the same model (rope settings in the rope_theta / rope_scaling form, which transformers
    of every version reads)."""
    d = {
        "model_type": cfg.model_type, "architectures": [ARCHITECTURES[cfg.model_type]], "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.context_length, "hidden_size": cfg.emb_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "intermediate_size": cfg.hidden_dim,
        "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_base,
        "tie_word_embeddings": cfg.tie_weights, "attention_bias": cfg.attention_bias, "attention_dropout": 0.0,
        "torch_dtype": "float32",
    }
    if cfg.model_type == "llama":
        d["mlp_bias"] = False
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        d["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                             "high_freq_factor": s.high_freq_factor,
                             "original_max_position_embeddings": s.original_context_length}
    return d


def config_fields_from_gguf(metadata, vocab_size=None, tied=True, source="GGUF metadata"):
    """LlamaConfig's fields from a GGUF file's metadata ({key: value}); keys are `<arch>.block_count`,
    `<arch>.embedding_length`, `<arch>.attention.head_count(_kv)`, `<arch>.rope.freq_base`, ... for arch
    llama or qwen3. The head width is `<arch>.attention.key_length` where given (Qwen3's), else
    `<arch>.rope.dimension_count`, else embedding_length / head_count."""
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{source}: general.architecture {arch!r} is not supported (this loader reads "
                              f"{', '.join(ARCHITECTURES)})")

    def get(key, default=KeyError):
        value = metadata.get(f"{arch}.{key}", default)
        if value is KeyError:
            raise CheckpointError(f"{source}: lacks the key {arch}.{key}")
        return value

    n_heads = get("attention.head_count")
    emb_dim = get("embedding_length")
    head_dim = get("attention.key_length", None) or get("rope.dimension_count", None)
    if vocab_size is None:
        vocab_size = get("vocab_size")
    if get("rope.scaling.type", "none") not in ("none", "llama3"):  # Llama 3's comes as the rope_freqs tensor
        raise CheckpointError(f"{source}: rope scaling {get('rope.scaling.type')!r} is not supported")
    return dict(
        vocab_size=int(vocab_size), context_length=int(get("context_length")), emb_dim=int(emb_dim),
        n_layers=int(get("block_count")), n_heads=int(n_heads), n_kv_heads=int(get("attention.head_count_kv", n_heads)),
        head_dim=int(head_dim) if head_dim else None, hidden_dim=int(get("feed_forward_length")),
        rope_base=float(get("rope.freq_base", 10000.0)), rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        tie_weights=bool(tied), qk_norm=arch == "qwen3", model_type=arch,
    )


def rope_frequencies(head_dim, base, scaling=None):
    """The inverse frequencies base^(-2i / head_dim), i = 0 .. head_dim/2 - 1, as float64 on the host
    (the book's `compute_rope_params`), with Llama 3's scaling applied when `scaling` is given: wavelengths
    2 pi / f past the original context divided by `scaling.factor`, short ones kept, the band between
    interpolated smoothly."""
    inv_freq = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (D/2,)
    if scaling is None:
        return inv_freq
    wavelen = 2 * math.pi / inv_freq
    low_wavelen = scaling.original_context_length / scaling.low_freq_factor  # longer than this: scaled down
    high_wavelen = scaling.original_context_length / scaling.high_freq_factor  # shorter than this: kept
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = ((scaling.original_context_length / wavelen - scaling.low_freq_factor)
              / (scaling.high_freq_factor - scaling.low_freq_factor))
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled)


__all__ = ["rope_frequencies", "ARCHITECTURES", "MODEL_TYPES", "RopeScaling", "LlamaConfig", "PRESETS", "config_fields_from_hf",
           "config_to_hf", "config_fields_from_gguf"]
