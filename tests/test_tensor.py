"""The Tensor's contract: dtypes, devices, backward's bookkeeping, and the errors a user meets."""

import sys

import numpy as np
import pytest

import autograd
import autograd.functional as F
from autograd import DeviceError, Tensor, backend, no_grad


def test_dtype_rules():
    assert Tensor([1, 2, 3]).dtype == np.float32
    assert Tensor(2.5).dtype == np.float32
    assert Tensor(np.zeros(3, dtype=np.float64)).dtype == np.float64
    assert Tensor(np.zeros(3, dtype=np.float16)).dtype == np.float16
    assert Tensor(np.arange(3)).dtype == np.int64
    assert Tensor([1, 2], dtype=np.int32).dtype == np.int32
    assert Tensor(np.zeros(3), dtype=np.float32).dtype == np.float32


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="only floating-point tensors can require gradients, this one is int64"):
        Tensor(np.arange(3), requires_grad=True)


def test_backward_accumulates_and_frees_the_graph():
    x = Tensor([1.0, 2.0], requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [5.0, 7.0])
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="a second time"):
        y.backward()


def test_gradient_through_shared_subexpression():
    x = Tensor([3.0], requires_grad=True)
    y = x * x
    (y + y * x).sum().backward()  # 2x^2... d/dx (x^2 + x^3) = 2x + 3x^2
    np.testing.assert_allclose(x.grad, [6.0 + 27.0])


def test_leaves_get_distinct_gradient_buffers():
    a = Tensor([1.0], requires_grad=True)
    b = Tensor([2.0], requires_grad=True)
    (a + b).sum().backward()
    a.grad *= 10.0  # in-place edits of one leaf's gradient (gradient clipping does this) leave the other alone
    assert b.grad[0] == 1.0


@pytest.mark.parametrize("device", ["cpu", "strict"])
def test_embedding_row_gradient_meets_other_gradients_of_its_table(device):
    """An embedding's gradient is a RowGradient that the walk adds where the table's gradient is summed:
    into the head's fresh gradient (GPT-2's tied table), into a copy of an array another input also
    holds (Add hands both inputs one array), or as a table of its own."""
    xp = backend.xp_for(device)
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((7, 3), dtype=np.float32)
    ids = np.array([[1, 4, 1], [6, 1, 0]])  # row 1 three times: repeated ids must add up
    counts = np.bincount(ids.reshape(-1), minlength=7)[:, None].astype(np.float32)
    r = rng.standard_normal((2, 3, 7), dtype=np.float32)

    # tied: logits = embedding(ids, w) @ w^T; dW = r^T e + (r w)^T scattered to ids
    w = Tensor(xp.asarray(w0), requires_grad=True)
    e = F.embedding(ids, w)
    (F.linear(e, w) * Tensor(xp.asarray(r))).sum().backward()
    e0 = w0[ids].reshape(-1, 3)
    expected = r.reshape(-1, 7).T @ e0
    np.add.at(expected, ids.reshape(-1), r.reshape(-1, 7) @ w0)
    np.testing.assert_allclose(backend.to_host(w.grad), expected, rtol=1e-5, atol=1e-5)

    # shared: w + c hands w and c one gradient array; the rows are added into a copy, c's stays ones
    w = Tensor(xp.asarray(w0), requires_grad=True)
    c = Tensor(xp.zeros((7, 3), dtype=np.float32), requires_grad=True)
    ((w + c).sum() + F.embedding(ids, w).sum()).backward()
    np.testing.assert_array_equal(backend.to_host(w.grad), 1.0 + np.broadcast_to(counts, (7, 3)))
    np.testing.assert_array_equal(backend.to_host(c.grad), np.ones((7, 3), np.float32))

    # alone, and through a table that is itself computed (the walk hands Mul an array, not a RowGradient)
    w = Tensor(xp.asarray(w0), requires_grad=True)
    F.embedding(ids, w * 2.0).sum().backward()
    np.testing.assert_array_equal(backend.to_host(w.grad), 2.0 * np.broadcast_to(counts, (7, 3)))


def test_backward_with_explicit_gradient_and_errors():
    x = Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    y = x * 2.0
    with pytest.raises(RuntimeError, match=r"needs a scalar, but this tensor has shape \(2, 3\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\) but the tensor has \(2, 3\)"):
        y.backward(np.ones(3, dtype=np.float32))
    y.backward(np.full((2, 3), 0.5, dtype=np.float32))
    np.testing.assert_array_equal(x.grad, np.ones((2, 3)))
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor([1.0]).sum().backward()


def test_long_chain_does_not_recurse():
    x = Tensor([1.0], requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0 + 0.0
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        y.sum().backward()
    finally:
        sys.setrecursionlimit(limit)
    assert x.grad[0] == 1.0


def test_no_grad_context_and_decorator():
    x = Tensor([1.0], requires_grad=True)
    with no_grad():
        assert not (x * 2).requires_grad
        assert not autograd.is_grad_enabled()
    assert autograd.is_grad_enabled()

    @no_grad()
    def f(t):
        return t * 2

    assert not f(x).requires_grad
    assert (x * 2).requires_grad


def test_detach_item_shape_repr():
    x = Tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    d = (x * 2).detach()
    assert not d.requires_grad and d.shape == (2, 3) and d.device == "cpu"
    assert x.sum().item() == 15.0
    assert isinstance(x.sum().item(), float)
    with pytest.raises(ValueError, match=r"one element, this one has shape \(2, 3\)"):
        x.item()
    assert repr(Tensor([1.0, 2.0])) == "tensor([1., 2.])"
    assert repr(Tensor([1.0], requires_grad=True)) == "tensor([1.], requires_grad=True)"
    assert "dtype=int64" in repr(Tensor(np.arange(2)))


def test_shape_mismatch_names_both_shapes():
    a, b = Tensor(np.ones((2, 3))), Tensor(np.ones((4,)))
    with pytest.raises(ValueError, match=r"Add: cannot apply to shapes \(2, 3\) and \(4,\)"):
        a + b
    with pytest.raises(ValueError, match=r"MatMul: cannot apply to shapes \(2, 3\) and \(4,\)"):
        a @ b
    with pytest.raises(ValueError, match=r"linear: input of shape \(2, 3\) has 3 features"):
        F.linear(a, Tensor(np.ones((5, 4))))


def test_mixing_devices_names_both():
    a = Tensor([1.0])
    b = Tensor([1.0], device="strict")
    with pytest.raises(RuntimeError, match="expected all tensors on one device, got 'cpu' and 'strict'"):
        a + b


def test_unknown_device():
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        Tensor([1.0], device="tpu")


@pytest.mark.skipif(autograd.cuda_available(), reason="a GPU is present here")
def test_cuda_without_gpu_says_how_to_install():
    # the install hint names one extra per CUDA major version, the one nvidia-smi shows
    with pytest.raises(DeviceError, match=r"(\.\[gpu-cuda13\]' \(CUDA 13\) or '\.\[gpu-cuda12\]' \(CUDA 12\)"
                                          r"|no usable NVIDIA GPU|has no GPU)"):
        Tensor([1.0], device="cuda")


def test_strict_device_refuses_host_conversion():
    x = Tensor(np.arange(4, dtype=np.float32), device="strict")
    assert x.device == "strict"
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(x.data)
    with pytest.raises(TypeError, match="host NumPy array was mixed"):
        x.data + np.ones(4, dtype=np.float32)
    np.testing.assert_array_equal(x.numpy(), [0, 1, 2, 3])
    assert isinstance(x.numpy(), np.ndarray)
    back = x.to("cpu")
    assert back.device == "cpu" and isinstance(back.data, np.ndarray)


def test_to_moves_and_keeps_requires_grad(device):
    x = Tensor([1.0, 2.0], requires_grad=True).to(device)
    assert x.device == device and x.requires_grad
    (x * x).sum().backward()
    assert backend.device_of(x.grad) == device
    np.testing.assert_array_equal(Tensor(x.grad).numpy(), [2.0, 4.0])


def test_index_with_tensor_ids(device):
    w = Tensor(np.arange(12, dtype=np.float32).reshape(4, 3), requires_grad=True, device=device)
    ids = Tensor(np.array([3, 0, 3]), device=device)
    out = w[ids]
    assert out.shape == (3, 3)
    out.sum().backward()
    np.testing.assert_array_equal(Tensor(w.grad).numpy()[:, 0], [1, 0, 0, 2])


def test_embedding_out_of_range_is_a_clear_error():
    w = Tensor(np.zeros((4, 2), dtype=np.float32), requires_grad=True)
    with pytest.raises(ValueError, match=r"embedding ids: id 9 at position 1 is outside \[0, 4\)"):
        F.embedding(np.array([0, 9]), w)


def test_split_sizes_must_add_up():
    x = Tensor(np.zeros((5, 2)))
    assert [p.shape for p in x.split(2)] == [(2, 2), (2, 2), (1, 2)]
    with pytest.raises(ValueError, match=r"sizes \[2, 2\] add up to 4, but axis 0 has length 5"):
        x.split([2, 2])


def test_dropout_is_seeded_and_identity_in_eval():
    x = Tensor(np.ones((100,), dtype=np.float32))
    a = F.dropout(x, 0.5, training=True, seed=3).numpy()
    b = F.dropout(x, 0.5, training=True, seed=3).numpy()
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0.0, 2.0}
    assert F.dropout(x, 0.5, training=False) is x
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\), got 1.5"):
        F.dropout(x, 1.5)


# ---------------------------------------------------------------------------------------------------
# The conveniences the book uses: argmax, topk, unsqueeze/squeeze, numel, tril/triu


def test_argmax_is_an_integer_tensor_without_gradient(device):
    x = Tensor([[0.1, 0.9, 0.9], [2.0, -1.0, 0.5]], requires_grad=True, device=device)
    row = x.argmax(axis=1)
    assert row.dtype == np.int64 and not row.requires_grad and row.device == device
    assert row.tolist() == [1, 0]  # a tie gives the first index, as torch.argmax
    assert x.argmax(axis=-1, keepdims=True).shape == (2, 1)
    assert x.argmax().item() == 3  # of the flattened tensor


def test_topk_as_in_chapter_5(device):
    """The book's next-token logits: torch.topk gives values [6.75, 6.28, 4.51] at positions [3, 7, 0]."""
    logits = Tensor([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79], device=device)
    values, positions = logits.topk(3)
    np.testing.assert_allclose(values.numpy(), [6.75, 6.28, 4.51])
    assert positions.tolist() == [3, 7, 0] and positions.dtype == np.int64
    masked = autograd.where(logits < values[-1], float("-inf"), logits)
    np.testing.assert_allclose(F.softmax(masked, axis=0).numpy(),
                               [0.0615, 0, 0, 0.5775, 0, 0, 0, 0.3610, 0], atol=5e-5)
    batch = Tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 4.0]], device=device)
    v, i = batch.topk(2, axis=-1)
    assert v.tolist() == [[3.0, 2.0], [5.0, 5.0]] and i.tolist() == [[1, 2], [0, 1]]  # ties: lower index first
    assert batch.topk(1, axis=0)[1].tolist() == [[1, 1, 1]]
    with pytest.raises(ValueError, match=r"k=4 is out of range for axis -1 of length 3"):
        batch.topk(4)


def test_topk_gradient_goes_to_the_picked_entries():
    x = Tensor([1.0, 5.0, 3.0, 4.0], requires_grad=True)
    values, _ = x.topk(2)
    (values * Tensor([10.0, 1.0])).sum().backward()
    assert x.grad.tolist() == [0.0, 10.0, 0.0, 1.0]


def test_unsqueeze_squeeze_numel():
    x = Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert x.unsqueeze(0).shape == (1, 2, 3) and x.unsqueeze(-1).shape == (2, 3, 1) and x.unsqueeze(1).shape == (2, 1, 3)
    assert x.unsqueeze(0).unsqueeze(-1).squeeze().shape == (2, 3)
    assert x.unsqueeze(0).squeeze(0).shape == (2, 3)
    assert x.squeeze(0).shape == (2, 3)  # an axis whose length is not 1 is left alone, as torch.squeeze
    assert x.numel() == 6 and Tensor(1.0).numel() == 1
    logits = Tensor(np.zeros((2, 3, 5), dtype=np.float32))
    assert logits.flatten(0, 1).shape == (6, 5) and logits.flatten().shape == (30,) and logits.flatten(1).shape == (2, 15)
    with pytest.raises(ValueError, match="unsqueeze: axis 3 is out of range for a tensor of 2 axes"):
        x.unsqueeze(3)


def test_tril_triu_values_and_gradient_masks():
    ones = Tensor(np.ones((3, 3), dtype=np.float32), requires_grad=True)
    assert autograd.tril(ones).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert ones.triu(diagonal=1).tolist() == [[0, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ones.tril(-1).sum().item() == 3.0
    ones.tril().sum().backward()
    assert ones.grad.tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    with pytest.raises(ValueError, match=r"tril needs at least 2 axes, got shape \(3,\)"):
        autograd.tril(Tensor([1.0, 2.0, 3.0]))


# ---------------------------------------------------------------------------------------------------
# Gradients of chosen inputs, and walking a graph twice


def _appendix_a_loss():
    """Appendix A's logistic regression: z = x1 w1 + b, a = sigmoid(z), loss = BCE(a, y)."""
    w1, b = Tensor([2.2], requires_grad=True), Tensor([0.0], requires_grad=True)
    loss = F.binary_cross_entropy((Tensor([1.1]) * w1 + b).sigmoid(), Tensor([1.0]))
    return loss, w1, b


def test_grad_of_chosen_inputs_as_in_appendix_a():
    loss, w1, b = _appendix_a_loss()
    assert f"{loss.item():.4f}" == "0.0852"
    (g_w1,) = autograd.grad(loss, w1, retain_graph=True)
    (g_b,) = autograd.grad(loss, b, retain_graph=True)
    assert (f"{g_w1.item():.4f}", f"{g_b.item():.4f}") == ("-0.0898", "-0.0817")
    assert w1.grad is None and b.grad is None  # grad() leaves .grad alone
    loss.backward()  # the graph was retained: backward walks it once more
    assert w1.grad.tolist() == g_w1.tolist() and b.grad.tolist() == g_b.tolist()
    with pytest.raises(RuntimeError, match="a second time.*retain_graph=True"):
        loss.backward()  # the default walk freed it


def test_grad_without_retain_graph_frees_it_and_takes_several_inputs():
    x = Tensor([1.0, 2.0], requires_grad=True)
    y = Tensor([3.0, 4.0], requires_grad=True)
    h = x * y  # an intermediate result is an input too
    out = (h * h).sum()
    gx, gh, gy = autograd.grad(out, [x, h, y])
    assert gx.tolist() == [18.0, 64.0] and gh.tolist() == [6.0, 16.0] and gy.tolist() == [6.0, 32.0]
    with pytest.raises(RuntimeError, match="a second time"):
        out.backward()
    s = x + y
    ga, gb = autograd.grad(s, [x, y], grad_outputs=Tensor([1.0, 1.0]))
    ga.data[0] = 99.0  # the two results are separate arrays
    assert gb.tolist() == [1.0, 1.0]
    z = Tensor([5.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="input 1 of shape \\(1,\\) was not used"):
        autograd.grad((x * 2.0).sum(), [x, z])
    assert autograd.grad((x * 2.0).sum(), [x, z], allow_unused=True)[1] is None
    with pytest.raises(RuntimeError, match="input 0 of shape \\(2,\\) does not require grad"):
        autograd.grad((x * 2.0).sum(), [Tensor([1.0, 2.0])])


def test_backward_twice_with_retain_graph_through_ops_that_reuse_buffers():
    """GELU and cross-entropy reuse their saved arrays in the backward on a graph's last walk; a retained
    graph gives the same gradient on every walk, so two walks sum to twice one."""
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((4, 5)).astype(np.float32), requires_grad=True)
    loss = F.cross_entropy(F.gelu(x) * 2.0, np.array([0, 1, 2, 3]))
    (once,) = autograd.grad(loss, x, retain_graph=True)
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * once.numpy(), rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Printing


def test_small_tensors_print_in_full_large_ones_summarised():
    """PyTorch's rule: up to 1,000 entries every one is printed; past that, 3 at each end of each axis.
    Floats with 4 decimals, scientific notation when the magnitudes span more than 1e3."""
    assert repr(Tensor([[0.3374, -0.1778], [0.9178, 1.5810]])) == "tensor([[ 0.3374, -0.1778],\n        [ 0.9178,  1.5810]])"
    assert repr(Tensor(0.08518782)) == "tensor(0.0852)"
    assert repr(Tensor([7.4541e-05, 3.1061e-05])) == "tensor([7.4541e-05, 3.1061e-05])"
    assert repr(Tensor([4.51, float("-inf"), 6.75])) == "tensor([4.5100,   -inf, 6.7500])"
    ten_by_ten = repr(Tensor(np.arange(100, dtype=np.float32).reshape(10, 10) / 7))
    assert "..." not in ten_by_ten and "14.1429" in ten_by_ten and "0.1429" in ten_by_ten
    assert "..." not in repr(Tensor(np.zeros((10, 100), dtype=np.float32)))  # 1,000 entries: in full
    big = repr(Tensor(np.arange(1001, dtype=np.float32)))
    assert "..." in big and big.startswith("tensor([   0.,    1.,    2., ...,  998.,  999., 1000.])")
    assert repr(Tensor([1.0], requires_grad=True) * 2.0) == "tensor([2.], grad_fn=<Mul>)"
