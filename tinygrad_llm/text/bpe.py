"""Book chapter 2, section 2.5: the byte pair encoding algorithm itself, on lists of integer ids.

The helpers the tokenizer (`tinygrad_llm/text/tokenizer.py`) is built on, as minbpe's base.py has them:
count adjacent pairs (`get_stats`), replace a pair by a new id (`merge`), count a corpus's pre-tokens
(`pretoken_counts`), cut special tokens out of a text (`split_specials`), and pick the most frequent pair
from a heap whose entries may be stale (`pop_best`). Nothing here knows GPT-2: the pre-tokenizer's
pattern and the special tokens come in as arguments, so another vocabulary (a tokenizer.json's, a
GGUF file's) uses the same helpers.
"""

from __future__ import annotations

import heapq
from collections import Counter
from functools import lru_cache
from itertools import pairwise

import regex


def get_stats(ids, counts=None) -> dict[tuple[int, int], int]:
    """Count adjacent pairs: [1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}."""
    counts = {} if counts is None else counts
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair`, left to right, by `new_id`:
    merge([1, 1, 1, 2], (1, 1), 9) -> [9, 1, 2]."""
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


def check_vocab_size(vocab_size, special_tokens) -> int:
    """The number of special tokens, once `vocab_size` is known to hold them and the 256 bytes."""
    n_special = len(special_tokens)
    if vocab_size < 256 + n_special:
        raise ValueError(f"vocab_size={vocab_size} is too small: the 256 bytes and "
                         f"{n_special} special tokens alone need {256 + n_special}")
    return n_special


def pretoken_counts(text, special_tokens, pattern: str) -> Counter:
    """How often each pre-token (a match of `pattern`) occurs in `text`, special tokens cut out (they
    are never merged)."""
    compiled = regex.compile(pattern)
    counts = Counter()
    for part in split_specials(text, frozenset(special_tokens))[::2]:
        counts.update(compiled.findall(part))
    return counts


def pop_best(heap, counts):
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
def special_regex(tokens: frozenset):
    """One regex matching any of `tokens`, longest first, in a group so that split keeps them."""
    return regex.compile("(" + "|".join(regex.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")")


def split_specials(text: str, tokens: frozenset) -> list[str]:
    """[text, special, text, special, ..., text]: even items ordinary text, odd items specials.
    "a<|endoftext|>b" with {"<|endoftext|>"} -> ["a", "<|endoftext|>", "b"]."""
    if not tokens:
        return [text]
    return special_regex(tokens).split(text)
