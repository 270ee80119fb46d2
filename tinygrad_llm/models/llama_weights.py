"""Beyond the book: the Llama family's published weights (tinygrad_llm/models/llama.py), read from the two
formats they come in (llama_save.py writes our models back in Hugging Face's).

- A Hugging Face directory: `config.json` (model_type llama or qwen3) and `model.safetensors`, or shards
  listed by `model.safetensors.index.json`. The tensors are bfloat16, float16 or float32 on disk and
  float32 in memory; they are read tensor by tensor with autograd/checkpoint.py's reader (which widens
  bfloat16, uint16 << 16 seen as float32, since NumPy has no bfloat16). Hugging Face's names are ours
  with "model." in front (`model.layers.0.self_attn.q_proj.weight`), except `lm_head.weight`.
- A GGUF file (llama.cpp's format, version 3) through the `gguf` package: `GGUFReader` for the metadata
  and tensors, `gguf.quants.dequantize` for F32, F16, BF16 and the block quantizations (Q8_0, Q4_0, Q4_1,
  Q5_0, Q5_1, Q2_K .. Q6_K). GGUF lists a tensor's shape innermost first, so an (out, in) weight has
  shape [in, out]. Its names are llama.cpp's (`blk.0.attn_q.weight`; `GGUF_NAMES` maps them), and
  llama.cpp's converter reorders the rows of attn_q and attn_k of llama-architecture models, from
  Hugging Face's rotate-half layout to interleaved pairs; `unpermute_rows` undoes it exactly as
  transformers' GGUF loader does (LlamaTensorProcessor._reverse_permute_weights). Qwen3 files are not
  reordered.

Every key and shape is checked before any tensor is read, and every problem is a CheckpointError (a
FileFormatError: the command-line programs print it as one `error:` line) that names the file and the key.
"""

import json
import re
from pathlib import Path

import numpy as np

from autograd import backend
from autograd.checkpoint import (READ_DTYPES, CheckpointError, read_safetensors_header, read_tensor_into)
from tinygrad_llm.models.llama import Llama, LlamaConfig, rope_frequencies
from tinygrad_llm.models.llama_config import config_fields_from_gguf, config_fields_from_hf
from tinygrad_llm.models.llama_save import HF_CONFIG, HF_WEIGHTS, hf_config, hf_name, save_pretrained  # noqa: F401

HF_INDEX = "model.safetensors.index.json"
# the GGUF tensor types read here (all dequantized to float32 by the gguf package)
GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


# ---------------------------------------------------------------------------------------------------
# Hugging Face directories


_HF_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")  # a buffer older files store


def read_hf_config(directory):
    """The parsed config.json of a Hugging Face directory."""
    path = Path(directory) / HF_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no {HF_CONFIG} (a Hugging Face model directory has config.json "
                                f"and {HF_WEIGHTS})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None


def safetensors_files(directory):
    """The weight files of a Hugging Face directory: model.safetensors, or the shards that
    model.safetensors.index.json's weight_map names (each once, in order)."""
    directory = Path(directory)
    index = directory / HF_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = list(dict.fromkeys(weight_map.values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a safetensors index with a weight_map ({e!r:.80})") from None
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are not in {directory}: {', '.join(missing[:5])}")
        return [directory / s for s in shards]
    if (directory / HF_WEIGHTS).is_file():
        return [directory / HF_WEIGHTS]
    other = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pth")]
    hint = (f"; it holds {', '.join(other)}, pickle files, which this project does not open (convert them to "
            "safetensors with the tool that wrote them)") if other else ""
    raise FileNotFoundError(f"{directory} holds no {HF_WEIGHTS} or {HF_INDEX}{hint}")


def load_hf_weights(model, directory):
    """Copy the tensors of a Hugging Face directory's safetensors file(s) into `model`'s parameters, in
    place. Every key, dtype and shape is checked first; all problems are raised together, naming the
    file and the key."""
    expected = {hf_name(n): p for n, p in model.named_parameters()}
    found, tied_head, problems = {}, None, []
    for path in safetensors_files(directory):
        header, _, start = read_safetensors_header(path)
        for key, info in header.items():
            if _HF_IGNORED.match(key):
                continue
            if info["dtype"] not in READ_DTYPES:
                problems.append(f"{path.name}: {key}: dtype {info['dtype']} is not a float type this loader reads "
                                f"({', '.join(READ_DTYPES)})")
                continue
            if key == "lm_head.weight" and model.config.tie_weights:
                tied_head = (path, start, info)  # a stored copy of a tied head must equal the embedding
                continue
            if key not in expected:
                problems.append(f"{path.name}: unexpected key {key} (shape {tuple(info['shape'])})")
                continue
            if key in found:
                problems.append(f"{path.name}: {key} is stored twice (also in {found[key][0].name})")
            if tuple(info["shape"]) != expected[key].shape:
                problems.append(f"{path.name}: {key}: expected shape {expected[key].shape}, got {tuple(info['shape'])}")
            found[key] = (path, start, info)
    for key, p in expected.items():
        if key not in found:
            problems.append(f"missing key {key} (expected shape {p.shape})")
    if problems:
        raise CheckpointError(f"{directory} does not fit Llama({model.config}):\n  " + "\n  ".join(problems))
    for key, (path, start, info) in found.items():
        with open(path, "rb") as f:
            _read_into(f, info, start, expected[key])
    if tied_head is not None:
        path, start, info = tied_head
        head = np.empty(tuple(info["shape"]), dtype=np.float32)
        with open(path, "rb") as f:
            read_tensor_into(f, info, start, head)
        if head.shape != model.embed_tokens.weight.shape or not np.array_equal(head, backend.to_host(model.embed_tokens.weight.data)):
            raise CheckpointError(f"{path}: lm_head.weight differs from model.embed_tokens.weight, but config.json ties "
                                  "them (tie_word_embeddings true); set it to false to load a separate output head")
    return model


def _read_into(f, info, start, p):
    if p.device != "cpu" or not p.data.flags.c_contiguous:
        tmp = np.empty(tuple(info["shape"]), dtype=np.float32)
        read_tensor_into(f, info, start, tmp)
        p.data[...] = backend.to_device(tmp, p.device)
    else:
        read_tensor_into(f, info, start, p.data)


def load_hf_directory(directory, **config_overrides):
    """A Llama model built from a Hugging Face directory's config.json and loaded with its weights."""
    config_path = Path(directory) / HF_CONFIG
    fields = config_fields_from_hf(read_hf_config(directory), str(config_path))
    try:
        config = LlamaConfig(**{**fields, **config_overrides})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    return load_hf_weights(Llama(config, init=False), directory)


# ---------------------------------------------------------------------------------------------------
# GGUF files

# llama.cpp's tensor names -> ours ("{}" is the block number)
GGUF_NAMES = {
    "token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight", "output.weight": "lm_head.weight",
    "blk.{}.attn_norm.weight": "layers.{}.input_layernorm.weight",
    "blk.{}.ffn_norm.weight": "layers.{}.post_attention_layernorm.weight",
    "blk.{}.attn_q.weight": "layers.{}.self_attn.q_proj.weight", "blk.{}.attn_q.bias": "layers.{}.self_attn.q_proj.bias",
    "blk.{}.attn_k.weight": "layers.{}.self_attn.k_proj.weight", "blk.{}.attn_k.bias": "layers.{}.self_attn.k_proj.bias",
    "blk.{}.attn_v.weight": "layers.{}.self_attn.v_proj.weight", "blk.{}.attn_v.bias": "layers.{}.self_attn.v_proj.bias",
    "blk.{}.attn_output.weight": "layers.{}.self_attn.o_proj.weight",
    "blk.{}.attn_output.bias": "layers.{}.self_attn.o_proj.bias",
    "blk.{}.attn_q_norm.weight": "layers.{}.self_attn.q_norm.weight",
    "blk.{}.attn_k_norm.weight": "layers.{}.self_attn.k_norm.weight",
    "blk.{}.ffn_gate.weight": "layers.{}.mlp.gate_proj.weight", "blk.{}.ffn_up.weight": "layers.{}.mlp.up_proj.weight",
    "blk.{}.ffn_down.weight": "layers.{}.mlp.down_proj.weight",
}
_GGUF_BLOCK = re.compile(r"blk\.(\d+)\.(.+)$")
ROPE_FREQS = "rope_freqs.weight"  # Llama 3.1+: the factor that divides each rotary frequency


def our_name(gguf_name):
    """Our parameter name of a GGUF tensor name, or None: blk.3.ffn_up.weight -> layers.3.mlp.up_proj.weight."""
    m = _GGUF_BLOCK.match(gguf_name)
    if m is None:
        return GGUF_NAMES.get(gguf_name)
    pattern = GGUF_NAMES.get(f"blk.{{}}.{m.group(2)}")
    return pattern.format(m.group(1)) if pattern else None


def unpermute_rows(w, n_heads):
    """Undo llama.cpp's reordering of the rows of attn_q (n_heads) and attn_k (n_kv_heads): within each
    head, its converter puts the two halves' rows i and i + D/2 next to each other (rows 0, D/2, 1, D/2+1,
    ...); this puts them back: (H*D, ...) -> (H, D/2, 2, ...) -> swap -> (H, 2, D/2, ...) -> (H*D, ...).
    (transformers' `_reverse_permute_weights`.)"""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def open_gguf(path):
    """A `gguf.GGUFReader` of `path`; a file it cannot parse (truncated, corrupt, not GGUF) is a
    CheckpointError naming the file."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} not found")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable GGUF file, truncated or corrupt "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None


def gguf_metadata(reader):
    """{key: value} of a GGUF reader's scalar and string fields (long arrays, the tokenizer's vocabulary
    and merges, are left out: `tokenizer.ggml.tokens` is represented by its length, under
    `tokenizer.ggml.tokens.count`)."""
    from gguf import GGUFValueType

    meta = {}
    for key, field in reader.fields.items():
        if field.types and field.types[0] == GGUFValueType.ARRAY:
            if key == "tokenizer.ggml.tokens":
                meta["tokenizer.ggml.tokens.count"] = len(field.data)
            continue
        try:
            meta[key] = field.contents()
        except (ValueError, IndexError, TypeError, UnicodeDecodeError):
            continue
    return meta


def load_gguf(path, reader=None, **config_overrides):
    """A Llama model from a GGUF file: the config from its metadata (vocabulary size from its token list,
    tied when it has no output.weight), then every tensor dequantized to float32, the attn_q / attn_k rows
    of a llama-architecture file put back in Hugging Face's order, into the parameters. Every name, type
    and shape is checked before any tensor is dequantized. `reader`: the file's `open_gguf(path)`, where
    the caller has it open already."""
    path = Path(path)
    reader = reader if reader is not None else open_gguf(path)
    meta = gguf_metadata(reader)
    tensors = {t.name: t for t in reader.tensors}
    fields = config_fields_from_gguf(meta, meta.get("tokenizer.ggml.tokens.count"), "output.weight" not in tensors,
                                     source=str(path))
    try:
        config = LlamaConfig(**{**fields, **config_overrides})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    model = Llama(config, init=False)
    expected = dict(model.named_parameters())
    found, problems = {}, []
    for name, t in tensors.items():
        if name == ROPE_FREQS:
            continue
        ours = our_name(name)
        if ours is None or ours not in expected:
            problems.append(f"unexpected tensor {name} (shape {tuple(int(n) for n in t.shape[::-1])})")
            continue
        if t.tensor_type.name not in GGUF_TYPES:
            problems.append(f"{name}: quantization type {t.tensor_type.name} is not supported "
                            f"(supported: {', '.join(GGUF_TYPES)})")
        shape = tuple(int(n) for n in t.shape[::-1])  # GGUF lists the innermost axis first
        if shape != expected[ours].shape:
            problems.append(f"{name}: expected shape {expected[ours].shape} for {ours}, got {shape}")
        found[ours] = t
    for ours, p in expected.items():
        if ours not in found:
            gguf_names = [g for g in tensors if our_name(g) == ours] or [_gguf_name_of(ours)]
            problems.append(f"missing tensor {gguf_names[0]} (our {ours}, shape {p.shape})")
    if problems:
        raise CheckpointError(f"{path} does not fit Llama({config}):\n  " + "\n  ".join(problems))
    permute = {"q_proj": config.n_heads, "k_proj": config.n_kv_heads} if config.model_type == "llama" else {}
    for ours, t in found.items():
        w = _dequantize(path, t)
        n_heads = permute.get(ours.split(".")[-2])
        if n_heads is not None:
            w = unpermute_rows(w, n_heads)
        p = expected[ours]
        p.data[...] = backend.to_device(w, p.device)
    if ROPE_FREQS in tensors:  # Llama 3.1+: the scaled frequencies, as factors that divide the plain ones
        factors = _dequantize(path, tensors[ROPE_FREQS]).reshape(-1).astype(np.float64)
        if factors.shape != model.inv_freq.shape:
            raise CheckpointError(f"{path}: {ROPE_FREQS} has {factors.size} factors, not head_dim / 2 = "
                                  f"{model.inv_freq.size}")
        model.inv_freq = rope_frequencies(config.head_dim, config.rope_base) / factors
    return model


def _gguf_name_of(ours):
    """The GGUF name of our parameter (for messages)."""
    m = re.match(r"layers\.(\d+)\.(.+)$", ours)
    for g, o in GGUF_NAMES.items():
        if (m and o == f"layers.{{}}.{m.group(2)}") or o == ours:
            return g.format(m.group(1)) if m else g
    return ours


def _dequantize(path, t):
    """Tensor `t` of a GGUF file as a float32 array in our axis order."""
    from gguf import quants

    try:
        w = quants.dequantize(t.data, t.tensor_type)
        return np.asarray(w, dtype=np.float32).reshape(tuple(int(n) for n in t.shape[::-1]))
    except (ValueError, NotImplementedError) as e:  # the gguf package's own: a block that does not fit, a type it lacks
        raise CheckpointError(f"{path}: tensor {t.name} ({t.tensor_type.name}) could not be dequantized ({e})") from None


# ---------------------------------------------------------------------------------------------------
# Either format


def load_llama(source, **config_overrides):
    """A Llama-family model from a .gguf file or a Hugging Face directory (config.json + safetensors)."""
    source = Path(source)
    if source.is_dir():
        return load_hf_directory(source, **config_overrides)
    if source.suffix.lower() == ".gguf" or source.is_file():
        return load_gguf(source, **config_overrides)
    raise FileNotFoundError(f"{source} is neither a GGUF file nor a model directory")


__all__ = ["GGUF_TYPES", "GGUF_NAMES", "hf_name", "read_hf_config", "safetensors_files", "load_hf_weights", "load_hf_directory", "save_pretrained", "hf_config",
           "our_name", "unpermute_rows", "open_gguf", "gguf_metadata", "load_gguf", "load_llama"]
