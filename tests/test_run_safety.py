"""A run is never lost and never trained on garbage: the tokenizer's files are written once and checked
at resume, a killed writer's temporary files are removed by the next run, a NaN or infinite loss or
gradient norm stops the run before anything is saved (or skips the step), metrics.jsonl is valid JSON,
a folder holding a run is not replaced without --resume or --overwrite, a corpus edited before --resume
is refused, a full disk keeps the previous file."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import autograd.checkpoint as checkpoint
from autograd.checkpoint import CheckpointError, atomic_write, remove_stale_temporaries, write_text
from tests.conftest import TEXT, assert_clean_error
from tinygrad_llm.support.cli import claim_run_folder
from tinygrad_llm.text.data import encode_pieces, file_fingerprint, read_chunks
from tinygrad_llm.text.tokenizer import BPETokenizer
from tinygrad_llm.training import NonFiniteError, TrainConfig, Trainer, lm_loss
from tinygrad_llm.training.run_folder import METRICS, checkpoint_tokenizer, read_checkpoint_metadata
from tests.test_train import make, quiet

ROOT = Path(__file__).resolve().parents[1]


def strict_json_lines(path):
    """Each line parsed as strict JSON: NaN and Infinity, which Python's json accepts, are refused."""
    def refuse(name):
        raise AssertionError(f"{path} holds {name}, which is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in Path(path).read_text().splitlines()]


# ---- the checkpoint and its tokenizer files --------------------------------------------------------


def test_the_tokenizer_files_are_written_once_per_run(tok, ids, tmp_path, monkeypatch):
    saved_into = []
    real_save = BPETokenizer.save
    monkeypatch.setattr(BPETokenizer, "save", lambda self, d: (saved_into.append(Path(d).name), real_save(self, d)))
    model, train, _ = make(tok, ids, drop_rate=0.0)
    cfg = TrainConfig(max_steps=4, checkpoint_every=1, eval_every=100, eval_batches=1, out_dir=str(tmp_path), **quiet())
    Trainer(model, train, None, cfg, tokenizer=tok, log=None).fit()
    assert saved_into == ["tokenizer", "model"]  # four checkpoints, one write of tokenizer/; the export's model/
    assert read_checkpoint_metadata(tmp_path)["tokenizer_fingerprint"] == f"bpe-{tok.fingerprint[:16]}"


def test_resume_refuses_tokenizer_files_that_are_not_the_checkpoints(tok, ids, tmp_path):
    model, train, _ = make(tok, ids)
    cfg = TrainConfig(max_steps=1, eval_every=100, eval_batches=1, out_dir=str(tmp_path), **quiet())
    Trainer(model, train, None, cfg, tokenizer=tok, log=None).fit()
    extra = read_checkpoint_metadata(tmp_path)
    assert checkpoint_tokenizer(tmp_path, extra).fingerprint == tok.fingerprint
    BPETokenizer.train(TEXT, 280).save(tmp_path / "tokenizer")  # another run's tokenizer
    with pytest.raises(CheckpointError, match="is not the one .* was trained with"):
        checkpoint_tokenizer(tmp_path, extra)
    (tmp_path / "tokenizer" / "encoder.json").write_text("")  # what a kill -9 mid-write leaves without atomic_write
    with pytest.raises(CheckpointError, match="cannot be read"):
        checkpoint_tokenizer(tmp_path, extra)


def test_fit_removes_the_temporary_files_of_a_killed_writer(tok, ids, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited: its files are leftovers
    (tmp_path / "tokenizer").mkdir()
    stale = [tmp_path / f".checkpoint.safetensors.tmp-{dead_pid}-abc123de",
             tmp_path / "tokenizer" / f".encoder.json.tmp-{dead_pid}-zz9_x1yq"]
    live = tmp_path / f".checkpoint.safetensors.tmp-{os.getpid()}-q1w2e3r4"  # a writer still at work
    other = tmp_path / "notes.tmp-1-x"  # not ours: no leading dot
    for path in [*stale, live, other]:
        path.write_bytes(b"\0" * 100)
    model, train, _ = make(tok, ids)
    cfg = TrainConfig(max_steps=1, eval_every=100, eval_batches=1, out_dir=str(tmp_path), **quiet())
    Trainer(model, train, None, cfg, tokenizer=tok, log=None).fit()
    assert not any(p.exists() for p in stale)
    assert live.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path / "missing") == []


# ---- NaN and infinity ------------------------------------------------------------------------------


def poisoned(from_step, what="loss", until=None):
    """A loss that turns NaN (what="loss") or has a NaN gradient under a finite value (what="grad") in
    the training steps from_step..until (counted from 1), ordinary otherwise."""
    def loss_fn(model, batch):
        loss = lm_loss(model, batch)
        step = trainer_of[0].step + 1
        if not model.training or step < from_step or (until is not None and step > until):
            return loss
        if what == "loss":
            return loss * float("nan")
        weight = model.wte.weight
        return loss + ((weight - weight.detach()) ** 0.5).sum() * 0.0  # d sqrt(x)/dx at 0 is inf; 0 * inf = NaN
    trainer_of = []
    return loss_fn, trainer_of


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the NaN made on purpose
@pytest.mark.parametrize("what, words", [("loss", "the loss is nan"), ("grad", "the grad norm is nan")])
def test_a_diverged_step_stops_the_run_and_keeps_the_last_good_checkpoint(tok, ids, tmp_path, what, words):
    model, train, val = make(tok, ids, drop_rate=0.0)
    loss_fn, trainer_of = poisoned(3, what)
    cfg = TrainConfig(max_steps=6, checkpoint_every=2, eval_every=2, eval_batches=1, log_every=4, grad_clip=1.0,
                      out_dir=str(tmp_path), **quiet())
    trainer = Trainer(model, train, val, cfg, loss_fn=loss_fn, tokenizer=tok, log=None)
    trainer_of.append(trainer)
    with pytest.raises(NonFiniteError, match=f"diverged at step 3: {words}.*last checkpoint: step 2"):
        trainer.fit()
    assert read_checkpoint_metadata(tmp_path)["step"] == 2  # not overwritten with NaN weights
    tensors, _ = checkpoint.load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert all(np.isfinite(t).all() for t in tensors.values())
    assert not (tmp_path / "model").exists()  # no export
    assert [r["step"] for r in strict_json_lines(tmp_path / METRICS)] == [0, 2]


def test_skip_leaves_parameters_and_optimizer_state_as_they_were(tok, ids, tmp_path):
    model, train, _ = make(tok, ids, drop_rate=0.0)
    loss_fn, trainer_of = poisoned(3, until=3)
    states, logged = {}, []

    def snapshot(t):  # the parameters and Adam's step counts after each step
        adam_steps = {k: v["step"] for k, v in t.optimizer.state_dict()["state"].items()}
        states[t.step] = ([p.data.copy() for p in t.model.parameters()], adam_steps)

    cfg = TrainConfig(max_steps=5, eval_every=100, eval_batches=1, on_nonfinite="skip", out_dir=str(tmp_path),
                      **quiet())
    trainer = Trainer(model, train, None, cfg, loss_fn=loss_fn, log=logged.append, on_step=snapshot)
    trainer_of.append(trainer)
    trainer.fit()
    assert trainer.skipped_steps == [3] and trainer.step == 5
    for before, after in zip(states[2][0], states[3][0]):
        np.testing.assert_array_equal(before, after)
    assert states[3][1] == states[2][1]  # Adam's step counts did not move
    assert not np.array_equal(states[4][0][0], states[3][0][0])  # training went on after it
    assert any(line.startswith("step 3: the loss is nan") and "step skipped" in line for line in logged), logged
    assert read_checkpoint_metadata(tmp_path)["step"] == 5


def test_too_many_skips_in_a_row_stop_the_run(tok, ids, tmp_path):
    model, train, _ = make(tok, ids, drop_rate=0.0)
    loss_fn, trainer_of = poisoned(2)
    cfg = TrainConfig(max_steps=10, eval_every=100, eval_batches=1, on_nonfinite="skip", max_nonfinite_skips=2,
                      out_dir=str(tmp_path), **quiet())
    trainer = Trainer(model, train, None, cfg, loss_fn=loss_fn, log=None)
    trainer_of.append(trainer)
    with pytest.raises(NonFiniteError, match=r"3 steps in a row \(up to step 4\) were skipped"):
        trainer.fit()
    assert not (tmp_path / "checkpoint.safetensors").exists()


@pytest.mark.parametrize("setting", [{"lr": float("nan")}, {"lr": float("inf")}, {"weight_decay": float("nan")},
                                     {"grad_clip": float("inf")}, {"min_lr": float("nan")}, {"betas": (0.9, 1.0)},
                                     {"on_nonfinite": "ignore"}])
def test_train_config_refuses_non_finite_settings(setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        TrainConfig(**setting)


def test_metrics_hold_null_where_a_value_is_not_finite(tok, ids, tmp_path):
    model, train, _ = make(tok, ids)
    cfg = TrainConfig(max_steps=1, eval_every=1, eval_batches=1, out_dir=str(tmp_path), **quiet())
    trainer = Trainer(model, train, [], cfg, log=None)  # an empty validation loader: its loss is NaN
    trainer.fit()
    lines = strict_json_lines(tmp_path / METRICS)
    assert [(r["val_loss"], r["val_ppl"]) for r in lines] == [(None, None), (None, None)]
    assert all(isinstance(r["train_loss"], float) for r in lines)


def test_metrics_are_rewritten_whole_through_atomic_write(tok, ids, tmp_path, monkeypatch):
    """metrics.jsonl goes through the one atomic write, never an append a kill could leave half done."""
    import tinygrad_llm.training.run_folder as run_folder_module

    written = []
    real = run_folder_module.write_text
    monkeypatch.setattr(run_folder_module, "write_text", lambda path, text: (written.append((path, text)), real(path, text))[1])
    model, train, _ = make(tok, ids)
    cfg = TrainConfig(max_steps=2, eval_every=1, eval_batches=1, out_dir=str(tmp_path), **quiet())
    Trainer(model, train, None, cfg, log=None).fit()
    metrics = [text for path, text in written if Path(path).name == METRICS]
    assert [len(t.splitlines()) for t in metrics] == [0, 1, 2, 3]  # the fresh file, then one per evaluation
    assert metrics[-1] == (tmp_path / METRICS).read_text(encoding="utf-8")


# ---- the command line -------------------------------------------------------------------------------


def pretrain(*args, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / "examples" / "pretrain.py"), *map(str, args)], check=False,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


TINY = ["--config", "cpu-tiny", "--context-length", "16", "--batch-size", "2", "--vocab-size", "300",
        "--eval-batches", "1", "--sample-tokens", "3"]


def test_pretrain_lr_1e3_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    result = pretrain("--data", corpus, *TINY, "--lr", "1e3", "--max-steps", 40, "--checkpoint-every", 1,
                      "--out", tmp_path / "o")
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: training diverged at step ") and "--on-nonfinite skip" in error, error
    bad_step = int(error.split("at step ")[1].split(":")[0])
    assert read_checkpoint_metadata(tmp_path / "o")["step"] == bad_step - 1
    assert not (tmp_path / "o" / "model").exists()
    strict_json_lines(tmp_path / "o" / METRICS)


def test_a_folder_holding_a_run_needs_resume_or_overwrite_and_an_edited_corpus_is_refused(tmp_path):
    corpus, out = tmp_path / "corpus.txt", tmp_path / "o"
    corpus.write_text(TEXT, encoding="utf-8")
    first = pretrain("--data", corpus, *TINY, "--max-steps", 2, "--out", out)
    assert first.returncode == 0, first.stderr
    again = pretrain("--data", corpus, *TINY, "--max-steps", 2, "--out", out)
    assert_clean_error(again, str(out), "--resume", "--overwrite")
    assert read_checkpoint_metadata(out)["step"] == 2
    both = pretrain("--out", out, "--resume", "--overwrite")
    assert_clean_error(both, "pass one of them")
    corpus.write_text(TEXT + "one more line\n", encoding="utf-8")
    edited = pretrain("--out", out, "--resume", "--max-steps", 3)
    assert_clean_error(edited, "the training data changed", str(corpus), "--overwrite")
    fresh = pretrain("--data", corpus, *TINY, "--max-steps", 1, "--out", out, "--overwrite")
    assert fresh.returncode == 0, fresh.stderr
    assert read_checkpoint_metadata(out)["step"] == 1


def test_claim_run_folder(tmp_path):
    claim_run_folder(tmp_path)  # nothing there
    (tmp_path / "checkpoint.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="pass --overwrite to replace it, or choose another --out"):
        claim_run_folder(tmp_path, can_resume=False)
    claim_run_folder(tmp_path, resume=True)
    assert (tmp_path / "checkpoint.safetensors").exists()
    claim_run_folder(tmp_path, overwrite=True)
    assert not (tmp_path / "checkpoint.safetensors").exists()


@pytest.mark.parametrize("script", ["finetune_classifier", "finetune_instructions"])
def test_fine_tuning_refuses_a_folder_holding_a_run(script, tmp_path, capsys):
    from tests.test_cli_flags import EXAMPLES

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "checkpoint.safetensors").write_bytes(b"x")
    code = EXAMPLES[script].main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert_clean_error(SimpleNamespace(returncode=code, stderr=capsys.readouterr().err), "holds an earlier run",
                       "--overwrite")


# ---- data: streamed, fingerprinted ------------------------------------------------------------------


def test_corpus_pieces_encode_to_the_ids_of_the_whole_text_in_two_bytes_a_token(tok, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(TEXT, encoding="utf-8")
    ids = encode_pieces(read_chunks(path, chunk_bytes=500), tok)
    assert ids.dtype == np.uint16 and len(list(read_chunks(path, chunk_bytes=500))) > 5
    assert ids.tolist() == tok.encode(TEXT, allowed_special="all")
    assert file_fingerprint(path)["bytes"] == len(TEXT.encode())


def test_file_fingerprint_finds_a_bad_byte_anywhere(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"fine text\n" * 1000 + b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"not valid UTF-8: byte offset 10003 \(line 1001\)"):
        file_fingerprint(path)


# ---- a full disk -------------------------------------------------------------------------------------


def test_a_full_disk_keeps_the_previous_file_and_removes_the_temporary_one(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_text(path, "the previous state")
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="could not write .*state.json: no space left on the disk .* file is kept"):
        write_text(path, "the new state")
    assert path.read_text() == "the previous state"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_the_folder_is_synced_after_the_rename(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(checkpoint, "_fsync_dir", lambda d: synced.append((d, (tmp_path / "a.txt").read_text())))
    with atomic_write(tmp_path / "a.txt", "w") as f:
        f.write("new")
    assert synced == [(str(tmp_path), "new")]  # after the rename: the new file is in place when it runs
