"""Book appendix A, section A.4 (automatic differentiation): the base of every op, the grad-mode switch,
the one un-broadcast helper and the row gradient.

An op is a `Function` subclass: `forward` computes on raw arrays and saves on `self` only what
`backward` needs; `backward` takes the gradient of the output and returns one gradient per input
(None where an input needs none). `Function.apply` runs the forward and, when a gradient is wanted,
links the result to its inputs so `Tensor.backward` can walk the graph.
"""

import contextlib

from autograd import backend

_grad_enabled = True  # the grad-mode switch: the one piece of module state


def is_grad_enabled():
    return _grad_enabled


class no_grad(contextlib.ContextDecorator):
    """Turn off graph building: `with no_grad(): ...` or `@no_grad()` on a function."""

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev
        return False


class enable_grad(contextlib.ContextDecorator):
    """Turn graph building back on inside a `no_grad` block."""

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, True

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev
        return False


class Function:
    """One differentiable op. Subclasses write `forward(*arrays, **options)` and `backward(grad)`.

    `retain_graph` is set by the backward walk before it calls `backward`: when False this is the graph's
    last walk, and `backward` may reuse the arrays it saved as scratch space; when True (a walk with
    `retain_graph=True`) it must leave them as they are for the next walk.

    `backward` returns one gradient per input: an array of the input's shape (or one that broadcasts to
    it), None, or a `RowGradient` (only some rows are nonzero, as for an embedding table). An op whose
    gradients are always new arrays sets `fresh_grads = True`, so the walk may add later gradients into
    them in place.
    """

    inputs = ()
    needs_grad = ()
    retain_graph = False
    fresh_grads = False  # True where backward returns only new arrays that it keeps no reference to

    @classmethod
    def apply(cls, *inputs, **options):
        """Run the op on Tensors; the result remembers this op when any input requires grad."""
        device = inputs[0].device
        for t in inputs[1:]:
            if t.device != device:
                raise RuntimeError(
                    f"{cls.__name__}: expected all tensors on one device, got {device!r} and {t.device!r}; "
                    "move them with .to(device) first"
                )
        ctx = cls()
        requires_grad = _grad_enabled and any(t.requires_grad for t in inputs)
        ctx.needs_grad = tuple(t.requires_grad for t in inputs) if requires_grad else (False,) * len(inputs)
        try:
            out = ctx.forward(*[t.data for t in inputs], **options)
        except ValueError as e:  # NumPy's broadcasting and matmul errors, said in terms of the op
            shapes = " and ".join(str(t.shape) for t in inputs)
            raise ValueError(f"{cls.__name__}: cannot apply to shapes {shapes} ({e})") from None
        result = type(inputs[0])._make(out, device, requires_grad)
        if requires_grad:
            ctx.inputs = inputs
            result._ctx = ctx
        return result


def unbroadcast(grad, shape):
    """Sum `grad` back to `shape`, undoing NumPy broadcasting (leading axes added, size-1 axes stretched)."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1
    )
    if axes:
        grad = grad.sum(axis=axes)
    return grad.reshape(shape)


class RowGradient:
    """A gradient that is zero except for `rows` added at the row indices `index` of an array of `shape`:
    an embedding table's, where a batch touches a few hundred of 50,257 rows.

    The backward walk adds it into the table's gradient where one is already being summed (GPT-2's tied
    head puts a full one there first) instead of building a zero table and adding the two: two passes
    over a (V, C) table saved in every step (docs/performance.md has the measurement)."""

    def __init__(self, index, rows, shape):
        self.index, self.rows, self.shape = index, rows, tuple(shape)

    def add_to(self, array):
        """array[index] += rows, with repeated indices summed (`add.at`, unlike `array[index] += rows`)."""
        backend.get_array_module(array).add.at(array, self.index, self.rows)
        return array

    def dense(self):
        return self.add_to(backend.get_array_module(self.rows).zeros(self.shape, dtype=self.rows.dtype))
