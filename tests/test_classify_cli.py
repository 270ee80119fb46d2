"""examples/finetune_classifier.py and examples/classify.py: bad input gives one line `error: ...` and
exit code 2; a short run fine-tunes a pretrained directory and classify.py reads what it saved.

Most cases call the scripts' main() in this process (a subprocess costs seconds of imports each); a few
run them as a user does, in a subprocess."""

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinygrad_llm.text.tokenizer import BPETokenizer
from tests.conftest import assert_clean_error, tiny_gpt

ROOT = Path(__file__).resolve().parents[1]
FINETUNE, CLASSIFY = ROOT / "examples" / "finetune_classifier.py", ROOT / "examples" / "classify.py"
HAM = ["see you at home tonight", "ok lar on my way", "call me when you are free", "dinner at six then"]
SPAM = ["win a free prize now txt WIN", "urgent claim your cash award", "free entry text CLAIM now",
        "you won 1000 call"]


def load_script(path):
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


finetune_classifier, classify = load_script(FINETUNE), load_script(CLASSIFY)


def cli(script, *args, stdin=None, timeout=120):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(script), *map(str, args)], check=False, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env, input=stdin)


@pytest.fixture
def run_main(capsys):
    """main(args) of a script in this process, as a CompletedProcess (returncode, stdout, stderr)."""

    def run(module, *args):
        try:
            code = module.main([str(a) for a in args])
        except SystemExit as e:  # argparse
            code = e.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture
def data(tmp_path):
    """A small well-formed label<TAB>text file: 12 ham, 12 spam."""
    path = tmp_path / "sms.tsv"
    path.write_text("".join(f"ham\t{t} {k}\n" for k in range(3) for t in HAM)
                    + "".join(f"spam\t{t} {k}\n" for k in range(3) for t in SPAM), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny 'pretrained' model directory as examples/pretrain.py writes it: weights and tokenizer files."""
    directory = tmp_path_factory.mktemp("pretrain") / "model"
    tok = BPETokenizer.train(" ".join(HAM + SPAM) * 3, 300)
    tiny_gpt(vocab_size=tok.n_vocab, context_length=32, seed=0).save_pretrained(directory)
    tok.save(directory)
    return directory


@pytest.fixture
def finetune(run_main):
    return lambda data, out, *extra: run_main(finetune_classifier, "--data", data, "--out", out, *extra)


def test_missing_data_file(tmp_path, pretrained):
    # as a user runs it, in a subprocess: no traceback, one line
    result = cli(FINETUNE, "--data", tmp_path / "nope.tsv", "--out", tmp_path / "o", "--init-from", pretrained)
    assert_clean_error(result, "nope.tsv")


def test_non_utf8_data(finetune, tmp_path, pretrained):
    (tmp_path / "latin1.tsv").write_bytes("ham\tok\nham\tcaf\xe9\n".encode("latin-1"))
    assert_clean_error(finetune(tmp_path / "latin1.tsv", tmp_path / "o", "--init-from", pretrained), "UTF-8", "line 2")


def test_all_lines_malformed(finetune, tmp_path, pretrained):
    (tmp_path / "bad.tsv").write_text("just text\nspamm\tlabel typo\n")
    assert_clean_error(finetune(tmp_path / "bad.tsv", tmp_path / "o", "--init-from", pretrained),
                       "line 1 (no tab)", "line 2 (unknown label 'spamm')")


def test_malformed_lines_rejected_with_on_bad_error(finetune, data, tmp_path, pretrained):
    with open(data, "a") as f:
        f.write("no tab on line 25\n")
    assert_clean_error(finetune(data, tmp_path / "o", "--init-from", pretrained, "--on-bad", "error"),
                       "line 25 (no tab)")


def test_too_few_examples_per_class(finetune, tmp_path, pretrained):
    (tmp_path / "few.tsv").write_text("".join(f"ham\t{t}\n" for t in HAM * 3) + "spam\tfree cash\n")
    assert_clean_error(finetune(tmp_path / "few.tsv", tmp_path / "o", "--init-from", pretrained),
                       "too few examples per class", "1 spam")


@pytest.mark.parametrize("flags, words", [
    (["--lr", "0"], ["--lr", "positive"]),
    (["--trainable", "everything"], ["--trainable", "everything"]),
    (["--pool", "first"], ["--pool"]),
    (["--epochs", "many"], ["--epochs"]),
    (["--init-from", "none", "--config", "gpt5"], ["gpt5"]),
])
def test_bad_flags(finetune, data, tmp_path, pretrained, flags, words):
    assert_clean_error(finetune(data, tmp_path / "o", "--init-from", pretrained, *flags), *words)


def test_unwritable_output_directory(finetune, data, tmp_path, pretrained):
    (tmp_path / "file").write_text("not a folder")
    assert_clean_error(finetune(data, tmp_path / "file" / "out", "--init-from", pretrained))


def test_init_from_a_directory_without_a_model(finetune, data, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_clean_error(finetune(data, tmp_path / "o", "--init-from", tmp_path / "empty"), "config.json")
    assert_clean_error(finetune(data, tmp_path / "o", "--init-from", tmp_path / "missing"), "no such directory")


def test_from_scratch_with_a_bpe_trained_on_the_training_messages(finetune, data, tmp_path):
    result = finetune(data, tmp_path / "o", "--init-from", "none", "--config", "cpu-tiny", "--vocab-size", "300",
                      "--epochs", "1", "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    assert "training a 300-token BPE on the 16 training messages" in result.stdout
    assert "trainable: all" in result.stdout and "; lr 0.0003, epochs 1" in result.stdout
    assert BPETokenizer.load(tmp_path / "o" / "model").n_vocab == 300


def test_classify_without_a_classifier(tmp_path, run_main):
    assert_clean_error(run_main(classify, "--model", tmp_path / "missing", "hello"), "no classifier")


def test_no_data_offline_says_where_to_get_it(tmp_path, monkeypatch, run_main, pretrained):
    import tinygrad_llm.finetune.classify_data as classify_data

    monkeypatch.setenv("TINYGRAD_LLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(classify_data, "SMS_SPAM_URL", "http://127.0.0.1:9/sms+spam+collection.zip")
    result = run_main(finetune_classifier, "--out", tmp_path / "o", "--init-from", pretrained)
    assert_clean_error(result, "could not get the SMS Spam Collection", "127.0.0.1:9", "--data PATH")


@pytest.mark.parametrize("trainable", [None, "lora"])
def test_fine_tune_a_pretrained_directory_then_classify(finetune, run_main, data, tmp_path, pretrained, trainable,
                                                       monkeypatch):
    with open(data, "a") as f:
        f.write("spam\n")  # a malformed line: skipped, and said so
    out = tmp_path / "run"
    flags = ["--lora", "4", "--lr", "1e-3"] if trainable else []
    result = finetune(data, out, "--init-from", pretrained, "--epochs", "2", "--batch-size", "4", "--eval-every", "2",
                      *flags)
    assert result.returncode == 0, result.stderr
    if trainable is None:  # the book's settings for pretrained weights
        assert "trainable: last-block" in result.stdout and "; lr 5e-05, epochs 2" in result.stdout
    assert (out / "adapter.safetensors").is_file() == (trainable == "lora")
    assert "warning: skipped 1 malformed lines: line 25 (no tab)" in result.stderr
    assert "24 messages (12 ham, 12 spam); balanced and split: 16 train, 2 val, 6 test" in result.stdout
    assert "accuracy: train" in result.stdout and (out / "results.json").is_file()
    assert sorted(p.name for p in (out / "model").iterdir()) == [
        "config.json", "encoder.json", "model.safetensors", "vocab.bpe"]
    texts = [SPAM[0], HAM[0]]
    by_args = run_main(classify, "--model", out / "model", *texts)
    by_stdin = cli(CLASSIFY, "--model", out / "model", stdin="\n".join(texts) + "\n\n")  # a user's pipe
    assert by_args.returncode == 0 and by_stdin.returncode == 0, by_stdin.stderr
    assert by_args.stdout == by_stdin.stdout
    lines = [line.split("\t") for line in by_args.stdout.splitlines()]
    assert [line[2] for line in lines] == texts
    assert all(label in ("ham", "spam") and 0.5 <= float(p) <= 1.0 for label, p, _ in lines)
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert_clean_error(run_main(classify, "--model", out / "model"), "no texts")


# ---- LoRA's two spellings, and resume --------------------------------------------------------------


def outcome(out):
    """What a run ends with: its evaluation records (without their timings) and its final accuracies."""
    records = [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_sec", "elapsed")}
               for line in (out / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())
    return records, {k: results[k] for k in ("train_acc", "val_acc", "test_acc", "steps", "trainable")}


TINY_RUN = ["--epochs", "2", "--batch-size", "4", "--eval-every", "1", "--eval-batches", "1", "--lr", "1e-3"]


def test_the_old_lora_spelling_is_lora_rank_with_a_note(finetune, data, tmp_path, pretrained):
    new = finetune(data, tmp_path / "new", "--init-from", pretrained, *TINY_RUN, "--max-steps", "2", "--lora", "4")
    old = finetune(data, tmp_path / "old", "--init-from", pretrained, *TINY_RUN, "--max-steps", "2",
                   "--trainable", "lora", "--lora-rank", "4")
    assert new.returncode == 0 and old.returncode == 0, old.stderr
    assert "note: --trainable lora --lora-rank R is deprecated; use --lora 4" in old.stdout.splitlines()
    assert "deprecated" not in new.stdout
    assert outcome(tmp_path / "old") == outcome(tmp_path / "new")
    assert outcome(tmp_path / "new")[1]["trainable"] == "lora"
    assert (tmp_path / "old" / "adapter.safetensors").is_file()


@pytest.mark.parametrize("flags, words", [
    (["--lora", "4", "--trainable", "head"], ["--lora", "does not combine with --trainable head"]),
    (["--lora-rank", "4"], ["--lora-rank only goes with the deprecated --trainable lora", "--lora RANK"]),
])
def test_lora_flags_that_contradict_each_other(finetune, data, tmp_path, pretrained, flags, words):
    assert_clean_error(finetune(data, tmp_path / "o", "--init-from", pretrained, *flags), *words)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags", [[], ["--lora", "2"]], ids=["last-block", "lora"])
def test_a_stopped_and_resumed_fine_tuning_ends_as_an_uninterrupted_one(finetune, run_main, data, tmp_path,
                                                                       pretrained, flags):
    """6 steps in one go, or 3 and then --resume (the settings from the checkpoint, --max-steps raised):
    the same losses, accuracies and classifier, bit for bit. 4 batches an epoch: the resumed run
    starts inside the first epoch and crosses into the second."""
    full = finetune(data, tmp_path / "full", "--init-from", pretrained, *TINY_RUN, "--max-steps", "6", *flags)
    assert full.returncode == 0, full.stderr
    cut = finetune(data, tmp_path / "cut", "--init-from", pretrained, *TINY_RUN, "--max-steps", "3", *flags)
    assert cut.returncode == 0, cut.stderr
    again = finetune(data, tmp_path / "cut", "--init-from", pretrained)  # a folder holding a run
    assert_clean_error(again, "holds an earlier run", "--resume", "--overwrite")
    resumed = run_main(finetune_classifier, "--out", tmp_path / "cut", "--resume", "--max-steps", "6")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 3/6 (epoch 1, batch 3)" in resumed.stdout
    assert outcome(tmp_path / "cut") == outcome(tmp_path / "full")
    assert [r["step"] for r in outcome(tmp_path / "cut")[0]] == list(range(7))
    assert (tmp_path / "cut" / "model" / "model.safetensors").read_bytes() == (
        tmp_path / "full" / "model" / "model.safetensors").read_bytes()


def test_resume_refuses_data_changed_since_the_checkpoint(finetune, run_main, data, tmp_path, pretrained):
    cut = finetune(data, tmp_path / "cut", "--init-from", pretrained, *TINY_RUN, "--max-steps", "1")
    assert cut.returncode == 0, cut.stderr
    with open(data, "a") as f:
        f.write("ham\tone more line\n")
    resumed = run_main(finetune_classifier, "--out", tmp_path / "cut", "--resume", "--max-steps", "2")
    assert_clean_error(resumed, "the training data changed since the checkpoint", "sms.tsv", "--overwrite")
