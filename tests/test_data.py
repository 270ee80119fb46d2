"""Sliding-window datasets, seeded loaders, text files and the on-disk token cache."""

from pathlib import Path

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_llm.text.data import (
    DataLoader,
    GPTDataset,
    create_dataloader,
    load_text,
    read_chunks,
    read_text,
    text_files,
    tokenize_corpus,
    train_val_split,
)
from tinygrad_llm.text.tokenizer import ENDOFTEXT, GPT2_PATTERN, BPETokenizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(name):
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data folder)")
    return path


@pytest.fixture(scope="module")
def gpt2():
    shared("gpt2/vocab.bpe")
    return BPETokenizer.load(DATA / "gpt2")


@pytest.fixture(scope="module")
def small_tok():
    return BPETokenizer.train("the cat sat on the mat. the dog sat on the log.\n" * 20, 300)


# ---- GPTDataset ---------------------------------------------------------------------------------


def test_book_windows_on_the_verdict(gpt2):
    ids = np.array(gpt2.encode(read_text(shared("the-verdict.txt"))), dtype=np.uint16)
    x, y = GPTDataset(ids, max_length=4, stride=1)[0]
    assert x.tolist() == [40, 367, 2885, 1464] and y.tolist() == [367, 2885, 1464, 1807]


def test_book_chapter5_loaders(gpt2):
    train_text, val_text = train_val_split(read_text(shared("the-verdict.txt")), 0.9)
    kwargs = {"batch_size": 2, "max_length": 256, "stride": 256}
    train = create_dataloader(train_text, gpt2, **kwargs, drop_last=True, shuffle=True)
    val = create_dataloader(val_text, gpt2, **kwargs, drop_last=False, shuffle=False)
    assert (len(train), len(val)) == (9, 1)
    assert sum(x.size for x, _ in train) == 4608 and sum(x.size for x, _ in val) == 512


def test_windows_are_shifted_views():
    ids = np.arange(20, dtype=np.uint16)
    data = GPTDataset(ids, max_length=4, stride=2)
    assert len(data) == 8  # starts 0, 2, ..., 14: the last target ends at token 18
    x, y = data[7]
    assert x.tolist() == [14, 15, 16, 17] and y.tolist() == [15, 16, 17, 18]
    assert np.shares_memory(x, ids) and np.shares_memory(y, ids)
    assert data[-1][0].tolist() == x.tolist()
    with pytest.raises(IndexError):
        data[8]


def test_corpus_shorter_than_a_window():
    with pytest.raises(ValueError, match="has 4 tokens, but one window of max_length=4 needs 5"):
        GPTDataset(np.arange(4), max_length=4, stride=1)


def test_batch_gathers_windows():
    data = GPTDataset(np.arange(100, dtype=np.uint16), max_length=5, stride=3)
    x, y = data.get_batch([0, 4])
    assert x.dtype == np.int64 and x.shape == (2, 5)
    assert x.tolist() == [[0, 1, 2, 3, 4], [12, 13, 14, 15, 16]] and (y == x + 1).all()


# ---- DataLoader ---------------------------------------------------------------------------------


def loader(**kwargs):
    data = GPTDataset(np.arange(1000, dtype=np.uint16), max_length=8, stride=8)  # 124 windows
    return DataLoader(data, **{"batch_size": 10, **kwargs})


def test_loader_length_and_shapes():
    assert len(loader()) == 12 and len(loader(drop_last=False)) == 13
    batches = list(loader(drop_last=False, shuffle=False))
    assert [x.shape for x, _ in batches][-2:] == [(10, 8), (4, 8)]
    assert batches[0][0][1].tolist() == list(range(8, 16))
    starts = np.concatenate([x[:, 0] for x, _ in batches])
    assert starts.tolist() == list(range(0, 124 * 8, 8))


def test_shuffle_is_seeded_and_covers_every_window():
    a, b, c = loader(seed=1), loader(seed=1), loader(seed=2)
    assert np.array_equal(a.order(0), b.order(0)) and not np.array_equal(a.order(0), c.order(0))
    assert sorted(a.order(3).tolist()) == list(range(124))
    first, second = [np.concatenate([x for x, _ in a]) for _ in range(2)]  # each loop, a new epoch
    assert not np.array_equal(first, second) and a.epoch == 2
    assert np.array_equal(first, np.concatenate([x for x, _ in b.iter_from(0)]))


def test_resume_mid_epoch():
    a = loader(seed=5)
    a.set_epoch(4)
    full = [x for x, _ in a]
    resumed = [x for x, _ in loader(seed=5).iter_from(4, 7)]
    assert len(resumed) == 5 and all(np.array_equal(p, q) for p, q in zip(full[7:], resumed))


def test_loader_with_no_batch():
    data = GPTDataset(np.arange(30), max_length=8, stride=8)  # 3 windows
    with pytest.raises(ValueError, match="3 windows, fewer than batch_size=4"):
        DataLoader(data, batch_size=4)


def test_train_val_split():
    ids = np.arange(100)
    train, val = train_val_split(ids, 0.9)
    assert (len(train), len(val)) == (90, 10) and np.shares_memory(train, ids)
    assert train_val_split("abcdefghij", 0.8) == ("abcdefgh", "ij")
    with pytest.raises(ValueError, match="between 0 and 1"):
        train_val_split(ids, 1.5)


# ---- text files ---------------------------------------------------------------------------------


def test_text_files_from_a_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.txt", "a.txt", "sub/c.txt", "notes.md"]:
        (tmp_path / name).write_text(name, encoding="utf-8")
    assert [p.name for p in text_files(tmp_path)] == ["a.txt", "b.txt", "c.txt"]
    assert load_text([tmp_path / "b.txt", tmp_path / "a.txt"]) == "b.txt\n\na.txt"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        text_files(tmp_path / "missing.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.txt files"):
        text_files(tmp_path / "empty")


def test_invalid_utf8_names_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"hello\nwrld caf\xe9\n")
    with pytest.raises(ValueError, match="latin1.txt is not valid UTF-8: byte offset 14 \\(line 2\\)"):
        read_text(path)
    path.write_bytes(b"ab cd\nEF\n" * 100 + b"\xff")  # the bad byte far beyond the first chunk
    with pytest.raises(ValueError, match="byte offset 900 \\(line 201\\)"):
        list(read_chunks(path, chunk_bytes=16))


def test_chunks_cut_where_gpt2_pretokens_end(tmp_path):
    text = "Hello  \nWorld\n\nok\nA b\n  x\n'tis\nend\n" * 10
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    pieces = list(read_chunks(path, chunk_bytes=8))
    assert len(pieces) > 10 and "".join(pieces) == text
    assert [w for p in pieces for w in regex.findall(GPT2_PATTERN, p)] == regex.findall(GPT2_PATTERN, text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab1 '\t\n\n\u3000\u00a0日é,👋")), max_size=200),
       st.integers(1, 24))
def test_chunked_pretokenization_equals_whole(tmp_path_factory, text, chunk_bytes):
    path = tmp_path_factory.mktemp("chunks") / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    pieces = list(read_chunks(path, chunk_bytes))
    assert "".join(pieces) == text
    assert [w for p in pieces for w in regex.findall(GPT2_PATTERN, p)] == regex.findall(GPT2_PATTERN, text)


# ---- tokenize_corpus ----------------------------------------------------------------------------


def test_tokenize_corpus_caches_and_separates_files(tmp_path, small_tok, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "1.txt").write_text("the cat sat.", encoding="utf-8")
    (corpus / "2.txt").write_text("the dog<|endoftext|>sat.", encoding="utf-8")
    ids = tokenize_corpus(corpus, small_tok, cache_dir=tmp_path / "cache")
    expected = small_tok.encode("the cat sat.") + [small_tok.eot_token] + \
        small_tok.encode("the dog<|endoftext|>sat.", allowed_special="all")
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16 and ids.tolist() == expected
    assert len(list((tmp_path / "cache").iterdir())) == 1

    monkeypatch.setattr(small_tok, "encode", lambda *a, **k: pytest.fail("the cache was not reused"))
    assert tokenize_corpus(corpus, small_tok, cache_dir=tmp_path / "cache").tolist() == expected
    monkeypatch.undo()

    (corpus / "1.txt").write_text("the cat sat!", encoding="utf-8")  # new contents, new cache file
    assert tokenize_corpus(corpus, small_tok, cache_dir=tmp_path / "cache")[3] == small_tok.encode("!")[0]
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_tokenize_corpus_uses_uint32_for_large_vocabularies(tmp_path):
    vocab = {b: bytes([b]) for b in range(256)}
    big = BPETokenizer(vocab, {}, {ENDOFTEXT: 70_000})
    (tmp_path / "a.txt").write_text("hi", encoding="utf-8")
    (tmp_path / "b.txt").write_text("yo", encoding="utf-8")
    ids = tokenize_corpus(tmp_path, big, cache_dir=tmp_path / "cache")
    assert ids.dtype == np.uint32 and ids.tolist() == [104, 105, 70_000, 121, 111]


def test_tokenize_empty_corpus(tmp_path, small_tok):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="has no tokens"):
        tokenize_corpus(tmp_path / "empty.txt", small_tok, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="is empty"):
        load_text(tmp_path / "empty.txt")


def test_tokenize_tinyshakespeare_in_chunks(gpt2, tmp_path):
    path = shared("tinyshakespeare.txt")
    ids = tokenize_corpus(path, gpt2, cache_dir=tmp_path, chunk_bytes=1 << 16)
    assert ids.dtype == np.uint16 and ids.tolist() == gpt2.encode(read_text(path))


def test_loader_collates_any_indexable_dataset():
    items = [(np.arange(k), k % 2) for k in range(1, 6)]  # variable-length sequences with a label
    pad = lambda batch: (np.stack([np.pad(x, (0, 5 - len(x)), constant_values=-1) for x, _ in batch]),  # noqa: E731
                         np.array([y for _, y in batch]))
    loader = DataLoader(items, batch_size=2, shuffle=False, drop_last=False, collate_fn=pad)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    np.testing.assert_array_equal(batches[0][0], [[0, -1, -1, -1, -1], [0, 1, -1, -1, -1]])
    np.testing.assert_array_equal(batches[2][1], [1])  # the last, short batch is kept
    stacked = next(iter(DataLoader([(np.ones(2), 3), (np.zeros(2), 4)], batch_size=2, shuffle=False)))
    np.testing.assert_array_equal(stacked[0], [[1, 1], [0, 0]])
    np.testing.assert_array_equal(stacked[1], [3, 4])


def test_loader_shuffles_by_seed_and_epoch():
    loader = DataLoader(list(range(10)), batch_size=10, shuffle=True, seed=3)
    first, second = next(iter(loader)), next(iter(loader))
    assert sorted(first.tolist()) == list(range(10)) and first.tolist() != second.tolist()
    np.testing.assert_array_equal(next(loader.iter_from(0)), first)  # epoch 0 again: the same order
