"""One entry point for every published model this project runs: `load_pretrained(source)` -> (model, tokenizer).

    model, tok = load_pretrained("gpt2")                                     # GPT-2 (book chapter 5)
    model, tok = load_pretrained("path/SmolLM2-135M-Instruct.Q4_1.gguf")     # a Llama-family GGUF file
    model, tok = load_pretrained("path/to/dir")                              # config.json + safetensors
    model, tok = load_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")      # a hub name, downloaded once

A source is read as the first of these that fits:
- a GPT-2 name ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"): `GPT.from_pretrained`, with GPT-2's
  tokenizer (tiktoken's "gpt2");
- a .gguf file: `llama_weights.load_gguf`, with the tokenizer the file holds;
- a directory: its config.json's model_type says which model (gpt2: `GPT.from_pretrained`, with the
  encoder.json + vocab.bpe beside it or else GPT-2's; llama / qwen3: `llama_weights.load_hf_directory`,
  with its tokenizer.json, or None where it has none);
- a hub name "owner/name": the config, safetensors and tokenizer files fetched with huggingface_hub's
  `snapshot_download` into its cache (once; a cached copy is used offline), then read as a directory.
  Offline with nothing cached, or a gated model without a login, is a WeightsUnavailableError that
  says what to do.

`is_gpt2_source(source)` says which of the two families a source holds without loading it, and
`save_model` writes a Llama-family model with its tokenizer's files as a directory this loader (and
transformers) reads back.
"""

import json
import logging
import shutil
from pathlib import Path

from tinygrad_llm.models import gpt2_weights
from tinygrad_llm.models.gpt2_weights import WeightsUnavailableError
from tinygrad_llm.models.llama_weights import open_gguf

# what a hub download fetches: the model's config and weights, and its tokenizer's files
HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]
# what `save_model` copies from a source directory beside the weights: the tokenizer's files
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def load_pretrained(source, *, device="cpu", cache_dir=None):
    """(model, tokenizer) of `source`: a GPT-2 name, a .gguf file, a model directory or a hub name (see
    the module docstring). The model is built and loaded on the host, then moved to `device`; the
    tokenizer is None where the source holds none."""
    from tinygrad_llm.models.gpt import GPT
    from tinygrad_llm.models.llama_weights import load_gguf

    name = str(source)
    path = Path(source)
    if name in gpt2_weights.PRETRAINED and not path.exists():
        return GPT.from_pretrained(name, cache_dir=cache_dir, device=device), gpt2_tokenizer(None)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf file; pass a GGUF file, a model directory "
                             "(config.json + model.safetensors) or a hub name")
        reader = open_gguf(path)  # one parse of the file serves the weights and the tokenizer
        model = load_gguf(path, reader).to(device)
        return model, load_tokenizer(path, reader)
    if not path.is_dir():
        if name.count("/") != 1 or name.startswith((".", "/")) or path.suffix.lower() == ".gguf":
            raise FileNotFoundError(f"{name!r} is not a GGUF file, a model directory, one of the GPT-2 names "
                                    f"({', '.join(gpt2_weights.PRETRAINED)}) or a hub name (owner/name)")
        path = download_snapshot(name, cache_dir)
    return load_directory(path, device)


def is_gpt2_source(source) -> bool:
    """Whether `source` is read as a GPT-2 (a published name, or a directory that holds no Llama-family
    config.json: a missing or GPT-2 one), as the book's chapters always read it; a .gguf file, a
    Llama-family directory and a hub name (owner/name, not a local path) go to `load_pretrained`."""
    from tinygrad_llm.models.llama_config import ARCHITECTURES

    name, path = str(source), Path(source)
    if name in gpt2_weights.PRETRAINED and not path.exists():
        return True
    if path.is_file() or path.suffix.lower() == ".gguf":
        return False
    if path.is_dir():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return True  # GPT's loader says what is wrong with it
        return not (isinstance(config, dict) and config.get("model_type") in ARCHITECTURES)
    return name.count("/") != 1 or name.startswith((".", "/"))  # a missing path: GPT's loader names it


def load_directory(directory, device="cpu"):
    """(model, tokenizer) of a Hugging Face directory: GPT-2 or the Llama family by its config.json."""
    from tinygrad_llm.models.gpt import GPT
    from tinygrad_llm.models.llama_config import ARCHITECTURES
    from tinygrad_llm.models.llama_weights import load_hf_directory, read_hf_config

    directory = Path(directory)
    model_type = read_hf_config(directory).get("model_type", "gpt2")
    if model_type == "gpt2":
        return GPT.from_pretrained(directory, device=device), gpt2_tokenizer(directory)
    if model_type in ARCHITECTURES:
        return load_hf_directory(directory).to(device), load_tokenizer(directory)
    raise gpt2_weights.CheckpointError(f"{directory / 'config.json'}: model_type {model_type!r} is not supported "
                                       f"(supported: gpt2, {', '.join(ARCHITECTURES)})")


def gpt2_tokenizer(directory):
    """GPT-2's tokenizer: the encoder.json + vocab.bpe in `directory` where it holds them (a model we
    trained and saved), else tiktoken's "gpt2" (as examples/generate.py finds it)."""
    from tinygrad_llm.text.tokenizer import get_tokenizer

    if directory is not None and (Path(directory) / "encoder.json").is_file() and (Path(directory) / "vocab.bpe").is_file():
        return get_tokenizer(str(directory))
    return get_tokenizer("gpt2")


def load_tokenizer(source, reader=None):
    """The tokenizer a GGUF file (its `tokenizer.ggml.*` metadata; `reader`: the file's open GGUFReader) or
    a Llama-family directory (its tokenizer.json) holds (text/hf_files.py), or None where it holds none."""
    from tinygrad_llm.text import hf_files

    source = Path(source)
    if source.is_dir():
        return hf_files.load_tokenizer(source) if (source / "tokenizer.json").is_file() else None
    reader = reader if reader is not None else open_gguf(source)
    return hf_files.load_gguf_tokenizer(source, reader) if "tokenizer.ggml.model" in reader.fields else None


def save_model(model, tokenizer, directory, source=None):
    """Write a Llama-family `model` (its LoRA layers merged) to `directory` in Hugging Face's layout
    (`llama_weights.save_pretrained`) with its tokenizer's files, a directory that `load_pretrained` and
    transformers' AutoModelForCausalLM / AutoTokenizer load: the files of `source` when it is a directory
    that holds a tokenizer.json, else tokenizer.json, tokenizer_config.json and generation_config.json
    written from `tokenizer` (a GGUF file's, `hf_files.save_tokenizer_json`). Returns the directory."""
    from tinygrad_llm.models.llama_weights import save_pretrained

    directory = Path(directory)
    save_pretrained(model, directory)
    return save_tokenizer_files(tokenizer, directory, source)


def save_tokenizer_files(tokenizer, directory, source=None):
    """The tokenizer half of `save_model`, for a directory whose weights are written already (a
    Trainer's model/ export): `source`'s tokenizer files when it is a directory that holds a
    tokenizer.json, else those written from `tokenizer`. Returns the directory."""
    from tinygrad_llm.text.hf_files import save_tokenizer_json

    directory = Path(directory)
    here = Path(source) if source is not None else None
    if here is not None and here.is_dir() and (here / "tokenizer.json").is_file():
        for name in TOKENIZER_FILES:
            if (here / name).is_file():
                shutil.copyfile(here / name, directory / name)
    else:
        save_tokenizer_json(tokenizer, directory)
    return directory


def download_snapshot(repo, cache_dir=None):
    """The local directory of hub model `repo` (its config, weights and tokenizer files), from the
    Hugging Face cache or downloaded into it by huggingface_hub (resumed and verified by the client)."""
    import huggingface_hub as hub
    from huggingface_hub import constants, errors

    try:  # a copy already cached (by us, transformers or huggingface-cli) needs no network
        return Path(hub.snapshot_download(repo, allow_patterns=HUB_PATTERNS, cache_dir=cache_dir, local_files_only=True))
    except (errors.LocalEntryNotFoundError, OSError, ValueError):
        pass
    where = (f"Pass a local directory (config.json + model.safetensors + tokenizer.json) or a .gguf file instead, "
             f"or fetch it where a network is: huggingface-cli download {repo}")
    if constants.HF_HUB_OFFLINE:
        raise WeightsUnavailableError(f"{repo} is not in the Hugging Face cache {cache_dir or constants.HF_HUB_CACHE} "
                                      f"and downloads are off (HF_HUB_OFFLINE). {where}")
    hub_log = logging.getLogger("huggingface_hub")  # one line below says it all; hold back the client's warnings
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        return Path(hub.snapshot_download(repo, allow_patterns=HUB_PATTERNS, cache_dir=cache_dir))
    except errors.GatedRepoError as e:
        raise WeightsUnavailableError(
            f"{repo} is gated: accept its licence at https://huggingface.co/{repo} and log in with "
            f"`huggingface-cli login` (or set HF_TOKEN), then run again. {where}") from e
    except errors.RepositoryNotFoundError as e:
        raise WeightsUnavailableError(f"{repo} is not a model on the Hugging Face hub (or it is private: log in with "
                                      f"`huggingface-cli login`). {where}") from e
    except errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise WeightsUnavailableError(
                f"{repo} refused the download (HTTP {status}): accept its licence at https://huggingface.co/{repo} "
                f"and log in with `huggingface-cli login`. {where}") from e
        raise WeightsUnavailableError(f"could not download {repo} ({_one_line(e)}). {where}") from e
    except (errors.LocalEntryNotFoundError, OSError, ValueError) as e:  # no network
        raise WeightsUnavailableError(f"could not download {repo} ({_one_line(e)}). {where}") from e
    finally:
        hub_log.setLevel(level)


def _one_line(e):
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


__all__ = ["load_pretrained", "is_gpt2_source", "load_directory", "gpt2_tokenizer", "load_tokenizer", "save_model",
           "save_tokenizer_files", "download_snapshot", "HUB_PATTERNS", "TOKENIZER_FILES"]
