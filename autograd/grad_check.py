"""Gradient checking by central finite differences in float64.

`check_gradients(fn, *arrays)` runs `fn` on float64 Tensors made from `arrays`, reduces its output
to a scalar with a fixed random projection, and compares the analytic gradient of every input with
(f(x + h) - f(x - h)) / 2h taken one entry at a time.
"""

import numpy as np

from autograd.tensor import Tensor


def _scalar(out, weights):
    return float((out.numpy().astype(np.float64) * weights).sum())


def numerical_gradients(fn, arrays, weights, device="cpu", eps=1e-6):
    """d(sum(fn(*arrays) * weights))/d(arrays) by central differences, one array at a time."""
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
    """Raise AssertionError, naming the input and the worst entry, where analytic and numerical
    gradients differ by more than atol + rtol * |numerical|. Returns the analytic gradients."""
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
