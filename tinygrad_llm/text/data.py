"""Book chapter 2, section 2.6: data sampling with a sliding window, token ids to training batches.

A language model learns to predict each next token, so a training example is a window of
`max_length` tokens (the input) and the same window moved one token on (the target). `GPTDataset`
slides that window over a token array in steps of `stride`; `DataLoader` gathers shuffled windows
into (batch, max_length) arrays, in an order fixed by its seed and the epoch. The same `DataLoader`
batches any indexable dataset through a `collate_fn` (the fine-tuning steps pad their examples there).

Corpora come from text files. `tokenize_corpus` tokenizes them once into a memory-mapped file of
uint16 (uint32 for vocabularies over 65,536 tokens) kept in a cache folder, so the next run, and a
corpus larger than memory, reads tokens from disk instead of keeping text and ids in memory.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from autograd.checkpoint import atomic_write
from tinygrad_llm.text.tokenizer import tokenizer_fingerprint

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "tinygrad_llm" / "tokens"
_CACHE_FORMAT = 1  # bump when the cached file's layout or the tokenization rules change


class GPTDataset:
    """Next-token windows over a 1-D token array: item i is (ids[s:s+T], ids[s+1:s+T+1]) with
    s = i * stride and T = max_length, both views of the array (no copy per window).

    Windows start at 0, stride, 2*stride, ... while a full target fits, as the book's GPTDatasetV1
    (listing 2.5) counts them: (len(ids) - max_length - 1) // stride + 1 windows.
    """

    def __init__(self, token_ids, max_length: int, stride: int):
        ids = token_ids if isinstance(token_ids, np.ndarray) else np.asarray(token_ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token_ids must be a 1-D integer array; got shape {ids.shape}, dtype {ids.dtype}")
        if max_length < 1 or stride < 1:
            raise ValueError(f"max_length and stride must be positive; got {max_length} and {stride}")
        if len(ids) < max_length + 1:
            raise ValueError(f"the corpus has {len(ids)} tokens, but one window of max_length={max_length} "
                             f"needs {max_length + 1} (its inputs plus the target one token on). "
                             f"Use a longer text or a smaller max_length.")
        self.token_ids, self.max_length, self.stride = ids, max_length, stride
        self._offsets = np.arange(max_length + 1)

    def __len__(self) -> int:
        return (len(self.token_ids) - self.max_length - 1) // self.stride + 1

    def __getitem__(self, i: int):
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"window {i} is out of range for {n} windows")
        start = (i % n) * self.stride
        window = self.token_ids[start:start + self.max_length + 1]
        return window[:-1], window[1:]

    def get_batch(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Windows `indices` as int64 (inputs, targets), each (B, T), gathered with one fancy index."""
        starts = np.asarray(indices, dtype=np.int64) * self.stride
        rows = self.token_ids[starts[:, None] + self._offsets].astype(np.int64)  # (B, T+1)
        return rows[:, :-1], rows[:, 1:]


def default_collate(items):
    """Stack a list of dataset items into one batch: arrays (or numbers) into one array with a leading
    batch axis; tuples field by field. [(x0, y0), (x1, y1)] -> (stack([x0, x1]), stack([y0, y1]))."""
    first = items[0]
    if isinstance(first, (tuple, list)):
        return tuple(default_collate([item[k] for item in items]) for k in range(len(first)))
    return np.stack([np.asarray(item) for item in items])


class DataLoader:
    """Batches of a dataset, in an order fixed by seed and epoch, as torch.utils.data.DataLoader.

    `dataset` is anything with `len()` and integer indexing. A batch is `collate_fn([dataset[i] for i
    in indices])`; without a collate_fn the items are stacked (`default_collate`), or, when the dataset
    has a `get_batch(indices)` method (`GPTDataset`), that gathers the whole batch at once: the fast
    path for token windows, one fancy index instead of a Python loop over windows.

    The order of an epoch is a permutation drawn from seed and epoch number alone, so a run that
    stops at batch k of epoch e resumes with `iter_from(e, k)`. Each `for` loop over the loader is
    the next epoch (starting from 0, or from `set_epoch`).
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = True, drop_last: bool = True,
                 seed: int = 0, collate_fn=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {batch_size}")
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.collate_fn = collate_fn
        self.epoch = 0
        if len(self) == 0:
            hint = "max_length, a longer text, " if isinstance(dataset, GPTDataset) else "more data, "
            noun = "windows" if isinstance(dataset, GPTDataset) else "items"
            raise ValueError(f"the dataset has {len(dataset)} {noun}, fewer than batch_size={batch_size}, "
                             f"so drop_last=True leaves no batch. Use a smaller batch_size or {hint}or "
                             f"drop_last=False.")

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The item indices of `epoch` in the order they are served."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batch(self, indices):
        """The batch of the items at `indices`."""
        if self.collate_fn is None and hasattr(self.dataset, "get_batch"):
            return self.dataset.get_batch(indices)
        items = [self.dataset[int(i)] for i in indices]
        return (self.collate_fn or default_collate)(items)

    def iter_from(self, epoch: int, batch_index: int = 0):
        """Batches of `epoch` from `batch_index` on."""
        order = self.order(epoch)
        for k in range(batch_index, len(self)):
            yield self.batch(order[k * self.batch_size:(k + 1) * self.batch_size])

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self.iter_from(epoch)


def create_dataloader(text, tokenizer, batch_size: int = 4, max_length: int = 256, stride: int = 128,
                      shuffle: bool = True, drop_last: bool = True, seed: int = 0) -> DataLoader:
    """The book's create_dataloader_v1 (listing 2.6): tokenize `text` (<|endoftext|> allowed) and batch it.
    `text` may also be token ids already, in which case `tokenizer` is not used."""
    if isinstance(text, str):
        text = np.asarray(tokenizer.encode(text, allowed_special={"<|endoftext|>"}), dtype=np.int64)
    return DataLoader(GPTDataset(text, max_length, stride), batch_size, shuffle, drop_last, seed)


def train_val_split(data, train_ratio: float = 0.9):
    """(first train_ratio of `data`, the rest). Token arrays split into views; a str splits by
    characters, as the book splits the-verdict before tokenizing."""
    if not 0.0 < train_ratio < 1.0:
        raise ValueError(f"train_ratio must be between 0 and 1; got {train_ratio}")
    split = int(train_ratio * len(data))
    return data[:split], data[split:]


# ---- text files ---------------------------------------------------------------------------------


def text_files(source) -> list[Path]:
    """The files of `source`: a file, a list of files, or a directory (its *.txt files, in
    subfolders too, sorted by path)."""
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files = []
    for s in map(Path, sources):
        if s.is_dir():
            found = sorted(p for p in s.rglob("*.txt") if p.is_file())
            if not found:
                raise ValueError(f"no *.txt files in directory {s}")
            files.extend(found)
        elif s.is_file():
            files.append(s)
        else:
            raise FileNotFoundError(f"no such file or directory: {s}")
    if not files:
        raise ValueError("no text files given")
    return files


def read_text(path) -> str:
    """A file's text, which must be UTF-8."""
    data = Path(path).read_bytes()
    return _decode(data, path, 0, 1)


def load_text(source, separator: str = "\n\n") -> str:
    """The text of a file, a list of files or a directory (see `text_files`), files joined by
    `separator`. For corpora that do not fit in memory use `tokenize_corpus`."""
    text = separator.join(read_text(p) for p in text_files(source))
    if not text:
        raise ValueError(f"the corpus {source} is empty")
    return text


def _decode(data: bytes, path, offset: int, line: int) -> str:
    """UTF-8 text of `data`, which starts at byte `offset` (line `line`) of `path`."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start:e.start + 4]
        line += data.count(b"\n", 0, e.start)
        raise ValueError(f"{path} is not valid UTF-8: byte offset {offset + e.start} (line {line}) "
                         f"holds {bad!r} ({e.reason}). Convert the file to UTF-8, e.g. "
                         f"`iconv -f latin1 -t utf-8`.") from None


def read_chunks(path, chunk_bytes: int = 1 << 20):
    """The text of `path` in pieces of about `chunk_bytes`, cut only where GPT-2's pre-tokenizer
    always cuts: after a newline that sits between two printable ASCII characters ('a\\nB').

    There the newline is a pre-token by itself (neither a word nor a longer whitespace run can
    cross it), so encoding the pieces one by one gives the same ids as encoding the whole file. A
    file without such a place (e.g. only CJK lines) comes as one piece.
    """
    buf, offset, line = b"", 0, 1
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            buf += block
            cut = len(buf) if not block else _safe_cut(buf, len(buf) - len(block))
            if cut:
                piece, buf = buf[:cut], buf[cut:]
                yield _decode(piece, path, offset, line)
                offset, line = offset + cut, line + piece.count(b"\n")
            if not block:
                return


def _safe_cut(buf: bytes, start: int) -> int | None:
    """Index just after the last newline in buf[start-1:] with printable ASCII on both sides."""
    i = len(buf) - 1
    while True:
        i = buf.rfind(b"\n", max(start - 1, 1), i)
        if i < 1:
            return None
        if 0x21 <= buf[i - 1] <= 0x7E and i + 1 < len(buf) and 0x21 <= buf[i + 1] <= 0x7E:
            return i + 1


def file_fingerprint(path) -> dict:
    """{"file", "bytes", "sha256"} of a text file, read once in blocks: what a checkpoint records of
    its training data, so that a resumed run can tell that a file was edited since. The same pass
    checks that the file is UTF-8 (an incremental decoder, blocks cut anywhere), so a bad byte near the
    end of a large corpus is reported now, not after the tokenizer has been trained."""
    h, size = hashlib.sha256(), 0
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
            size += len(block)
            try:
                decoder.decode(block)
            except UnicodeDecodeError:
                for _ in read_chunks(path):  # the error again, with its byte offset and line
                    pass
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:  # the file ends inside a character
        for _ in read_chunks(path):
            pass
    return {"file": str(path), "bytes": size, "sha256": h.hexdigest()}


def encode_pieces(pieces, tokenizer, *, allowed_special="all") -> np.ndarray:
    """Token ids of the text pieces (an iterable of str, e.g. `read_chunks` of each file), encoded one
    by one into a compact array: uint16 when the vocabulary fits, else uint32. Only one piece's text and
    its Python list of ids live at a time, so a corpus costs 2 (or 4) bytes a token instead of the text
    plus a list of int objects (tens of bytes a token). Pieces must be cut where the tokenizer would cut
    anyway (as `read_chunks` cuts) for the ids to equal those of the whole text."""
    dtype = np.uint16 if tokenizer.n_vocab <= 1 << 16 else np.uint32
    parts = [np.array(tokenizer.encode(piece, allowed_special=allowed_special), dtype=dtype) for piece in pieces]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


# ---- tokenized corpora, cached on disk -----------------------------------------------------------


def tokenize_corpus(source, tokenizer, cache_dir=None, *, allowed_special="all",
                    chunk_bytes: int = 1 << 20) -> np.memmap:
    """Token ids of the files of `source` (see `text_files`), as a read-only memory-mapped array.

    Files are tokenized in order, chunk by chunk (see `read_chunks`), appending to a file in
    `cache_dir` (default ~/.cache/tinygrad_llm/tokens); between two files comes the tokenizer's
    <|endoftext|> id when it has one. Special-token text inside a file (e.g. TinyStories'
    <|endoftext|> separators) is encoded as the special token: pass allowed_special=set() to
    encode it as ordinary text. The cache file's name hashes the files' contents and the
    tokenizer's fingerprint, so the next run with the same corpus and tokenizer reuses it.
    """
    files = text_files(source)
    dtype = np.uint16 if tokenizer.n_vocab <= 1 << 16 else np.uint32
    key = hashlib.sha256(json.dumps({
        "format": _CACHE_FORMAT, "files": [file_fingerprint(p)["sha256"] for p in files],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "allowed_special": allowed_special if allowed_special == "all" else sorted(allowed_special),
    }).encode()).hexdigest()[:20]
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    path = cache_dir / f"{files[0].stem}-{key}.{np.dtype(dtype).name}.bin"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            eot = tokenizer.eot_token  # None, or for tiktoken a KeyError, when there is none
        except KeyError:
            eot = None
        with atomic_write(path) as out:
            for k, file in enumerate(files):
                if k and eot is not None:
                    out.write(np.array([eot], dtype=dtype).tobytes())
                for piece in read_chunks(file, chunk_bytes):
                    out.write(np.array(tokenizer.encode(piece, allowed_special=allowed_special),
                                       dtype=dtype).tobytes())
    if path.stat().st_size == 0:
        raise ValueError(f"the corpus {source} has no tokens: its files are empty")
    return np.memmap(path, dtype=dtype, mode="r")
