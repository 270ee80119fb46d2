"""The reference path (autograd/reference.py, the book-shaped attention) against the fused ops: equal
values and gradients op by op and for the whole model, its KV cache, and the attention weights it shows."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autograd.functional as F
import autograd.reference as R
from autograd import Tensor, backend, no_grad
from tinygrad_llm.models.generate import generate
from tinygrad_llm.models.gpt import GPT
from tests.conftest import DEVICES, tiny_config

on_devices = pytest.mark.parametrize("device", DEVICES)


def both(fused, reference, *arrays, device, **kw):
    """(fused output, reference output, their input gradients) for float32 inputs on `device`."""
    results = []
    for fn in (fused, reference):
        ts = [Tensor(a.astype(np.float32), requires_grad=True, device=device) for a in arrays]
        y = fn(*ts, **kw)
        weights = Tensor(np.random.default_rng(0).standard_normal(y.shape).astype(np.float32), device=device)
        (y * weights).sum().backward()
        results.append((y.numpy(), [Tensor(t.grad).numpy() for t in ts]))
    return results


def assert_same(results, tol=1e-5):
    (y1, g1), (y2, g2) = results
    np.testing.assert_allclose(y1, y2, rtol=tol, atol=tol)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(2, 6))


@on_devices
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_softmax_gelu_layer_norm_equal_their_fused_ops(device, shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3
    assert_same(both(F.softmax, R.softmax, x, device=device))
    assert_same(both(F.gelu, R.gelu, x, device=device))
    w, b = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])
    assert_same(both(F.layer_norm, R.layer_norm, x, w, b, device=device), tol=1e-4)


@on_devices
@given(n=st.integers(1, 6), v=st.integers(2, 7), seed=st.integers(0, 2**16))
def test_cross_entropy_equals_the_fused_op(device, n, v, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((2, n, v)) * 4
    targets = rng.integers(0, v, (2, n))
    targets[0, 0] = -100  # ignored, in both
    tgt = backend.to_device(targets, device)
    assert_same(both(lambda x: F.cross_entropy(x, tgt), lambda x: R.cross_entropy(x, tgt), logits, device=device))


def models(**kw):
    cfg = tiny_config(97, 16, **kw)
    return GPT(cfg, seed=0), GPT(replace(cfg, fused=False), seed=0)


@on_devices
def test_the_model_runs_either_path_with_equal_logits_and_gradients(device):
    fused, ref = (m.to(device) for m in models())
    assert ref.config.fused is False and ref.h[0].ln_1.fused is False
    ids, targets = (np.random.default_rng(s).integers(0, 97, (2, 11)) for s in (0, 1))
    losses = []
    for m in (fused, ref):
        logits = m(ids)
        loss = F.cross_entropy(logits, targets)
        loss.backward()
        losses.append((logits.numpy(), loss.item()))
    np.testing.assert_allclose(losses[0][0], losses[1][0], rtol=1e-5, atol=1e-5)
    assert abs(losses[0][1] - losses[1][1]) < 1e-5
    for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
        np.testing.assert_allclose(Tensor(p.grad).numpy(), Tensor(q.grad).numpy(), rtol=1e-4, atol=1e-6, err_msg=name)


def test_reference_path_decodes_with_a_kv_cache():
    fused, ref = models()
    prompt = [[5, 17, 3]]
    with_cache = generate(ref, prompt, 10, use_cache=True)
    assert np.array_equal(with_cache, generate(ref, prompt, 10, use_cache=False))
    assert np.array_equal(with_cache, generate(fused, prompt, 10))


def test_reference_attention_calls_its_dropout_module():
    _, ref = models(drop_rate=0.5)
    ref.train()
    before = ref.h[0].attn.attn_dropout.get_rng_state()
    ref(np.array([[1, 2, 3, 4]]))
    assert ref.h[0].attn.attn_dropout.get_rng_state() != before  # the module drew its mask


def test_attention_weights_are_causal_rows_of_a_softmax():
    fused, ref = models()
    ids = np.array([[5, 17, 3, 9, 60, 2]])  # six tokens, as the book's "Your journey starts with one step"
    for m in (fused, ref):  # the fused model shows them too (through the reference attention)
        weights = m.attention_weights(ids)
        assert len(weights) == 2 and weights[0].shape == (1, 4, 6, 6) and weights[0].dtype == np.float32
        np.testing.assert_allclose(weights[1].sum(-1), 1.0, rtol=1e-6)
        assert np.all(np.triu(weights[0][0, 0], 1) == 0)  # no token sees a later one
        assert m.training and m.h[0].attn.attn_weights is None  # modes and flags restored
    # layer 0, head 0 by hand: softmax(q k^T / sqrt(d)) over the causal positions
    with no_grad():
        x = fused.wte(ids) + fused.wpe(np.arange(6))
        q, k, _ = np.split(fused.h[0].attn.c_attn(fused.h[0].ln_1(x)).numpy()[0], 3, axis=-1)
    s = q[:, :16] @ k[:, :16].T / 4.0 + np.triu(np.full((6, 6), -np.inf), 1)
    expected = np.exp(s - s.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(weights[0][0, 0], expected, rtol=1e-5, atol=1e-6)
