"""The Llama family's tokenizers: byte-level BPE as SmolLM2, Llama 3 and Qwen2/Qwen3 configure it.

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

The files it is read from (tokenizer.json, GGUF) are read in tinygrad_llm/text/hf_files.py:

    >>> tok = load_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf")  # from tinygrad_llm.text.hf_files
    >>> tok.encode("<|im_start|>user\\nHi<|im_end|>")
    [1, 4093, 198, 26843, 2]
    >>> tok.decode([1, 4093, 198, 26843, 2], skip_special_tokens=True)
    'user\\nHi'
    >>> sorted(tok.stop_ids), tok.eos_token
    ([2], '<|im_end|>')
    >>> tok.pretokenize("a  12")  # SmolLM2's pre-tokenizer: digits cut out first, then GPT-2's pattern
    ['a', '  ', '1', '2']
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from functools import cached_property

import regex

from tinygrad_llm.text.tokenizer import BPETokenizer

__all__ = ["HFTokenizer", "GPT2_SPLIT", "LLAMA3_SPLIT", "QWEN2_SPLIT", "GGUF_PRE_SPLITS", "END_OF_TURN_TOKENS"]

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
