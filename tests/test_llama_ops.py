"""The Llama family's ops (RMSNorm, rotary position embedding, SiLU and SwiGLU, grouped-query attention) and
DPO's log-sigmoid: each fused op against central finite differences on Hypothesis-drawn shapes and values,
on the host and on the strict simulated device, and against its reference composition in
autograd/reference.py (values and gradients); the rotary angles against transformers' where it is
installed; nothing becoming float64."""

import math
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import autograd.functional as F
import autograd.reference as R
from autograd import Tensor, backend, testing
from autograd.grad_check import check_gradients
from tests.conftest import DEVICES

on_devices = pytest.mark.parametrize("device", DEVICES)


def values(shape, lo=-2.0, hi=2.0):
    return hnp.arrays(np.float64, shape, elements=st.floats(lo, hi, allow_nan=False, width=64))


small_shape = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


def both(fused, reference, *arrays, device, **kw):
    """[(output, input gradients)] of the fused op and of its reference, on float32 copies of `arrays` on
    `device`, the same random upstream gradient for both."""
    results = []
    for fn in (fused, reference):
        ts = [Tensor(a.astype(np.float32), requires_grad=True, device=device) for a in arrays]
        y = fn(*ts, **kw)
        weights = Tensor(np.random.default_rng(0).standard_normal(y.shape).astype(np.float32), device=device)
        (y * weights).sum().backward()
        assert y.dtype == np.float32 and all(t.grad.dtype == np.float32 for t in ts)
        results.append((y.numpy(), [Tensor(t.grad).numpy() for t in ts]))
    return results


def assert_same(results, tol=1e-5):
    (y1, g1), (y2, g2) = results
    np.testing.assert_allclose(y1, y2, rtol=tol, atol=tol)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------------
# RMSNorm


@on_devices
@given(data=st.data(), shape=small_shape, weight=st.booleans())
def test_rms_norm(device, data, shape, weight):
    x = data.draw(values(shape)) + 0.5  # rows away from all-zero, where 1/rms is steep
    if weight:
        w = data.draw(values(shape[-1:]))
        check_gradients(lambda x, w: F.rms_norm(x, w, eps=1e-5), x, w, device=device, atol=1e-4)
    else:
        check_gradients(lambda x: F.rms_norm(x), x, device=device, atol=1e-4)


@on_devices
@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(1, 8)),
       seed=st.integers(0, 2**16), weight=st.booleans())
def test_rms_norm_equals_its_reference(device, shape, seed, weight):
    """Over the last axis of any shape: (B, T, C) hidden states, or (B, H, T, D) heads (Qwen3's QK-norm)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3
    if weight:
        w = rng.standard_normal(shape[-1])
        assert_same(both(F.rms_norm, R.rms_norm, x, w, device=device, eps=1e-5), tol=1e-4)
    else:
        assert_same(both(F.rms_norm, R.rms_norm, x, device=device), tol=1e-4)


def test_rms_norm_known_value_and_bad_weight():
    """[3, 4]: mean square 12.5, so y = [3, 4] / sqrt(12.5) * w."""
    y = F.rms_norm(Tensor([[3.0, 4.0]]), Tensor([1.0, 2.0]), eps=0.0)
    np.testing.assert_allclose(y.numpy(), [[3 / 12.5**0.5, 8 / 12.5**0.5]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"rms_norm: weight has shape \(3,\), expected \(2,\)"):
        F.rms_norm(Tensor([[3.0, 4.0]]), Tensor([1.0, 2.0, 3.0]))


# ---------------------------------------------------------------------------------------------------
# Rotary position embedding


@on_devices
@given(data=st.data(), b=st.integers(1, 2), h=st.integers(1, 2), t=st.integers(1, 4), half=st.integers(1, 3),
       start=st.integers(0, 5), base=st.sampled_from([10000.0, 1e5, 5e5]))
def test_rope(device, data, b, h, t, half, start, base):
    """The rows for positions start..start+T, as a caller with a KV cache passes them."""
    d = 2 * half
    cos, sin = (a[start:start + t] for a in F.rope_cos_sin(d, start + t, base=base))
    x = data.draw(values((b, h, t, d)))
    check_gradients(lambda x: F.rope(x, cos, sin), x, device=device)


@on_devices
@given(b=st.integers(1, 2), h=st.integers(1, 3), t=st.integers(1, 5), half=st.integers(1, 4),
       start=st.integers(0, 50), seed=st.integers(0, 2**16))
def test_rope_equals_its_reference(device, b, h, t, half, start, seed):
    d = 2 * half
    cos, sin = F.rope_cos_sin(d, np.arange(start, start + t), xp=backend.xp_for(device))
    x = np.random.default_rng(seed).standard_normal((b, h, t, d))
    assert_same(both(lambda x: F.rope(x, cos, sin), lambda x: R.rope(x, cos, sin), x, device=device))


def test_rope_rotates_each_pair_of_features_by_its_angle():
    """Feature i and feature i + D/2 form one 2-D vector, turned by the angle p * inv_freq[i]: written
    out here with a rotation matrix, pair by pair."""
    d, t = 6, 5
    x = np.random.default_rng(0).standard_normal((1, 2, t, d)).astype(np.float32)
    cos, sin = F.rope_cos_sin(d, t, base=100.0)
    y = F.rope(Tensor(x), cos, sin).numpy()
    inv_freq = 100.0 ** -(np.arange(0, d, 2) / d)
    for p in range(t):
        for i in range(d // 2):
            a = p * inv_freq[i]
            turn = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            expected = turn @ np.stack([x[0, :, p, i], x[0, :, p, i + d // 2]])  # (2, 2) @ (2, heads)
            np.testing.assert_allclose(np.stack([y[0, :, p, i], y[0, :, p, i + d // 2]]), expected, rtol=1e-5, atol=1e-6)


def test_rope_scores_depend_only_on_the_distance():
    """q . k after RoPE at positions (m, n) equals the same q . k at positions (m + s, n + s)."""
    d = 16
    rng = np.random.default_rng(1)
    q, k = (rng.standard_normal((1, 1, 1, d)).astype(np.float32) for _ in range(2))
    cos, sin = F.rope_cos_sin(d, 64, base=10000.0)

    def score(m, n):
        qm = F.rope(Tensor(q), cos[m:m + 1], sin[m:m + 1]).numpy()
        kn = F.rope(Tensor(k), cos[n:n + 1], sin[n:n + 1]).numpy()
        return float((qm * kn).sum())

    for m, n, s in [(3, 1, 10), (7, 7, 50), (0, 5, 33)]:
        assert score(m, n) == pytest.approx(score(m + s, n + s), rel=1e-4, abs=1e-5)


def test_rope_cos_sin_layout_positions_and_dtype():
    cos, sin = F.rope_cos_sin(8, 10, base=10000.0)
    assert cos.shape == sin.shape == (10, 8) and cos.dtype == sin.dtype == np.float32
    np.testing.assert_array_equal(cos[:, :4], cos[:, 4:])  # HF's cat((freqs, freqs), -1): the halves alike
    np.testing.assert_array_equal(cos[0], np.ones(8, np.float32))
    np.testing.assert_array_equal(sin[0], np.zeros(8, np.float32))
    offset = F.rope_cos_sin(8, np.arange(4, 7), base=10000.0)  # a KV cache's positions 4, 5, 6
    np.testing.assert_array_equal(offset[0], cos[4:7])
    np.testing.assert_array_equal(offset[1], sin[4:7])
    np.testing.assert_allclose(F.rope_inverse_frequencies(8, 10000.0), [1.0, 0.1, 0.01, 0.001], rtol=1e-7)
    on_strict = F.rope_cos_sin(8, 3, xp=backend.xp_for("strict"))[0]
    assert backend.device_of(on_strict) == "strict"


LLAMA32_SCALING = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}


def test_llama3_scaling_follows_the_formula():
    """Llama 3.2's frequencies from the formula in float64, written out independently: short waves kept,
    long ones divided by the factor, the band between blended."""
    d, base, sc = 64, 500000.0, LLAMA32_SCALING
    inv = base ** -(np.arange(0, d, 2) / d)
    wavelen = 2 * np.pi / inv
    low_wl, high_wl = 8192 / 1.0, 8192 / 4.0
    t = (8192 / wavelen - 1.0) / (4.0 - 1.0)
    expected = np.where(wavelen < high_wl, inv, np.where(wavelen > low_wl, inv / 32.0, (1 - t) * inv / 32.0 + t * inv))
    got = F.rope_inverse_frequencies(d, base, sc)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert (got[:10] == F.rope_inverse_frequencies(d, base)[:10]).all() and got[-1] == np.float32(inv[-1] / 32)
    np.testing.assert_array_equal(F.rope_inverse_frequencies(d, base, {"rope_type": "default"}),
                                  F.rope_inverse_frequencies(d, base))
    with pytest.raises(ValueError, match="unsupported RoPE scaling type 'yarn'"):
        F.rope_cos_sin(d, 4, base, scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="needs high_freq_factor"):
        F.rope_cos_sin(d, 4, base, scaling={"factor": 8.0, "low_freq_factor": 1.0,
                                             "original_max_position_embeddings": 8192})


@pytest.mark.parametrize("head_dim, base, scaling", [
    (64, 1e5, None),  # SmolLM2
    (64, 500000.0, LLAMA32_SCALING),  # Llama 3.2 1B
    (128, 500000.0, dict(LLAMA32_SCALING, factor=8.0)),  # Llama 3.1 8B
    (128, 1e6, None),  # Qwen3
    (32, 10000.0, None),
])
def test_rope_cos_sin_equals_transformers(head_dim, base, scaling):
    """transformers' LlamaRotaryEmbedding (float32 throughout) on the same configuration: inverse
    frequencies within one float32 ulp (torch's float32 power is off by one in rare entries), cos and sin
    within 1e-6 over 4,096 positions."""
    torch = pytest.importorskip("torch", reason='PyTorch is not installed (pip install -e ".[oracle]")')
    transformers = pytest.importorskip("transformers", reason='transformers is not installed (".[oracle]")')
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    if int(transformers.__version__.split(".")[0]) >= 5:  # one dict, rope_parameters, since transformers 5
        rope = {"rope_parameters": dict(scaling or {"rope_type": "default"}, rope_theta=base)}
    else:
        rope = {"rope_theta": base, "rope_scaling": scaling}
    config = transformers.LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                                      max_position_embeddings=131072, **rope)
    emb = LlamaRotaryEmbedding(config)
    ours = F.rope_inverse_frequencies(head_dim, base, scaling)
    np.testing.assert_array_max_ulp(ours, emb.inv_freq.numpy(), maxulp=1)
    positions = np.arange(4096)
    cos, sin = emb(torch.zeros(1, dtype=torch.float32), torch.from_numpy(positions)[None])
    our_cos, our_sin = F.rope_cos_sin(head_dim, positions, base=base, scaling=scaling)
    np.testing.assert_allclose(our_cos, cos[0].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(our_sin, sin[0].numpy(), rtol=0, atol=1e-6)


def test_rope_checks_its_inputs_and_moves_cos_sin_to_the_device():
    cos, sin = F.rope_cos_sin(4, 3)
    with pytest.raises(ValueError, match="even last axis"):
        F.rope(Tensor(np.zeros((1, 1, 3, 3))), cos[:, :3], sin[:, :3])
    with pytest.raises(ValueError, match="do not broadcast"):
        F.rope(Tensor(np.zeros((1, 1, 2, 4))), cos, sin)
    with pytest.raises(ValueError, match="head_dim must be even"):
        F.rope_cos_sin(5, 3)
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 4)).astype(np.float32)
    on_strict = F.rope(Tensor(x, device="strict"), cos, sin)  # host cos and sin: moved to the device
    np.testing.assert_allclose(on_strict.numpy(), F.rope(Tensor(x), cos, sin).numpy(), rtol=1e-7)


# ---------------------------------------------------------------------------------------------------
# SiLU and SwiGLU


@on_devices
@given(data=st.data(), shape=small_shape)
def test_silu(device, data, shape):
    check_gradients(F.silu, data.draw(values(shape, -6, 6)), device=device)


@on_devices
@given(data=st.data(), shape=small_shape)
def test_swiglu(device, data, shape):
    check_gradients(F.swiglu, data.draw(values(shape, -6, 6)), data.draw(values(shape)), device=device)


@on_devices
@given(shape=small_shape, seed=st.integers(0, 2**16))
def test_silu_swiglu_log_sigmoid_equal_their_references(device, shape, seed):
    rng = np.random.default_rng(seed)
    x, up = rng.standard_normal(shape) * 4, rng.standard_normal(shape)
    assert_same(both(F.silu, R.silu, x, device=device))
    assert_same(both(F.swiglu, R.swiglu, x, up, device=device))
    assert_same(both(F.log_sigmoid, R.log_sigmoid, x, device=device))


def test_silu_swiglu_far_from_zero_are_exact_and_silent():
    """Far left silu is -0 with slope 0, far right x with slope 1, and nothing overflows."""
    x = np.array([-1e4, -100.0, -30.0, 30.0, 100.0, 1e4], dtype=np.float32)
    gate, up = Tensor(x, requires_grad=True), Tensor(np.full(6, 2.0, np.float32), requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = F.swiglu(gate, up)
        y.backward(np.ones(6, np.float32))
        ys = F.silu(Tensor(x))
    np.testing.assert_allclose(ys.numpy(), np.where(x > 0, x, 0.0), rtol=1e-6, atol=1e-11)
    np.testing.assert_allclose(y.numpy(), 2 * np.where(x > 0, x, 0.0), rtol=1e-6, atol=1e-11)
    np.testing.assert_allclose(gate.grad, np.where(x > 0, 2.0, 0.0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(up.grad, np.where(x > 0, x, 0.0), rtol=1e-6, atol=1e-11)
    with pytest.raises(ValueError, match="must have one shape"):
        F.swiglu(Tensor(np.zeros(3)), Tensor(np.zeros(4)))


# ---------------------------------------------------------------------------------------------------
# Log-sigmoid


@on_devices
@given(data=st.data(), shape=small_shape)
def test_log_sigmoid(device, data, shape):
    check_gradients(F.log_sigmoid, data.draw(values(shape, -30.0, 30.0)), device=device)


@on_devices
def test_log_sigmoid_is_finite_and_exact_far_out(device):
    """For |x| up to 1e4: log sigmoid(x) = x far left, -e^-x (to float32's digits) far right; the slope
    sigmoid(-x) is 1 far left and the tiny e^-x far right, not a rounded 0; at 0, -ln 2 and 1/2. The
    reference (Tensor ops) is finite there too."""
    x = np.array([-1e4, -100.0, -20.0, 0.0, 20.0, 50.0, 1e4], dtype=np.float32)
    expected = np.array([-1e4, -100.0, -20.0 - np.exp(-20.0), -np.log(2.0), -np.exp(-20.0), -np.exp(-50.0), 0.0])
    slope = np.array([1.0, 1.0, 1.0, 0.5, np.exp(-20.0), np.exp(-50.0), 0.0])
    for fn in (F.log_sigmoid, R.log_sigmoid):
        xt = Tensor(x, requires_grad=True, device=device)
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            y = fn(xt)
            y.backward(backend.xp_for(device).ones(7, dtype=np.float32))
        np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=0 if fn is F.log_sigmoid else 1e-7)
        if fn is F.log_sigmoid:
            np.testing.assert_allclose(Tensor(xt.grad).numpy(), slope, rtol=1e-6, atol=0)
        else:
            np.testing.assert_allclose(Tensor(xt.grad).numpy(), slope, rtol=1e-6, atol=1e-7)


def test_log_sigmoid_of_dpo_at_the_start_is_ln2():
    """A policy equal to its reference has margin 0: DPO's loss -log_sigmoid(beta * 0) is ln 2."""
    loss = -F.log_sigmoid(Tensor(np.zeros(4, np.float32)) * 0.1).mean()
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-7)


# ---------------------------------------------------------------------------------------------------
# Grouped-query attention


def attention_repeated(q, k, v, causal=True):
    """The book's grouped-query attention: each key/value head repeated for its group of query heads
    (`repeat_interleave`), then multi-head attention written out, the causal mask aligned bottom-right
    (query i at position Tk - Tq + i)."""
    groups = q.shape[1] // k.shape[1]
    k, v = R.repeat_kv(k, groups), R.repeat_kv(v, groups)  # (B, Hkv, Tk, D) -> (B, H, Tk, D)
    tq, tk, d = q.shape[2], k.shape[2], q.shape[3]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))  # (B, H, Tq, Tk)
    if causal:
        scores = scores.masked_fill(np.triu(np.ones((tq, tk), dtype=bool), k=tk - tq + 1), -math.inf)
    return R.softmax(scores) @ v


gqa_heads = st.tuples(st.integers(1, 2), st.sampled_from([1, 2, 3]))  # (Hkv, H / Hkv)


@on_devices
@given(data=st.data(), b=st.integers(1, 2), heads=gqa_heads, tq=st.integers(1, 4), extra=st.integers(0, 2),
       d=st.integers(1, 3), causal=st.booleans(), dropout=st.sampled_from([0.0, 0.3]), chunk=st.sampled_from([128, 1, 2]))
def test_grouped_query_attention(device, data, b, heads, tq, extra, d, causal, dropout, chunk):
    """`chunk`: causal attention in query chunks of that many rows (128, the default: one chunk here)."""
    hkv, groups = heads
    tk = tq + extra
    q = data.draw(values((b, hkv * groups, tq, d)))
    k, v = data.draw(values((b, hkv, tk, d))), data.draw(values((b, hkv, tk, d)))
    xp = backend.xp_for(device)

    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, causal=causal, dropout_p=dropout, generator=xp.random.default_rng(5))

    with mock.patch.object(F.attention, "ATTENTION_CHUNK", chunk):
        check_gradients(fn, q, k, v, device=device)


@on_devices
@given(b=st.integers(1, 2), heads=gqa_heads, tq=st.integers(1, 6), extra=st.integers(0, 3), d=st.integers(1, 4),
       causal=st.booleans(), chunk=st.sampled_from([128, 1, 2]), seed=st.integers(0, 2**16))
def test_grouped_query_attention_equals_repeated_kv(device, b, heads, tq, extra, d, causal, chunk, seed):
    """The fused op on (B, Hkv, Tk, D) keys and values equals the book's repeat-then-attend, values and
    gradients (dk and dv summed over each group), with Tq < Tk as with a KV cache."""
    hkv, groups = heads
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, hkv * groups, tq, d)) * 2
    k, v = (rng.standard_normal((b, hkv, tq + extra, d)) * 2 for _ in range(2))
    with mock.patch.object(F.attention, "ATTENTION_CHUNK", chunk):
        assert_same(both(F.scaled_dot_product_attention, attention_repeated, q, k, v, device=device, causal=causal))


@pytest.mark.parametrize("groups", [2, 3])
def test_grouped_query_attention_dropout_equals_repeated_kv(groups):
    """The grouped scores lie in memory as the repeated ones do, (B, Hkv, G, T, Tk) = (B, H, T, Tk), so a
    generator seeded alike draws the same dropout mask for both: equal values and gradients."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 2 * groups, 5, 4))
    k, v = (rng.standard_normal((2, 2, 7, 4)) for _ in range(2))

    def grouped(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.4, generator=np.random.default_rng(9))

    def repeated(q, k, v):
        k, v = R.repeat_kv(k, groups), R.repeat_kv(v, groups)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.4, generator=np.random.default_rng(9))

    assert_same(both(grouped, repeated, q, k, v, device="cpu"))


def test_grouped_query_attention_saves_no_copy_of_k_and_v_per_query_head():
    """What the op keeps for its backward: k and v themselves, (B, Hkv, Tk, D), and weights of
    (B, Hkv, G * Tq, Tk) (the group's rows stacked); nothing of shape (B, H, Tk, D)."""
    rng = np.random.default_rng(0)
    b, hkv, groups, tq, tk, d = 2, 2, 3, 4, 6, 5
    q = Tensor(rng.standard_normal((b, hkv * groups, tq, d)).astype(np.float32), requires_grad=True)
    k, v = (Tensor(rng.standard_normal((b, hkv, tk, d)).astype(np.float32), requires_grad=True) for _ in range(2))
    y = F.scaled_dot_product_attention(q, k, v, causal=True)
    ctx = y._ctx
    assert y.shape == (b, hkv * groups, tq, d)
    assert ctx.k is k.data and ctx.v is v.data and ctx.groups == groups
    assert np.shares_memory(ctx.q, q.data) and ctx.q.shape == (b, hkv, groups, tq, d)
    assert [a.shape for a in ctx.a + ctx.a_used] == [(b, hkv, groups * tq, tk)] * 2
    y.sum().backward()
    assert k.grad.shape == v.grad.shape == (b, hkv, tk, d) and q.grad.shape == q.shape


@pytest.mark.parametrize("tq, chunk", [(1, 128), (12, 4)])
def test_grouped_query_attention_memory_on_the_device_is_less_than_one_repeated_copy(tq, chunk):
    """On the strict device, which counts its bytes: 1 kv head of 4,096 cached keys for 8 query heads,
    decoding (Tq = 1) and a prefill in 3 query chunks, take less than one repeated copy of k (16 MiB),
    forward and backward together; the book's repeat-then-attend takes more than that."""
    rng = np.random.default_rng(0)
    b, h, hkv, tk, d = 1, 8, 1, 4096, 128
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((b, h, tq, d), (b, hkv, tk, d), (b, hkv, tk, d))]
    copy_bytes = b * h * tk * d * 4
    memory = testing.memory

    def peak(fn):
        q, k, v = (Tensor(a, requires_grad=True, device="strict") for a in arrays)
        g = Tensor(np.ones((b, h, tq, d), np.float32), device="strict").data
        start = memory.peak = memory.in_use
        fn(q, k, v).backward(g)
        return memory.peak - start

    with mock.patch.object(F.attention, "ATTENTION_CHUNK", chunk):
        assert len(F.attention._query_chunks(tq, tk, True)) == (1 if tq == 1 else 3)
        assert peak(F.scaled_dot_product_attention) < copy_bytes * (0.5 if tq == 1 else 1.0)
        assert peak(attention_repeated) > copy_bytes


def test_grouped_query_attention_checks_the_heads():
    q = Tensor(np.zeros((1, 4, 2, 3)))
    with pytest.raises(ValueError, match="number of heads that divides it"):
        F.scaled_dot_product_attention(q, Tensor(np.zeros((1, 3, 2, 3))), Tensor(np.zeros((1, 3, 2, 3))))
    with pytest.raises(ValueError, match="number of heads that divides it"):
        F.scaled_dot_product_attention(q, Tensor(np.zeros((1, 2, 2, 3))), Tensor(np.zeros((1, 1, 2, 3))))


# ---------------------------------------------------------------------------------------------------
# Large and strided inputs: the blocked passes, and the views a model hands the ops


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(backend, "HOST_THREADS", 2)


def test_row_blocks_on_two_threads_equal_one_call(two_threads):
    """Arrays past two blocks (2 * 65,536 entries) run in row blocks on two threads: the same numbers as
    the whole arrays in one call, which is what the strict device and a GPU run."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 200, 576), dtype=np.float32) * 2  # 400 rows: blocks of 113 rows
    up, g = (rng.standard_normal(x.shape, dtype=np.float32) for _ in range(2))
    w = rng.standard_normal(576, dtype=np.float32)

    def grads(fn, *arrays):
        ts = [Tensor(a, requires_grad=True) for a in arrays]
        y = fn(*ts)
        y.backward(g)
        return [y.data] + [t.grad for t in ts]

    for fn, arrays in ((lambda x, w: F.rms_norm(x, w, eps=1e-5), (x, w)), (F.silu, (x,)), (F.swiglu, (x, up))):
        blocked = grads(fn, *arrays)
        with mock.patch.object(backend, "HOST_THREADS", 1):
            whole = grads(fn, *arrays)
        for a, b in zip(blocked, whole):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)  # dw sums rows in another order


def test_views_as_a_model_makes_them_equal_the_references():
    """A fused gate/up projection's halves for swiglu, heads split from (B, T, H, D) for rms_norm (QK-norm),
    rope and grouped-query attention: strided views, not contiguous arrays."""
    rng = np.random.default_rng(2)
    b, t, hkv, groups, d = 2, 5, 2, 2, 8
    h = hkv * groups
    gate_up = rng.standard_normal((b, t, 2 * 12))
    assert_same(both(lambda a: F.swiglu(a[..., :12], a[..., 12:]), lambda a: R.swiglu(a[..., :12], a[..., 12:]),
                     gate_up, device="cpu"))
    cos, sin = F.rope_cos_sin(d, t, base=1e5)
    qkv = rng.standard_normal((b, t, (h + 2 * hkv) * d))
    w = rng.standard_normal(d)

    def attention(fns, x, w):
        rms_norm, rope, attend = fns
        q = x[..., :h * d].reshape(b, t, h, d)  # (B, T, H, D)
        k = x[..., h * d:(h + hkv) * d].reshape(b, t, hkv, d)
        v = x[..., (h + hkv) * d:].reshape(b, t, hkv, d).transpose(1, 2)  # (B, Hkv, T, D)
        q = rope(rms_norm(q, w).transpose(1, 2), cos, sin)  # (B, H, T, D)
        k = rope(rms_norm(k, w).transpose(1, 2), cos, sin)
        return attend(q, k, v).transpose(1, 2).reshape(b, t, h * d)

    fused = (F.rms_norm, F.rope, F.scaled_dot_product_attention)
    reference = (R.rms_norm, R.rope, attention_repeated)
    assert_same(both(lambda x, w: attention(fused, x, w), lambda x, w: attention(reference, x, w), qkv, w, device="cpu"),
                tol=1e-4)


# ---------------------------------------------------------------------------------------------------
# Dtypes


def test_float32_stays_float32_through_the_llama_ops():
    rng = np.random.default_rng(0)
    f32 = lambda *s: Tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True)  # noqa: E731
    x, w, q, k = f32(2, 3, 4), f32(4), f32(1, 4, 3, 4), f32(1, 2, 5, 4)
    cos, sin = F.rope_cos_sin(4, 3, base=np.float64(10000.0))
    outs = [F.rms_norm(x, w, eps=np.float64(1e-5)), F.rms_norm(x), F.rope(q, cos, sin), F.silu(x), F.swiglu(x, x * 2),
            F.log_sigmoid(x), F.scaled_dot_product_attention(q, k, k, dropout_p=0.1),
            F.rope(q, cos.astype(np.float64), sin.astype(np.float64)),
            R.rms_norm(x, w), R.rope(q, cos, sin), R.silu(x), R.swiglu(x, x), R.log_sigmoid(x), R.repeat_kv(k, 2)]
    for out in outs:
        assert out.dtype == np.float32, out
        out.sum().backward()
    for t in (x, w, q, k):
        assert t.grad.dtype == np.float32
