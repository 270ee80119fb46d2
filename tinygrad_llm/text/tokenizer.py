"""Book chapter 2, sections 2.2-2.5: text to token ids with byte-level BPE, as GPT-2 does it.

A text is cut into pre-tokens by GPT-2's regular expression (words with their leading space, runs of
digits, runs of punctuation, whitespace: section 2.2's splitting). Each pre-token's UTF-8 bytes start as
byte tokens and are merged pair by pair, lowest merge rank first, until no learned pair is left (2.5).
Every string has an encoding because every byte is a token, and decoding is concatenating the tokens'
bytes. Special tokens such as <|endoftext|> (2.4) are matched only where `encode` allows them.

The layers, minbpe's way: `tinygrad_llm/text/bpe.py` holds the algorithm's helpers (`get_stats`,
`merge`, ...); this file the tokenizer built on them, `BPETokenizer` (train, encode, decode, save,
load); `tinygrad_llm/text/gpt2_files.py` reads and writes GPT-2's own files (encoder.json and vocab.bpe),
so with GPT-2's published files `BPETokenizer` gives the same ids as tiktoken's "gpt2" encoding.
A `BPETokenizer` is its vocabulary, merges, special tokens and pre-token pattern, so a reader of another
format builds one the same way. `get_tokenizer("gpt2")` returns tiktoken's encoding (the fast path); both
offer `encode`, `decode`, `n_vocab` and `eot_token`.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import defaultdict
from functools import cached_property
from itertools import pairwise
from pathlib import Path

import regex

from tinygrad_llm.text.bpe import (check_vocab_size, get_stats, merge, pop_best, pretoken_counts, special_regex,
                                   split_specials)
from tinygrad_llm.text.gpt2_files import MAX_TOKEN_ID, bytes_to_unicode, read_gpt2_files, write_gpt2_files

__all__ = ["GPT2_PATTERN", "ENDOFTEXT", "MAX_TOKEN_ID", "BPETokenizer", "get_tokenizer", "tokenizer_fingerprint",
           "get_stats", "merge", "bytes_to_unicode"]

# GPT-2's pattern in tiktoken's form. OpenAI's release wrote it as
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# which cuts every text the same way; the possessive form spares the regex engine its backtracking.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
_CACHE_LIMIT = 1 << 20  # pre-tokens kept in the encode cache before it is cleared


class BPETokenizer:
    """Byte-level BPE with GPT-2's pre-tokenization (book section 2.5, where the book calls tiktoken).

    vocab: id -> the token's bytes; merges: (left id, right id) -> merged id, in rank order (the
    first pair is merged first); special_tokens: text -> id, matched only when `encode` allows them;
    pattern: the pre-tokenizer's regular expression (GPT-2's unless given).

    A subclass that cuts text differently overrides `pretokenize` (tinygrad_llm/text/hf_tokenizer.py
    does, for the Llama family's tokenizer.json and GGUF files).
    """

    # A pre-token that is a whole vocabulary entry is that entry, without running the merges, as
    # tiktoken decides it; a Hugging Face BPE does so only where its tokenizer.json sets ignore_merges.
    ignore_merges = True

    def __init__(self, vocab: dict[int, bytes], merges: dict[tuple[int, int], int],
                 special_tokens: dict[str, int] | None = None, name: str = "bpe", pattern: str = GPT2_PATTERN):
        self.vocab = dict(vocab)
        self.merges = dict(merges)
        self.special_tokens = dict(special_tokens or {})
        self.name = name
        self.pattern = pattern
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self._byte_ids = self._byte_table()
        self._token_ids = {token: i for i, token in self.vocab.items()}
        self._decoder = {**self.vocab, **{i: s.encode("utf-8") for s, i in self.special_tokens.items()}}
        self._pattern = regex.compile(pattern)
        self._cache: dict[str, list[int]] = {}

    def _byte_table(self) -> list[int]:
        """The id of each single byte, indexed by byte value: where every pre-token's merging starts."""
        byte_ids = {token[0]: i for i, token in self.vocab.items() if len(token) == 1}
        if len(byte_ids) != 256:
            raise ValueError(f"a byte-level vocabulary needs all 256 single bytes; it has {len(byte_ids)}")
        return [byte_ids[b] for b in range(256)]

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
        """sha256 of the pattern, vocabulary, merges and special tokens: equal fingerprints, equal encodings."""
        h = hashlib.sha256(self.pattern.encode())
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
                     name: str = "bpe", pattern: str = GPT2_PATTERN) -> BPETokenizer:
        """Learn merges the plain way (minbpe's): before every merge, count every adjacent pair in every
        pre-token, then merge the most frequent pair everywhere. The version to read first; it recounts
        the whole corpus once per merge, so `train` below learns the same merges incrementally (a test
        holds the two equal). Ties go to the smallest (left id, right id).

        "aaab aab" -> pre-tokens {"aaab": 1, " aab": 1}; the first merge is (97, 97) "aa", counted 3 times;
        then every pair occurs once, and the smallest, (32, 256) " aa", is merged next.
        """
        n_special = check_vocab_size(vocab_size, special_tokens)
        word_counts = pretoken_counts(text, special_tokens, pattern)  # pre-token -> how often it occurs
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
        return cls(vocab, merges, specials, name=name, pattern=pattern)

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens=(ENDOFTEXT,), verbose: bool = False,
              name: str = "bpe", pattern: str = GPT2_PATTERN) -> BPETokenizer:
        """Learn merges from `text` until the vocabulary holds `vocab_size` tokens (specials included): the
        merges of `train_simple`, learned without recounting.

        Ids 0..255 are the bytes in byte-value order, then merged tokens in the order learned, then
        the special tokens. Each step merges the most frequent adjacent pair; ties go to the smallest
        (left id, right id). Pair counts are updated only in the words a merge touches, and the best
        pair comes from a heap whose stale entries are refreshed when they surface. Training stops
        early when no adjacent pairs are left. Special tokens in the text are cut out, never merged.
        """
        n_special = check_vocab_size(vocab_size, special_tokens)
        word_counts = pretoken_counts(text, special_tokens, pattern)
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
            pair = pop_best(heap, counts)
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
        return cls(vocab, merges, specials, name=name, pattern=pattern)

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
            found = special_regex(frozenset(disallowed)).search(text)
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
        for k, part in enumerate(split_specials(text, frozenset(allowed))):
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
        for word in self.pretokenize(text):
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = cache[word] = self._bpe(word.encode("utf-8"))
            ids.extend(word_ids)
        return ids

    def pretokenize(self, text: str) -> list[str]:
        """The pre-tokens of `text`, each merged on its own: the matches of the pattern (section 2.2's
        splitting). "Hello, world" -> ["Hello", ",", " world"]."""
        return self._pattern.findall(text)

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
        tiktoken decides it too (see `ignore_merges`)."""
        if self.ignore_merges and data in self._token_ids:
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
        """Write encoder.json and vocab.bpe in GPT-2's format and alphabet (see `write_gpt2_files`)."""
        write_gpt2_files(directory, self.vocab, self.merges, self.special_tokens)

    @classmethod
    def load(cls, directory) -> BPETokenizer:
        """Read a directory holding encoder.json and vocab.bpe (GPT-2's, or written by `save`)."""
        directory = Path(directory)
        return cls.from_gpt2_files(directory / "encoder.json", directory / "vocab.bpe",
                                   name=directory.resolve().name)

    @classmethod
    def from_gpt2_files(cls, encoder_json, vocab_bpe, name: str | None = None) -> BPETokenizer:
        """Read GPT-2's encoder.json and vocab.bpe, checked against each other (see `read_gpt2_files`:
        a mismatched pair is a FileFormatError, not a tokenizer that encodes wrongly)."""
        vocab, merges, specials = read_gpt2_files(encoder_json, vocab_bpe)
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
