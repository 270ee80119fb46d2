"""Book chapter 2, section 2.5: GPT-2's tokenizer files, encoder.json and vocab.bpe, read and written.

encoder.json maps each token's text to its id; vocab.bpe lists the merges in rank order, one "left right"
pair a line after a "#version: 0.2" line. Both spell bytes in GPT-2's printable alphabet
(`bytes_to_unicode`: space is 'Ġ'). `read_gpt2_files` gives what `BPETokenizer` is built from, a
vocabulary, merges and special tokens; `write_gpt2_files` writes them back in the same format.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from autograd.checkpoint import FileFormatError, write_text

MAX_TOKEN_ID = 2**31 - 1  # ids index an embedding table; anything larger is a corrupt file


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character: printable Latin-1 bytes map to
    themselves, the other 68 to chr(256), chr(257), ... in byte order (so space is 'Ġ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return dict(sorted(chars.items()))


def byte_text(token: bytes) -> str:
    """A token's bytes in GPT-2's alphabet: b" the" -> "Ġthe"."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def write_gpt2_files(directory, vocab: dict[int, bytes], merges: dict[tuple[int, int], int],
                     special_tokens: dict[str, int]) -> None:
    """Write encoder.json (token text -> id, special tokens as they are) and vocab.bpe (merges
    in rank order, after a "#version: 0.2" line), in GPT-2's format and alphabet."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    encoder = {byte_text(token): i for i, token in sorted(vocab.items())}
    encoder.update(special_tokens)
    lines = ["#version: 0.2"] + [f"{byte_text(vocab[a])} {byte_text(vocab[b])}" for a, b in merges]
    # each file whole or not at all: a run killed mid-save must not leave a truncated encoder.json
    write_text(directory / "encoder.json", json.dumps(encoder, ensure_ascii=False))
    write_text(directory / "vocab.bpe", "\n".join(lines) + "\n")


def read_gpt2_files(encoder_json, vocab_bpe):
    """(vocab, merges, special_tokens) of GPT-2's encoder.json and vocab.bpe. An encoder entry that is
    neither one byte nor the result of a merge is a special token (GPT-2's <|endoftext|> = 50256).

    The two files are checked against each other, because a well-formed but mismatched pair loads
    and encodes wrongly: every merge's two parts and its result are in the encoder, and every
    other entry is one of the 256 bytes or a special token of the form <|...|>. GPT-2's files:
    256 bytes + 50000 merges + 1 special = 50257 entries. (A vocab.bpe cut at a line boundary
    would otherwise turn the merged tokens it lost into "special tokens".) Any problem raises a
    FileFormatError naming the file and what is inconsistent."""
    encoder = _read_encoder(Path(encoder_json))
    lines = _read_text(Path(vocab_bpe)).split("\n")
    first = 1
    if lines and lines[0].startswith("#version"):
        lines, first = lines[1:], 2
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    merges, merged = {}, set()
    for line_no, line in enumerate(lines, start=first):
        if not line:
            continue
        pair = line.split(" ")
        if len(pair) != 2 or not all(pair):
            raise FileFormatError(f"{vocab_bpe}, line {line_no}: {line!r} is not a merge "
                                  "(two tokens separated by one space)")
        a, b = pair
        missing = [t for t in (a, b, a + b) if t not in encoder]
        if missing:
            raise FileFormatError(f"{vocab_bpe}, line {line_no}: merge {line!r} needs "
                                  f"{', '.join(map(repr, missing))}, which {encoder_json} does not hold "
                                  "(the two files are not a pair)")
        merges[encoder[a], encoder[b]] = encoder[a + b]
        merged.add(a + b)
    vocab, specials, strays = {}, {}, []
    for text, i in encoder.items():
        if text in merged or (len(text) == 1 and text in byte_of):
            vocab[i] = bytes(byte_of[c] for c in text)
        elif text.startswith("<|") and text.endswith("|>"):
            specials[text] = i
        else:
            strays.append((i, text))
    if strays:
        i, text = min(strays)
        raise FileFormatError(
            f"{encoder_json} and {vocab_bpe} disagree: {len(strays)} encoder entries (the first: "
            f"{text!r}, id {i}) are neither a byte, nor a merge's result, nor a special token <|...|>; "
            f"{vocab_bpe} has {len(merges)} merges for {len(encoder) - len(specials) - 256} merged "
            f"tokens in the encoder. Is {Path(vocab_bpe).name} truncated?")
    n_bytes = sum(1 for t in vocab.values() if len(t) == 1)
    if n_bytes != 256:
        raise FileFormatError(f"{encoder_json}: a byte-level vocabulary needs all 256 single bytes; "
                              f"it has {n_bytes}")
    return vocab, merges, specials


def _read_text(path: Path) -> str:
    """A text file's contents, a FileFormatError when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_encoder(path: Path) -> dict[str, int]:
    """encoder.json: a JSON object of token text -> distinct non-negative integer id."""
    try:
        encoder = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise FileFormatError(f"{path} is not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    if not isinstance(encoder, dict):
        raise FileFormatError(f"{path} holds a JSON {type(encoder).__name__}, not the object "
                              "{token text: id} of an encoder.json")
    seen = {}
    for text, i in encoder.items():
        if type(i) is not int or not 0 <= i <= MAX_TOKEN_ID:  # bool is an int subclass: excluded
            raise FileFormatError(f"{path}: the id of {text!r} is {i!r}, not an integer in [0, {MAX_TOKEN_ID}]")
        if i in seen:
            raise FileFormatError(f"{path}: {seen[i]!r} and {text!r} have the same id {i}")
        seen[i] = text
    return encoder
