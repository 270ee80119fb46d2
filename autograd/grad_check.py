"""Gradient checking by central finite differences in float64: the test of any op's backward, ours or yours.

`check_gradients(fn, *arrays)` runs `fn` on float64 Tensors made from `arrays`, reduces its output
to a scalar with a fixed random projection, and compares the analytic gradient of every input with
(f(x + h) - f(x - h)) / 2h taken one entry at a time. `fn` is any function of Tensors that returns a
Tensor, or a `Function` subclass itself (its `apply` is called). docs/your-own-op.md walks through
checking a new op with it.

    class Square(Function):
        def forward(self, x):
            self.x = x
            return x * x

        def backward(self, grad):
            return (2.0 * self.x * grad,)

    check_gradients(Square, np.array([1.0, -2.0]))  # passes; a wrong backward raises AssertionError
"""

import numpy as np

from autograd.function import Function
from autograd.tensor import Tensor


def _callable(fn):
    """`fn`, or `fn.apply` for a Function subclass."""
    return fn.apply if isinstance(fn, type) and issubclass(fn, Function) else fn


def _scalar(out, weights):
    return float((out.numpy().astype(np.float64) * weights).sum())


def numerical_gradients(fn, arrays, weights, device="cpu", eps=1e-6):
    """d(sum(fn(*arrays) * weights))/d(arrays) by central differences, one array at a time. `arrays` are
    float64 NumPy arrays (changed one entry at a time and put back), `weights` an array of fn's output
    shape; returns one gradient array per input."""
    fn = _callable(fn)
    grads = []
    for i, a in enumerate(arrays):
        g = np.zeros_like(a)
        for j in np.ndindex(a.shape):
            old = a[j]
            a[j] = old + eps
            up = _scalar(fn(*[Tensor(x, device=device) for x in arrays]), weights)
            a[j] = old - eps
            down = _scalar(fn(*[Tensor(x, device=device) for x in arrays]), weights)
            a[j] = old
            g[j] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def check_gradients(fn, *arrays, device="cpu", atol=1e-5, rtol=1e-4, eps=1e-6, seed=0):
    """Check the backward of `fn` at the point `arrays` against central differences.

    fn: a function of len(arrays) Tensors returning a Tensor of any shape, or a Function subclass.
    arrays: the inputs, anything `np.array` takes; they are copied to float64, each one a Tensor that
    requires grad, on `device`. atol, rtol: the tolerance, atol + rtol * |numerical| per entry. eps: the
    finite-difference step. seed: the random projection that reduces fn's output to a scalar.

    Raises AssertionError, naming the input and the worst entry, where the analytic and numerical
    gradients differ by more than the tolerance. Returns the analytic gradients (NumPy arrays; zeros
    for an input that got no gradient)."""
    fn = _callable(fn)
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    inputs = [Tensor(a, requires_grad=True, device=device) for a in arrays]
    out = fn(*inputs)
    weights = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(Tensor(weights, device=device).data)
    analytic = [np.zeros_like(a) if t.grad is None else Tensor(t.grad).numpy() for a, t in zip(arrays, inputs)]
    numeric = numerical_gradients(fn, arrays, weights, device=device, eps=eps)
    for i, (an, nu) in enumerate(zip(analytic, numeric)):
        if an.shape != nu.shape:
            raise AssertionError(f"input {i}: gradient shape {an.shape} != input shape {nu.shape}")
        bad = np.abs(an - nu) > atol + rtol * np.abs(nu)
        if bad.any():
            j = np.unravel_index(np.argmax(np.abs(an - nu)), an.shape)
            raise AssertionError(
                f"input {i} of shape {an.shape}: analytic {an[j]!r} vs numerical {nu[j]!r} at index {j} "
                f"({int(bad.sum())} of {an.size} entries off)"
            )
    return analytic


__all__ = ["check_gradients", "numerical_gradients"]
