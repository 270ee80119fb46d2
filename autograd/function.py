"""The base of every op, the grad-mode switch, and the one un-broadcast helper.

An op is a `Function` subclass: `forward` computes on raw arrays and saves on `self` only what
`backward` needs; `backward` takes the gradient of the output and returns one gradient per input
(None where an input needs none). `Function.apply` runs the forward and, when a gradient is wanted,
links the result to its inputs so `Tensor.backward` can walk the graph.
"""

import contextlib

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
    """

    inputs = ()
    needs_grad = ()
    retain_graph = False

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

