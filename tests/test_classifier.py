"""Classification fine-tuning (book chapter 6): reading labeled lines, balancing, splitting, padding, the
position the head reads, the head swap, which parameters train, saving and loading, and a run that learns."""

import io
import zipfile
from dataclasses import replace
from functools import partial

import numpy as np
import pytest

from autograd import no_grad
from autograd.optim import AdamW
from tinygrad_llm.finetune.classifier import (
    GPTClassifier,
    accuracy,
    accuracy_hook,
    batch_examples,
    classification_loader,
    classification_loss,
    classified_positions,
    set_trainable,
)
from tinygrad_llm.finetune.classify_data import (
    ClassificationDataset,
    balance_classes,
    balanced_split,
    classification_splits,
    download_sms_spam,
    pad_batch,
    parse_labeled_lines,
    read_labeled_tsv,
    split_indices,
)
from tinygrad_llm.models.gpt import GPT, GPTConfig
from tinygrad_llm.text.tokenizer import BPETokenizer
from tinygrad_llm.training.trainer import TrainConfig, Trainer, param_groups
from tests.conftest import tiny_config
from tests.helpers import FileServer

TINY = tiny_config(vocab_size=300, context_length=16, emb_dim=32, n_heads=2)
HAM = ["see you at home tonight", "ok lar, on my way", "call me when you are free", "dinner at six?"]
SPAM = ["WIN a free prize now, txt WIN to 80082", "urgent! claim your cash award, call 09061701461",
        "free entry: text CLAIM to 87121", "you have won 1000 pounds, call now"]


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(" ".join(HAM + SPAM) * 3, 300)


def tsv(pairs):
    return "".join(f"{label}\t{text}\n" for label, text in pairs)


# ---- reading labeled lines ------------------------------------------------------------------------


def test_malformed_lines_are_skipped_and_listed_with_their_line_numbers():
    text = "ham\tfine\nno tab here\nspam\tWIN\nhamm\ttypo\n\nspam\t   \r\nham\tone\ttwo tabs\r\n"
    data = parse_labeled_lines(text)
    assert data.texts == ["fine", "WIN", "one\ttwo tabs"]
    assert data.labels.tolist() == [0, 1, 0] and data.lines.tolist() == [1, 3, 7]
    assert data.skipped == [(2, "no tab"), (4, "unknown label 'hamm'"), (5, "empty line"), (6, "empty text")]


def test_malformed_lines_are_an_error_when_asked():
    with pytest.raises(ValueError, match=r"2 malformed lines .*line 2 \(no tab\), line 3 \(unknown label 'x'\)"):
        parse_labeled_lines("ham\tok\nbroken\nx\ty\n", on_bad="error")


def test_a_file_of_only_malformed_lines_is_an_error(tmp_path):
    (tmp_path / "bad.tsv").write_text("a\nb\tc\n")
    with pytest.raises(ValueError, match=r"no valid examples.*all 2 lines are malformed: line 1 \(no tab\), "
                                         r"line 2 \(unknown label 'b'\)"):
        read_labeled_tsv(tmp_path / "bad.tsv")


def test_a_message_keeps_characters_that_splitlines_would_break_on():
    assert parse_labeled_lines("ham\tup\x0bdown\u2028end\n").texts == ["up\x0bdown\u2028end"]


def test_non_utf8_file_names_the_line(tmp_path):
    (tmp_path / "latin1.tsv").write_bytes("ham\tok\nham\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8.*line 2"):
        read_labeled_tsv(tmp_path / "latin1.tsv")


# ---- balancing and splitting ----------------------------------------------------------------------


def test_balancing_samples_the_majority_down_with_a_seed():
    labels = np.array([0, 0, 0, 1, 0, 1, 0])
    keep = balance_classes(labels, seed=1)
    assert np.bincount(labels[keep]).tolist() == [2, 2]
    assert {3, 5} <= set(keep.tolist()) and keep.tolist() == sorted(keep.tolist())
    assert keep.tolist() == balance_classes(labels, seed=1).tolist()
    assert len({tuple(balance_classes(labels, seed=s).tolist()) for s in range(20)}) > 1


def test_split_sizes_are_the_books_and_disjoint():
    train, val, test = split_indices(1494, seed=123)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(1494))
    again = split_indices(1494, seed=123)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    assert not np.array_equal(split_indices(1494, seed=124)[0], train)


def test_the_sms_spam_collection_balanced_and_split(shared_data):
    data = read_labeled_tsv(shared_data / "SMSSpamCollection.tsv")
    assert data.counts() == {"ham": 4827, "spam": 747} and data.skipped == []
    keep = balance_classes(data.labels, seed=123)
    assert np.bincount(data.labels[keep]).tolist() == [747, 747]
    parts = balanced_split(data, seed=123)
    assert sorted(np.concatenate(parts).tolist()) == keep.tolist()
    tok = BPETokenizer.load(shared_data / "gpt2")
    train, val, test = classification_splits(data, tok, seed=123)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)
    assert sum(np.bincount(d.labels).tolist()[1] for d in (train, val, test)) == 747
    assert [d.labels.tolist() for d in (train, val, test)] == [data.labels[p].tolist() for p in parts]
    assert train.max_length == train.lengths.max() == val.max_length == test.max_length


def test_too_few_examples_of_a_class(tok):
    data = parse_labeled_lines(tsv([("ham", h) for h in HAM * 5] + [("spam", SPAM[0])] * 3))
    with pytest.raises(ValueError, match="too few examples per class: 20 ham, 3 spam"):
        classification_splits(data, tok)


# ---- padding and the position read ----------------------------------------------------------------


def test_padding_with_end_of_text_and_the_lengths():
    ids, lengths, labels = pad_batch([(np.array([5, 6, 7]), 1), (np.array([8]), 0), (np.array([9, 4]), 1)], 50256)
    assert ids.tolist() == [[5, 6, 7], [8, 50256, 50256], [9, 4, 50256]]
    assert lengths.tolist() == [3, 1, 2] and labels.tolist() == [1, 0, 1]
    ids, _, _ = pad_batch([([5, 6], 0)], 0, pad_to=4)
    assert ids.tolist() == [[5, 6, 0, 0]]


def test_classified_positions():
    assert classified_positions(np.array([3, 1, 2]), 3, "last-token").tolist() == [2, 0, 1]
    assert classified_positions(np.array([3, 1, 2]), 3, "last-position").tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="1..3"):
        classified_positions(np.array([4, 1]), 3, "last-token")


def test_the_head_reads_the_last_real_token_or_the_last_position():
    model = GPTClassifier(TINY, 2, seed=0).eval()
    ids, lengths, _ = pad_batch([([5, 6, 7], 1), ([8], 0), ([9, 4], 1)], pad_id=299)
    with no_grad():
        h = model.transformer.hidden_states(ids).numpy()
        head = lambda rows: rows @ model.score.weight.numpy().T + model.score.bias.numpy()  # noqa: E731
        got = model(ids, lengths).numpy()
        np.testing.assert_allclose(got, head(h[[0, 1, 2], [2, 0, 1]]), rtol=1e-5, atol=1e-6)
        # causal attention: padding a batch further changes nothing at a row's last real token
        longer, _, _ = pad_batch([([5, 6, 7], 1), ([8], 0), ([9, 4], 1)], pad_id=299, pad_to=8)
        np.testing.assert_allclose(model(longer, lengths).numpy(), got, rtol=1e-5, atol=1e-6)
        model.config = replace(model.config, pool="last-position")
        np.testing.assert_allclose(model(ids, lengths).numpy(), head(h[:, 2]), rtol=1e-5, atol=1e-6)
        assert not np.allclose(model(longer, lengths).numpy(), head(h[:, 2]), atol=1e-4)


def test_last_position_loaders_pad_to_max_length(tok):
    ds = ClassificationDataset([[1, 2, 3], [4], [5, 6]], [0, 1, 0], max_length=5)
    token_batch = next(iter(classification_loader(ds, 3, "last-token", pad_id=0, shuffle=False)))
    position_batch = next(iter(classification_loader(ds, 3, "last-position", pad_id=0, shuffle=False)))
    assert token_batch[0].shape == (3, 3) and position_batch[0].shape == (3, 5)


# ---- the head swap and what trains ----------------------------------------------------------------


def test_the_class_head_replaces_the_vocabulary_head():
    untied = GPT(GPTConfig.preset("cpu-tiny", vocab_size=300, tie_weights=False), seed=0)
    gpt_names = [n for n, _ in untied.named_parameters()]
    model = GPTClassifier(untied, 3, labels=("a", "b", "c"))
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" in gpt_names
    assert names == [f"transformer.{n}" for n in gpt_names if n != "lm_head.weight"] + ["score.weight", "score.bias"]
    assert model.score.weight.shape == (3, 64) and model.config.num_classes == 3
    assert model(np.array([[1, 2, 3]])).shape == (1, 3)


def trained_parameters(model):
    """(names with a gradient after one backward, names whose values changed after one AdamW step)."""
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    batch = pad_batch([([5, 6, 7], 1), ([8], 0)], pad_id=299)
    optimizer = AdamW(param_groups(model, 0.1), lr=1e-2)
    classification_loss(model, batch).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not np.array_equal(p.numpy(), before[n])}
    return with_grad, changed


@pytest.mark.parametrize("which", ["all", "last-block", "head", "lora"])
def test_exactly_the_chosen_part_trains(which):
    cfg = tiny_config(vocab_size=300, context_length=16, emb_dim=32, n_heads=2, n_layers=3)
    model = GPTClassifier(cfg, 2, seed=0)
    summary = set_trainable(model, which)
    names = [n for n, _ in model.named_parameters()]
    expected = {
        "all": set(names),
        "last-block": {n for n in names if n.startswith(("transformer.h.2.", "transformer.ln_f.", "score."))},
        "head": {"score.weight", "score.bias"},
        # the adapters of every Linear, the head's included, and the head itself (B starts at zero, so A's
        # first gradient is zero: it changes through weight decay alone)
        "lora": {n for n in names if ".lora_" in n} | {"score.weight", "score.bias"},
    }[which]
    with_grad, changed = trained_parameters(model)
    assert with_grad == changed == expected
    if which == "lora":
        assert {n.rpartition(".lora_")[0] for n in names if ".lora_" in n} == {
            n for n, m in model.named_modules() if type(m).__name__ == "LoRALinear"} and "score.lora_A" in names
    assert f"{sum(p.size for n, p in model.named_parameters() if n in expected):,} of" in summary


def test_unknown_trainable_choice():
    with pytest.raises(ValueError, match="trainable must be one of"):
        set_trainable(GPTClassifier(TINY, 2), "everything")


# ---- saving and loading ---------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_saved_classifier_round_trip(tmp_path, tok, tie):
    cfg = tiny_config(vocab_size=tok.n_vocab, context_length=16, tie_weights=tie)
    model = GPTClassifier(GPT(cfg, seed=1), 2, labels=("ham", "spam"), pool="last-position", pad_id=tok.eot_token,
                          max_length=16, tokenizer=tok, seed=2).eval()
    ids, lengths, _ = pad_batch([(tok.encode(t), 0) for t in HAM[:2]], tok.eot_token, pad_to=16)
    model.save_pretrained(tmp_path / "clf")
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == [
        "config.json", "encoder.json", "model.safetensors", "vocab.bpe"]  # no temporary left behind
    loaded = GPTClassifier.from_pretrained(tmp_path / "clf")
    assert loaded.config == model.config and not loaded.training
    with no_grad():
        np.testing.assert_array_equal(loaded(ids, lengths).numpy(), model(ids, lengths).numpy())
    assert loaded.tokenizer.encode(SPAM[0]) == tok.encode(SPAM[0])
    assert [label for label, _ in loaded.classify(HAM[:2])] == [label for label, _ in model.classify(HAM[:2])]


def test_a_lora_classifier_is_saved_merged(tmp_path, tok):
    model = GPTClassifier(tiny_config(vocab_size=tok.n_vocab, context_length=16), 2,
                          pad_id=tok.eot_token, tokenizer=tok, seed=0).eval()
    set_trainable(model, "lora", lora_rank=4, lora_alpha=8)
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):
            p.data[...] = np.random.default_rng(len(name)).normal(0, 0.1, p.shape)  # a trained-looking update
    ids, lengths, _ = pad_batch([(tok.encode(t), 0) for t in HAM[:2]], tok.eot_token)
    model.save_pretrained(tmp_path / "clf")
    loaded = GPTClassifier.from_pretrained(tmp_path / "clf")
    assert not any(".lora_" in n for n, _ in loaded.named_parameters())
    with no_grad():
        np.testing.assert_allclose(loaded(ids, lengths).numpy(), model(ids, lengths).numpy(), rtol=1e-4, atol=1e-5)


def test_loading_a_directory_without_a_classifier(tmp_path):
    with pytest.raises(FileNotFoundError, match="no classifier"):
        GPTClassifier.from_pretrained(tmp_path)
    GPT(TINY).save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match="not a classifier"):
        GPTClassifier.from_pretrained(tmp_path / "lm")


# ---- a run that learns ----------------------------------------------------------------------------


def test_a_tiny_model_learns_a_separable_task(tok, tmp_path):
    rng = np.random.default_rng(0)
    words = {0: "home dinner later tonight lar ok see you".split(), 1: "free prize cash txt claim win call now".split()}
    texts, labels = [], []
    for k in range(120):
        label = k % 2
        texts.append(" ".join(rng.choice(words[label], size=rng.integers(2, 6))))
        labels.append(label)
    data = parse_labeled_lines(tsv((("ham", "spam")[y], t) for t, y in zip(texts, labels)))
    train_set, val_set, test_set = classification_splits(data, tok, seed=0)
    model = GPTClassifier(tiny_config(vocab_size=tok.n_vocab, context_length=32), 2,
                          labels=data.label_names, pad_id=tok.eot_token, max_length=train_set.max_length,
                          tokenizer=tok, seed=0)
    set_trainable(model, "all")
    loader = partial(classification_loader, batch_size=8, pool="last-token", pad_id=tok.eot_token)
    train, val, test = loader(train_set), loader(val_set, shuffle=False, drop_last=False), \
        loader(test_set, shuffle=False, drop_last=False)
    assert accuracy(model, test) < 0.8
    trainer = Trainer(model, train, val, TrainConfig(lr=3e-3, epochs=4, eval_every=10, progress=False,
                                                     out_dir=str(tmp_path)),
                      loss_fn=classification_loss, tokens_fn=batch_examples, on_eval=accuracy_hook(train, val),
                      log=None)
    records = trainer.fit()
    assert accuracy(model, test) == 1.0
    assert {"train_acc", "val_acc"} <= set(records[-1]) and records[-1]["val_acc"] == 1.0
    assert trainer.tokens_seen == sum(int(b[1].sum()) for e in range(4) for b in train.iter_from(e))
    reloaded = GPTClassifier.from_pretrained(tmp_path / "model")  # written by Trainer.fit
    assert reloaded.classify(["free cash prize txt now", "see you at home tonight"])[0][0] == "spam"


# ---- the UCI archive ------------------------------------------------------------------------------


def zipped(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def server():
    """A local HTTP server serving `files` ({path: bytes}, filled by the test); yields (base url, files)."""
    with FileServer({}) as running:
        yield running.url, running.files


def test_download_unzips_and_checks_the_archive_once(server, tmp_path):
    base, files = server
    files["/sms.zip"] = zipped({"SMSSpamCollection": tsv([("ham", h) for h in HAM] + [("spam", s) for s in SPAM]),
                                "readme": "about"})
    path = download_sms_spam(tmp_path, url=f"{base}/sms.zip", progress=False)
    assert read_labeled_tsv(path).counts() == {"ham": 4, "spam": 4}
    del files["/sms.zip"]
    assert download_sms_spam(tmp_path, url=f"{base}/sms.zip", progress=False) == path  # from the cache


@pytest.mark.parametrize("body", [b"<html>not a zip</html>", zipped({"other.txt": "x"}),
                                  zipped({"SMSSpamCollection": "a\nb\n"})])
def test_a_bad_download_is_removed_and_reported(server, tmp_path, body):
    base, files = server
    files["/sms.zip"] = body
    with pytest.raises(OSError, match="not the SMS Spam Collection.*--data PATH"):
        download_sms_spam(tmp_path, url=f"{base}/sms.zip", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_offline_download_says_where_to_get_the_file(tmp_path):
    with pytest.raises(OSError, match=r"sms\+spam\+collection.zip, unzip it and pass its SMSSpamCollection file "
                                      r"with --data PATH"):
        download_sms_spam(tmp_path, url="http://127.0.0.1:9/sms+spam+collection.zip", progress=False)
