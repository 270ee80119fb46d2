"""backend.blockwise: a chain of in-place passes run in cache-sized row blocks on several threads gives
what one call on the whole arrays gives."""

import numpy as np
import pytest

import autograd.functional as F
from autograd import Tensor, backend


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(backend, "HOST_THREADS", 2)


def test_gelu_in_blocks_equals_gelu_in_one_call(two_threads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 50, 1001), dtype=np.float32) * 3  # 150 rows of 1001: blocks of 65 rows
    g = rng.standard_normal(x.shape, dtype=np.float32)
    p, r, y = (np.empty_like(x) for _ in range(3))
    F.activations._gelu_forward(np, x, p, r, y)  # the whole arrays at once
    dy = r.copy()
    F.activations._gelu_backward(np, x, p, dy, g)

    xt = Tensor(x, requires_grad=True)
    out = F.gelu(xt)
    out.backward(g)
    assert out.data.dtype == np.float32 and xt.grad.dtype == np.float32
    np.testing.assert_array_equal(out.data, y)
    np.testing.assert_array_equal(xt.grad, dy)


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_in_blocks_equals_layer_norm_in_one_call(two_threads, affine):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 256, 768), dtype=np.float32) * 2 + 1  # 1024 rows: blocks of 85 rows
    g = rng.standard_normal(x.shape, dtype=np.float32)
    w, b = (rng.standard_normal(768, dtype=np.float32) for _ in range(2))
    xhat, rstd, y = np.empty_like(x), np.empty((4, 256, 1), np.float32), np.empty_like(x)
    F.normalization._layer_norm_forward(np, x, xhat, rstd, *((y,) if affine else ()), w=w if affine else None,
                          b=b if affine else None, eps=1e-5)  # the whole arrays at once
    gx = np.empty_like(x)
    F.normalization._layer_norm_backward(np, g, xhat, rstd, gx, w=w if affine else None)

    xt = Tensor(x, requires_grad=True)
    out = F.layer_norm(xt, Tensor(w), Tensor(b)) if affine else F.layer_norm(xt)
    out.backward(g)
    np.testing.assert_array_equal(out.data, y if affine else xhat)
    np.testing.assert_array_equal(xt.grad, gx)


def test_row_blocks_keep_rows_whole_and_cover_every_row_once(two_threads):
    x = np.arange(7 * 40_000, dtype=np.float32).reshape(7, 40_000)  # 1 row per block of 65,536 elements
    sums = np.zeros((7, 1), dtype=np.float32)
    calls = []

    def row_sum(xp, x, out):
        calls.append(x.shape[0])
        out += x.sum(axis=-1, keepdims=True)

    backend.blockwise(row_sum, x, sums)
    np.testing.assert_array_equal(sums, x.sum(axis=-1, keepdims=True))
    assert sorted(calls) == [1] * 7


def test_small_or_strided_arrays_are_one_call(two_threads):
    calls = []
    a = np.ones((4, 8), np.float32)
    backend.blockwise(lambda xp, x: calls.append(x.shape), a)
    big = np.ones((400, 1000), np.float32)
    backend.blockwise(lambda xp, x: calls.append(x.shape), big[:, ::2])
    assert calls == [(4, 8), (400, 500)]


def test_rows_sliced_from_a_wider_array_are_split_in_blocks_and_written_in_place(two_threads):
    """The gate and up halves of one stacked product, y[..., :h] and y[..., h:], have contiguous rows at a
    stride: they are cut in row blocks as views (no copy), and what the blocks write lands in y itself."""
    y = np.arange(2 * 300 * 1000, dtype=np.float32).reshape(2, 300, 1000)
    gate, up = y[..., :500], y[..., 500:]
    calls = []

    def add_into(xp, g, u):
        calls.append(g.shape)
        g += u

    expected = gate + up
    backend.blockwise(add_into, gate, up)
    np.testing.assert_array_equal(y[..., :500], expected)
    assert len(calls) > 1 and all(shape[1] == 500 for shape in calls) and sum(s[0] for s in calls) == 600


def test_an_error_in_a_block_reaches_the_caller(two_threads):
    def fail(xp, x):
        raise ValueError("bad block")

    with pytest.raises(ValueError, match="bad block"):
        backend.blockwise(fail, np.ones((400, 1000), np.float32))


def _loss_and_grads(fn, *arrays):
    ts = [Tensor(a, requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward(np.ones(out.shape, np.float32))
    return [out.data] + [t.grad for t in ts]


@pytest.mark.parametrize("op", ["cross_entropy", "attention"])
def test_softmax_ops_in_blocks_equal_one_call(monkeypatch, op):
    rng = np.random.default_rng(1)
    if op == "cross_entropy":  # (40, 5000) logits: one row per block
        targets = rng.integers(0, 5000, 40)
        targets[3] = -100
        arrays = [rng.standard_normal((40, 5000), dtype=np.float32) * 4]
        fn = lambda x: F.cross_entropy(x, targets)  # noqa: E731
    else:  # 6 heads of (200, 200) scores: one head per block
        arrays = [rng.standard_normal((2, 3, 200, 16), dtype=np.float32) for _ in range(3)]
        fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=True)  # noqa: E731
    monkeypatch.setattr(backend, "HOST_THREADS", 1)  # one call on the whole arrays
    whole = _loss_and_grads(fn, *arrays)
    monkeypatch.setattr(backend, "HOST_THREADS", 2)
    blocks = _loss_and_grads(fn, *arrays)
    for a, b in zip(whole, blocks):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("preset, numpy_first, expected", [
    (None, False, "20"),  # a program that imports the library before NumPy gets the shorter spin
    ("28", False, "28"),  # a value the user set is kept
    (None, True, None),  # NumPy already loaded OpenBLAS: too late, and the environment is left alone
])
def test_openblas_thread_timeout_is_set_before_numpy_loads(preset, numpy_first, expected):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if preset is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = preset
    code = ("import numpy\n" if numpy_first else "") + (
        "import tinygrad_llm, os\nprint(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": root}, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == str(expected)
