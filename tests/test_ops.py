"""Every differentiable op against central finite differences, on Hypothesis-drawn shapes and values,
on the host and on the strict simulated device (and on a real GPU where there is one)."""

from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import autograd
import autograd.functional as F
from autograd import backend
from autograd.grad_check import check_gradients
from tests.conftest import DEVICES

on_devices = pytest.mark.parametrize("device", DEVICES)


def values(shape, lo=-2.0, hi=2.0):
    return hnp.arrays(np.float64, shape, elements=st.floats(lo, hi, allow_nan=False, width=64))


def spread(data, shape, gap=0.05):
    """Values whose entries differ by at least `gap`: no ties for max, no kinks hit by a finite difference."""
    n = int(np.prod(shape))
    perm = data.draw(st.permutations(range(n)))
    return (np.array(perm, dtype=np.float64) * gap - n * gap / 2).reshape(shape)


small_shape = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
two_broadcastable = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=0, max_side=3)


# ---------------------------------------------------------------------------------------------------
# Elementwise arithmetic with broadcasting


@on_devices
@given(data=st.data(), shapes=two_broadcastable, op=st.sampled_from(["add", "sub", "mul"]))
def test_binary_arithmetic(device, data, shapes, op):
    a = data.draw(values(shapes.input_shapes[0]))
    b = data.draw(values(shapes.input_shapes[1]))
    fn = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y}[op]
    check_gradients(fn, a, b, device=device)


@on_devices
@given(data=st.data(), shapes=two_broadcastable)
def test_div(device, data, shapes):
    a = data.draw(values(shapes.input_shapes[0]))
    b = data.draw(values(shapes.input_shapes[1], 0.5, 2.0)) * data.draw(st.sampled_from([-1.0, 1.0]))
    check_gradients(lambda x, y: x / y, a, b, device=device)


@on_devices
@given(data=st.data(), shape=small_shape, p=st.sampled_from([2, 3, 0.5, -1.5]))
def test_pow_scalar_and_neg(device, data, shape, p):
    a = data.draw(values(shape, 0.5, 2.0))
    check_gradients(lambda x: -(x**p), a, device=device)


@on_devices
@given(data=st.data(), shapes=two_broadcastable)
def test_pow_tensor_exponent(device, data, shapes):
    a = data.draw(values(shapes.input_shapes[0], 0.5, 2.0))
    b = data.draw(values(shapes.input_shapes[1], -2.0, 2.0))
    check_gradients(lambda x, y: x**y, a, b, device=device)


@on_devices
@given(data=st.data(), shape=small_shape, op=st.sampled_from(["exp", "log", "sqrt", "tanh", "relu", "sigmoid"]))
def test_unary(device, data, shape, op):
    if op in ("log", "sqrt"):
        a = data.draw(values(shape, 0.3, 3.0))
    elif op == "relu":
        a = spread(data, shape) + 0.0125  # never exactly at the kink
    else:
        a = data.draw(values(shape))
    check_gradients(lambda x: getattr(x, op)(), a, device=device)


@on_devices
@given(data=st.data(), shape=small_shape)
def test_sigmoid_far_from_zero(device, data, shape):
    """Both branches of the stable form: no overflow at -30 or 30, and the gradient still right there."""
    check_gradients(lambda x: x.sigmoid(), data.draw(values(shape, -30.0, 30.0)), device=device)


# ---------------------------------------------------------------------------------------------------
# Matmul


@on_devices
@given(
    data=st.data(),
    shapes=hnp.mutually_broadcastable_shapes(signature="(m?,n),(n,p?)->(m?,p?)", max_dims=4, max_side=3),
)
def test_matmul(device, data, shapes):
    """2-D, 1-D, batched and broadcast-batched operands, as NumPy's matmul allows them."""
    a = data.draw(values(shapes.input_shapes[0]))
    b = data.draw(values(shapes.input_shapes[1]))
    check_gradients(lambda x, y: x @ y, a, b, device=device)


# ---------------------------------------------------------------------------------------------------
# Reductions


def axis_strategy(ndim):
    single = st.integers(-ndim, ndim - 1)
    several = st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple)
    return st.one_of(st.none(), single, several)


@on_devices
@given(data=st.data(), shape=small_shape, op=st.sampled_from(["sum", "mean", "max", "var0", "var1"]), keepdims=st.booleans())
def test_reductions(device, data, shape, op, keepdims):
    axis = data.draw(axis_strategy(len(shape)))
    if op == "max":
        a = spread(data, shape)
        fn = lambda x: x.max(axis=axis, keepdims=keepdims)  # noqa: E731
    elif op.startswith("var"):
        a = data.draw(values(shape))
        correction = int(op[-1])
        reduced = np.prod([shape[i] for i in np.atleast_1d(np.arange(len(shape)) if axis is None else axis)])
        if reduced <= correction:
            return  # variance of one value with the unbiased correction is undefined
        fn = lambda x: x.var(axis=axis, keepdims=keepdims, correction=correction)  # noqa: E731
    else:
        a = data.draw(values(shape))
        fn = lambda x: getattr(x, op)(axis=axis, keepdims=keepdims)  # noqa: E731
    check_gradients(fn, a, device=device)


def test_max_splits_gradient_between_ties():
    x = autograd.Tensor([[1.0, 3.0, 3.0]], requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0.0, 0.5, 0.5]])


# ---------------------------------------------------------------------------------------------------
# Shape ops


@on_devices
@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=3))
def test_reshape_permute_transpose(device, data, shape):
    a = data.draw(values(shape))
    perm = data.draw(st.permutations(range(len(shape))))
    check_gradients(lambda x: x.permute(*perm).reshape(-1), a, device=device)
    if len(shape) >= 2:
        check_gradients(lambda x: x.transpose(0, -1) * 1.0, a, device=device)


@on_devices
@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3))
def test_expand(device, data, shape):
    src = tuple(1 if data.draw(st.booleans()) else n for n in shape)
    a = data.draw(values(src))
    check_gradients(lambda x: x.expand(2, *shape) * 1.0, a, device=device)


@on_devices
@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
def test_getitem_slices(device, data, shape):
    a = data.draw(values(shape))
    index = tuple(
        slice(data.draw(st.integers(0, n - 1)), None, data.draw(st.integers(1, 2))) for n in shape
    )
    check_gradients(lambda x: x[index], a, device=device)
    check_gradients(lambda x: x[..., None, 0], a, device=device)


@on_devices
@given(data=st.data(), n=st.integers(1, 5), m=st.integers(1, 3))
def test_getitem_integer_arrays_accumulate(device, data, n, m):
    a = data.draw(values((n, m)))
    idx = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8)))
    grads = check_gradients(lambda x: x[idx], a, device=device)
    assert grads[0].shape == (n, m)


@on_devices
def test_getitem_repeated_index_accumulates_exactly(device):
    x = autograd.Tensor(np.zeros(4), requires_grad=True, device=device)
    x[np.array([1, 1, 3])].sum().backward()
    np.testing.assert_array_equal(autograd.Tensor(x.grad).numpy(), [0.0, 2.0, 0.0, 1.0])


@on_devices
@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
def test_getitem_boolean_mask(device, data, shape):
    a = data.draw(values(shape))
    mask = data.draw(hnp.arrays(bool, shape))
    check_gradients(lambda x: x[backend.to_device(mask, device)], a, device=device)


@on_devices
@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=3), n=st.integers(1, 3))
def test_concatenate_stack_split(device, data, shape, n):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    arrays = [data.draw(values(shape)) for _ in range(n)]
    check_gradients(lambda *xs: autograd.concatenate(xs, axis=axis), *arrays, device=device)
    check_gradients(lambda *xs: autograd.stack(xs, axis=axis), *arrays, device=device)
    size = data.draw(st.integers(1, shape[axis]))
    check_gradients(lambda x: autograd.concatenate([p * float(i + 1) for i, p in enumerate(x.split(size, axis))], axis), arrays[0], device=device)


@on_devices
@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
def test_topk_values(device, data, shape):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    k = data.draw(st.integers(1, shape[axis]))
    a = spread(data, shape)  # no ties: the order of the k largest is unambiguous
    check_gradients(lambda x: x.topk(k, axis=axis)[0], a, device=device)


@on_devices
@given(data=st.data(), shape=hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=4), diagonal=st.integers(-2, 2))
def test_tril_triu(device, data, shape, diagonal):
    a = data.draw(values(shape))
    check_gradients(lambda x: autograd.tril(x, diagonal), a, device=device)
    check_gradients(lambda x: x.triu(diagonal), a, device=device)


@on_devices
@given(data=st.data(), shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3))
def test_unsqueeze_squeeze(device, data, shape):
    a = data.draw(values(shape))
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    check_gradients(lambda x: x.unsqueeze(axis) * 1.0, a, device=device)
    check_gradients(lambda x: x.unsqueeze(axis).squeeze(axis) * 1.0, a, device=device)
    check_gradients(lambda x: x.unsqueeze(0).unsqueeze(-1).squeeze() * 1.0, a, device=device)


@on_devices
@given(data=st.data(), shapes=two_broadcastable)
def test_where_and_masked_fill(device, data, shapes):
    a = data.draw(values(shapes.input_shapes[0]))
    b = data.draw(values(shapes.input_shapes[1]))
    cond = data.draw(hnp.arrays(bool, np.broadcast_shapes(a.shape, b.shape)))
    c = backend.to_device(cond, device)
    check_gradients(lambda x, y: autograd.where(c, x, y), a, b, device=device)
    check_gradients(lambda x, y: (x + y).masked_fill(c, -5.0), a, b, device=device)


def test_comparisons_are_not_differentiable():
    x = autograd.Tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x > 1.5
    assert y.dtype == bool and not y.requires_grad
    np.testing.assert_array_equal(y.numpy(), [False, True, True])
    np.testing.assert_array_equal((x <= 2.0).numpy(), [True, True, False])


# ---------------------------------------------------------------------------------------------------
# Fused ops: against finite differences


@on_devices
@given(data=st.data(), shape=small_shape, op=st.sampled_from(["softmax", "log_softmax"]))
def test_softmax_family(device, data, shape, op):
    a = data.draw(values(shape, -4, 4))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    check_gradients(lambda x: getattr(F, op)(x, axis=axis), a, device=device)


@on_devices
@given(data=st.data(), n=st.integers(1, 5), v=st.integers(2, 6), three_d=st.booleans())
def test_cross_entropy(device, data, n, v, three_d):
    shape = (2, n, v) if three_d else (n, v)
    logits = data.draw(values(shape, -4, 4))
    targets = np.array(data.draw(st.lists(st.integers(0, v - 1), min_size=int(np.prod(shape[:-1])), max_size=int(np.prod(shape[:-1])))))
    targets = targets.reshape(shape[:-1])
    ignore = data.draw(hnp.arrays(bool, targets.shape))
    targets[ignore] = -100
    check_gradients(lambda x: F.cross_entropy(x, targets), logits, device=device)


@on_devices
@given(data=st.data(), shape=small_shape, reduction=st.sampled_from(["mean", "sum", "none"]))
def test_binary_cross_entropy(device, data, shape, reduction):
    p = data.draw(values(shape, 0.05, 0.95))
    t = data.draw(values(shape, 0.0, 1.0))  # labels or soft targets: both inputs get a gradient
    check_gradients(lambda p, t: F.binary_cross_entropy(p, t, reduction=reduction), p, t, device=device)


@on_devices
@given(data=st.data(), shape=small_shape, reduction=st.sampled_from(["mean", "sum", "none"]))
def test_binary_cross_entropy_with_logits(device, data, shape, reduction):
    x = data.draw(values(shape, -20.0, 20.0))
    t = data.draw(values(shape, 0.0, 1.0))
    check_gradients(lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction=reduction), x, t, device=device)


@on_devices
@given(data=st.data(), shape=small_shape, affine=st.sampled_from(["both", "weight", "none"]))
def test_layer_norm(device, data, shape, affine):
    if shape[-1] < 2:
        shape = shape[:-1] + (2,)
    x = data.draw(values(shape))
    x = x + np.linspace(0, 1, shape[-1])  # rows with some spread: the derivative is steep at zero variance
    w = data.draw(values(shape[-1:]))
    b = data.draw(values(shape[-1:]))
    if affine == "both":
        check_gradients(lambda x, w, b: F.layer_norm(x, w, b), x, w, b, device=device, atol=1e-4)
    elif affine == "weight":
        check_gradients(lambda x, w: F.layer_norm(x, w), x, w, device=device, atol=1e-4)
    else:
        check_gradients(lambda x: F.layer_norm(x), x, device=device, atol=1e-4)


@on_devices
@given(data=st.data(), shape=small_shape)
def test_gelu(device, data, shape):
    check_gradients(F.gelu, data.draw(values(shape, -4, 4)), device=device)


def test_gelu_far_from_zero_is_exact_and_silent():
    """GELU is computed through exp(-2u), which overflows float32 below x = -9.4 unless it is clamped:
    far out it must still be x on the right and -0 on the left, with slopes 1 and 0, and no warning."""
    x = np.array([-1e4, -100.0, -12.0, 12.0, 100.0, 1e4], dtype=np.float32)
    xt = autograd.Tensor(x, requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # a warning would raise here
        y = F.gelu(xt)
        y.backward(np.ones_like(x))
    np.testing.assert_allclose(y.data, np.where(x > 0, x, 0.0), rtol=1e-7, atol=1e-30)
    np.testing.assert_allclose(xt.grad, np.where(x > 0, 1.0, 0.0), rtol=1e-7, atol=1e-20)


@on_devices
@given(data=st.data(), shape=small_shape, p=st.sampled_from([0.0, 0.1, 0.5]), seed=st.integers(0, 100))
def test_dropout(device, data, shape, p, seed):
    check_gradients(lambda x: F.dropout(x, p, training=True, seed=seed), data.draw(values(shape)), device=device)


@on_devices
@given(data=st.data(), v=st.integers(1, 6), c=st.integers(1, 4), ids_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=5))
def test_embedding(device, data, v, c, ids_shape):
    w = data.draw(values((v, c)))
    ids = data.draw(hnp.arrays(np.int64, ids_shape, elements=st.integers(0, v - 1)))
    check_gradients(lambda w: F.embedding(ids, w), w, device=device)


@on_devices
@given(data=st.data(), lead=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3), fin=st.integers(1, 4), fout=st.integers(1, 4), bias=st.booleans())
def test_linear(device, data, lead, fin, fout, bias):
    x = data.draw(values(lead + (fin,)))
    w = data.draw(values((fout, fin)))
    if bias:
        check_gradients(F.linear, x, w, data.draw(values((fout,))), device=device)
    else:
        check_gradients(F.linear, x, w, device=device)


@on_devices
@given(data=st.data(), b=st.integers(1, 2), h=st.integers(1, 2), tq=st.integers(1, 5), extra=st.integers(0, 2), d=st.integers(1, 3), causal=st.booleans(), dropout=st.sampled_from([0.0, 0.3]), chunk=st.sampled_from([128, 1, 2]))
def test_attention(device, data, b, h, tq, extra, d, causal, dropout, chunk):
    """`chunk`: causal attention in query chunks of that many rows (128, the default: one chunk here)."""
    tk = tq + extra
    q = data.draw(values((b, h, tq, d)))
    k = data.draw(values((b, h, tk, d)))
    v = data.draw(values((b, h, tk, d)))
    xp = backend.xp_for(device)

    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, causal=causal, dropout_p=dropout, generator=xp.random.default_rng(7))

    with mock.patch.object(F.attention, "ATTENTION_CHUNK", chunk):
        check_gradients(fn, q, k, v, device=device)


@on_devices
@given(data=st.data(), b=st.integers(1, 2), t=st.integers(1, 5), h=st.integers(1, 3), d=st.integers(1, 2), dropout=st.sampled_from([0.0, 0.3]), chunk=st.sampled_from([128, 1, 2]))
def test_multi_head_attention(device, data, b, t, h, d, dropout, chunk):
    qkv = data.draw(values((b, t, 3 * h * d)))
    xp = backend.xp_for(device)

    def fn(x):
        return F.multi_head_attention(x, h, dropout_p=dropout, generator=xp.random.default_rng(3))

    with mock.patch.object(F.attention, "ATTENTION_CHUNK", chunk):
        check_gradients(fn, qkv, device=device)


@pytest.mark.parametrize("t, extra, chunks", [(256, 0, 2), (300, 0, 2), (512, 0, 4), (256, 40, 2), (127, 0, 1)])
def test_causal_attention_in_query_chunks_equals_one_chunk(t, extra, chunks):
    """Chunks of queries that skip the keys above the diagonal give what the whole score matrix gives."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 3, t, 16), dtype=np.float32)
    k, v = (rng.standard_normal((2, 3, t + extra, 16), dtype=np.float32) for _ in range(2))
    g = rng.standard_normal(q.shape, dtype=np.float32)
    assert len(F.attention._query_chunks(t, t + extra, True)) == chunks and len(F.attention._query_chunks(t, t + extra, False)) == 1

    def run():
        ts = [autograd.Tensor(a, requires_grad=True) for a in (q, k, v)]
        y = F.scaled_dot_product_attention(*ts, causal=True)
        y.backward(g)
        return [y.data] + [a.grad for a in ts]

    chunked = run()
    with mock.patch.object(F.attention, "ATTENTION_CHUNK", 10**9):
        whole = run()
    for a, b in zip(chunked, whole):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Fused ops: against the same computation composed of basic ops


def _softmax_composed(x, axis=-1):
    e = (x - x.detach().max(axis=axis, keepdims=True)).exp()
    return e / e.sum(axis=axis, keepdims=True)


def _compare_with_composed(fused, composed, *arrays, atol=1e-9):
    ins1 = [autograd.Tensor(a, requires_grad=True) for a in arrays]
    ins2 = [autograd.Tensor(a, requires_grad=True) for a in arrays]
    out1, out2 = fused(*ins1), composed(*ins2)
    np.testing.assert_allclose(out1.numpy(), out2.numpy(), rtol=1e-7, atol=atol)
    w = np.random.default_rng(1).standard_normal(out1.shape)
    out1.backward(w)
    out2.backward(w)
    for t1, t2 in zip(ins1, ins2):
        np.testing.assert_allclose(t1.grad, t2.grad, rtol=1e-7, atol=atol)


@given(data=st.data(), shape=small_shape)
def test_fused_match_composed(data, shape):
    x = data.draw(values(shape, -3, 3)) + np.linspace(0, 1, shape[-1])
    c = shape[-1]
    w, b = data.draw(values((c,))), data.draw(values((c,)))
    _compare_with_composed(F.softmax, _softmax_composed, x)
    _compare_with_composed(F.log_softmax, lambda x: _softmax_composed(x).log(), x, atol=1e-7)

    def ln_composed(x, w, b):
        mu = x.mean(axis=-1, keepdims=True)
        return (x - mu) / (x.var(axis=-1, keepdims=True, correction=0) + 1e-5).sqrt() * w + b

    _compare_with_composed(F.layer_norm, ln_composed, x, w, b, atol=1e-7)

    def gelu_composed(x):
        return 0.5 * x * (1.0 + ((2.0 / np.pi) ** 0.5 * (x + 0.044715 * x**3)).tanh())

    _compare_with_composed(F.gelu, gelu_composed, x)
    wl = data.draw(values((3, c)))
    _compare_with_composed(F.linear, lambda x, w, b: x @ w.T + b, x, wl, data.draw(values((3,))))


@given(data=st.data(), n=st.integers(1, 6), v=st.integers(2, 7))
def test_cross_entropy_matches_composed(data, n, v):
    logits = data.draw(values((n, v), -5, 5))
    targets = np.array(data.draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n)))
    targets[0] = -100 if n > 1 else targets[0]
    keep = targets != -100

    def composed(x):
        picked = F.log_softmax(x)[np.arange(n)[keep], targets[keep]]
        return -picked.mean()

    _compare_with_composed(lambda x: F.cross_entropy(x, targets), composed, logits)


@given(data=st.data(), t=st.integers(1, 5), d=st.integers(1, 4))
def test_attention_matches_composed(data, t, d):
    q, k, v = (data.draw(values((2, 2, t, d))) for _ in range(3))
    mask = np.triu(np.ones((t, t), dtype=bool), 1)

    def composed(q, k, v):
        s = (q @ k.transpose(-2, -1)) * (1.0 / d**0.5)
        return _softmax_composed(s.masked_fill(mask, -1e9)) @ v

    _compare_with_composed(F.scaled_dot_product_attention, composed, q, k, v)


@given(data=st.data(), t=st.integers(1, 5), h=st.integers(1, 3), d=st.integers(1, 3))
def test_multi_head_attention_matches_split_heads(data, t, h, d):
    c = h * d
    qkv = data.draw(values((2, t, 3 * c)))

    def composed(x):
        heads = x.reshape(2, t, 3, h, d).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(heads[0], heads[1], heads[2])
        return y.permute(0, 2, 1, 3).reshape(2, t, c)

    _compare_with_composed(lambda x: F.multi_head_attention(x, h), composed, qkv)


@given(data=st.data(), shape=small_shape)
def test_binary_cross_entropy_with_logits_matches_sigmoid_then_bce(data, shape):
    x = data.draw(values(shape, -8, 8))
    t = data.draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([0.0, 1.0])))
    _compare_with_composed(lambda x: F.binary_cross_entropy_with_logits(x, t),
                           lambda x: F.binary_cross_entropy(x.sigmoid(), t), x, atol=1e-7)


@given(data=st.data(), v=st.integers(1, 6), c=st.integers(1, 4), n=st.integers(1, 8))
def test_embedding_matches_indexing(data, v, c, n):
    w = data.draw(values((v, c)))
    ids = np.array(data.draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n)))
    _compare_with_composed(lambda w: F.embedding(ids, w), lambda w: w[ids], w)


# ---------------------------------------------------------------------------------------------------
# Numerics and dtypes


def test_cross_entropy_finite_for_huge_logits():
    logits = autograd.Tensor(np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=np.float32), requires_grad=True)
    loss = F.cross_entropy(logits, np.array([0, 2]))
    loss.backward()
    assert np.isfinite(loss.item()) and np.isfinite(logits.grad).all()
    np.testing.assert_allclose(loss.item(), np.log(2) / 2, rtol=1e-5)


def test_cross_entropy_all_ignored_is_zero():
    logits = autograd.Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    loss = F.cross_entropy(logits, np.array([-100, -100]))
    loss.backward()
    assert loss.item() == 0.0 and not logits.grad.any()


def test_binary_cross_entropy_clamps_and_stays_finite():
    """p = 0 or 1 against the wrong label: PyTorch's clamp of each log at -100 gives 100, not inf; the
    logits form stays finite for huge logits."""
    p = autograd.Tensor([0.0, 1.0], requires_grad=True)
    loss = F.binary_cross_entropy(p, [1.0, 0.0], reduction="none")
    np.testing.assert_array_equal(loss.numpy(), [100.0, 100.0])
    loss.sum().backward()
    assert np.isfinite(p.grad).all()
    x = autograd.Tensor(np.array([1e4, -1e4, 0.0], dtype=np.float32), requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(x, [0.0, 1.0, 1.0], reduction="none")
    np.testing.assert_allclose(loss.numpy(), [1e4, 1e4, np.log(2)], rtol=1e-6)
    loss.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0, -1.0, -0.5])
    with pytest.raises(ValueError, match=r"targets of shape \(2,\) must have the input's shape \(3,\)"):
        F.binary_cross_entropy_with_logits(x, [0.0, 1.0])
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none'"):
        F.binary_cross_entropy(p, [1.0, 0.0], reduction="avg")


def test_cross_entropy_known_value():
    loss = F.cross_entropy(autograd.Tensor([[0.0, 0.0, 0.0, 0.0]]), [2])
    np.testing.assert_allclose(loss.item(), np.log(4), rtol=1e-6)


def test_float32_stays_float32_through_every_op():
    rng = np.random.default_rng(0)
    f32 = lambda *s: autograd.Tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True)  # noqa: E731
    x, w, b = f32(2, 3, 4), f32(4), f32(4)
    wl, q = f32(5, 4), f32(1, 2, 3, 4)
    emb = f32(7, 4)
    outs = [
        x + 1, x - 1.5, 2 * x, x / 3, x**2, (x * x + 1.0).sqrt(), x.exp(), (x * x + 1).log(), x.tanh(),
        x.mean(), x.var(axis=-1), x.max(axis=0), x @ wl.T, F.softmax(x), F.log_softmax(x),
        F.layer_norm(x, w, b), F.gelu(x), F.dropout(x, 0.5, seed=0), F.linear(x, wl, f32(5)),
        F.scaled_dot_product_attention(q, q, q, dropout_p=0.1), F.multi_head_attention(x[..., :3], 1, dropout_p=0.1),
        F.embedding(np.array([1, 2]), emb),
        F.cross_entropy(x, np.zeros((2, 3), dtype=np.int64)), x * np.float64(0.125), x + np.float64(2.0),
        x.sigmoid(), F.sigmoid(x), F.binary_cross_entropy(x.sigmoid(), np.ones((2, 3, 4))),
        F.binary_cross_entropy_with_logits(x, np.zeros((2, 3, 4))), x.topk(2)[0], x.tril(), autograd.triu(x),
        x.unsqueeze(1), x[:1].squeeze(0),
    ]
    for out in outs:
        assert out.dtype == np.float32, out
        out.sum().backward()
    for t in (x, w, b, wl, q, emb):
        assert t.grad.dtype == np.float32


def test_the_fused_op_classes_keep_their_earlier_names():
    """`F.Linear` and the other classes before the Op suffix are the same classes; none shares a name
    with a module of autograd.nn."""
    from autograd import nn

    pairs = {"Linear": F.LinearOp, "Embedding": F.EmbeddingOp, "Dropout": F.DropoutOp, "LayerNorm": F.LayerNormOp,
             "Gelu": F.GeluOp, "Softmax": F.SoftmaxOp, "LogSoftmax": F.LogSoftmaxOp, "CrossEntropy": F.CrossEntropyOp,
             "BinaryCrossEntropy": F.BinaryCrossEntropyOp,
             "BinaryCrossEntropyWithLogits": F.BinaryCrossEntropyWithLogitsOp,
             "ScaledDotProductAttention": F.ScaledDotProductAttentionOp,
             "MultiHeadAttention": F.MultiHeadAttentionOp}
    for old, op in pairs.items():
        assert getattr(F, old) is op and op.__name__ == old + "Op" and not hasattr(nn, op.__name__)
