"""Book chapter 6, sections 6.2-6.3: classification data, labeled texts to padded batches.

The SMS Spam Collection is one line per message, `label<TAB>text`, 4,827 "ham" and 747 "spam". The book
balances it by sampling the majority class down to the minority's size, splits it 70/10/20 into
training, validation and test sets, tokenizes each message and pads it with the <|endoftext|> id:

    data = read_labeled_tsv("SMSSpamCollection.tsv")            # texts, class indices, skipped lines
    train, val, test = classification_splits(data, tokenizer)   # balanced, split, tokenized
    batch = pad_batch([train[0], train[1]], pad_id)             # (ids (B, T), lengths (B,), labels (B,))

A batch carries each message's length, so the classifier can read the last real token of a row rather
than a pad (see `tinygrad_llm.finetune.classifier`).
"""

from __future__ import annotations

import urllib.error
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autograd.checkpoint import atomic_write
from tinygrad_llm.text.data import read_text
from tinygrad_llm.support.download import DownloadError, default_cache_dir, download_file

SPAM_LABELS = ("ham", "spam")  # class 0 and class 1, as the book maps them
SMS_SPAM_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
SMS_SPAM_MEMBER = "SMSSpamCollection"  # the file inside the archive
MIN_PER_CLASS = 10  # fewer examples of a class than this cannot fill a 70/10/20 split of both classes


@dataclass
class LabeledTexts:
    """Examples read from a labeled file: `texts`, their class indices `labels` (into `label_names`) and
    the 1-based `lines` they came from; `skipped` lists the malformed lines left out, (line, reason)."""

    texts: list[str]
    labels: np.ndarray
    label_names: tuple[str, ...]
    lines: np.ndarray
    skipped: list[tuple[int, str]]

    def __len__(self):
        return len(self.texts)

    def counts(self):
        """{label name: number of examples}."""
        return {name: int((self.labels == k).sum()) for k, name in enumerate(self.label_names)}


def describe_lines(bad, limit=8):
    """'line 3 (no tab), line 9 (empty text) and 4 more' for a list of (line, reason)."""
    shown = ", ".join(f"line {n} ({why})" for n, why in bad[:limit])
    return shown + (f" and {len(bad) - limit} more" if len(bad) > limit else "")


def parse_labeled_lines(text, label_names=SPAM_LABELS, on_bad="skip", source="<text>"):
    """Examples of `text`, one `label<TAB>text` per line.

    A malformed line (no tab, a label not in `label_names`, an empty text, an empty line) is never
    dropped silently: with on_bad="skip" it is left out and listed in `skipped` with its line number
    and reason; with on_bad="error" a ValueError names every one. A text may hold more tabs (only the
    first one separates). Lines end at "\\n" alone ("\\r\\n" too), not at the other characters that
    str.splitlines() breaks on, since a message may contain them.
    """
    if on_bad not in ("skip", "error"):
        raise ValueError(f"on_bad must be 'skip' or 'error', got {on_bad!r}")
    index = {name: k for k, name in enumerate(label_names)}
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    texts, labels, numbers, bad = [], [], [], []
    for n, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        label, tab, message = line.partition("\t")
        if not line.strip():
            bad.append((n, "empty line"))
        elif not tab:
            bad.append((n, "no tab"))
        elif label.strip() not in index:
            bad.append((n, f"unknown label {label.strip()[:20]!r}"))
        elif not message.strip():
            bad.append((n, "empty text"))
        else:
            texts.append(message)
            labels.append(index[label.strip()])
            numbers.append(n)
    expected = f"`label<TAB>text` with a label in {', '.join(label_names)}"
    if not texts:
        raise ValueError(f"{source} holds no valid examples ({expected}): "
                         + (f"all {len(bad)} lines are malformed: {describe_lines(bad)}" if bad else "it is empty"))
    if bad and on_bad == "error":
        raise ValueError(f"{source} has {len(bad)} malformed lines ({expected} expected): {describe_lines(bad)}; "
                         "fix them, or skip them (on_bad='skip', --on-bad skip)")
    return LabeledTexts(texts, np.asarray(labels, dtype=np.int64), tuple(label_names),
                        np.asarray(numbers, dtype=np.int64), bad)


def read_labeled_tsv(path, label_names=SPAM_LABELS, on_bad="skip"):
    """`parse_labeled_lines` of a UTF-8 file (a ValueError names the first byte that is not UTF-8)."""
    return parse_labeled_lines(read_text(path), label_names, on_bad, source=str(path))


# ---- balancing and splitting ----------------------------------------------------------------------


def balance_classes(labels, seed=123):
    """Indices (sorted) of a balanced subset: every class sampled down, without replacement, to the size
    of the smallest one, as the book's create_balanced_dataset (listing 6.2) does for ham.
    [0, 0, 0, 1, 0, 1] -> two of the four 0s and both 1s, e.g. [0, 3, 4, 5]."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    smallest = min(int((labels == c).sum()) for c in classes)
    keep = [rng.choice(np.flatnonzero(labels == c), smallest, replace=False) for c in classes]
    return np.sort(np.concatenate(keep))


def split_indices(n, seed=123, train_frac=0.7, val_frac=0.1):
    """(train, val, test) index arrays of a seeded shuffle of range(n): the first int(train_frac * n),
    the next int(val_frac * n), the rest (the book's random_split, listing 6.3: 1,494 -> 1,045, 149, 300)."""
    if not (0 < train_frac and 0 <= val_frac and train_frac + val_frac < 1):
        raise ValueError(f"fractions must leave a test set: train {train_frac}, val {val_frac}")
    order = np.random.default_rng(seed).permutation(n)
    train_end = int(train_frac * n)
    val_end = train_end + int(val_frac * n)
    return order[:train_end], order[train_end:val_end], order[val_end:]


def check_class_counts(data, min_per_class=MIN_PER_CLASS):
    """A ValueError when a class of `data` has fewer than `min_per_class` examples."""
    counts = data.counts()
    few = {name: n for name, n in counts.items() if n < min_per_class}
    if few:
        have = ", ".join(f"{n} {name}" for name, n in counts.items())
        raise ValueError(f"too few examples per class: {have}; each class needs at least {min_per_class} "
                         "for a balanced 70/10/20 split")


# ---- tokens and batches ---------------------------------------------------------------------------


class ClassificationDataset:
    """Tokenized examples (the book's SpamDataset, listing 6.4, with the padding moved to `pad_batch`):
    item i is (ids, label), ids the first `max_length` tokens of text i (longer texts are cut there, as
    the book does), unpadded; `lengths` holds every item's length."""

    def __init__(self, token_ids, labels, max_length):
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.token_ids = [np.asarray(ids[:max_length], dtype=np.int64) for ids in token_ids]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.max_length = max_length
        self.lengths = np.array([len(ids) for ids in self.token_ids], dtype=np.int64)
        if len(self.token_ids) != len(self.labels):
            raise ValueError(f"{len(self.token_ids)} token sequences but {len(self.labels)} labels")
        if len(self.lengths) and self.lengths.min() == 0:
            raise ValueError(f"example {int(np.argmin(self.lengths))} has no tokens")

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.token_ids[i], self.labels[i]


def encode_texts(tokenizer, texts):
    """Token ids of each text, special-token text encoded as ordinary text (a message may contain
    "<|endoftext|>"; only padding uses that id)."""
    return [tokenizer.encode_ordinary(t) for t in texts]


def pad_batch(items, pad_id, pad_to=None):
    """(ids (B, T), lengths (B,), labels (B,)) of (ids, label) items, each row right-padded with
    `pad_id` to T = `pad_to` or, when None, the longest item.
    [([5, 6, 7], 1), ([8], 0)], pad_id=0 -> ids [[5, 6, 7], [8, 0, 0]], lengths [3, 1], labels [1, 0]."""
    seqs = [np.asarray(ids, dtype=np.int64) for ids, _ in items]
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    T = int(lengths.max()) if pad_to is None else pad_to
    if lengths.max() > T:
        raise ValueError(f"an item of {int(lengths.max())} tokens does not fit pad_to={T}")
    ids = np.full((len(seqs), T), pad_id, dtype=np.int64)
    ids[np.arange(T) < lengths[:, None]] = np.concatenate(seqs)  # row-major: each row's tokens, then its pads
    labels = np.array([label for _, label in items], dtype=np.int64)
    return ids, lengths, labels


def balanced_split(data, seed=123):
    """(train, val, test) indices into `data`'s examples: classes balanced (`balance_classes`), then split
    70/10/20 (`split_indices`), both with `seed`. A class with too few examples is a ValueError."""
    check_class_counts(data)
    keep = balance_classes(data.labels, seed)
    return tuple(keep[part] for part in split_indices(len(keep), seed))


def classification_splits(data, tokenizer, seed=123, max_length=None, context_length=None, on_long=None):
    """(train, val, test) ClassificationDatasets of `data`: classes balanced, split 70/10/20, tokenized.

    max_length: tokens kept per example; None takes the longest training example, as the book does,
    capped at `context_length`. Validation and test examples are cut at the same length. `on_long(n,
    limit)` is called when the longest training example (n tokens) is cut at a context length.
    """
    parts = balanced_split(data, seed)
    tokens = [encode_texts(tokenizer, [data.texts[i] for i in part]) for part in parts]
    if max_length is None:
        max_length = max(len(ids) for ids in tokens[0])
        if context_length is not None and max_length > context_length:
            if on_long is not None:
                on_long(max_length, context_length)
            max_length = context_length
    elif context_length is not None and max_length > context_length:
        raise ValueError(f"max_length {max_length} is longer than the model's context length {context_length}")
    return tuple(ClassificationDataset(ids, data.labels[part], max_length) for ids, part in zip(tokens, parts))


# ---- the UCI archive ------------------------------------------------------------------------------


def download_sms_spam(cache_dir=None, url=None, progress=True, timeout=30.0):
    """The path of the SMS Spam Collection file, downloaded once from the UCI archive into
    `cache_dir` (default ~/.cache/tinygrad_llm/data) and unzipped (`url` default: SMS_SPAM_URL). The
    archive is checked: a zip that holds SMSSpamCollection, whose lines are `label<TAB>text` with
    ham/spam labels. Offline, an OSError says where to get the file and to pass it with --data."""
    url = url or SMS_SPAM_URL
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "data"
    dest = directory / f"{SMS_SPAM_MEMBER}.tsv"
    if dest.is_file():
        return dest
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / "sms+spam+collection.zip"
    try:
        if not archive.is_file():
            download_file(url, archive, progress=progress, timeout=timeout)
        _extract_checked(archive, dest)
    except (urllib.error.URLError, OSError, DownloadError, ValueError) as e:
        reason = " ".join(str(getattr(e, "reason", e)).split())
        raise OSError(f"could not get the SMS Spam Collection ({reason}); download {url}, unzip it and pass "
                      f"its {SMS_SPAM_MEMBER} file with --data PATH") from None
    return dest


def _extract_checked(archive, dest):
    """Unzip the archive's SMSSpamCollection to `dest` (atomically) after checking its lines; a bad
    archive is removed, so the next try downloads it again."""
    try:
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if Path(n).name == SMS_SPAM_MEMBER]
            if not names:
                raise ValueError(f"the archive holds no {SMS_SPAM_MEMBER} (it holds {', '.join(z.namelist())})")
            data = z.read(names[0])
        text = data.decode("utf-8")
        parsed = parse_labeled_lines(text, SPAM_LABELS, "skip", source=SMS_SPAM_MEMBER)
        if len(parsed.skipped) > len(parsed) // 100:
            raise ValueError(f"{len(parsed.skipped)} of its lines are not `label<TAB>text`")
    except (zipfile.BadZipFile, UnicodeDecodeError, ValueError) as e:
        archive.unlink(missing_ok=True)
        raise ValueError(f"the downloaded archive is not the SMS Spam Collection: {e}") from None
    with atomic_write(dest) as f:
        f.write(data)


__all__ = [
    "SPAM_LABELS", "SMS_SPAM_URL", "MIN_PER_CLASS", "LabeledTexts", "parse_labeled_lines", "read_labeled_tsv",
    "describe_lines", "balance_classes", "split_indices", "check_class_counts", "balanced_split",
    "ClassificationDataset", "encode_texts", "pad_batch", "classification_splits", "download_sms_spam",
]
