"""Byte-level BPE: GPT-2 parity with tiktoken, round trips, training, GPT-2's file format."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autograd.checkpoint import FileFormatError
from tinygrad_llm.text.tokenizer import (
    ENDOFTEXT,
    GPT2_PATTERN,
    BPETokenizer,
    bytes_to_unicode,
    get_stats,
    get_tokenizer,
    merge,
    tokenizer_fingerprint,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GPT2_DIR = DATA / "gpt2"

# A text that needs no shared data: contractions, digits, punctuation, whitespace runs, non-Latin.
SAMPLE = (
    "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so it "
    "was no great surprise to me to hear that, in the height of his glory, he had dropped his "
    "painting. It's 1908; they'll say he'd gone, we've seen   it.\n\n\tThe   end?  Yes!!  12345 "
    "日本語のテキスト, café naïve, Ελληνικά, 👋🏽 emoji 😀😀.\n") * 4


@pytest.fixture(scope="module")
def gpt2_files():
    if not (GPT2_DIR / "encoder.json").exists():
        pytest.skip(f"GPT-2's encoder.json and vocab.bpe are not in {GPT2_DIR} (the shared data folder)")
    return GPT2_DIR / "encoder.json", GPT2_DIR / "vocab.bpe"


@pytest.fixture(scope="module")
def ours(gpt2_files):
    return BPETokenizer.from_gpt2_files(*gpt2_files)


@pytest.fixture(scope="module")
def reference(gpt2_files):
    """tiktoken's gpt2 encoding, built from the local files instead of a download."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(str(gpt2_files[1]), str(gpt2_files[0]))
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)


@pytest.fixture(scope="module")
def trained():
    return BPETokenizer.train(SAMPLE, 400)


def corpus(name):
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data folder)")
    return path.read_text(encoding="utf-8")


# ---- helpers ------------------------------------------------------------------------------------


def test_bytes_to_unicode_is_gpt2s_alphabet():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert (table[ord("a")], table[ord(" ")], table[ord("\n")], table[0]) == ("a", "Ġ", "Ċ", "Ā")


def test_get_stats_and_merge():
    assert get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert merge([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge([5, 5, 5], (5, 5), 7) == [7, 5]


# ---- GPT-2 parity -------------------------------------------------------------------------------


def test_book_sentence(ours):
    assert ours.encode("Hello, world. Is this-- a test?") == [15496, 11, 995, 13, 1148, 428, 438, 257, 1332, 30]


def test_gpt2_files_load_as_they_are(ours):
    assert (ours.n_vocab, ours.eot_token, len(ours.merges)) == (50257, 50256, 50000)
    assert ours.special_tokens == {ENDOFTEXT: 50256}


def test_the_verdict_has_5145_tokens(ours):
    assert len(ours.encode(corpus("the-verdict.txt"))) == 5145


@pytest.mark.parametrize("name", ["the-verdict.txt", "tinyshakespeare.txt", "SMSSpamCollection.tsv",
                                  "instruction-data.json"])
def test_corpus_parity_with_tiktoken(ours, reference, name):
    text = corpus(name)
    ids = ours.encode(text, disallowed_special=())
    assert ids == reference.encode(text, disallowed_special=())
    assert ours.decode(ids) == text


PIECES = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", " ", "  ", "   ", "\t", "\n", "\n\n",
          "\r\n", " \n ", "\t\t ", "\u00a0", "\u3000", "0", "7", "42", "2024", "1234567", "3.14", "x",
          "Hello", " world", "don", "DON", "é", "e\u0301", "n\u0303", "\u0301", "日本", "漢字", "한국어",
          "Ελληνικά", "Привет", "مرحبا", "👋", "👋🏽", "👨\u200d👩\u200d👧", "😀", "🇫🇷", ",", "--", "...",
          "?!", "<|", "|>", ENDOFTEXT, "<|endoftext|", "\x00", "\x1f", "\u2028", "\ufeff"]
texts = st.one_of(st.lists(st.sampled_from(PIECES), max_size=30).map("".join),
                  st.text(alphabet=st.sampled_from(sorted(set("".join(PIECES)))), max_size=40),
                  st.text(max_size=40))


@settings(max_examples=300, deadline=None)
@given(texts)
def test_hypothesis_parity_with_tiktoken(ours, reference, text):
    ids = ours.encode(text, disallowed_special=())
    assert ids == reference.encode(text, disallowed_special=())
    assert ours.decode(ids) == text
    assert ours.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")


def test_lone_surrogates_are_replaced_as_tiktoken_does(ours, reference):
    assert ours.encode("a\ud800b") == reference.encode("a\ud800b") == ours.encode("a\ufffdb")


# ---- special tokens -----------------------------------------------------------------------------


def test_special_token_text_is_rejected_by_default(ours):
    with pytest.raises(ValueError, match="allowed_special") as error:
        ours.encode("the end<|endoftext|>")
    assert "disallowed_special=()" in str(error.value) and "'<|endoftext|>'" in str(error.value)


def test_special_token_when_allowed_or_ordinary(ours):
    assert ours.encode("Hi<|endoftext|>", allowed_special={ENDOFTEXT}) == [17250, 50256]
    assert ours.encode("Hi<|endoftext|>", allowed_special="all") == [17250, 50256]
    ordinary = ours.encode("Hi<|endoftext|>", disallowed_special=())
    assert 50256 not in ordinary and ours.decode(ordinary) == "Hi<|endoftext|>"


# ---- training -----------------------------------------------------------------------------------


def test_incremental_training_equals_recounting(trained):
    """train (incremental counts, a heap) learns exactly the merges of train_simple (recount every time)."""
    simple = BPETokenizer.train_simple(SAMPLE, 400)
    assert list(trained.merges.items()) == list(simple.merges.items())
    assert trained.vocab == simple.vocab and trained.special_tokens == simple.special_tokens


def test_simple_training_on_the_docstring_example():
    tok = BPETokenizer.train_simple("aaab aab", 259)
    # "aa" occurs 3 times; then every pair occurs once and the tie goes to the smallest, (32, 256): " aa"
    assert list(tok.merges) == [(97, 97), (32, 256)] and tok.vocab[257] == b" aa" and tok.eot_token == 258


def test_trained_vocabulary_layout(trained):
    assert trained.n_vocab == 400 and trained.eot_token == 399
    assert all(trained.vocab[b] == bytes([b]) for b in range(256))
    assert sorted(trained.merges.values()) == list(range(256, 399))
    first = next(iter(trained.merges))
    assert trained.vocab[trained.merges[first]] == trained.vocab[first[0]] + trained.vocab[first[1]]


def test_training_skips_special_tokens_and_stops_when_pairs_run_out():
    tok = BPETokenizer.train("ab<|endoftext|>ab", 1000)
    assert tok.vocab[256] == b"ab" and tok.n_vocab == 258 and tok.eot_token == 257


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="need 257"):
        BPETokenizer.train(SAMPLE, 256)


@settings(max_examples=200, deadline=None)
@given(texts)
def test_trained_round_trip(trained, text):
    assert trained.decode(trained.encode(text, disallowed_special=())) == text
    assert trained.decode(trained.encode(text, allowed_special="all")) == text


def test_trained_encoding_compresses(trained):
    ids = trained.encode(SAMPLE)
    assert len(ids) < len(SAMPLE.encode()) / 2 and trained.decode(ids) == SAMPLE


# ---- files, get_tokenizer, fingerprints ----------------------------------------------------------


def test_save_load_round_trip(trained, tmp_path):
    trained.save(tmp_path)
    assert (tmp_path / "vocab.bpe").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    loaded = BPETokenizer.load(tmp_path)
    assert (loaded.vocab, loaded.merges, loaded.special_tokens) == (trained.vocab, trained.merges,
                                                                     trained.special_tokens)
    assert loaded.fingerprint == trained.fingerprint
    assert loaded.encode(SAMPLE) == trained.encode(SAMPLE)


def test_saving_gpt2_rewrites_its_files(ours, gpt2_files, tmp_path):
    ours.save(tmp_path)
    assert (tmp_path / "vocab.bpe").read_bytes() == gpt2_files[1].read_bytes()
    saved = json.loads((tmp_path / "encoder.json").read_text(encoding="utf-8"))
    assert saved == json.loads(gpt2_files[0].read_text(encoding="utf-8"))


def test_get_tokenizer_from_local_files(ours, gpt2_files):
    for tok in (get_tokenizer(GPT2_DIR), get_tokenizer(str(GPT2_DIR)),
                get_tokenizer(encoder_json=gpt2_files[0], vocab_bpe=gpt2_files[1])):
        assert isinstance(tok, BPETokenizer) and tok.fingerprint == ours.fingerprint
        assert tok.encode("Hello, world.") == [15496, 11, 995, 13]


def test_get_tokenizer_offline_error_names_the_files(monkeypatch, tmp_path):
    pytest.importorskip("tiktoken")
    import requests
    import tiktoken.load

    def no_network(url):
        raise requests.ConnectionError(f"Failed to resolve host for {url}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache: tiktoken must download
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    with pytest.raises(OSError, match="encoder.json and vocab.bpe") as error:
        get_tokenizer("gpt2")
    assert "get_tokenizer('path/to/dir')" in str(error.value)


def test_get_tokenizer_unknown_name():
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt-7'"):
        get_tokenizer("gpt-7")


def test_fingerprints(trained):
    assert tokenizer_fingerprint(trained) == f"bpe-{trained.fingerprint[:16]}"
    assert tokenizer_fingerprint(trained) != tokenizer_fingerprint(BPETokenizer.train(SAMPLE, 300))


def test_tiktoken_fingerprint(reference):
    assert tokenizer_fingerprint(reference) == "tiktoken-gpt2-50257"


@pytest.fixture(scope="module")
def trained_reference(trained):
    """tiktoken ranks merges by the merged token's rank; ids in merge order make the two agree."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {token: i for i, token in trained.vocab.items()}
    return tiktoken.Encoding(name="trained", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})


@settings(max_examples=200, deadline=None)
@given(texts)
def test_trained_parity_with_tiktoken_on_the_same_ranks(trained, trained_reference, text):
    assert trained.encode_ordinary(text) == trained_reference.encode_ordinary(text)


# ---- one long pre-token, and files that do not fit together ----------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("aeiouxyz tn1é"), min_size=1, max_size=300))
def test_fast_bpe_equals_the_simple_reference(ours, text):
    data = text.encode("utf-8")
    if data not in ours._token_ids:  # the whole-token shortcut is the fast path's alone
        assert ours._bpe(data) == ours._bpe_simple(data)


def test_one_long_pretoken_is_not_quadratic(ours, reference):
    """160,000 random letters are one pre-token: an O(n^2) rescanning bpe() would not finish in the bound,
    the heap merge (O(n log n)) does."""
    import random
    import time

    rng = random.Random(0)
    text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(160_000))
    start = time.perf_counter()
    ids = ours.encode(text)
    elapsed = time.perf_counter() - start
    assert ids == reference.encode(text)
    assert elapsed < 20, f"{elapsed:.1f} s for one pre-token of 160,000 letters"


def _copy_gpt2_files(gpt2_files, directory, merges=None):
    directory.mkdir()
    encoder_text = gpt2_files[0].read_text(encoding="utf-8")
    lines = gpt2_files[1].read_text(encoding="utf-8").split("\n")
    if merges is not None:
        lines = lines[:1 + merges] + [""]  # cut at a line boundary: a well-formed, shorter file
    (directory / "encoder.json").write_text(encoder_text, encoding="utf-8")
    (directory / "vocab.bpe").write_text("\n".join(lines), encoding="utf-8")
    return directory


def test_truncated_vocab_bpe_is_an_error_not_special_tokens(gpt2_files, tmp_path):
    directory = _copy_gpt2_files(gpt2_files, tmp_path / "cut", merges=49_000)
    with pytest.raises(FileFormatError) as e:
        BPETokenizer.load(directory)
    message = str(e.value)
    assert f"{directory / 'encoder.json'} and {directory / 'vocab.bpe'} disagree: 1000 encoder entries" in message
    assert "49000 merges for 50000 merged tokens" in message and "truncated" in message


def test_merge_missing_from_the_encoder_names_the_line(trained, tmp_path):
    trained.save(tmp_path)
    with open(tmp_path / "vocab.bpe", "a", encoding="utf-8") as f:
        f.write("Ġq Ġz\n")
    with pytest.raises(FileFormatError, match=r"vocab.bpe, line \d+: merge 'Ġq Ġz' needs 'Ġq', 'Ġz', 'ĠqĠz', "
                                              r"which .*encoder.json does not hold"):
        BPETokenizer.load(tmp_path)


@pytest.mark.parametrize("encoder, words", [
    ("[1, 2, 3]", "holds a JSON list, not the object"),
    ('{"a": "7"}', "the id of 'a' is '7', not an integer"),
    ('{"a": -1}', "the id of 'a' is -1, not an integer"),
    ('{"a": 1000000000000}', "the id of 'a' is 1000000000000, not an integer"),
    ('{"a": 1, "b": 1}', "'a' and 'b' have the same id 1"),
    ('{"a": 1', "is not valid JSON"),
])
def test_malformed_encoder_json_is_one_clear_error(trained, tmp_path, encoder, words):
    trained.save(tmp_path)
    (tmp_path / "encoder.json").write_text(encoder, encoding="utf-8")
    with pytest.raises(FileFormatError, match="encoder.json") as e:
        BPETokenizer.load(tmp_path)
    assert words in str(e.value)
