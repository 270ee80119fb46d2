"""Book chapter 5, section 5.5: GPT-2's published weights, and our models in the same format.

`load_weights` is the book's `load_weights_into_gpt` (listing 5.5), reading Hugging Face's safetensors
files where the book reads OpenAI's TensorFlow checkpoint.

A Hugging Face GPT-2 checkpoint is a directory with `config.json` (GPT2Config) and `model.safetensors`.
Our parameter names are GPT-2's (`h.0.attn.c_attn.weight`, ...), so the name map is the identity after
dropping an optional "transformer." prefix. The one real difference is layout: GPT-2's attention and
MLP projections are `Conv1D` layers that store their weight as (in, out), while our `Linear` stores
(out, in) as PyTorch does. The four Conv1D weights of each block (CONV1D below) are transposed on the
way in and on the way out; every other tensor is copied as it is.

Memory: `load_weights` reads the file tensor by tensor with plain file reads, straight into the model's
parameters (a transposed tensor passes through one temporary of its own size), so loading a 500 MB
checkpoint needs the model plus the largest Conv1D weight, not the file twice. `save_pretrained` writes
the same way. A safetensors file is an 8-byte little-endian header length, a JSON header
{name: {"dtype", "shape", "data_offsets"}}, then the raw little-endian arrays; the `safetensors` package
reads and writes the files of both directions in the tests. The reading and writing live with the
checkpoints' in autograd/checkpoint.py (`read_safetensors_header`, `read_tensor_into`, `write_safetensors`).

`GPT.from_pretrained("gpt2")` (and -medium, -large, -xl) finds the two files in the Hugging Face cache, or
downloads them there once with the hub's own client (`huggingface_hub`, which resumes and verifies).
"""

import json
import logging
import re
from pathlib import Path

import numpy as np

from autograd import backend
from autograd.checkpoint import (READ_DTYPES, CheckpointError, read_safetensors_header, read_tensor_into,
                                 write_safetensors, write_text)
from tinygrad_llm.support.download import DownloadError
from tinygrad_llm.finetune.lora import merged_state_dict

PRETRAINED = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
FILES = ("config.json", "model.safetensors")
HF_BASE_URL = "https://huggingface.co"
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_HF_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")  # causal-mask buffers HF stores; not weights


class WeightsUnavailableError(DownloadError):
    """Pretrained weights could not be downloaded (offline, an HTTP error) or failed verification."""


# ---------------------------------------------------------------------------------------------------
# config.json <-> GPTConfig


def config_to_hf(cfg):
    """GPT2Config's keys, plus ours under "tinygrad_llm" (qkv_bias and dropout, which GPT2Config lacks)."""
    d = {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length, "n_ctx": cfg.context_length, "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": None, "activation_function": "gelu_new",
        "resid_pdrop": cfg.drop_rate, "embd_pdrop": cfg.drop_rate, "attn_pdrop": cfg.drop_rate,
        "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "tie_word_embeddings": cfg.tie_weights,
        "torch_dtype": "float32", "tinygrad_llm": cfg.to_dict(),
    }
    if cfg.vocab_size > 50256:
        d["bos_token_id"] = d["eos_token_id"] = 50256
    return d


def config_from_hf(d, source="config.json"):
    """GPTConfig's fields (a dict: `GPTConfig.from_dict` builds it) from GPT2Config keys. A config we wrote
    carries its exact GPTConfig; one from another tool gets qkv_bias=True and drop_rate=0.0 (GPT-2 as
    published, for inference)."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{source} holds a JSON {type(d).__name__}, not the object of a GPT2Config")
    if "tinygrad_llm" in d:
        if not isinstance(d["tinygrad_llm"], dict):
            raise CheckpointError(f"{source}: the field tinygrad_llm is {d['tinygrad_llm']!r:.60}, not an object")
        return dict(d["tinygrad_llm"])
    for key, kind in (("n_embd", int), ("n_head", int), ("n_layer", int), ("vocab_size", int),
                      ("n_positions", int), ("n_ctx", int), ("n_inner", int), ("layer_norm_epsilon", float),
                      ("activation_function", str), ("model_type", str), ("tie_word_embeddings", bool)):
        value = d.get(key)
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float
              else type(value) is kind)
        if value is not None and not ok:
            raise CheckpointError(f"{source}: the field {key} is {value!r:.60}, not {kind.__name__}")
    if d.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{source}: model_type {d['model_type']!r} is not GPT-2")
    if "n_embd" not in d:
        raise CheckpointError(f"{source} lacks the GPT2Config key 'n_embd'")
    n_embd = d["n_embd"]
    problems = []
    if d.get("n_inner") not in (None, 4 * n_embd):
        problems.append(f"n_inner {d['n_inner']} (only 4 * n_embd = {4 * n_embd} is supported)")
    if d.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"activation_function {d['activation_function']!r} (only GPT-2's tanh GELU)")
    if abs(d.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon {d['layer_norm_epsilon']} (only 1e-5)")
    if problems:
        raise CheckpointError(f"{source}: unsupported GPT-2 variant: " + "; ".join(problems))
    try:
        return dict(
            vocab_size=d["vocab_size"], context_length=d.get("n_positions", d.get("n_ctx")), emb_dim=n_embd,
            n_heads=d["n_head"], n_layers=d["n_layer"], drop_rate=0.0, qkv_bias=True,
            tie_weights=d.get("tie_word_embeddings", True),
        )
    except KeyError as e:
        raise CheckpointError(f"{source} lacks the GPT2Config key {e}") from None


# ---------------------------------------------------------------------------------------------------
# Loading and saving models


def _expected(model):
    """{HF key: (parameter, transposed)} for every parameter of `model`."""
    return {name: (p, name.endswith(CONV1D)) for name, p in model.named_parameters()}


def _hf_shape(p, transposed):
    return tuple(p.shape[::-1]) if transposed else tuple(p.shape)


def load_weights(model, path):
    """Copy the tensors of a GPT-2 safetensors file into `model`'s parameters, in place (book listing 5.5,
    `load_weights_into_gpt`). Every key is checked first (missing, unexpected, shape) and all problems
    are raised together, naming the keys."""
    path = Path(path)
    header, _, start = read_safetensors_header(path)
    expected = _expected(model)
    found, tied_head, problems = {}, None, []
    for key, info in header.items():
        name = key.removeprefix("transformer.")
        if _HF_BUFFER.match(name):
            continue
        if name == "lm_head.weight" and model.config.tie_weights:
            tied_head = info  # GPT-2's head is the token embedding; a stored copy must equal it
            if info["dtype"] not in READ_DTYPES:
                problems.append(f"{key}: dtype {info['dtype']} is not a float type this loader reads")
            continue
        if name not in expected:
            problems.append(f"unexpected key {key} (shape {tuple(info['shape'])})")
            continue
        if name in found:
            problems.append(f"{name} is stored twice (with and without the 'transformer.' prefix)")
        p, transposed = expected[name]
        want = _hf_shape(p, transposed)
        if info["dtype"] not in READ_DTYPES:
            problems.append(f"{key}: dtype {info['dtype']} is not a float type this loader reads ({', '.join(READ_DTYPES)})")
        if tuple(info["shape"]) != want:
            layout = (f" (HF's Conv1D (in, out) layout of our (out, in) weight {tuple(p.shape)}, transposed on load)"
                      if transposed else "")
            problems.append(f"{key}: expected shape {want}{layout}, got {tuple(info['shape'])}")
        found[name] = info
    for name, (p, transposed) in expected.items():
        if name not in found:
            problems.append(f"missing key {name} (expected shape {_hf_shape(p, transposed)})")
    if problems:
        raise CheckpointError(f"{path} does not fit GPT({model.config}):\n  " + "\n  ".join(problems))
    with open(path, "rb") as f:
        for name, info in found.items():
            p, transposed = expected[name]
            if transposed or p.device != "cpu" or not p.data.flags.c_contiguous:
                tmp = np.empty(tuple(info["shape"]), dtype=np.float32)  # one tensor's worth, freed at once
                read_tensor_into(f, info, start, tmp)
                p.data[...] = backend.to_device(tmp.T if transposed else tmp, p.device)
                del tmp
            else:
                read_tensor_into(f, info, start, p.data)
        if tied_head is not None:
            head = np.empty(tuple(tied_head["shape"]), dtype=np.float32)
            read_tensor_into(f, tied_head, start, head)
            if head.shape != model.wte.weight.shape or not np.array_equal(head, backend.to_host(model.wte.weight.data)):
                raise CheckpointError(
                    f"{path}: lm_head.weight differs from wte.weight, but config.json ties them "
                    "(tie_word_embeddings true); set it to false to load a separate output head")
    return model


def find_pretrained(name_or_path, cache_dir=None):
    """(GPTConfig fields, path of model.safetensors) of a Hugging Face GPT-2 checkpoint directory, or of
    one of PRETRAINED, from the Hugging Face cache or downloaded into it (see `download_pretrained`). `GPT.from_pretrained`
    builds the model from them and loads it with `load_weights`."""
    directory = Path(name_or_path)
    if not directory.is_dir():
        if str(name_or_path) not in PRETRAINED:
            raise FileNotFoundError(
                f"{name_or_path!r} is neither a checkpoint directory (config.json + model.safetensors) "
                f"nor one of the published models: {', '.join(PRETRAINED)}")
        directory = download_pretrained(str(name_or_path), cache_dir)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} holds no config.json (a Hugging Face GPT-2 checkpoint has "
                                "config.json and model.safetensors)")
    if not weights_path.is_file():
        other = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pth")]
        hint = (f"; it holds {', '.join(other)}, pickle files, which this project does not open "
                "(convert them to safetensors with the tool that wrote them)") if other else ""
        raise FileNotFoundError(f"{directory} holds no model.safetensors{hint}")
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({e})") from None
    return config_from_hf(hf_config, str(config_path)), weights_path


def save_pretrained(model, directory):
    """Write `directory`/config.json and model.safetensors in GPT-2's Hugging Face layout: HF key names
    (without the "transformer." prefix, as the hub's gpt2 file), Conv1D weights as (in, out), float32,
    metadata {"format": "pt"}. A tied model stores no lm_head.weight (as HF does). A model without qkv
    bias (the book's pretraining setting) stores no c_attn.bias: this project reads it back exactly,
    but Hugging Face's GPT2LMHeadModel, which always has that bias, would fill it with random values."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # a LoRA-wrapped layer is exported as the plain Linear it amounts to: its merged weight, and no adapter
    # tensors, so the file stays a GPT-2 checkpoint that any GPT-2 loader reads
    state = merged_state_dict(model)
    tensors = [(name, state[name], transposed) for name, (_, transposed) in _expected(model).items()
               if ".lora_" not in name]
    write_safetensors(directory / "model.safetensors", tensors, metadata={"format": "pt"})
    write_text(directory / "config.json", json.dumps(config_to_hf(model.config), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------
# Downloading from the Hugging Face hub


def download_pretrained(name, cache_dir=None, *, progress=True):
    """The directory holding `name`'s config.json and model.safetensors, through the Hugging Face hub's
    client and its cache (`cache_dir`, else $HF_HUB_CACHE, ~/.cache/huggingface/hub): weights already
    fetched by transformers or huggingface-cli are used as they are, and a download (resumed and
    verified by the client) lands there for both. Offline ($HF_HUB_OFFLINE=1) or without network,
    with nothing cached, a WeightsUnavailableError says where to get the files and how to pass them."""
    import huggingface_hub as hub
    from huggingface_hub import constants, errors

    # the hub moved GPT-2 under openai-community/; caches made before the move hold it as models--gpt2
    repos = (f"openai-community/{name}", name)
    for repo in repos:
        paths = [hub.try_to_load_from_cache(repo, f, cache_dir=cache_dir) for f in FILES]
        if all(isinstance(p, str) for p in paths):  # a path, not None or the "known absent" marker
            return Path(paths[1]).parent
    cache = cache_dir or constants.HF_HUB_CACHE
    where = (f"The weights are two files, {' and '.join(FILES)}, at {HF_BASE_URL}/{repos[0]}. Copy them into "
             f"one directory and pass it instead of the name: GPT.from_pretrained('/path/to/dir') "
             f"(or examples/generate.py --model /path/to/dir); or fetch them into the cache where a "
             f"network is: huggingface-cli download {repos[0]} {' '.join(FILES)}")
    if constants.HF_HUB_OFFLINE:
        raise WeightsUnavailableError(f"{name}'s weights are not in the Hugging Face cache {cache} and "
                                      f"downloads are off (HF_HUB_OFFLINE). {where}")
    # the client logs a warning for each failed request before it raises; the error below says it all in
    # one line, so its warnings are held back while it runs
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        paths = [hub.hf_hub_download(repos[0], f, cache_dir=cache_dir) for f in FILES]
    except (errors.HfHubHTTPError, errors.LocalEntryNotFoundError, OSError, ValueError) as e:
        reason = " ".join(str(e).split())[:200]
        raise WeightsUnavailableError(f"could not download {name}'s weights ({type(e).__name__}: {reason}). "
                                      f"{where}") from e
    finally:
        hub_log.setLevel(level)
    return Path(paths[1]).parent


__all__ = [
    "PRETRAINED", "WeightsUnavailableError", "CheckpointError", "find_pretrained", "save_pretrained",
    "load_weights", "download_pretrained", "config_to_hf", "config_from_hf",
]
