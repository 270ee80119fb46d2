"""The training loop: evaluation, parameter groups, learning, checkpoints, exact resume, Ctrl-C."""

import json
import math
import os
import signal
import sys
from itertools import pairwise

import numpy as np
import pytest

from autograd.checkpoint import CheckpointError
from autograd.nn import Module, Parameter
from tinygrad_llm.text.data import DataLoader, GPTDataset
from tinygrad_llm.models.gpt import GPT, GPTConfig
from tinygrad_llm.text.tokenizer import BPETokenizer
from autograd.optim import AdamW
from tinygrad_llm.training import TrainConfig, Trainer, evaluate, lm_loss, param_groups, train_simple
from tinygrad_llm.training.run_folder import CHECKPOINT, METRICS, plot_metrics, read_checkpoint_metadata
from tests.conftest import TEXT, tiny_config


def make(tok, ids, drop_rate=0.1, seed=0):
    cfg = tiny_config(vocab_size=tok.n_vocab, context_length=32, drop_rate=drop_rate)
    model = GPT(cfg, seed=seed)
    split = int(0.9 * len(ids))
    train = DataLoader(GPTDataset(ids[:split], 32, 32), batch_size=4, shuffle=True, seed=1)
    val = DataLoader(GPTDataset(ids[split:], 32, 32), batch_size=4, shuffle=False, drop_last=False)
    return model, train, val


def quiet(**kw):
    return dict(progress=False, **kw)


def test_evaluate_is_the_mean_loss_over_batches_in_eval_mode(tok, ids):
    model, _, val = make(tok, ids)
    batches = list(val.iter_from(0))
    model.eval()
    expected = np.mean([lm_loss(model, b).item() for b in batches])
    model.train()
    assert evaluate(model, val) == pytest.approx(expected, rel=1e-6)
    assert model.training  # mode restored
    assert evaluate(model, val, max_batches=1) == pytest.approx(lm_loss(model.eval(), batches[0]).item(), rel=1e-6)
    assert math.isnan(evaluate(model, []))


def test_train_simple_and_trainer_compute_the_same_losses(tok, ids, capsys):
    """The book's loop and the robust one set up alike give the same numbers: the same model init and data
    order, AdamW on every parameter with weight decay 0.1, a constant lr, no warmup, no clipping. The book
    evaluates after steps 1, 1 + eval_freq, ... (its global_step starts at -1); an on_step hook has the
    Trainer evaluate at those steps too."""
    epochs, eval_freq, eval_iter, lr = 2, 3, 2, 3e-3
    model, train, val = make(tok, ids)
    optimizer = AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    book = train_simple(model, train, val, optimizer, epochs, eval_freq, eval_iter, "The", tok)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Ep ")]
    assert len(book[0]) == len(printed) == -(-epochs * len(train) // eval_freq) >= 4

    twin, train, val = make(tok, ids)
    ours = ([], [], [])

    def at_the_books_steps(trainer):
        if (trainer.step - 1) % eval_freq == 0:
            ours[0].append(evaluate(trainer.model, train, eval_iter))
            ours[1].append(evaluate(trainer.model, val, eval_iter))
            ours[2].append(trainer.tokens_seen)

    config = TrainConfig(lr=lr, weight_decay=0.1, decay_all=True, schedule="constant", warmup_steps=0, grad_clip=0.0,
                         epochs=epochs, eval_every=10**6, eval_batches=eval_iter, **quiet())
    Trainer(twin, train, val, config, on_step=at_the_books_steps, log=None).fit()
    assert ours == tuple(book)  # exactly: the same operations in the same order
    assert all(np.array_equal(a.data, b.data) for a, b in zip(model.parameters(), twin.parameters()))


def test_train_simple_evaluates_at_the_books_steps(tok, capsys):
    """The book's run of section 5.2: 9 batches of 2 x 256 tokens a epoch, 10 epochs, eval_freq 5. It prints
    Ep 1 (Step 000000), Ep 1 (Step 000005), Ep 2 (Step 000010), ... Ep 10 (Step 000085), and its tokens seen
    run 512, 3,072, ... 44,032 (figure 5.12). A tiny model on random ids stands in for the 124M one."""
    ids = np.random.default_rng(0).integers(0, tok.n_vocab, 18 * 256 + 1)
    train = DataLoader(GPTDataset(ids[:9 * 2 * 256 + 1], 256, 256), batch_size=2, shuffle=True, seed=123)
    val = DataLoader(GPTDataset(ids[-257:], 256, 256), batch_size=2, shuffle=False, drop_last=False)
    model = GPT(tiny_config(vocab_size=tok.n_vocab, context_length=256, emb_dim=16, n_heads=2), seed=123)
    optimizer = AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    train_losses, val_losses, tokens_seen = train_simple(model, train, val, optimizer, num_epochs=10, eval_freq=5,
                                                         eval_iter=5, start_context="The", tokenizer=tok)
    steps = range(0, 90, 5)
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out if line.startswith("Ep ")] == [
        f"Ep {s // 9 + 1} (Step {s:06d})" for s in steps]
    assert sum(line.startswith("The") for line in out) == 10  # a sample after each epoch
    assert tokens_seen == [512 * (s + 1) for s in steps] and tokens_seen[-1] == 44_032
    assert len(train_losses) == len(val_losses) == 18 and train_losses[-1] < train_losses[0]


def test_configs_reject_unknown_keys_and_fill_in_missing_ones():
    """A key from a newer version names itself; one an older version did not write takes its default."""
    for cls in (TrainConfig, GPTConfig):
        saved = cls().to_dict()
        assert cls.from_dict(saved) == cls()
        with pytest.raises(ValueError, match=rf"unknown {cls.__name__} fields: from_the_future"):
            cls.from_dict({**saved, "from_the_future": 1})
        older = {k: v for k, v in saved.items() if k != "drop_rate" and k != "dtype"}
        assert cls.from_dict(older) == cls()


def test_param_groups_decay_matrices_only_unless_decay_all(tok, ids):
    model, _, _ = make(tok, ids)
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    (everything,) = param_groups(model, 0.1, decay_all=True)
    assert len(everything["params"]) == len(list(model.parameters()))
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        param_groups(model, 0.1)


def test_training_lowers_the_loss_and_writes_metrics(tok, ids, tmp_path):
    model, train, val = make(tok, ids, drop_rate=0.0)
    cfg = TrainConfig(lr=3e-3, warmup_steps=5, max_steps=40, eval_every=20, eval_batches=2, grad_clip=1.0,
                      out_dir=str(tmp_path), sample_prompt="The", sample_tokens=5, **quiet())
    trainer = Trainer(model, train, val, cfg, tokenizer=tok, log=None)
    records = trainer.fit()
    assert [r["step"] for r in records] == [0, 20, 40]
    assert records[-1]["val_loss"] < records[0]["val_loss"] - 1.0
    assert records[-1]["tokens_seen"] == 40 * 4 * 32
    assert records[-1]["val_ppl"] == pytest.approx(math.exp(records[-1]["val_loss"]))
    assert len(trainer.step_losses) == 40 and all(math.isfinite(x) for x in trainer.step_losses)
    assert isinstance(records[-1]["sample"], str) and records[-1]["sample"].startswith("The")
    lines = [json.loads(s) for s in (tmp_path / METRICS).read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 20, 40]
    assert set(lines[0]) >= {"step", "tokens_seen", "train_loss", "val_loss", "val_ppl", "lr", "tokens_per_sec",
                             "elapsed"}
    meta = read_checkpoint_metadata(tmp_path)
    assert meta["step"] == 40 and meta["tokenizer"] == {"kind": "bpe", "path": "tokenizer"}
    assert BPETokenizer.load(tmp_path / "tokenizer").encode(TEXT[:200]) == tok.encode(TEXT[:200])
    assert GPTConfig.from_dict(meta["model_config"]) == model.config
    assert TrainConfig.from_dict(meta["train_config"]) == cfg  # through JSON: betas a list, back to a tuple
    assert (tmp_path / "model" / "config.json").is_file()  # Hugging Face layout for generate
    again = GPT.from_pretrained(str(tmp_path / "model"))
    np.testing.assert_array_equal(again.wte.weight.data, model.wte.weight.data)


def test_model_is_exported_when_the_last_step_is_a_periodic_checkpoint(tok, ids, tmp_path):
    model, train, val = make(tok, ids, drop_rate=0.0)
    cfg = TrainConfig(max_steps=4, checkpoint_every=2, eval_every=4, eval_batches=1, out_dir=str(tmp_path), **quiet())
    Trainer(model, train, val, cfg, tokenizer=tok, log=None).fit()
    assert read_checkpoint_metadata(tmp_path)["step"] == 4
    again = GPT.from_pretrained(str(tmp_path / "model"))
    np.testing.assert_array_equal(again.wte.weight.data, model.wte.weight.data)


def test_schedule_warmup_then_cosine_and_constant(tok, ids):
    model, train, _ = make(tok, ids)
    cfg = TrainConfig(lr=1e-3, warmup_steps=4, max_steps=8, min_lr=1e-4, **quiet())
    seen = []
    Trainer(model, train, None, cfg, log=None, on_step=lambda t: seen.append(t.optimizer.param_groups[0]["lr"])).fit()
    # lr after step s is the lr of step s + 1 (1-based, as the book counts): warmup 1e-3 * k / 4, then cosine
    assert seen[:3] == pytest.approx([5e-4, 7.5e-4, 1e-3])
    assert seen[-1] == pytest.approx(1e-4) and all(a >= b for a, b in pairwise(seen[3:]))
    model, train, _ = make(tok, ids)
    seen.clear()
    cfg = TrainConfig(lr=4e-4, schedule="constant", max_steps=3, **quiet())
    Trainer(model, train, None, cfg, log=None, on_step=lambda t: seen.append(t.optimizer.param_groups[0]["lr"])).fit()
    assert seen == [4e-4] * 3


def _lrs_of_each_step(trainer_args, cfg):
    """The lr each step of a run uses, read inside the loss (that is, before that step's update)."""
    model, train = trainer_args
    seen = []

    def loss(model, batch):
        if model.training:  # not the evaluations
            seen.append(trainer.optimizer.param_groups[0]["lr"])
        return lm_loss(model, batch)

    trainer = Trainer(model, train, None, cfg, loss_fn=loss, log=None)
    trainer.fit()
    return seen


def test_initial_lr_gives_appendix_d_schedule(tok, ids):
    """TrainConfig(initial_lr=...) warms up as appendix D does: step s (from 0) at initial + s * increment,
    then the cosine of its loop; without it, warmup starts at lr / warmup_steps (unchanged)."""
    model, train, _ = make(tok, ids)
    cfg = TrainConfig(lr=0.01, initial_lr=1e-4, min_lr=1e-5, warmup_steps=3, max_steps=8, eval_every=100,
                      eval_batches=1, **quiet())
    inc = (0.01 - 1e-4) / 3
    book = [1e-4 + s * inc for s in range(3)]
    book += [1e-5 + (0.01 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (s - 3) / (8 - 3))) for s in range(3, 8)]
    assert _lrs_of_each_step((model, train), cfg) == pytest.approx(book, rel=1e-12)
    model, train, _ = make(tok, ids)
    cfg = TrainConfig(lr=0.01, min_lr=1e-5, warmup_steps=3, max_steps=8, eval_every=100, eval_batches=1, **quiet())
    today = _lrs_of_each_step((model, train), cfg)
    assert today[:3] == pytest.approx([0.01 / 3, 0.02 / 3, 0.01]) and today[-1] == pytest.approx(1e-5)
    model, train, _ = make(tok, ids)
    cfg = TrainConfig(lr=0.01, initial_lr=1e-4, schedule="constant", warmup_steps=2, max_steps=4, eval_every=100,
                      eval_batches=1, **quiet())
    assert _lrs_of_each_step((model, train), cfg) == pytest.approx([1e-4, 1e-4 + (0.01 - 1e-4) / 2, 0.01, 0.01])


def test_clip_after_warmup_clips_only_after_the_warmup_steps(tok, ids, monkeypatch):
    import tinygrad_llm.training.step as step_module

    clipped = []
    real = step_module.clip_grad_norm_
    monkeypatch.setattr(step_module, "clip_grad_norm_",
                        lambda params, max_norm, norm=None: (clipped.append(trainer.step), real(params, max_norm, norm))[1])
    model, train, _ = make(tok, ids)
    trainer = Trainer(model, train, None, TrainConfig(warmup_steps=3, max_steps=6, grad_clip=1.0, eval_every=100,
                                                      eval_batches=1, clip_after_warmup=True, **quiet()), log=None)
    trainer.fit()
    assert clipped == [3, 4, 5]  # appendix D: `if global_step >= warmup_steps`, steps counted from 0
    clipped.clear()
    model, train, _ = make(tok, ids)
    trainer = Trainer(model, train, None, TrainConfig(warmup_steps=3, max_steps=6, grad_clip=1.0, eval_every=100,
                                                      eval_batches=1, **quiet()), log=None)
    trainer.fit()
    assert clipped == [0, 1, 2, 3, 4, 5]  # the default clips every step


def test_resuming_with_other_parameter_groups_says_what_to_set(tok, ids, tmp_path):
    model, train, _ = make(tok, ids)
    Trainer(model, train, None, TrainConfig(max_steps=1, decay_all=True, eval_every=100, eval_batches=1,
                                            out_dir=str(tmp_path), **quiet()), log=None).fit()
    model, train, _ = make(tok, ids)
    other = Trainer(model, train, None, TrainConfig(max_steps=2, eval_batches=1, out_dir=str(tmp_path), **quiet()),
                    log=None)
    with pytest.raises(CheckpointError, match=r"(?s)groups of sizes \[\d+\], this optimizer has \[\d+, \d+\]"
                                              r".*resume with decay_all=True"):
        other.resume()


def _config(out, **kw):
    return TrainConfig(lr=2e-3, warmup_steps=2, max_steps=7, eval_every=3, eval_batches=2, grad_clip=0.5,
                       grad_accum_steps=2, out_dir=str(out), **quiet(**kw))


def _strip(records):
    return [{k: v for k, v in r.items() if k not in ("elapsed", "tokens_per_sec")} for r in records]


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tok, ids, tmp_path):
    """Dropout on, gradient accumulation, warmup, cosine and clipping: the losses match bit for bit."""
    model, train, val = make(tok, ids)
    full = Trainer(model, train, val, _config(tmp_path / "full"), log=None)
    full.fit()

    def stop_at_3(trainer):
        if trainer.step == 3:
            raise KeyboardInterrupt

    model, train, val = make(tok, ids)
    first = Trainer(model, train, val, _config(tmp_path / "cut"), log=None, on_step=stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert read_checkpoint_metadata(tmp_path / "cut")["step"] == 3

    model, train, val = make(tok, ids, seed=99)  # other initial weights: all must come from the checkpoint
    second = Trainer(model, train, val, _config(tmp_path / "cut"), log=None)
    second.resume()
    assert (second.step, second.tokens_seen) == (3, 3 * 2 * 4 * 32)
    second.fit()
    assert first.step_losses + second.step_losses == full.step_losses  # exact equality
    assert _strip(second.records) == _strip(full.records)
    cut = [json.loads(s) for s in (tmp_path / "cut" / METRICS).read_text().splitlines()]
    assert [r["step"] for r in cut] == [0, 3, 6, 7]
    for a, b in zip(model.parameters(), full.model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to oneself")
def test_ctrl_c_finishes_the_step_and_saves_a_checkpoint(tok, ids, tmp_path):
    model, train, val = make(tok, ids)

    def press_ctrl_c(trainer):
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    trainer = Trainer(model, train, val, _config(tmp_path), log=None, on_step=press_ctrl_c)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is removed again
    assert trainer.step == 2 and read_checkpoint_metadata(tmp_path)["step"] == 2


def test_any_iterable_of_batches_and_a_custom_loss(tmp_path):
    """What fine-tuning passes: its own batches (here (x, y) regression) and its own loss."""

    class Line(Module):
        def __init__(self):
            super().__init__()
            self.w = Parameter(np.zeros((1, 1), dtype=np.float32))
            self.b = Parameter(np.zeros(1, dtype=np.float32))

        def forward(self, x):
            return x @ self.w + self.b

    def mse(model, batch):
        x, y = batch
        d = model(x) - y
        return (d * d).mean()

    rng = np.random.default_rng(0)
    batches = []
    for _ in range(8):
        x = rng.standard_normal((16, 1)).astype(np.float32)
        batches.append((x, 3 * x + 1))
    cfg = TrainConfig(lr=0.1, weight_decay=0.0, epochs=20, eval_every=1000, eval_batches=None,
                      out_dir=str(tmp_path), **quiet())
    model = Line()
    records = Trainer(model, batches, batches[:2], cfg, loss_fn=mse, log=None).fit()
    assert records[-1]["step"] == 160 and records[-1]["val_loss"] < 1e-3
    assert model.w.data[0, 0] == pytest.approx(3, abs=0.02) and model.b.data[0] == pytest.approx(1, abs=0.02)


def test_training_on_the_strict_device(tok, ids):
    """The strict device refuses implicit host conversions, as CuPy does: the loop has none."""
    model, train, val = make(tok, ids)
    model.to("strict")
    cfg = TrainConfig(max_steps=2, eval_every=1, eval_batches=1, grad_clip=1.0, sample_prompt="The",
                      sample_tokens=3, **quiet())
    records = Trainer(model, train, val, cfg, tokenizer=tok, log=None).fit()
    assert len(records) == 3 and all(math.isfinite(r["val_loss"]) for r in records)


def test_bad_checkpoints_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_checkpoint_metadata(tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint_metadata(tmp_path)


def test_loss_plot_when_matplotlib_is_there(tmp_path, monkeypatch):
    records = [{"tokens_seen": 0, "train_loss": 5.0, "val_loss": 5.1},
               {"tokens_seen": 100, "train_loss": 3.0, "val_loss": 3.5}]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert plot_metrics(records, tmp_path / "loss.png") is None
    else:
        assert plot_metrics(records, tmp_path / "loss.png") == tmp_path / "loss.png"
        assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plot extra were not installed
    assert plot_metrics(records, tmp_path / "other.png") is None
    assert not (tmp_path / "other.png").exists()
