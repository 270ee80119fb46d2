"""Modules: registration and names, state dicts, modes, devices, seeded initialisation, whole-module
gradients against finite differences, and a small network that learns a real function."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autograd.functional as F
from autograd import Tensor, backend, nn
from autograd.grad_check import check_gradients
from autograd.optim import AdamW


class TinyLM(nn.Module):
    """Embedding -> MLP -> LayerNorm -> head tied to the embedding: every layer type, and a tied weight."""

    def __init__(self, vocab=11, dim=6, rng=None, p=0.0):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, rng=rng)
        self.blocks = nn.ModuleList([nn.Linear(dim, 2 * dim, rng=rng), nn.Linear(2 * dim, dim, rng=rng)])
        self.drop = nn.Dropout(p, seed=3)
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False, rng=rng)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        x = self.emb(ids)  # (B, T) -> (B, T, C)
        x = F.gelu(self.blocks[0](x))  # (B, T, C) -> (B, T, 2C)
        x = self.drop(self.blocks[1](x))  # (B, T, 2C) -> (B, T, C)
        return self.head(self.ln(x))  # (B, T, C) -> (B, T, V)


def tiny(seed=0, **kw):
    return TinyLM(rng=np.random.default_rng(seed), **kw)


# ---------------------------------------------------------------------------------------------------
# Registration, names, counting


def test_named_parameters_are_dotted_in_registration_order_and_tied_once():
    m = tiny()
    names = [n for n, _ in m.named_parameters()]
    assert names == [
        "emb.weight", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias", "ln.weight", "ln.bias",
    ]
    assert list(m.state_dict()) == names + ["head.weight"]  # the state dict keeps every name
    assert m.state_dict()["head.weight"] is m.state_dict()["emb.weight"]
    assert len(list(m.parameters())) == 7


def test_parameter_counts_count_tied_weights_once_and_follow_freezing():
    m = tiny(vocab=11, dim=6)
    total = 11 * 6 + (6 * 12 + 12) + (12 * 6 + 6) + 6 + 6
    assert m.num_parameters() == total
    assert m.num_parameters(trainable=True) == total
    m.emb.requires_grad_(False)
    assert m.num_parameters(trainable=True) == total - 66
    m.requires_grad_(False)
    assert m.num_parameters(trainable=True) == 0 and m.num_parameters() == total


def test_repr_prints_the_tree():
    m = nn.Sequential(nn.Linear(3, 4, rng=np.random.default_rng(0)), nn.GELU(), nn.Dropout(0.1))
    assert repr(m) == (
        "Sequential(\n"
        "  (0): Linear(in_features=3, out_features=4, bias=True)\n"
        "  (1): GELU()\n"
        "  (2): Dropout(p=0.1)\n"
        ")"
    )
    text = repr(tiny())
    assert "  (emb): Embedding(11, 6)\n" in text
    assert "  (blocks): ModuleList(\n    (0): Linear(in_features=6, out_features=12, bias=True)\n" in text
    assert "  (ln): LayerNorm((6,), eps=1e-05)\n" in text


def test_assignment_rules():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(2, np.float32))  # before super().__init__()

    with pytest.raises(AttributeError, match="super"):
        Bad()
    lin = nn.Linear(2, 3)
    with pytest.raises(TypeError, match="weight"):
        lin.weight = Tensor(np.zeros((3, 2), np.float32))
    lin.bias = None  # dropping a parameter is allowed
    assert [n for n, _ in lin.named_parameters()] == ["weight"]
    assert lin(Tensor(np.ones((1, 2), np.float32))).shape == (1, 3)


def test_replacing_a_submodule_keeps_its_place():
    m = tiny()
    m.blocks[0] = nn.Linear(6, 12, bias=False)
    assert [n for n, _ in m.named_parameters()][:3] == ["emb.weight", "blocks.0.weight", "blocks.1.weight"]


def test_ops_on_a_parameter_give_plain_tensors():
    p = nn.Parameter(np.ones(3, np.float32))
    assert p.requires_grad and isinstance(p, Tensor)
    assert type(p * 2.0) is Tensor and type(F.gelu(p)) is Tensor


def test_containers():
    rng = np.random.default_rng(0)
    layers = nn.ModuleList([nn.Linear(2, 2, rng=rng) for _ in range(3)])
    layers.append(nn.Linear(2, 2, rng=rng))
    assert len(layers) == 4 and isinstance(layers[-1], nn.Linear) and len(layers[1:3]) == 2
    assert [n for n, _ in layers.named_parameters()][-2:] == ["3.weight", "3.bias"]
    seq = nn.Sequential(*layers)
    x = Tensor(np.ones((5, 2), np.float32))
    expected = x
    for layer in layers:
        expected = layer(expected)
    np.testing.assert_array_equal(seq(x).numpy(), expected.numpy())
    assert len(seq) == 4 and seq[0] is layers[0] and list(seq) == list(layers)


def test_buffers_are_in_the_state_dict_and_move_with_the_module():
    m = nn.Linear(2, 2)
    m.register_buffer("mask", np.tril(np.ones((2, 2), np.float32)))
    m.register_buffer("cache", np.zeros(3, np.float32), persistent=False)
    assert list(m.state_dict()) == ["weight", "bias", "mask"]
    m.to("strict")
    assert m.mask.device == "strict" and m.cache.device == "strict"


# ---------------------------------------------------------------------------------------------------
# Initialisation


def test_one_seed_gives_identical_parameters_and_another_seed_different_ones():
    a, b, c = tiny(seed=7), tiny(seed=7), tiny(seed=8)
    for (n, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, y)
        if not n.startswith("ln."):
            assert not np.array_equal(x, z), n


def test_pytorch_initialisation_ranges():
    lin = nn.Linear(400, 300, rng=np.random.default_rng(0))
    bound = 1 / np.sqrt(400)
    assert np.abs(lin.weight.numpy()).max() <= bound and np.abs(lin.weight.numpy()).max() > 0.95 * bound
    emb = nn.Embedding(1000, 64, rng=np.random.default_rng(0)).weight.numpy()
    assert abs(emb.mean()) < 0.01 and abs(emb.std() - 1) < 0.01
    ln = nn.LayerNorm(5)
    np.testing.assert_array_equal(ln.weight.numpy(), np.ones(5))
    np.testing.assert_array_equal(ln.bias.numpy(), np.zeros(5))


def test_apply_initialises_every_submodule():
    def zero_linear(m):
        if isinstance(m, nn.Linear):
            m.weight.data[...] = 0.0

    visited = []
    m = tiny().apply(zero_linear).apply(lambda mod: visited.append(type(mod).__name__))
    assert not m.blocks[0].weight.numpy().any() and not m.blocks[1].weight.numpy().any()
    assert visited[-1] == "TinyLM" and visited.count("Linear") == 3


# ---------------------------------------------------------------------------------------------------
# State dicts


def test_state_dict_round_trip_is_bit_exact_and_in_place():
    src, dst = tiny(seed=1), tiny(seed=2)
    ids_before = {n: id(p) for n, p in dst.named_parameters()}
    snapshot = {k: v.copy() for k, v in src.state_dict().items()}
    missing, unexpected = dst.load_state_dict(snapshot)
    assert missing == [] and unexpected == []
    for k, v in dst.state_dict().items():
        assert v.tobytes() == snapshot[k].tobytes(), k
    assert {n: id(p) for n, p in dst.named_parameters()} == ids_before
    assert dst.head.weight is dst.emb.weight


def test_state_dict_from_host_loads_onto_the_device():
    src, dst = tiny(seed=1), tiny(seed=2).to("strict")
    dst.load_state_dict(src.state_dict())
    for k, v in dst.state_dict().items():
        assert backend.device_of(v) == "strict"
        assert backend.to_host(v).tobytes() == src.state_dict()[k].tobytes()


def test_load_state_dict_names_every_problem():
    m = tiny()
    state = {k: v.copy() for k, v in m.state_dict().items()}
    del state["ln.bias"]
    state["blocks.0.weight"] = np.zeros((3, 3), np.float32)
    state["blocks.1.bias"] = state["blocks.1.bias"].astype(np.float64)
    state["extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(nn.StateDictError) as info:
        m.load_state_dict(state)
    msg = str(info.value)
    assert "blocks.0.weight: expected shape (12, 6), got (3, 3)" in msg
    assert "blocks.1.bias: expected dtype float32, got float64" in msg
    assert "missing keys: ln.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_load_state_dict_not_strict_reports_keys_but_still_refuses_bad_shapes():
    m = tiny()
    state = {k: v.copy() for k, v in m.state_dict().items() if k != "ln.bias"}
    state["extra"] = np.zeros(1, np.float32)
    assert m.load_state_dict(state, strict=False) == (["ln.bias"], ["extra"])
    state["ln.weight"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match=r"ln.weight: expected shape \(6,\), got \(7,\)"):
        m.load_state_dict(state, strict=False)


# ---------------------------------------------------------------------------------------------------
# Modes, freezing, devices, dropout


def test_train_eval_reach_every_module_and_dropout_is_identity_in_eval():
    m = tiny(p=0.5)
    x = Tensor(np.ones((4, 8), np.float32))
    assert all(mod.training for mod in m.modules())
    m.eval()
    assert not any(mod.training for mod in m.modules())
    assert m.drop(x) is x
    m.train()
    y = m.drop(x).numpy()
    assert set(np.unique(y)) <= {0.0, 2.0} and 0 < (y == 0).sum() < y.size


def test_dropout_is_reproducible_and_its_state_restores():
    x = Tensor(np.ones((64,), np.float32))
    a, b = nn.Dropout(0.5, seed=11), nn.Dropout(0.5, seed=11)
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    model = nn.Sequential(nn.Dropout(0.5, seed=1), nn.Dropout(0.5, seed=2))
    model(x)
    states = model.rng_states()
    assert set(states) == {"0", "1"}
    expected = model(x).numpy()
    fresh = nn.Sequential(nn.Dropout(0.5, seed=1), nn.Dropout(0.5, seed=2))
    fresh.set_rng_states(states)
    np.testing.assert_array_equal(fresh(x).numpy(), expected)


def test_freezing_leaves_frozen_gradients_empty():
    m = tiny()
    m.emb.requires_grad_(False)
    F.cross_entropy(m(np.array([[1, 2, 3]])), np.array([[2, 3, 4]])).backward()
    assert m.emb.weight.grad is None
    assert m.blocks[0].weight.grad is not None and m.ln.bias.grad is not None


def test_zero_grad():
    m = tiny()
    F.cross_entropy(m(np.array([[1, 2]])), np.array([[2, 3]])).backward()
    m.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_to_moves_in_place_and_keeps_identities():
    m = tiny()
    params = list(m.parameters())
    before = m(np.array([[1, 2, 3]])).numpy()
    assert m.to("strict") is m
    assert list(m.parameters()) == params and all(p.device == "strict" for p in params)
    assert backend.device_of(m.emb.weight.data) == "strict" and m.head.weight is m.emb.weight
    out = m(np.array([[1, 2, 3]]))
    assert out.device == "strict"
    np.testing.assert_array_equal(out.numpy(), before)
    m.to("cpu")
    assert all(p.device == "cpu" and isinstance(p.data, np.ndarray) for p in params)


def test_functional_call_substitutes_and_restores():
    lin = nn.Linear(2, 3, rng=np.random.default_rng(0))
    w = Tensor(np.ones((3, 2), np.float32))
    out = nn.functional_call(lin, {"weight": w, "bias": Tensor(np.zeros(3, np.float32))}, np.ones((1, 2), np.float32))
    np.testing.assert_array_equal(out.numpy(), [[2.0, 2.0, 2.0]])
    assert isinstance(lin.weight, nn.Parameter) and lin.weight is not w


# ---------------------------------------------------------------------------------------------------
# Whole-module gradients against finite differences (float64 inputs swapped in with functional_call)

dims = st.integers(1, 4)
grad_devices = pytest.mark.parametrize("device", ["cpu", "strict"])


@grad_devices
@given(batch=dims, n_in=dims, n_out=dims, seed=st.integers(0, 2**16), bias=st.booleans())
def test_linear_gradients(device, batch, n_in, n_out, seed, bias):
    rng = np.random.default_rng(seed)
    lin = nn.Linear(n_in, n_out, bias=bias)
    x, w, b = rng.standard_normal((batch, n_in)), rng.standard_normal((n_out, n_in)), rng.standard_normal(n_out)
    if bias:
        check_gradients(lambda x, w, b: nn.functional_call(lin, {"weight": w, "bias": b}, x), x, w, b, device=device)
    else:
        check_gradients(lambda x, w: nn.functional_call(lin, {"weight": w}, x), x, w, device=device)


@grad_devices
@given(batch=dims, c=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_layer_norm_gradients(device, batch, c, seed):
    rng = np.random.default_rng(seed)
    ln = nn.LayerNorm(c)
    x, w, b = rng.standard_normal((batch, 2, c)), rng.standard_normal(c), rng.standard_normal(c)
    check_gradients(lambda x, w, b: nn.functional_call(ln, {"weight": w, "bias": b}, x), x, w, b, device=device)


@grad_devices
@given(vocab=st.integers(1, 6), dim=dims, t=dims, seed=st.integers(0, 2**16))
def test_embedding_gradients(device, vocab, dim, t, seed):
    rng = np.random.default_rng(seed)
    emb = nn.Embedding(vocab, dim)
    ids = rng.integers(0, vocab, (2, t))  # repeated ids accumulate
    w = rng.standard_normal((vocab, dim))
    check_gradients(lambda w: nn.functional_call(emb, {"weight": w}, ids), w, device=device)


@grad_devices
@given(batch=dims, n_in=dims, hidden=dims, n_out=dims, seed=st.integers(0, 2**16))
def test_two_layer_mlp_gradients(device, batch, n_in, hidden, n_out, seed):
    rng = np.random.default_rng(seed)
    mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))
    names = [n for n, _ in mlp.named_parameters()]
    arrays = [rng.standard_normal(p.shape) for _, p in mlp.named_parameters()]

    def fn(x, *params):
        return nn.functional_call(mlp, dict(zip(names, params)), x)

    check_gradients(fn, rng.standard_normal((batch, n_in)), *arrays, device=device)


# ---------------------------------------------------------------------------------------------------
# Learning


def test_a_small_network_learns_sine():
    """A 1-32-32-1 GELU MLP fits sin on [-3, 3] to a mean squared error below 1e-3 in 400 AdamW steps."""
    rng = np.random.default_rng(0)
    net = nn.Sequential(
        nn.Linear(1, 32, rng=rng), nn.GELU(), nn.Linear(32, 32, rng=rng), nn.GELU(), nn.Linear(32, 1, rng=rng)
    )
    opt = AdamW(net.parameters(), lr=1e-2, weight_decay=0.0)
    x = np.linspace(-3, 3, 256, dtype=np.float32)[:, None]
    xs, ys = Tensor(x), Tensor(np.sin(x))
    first = None
    for _ in range(400):
        loss = ((net(xs) - ys) ** 2).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 0.1
    assert loss.item() < 1e-3


def test_a_module_without_forward_says_so():
    class Empty(nn.Module):
        pass

    with pytest.raises(TypeError, match=r"Empty does not define forward\(\)"):
        Empty()(1)
