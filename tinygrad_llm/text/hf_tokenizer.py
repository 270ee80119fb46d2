"""The Llama family's tokenizers: byte-level BPE read from a Hugging Face tokenizer.json or a GGUF file.

Beyond the book: SmolLM2, Llama 3 and Qwen2/Qwen3 tokenize the way GPT-2 does (section 2.5's byte-level
BPE, token bytes spelled in GPT-2's printable alphabet), each with its own vocabulary, merges, pre-token
pattern and special tokens. `HFTokenizer` is a `BPETokenizer` (same merge ranks, same cache) with what
differs:

- the text is cut by a sequence of patterns, each applied to the pieces the one before left (Hugging
  Face's pre-tokenizer Sequence of Split/Digits/ByteLevel, llama.cpp's `regex_exprs`), where GPT-2 has
  one; an optional Unicode normalization comes first (Qwen2's NFC);
- added tokens (<|im_start|>, <|eot_id|>, <think>, ...) are cut out of every text by default, as the
  tokenizers library does, so `encode(text)` equals `Tokenizer.encode(text, add_special_tokens=False).ids`.
  `allowed_special` / `disallowed_special` keep tiktoken's meaning for a caller who wants them encoded as
  text (`encode(text, allowed_special=())`) or refused (`disallowed_special="all"`);
  `add_special_tokens=True` adds what the file's post-processor adds (Llama 3's <|begin_of_text|>);
- a pre-token that is a vocabulary entry skips the merges only where the file says `ignore_merges`;
- it knows its bos/eos/pad/unk tokens, the ids generation stops at (`stop_ids`) and its chat template.

Readers: `load_tokenizer_json(path)` (tokenizer.json, with tokenizer_config.json, generation_config.json
and chat_template.jinja read from beside it), `load_gguf_tokenizer(path)` (llama.cpp's `tokenizer.ggml.*`
metadata; `tokenizer.ggml.pre` names the pre-tokenizer, mapped to patterns as llama.cpp's llama-vocab.cpp
maps them), and `load_tokenizer(source)` for a directory, a tokenizer.json or a .gguf file:

    >>> tok = load_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf")
    >>> tok.encode("<|im_start|>user\\nHi<|im_end|>")
    [1, 4093, 198, 26843, 2]
    >>> tok.decode([1, 4093, 198, 26843, 2], skip_special_tokens=True)
    'user\\nHi'
    >>> sorted(tok.stop_ids), tok.eos_token
    ([2], '<|im_end|>')
"""

from __future__ import annotations

import json
import unicodedata
from functools import cache, cached_property
from pathlib import Path

import regex

from autograd.checkpoint import FileFormatError
from tinygrad_llm.text.gpt2_files import bytes_to_unicode
from tinygrad_llm.text.tokenizer import BPETokenizer

__all__ = ["HFTokenizer", "load_tokenizer", "load_tokenizer_json", "load_gguf_tokenizer", "GPT2_SPLIT",
           "LLAMA3_SPLIT", "QWEN2_SPLIT", "GGUF_PRE_SPLITS", "END_OF_TURN_TOKENS"]

# The ByteLevel pre-tokenizer's own pattern (GPT-2's, as the tokenizers library writes it).
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Llama 3's Split pattern: digits in runs of at most three, a letter run may take one leading symbol.
LLAMA3_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
                r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Qwen2's (and Qwen3's): Llama 3's with every digit on its own.
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
               r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# tokenizer.ggml.pre -> the patterns applied in turn, as llama.cpp's llama-vocab.cpp lists them
# (SmolLM2's "smollm" isolates each digit first, then GPT-2's pattern, as its tokenizer.json's
# Digits(individual_digits) + ByteLevel do).
GGUF_PRE_SPLITS = {
    "default": (GPT2_SPLIT,), "gpt2": (GPT2_SPLIT,),
    "smollm": (r"\p{N}", GPT2_SPLIT), "starcoder": (r"\p{N}", GPT2_SPLIT), "refact": (r"\p{N}", GPT2_SPLIT),
    "llama-bpe": (LLAMA3_SPLIT,), "llama3": (LLAMA3_SPLIT,), "llama-v3": (LLAMA3_SPLIT,),
    "smaug-bpe": (LLAMA3_SPLIT,), "falcon3": (LLAMA3_SPLIT,), "dbrx": (LLAMA3_SPLIT,),
    "qwen2": (QWEN2_SPLIT,), "deepseek-r1-qwen": (QWEN2_SPLIT,), "stablelm2": (QWEN2_SPLIT,),
}

# Chat models end a turn with one of these; generation stops there as well as at eos.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>")
_NORMAL_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


class HFTokenizer(BPETokenizer):
    """A byte-level BPE of the Llama family (see the module docstring).

    added_tokens: text -> id of every token cut out of the text before BPE; special: the ids among
    them that are special (control) tokens, dropped by `decode(..., skip_special_tokens=True)`.
    splits: the pre-tokenizer's patterns, applied in turn; prefix_space_at: where ByteLevel's
    add_prefix_space puts a space before each piece (the index into splits), None for never;
    normalization: Unicode normal forms applied first. prefix_ids / suffix_ids: what
    `encode(..., add_special_tokens=True)` puts around the ids. bos_token, eos_token, pad_token,
    unk_token: token texts (or None); stop_ids: ids generation stops at besides eos. byte_unk_id: the
    BPE model's unk id, which a byte missing from the vocabulary becomes; with None such bytes are dropped
    (both as the tokenizers library does: SmolLM2's vocabulary lacks 21 bytes, "\x04" among them).
    """

    def __init__(self, vocab: dict[int, bytes], merges: dict[tuple[int, int], int], added_tokens: dict[str, int],
                 *, special=None, name: str = "hf", splits=(GPT2_SPLIT,), prefix_space_at: int | None = None,
                 normalization=(), ignore_merges: bool = False, prefix_ids=(), suffix_ids=(), bos_token=None,
                 eos_token=None, pad_token=None, unk_token=None, stop_ids=(), chat_template: str | None = None,
                 byte_unk_id: int | None = None):
        self._byte_unk_id = byte_unk_id
        super().__init__(vocab, merges, added_tokens, name=name, pattern=splits[0] if splits else r"(?s).+")
        self.splits = tuple(splits)
        self.prefix_space_at = prefix_space_at
        self.normalization = tuple(normalization)
        self.ignore_merges = ignore_merges
        self.special_ids = frozenset(added_tokens.values() if special is None else special)
        self.prefix_ids, self.suffix_ids = list(prefix_ids), list(suffix_ids)
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        self.chat_template = chat_template
        self._splits = [regex.compile(p) for p in self.splits]
        self.stop_ids = frozenset(i for i in (self.eos_token_id, *stop_ids, *map(self.token_to_id, END_OF_TURN_TOKENS))
                                  if i is not None)

    def token_to_id(self, token: str | None) -> int | None:
        """The id of an added token or vocabulary entry given as text (added tokens as written, vocabulary
        entries as their UTF-8 bytes), None when there is none."""
        if token is None:
            return None
        found = self.special_tokens.get(token)
        return found if found is not None else self._token_ids.get(token.encode("utf-8"))

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.pad_token)

    @property
    def unk_token_id(self) -> int | None:
        return self.token_to_id(self.unk_token)

    @property
    def eot_token(self) -> int | None:
        """The id that ends a text or a turn: eos (what `BPETokenizer.eot_token` is for GPT-2)."""
        return self.eos_token_id

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """bos_token, eos_token, unk_token, pad_token where set: the variables transformers gives a chat template."""
        names = {"bos_token": self.bos_token, "eos_token": self.eos_token, "unk_token": self.unk_token,
                 "pad_token": self.pad_token}
        return {k: v for k, v in names.items() if v is not None}

    @cached_property
    def fingerprint(self) -> str:
        """The vocabulary's fingerprint (see BPETokenizer) with every way this tokenizer cuts text."""
        import hashlib
        h = hashlib.sha256(super().fingerprint.encode())
        h.update(json.dumps([self.splits, self.prefix_space_at, self.normalization, self.ignore_merges]).encode())
        return h.hexdigest()

    # ---- encoding and decoding ------------------------------------------------------------------

    def _byte_table(self) -> list[int]:
        byte_ids = {token[0]: i for i, token in self.vocab.items() if len(token) == 1}
        self._missing_bytes = bytes(b for b in range(256) if b not in byte_ids)
        return [byte_ids.get(b, self._byte_unk_id) for b in range(256)]

    def _bpe(self, data: bytes) -> list[int]:
        if self._missing_bytes and self._byte_unk_id is None:
            data = data.translate(None, self._missing_bytes)  # dropped, as by the tokenizers library
        return super()._bpe(data) if data else []

    def encode(self, text: str, *, allowed_special="all", disallowed_special=(),
               add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`, added tokens cut out first (the tokenizers library's default).

        allowed_special / disallowed_special: as `BPETokenizer.encode` (tiktoken's rules), with the
        defaults turned around. add_special_tokens: put `prefix_ids` / `suffix_ids` around the ids, as
        `tokenizer(text)` does in transformers (for Llama 3, <|begin_of_text|> first).
        """
        ids = super().encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special)
        return [*self.prefix_ids, *ids, *self.suffix_ids] if add_special_tokens else ids

    def pretokenize(self, text: str) -> list[str]:
        """Normalize, then cut by each pattern in turn, keeping the text between matches as pieces too
        (the tokenizers library's Split with behavior "Isolated"). With SmolLM2's ("\\p{N}", GPT2_SPLIT):
        "a  12" -> "\\p{N}" gives ["a  ", "1", "2"], then GPT-2's pattern ["a", "  ", "1", "2"]."""
        for form in self.normalization:
            text = unicodedata.normalize(form, text)
        pieces = [text] if text else []
        for k, pattern in enumerate(self._splits):
            if k == self.prefix_space_at:
                pieces = [p if p.startswith(" ") else " " + p for p in pieces]
            pieces = [s for p in pieces for s in _split_isolated(pattern, p)]
        if self.prefix_space_at == len(self._splits):
            pieces = [p if p.startswith(" ") else " " + p for p in pieces]
        return pieces

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of `ids`; skip_special_tokens drops the special (control) tokens, as transformers does."""
        if skip_special_tokens:
            ids = [i for i in ids if int(i) not in self.special_ids]
        return super().decode(ids)

    # ---- chat -----------------------------------------------------------------------------------

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = True, **variables):
        """The conversation rendered by this model's chat template (tinygrad_llm/text/chat.py), as transformers'
        `apply_chat_template` renders it; its ids when tokenize (encoded with no extra bos: the template writes
        the special tokens itself). bos_token and eos_token are passed to the template as transformers passes
        them; `variables` (date_string, enable_thinking, ...) go to the template too."""
        from tinygrad_llm.text.chat import render_chat

        if self.chat_template is None:
            raise ValueError(f"tokenizer {self.name!r} has no chat template")
        text = render_chat(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                           **{**self.special_tokens_map, **variables})
        return self.encode(text) if tokenize else text


def _split_isolated(pattern, piece: str) -> list[str]:
    """`piece` cut at the matches of `pattern`, the text between matches kept as pieces of its own."""
    found = pattern.findall(piece)
    if sum(map(len, found)) == len(piece):
        return found  # the matches cover the piece: the usual case for these patterns
    out, end = [], 0
    for m in pattern.finditer(piece):
        start, stop = m.span()
        if start == stop:
            continue
        if start > end:
            out.append(piece[end:start])
        out.append(m.group())
        end = stop
    if end < len(piece):
        out.append(piece[end:])
    return out


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
