"""Mixed precision (autograd/amp.py, TrainConfig(dtype="float16"), --dtype): float16 matrix products,
float32 master weights and optimizer state, dynamic loss scaling that skips overflowing steps."""

import json
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest

import autograd.functional as F
from autograd import Function, backend, is_grad_enabled, nn
from autograd.amp import GradScaler, cast_linears, compute_in
from tinygrad_llm.support.distributed import Communicator, LaunchInfo
from tinygrad_llm.training.run_folder import read_checkpoint_metadata
from tinygrad_llm.training.trainer import NonFiniteError, TrainConfig, Trainer
from tests.conftest import assert_clean_error, tiny_gpt

ROOT = Path(__file__).resolve().parents[1]


def batches(n=40, batch=4, seed=0):
    """`n` copies of one (inputs, targets) batch of random ids: a loss that must fall when training works."""
    ids = np.random.default_rng(seed).integers(0, 97, size=(batch, 17))
    return [(ids[:, :-1], ids[:, 1:])] * n


def config(**kw):
    return TrainConfig(**{"lr": 3e-3, "max_steps": 20, "eval_every": 1000, "log_every": 1, "progress": False,
                          "dtype": "float16", "schedule": "constant", **kw})


def test_a_float16_linear_multiplies_in_float16_and_keeps_float32_weights_and_gradients(device, monkeypatch):
    seen = []
    forward = F.Linear.forward

    def spy(self, x, w, b=None):
        seen.append((x.dtype, w.dtype, None if b is None else b.dtype))
        return forward(self, x, w, b)

    monkeypatch.setattr(F.Linear, "forward", spy)
    layer = nn.Linear(8, 3, rng=np.random.default_rng(0)).to(device)
    x = nn.Parameter(backend.to_device(np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32), device))
    expected = F.linear(x, layer.weight, layer.bias).numpy()
    assert cast_linears(layer, np.float16) == 1
    y = layer(x)
    assert seen[-1] == (np.float16, np.float16, np.float16)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-2)
    assert not np.array_equal(y.numpy(), expected)  # it really was rounded
    y.sum().backward()
    assert layer.weight.dtype == layer.weight.grad.dtype == layer.bias.grad.dtype == x.grad.dtype == np.float32
    np.testing.assert_allclose(backend.to_host(layer.weight.grad), np.tile(x.numpy().sum(0), (3, 1)), atol=2e-2)
    assert sorted(layer.state_dict()) == ["bias", "weight"]  # the checkpoint's names are unchanged


def test_compute_in_sets_every_linear_and_restores_them():
    model = tiny_gpt()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 8  # 2 blocks x (c_attn, c_proj, c_fc, mlp c_proj); the tied head is not a Linear
    with compute_in(model, np.float16):
        assert all(m.compute_dtype == np.float16 for m in linears)
    assert all(m.compute_dtype is None for m in linears)


def test_grad_scaler_halves_on_overflow_and_grows_after_n_good_steps():
    s = GradScaler(init_scale=1024.0, growth_interval=3)
    s.update(True)
    assert (s.scale_value, s.skipped_steps, s.good_steps) == (512.0, 1, 0)
    s.update(False), s.update(False)
    assert s.scale_value == 512.0
    s.update(False)
    assert (s.scale_value, s.good_steps) == (1024.0, 0)
    restored = GradScaler()
    restored.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert restored.state_dict() == s.state_dict()
    with pytest.raises(ValueError, match="not a GradScaler state"):
        restored.load_state_dict({"scale": 2.0})
    with pytest.raises(ValueError, match="init_scale must be a positive finite number"):
        GradScaler(init_scale=float("inf"))


def test_unscale_divides_the_gradients_exactly_and_reports_inf_and_nan(device):
    s = GradScaler(init_scale=4.0)
    p, q = (nn.Parameter(backend.to_device(np.ones(3, dtype=np.float32), device)) for _ in range(2))
    p.grad = backend.to_device(np.array([4.0, 8.0, 2.0], dtype=np.float32), device)
    q.grad = None  # a parameter without a gradient is left alone
    assert s.unscale_([p, q]) is False
    assert backend.to_host(p.grad).tolist() == [1.0, 2.0, 0.5] and p.grad.dtype == np.float32
    for bad in (np.inf, np.nan):
        p.grad = backend.to_device(np.array([1.0, bad, 1.0], dtype=np.float32), device)
        assert s.unscale_([p]) is True


def test_float16_training_lowers_the_loss_with_float32_master_weights_and_moments(device):
    model = tiny_gpt(device=device)
    trainer = Trainer(model, batches(), config=config(), log=None)
    trainer.fit()
    losses = trainer.step_losses
    assert len(losses) == 20 and losses[0] > 4.4 and losses[-1] < losses[0] - 1.0
    assert trainer.skipped_steps == [] and trainer.scaler.scale_value == 2.0 ** 16
    assert {p.dtype for p in model.parameters()} == {np.dtype(np.float32)}
    moments = [v for state in trainer.optimizer.state_dict()["state"].values() for k, v in state.items() if k != "step"]
    assert moments and {m.dtype for m in moments} == {np.dtype(np.float32)}
    assert all(m.compute_dtype is None for m in model.modules() if isinstance(m, nn.Linear))  # restored after fit


class InfGradient(Function):
    """0 in the forward, an infinite gradient in the backward: an overflow injected into one step."""

    def forward(self, x):
        self.shape, self.dtype = x.shape, x.dtype
        return backend.get_array_module(x).zeros((), dtype=x.dtype)

    def backward(self, grad):
        return (backend.get_array_module(grad).full(self.shape, np.inf, dtype=self.dtype),)


def snapshot(trainer):
    params = [backend.to_host(p.data).copy() for p in trainer.model.parameters()]
    state = [(i, k, np.array(backend.to_host(v)) if k != "step" else v)
             for i, s in trainer.optimizer.state_dict()["state"].items() for k, v in s.items()]
    return params, state


def test_an_overflow_skips_exactly_that_step_halves_the_scale_and_is_not_divergence(device):
    """on_nonfinite="error" (the default) must not stop at an overflow the scaler absorbs."""
    model = tiny_gpt(device=device)
    snapshots = {}

    def loss_fn(model, batch):  # step 4 (trainer.step 3 while it runs); evaluations run without grad
        loss = F.cross_entropy(model(batch[0]), batch[1])
        overflow = is_grad_enabled() and trainer.step == 3
        return loss + InfGradient.apply(model.h[0].mlp.c_fc.weight) if overflow else loss

    trainer = Trainer(model, batches(), config=config(max_steps=6, on_nonfinite="error"), loss_fn=loss_fn,
                      on_step=lambda t: snapshots.setdefault(t.step, snapshot(t)), log=None)
    trainer.scaler = GradScaler(init_scale=1024.0, growth_interval=2)
    trainer.fit()
    assert trainer.skipped_steps == [4] and trainer.scaler.skipped_steps == 1
    # steps 1, 2 grow the scale to 2048, step 3 is good, step 4 halves it to 1024, steps 5, 6 grow it to 2048
    assert trainer.scaler.scale_value == 2048.0 and trainer.scaler.good_steps == 0
    (p3, s3), (p4, s4), (p5, _) = snapshots[3], snapshots[4], snapshots[5]
    assert all(np.array_equal(a, b) for a, b in zip(p3, p4))  # bit-identical: no update at step 4
    assert all(i == j and k == l and np.array_equal(a, b) for (i, k, a), (j, l, b) in zip(s3, s4))
    assert not all(np.array_equal(a, b) for a, b in zip(p4, p5))  # step 5 updates again
    assert trainer.scheduler.last_step == 6  # the schedule moved on through the skipped step
    assert all(np.isfinite(trainer.step_losses))


def test_an_overflow_at_loss_scale_one_is_divergence():
    def loss_fn(model, batch):
        return F.cross_entropy(model(batch[0]), batch[1]) + InfGradient.apply(model.wte.weight)

    trainer = Trainer(tiny_gpt(), batches(), config=config(max_steps=4), loss_fn=loss_fn, log=None)
    trainer.scaler = GradScaler(init_scale=4.0)
    with pytest.raises(NonFiniteError, match="overflowed even at loss scale 1: the run diverged"):
        trainer.fit()
    assert trainer.skipped_steps == [1, 2, 3] and trainer.step == 2


def test_a_nan_loss_still_stops_a_float16_run():
    def loss_fn(model, batch):
        return F.cross_entropy(model(batch[0]), batch[1]) * float("nan")

    trainer = Trainer(tiny_gpt(), batches(), config=config(max_steps=3), loss_fn=loss_fn, log=None)
    with pytest.raises(NonFiniteError, match="training diverged at step 1: the loss is nan"):
        trainer.fit()


def test_the_scaler_state_is_checkpointed_and_a_resumed_run_matches_an_uninterrupted_one(tmp_path):
    def run(out, steps, resume=False):
        trainer = Trainer(tiny_gpt(), batches(), config=config(max_steps=steps, out_dir=str(out)), log=None)
        trainer.scaler.growth_interval = 2
        if resume:
            trainer.resume()
        trainer.fit()
        return trainer

    full = run(tmp_path / "full", 5)
    cut = run(tmp_path / "cut", 3)
    saved = read_checkpoint_metadata(tmp_path / "cut")["grad_scaler"]
    assert saved["scale"] == 2.0 ** 17 and saved["good_steps"] == 1 and saved["growth_interval"] == 2
    resumed = run(tmp_path / "cut", 5, resume=True)
    assert resumed.scaler.state_dict() == full.scaler.state_dict()
    assert cut.step_losses + resumed.step_losses == full.step_losses  # bit for bit


def test_train_config_refuses_an_unknown_dtype():
    with pytest.raises(ValueError, match="dtype must be one of 'float32', 'float16', got 'bfloat16'"):
        TrainConfig(dtype="bfloat16")


def cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "examples" / "pretrain.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)


def test_pretrain_trains_in_float16_end_to_end(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(topics["for"] + topics["while"], encoding="utf-8")
    result = cli("--data", corpus, "--config", "cpu-tiny", "--context-length", "16", "--batch-size", "2",
                 "--vocab-size", "300", "--eval-batches", "1", "--sample-tokens", "3", "--max-steps", "3",
                 "--dtype", "fp16", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "done: 3 steps" in result.stdout
    assert "float16: final loss scale 65536, 0 steps skipped for overflowing gradients" in result.stdout
    saved = read_checkpoint_metadata(tmp_path / "out")
    assert saved["metadata"]["args"]["dtype"] == "float16" and saved["train_config"]["dtype"] == "float16"
    assert saved["grad_scaler"]["scale"] == 2.0 ** 16


@pytest.mark.parametrize("value, words", [("bf16", "bfloat16 is not supported yet"),
                                          ("float64", "must be float32 or float16, got 'float64'")])
def test_a_bad_dtype_is_one_error_line(value, words, tmp_path):
    assert_clean_error(cli("--dtype", value, "--out", tmp_path / "out"), "argument --dtype:", words)


class OtherRankOverflows(Communicator):
    """Rank 0 of two, the other rank simulated: it holds the same gradients and losses as this one
    (sums double, means are unchanged), except that its float16 gradients overflow at step `at_step`,
    which it reports through the "max" reduction of `any_` while that step's gradients are pending."""

    def __init__(self, at_step):
        super().__init__(LaunchInfo(rank=0, size=2, local_rank=0))
        self.at_step, self.trainer = at_step, None

    def allreduce_(self, array, op="sum"):
        if op == "sum":
            array *= 2
        elif op == "max":
            pending = any(p.grad is not None for p in self.trainer.model.parameters())
            if pending and self.trainer.step + 1 == self.at_step:
                array[...] = 1
        return array


def test_the_ranks_agree_to_skip_when_another_ranks_gradients_overflowed():
    comm = OtherRankOverflows(at_step=2)
    trainer = Trainer(tiny_gpt(), batches(), config=config(max_steps=3, grad_accum_steps=2), comm=comm, log=None)
    comm.trainer = trainer
    trainer.fit()
    assert trainer.skipped_steps == [2]  # this rank's own gradients were finite
    assert trainer.scaler.scale_value == 2.0 ** 15 and trainer.scaler.skipped_steps == 1
