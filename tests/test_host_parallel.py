"""backend.host_parallel: BLAS on one thread while our threads split the products (row blocks) and
attention ((batch, key/value head, query chunk) blocks) gives what the same work outside it gives."""

from dataclasses import replace

import numpy as np
import pytest

import autograd.functional as F
from autograd import Tensor, backend, no_grad
from autograd.functional import attention
from tinygrad_llm.models.llama import Llama, LlamaConfig

threadpoolctl = pytest.importorskip("threadpoolctl")


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(backend, "HOST_THREADS", 2)


def _blas_threads():
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


def test_blas_runs_on_one_thread_inside_and_as_before_after(two_threads):
    before = _blas_threads()
    assert before, "threadpoolctl finds NumPy's BLAS"
    with backend.host_parallel():
        assert backend.in_host_parallel() and _blas_threads() == [1] * len(before)
        with backend.host_parallel():  # nested: still inside after the inner block ends
            pass
        assert backend.in_host_parallel() and _blas_threads() == [1] * len(before)
    assert not backend.in_host_parallel() and _blas_threads() == before


def test_a_few_rows_run_as_outside(two_threads):
    before = _blas_threads()
    with backend.host_parallel(backend.PARALLEL_MIN_ROWS - 1):
        assert not backend.in_host_parallel() and _blas_threads() == before
    with backend.host_parallel(backend.PARALLEL_MIN_ROWS):
        assert backend.in_host_parallel()


def test_one_host_thread_leaves_blas_alone(monkeypatch):
    monkeypatch.setattr(backend, "HOST_THREADS", 1)
    before = _blas_threads()
    with backend.host_parallel():
        assert not backend.in_host_parallel() and _blas_threads() == before


@pytest.mark.parametrize("n, k, m", [(512, 96, 200), (129, 33, 7), (300, 64, 1)])
def test_a_product_in_row_blocks_is_the_same_floats(two_threads, n, k, m):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, k), dtype=np.float32)
    w = rng.standard_normal((m, k), dtype=np.float32)  # (out, in), used transposed as LinearOp does
    with backend.host_parallel():
        split = backend.matmul(a, w.T)
    assert split.dtype == np.float32 and split.shape == (n, m)
    if m > 1:  # the same GEMM kernel on fewer rows: the same sums, the same floats
        np.testing.assert_array_equal(split, a @ w.T)
    else:  # one column: OpenBLAS may take a matrix-vector kernel for one shape and not the other
        np.testing.assert_allclose(split, a @ w.T, rtol=1e-5, atol=1e-5)


def test_a_product_of_few_rows_runs_whole(two_threads, monkeypatch):
    called = []
    monkeypatch.setattr(backend, "parallel_map", lambda fn, items: called.append(items))
    with backend.host_parallel():
        backend.matmul(np.ones((backend.MATMUL_MIN_ROWS, 4), np.float32), np.ones((4, 3), np.float32))
    assert called == []


def test_parallel_work_asked_for_from_a_pool_thread_runs_there(two_threads):
    inner = backend.parallel_map(lambda i: backend.parallel_map(lambda j: 10 * i + j, range(3)), range(4))
    assert inner == [[10 * i + j for j in range(3)] for i in range(4)]


@pytest.mark.parametrize("heads, kv_heads, d", [(4, 4, 16), (6, 2, 16), (3, 1, 12)], ids=["mha", "gqa", "mqa-d12"])
@pytest.mark.parametrize("tq, tk, causal", [(40, 40, True), (40, 57, True), (1, 30, True), (40, 40, False)],
                         ids=["prefill", "after-cache", "one-token", "not-causal"])
def test_attention_in_blocks_equals_attention_by_chunks(two_threads, monkeypatch, heads, kv_heads, d, tq, tk, causal):
    """Inside host_parallel the op works block by block on the threads, scaling the queries instead of
    the scores; its output and (run backward after) gradients equal the chunk loop's."""
    monkeypatch.setattr(attention, "ATTENTION_CHUNK", 8)  # several chunks at these sizes
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, heads, tq, d), dtype=np.float32)
    k, v = (rng.standard_normal((2, kv_heads, tk, d), dtype=np.float32) for _ in range(2))
    g = rng.standard_normal((2, heads, tq, d), dtype=np.float32)

    def run(inside):
        ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
        if inside:
            with backend.host_parallel():
                y = F.scaled_dot_product_attention(*ts, causal=causal)
        else:
            y = F.scaled_dot_product_attention(*ts, causal=causal)
        y.backward(g)
        return [y.data] + [t.grad for t in ts]

    for got, want in zip(run(True), run(False)):
        assert got.dtype == np.float32
        if d == 16:  # scale 1/4: scaling q first gives the same floats
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_llama_prefill_inside_gives_the_logits_and_cache_of_one_outside(monkeypatch):
    """Llama.forward runs a prefill (many positions, no graph) inside host_parallel; with one host thread
    it is the same code outside it. Logits and the cache's keys and values agree, and the last_only
    prefill (the last block on the last position alone) gives the full pass's last logits."""
    monkeypatch.setattr(attention, "ATTENTION_CHUNK", 8)
    monkeypatch.setattr(backend, "PARALLEL_MIN_ROWS", 64)  # 2 x 50 positions go inside
    in_blocks = []
    blocks = attention._attention_forward_in_tasks
    monkeypatch.setattr(attention, "_attention_forward_in_tasks", lambda *a: in_blocks.append(1) or blocks(*a))
    cfg = replace(LlamaConfig.preset("tiny-llama"), n_kv_heads=2, n_heads=4)
    model = Llama(cfg, seed=3)
    model.eval()
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 50))
    results = {}
    for threads in (2, 1):
        monkeypatch.setattr(backend, "HOST_THREADS", threads)
        with no_grad():
            cache = model.new_cache(2)
            last = model(ids, cache, last_only=True).data
            results[threads] = last, cache, model(ids).data
        if threads == 2:
            assert len(in_blocks) == 2 * cfg.n_layers  # both passes, every layer
            in_blocks.clear()
    assert in_blocks == []  # one thread: the chunk loop
    (last2, cache2, full2), (last1, cache1, full1) = results[2], results[1]
    np.testing.assert_allclose(full2, full1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last2, full1[:, -1:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last1, full1[:, -1:], rtol=1e-5, atol=1e-6)
    assert last2.shape == (2, 1, cfg.vocab_size) and cache2.length == cache1.length == 50
    for layer in range(cfg.n_layers):
        np.testing.assert_allclose(cache2.keys[layer][:, :, :50], cache1.keys[layer][:, :, :50], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cache2.values[layer][:, :, :50], cache1.values[layer][:, :, :50], rtol=1e-5,
                                   atol=1e-6)
