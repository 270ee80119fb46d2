"""LoRA: gradients against finite differences, no change at init, merging, freezing (no gradient, no
update, no optimizer state), the adapter file's round trip and its errors, and the parameter counts."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autograd.functional as F
from autograd import Tensor, backend, nn
from autograd.checkpoint import CheckpointError
from autograd.grad_check import check_gradients
from autograd.optim import AdamW
from tinygrad_llm.finetune.lora import LoRALinear, apply_lora, load_adapter, lora_layers, merge_lora, save_adapter
from tinygrad_llm.models.gpt import GPT, GPTConfig
from tinygrad_llm.training.trainer import param_groups
from tests import conftest
from tests.conftest import DEVICES

on_devices = pytest.mark.parametrize("device", DEVICES)  # cpu, strict, and cuda where there is a GPU

dims = st.integers(1, 4)


def tiny_gpt(seed=0, **kw):
    return conftest.tiny_gpt(97, 16, seed=seed, **kw)


def ids(seed=0, shape=(2, 7)):
    return np.random.default_rng(seed).integers(0, 97, shape)


def randomize_adapters(model, seed=1):
    """B starts at zero; give every adapter a non-zero update, as training would."""
    rng = np.random.default_rng(seed)
    for _, layer in lora_layers(model):
        for p in (layer.lora_A, layer.lora_B):
            p.data[...] = backend.to_device(rng.standard_normal(p.shape).astype(np.float32) * 0.1, p.device)


@on_devices
@given(batch=dims, n_in=dims, n_out=dims, rank=st.integers(1, 3), alpha=st.floats(0.5, 32),
       seed=st.integers(0, 2**16), bias=st.booleans())
def test_lora_linear_gradients(device, batch, n_in, n_out, rank, alpha, seed, bias):
    rng = np.random.default_rng(seed)
    layer = LoRALinear(nn.Linear(n_in, n_out, bias=bias), rank, alpha)
    x = rng.standard_normal((batch, 2, n_in))  # a leading batch axis and a sequence axis
    arrays = {"weight": rng.standard_normal((n_out, n_in)), "lora_A": rng.standard_normal((n_in, rank)),
              "lora_B": rng.standard_normal((rank, n_out))}
    if bias:
        arrays["bias"] = rng.standard_normal(n_out)
    names = list(arrays)
    check_gradients(lambda x, *ps: nn.functional_call(layer, dict(zip(names, ps)), x), x, *arrays.values(),
                    device=device)


@on_devices
@given(n_in=dims, n_out=dims, rank=st.integers(1, 3), seed=st.integers(0, 2**16), bias=st.booleans(),
       frozen=st.booleans())
def test_fused_op_equals_the_reference_path(device, n_in, n_out, rank, seed, bias, frozen):
    """The fast path (one fused op) and the Tensor-op formula give the same output and gradients."""
    rng = np.random.default_rng(seed)
    layer = LoRALinear(nn.Linear(n_in, n_out, bias=bias, rng=rng), rank, 4.0, rng=rng).to(device)
    layer.lora_B.data[...] = backend.to_device(rng.standard_normal((rank, n_out)).astype(np.float32), device)
    if not frozen:  # the base layer trainable too: every gradient of the op is exercised
        layer.requires_grad_(True)
    x_host = rng.standard_normal((2, 3, n_in)).astype(np.float32)
    results = []
    for forward in (layer.forward, layer.forward_reference):
        x = Tensor(x_host, requires_grad=True, device=device)
        y = forward(x)
        (y * y).sum().backward()
        results.append([y.numpy(), Tensor(x.grad).numpy()] +
                       [Tensor(p.grad).numpy() for p in layer.parameters() if p.requires_grad])
        layer.zero_grad()
    assert len(results[0]) == (2 + 3 + bias if not frozen else 2 + 2)  # y, x.grad, each trainable parameter
    for fused, reference in zip(*results):
        np.testing.assert_allclose(fused, reference, rtol=1e-5, atol=1e-5)


def test_lora_linear_is_the_formula_and_starts_as_the_base():
    rng = np.random.default_rng(0)
    base = nn.Linear(5, 3, rng=rng)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    before = base(Tensor(x)).numpy()
    layer = LoRALinear(base, rank=2, alpha=8, rng=rng)
    assert np.array_equal(layer(Tensor(x)).numpy(), before)  # B = 0: exactly the base's output
    bound = 1 / math.sqrt(5)
    assert np.all(np.abs(layer.lora_A.numpy()) <= bound) and layer.lora_A.numpy().std() > bound / 4
    layer.lora_B.data[...] = rng.standard_normal((2, 3)).astype(np.float32)
    W, b, A, B = base.weight.numpy(), base.bias.numpy(), layer.lora_A.numpy(), layer.lora_B.numpy()
    np.testing.assert_allclose(layer(Tensor(x)).numpy(), x @ W.T + b + (8 / 2) * (x @ A) @ B, rtol=1e-5, atol=1e-6)
    assert layer(Tensor(x)).dtype == np.float32


def test_bad_rank_and_alpha_are_clear_errors():
    with pytest.raises(ValueError, match="rank must be a positive integer, got 0"):
        LoRALinear(nn.Linear(4, 4), 0, 1.0)
    with pytest.raises(ValueError, match="alpha must be a positive number, got nan"):
        LoRALinear(nn.Linear(4, 4), 2, float("nan"))
    with pytest.raises(ValueError, match=r"match no Linear layer of GPT \(its Linear layers: h\.0\.attn\.c_attn"):
        apply_lora(tiny_gpt(), 2, 4, targets=["decoder.*"])


@on_devices
def test_wrapped_model_computes_what_the_base_computed(device):
    model = tiny_gpt().to(device)
    before = model(ids()).numpy()
    report = apply_lora(model, rank=4, alpha=8)
    assert np.array_equal(model(ids()).numpy(), before)
    assert report.wrapped == [f"h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert all(layer.lora_A.device == device for _, layer in lora_layers(model))


@on_devices
def test_merged_model_equals_the_adapted_one(device):
    model = tiny_gpt().to(device)
    apply_lora(model, rank=4, alpha=8)
    randomize_adapters(model)
    adapted = model(ids()).numpy()
    base_names = dict(model.named_parameters())
    merge_lora(model)
    assert not lora_layers(model) and all(isinstance(m, nn.Linear) for n, m in model.named_modules() if n.endswith("c_fc"))
    assert set(dict(model.named_parameters())) == {n for n in base_names if ".lora_" not in n}
    merged = model(ids()).numpy()
    assert not np.allclose(merged, tiny_gpt().to(device)(ids()).numpy(), atol=1e-3)  # the update is in the weights
    np.testing.assert_allclose(merged, adapted, rtol=1e-5, atol=1e-5)


def test_targets_by_group_and_pattern():
    model = tiny_gpt(tie_weights=False)
    assert apply_lora(model, 2, 4, targets=["attn"]).wrapped == ["h.0.attn.c_attn", "h.0.attn.c_proj",
                                                                  "h.1.attn.c_attn", "h.1.attn.c_proj"]
    assert apply_lora(tiny_gpt(tie_weights=False), 2, 4, targets=["head", "h.1.mlp.*"]).wrapped == [
        "h.1.mlp.c_fc", "h.1.mlp.c_proj", "lm_head"]
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(model, 2, 4)


def test_frozen_parameters_get_no_gradient_no_update_and_no_optimizer_state():
    model = tiny_gpt(tie_weights=False)
    model.score = nn.Linear(64, 2, rng=np.random.default_rng(0))  # a new head that stays fully trainable
    report = apply_lora(model, rank=2, alpha=4, targets=["attn", "mlp"], trainable=("score.*",))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"h.{i}.{m}.{ab}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                         "mlp.c_proj") for ab in ("lora_A", "lora_B")} | {"score.weight", "score.bias"}
    assert report.trainable == sum(p.size for p in model.parameters() if p.requires_grad)
    opt = AdamW(param_groups(model, 0.1), lr=1e-2)
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    for _ in range(2):
        loss = F.cross_entropy(model(ids()), ids(1))
        loss.backward()
        assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable - {"score.weight", "score.bias"}
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not np.array_equal(p.numpy(), before[n])}
    assert changed == trainable - {"score.weight", "score.bias"}  # the head is not on this loss's path
    params = dict(model.named_parameters())
    assert set(opt.state) == {id(params[n]) for n in changed}  # moments only where there were gradients
    assert not set(opt.state) & {id(p) for p in model.parameters() if not p.requires_grad}
    assert sum(int(p.size) for g in opt.param_groups for p in g["params"]) == report.trainable


def test_adapter_round_trip(tmp_path):
    model = tiny_gpt()
    apply_lora(model, rank=3, alpha=6, targets=["attn"])
    randomize_adapters(model)
    expected = model(ids()).numpy()
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    assert path.stat().st_size < 20_000  # A and B only: the base model's 0.2M parameters are not in it
    fresh = tiny_gpt()  # the same base
    report = load_adapter(fresh, path)
    assert report.wrapped == ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.1.attn.c_attn", "h.1.attn.c_proj"]
    assert report.trainable == 2 * 3 * ((64 + 192) + (64 + 64))  # 2 blocks, rank 3: c_attn and c_proj
    np.testing.assert_array_equal(fresh(ids()).numpy(), expected)
    assert (fresh.h[0].attn.c_attn.rank, fresh.h[0].attn.c_attn.alpha) == (3, 6.0)
    load_adapter(fresh, path)  # again, into the layers it already wrapped
    np.testing.assert_array_equal(fresh(ids()).numpy(), expected)


def test_adapter_on_the_wrong_base_is_a_clear_error(tmp_path):
    model = tiny_gpt()
    apply_lora(model, rank=2, alpha=4)
    path = save_adapter(model, tmp_path / "a.safetensors")
    wider = GPT(GPTConfig.preset("cpu-tiny", vocab_size=97, context_length=16, emb_dim=32, n_heads=4), seed=0)
    with pytest.raises(CheckpointError, match=r"wrong base model\?\):\n  h\.0\.attn\.c_attn: adapter for a \(64 -> 192\) "
                                              r"layer, the model's is \(32 -> 96\)"):
        load_adapter(wider, path)
    deeper = GPT(GPTConfig.preset("cpu-tiny", vocab_size=97, context_length=16, n_layers=1), seed=0)
    with pytest.raises(CheckpointError, match="h.1.attn.c_attn: the model has no Linear layer of that name"):
        load_adapter(deeper, path)
    other_rank = tiny_gpt()
    apply_lora(other_rank, rank=4, alpha=4)
    with pytest.raises(CheckpointError, match="the model's LoRA has rank 4, alpha 4; the adapter rank 2, alpha 4"):
        load_adapter(other_rank, path)
    with pytest.raises(CheckpointError, match="is not a LoRA adapter"):
        from autograd.checkpoint import save_checkpoint
        save_checkpoint(tmp_path / "other.safetensors", {"x": np.zeros(2, np.float32)}, {"step": 1})
        load_adapter(tiny_gpt(), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="no LoRA layers to save"):
        save_adapter(tiny_gpt(), tmp_path / "b.safetensors")


def test_export_of_a_lora_model_writes_merged_weights(tmp_path):
    model = tiny_gpt()
    apply_lora(model, rank=2, alpha=4)
    randomize_adapters(model)
    expected = model(ids()).numpy()
    model.save_pretrained(tmp_path / "m")  # what Trainer.fit exports at the end of a LoRA run
    loaded = GPT.from_pretrained(tmp_path / "m")
    assert not lora_layers(loaded)
    np.testing.assert_allclose(loaded(ids()).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_parameter_counts_of_gpt2_small_with_a_two_class_head():
    """The book's appendix E: 2,666,528 trainable at rank 16 with separate q, k, v layers. Ours fuses them
    into one c_attn (768 -> 2304), whose adapter is 768*16 + 16*2304 = 49,152 numbers instead of three
    times 768*16 + 16*768 = 73,728: 24,576 fewer per block, 294,912 over 12 blocks."""
    model = GPT(GPTConfig.preset("gpt2-small"), seed=0)
    model.score = nn.Linear(768, 2, rng=np.random.default_rng(0))
    report = apply_lora(model, rank=16, alpha=16)
    assert report.trainable == 2_666_528 - 12 * 24_576 == 2_371_616
    assert report.total == 124_439_808 + 768 * 2 + 2 + 2_371_616
