"""Book appendix A, section A.2 (tensors): the Tensor, one array, its gradient, and the op that made it.

Its methods are the basic ops of `ops.py`; `backward()` runs the walk in `backward.py` (appendix A,
section A.4). The functions of several tensors (concatenate, stack, split, where, tril, triu) follow the
class.
"""

import numpy as np

from autograd import backend, ops
from autograd.backward import _FREED, _backprop, _seed_grad, grad
from autograd.function import Function, is_grad_enabled
from autograd.printing import format_array


def _is_float(dtype):
    return np.dtype(dtype).kind == "f"


class Tensor:
    """An n-dimensional array on a device that can record the ops applied to it.

    Tensor(data, requires_grad=False, dtype=None, device=None)

    - a float array keeps its dtype; an integer array stays integer (token ids);
      Python numbers and (nested) lists become float32; `dtype=` forces one.
    - `device` is "cpu", "cuda" or "strict" (the simulated device for tests); by default the device
      the data already lives on, "cpu" for host data.
    - `.grad` is an array on the tensor's device, filled in by `backward()`.
    """

    __slots__ = ("data", "grad", "requires_grad", "device", "_ctx", "_grad_owned", "__weakref__")
    __array_priority__ = 1000  # so `ndarray + Tensor` asks Tensor.__radd__ instead of broadcasting

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        if isinstance(data, Tensor):
            data = data.data
        if not hasattr(data, "dtype"):  # Python numbers and lists: float32 unless told otherwise
            data = np.asarray(data, dtype=np.float32 if dtype is None else dtype)
        elif isinstance(data, np.generic):
            data = np.asarray(data)
        if dtype is not None and data.dtype != np.dtype(dtype):
            data = data.astype(dtype)
        self.data = backend.to_device(data, device or backend.device_of(data))
        device = backend.device_of(self.data)
        self.device = device
        self.grad = None
        self._ctx = None
        self._grad_owned = False
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _make(cls, data, device, requires_grad):
        """Wrap an op's output without the constructor's conversions (the hot path)."""
        t = cls.__new__(cls)
        t.data, t.device, t.requires_grad = data, device, requires_grad
        t.grad, t._ctx, t._grad_owned = None, None, False
        return t

    def requires_grad_(self, requires_grad=True):
        if requires_grad and not _is_float(self.data.dtype):
            raise TypeError(
                f"only floating-point tensors can require gradients, this one is {self.data.dtype} "
                "(integer tensors hold ids and indices); convert it with .float() first"
            )
        self.requires_grad = requires_grad
        return self

    # ------------------------------------------------------------------------------------------------
    # Facts

    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self._ctx is None)

    def __len__(self):
        return len(self.data)

    def numel(self):
        """How many entries the tensor holds (PyTorch's name for `size`)."""
        return int(self.data.size)

    def __repr__(self):
        body = format_array(self.numpy())
        extra = "" if self.device == "cpu" else f", device={self.device!r}"
        if self.data.dtype != np.float32:
            extra += f", dtype={self.data.dtype}"
        if self._ctx is not None and self._ctx is not _FREED:
            extra += f", grad_fn=<{type(self._ctx).__name__}>"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    def numpy(self):
        """A NumPy copy on the host (no copy for a cpu tensor: it is `self.data`)."""
        return backend.to_host(self.data)

    def item(self):
        """The value of a one-element tensor as a Python number (on a GPU this waits for the device)."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, this one has shape {self.shape}")
        return self.data.reshape(()).item() if self.device == "cpu" else self.numpy().reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def to(self, device):
        """This tensor on `device` (itself when already there); a moved leaf keeps requires_grad."""
        if device == self.device:
            return self
        return Tensor(backend.to_device(self.data, device), requires_grad=self.requires_grad, device=device)

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor._make(self.data, self.device, False)

    def float(self):
        return self.astype(np.float32)

    def astype(self, dtype):
        if self.data.dtype == np.dtype(dtype):
            return self
        if _is_float(dtype) and self.requires_grad:
            return ops.Cast.apply(self, dtype=dtype)
        return Tensor._make(self.data.astype(dtype), self.device, False)

    # ------------------------------------------------------------------------------------------------
    # Backward

    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's `.grad`; `grad` is d(loss)/d(self), 1 for a scalar.

        The walk frees the graph as it goes (a second backward through it is an error), unless
        `retain_graph=True` keeps it for another walk (the book's appendix A calls `grad` twice on one
        loss, then `backward`).
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad: no input of the computation had "
                "requires_grad=True (or it ran under no_grad())"
            )
        _backprop([self], [_seed_grad(self, grad, "backward()")], retain_graph)

    def _accumulate(self, g):
        """Add `g` to `.grad`: the first gradient is kept as it is, later ones are summed into a buffer
        of this tensor's own (so a gradient array handed in is never written to)."""
        if self.grad is None:
            self.grad, self._grad_owned = g, False
        elif self._grad_owned:
            self.grad += g
        else:
            self.grad, self._grad_owned = self.grad + g, True

    # ------------------------------------------------------------------------------------------------
    # Ops

    def _lift(self, other):
        """A Python number or array as a Tensor beside self (numbers take self's dtype: no float64 creep)."""
        if isinstance(other, Tensor):
            return other
        xp = backend.xp_for(self.device)
        if isinstance(other, (int, float, bool, np.generic)):
            dtype = self.dtype if _is_float(self.dtype) or isinstance(other, (int, bool)) else np.float32
            return Tensor._make(xp.asarray(other, dtype=dtype), self.device, False)
        return Tensor(other, device=self.device)

    def __add__(self, other):
        return ops.Add.apply(self, self._lift(other))

    def __radd__(self, other):
        return ops.Add.apply(self._lift(other), self)

    def __sub__(self, other):
        return ops.Sub.apply(self, self._lift(other))

    def __rsub__(self, other):
        return ops.Sub.apply(self._lift(other), self)

    def __mul__(self, other):
        return ops.Mul.apply(self, self._lift(other))

    def __rmul__(self, other):
        return ops.Mul.apply(self._lift(other), self)

    def __truediv__(self, other):
        return ops.Div.apply(self, self._lift(other))

    def __rtruediv__(self, other):
        return ops.Div.apply(self._lift(other), self)

    def __pow__(self, other):
        if isinstance(other, (int, float)):
            return ops.PowScalar.apply(self, p=other)
        return ops.Pow.apply(self, self._lift(other))

    def __rpow__(self, other):
        return ops.Pow.apply(self._lift(other), self)

    def __neg__(self):
        return ops.Neg.apply(self)

    def __matmul__(self, other):
        return ops.MatMul.apply(self, self._lift(other))

    def __rmatmul__(self, other):
        return ops.MatMul.apply(self._lift(other), self)

    def _compare(self, other, op):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor._make(op(self.data, other), self.device, False)

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    def __eq__(self, other):
        return self._compare(other, lambda a, b: a == b)

    def __ne__(self, other):
        return self._compare(other, lambda a, b: a != b)

    __hash__ = object.__hash__

    def __getitem__(self, index):
        return ops.GetItem.apply(self, index=_index_arrays(index, self.device))

    def exp(self):
        return ops.Exp.apply(self)

    def log(self):
        return ops.Log.apply(self)

    def sqrt(self):
        return ops.Sqrt.apply(self)

    def tanh(self):
        return ops.Tanh.apply(self)

    def relu(self):
        return ops.Relu.apply(self)

    def sigmoid(self):
        return ops.Sigmoid.apply(self)

    def sum(self, axis=None, keepdims=False):
        return ops.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return ops.Mean.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return ops.Max.apply(self, axis=axis, keepdims=keepdims)

    def argmax(self, axis=None, keepdims=False):
        """Index of the largest entry (of the flattened tensor when axis is None), an int64 Tensor with no
        gradient; the first index on ties."""
        xp = backend.xp_for(self.device)
        out = self.data.argmax(axis=axis, keepdims=keepdims) if axis is not None else self.data.argmax()
        return Tensor._make(xp.asarray(out, dtype=np.int64), self.device, False)

    def topk(self, k, axis=-1):
        """(values, indices) of the k largest entries along `axis`, largest first, as torch.topk. The values
        carry the gradient (back to where they came from); the indices are an int64 Tensor.

            Tensor([4.51, 0.89, -1.90, 6.75, 1.63]).topk(3)  # values [6.75, 4.51, 1.63], indices [3, 0, 4]
        """
        if self.ndim == 0:
            raise ValueError("topk needs a tensor with at least one axis, this one is a scalar")
        n = self.shape[axis]
        if not 0 <= k <= n:
            raise ValueError(f"topk: k={k} is out of range for axis {axis} of length {n} (shape {self.shape})")
        xp = backend.xp_for(self.device)
        order = xp.argsort(-self.data, axis=axis, kind="stable")  # descending; ties: the lower index first
        indices = xp.take(order, xp.arange(k), axis=axis)  # (..., n, ...) -> (..., k, ...)
        values = ops.TakeAlongAxis.apply(self, indices=indices, axis=axis)
        return values, Tensor._make(indices, self.device, False)

    def var(self, axis=None, keepdims=False, correction=1):
        """Variance; correction=1 (PyTorch's default) divides by n - 1, correction=0 by n."""
        return ops.Var.apply(self, axis=axis, keepdims=keepdims, correction=correction)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return ops.Reshape.apply(self, shape=tuple(shape))

    view = reshape

    def flatten(self, start=0, end=-1):
        """Axes `start` to `end` (inclusive) merged into one, as torch.flatten: (2, 3, V).flatten(0, 1) -> (6, V)."""
        if self.ndim == 0:
            return self.reshape(1)
        start, end = start % self.ndim, end % self.ndim
        return self.reshape(self.shape[:start] + (-1,) + self.shape[end + 1:])

    def unsqueeze(self, axis):
        """A view with a new axis of length 1 at `axis` (-ndim-1 <= axis <= ndim): (2, 3).unsqueeze(0) -> (1, 2, 3)."""
        if not -self.ndim - 1 <= axis <= self.ndim:
            raise ValueError(f"unsqueeze: axis {axis} is out of range for a tensor of {self.ndim} axes")
        axis = axis % (self.ndim + 1)
        return self.reshape(self.shape[:axis] + (1,) + self.shape[axis:])

    def squeeze(self, axis=None):
        """A view without the axes of length 1 (all of them, or only `axis`, which is left alone when its
        length is not 1, as torch.squeeze does)."""
        if axis is None:
            return self.reshape(tuple(n for n in self.shape if n != 1))
        if not -self.ndim <= axis < max(self.ndim, 1):
            raise ValueError(f"squeeze: axis {axis} is out of range for a tensor of {self.ndim} axes")
        if self.ndim == 0 or self.shape[axis] != 1:
            return self
        axis = axis % self.ndim
        return self.reshape(self.shape[:axis] + self.shape[axis + 1:])

    def tril(self, diagonal=0):
        return tril(self, diagonal)

    def triu(self, diagonal=0):
        return triu(self, diagonal)

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        if sorted(a % self.ndim for a in axes) != list(range(self.ndim)):
            raise ValueError(f"permute: {tuple(axes)} is not an ordering of the {self.ndim} axes of shape {self.shape}")
        return ops.Permute.apply(self, axes=tuple(a % self.ndim for a in axes))

    def transpose(self, dim0=-2, dim1=-1):
        """Swap two axes (the last two by default), as torch.transpose."""
        axes = list(range(self.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return ops.Permute.apply(self, axes=tuple(axes))

    @property
    def T(self):
        return ops.Permute.apply(self, axes=tuple(reversed(range(self.ndim))))

    def expand(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = tuple(s if s != -1 else n for s, n in zip(shape, (None,) * (len(shape) - self.ndim) + self.shape))
        return ops.Expand.apply(self, shape=shape)

    def masked_fill(self, mask, value):
        """Entries where `mask` is true replaced by `value`; no gradient flows to them."""
        return where(mask, value, self)

    def split(self, size_or_sizes, axis=0):
        return split(self, size_or_sizes, axis)


def _index_arrays(index, device):
    """Integer Tensors and lists inside an index become arrays on the tensor's device."""
    xp = backend.xp_for(device)

    def one(i):
        if isinstance(i, Tensor):
            return i.data
        if isinstance(i, list) or (isinstance(i, np.ndarray) and device != "cpu"):
            return xp.asarray(i)
        return i

    return tuple(one(i) for i in index) if isinstance(index, tuple) else one(index)


# ---------------------------------------------------------------------------------------------------
# Functions of several tensors


def tensor(data, requires_grad=False, dtype=None, device=None):
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


def _check_shapes(name, tensors, axis, exclude_axis):
    ref = tensors[0].shape
    for t in tensors[1:]:
        if len(t.shape) != len(ref) or any(
            a != b for i, (a, b) in enumerate(zip(t.shape, ref)) if not (exclude_axis and i == axis % len(ref))
        ):
            raise ValueError(f"{name}: shapes {ref} and {t.shape} do not match along axis {axis}")


def concatenate(tensors, axis=0):
    tensors = list(tensors)
    _check_shapes("concatenate", tensors, axis, exclude_axis=True)
    return ops.Concatenate.apply(*tensors, axis=axis)


cat = concatenate


def stack(tensors, axis=0):
    tensors = list(tensors)
    _check_shapes("stack", tensors, 0, exclude_axis=False)
    return ops.Stack.apply(*tensors, axis=axis)


def split(x, size_or_sizes, axis=0):
    """Pieces of `x` along `axis`: of equal `size` (the last may be shorter), or of the given sizes."""
    n = x.shape[axis]
    if isinstance(size_or_sizes, int):
        sizes = [size_or_sizes] * (n // size_or_sizes) + ([n % size_or_sizes] if n % size_or_sizes else [])
    else:
        sizes = list(size_or_sizes)
        if sum(sizes) != n:
            raise ValueError(f"split: sizes {sizes} add up to {sum(sizes)}, but axis {axis} has length {n}")
    lead = (slice(None),) * (axis % x.ndim)
    pieces, start = [], 0
    for s in sizes:
        pieces.append(x[lead + (slice(start, start + s),)])
        start += s
    return pieces


def where(cond, a, b):
    """Elementwise `a` where `cond` else `b`; either may be a number."""
    ref = a if isinstance(a, Tensor) else b
    if not isinstance(ref, Tensor):
        raise TypeError("where: at least one of a and b must be a Tensor")
    cond = cond.data if isinstance(cond, Tensor) else cond
    if backend.device_of(cond) != ref.device:
        cond = backend.to_device(np.asarray(cond), ref.device)
    return ops.Where.apply(ref._lift(a), ref._lift(b), cond=cond)


def tril(x, diagonal=0):
    """The lower triangle of the last two axes: entries above `diagonal` set to zero (and their gradient).

        tril(Tensor(np.ones((3, 3))))  # [[1, 0, 0], [1, 1, 0], [1, 1, 1]]: the causal mask of chapter 3
    """
    if x.ndim < 2:
        raise ValueError(f"tril needs at least 2 axes, got shape {x.shape}")
    return ops.Tril.apply(x, k=diagonal)


def triu(x, diagonal=0):
    """The upper triangle of the last two axes: entries below `diagonal` set to zero (and their gradient).
    triu(ones, diagonal=1) marks the future positions a causal mask hides."""
    if x.ndim < 2:
        raise ValueError(f"triu needs at least 2 axes, got shape {x.shape}")
    return ops.Triu.apply(x, k=diagonal)


__all__ = [
    "Tensor", "Function", "tensor", "concatenate", "cat", "stack", "split", "where", "tril", "triu", "grad",
    "is_grad_enabled",
]
