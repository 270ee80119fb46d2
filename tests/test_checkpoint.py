"""Checkpoints: safetensors files readable by other tools, atomic writes, exact resume of training,
and an error that names the file and the problem for every bad input."""

import json
import os
import struct

import numpy as np
import pytest
import safetensors.numpy

import autograd.functional as F
from autograd import Tensor, backend, checkpoint, nn
from autograd.checkpoint import CheckpointError, load_state, load_tensors, save_state, save_tensors
from autograd.optim import AdamW, LRScheduler, clip_grad_norm_, cosine_with_warmup


class TinyLM(nn.Module):
    def __init__(self, seed=0, vocab=13, dim=8):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.emb = nn.Embedding(vocab, dim, rng=rng)
        self.fc = nn.Linear(dim, dim, rng=rng)
        self.drop = nn.Dropout(0.2, seed=seed + 1)
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False, rng=rng)
        self.head.weight = self.emb.weight  # tied, as GPT-2

    def forward(self, ids):
        x = self.drop(F.gelu(self.fc(self.emb(ids))))  # (B, T) -> (B, T, C)
        return self.head(self.ln(x))  # (B, T, C) -> (B, T, V)


def make_training(device, seed=0):
    model = TinyLM(seed).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-2)
    sched = LRScheduler(opt, lambda s: cosine_with_warmup(s, max_lr=1e-2, total_steps=8, warmup_steps=2))
    return model, opt, sched


def batch(step):
    rng = np.random.default_rng(1000 + step)
    ids = rng.integers(0, 13, (2, 5))
    return ids, np.roll(ids, -1, axis=1)


def train(model, opt, sched, steps):
    for s in steps:
        ids, targets = batch(s)
        loss = F.cross_entropy(model(ids), targets)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()


def host_state(model):
    return {k: backend.to_host(v) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------
# The file


def test_save_and_load_checkpoint_round_trip(tmp_path):
    path = tmp_path / "a.safetensors"
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.array([1, 2], np.int64)}
    save_tensors(path, arrays, {"step": 3, "config": {"n": [1, 2]}})
    tensors, meta = load_tensors(path)
    assert meta == {"step": 3, "config": {"n": [1, 2]}}
    for k, v in arrays.items():
        assert tensors[k].dtype == v.dtype and tensors[k].tobytes() == v.tobytes()
    # another tool reads it with the plain safetensors API, and the header is the documented JSON
    assert set(safetensors.numpy.load_file(str(path))) == {"w", "ids"}
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert header["w"]["dtype"] == "F32" and header["w"]["shape"] == [2, 3]
    assert json.loads(header["__metadata__"]["tinygrad_llm"]) == meta


def test_the_earlier_names_of_save_and_load_tensors_still_work():
    from autograd import checkpoint
    from autograd.checkpoint import load_checkpoint, save_checkpoint

    assert (save_checkpoint, load_checkpoint) == (checkpoint.save_tensors, checkpoint.load_tensors)


def test_load_checkpoint_onto_a_device(tmp_path):
    path = tmp_path / "a.safetensors"
    save_tensors(path, {"w": Tensor(np.ones(3, np.float32), device="strict")})
    tensors, _ = load_tensors(path, device="strict")
    assert backend.device_of(tensors["w"]) == "strict"


def test_tied_parameters_are_stored_once_and_restored_tied(tmp_path):
    path = tmp_path / "m.safetensors"
    model = TinyLM(seed=1)
    save_state(path, model=model)
    keys = set(safetensors.numpy.load_file(str(path)))
    assert "model.emb.weight" in keys and "model.head.weight" not in keys
    fresh = TinyLM(seed=2)
    load_state(path, model=fresh)
    assert fresh.head.weight is fresh.emb.weight
    for k, v in host_state(fresh).items():
        assert v.tobytes() == host_state(model)[k].tobytes(), k


# ---------------------------------------------------------------------------------------------------
# Exact resume


@pytest.mark.parametrize("device", ["cpu", "strict"])
def test_resume_from_a_checkpoint_is_bit_exact(tmp_path, device):
    """N steps straight == k steps, save, load into fresh objects, N - k more (dropout on, two groups,
    a schedule, clipping)."""
    n, k = 6, 3
    model, opt, sched = make_training(device)
    train(model, opt, sched, range(n))
    straight = host_state(model)

    model, opt, sched = make_training(device)
    train(model, opt, sched, range(k))
    path = tmp_path / "resume.safetensors"
    save_state(path, model=model, optimizer=opt, scheduler=sched, extra={"step": k})

    model2, opt2, sched2 = make_training(device, seed=99)  # different initial values and dropout seed
    extra = load_state(path, model=model2, optimizer=opt2, scheduler=sched2)
    assert extra == {"step": k}
    assert all(p.device == device for p in model2.parameters())
    assert all(backend.device_of(s["exp_avg"]) == device for s in opt2.state.values())
    train(model2, opt2, sched2, range(k, n))
    resumed = host_state(model2)
    for name, v in straight.items():
        assert v.tobytes() == resumed[name].tobytes(), name


# ---------------------------------------------------------------------------------------------------
# Bad inputs


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_tensors(tmp_path / "nothing.safetensors")


def test_truncated_and_malformed_files(tmp_path):
    good = tmp_path / "good.safetensors"
    save_state(good, model=TinyLM())
    raw = good.read_bytes()
    cases = {
        "truncated": raw[: len(raw) - 10],
        "header_only": raw[:20],
        "garbage": b"this is not a checkpoint at all",
        "empty": b"",
        "bad_json": raw[:8] + b"{" * (len(raw) - 8),
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=f"checkpoint .*{name}.safetensors is corrupt or truncated"):
            load_state(path, model=TinyLM())
        assert isinstance(CheckpointError("x"), ValueError)


def test_wrong_shape_dtype_and_keys_name_the_file_and_key(tmp_path):
    model = TinyLM()
    state = {f"model.{k}": v for k, v in model.state_dict().items() if k != "head.weight"}
    meta = {"version": checkpoint.FORMAT_VERSION, "model_aliases": {"head.weight": "emb.weight"}}

    bad_shape = dict(state, **{"model.fc.weight": np.zeros((8, 9), np.float32)})
    save_tensors(tmp_path / "shape.safetensors", bad_shape, meta)
    with pytest.raises(ValueError, match=r"shape.safetensors.*\n.*fc.weight: expected shape \(8, 8\), got \(8, 9\)"):
        load_state(tmp_path / "shape.safetensors", model=TinyLM())

    bad_dtype = dict(state, **{"model.ln.bias": np.zeros(8, np.float16)})
    save_tensors(tmp_path / "dtype.safetensors", bad_dtype, meta)
    with pytest.raises(ValueError, match="ln.bias: expected dtype float32, got float16"):
        load_state(tmp_path / "dtype.safetensors", model=TinyLM())

    missing = {k: v for k, v in state.items() if k != "model.fc.bias"}
    save_tensors(tmp_path / "missing.safetensors", missing, meta)
    with pytest.raises(KeyError, match="missing keys: fc.bias"):
        load_state(tmp_path / "missing.safetensors", model=TinyLM())
    load_state(tmp_path / "missing.safetensors", model=TinyLM(), strict=False)

    save_tensors(tmp_path / "foreign.safetensors", {"x": np.zeros(1, np.float32)})
    with pytest.raises(CheckpointError, match="not written by save_state"):
        load_state(tmp_path / "foreign.safetensors", model=TinyLM())


def test_optimizer_state_that_does_not_fit(tmp_path):
    model, opt, sched = make_training("cpu")
    train(model, opt, sched, range(1))
    path = tmp_path / "opt.safetensors"
    save_state(path, model=model, optimizer=opt)
    small = AdamW(list(TinyLM().parameters())[:2])
    with pytest.raises(CheckpointError, match="opt.safetensors.*groups of sizes"):
        load_state(path, optimizer=small)
    with pytest.raises(CheckpointError, match="no scheduler state"):
        load_state(path, scheduler=sched)


# ---------------------------------------------------------------------------------------------------
# Atomic writes


def test_a_crash_mid_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    model = TinyLM(seed=1)
    save_state(path, model=model, extra={"step": 1})
    before = path.read_bytes()

    calls = []
    real_to_host = checkpoint.backend.to_host

    def crash(array):  # the header and the first tensor are written, then the process "dies"
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("power cut")
        return real_to_host(array)

    monkeypatch.setattr(checkpoint.backend, "to_host", crash)
    with pytest.raises(KeyboardInterrupt):
        save_state(path, model=TinyLM(seed=2), extra={"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]  # the temporary file is gone
    fresh = TinyLM(seed=3)
    assert load_state(path, model=fresh) == {"step": 1}
    assert host_state(fresh)["fc.weight"].tobytes() == host_state(model)["fc.weight"].tobytes()


def test_streaming_writer_files_read_back_with_the_safetensors_package(tmp_path):
    from autograd.checkpoint import write_safetensors

    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal((3, 5)).astype(np.float32), "ids": np.arange(7, dtype=np.int64),
              "half": rng.standard_normal(4).astype(np.float16), "mask": np.array([True, False])}
    write_safetensors(tmp_path / "a.safetensors", [(k, v, k == "w") for k, v in arrays.items()], {"note": "x"})
    back = safetensors.numpy.load_file(tmp_path / "a.safetensors")
    assert set(back) == set(arrays) and all(back[k].dtype == arrays[k].dtype for k in arrays)
    np.testing.assert_array_equal(back["w"], arrays["w"].T)  # stored transposed, as asked
    for k in ("ids", "half", "mask"):
        np.testing.assert_array_equal(back[k], arrays[k])
    with safetensors.safe_open(tmp_path / "a.safetensors", framework="numpy") as f:
        assert f.metadata() == {"note": "x"}


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from autograd.checkpoint import atomic_write, write_text

    path = tmp_path / "encoder.json"
    write_text(path, "old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write("new, half written")
            raise OSError("disk full")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["encoder.json"]
    write_text(path, "new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["encoder.json"]
    mask = os.umask(0o022)
    try:
        write_text(path, "shared")  # a new file's usual mode, not the temporary file's private 0600
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)
