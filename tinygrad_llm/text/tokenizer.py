"""Step 1: text to token ids with byte-level BPE, as GPT-2 does it.

A text is cut into pre-tokens by GPT-2's regular expression (words with their leading space, runs of
digits, runs of punctuation, whitespace). Each pre-token's UTF-8 bytes start as byte tokens and are
merged pair by pair, lowest merge rank first, until no learned pair is left. Every string has an
encoding because every byte is a token, and decoding is concatenating the tokens' bytes.

`BPETokenizer` trains, encodes, decodes, and reads and writes GPT-2's own files (encoder.json and
vocab.bpe), so with GPT-2's published files it gives the same ids as tiktoken's "gpt2" encoding.
`get_tokenizer("gpt2")` returns tiktoken's encoding (the fast path); both offer `encode`, `decode`,
`n_vocab` and `eot_token`.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter, defaultdict
from functools import cache, cached_property, lru_cache
from itertools import pairwise
from pathlib import Path

import regex

from autograd.checkpoint import FileFormatError, write_text

# GPT-2's pattern in tiktoken's form. OpenAI's release wrote it as
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# which cuts every text the same way; the possessive form runs faster.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
_CACHE_LIMIT = 1 << 20  # pre-tokens kept in the encode cache before it is cleared


class BPETokenizer:
    """Byte-level BPE with GPT-2's pre-tokenization.

    vocab: id -> the token's bytes; merges: (left id, right id) -> merged id, in rank order (the
    first pair is merged first); special_tokens: text -> id, matched only when `encode` allows them.
    """

    def __init__(self, vocab: dict[int, bytes], merges: dict[tuple[int, int], int],
                 special_tokens: dict[str, int] | None = None, name: str = "bpe"):
        self.vocab = dict(vocab)
        self.merges = dict(merges)
        self.special_tokens = dict(special_tokens or {})
        self.name = name
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        byte_ids = {token[0]: i for i, token in self.vocab.items() if len(token) == 1}
        if len(byte_ids) != 256:
            raise ValueError(f"a byte-level vocabulary needs all 256 single bytes; it has {len(byte_ids)}")
        self._byte_ids = [byte_ids[b] for b in range(256)]
        self._token_ids = {token: i for i, token in self.vocab.items()}
        self._decoder = {**self.vocab, **{i: s.encode("utf-8") for s, i in self.special_tokens.items()}}
        self._pattern = regex.compile(GPT2_PATTERN)
        self._cache: dict[str, list[int]] = {}

    @property
    def n_vocab(self) -> int:
        """One more than the largest id, as tiktoken counts it."""
        return max(self._decoder) + 1

    @property
    def eot_token(self) -> int | None:
        """Id of <|endoftext|>, or None when this vocabulary has no such token."""
        return self.special_tokens.get(ENDOFTEXT)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the vocabulary, merges and special tokens: equal fingerprints, equal encodings."""
        h = hashlib.sha256(GPT2_PATTERN.encode())
        for i in sorted(self.vocab):
            h.update(b"v%d:%s;" % (i, self.vocab[i].hex().encode()))
        for (a, b), i in self.merges.items():
            h.update(b"m%d,%d:%d;" % (a, b, i))
        for s, i in sorted(self.special_tokens.items()):
            h.update(b"s%d:%s;" % (i, s.encode().hex().encode()))
        return h.hexdigest()

    # ---- training -------------------------------------------------------------------------------

    @classmethod
    def train_simple(cls, text: str, vocab_size: int, special_tokens=(ENDOFTEXT,),
                     name: str = "bpe") -> BPETokenizer:
        """Learn merges the plain way (minbpe's): before every merge, count every adjacent pair in every
        pre-token, then merge the most frequent pair everywhere. The version to read first; it recounts
        the whole corpus once per merge, so `train` below learns the same merges incrementally (a test
        holds the two equal). Ties go to the smallest (left id, right id).

        "aaab aab" -> pre-tokens {"aaab": 1, " aab": 1}; the first merge is (97, 97) "aa", counted 3 times;
        then every pair occurs once, and the smallest, (32, 256) " aa", is merged next.
        """
        n_special = _check_vocab_size(vocab_size, special_tokens)
        word_counts = _pretoken_counts(text, special_tokens)  # pre-token -> how often it occurs
        ids = {w: list(w.encode("utf-8")) for w in word_counts}  # each pre-token as byte ids
        vocab = {i: bytes([i]) for i in range(256)}
        ids_of = {token: i for i, token in vocab.items()}
        merges: dict[tuple[int, int], int] = {}
        while len(vocab) < vocab_size - n_special:
            counts: dict[tuple[int, int], int] = {}
            for w, f in word_counts.items():
                for pair in pairwise(ids[w]):
                    counts[pair] = counts.get(pair, 0) + f
            if not counts:
                break  # every pre-token is one token already
            pair = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
            token = vocab[pair[0]] + vocab[pair[1]]
            new_id = ids_of.setdefault(token, len(vocab))  # subtle: two pairs can spell the same bytes
            vocab[new_id] = token
            merges[pair] = new_id
            ids = {w: merge(seq, pair, new_id) for w, seq in ids.items()}
        specials = {s: len(vocab) + k for k, s in enumerate(special_tokens)}
        return cls(vocab, merges, specials, name=name)

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens=(ENDOFTEXT,), verbose: bool = False,
              name: str = "bpe") -> BPETokenizer:
        """Learn merges from `text` until the vocabulary holds `vocab_size` tokens (specials included): the
        merges of `train_simple`, learned without recounting.

        Ids 0..255 are the bytes in byte-value order, then merged tokens in the order learned, then
        the special tokens. Each step merges the most frequent adjacent pair; ties go to the smallest
        (left id, right id). Pair counts are updated only in the words a merge touches, and the best
        pair comes from a heap whose stale entries are refreshed when they surface. Training stops
        early when no adjacent pairs are left. Special tokens in the text are cut out, never merged.
        """
        n_special = _check_vocab_size(vocab_size, special_tokens)
        word_counts = _pretoken_counts(text, special_tokens)
        words = [list(w.encode("utf-8")) for w in word_counts]
        freqs = list(word_counts.values())

        counts: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words that held it
        for i, word in enumerate(words):
            for pair in pairwise(word):
                counts[pair] += freqs[i]
                where[pair].add(i)
        heap = [(-c, pair) for pair, c in counts.items()]
        heapq.heapify(heap)

        vocab = {i: bytes([i]) for i in range(256)}
        ids_of = {token: i for i, token in vocab.items()}
        merges: dict[tuple[int, int], int] = {}
        while len(vocab) < vocab_size - n_special:
            pair = _pop_best(heap, counts)
            if pair is None:
                break
            token = vocab[pair[0]] + vocab[pair[1]]
            # Two different pairs can spell the same bytes; the token keeps its first id.
            new_id = ids_of.setdefault(token, len(vocab))
            vocab[new_id] = token
            merges[pair] = new_id
            touched = set()
            for i in where.pop(pair):
                old = words[i]
                new = merge(old, pair, new_id)
                if len(new) == len(old):
                    continue  # the pair left this word in an earlier merge
                f = freqs[i]
                for p in pairwise(old):
                    counts[p] -= f
                for p in pairwise(new):
                    counts[p] += f
                    if new_id in p:
                        where[p].add(i)
                        touched.add(p)
                words[i] = new
            del counts[pair]
            for p in touched:
                heapq.heappush(heap, (-counts[p], p))
            if verbose:
                print(f"merge {len(merges)}: {pair} -> {new_id} {token!r}")
        specials = {s: len(vocab) + k for k, s in enumerate(special_tokens)}
        return cls(vocab, merges, specials, name=name)

    # ---- encoding and decoding ------------------------------------------------------------------

    def encode(self, text: str, *, allowed_special=frozenset(),
               disallowed_special="all") -> list[int]:
        """Token ids of `text`, with tiktoken's rules for special tokens.

        allowed_special: "all" or a set of special tokens encoded as their ids. disallowed_special:
        "all" (every special token not allowed) or a set; text containing one raises ValueError.
        Pass disallowed_special=() to encode special-token text as ordinary text.
        """
        specials = set(self.special_tokens)
        allowed = specials if allowed_special == "all" else specials & set(allowed_special)
        disallowed = specials - allowed if disallowed_special == "all" else set(disallowed_special)
        if disallowed:
            found = _special_regex(frozenset(disallowed)).search(text)
            if found:
                raise ValueError(
                    f"text contains the special token {found.group()!r} at character {found.start()}, "
                    f"which is disallowed. To encode it as a special token pass "
                    f"allowed_special={{{found.group()!r}}} (or 'all'); to encode it as ordinary "
                    f"text pass disallowed_special=().")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates become U+FFFD, as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for k, part in enumerate(_split_specials(text, frozenset(allowed))):
            if k % 2:
                ids.append(self.special_tokens[part])
            else:
                ids.extend(self.encode_ordinary(part))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, special-token text included, encoded as ordinary text."""
        cache, ids = self._cache, []
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        for word in self._pattern.findall(text):
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = cache[word] = self._bpe(word.encode("utf-8"))
            ids.extend(word_ids)
        return ids

    def _bpe_simple(self, data: bytes) -> list[int]:
        """GPT-2's bpe(): merge the lowest-ranked adjacent pair everywhere until none is ranked.
        The version to read: each merge rescans the whole pre-token, so a pre-token of n bytes costs
        O(n^2); `_bpe` below gives the same ids in O(n log n) (a test holds the two equal)."""
        ids = [self._byte_ids[b] for b in data]
        ranks, never = self.ranks, len(self.ranks)
        while len(ids) > 1:
            pair = min(pairwise(ids), key=lambda p: ranks.get(p, never))
            if pair not in ranks:
                break
            ids = merge(ids, pair, self.merges[pair])
        return ids

    def _bpe(self, data: bytes) -> list[int]:
        """`_bpe_simple`'s ids without rescanning: the tokens form a linked list, and a heap holds every
        adjacent ranked pair as (rank, position of its left token). Popping the smallest entry merges
        the lowest-ranked pair, leftmost first, which is the order `merge` replaces them in; only the
        two pairs beside a merge are new, so a pre-token of n bytes costs O(n log n). (minbpe's and
        tiktoken's fast paths do the same.) A pre-token that is a whole token is that token, as
        tiktoken decides it too."""
        if data in self._token_ids:
            return [self._token_ids[data]]
        ids = [self._byte_ids[b] for b in data]
        n, ranks = len(ids), self.ranks
        nxt = list(range(1, n)) + [-1]  # nxt[i]: position of the token after i, -1 at the end
        prv = list(range(-1, n - 1))
        heap = [(ranks[p], i, *p) for i, p in enumerate(pairwise(ids)) if p in ranks]
        heapq.heapify(heap)
        while heap:
            _, i, a, b = heapq.heappop(heap)
            j = nxt[i]
            # subtle: entries go stale when a neighbouring merge changed ids[i] or ids[j] (or removed
            # i, whose id is then None); an entry counts only if its pair is still there
            if ids[i] != a or j < 0 or ids[j] != b:
                continue
            ids[i], ids[j] = self.merges[a, b], None  # i becomes the merged token, j leaves the list
            nxt[i] = k = nxt[j]
            if k >= 0:
                prv[k] = i
            for left, right in ((prv[i], i), (i, k)):  # the two pairs the merge made
                if left >= 0 and right >= 0 and (ids[left], ids[right]) in ranks:
                    pair = (ids[left], ids[right])
                    heapq.heappush(heap, (ranks[pair], left, *pair))
        return [t for t in ids if t is not None]

    def decode_bytes(self, ids) -> bytes:
        return b"".join(self._decoder[int(i)] for i in ids)

    def decode(self, ids) -> str:
        """Text of `ids`. A sequence that splits a UTF-8 character shows U+FFFD in its place."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---- GPT-2's files --------------------------------------------------------------------------

    def save(self, directory) -> None:
        """Write encoder.json (token text -> id, special tokens as they are) and vocab.bpe (merges
        in rank order, after a "#version: 0.2" line), in GPT-2's format and alphabet."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        to_text = _byte_text
        encoder = {to_text(token): i for i, token in sorted(self.vocab.items())}
        encoder.update(self.special_tokens)
        lines = ["#version: 0.2"] + [f"{to_text(self.vocab[a])} {to_text(self.vocab[b])}"
                                     for a, b in self.merges]
        # each file whole or not at all: a run killed mid-save must not leave a truncated encoder.json
        write_text(directory / "encoder.json", json.dumps(encoder, ensure_ascii=False))
        write_text(directory / "vocab.bpe", "\n".join(lines) + "\n")

    @classmethod
    def load(cls, directory) -> BPETokenizer:
        """Read a directory holding encoder.json and vocab.bpe (GPT-2's, or written by `save`)."""
        directory = Path(directory)
        return cls.from_gpt2_files(directory / "encoder.json", directory / "vocab.bpe",
                                   name=directory.resolve().name)

    @classmethod
    def from_gpt2_files(cls, encoder_json, vocab_bpe, name: str | None = None) -> BPETokenizer:
        """Read GPT-2's encoder.json and vocab.bpe. An encoder entry that is neither one byte nor
        the result of a merge is a special token (GPT-2's <|endoftext|> = 50256).

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
        return cls(vocab, merges, specials, name=name or Path(encoder_json).resolve().parent.name)


def get_tokenizer(name="gpt2", *, encoder_json=None, vocab_bpe=None):
    """The tokenizer for `name`.

    "gpt2" (or another tiktoken encoding name): tiktoken's encoding, which downloads and caches
    GPT-2's files on first use (TIKTOKEN_CACHE_DIR, else a temp folder). A directory holding
    encoder.json and vocab.bpe (GPT-2's, or written by BPETokenizer.save), or the two paths given as
    encoder_json= and vocab_bpe=: a BPETokenizer read from them, no network needed.
    """
    if encoder_json is not None or vocab_bpe is not None:
        if encoder_json is None or vocab_bpe is None:
            raise ValueError("pass both encoder_json= and vocab_bpe=")
        return BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe)
    import tiktoken

    if isinstance(name, str) and name in tiktoken.list_encoding_names():
        try:
            return tiktoken.get_encoding(name)
        except OSError as e:  # requests' connection errors are OSErrors; offline they come at once
            raise OSError(
                f"could not download the files of tiktoken's {name!r} encoding ({type(e).__name__}). "
                f"Offline, use local copies of GPT-2's encoder.json and vocab.bpe: "
                f"get_tokenizer('path/to/dir') for a directory holding both, or "
                f"get_tokenizer(encoder_json='path/encoder.json', vocab_bpe='path/vocab.bpe').") from e
    if Path(name).is_dir():
        return BPETokenizer.load(name)
    raise ValueError(f"unknown tokenizer {name!r}: expected a tiktoken encoding name "
                     f"({', '.join(tiktoken.list_encoding_names())}) or a directory holding "
                     f"encoder.json and vocab.bpe")


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable identity string for cache keys: the vocabulary hash for a BPETokenizer, the name
    and vocabulary size for a tiktoken encoding."""
    if isinstance(tokenizer, BPETokenizer):
        return f"bpe-{tokenizer.fingerprint[:16]}"
    return f"tiktoken-{tokenizer.name}-{tokenizer.n_vocab}"


# ---- helpers ------------------------------------------------------------------------------------

MAX_TOKEN_ID = 2**31 - 1  # ids index an embedding table; anything larger is a corrupt file


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


def _check_vocab_size(vocab_size, special_tokens) -> int:
    n_special = len(special_tokens)
    if vocab_size < 256 + n_special:
        raise ValueError(f"vocab_size={vocab_size} is too small: the 256 bytes and "
                         f"{n_special} special tokens alone need {256 + n_special}")
    return n_special


def _pretoken_counts(text, special_tokens) -> Counter:
    """How often each pre-token occurs in `text`, special tokens cut out (they are never merged)."""
    pattern = regex.compile(GPT2_PATTERN)
    counts = Counter()
    for part in _split_specials(text, frozenset(special_tokens))[::2]:
        counts.update(pattern.findall(part))
    return counts


def get_stats(ids, counts=None) -> dict[tuple[int, int], int]:
    """Count adjacent pairs: [1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}."""
    counts = {} if counts is None else counts
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair`, left to right, by `new_id`."""
    out, i, n = [], 0, len(ids)
    a, b = pair
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


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


def _byte_text(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def _pop_best(heap, counts):
    """The pair with the highest current count (smallest pair on ties), or None when none is left.
    An entry is stale when its pair's count fell since the push: it is re-pushed with the count
    now. (A count that rises is pushed anew by the trainer, so no pair is ever under-ranked.)"""
    while heap:
        neg_count, pair = heapq.heappop(heap)
        count = counts.get(pair, 0)
        if count == -neg_count and count > 0:
            return pair
        if count > 0:
            heapq.heappush(heap, (-count, pair))
    return None


@lru_cache(maxsize=64)
def _special_regex(tokens: frozenset):
    """One regex matching any of `tokens`, longest first, in a group so that split keeps them."""
    return regex.compile("(" + "|".join(regex.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")")


def _split_specials(text: str, tokens: frozenset) -> list[str]:
    """[text, special, text, special, ..., text]: even items ordinary text, odd items specials."""
    if not tokens:
        return [text]
    return _special_regex(tokens).split(text)
