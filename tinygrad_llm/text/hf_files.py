"""The Llama family's tokenizer files read: a Hugging Face tokenizer.json and a GGUF file's tokenizer metadata.

Beyond the book: what `HFTokenizer` (tinygrad_llm/text/hf_tokenizer.py) is built from, as
tinygrad_llm/text/gpt2_files.py reads GPT-2's encoder.json and vocab.bpe. `load_tokenizer_json(path)` reads
a tokenizer.json (model.type "BPE", a ByteLevel pre-tokenizer after Split or Digits ones, added_tokens,
the post-processor) with the tokenizer_config.json, generation_config.json and chat_template.jinja beside
it; `load_gguf_tokenizer(path)` reads llama.cpp's `tokenizer.ggml.*` keys, `tokenizer.ggml.pre` mapped
to patterns as llama.cpp's llama-vocab.cpp maps it; `load_tokenizer(source)` takes a model directory, a
tokenizer.json or a .gguf file; `save_tokenizer_json(tokenizer, directory)` writes any of them back as a
tokenizer.json + tokenizer_config.json + generation_config.json that the tokenizers library and transformers
read (a fine-tuned model's directory made whole). Both spell token bytes in GPT-2's alphabet (`token_bytes`). Another kind
of tokenizer (Unigram, WordPiece, SentencePiece) is a ValueError naming the file and the kind; a
malformed file a FileFormatError naming the file.

    >>> tok = load_tokenizer("models/SmolLM2-135M-Instruct.Q4_1.gguf")
    >>> tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])[:4]
    [1, 9690, 198, 2683]
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import regex

from autograd.checkpoint import FileFormatError
from tinygrad_llm.text.gpt2_files import bytes_to_unicode
from tinygrad_llm.text.hf_tokenizer import END_OF_TURN_TOKENS, GGUF_PRE_SPLITS, GPT2_SPLIT, HFTokenizer

__all__ = ["load_tokenizer", "load_tokenizer_json", "load_gguf_tokenizer", "token_bytes", "save_tokenizer_json"]

_NORMAL_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


# ---- the byte alphabet ------------------------------------------------------------------------------

@cache
def _alphabet():
    """(the set of GPT-2's printable characters, a str.translate table from each back to its byte value)."""
    chars = bytes_to_unicode()
    return frozenset(chars.values()), {ord(c): b for b, c in chars.items()}


def token_bytes(token: str) -> bytes:
    """A token's bytes from its spelling in GPT-2's alphabet: "Ġthe" -> b" the". A token with characters
    outside the alphabet (an added token such as "<|im start|>" written as is) is its UTF-8."""
    alphabet, table = _alphabet()
    if set(token) <= alphabet:
        return token.translate(table).encode("latin-1")
    return token.encode("utf-8")


def _build_merges(path, merge_list, ids_of: dict[str, int]) -> dict[tuple[int, int], int]:
    """Merges in rank order as (left id, right id) -> merged id, from "left right" strings or [left, right]."""
    merges: dict[tuple[int, int], int] = {}
    for rank, m in enumerate(merge_list):
        left, right = m.split(" ") if isinstance(m, str) else m
        try:
            pair, merged = (ids_of[left], ids_of[right]), ids_of[left + right]
        except KeyError as e:
            raise FileFormatError(f"{path}: merge {rank} ({left!r} {right!r}) names the token {e.args[0]!r}, "
                                  f"which is not in the vocabulary") from None
        merges.setdefault(pair, merged)
    return merges


def _make(path, vocab, merges, added, **kwargs) -> HFTokenizer:
    try:
        return HFTokenizer(vocab, merges, added, name=Path(path).name, **kwargs)
    except (ValueError, regex.error) as e:
        raise FileFormatError(f"{path}: {e}") from None


# ---- tokenizer.json ---------------------------------------------------------------------------------

def _read_json(path) -> dict:
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(spec, dict):
        raise FileFormatError(f"{path}: expected a JSON object, found {type(spec).__name__}")
    return spec


def _pre_tokenizer(path, spec):
    """(splits, prefix_space_at) of a tokenizer.json pre_tokenizer: Split (behavior Isolated), Digits and
    ByteLevel, alone or in a Sequence, ByteLevel last."""
    steps = spec.get("pretokenizers", []) if spec and spec.get("type") == "Sequence" else [spec]
    splits, prefix_at, byte_level = [], None, False
    for step in steps:
        kind = (step or {}).get("type")
        if byte_level:
            raise ValueError(f"{path}: pre-tokenizer {kind} after ByteLevel is not supported")
        if kind == "Split":
            if step.get("behavior") != "Isolated" or step.get("invert"):
                raise ValueError(f"{path}: a Split pre-tokenizer with behavior {step.get('behavior')!r}"
                                 f"{' inverted' if step.get('invert') else ''} is not supported (only Isolated)")
            pattern = step.get("pattern") or {}
            splits.append(pattern["Regex"] if "Regex" in pattern else regex.escape(pattern.get("String", "")))
        elif kind == "Digits":
            splits.append(r"\p{N}" if step.get("individual_digits") else r"\p{N}+")
        elif kind == "ByteLevel":
            byte_level = True
            if step.get("add_prefix_space"):
                prefix_at = len(splits)
            if step.get("use_regex", True):
                splits.append(GPT2_SPLIT)
        else:
            raise ValueError(f"{path}: pre-tokenizer {kind} is not supported: only byte-level BPE (a ByteLevel "
                             f"pre-tokenizer, after Split or Digits ones), as SmolLM2, Llama 3 and Qwen use")
    if not byte_level:
        raise ValueError(f"{path}: no ByteLevel pre-tokenizer, so not a byte-level BPE; only byte-level BPE "
                         f"(as SmolLM2, Llama 3 and Qwen use) is supported")
    return splits, prefix_at


def _normalizer(path, spec) -> list[str]:
    steps = spec.get("normalizers", []) if spec and spec.get("type") == "Sequence" else [spec] if spec else []
    kinds = [(s or {}).get("type") for s in steps]
    for kind in kinds:
        if kind not in _NORMAL_FORMS:
            raise ValueError(f"{path}: normalizer {kind} is not supported (only {', '.join(_NORMAL_FORMS)})")
    return kinds


def _post_processor(spec, added: dict[str, int]):
    """(prefix ids, suffix ids) that a TemplateProcessing post-processor puts around a single text."""
    steps = spec.get("processors", []) if spec and spec.get("type") == "Sequence" else [spec] if spec else []
    for step in steps:
        if step.get("type") == "TemplateProcessing":
            prefix, suffix, seen = [], [], False
            for piece in step.get("single", []):
                if "Sequence" in piece:
                    seen = True
                elif "SpecialToken" in piece:
                    token = piece["SpecialToken"]["id"]
                    ids = step.get("special_tokens", {}).get(token, {}).get("ids") or [added[token]]
                    (suffix if seen else prefix).extend(ids)
            return prefix, suffix
    return [], []


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...} (an AddedToken)."""
    return value.get("content") if isinstance(value, dict) else value


def _chat_template(directory: Path, config: dict) -> str | None:
    """chat_template.jinja beside the tokenizer, else tokenizer_config.json's chat_template (one string, or
    named templates, of which "default")."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template


def load_tokenizer_json(path) -> HFTokenizer:
    """Read a Hugging Face tokenizer.json holding a byte-level BPE (SmolLM2, Llama 3, Qwen2/3), with the special
    tokens and chat template of the tokenizer_config.json, generation_config.json and chat_template.jinja beside
    it where present. Another kind of tokenizer (Unigram, WordPiece, a SentencePiece-style BPE with
    byte_fallback) is a ValueError naming the file and the kind; a malformed file is a FileFormatError."""
    path = Path(path)
    spec = _read_json(path)
    model = spec.get("model")
    if not isinstance(model, dict):
        raise FileFormatError(f"{path}: no tokenizer model (the 'model' object is missing)")
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind != "BPE":
        raise ValueError(f"{path}: a {kind} tokenizer; only byte-level BPE (model.type 'BPE' with a ByteLevel "
                         f"pre-tokenizer, as SmolLM2, Llama 3 and Qwen use) is supported")
    if model.get("byte_fallback"):
        raise ValueError(f"{path}: a BPE with byte_fallback (SentencePiece style, as Llama 2 and Mistral use); "
                         f"only byte-level BPE is supported")
    for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(key):
            raise ValueError(f"{path}: a BPE with {key}={model[key]!r} is not supported")
    splits, prefix_at = _pre_tokenizer(path, spec.get("pre_tokenizer"))
    normalization = _normalizer(path, spec.get("normalizer"))
    ids_of = model.get("vocab")
    if not isinstance(ids_of, dict) or not isinstance(model.get("merges"), list):
        raise FileFormatError(f"{path}: the BPE model needs a 'vocab' object and a 'merges' list")
    vocab = {int(i): token_bytes(t) for t, i in ids_of.items()}
    merges = _build_merges(path, model["merges"], ids_of)
    added, special = {}, set()
    for t in spec.get("added_tokens") or []:
        for flag in ("single_word", "lstrip", "rstrip"):
            if t.get(flag):
                raise ValueError(f"{path}: added token {t['content']!r} sets {flag}, which is not supported")
        added[t["content"]] = int(t["id"])
        if t.get("special"):
            special.add(int(t["id"]))
    prefix_ids, suffix_ids = _post_processor(spec.get("post_processor"), added)

    directory = path.parent
    config = _read_json(directory / "tokenizer_config.json") if (directory / "tokenizer_config.json").is_file() else {}
    generation = (_read_json(directory / "generation_config.json")
                  if (directory / "generation_config.json").is_file() else {})
    tokens = {name: _token_text(config.get(name)) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    id_to_text = {i: s for s, i in added.items()}
    eos_ids = generation.get("eos_token_id")
    eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
    for name in ("bos_token", "eos_token", "pad_token"):
        given = generation.get(f"{name}_id")
        given = eos_ids[0] if name == "eos_token" and eos_ids else given
        if tokens[name] is None and isinstance(given, int) and given in id_to_text:
            tokens[name] = id_to_text[given]
    unk = model.get("unk_token")
    return _make(path, vocab, merges, added, special=special, splits=splits, prefix_space_at=prefix_at,
                 byte_unk_id=ids_of.get(unk, added.get(unk)) if unk is not None else None,
                 normalization=normalization, ignore_merges=bool(model.get("ignore_merges")), prefix_ids=prefix_ids,
                 suffix_ids=suffix_ids, stop_ids=eos_ids, chat_template=_chat_template(directory, config), **tokens)


# ---- GGUF -------------------------------------------------------------------------------------------

def load_gguf_tokenizer(path, reader=None) -> HFTokenizer:
    """Read the tokenizer in a GGUF file's metadata (llama.cpp's `tokenizer.ggml.*` keys): tokens in GPT-2's
    alphabet, merges, token types (3, control: a special token; 4, user-defined: an added token such as
    <think>), the pre-tokenizer named by `tokenizer.ggml.pre` (see GGUF_PRE_SPLITS), the bos/eos/pad/unk/eot
    ids, add_bos_token and the chat template. A SentencePiece vocabulary (`tokenizer.ggml.model` "llama", as
    Llama 2 and Mistral use) or an unknown pre-tokenizer is a ValueError naming the file and the kind.
    reader: a `gguf.GGUFReader` of the file already open (the weight loader's), spared a second parse."""
    from gguf import GGUFReader

    path = Path(path)
    try:
        fields = (reader or GGUFReader(path)).fields
    except Exception as e:  # the reader raises ValueError, IndexError, struct and memmap errors on bad files
        raise FileFormatError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None

    def get(key, default=None):
        field = fields.get(key)
        return default if field is None else field.contents()

    kind = get("tokenizer.ggml.model")
    if kind is None:
        raise ValueError(f"{path}: holds no tokenizer (no tokenizer.ggml.model)")
    if kind != "gpt2":
        raise ValueError(f"{path}: tokenizer.ggml.model is {kind!r}; only 'gpt2' (byte-level BPE, as SmolLM2, "
                         f"Llama 3 and Qwen use) is supported" + (" ('llama' is SentencePiece)" if kind == "llama" else ""))
    pre = get("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_SPLITS:
        raise ValueError(f"{path}: pre-tokenizer tokenizer.ggml.pre={pre!r} is not supported "
                         f"(supported: {', '.join(sorted(GGUF_PRE_SPLITS))})")
    tokens, merge_list = get("tokenizer.ggml.tokens"), get("tokenizer.ggml.merges")
    if not tokens or merge_list is None:
        raise FileFormatError(f"{path}: tokenizer.ggml.tokens and tokenizer.ggml.merges are both needed")
    types = get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise FileFormatError(f"{path}: {len(types)} token types for {len(tokens)} tokens")
    alphabet, _ = _alphabet()
    vocab = {i: token_bytes(t) for i, t in enumerate(tokens)}
    # As transformers' GGUF reader: a control token spelled outside the byte alphabet is a mislabel, kept
    # as an ordinary vocabulary entry.
    special = {i for i, (t, kind_) in enumerate(zip(tokens, types)) if kind_ == _GGUF_CONTROL and set(t) <= alphabet}
    added = {tokens[i]: i for i in special}
    added.update({t: i for i, (t, kind_) in enumerate(zip(tokens, types)) if kind_ == _GGUF_USER_DEFINED})
    merges = _build_merges(path, merge_list, {t: i for i, t in enumerate(tokens)})

    def token(key):
        i = get(f"tokenizer.ggml.{key}")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    stop = [get(f"tokenizer.ggml.{key}") for key in ("eot_token_id", "eom_token_id")]
    bos = get("tokenizer.ggml.bos_token_id")
    eos = get("tokenizer.ggml.eos_token_id")
    prefix = [bos] if get("tokenizer.ggml.add_bos_token", False) and bos is not None else []
    suffix = [eos] if get("tokenizer.ggml.add_eos_token", False) and eos is not None else []
    return _make(path, vocab, merges, added, special=special, splits=GGUF_PRE_SPLITS[pre],
                 ignore_merges=pre in ("llama-bpe", "llama3", "llama-v3"), prefix_ids=prefix, suffix_ids=suffix,
                 bos_token=token("bos_token_id"), eos_token=token("eos_token_id"), pad_token=token("padding_token_id"),
                 unk_token=token("unknown_token_id"), stop_ids=[i for i in stop if isinstance(i, int)],
                 chat_template=get("tokenizer.chat_template"))


def load_tokenizer(source) -> HFTokenizer:
    """The tokenizer of `source`: a .gguf file, a tokenizer.json, or a directory holding tokenizer.json
    (a Hugging Face model directory)."""
    source = Path(source)
    if source.is_dir():
        if not (source / "tokenizer.json").is_file():
            raise ValueError(f"{source}: no tokenizer.json in this directory")
        return load_tokenizer_json(source / "tokenizer.json")
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file or directory")
    if source.suffix == ".gguf":
        return load_gguf_tokenizer(source)
    return load_tokenizer_json(source)


# ---- writing tokenizer.json back ----------------------------------------------------------------------

def _spelling(token: bytes) -> str:
    """A token's bytes spelled in GPT-2's alphabet: b" the" -> "Ġthe" (the inverse of `token_bytes`)."""
    chars = bytes_to_unicode()
    return "".join(chars[b] for b in token)


def _pre_tokenizer_spec(tok: HFTokenizer) -> dict:
    """The pre_tokenizer object `_pre_tokenizer` reads back as tok.splits and tok.prefix_space_at: a Split
    (Isolated) per pattern, GPT-2's pattern at the end as ByteLevel's own regex, else a ByteLevel without one."""
    splits = list(tok.splits)
    own_regex = bool(splits) and splits[-1] == GPT2_SPLIT
    if own_regex:
        splits.pop()
    if tok.prefix_space_at not in (None, len(splits)):
        raise ValueError(f"tokenizer {tok.name!r}: a prefix space before pattern {tok.prefix_space_at} cannot be "
                         "written as a ByteLevel pre-tokenizer")
    steps = [{"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False} for p in splits]
    steps.append({"type": "ByteLevel", "add_prefix_space": tok.prefix_space_at is not None, "trim_offsets": True,
                  "use_regex": own_regex})
    return steps[0] if len(steps) == 1 else {"type": "Sequence", "pretokenizers": steps}


def _post_processor_spec(tok: HFTokenizer, text_of: dict[int, str]) -> dict:
    """A TemplateProcessing that puts tok.prefix_ids / suffix_ids around a text (ByteLevel's when none)."""
    if not tok.prefix_ids and not tok.suffix_ids:
        return {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}

    def specials(ids):
        return [{"SpecialToken": {"id": text_of[i], "type_id": 0}} for i in ids]

    single = [*specials(tok.prefix_ids), {"Sequence": {"id": "A", "type_id": 0}}, *specials(tok.suffix_ids)]
    pair = [*single, *specials(tok.prefix_ids), {"Sequence": {"id": "B", "type_id": 1}}, *specials(tok.suffix_ids)]
    used = sorted(set(tok.prefix_ids) | set(tok.suffix_ids))
    return {"type": "TemplateProcessing", "single": single, "pair": pair,
            "special_tokens": {text_of[i]: {"id": text_of[i], "ids": [i], "tokens": [text_of[i]]} for i in used}}


def save_tokenizer_json(tok: HFTokenizer, directory) -> Path:
    """Write `tok` as `directory`/tokenizer.json (a byte-level BPE in the format the tokenizers library reads:
    the vocabulary and merges in GPT-2's alphabet, the pre-tokenizer's patterns, the added tokens), with
    tokenizer_config.json (bos/eos/pad/unk tokens and the chat template) and generation_config.json (the stop
    ids) beside it, so that `load_tokenizer_json`, `tokenizers.Tokenizer.from_file` and transformers'
    AutoTokenizer give the same ids as `tok`. A tokenizer read from a GGUF file gains the files its model's
    directory lacks. Returns the tokenizer.json's path."""
    from autograd.checkpoint import write_text

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text_of = {i: t for t, i in tok.special_tokens.items()}  # added tokens keep their text as written
    # an added token inside the vocabulary (a GGUF file's) under its text; one past it (tokenizers' add_tokens)
    # only in added_tokens
    vocab = {text_of.get(i) or _spelling(b): i for i, b in sorted(tok.vocab.items())}
    ranked = sorted(tok.merges.items(), key=lambda kv: kv[1])  # a merge's rank is its merged id's order
    merges = [[_spelling(tok.vocab[a]), _spelling(tok.vocab[b])] for (a, b), _ in ranked]
    unk = text_of.get(tok._byte_unk_id) or (_spelling(tok.vocab[tok._byte_unk_id])
                                            if tok._byte_unk_id is not None else None)
    normalizers = [{"type": form} for form in tok.normalization]
    spec = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": i in tok.special_ids}
                         for t, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])],
        "normalizer": (normalizers[0] if len(normalizers) == 1 else
                       {"type": "Sequence", "normalizers": normalizers} if normalizers else None),
        "pre_tokenizer": _pre_tokenizer_spec(tok),
        "post_processor": _post_processor_spec(tok, text_of),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": tok.ignore_merges, "vocab": vocab, "merges": merges},
    }
    path = directory / "tokenizer.json"
    write_text(path, json.dumps(spec, ensure_ascii=False) + "\n")
    config = {**tok.special_tokens_map, "tokenizer_class": "PreTrainedTokenizerFast",
              "clean_up_tokenization_spaces": False, "model_max_length": 1_000_000_000}
    if tok.chat_template is not None:
        config["chat_template"] = tok.chat_template
    write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    # eos first (the reader takes the first as eos where tokenizer_config.json names none), then the other
    # stop ids the end-of-turn tokens do not already give
    turn_ends = {tok.token_to_id(t) for t in END_OF_TURN_TOKENS}
    others = sorted(i for i in tok.stop_ids if i != tok.eos_token_id and i not in turn_ends)
    eos = ([tok.eos_token_id] if tok.eos_token_id is not None else []) + others
    generation = {"eos_token_id": eos} if eos else {}
    if tok.bos_token_id is not None:
        generation["bos_token_id"] = tok.bos_token_id
    if tok.pad_token_id is not None:
        generation["pad_token_id"] = tok.pad_token_id
    write_text(directory / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    return path
