"""Book appendix A, section A.3 (models as computation graphs): the basic ops, the graph's nodes, each
forward directly above its backward.

Gradients that flow into a broadcast input come back in the output's shape; `Tensor.backward` sums
them to the input's shape with `function.unbroadcast`, so no op here repeats that.
Scalars are Python floats so float32 arrays stay float32 (a NumPy float64 scalar would promote them).
"""

from autograd.backend import get_array_module
from autograd.function import Function


def _normalize_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(a % ndim if ndim else a for a in axes)


def _expand_reduced(grad, shape, axis, keepdims):
    """Give a reduced gradient its reduced axes back as size 1, so it broadcasts against `shape`."""
    if keepdims or grad.ndim == len(shape):
        return grad
    kept = [1 if i in axis else n for i, n in enumerate(shape)]
    return grad.reshape(kept)


# ---------------------------------------------------------------------------------------------------
# Arithmetic


class Add(Function):
    def forward(self, a, b):
        return a + b

    def backward(self, grad):
        return grad, grad


class Sub(Function):
    def forward(self, a, b):
        return a - b

    def backward(self, grad):
        return grad, (-grad if self.needs_grad[1] else None)


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, grad):
        return (grad * self.b if self.needs_grad[0] else None, grad * self.a if self.needs_grad[1] else None)


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, grad):
        ga = grad / self.b
        # d(a/b)/db = -a / b^2 = -(grad / b) * a / b
        gb = -ga * self.a / self.b if self.needs_grad[1] else None
        return ga if self.needs_grad[0] else None, gb


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, grad):
        return (-grad,)


class Pow(Function):
    """a ** b for a tensor exponent: d/da = b a^(b-1), d/db = a^b ln a."""

    def forward(self, a, b):
        self.a, self.b = a, b
        self.out = a**b
        return self.out

    def backward(self, grad):
        xp = get_array_module(grad)
        ga = grad * self.b * self.a ** (self.b - 1) if self.needs_grad[0] else None
        gb = grad * self.out * xp.log(self.a) if self.needs_grad[1] else None
        return ga, gb


class PowScalar(Function):
    """a ** p for a Python number p: d/da = p a^(p-1)."""

    def forward(self, a, p):
        self.a, self.p = a, p
        return a**p

    def backward(self, grad):
        return (grad * (self.p * self.a ** (self.p - 1)),)


class MatMul(Function):
    """a @ b with NumPy's rules (1-D, 2-D, batched, broadcast batches).

    d/da = grad @ b^T, d/db = a^T @ grad, with 1-D operands lifted to matrices and batch axes that
    were broadcast summed away by the engine.
    """

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, grad):
        a, b = self.a, self.b
        if a.ndim == 1 and b.ndim == 1:
            return (grad * b if self.needs_grad[0] else None, grad * a if self.needs_grad[1] else None)
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g = grad
        if a.ndim == 1:
            g = g[..., None, :]
        if b.ndim == 1:
            g = g[..., None]
        ga = gb = None
        if self.needs_grad[0]:
            ga = g @ b2.swapaxes(-1, -2)
            if a.ndim == 1:
                ga = ga.reshape(ga.shape[:-2] + ga.shape[-1:])
        if self.needs_grad[1]:
            if b2.ndim == 2 and a2.ndim > 2:
                # a weight shared by a batch: one GEMM over the flattened rows, (K, B*M) @ (B*M, N),
                # instead of a batched product summed afterwards
                gb = a2.reshape(-1, a2.shape[-1]).T @ g.reshape(-1, g.shape[-1])
            else:
                gb = a2.swapaxes(-1, -2) @ g
            if b.ndim == 1:
                gb = gb[..., 0]
        return ga, gb


# ---------------------------------------------------------------------------------------------------
# Unary elementwise


class Exp(Function):
    def forward(self, a):
        self.out = get_array_module(a).exp(a)
        return self.out

    def backward(self, grad):
        return (grad * self.out,)


class Log(Function):
    def forward(self, a):
        self.a = a
        return get_array_module(a).log(a)

    def backward(self, grad):
        return (grad / self.a,)


class Sqrt(Function):
    def forward(self, a):
        self.out = get_array_module(a).sqrt(a)
        return self.out

    def backward(self, grad):
        return (grad / (2.0 * self.out),)


class Tanh(Function):
    def forward(self, a):
        self.out = get_array_module(a).tanh(a)
        return self.out

    def backward(self, grad):
        return (grad * (1.0 - self.out * self.out),)


class Relu(Function):
    def forward(self, a):
        self.mask = a > 0
        return get_array_module(a).maximum(a, 0)  # not a * mask, which keeps the sign of -0.0 (printed "-0.")

    def backward(self, grad):
        return (grad * self.mask,)


class Sigmoid(Function):
    """y = 1 / (1 + exp(-x)), computed from e = exp(-|x|) so that neither branch overflows and tiny
    outputs keep their digits: y = 1 / (1 + e) where x >= 0, e / (1 + e) elsewhere. dy/dx = y (1 - y)."""

    def forward(self, a):
        self.out, _ = stable_sigmoid(get_array_module(a), a)
        return self.out

    def backward(self, grad):
        return (grad * self.out * (1.0 - self.out),)


def stable_sigmoid(xp, a):
    """(sigmoid(a), e) with e = exp(-|a|): y = 1 / (1 + e) where a >= 0, e / (1 + e) elsewhere. The one
    sigmoid of the library (the sigmoid op, and the binary cross-entropy on logits, which needs e too)."""
    e = xp.exp(-xp.abs(a))
    return xp.where(a >= 0, 1.0, e) / (1.0 + e), e


# ---------------------------------------------------------------------------------------------------
# Reductions


class Sum(Function):
    def forward(self, a, axis=None, keepdims=False):
        self.shape, self.axis, self.keepdims = a.shape, _normalize_axis(axis, a.ndim), keepdims
        return a.sum(axis=self.axis, keepdims=keepdims)

    def backward(self, grad):
        xp = get_array_module(grad)
        grad = _expand_reduced(grad, self.shape, self.axis, self.keepdims)
        # a real array, not a read-only broadcast view: it may become a leaf's .grad
        return (xp.broadcast_to(grad, self.shape).copy(),)


class Mean(Function):
    def forward(self, a, axis=None, keepdims=False):
        self.shape, self.axis, self.keepdims = a.shape, _normalize_axis(axis, a.ndim), keepdims
        self.count = 1
        for i in self.axis:
            self.count *= a.shape[i]
        return a.mean(axis=self.axis, keepdims=keepdims)

    def backward(self, grad):
        xp = get_array_module(grad)
        grad = _expand_reduced(grad, self.shape, self.axis, self.keepdims)
        return (xp.broadcast_to(grad * (1.0 / max(self.count, 1)), self.shape).copy(),)


class Max(Function):
    """The gradient goes to the maximal entries, split evenly between ties."""

    def forward(self, a, axis=None, keepdims=False):
        self.a, self.axis, self.keepdims = a, _normalize_axis(axis, a.ndim), keepdims
        self.out = a.max(axis=self.axis, keepdims=True)
        return self.out if keepdims else self.out.reshape([n for i, n in enumerate(a.shape) if i not in self.axis])

    def backward(self, grad):
        grad = _expand_reduced(grad, self.a.shape, self.axis, self.keepdims)
        mask = self.a == self.out
        count = mask.sum(axis=self.axis, keepdims=True)
        return (mask * (grad / count),)


class Var(Function):
    """Variance with `correction` (1: unbiased, PyTorch's default; 0: biased).

    d var / d x_i = 2 (x_i - mean) / (n - correction)
    """

    def forward(self, a, axis=None, keepdims=False, correction=1):
        self.axis, self.keepdims, self.shape = _normalize_axis(axis, a.ndim), keepdims, a.shape
        n = 1
        for i in self.axis:
            n *= a.shape[i]
        self.denom = max(n - correction, 0)
        self.centered = a - a.mean(axis=self.axis, keepdims=True)
        out = (self.centered * self.centered).sum(axis=self.axis, keepdims=keepdims)
        return out / float(self.denom) if self.denom else out * float("nan")

    def backward(self, grad):
        grad = _expand_reduced(grad, self.shape, self.axis, self.keepdims)
        return (grad * self.centered * (2.0 / self.denom if self.denom else float("nan")),)


# ---------------------------------------------------------------------------------------------------
# Shape and layout


class Reshape(Function):
    def forward(self, a, shape):
        self.shape = a.shape
        return a.reshape(shape)

    def backward(self, grad):
        return (grad.reshape(self.shape),)


class Permute(Function):
    def forward(self, a, axes):
        self.inverse = tuple(sorted(range(len(axes)), key=lambda i: axes[i]))
        return a.transpose(axes)

    def backward(self, grad):
        return (grad.transpose(self.inverse),)


class Expand(Function):
    def forward(self, a, shape):
        return get_array_module(a).broadcast_to(a, shape)

    def backward(self, grad):
        return (grad,)  # the engine sums it back to the input's shape


class GetItem(Function):
    """Basic slices, integers, None, Ellipsis and integer/boolean arrays.

    The gradient is scattered back into zeros; with integer arrays `add.at` makes repeated indices
    accumulate instead of overwrite.
    """

    def forward(self, a, index):
        self.shape, self.dtype, self.index = a.shape, a.dtype, index
        return a[index]

    def backward(self, grad):
        xp = get_array_module(grad)
        out = xp.zeros(self.shape, dtype=self.dtype)
        index = self.index if isinstance(self.index, tuple) else (self.index,)
        if any(hasattr(i, "dtype") and i.dtype != bool for i in index):
            xp.add.at(out, self.index, grad)
        else:
            out[self.index] = grad
        return (out,)


class Tril(Function):
    """The lower triangle of the last two axes (entries above diagonal `k` zeroed); the gradient is masked
    the same way."""

    def forward(self, a, k=0):
        self.k = k
        return get_array_module(a).tril(a, k)

    def backward(self, grad):
        return (get_array_module(grad).tril(grad, self.k),)


class Triu(Function):
    """The upper triangle of the last two axes (entries below diagonal `k` zeroed); the gradient is masked
    the same way."""

    def forward(self, a, k=0):
        self.k = k
        return get_array_module(a).triu(a, k)

    def backward(self, grad):
        return (get_array_module(grad).triu(grad, self.k),)


class TakeAlongAxis(Function):
    """y = take_along_axis(a, indices, axis): entries picked along one axis (the values of topk).

    The gradient is scattered back to the picked positions, zeros elsewhere; `add.at` makes an index
    picked twice receive both gradients.
    """

    def forward(self, a, indices, axis):
        self.shape, self.axis, self.indices = a.shape, axis % a.ndim, indices
        return get_array_module(a).take_along_axis(a, indices, axis=self.axis)

    def backward(self, grad):
        xp = get_array_module(grad)
        n = self.shape[self.axis]
        # one row per position of the other axes, its picked gradients added at their indices
        g = xp.moveaxis(grad, self.axis, -1)
        rows_shape = g.shape
        g = g.reshape(-1, rows_shape[-1])
        idx = xp.moveaxis(self.indices, self.axis, -1).reshape(g.shape)
        out = xp.zeros((g.shape[0], n), dtype=grad.dtype)
        xp.add.at(out, (xp.arange(g.shape[0])[:, None], idx), g)
        out = out.reshape(rows_shape[:-1] + (n,))
        return (xp.ascontiguousarray(xp.moveaxis(out, -1, self.axis)),)


class Concatenate(Function):
    def forward(self, *arrays, axis=0):
        xp = get_array_module(*arrays)
        self.axis = axis % arrays[0].ndim
        self.bounds = []
        start = 0
        for a in arrays:
            self.bounds.append((start, start + a.shape[self.axis]))
            start += a.shape[self.axis]
        return xp.concatenate(arrays, axis=self.axis)

    def backward(self, grad):
        lead = (slice(None),) * self.axis
        return tuple(grad[lead + (slice(lo, hi),)] for lo, hi in self.bounds)


class Stack(Function):
    def forward(self, *arrays, axis=0):
        self.axis = axis % (arrays[0].ndim + 1)
        return get_array_module(*arrays).stack(arrays, axis=self.axis)

    def backward(self, grad):
        return tuple(grad.take(i, axis=self.axis) for i in range(grad.shape[self.axis]))


class Where(Function):
    """where(cond, a, b): the gradient flows to a where cond holds and to b elsewhere."""

    def forward(self, a, b, cond):
        self.cond = cond
        return get_array_module(a, b).where(cond, a, b)

    def backward(self, grad):
        xp = get_array_module(grad)
        zero = xp.zeros((), dtype=grad.dtype)
        ga = xp.where(self.cond, grad, zero) if self.needs_grad[0] else None
        gb = xp.where(self.cond, zero, grad) if self.needs_grad[1] else None
        return ga, gb


class Cast(Function):
    def forward(self, a, dtype):
        self.dtype = a.dtype
        return a.astype(dtype)

    def backward(self, grad):
        return (grad.astype(self.dtype),)
