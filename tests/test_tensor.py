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
    with pytest.raises(DeviceError, match=r"(tinygrad-llm\[gpu\]|no usable NVIDIA GPU|has no GPU)"):
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
    with pytest.raises(IndexError, match=r"ids must lie in \[0, 4\).*from 0 to 9"):
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
