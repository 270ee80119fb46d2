"""The Tensor: one array, its gradient, and the op that made it.

`backward()` walks the graph in an iterative topological order (no recursion, so a chain of any
length works), hands each op the gradient of its output, sums gradients that meet at a tensor, and
frees the graph as it goes.
"""

import numpy as np

from autograd import backend, ops
from autograd.function import Function, is_grad_enabled, unbroadcast

_FREED = object()  # marks an op output whose graph a backward pass has already consumed


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

    def __repr__(self):
        body = np.array2string(self.numpy(), separator=", ", threshold=20, edgeitems=2, prefix="tensor(")
        extra = "" if self.device == "cpu" else f", device={self.device!r}"
        if self.data.dtype != np.float32:
            extra += f", dtype={self.data.dtype}"
        if self.requires_grad:
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

    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) into every leaf's `.grad`; `grad` is d(loss)/d(self), 1 for a scalar."""
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad: no input of the computation had "
                "requires_grad=True (or it ran under no_grad())"
            )
        xp = backend.xp_for(self.device)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a scalar, but this tensor has shape {self.shape}; "
                    "reduce it first (e.g. .sum() or .mean()) or pass grad= with that shape"
                )
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            if backend.device_of(grad) != self.device:
                grad = backend.to_device(np.asarray(grad, dtype=self.dtype), self.device)
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward(): grad has shape {tuple(grad.shape)} but the tensor has {self.shape}")

        grads = {id(self): grad}
        owned = set()  # ids whose summed gradient buffer we allocated, so it may be added to in place
        handed = set()  # ids of arrays already given to a leaf: a second leaf gets its own copy
        for t in reversed(self._topological_order()):
            g = grads.pop(id(t), None)
            if g is None:
                continue
            ctx = t._ctx
            if ctx is None:
                t._accumulate(g, handed)
                continue
            if ctx is _FREED:
                raise RuntimeError(
                    "backward() through a graph a second time: the first backward freed it; "
                    "run the forward pass again"
                )
            in_grads = ctx.backward(g)
            for parent, pg in zip(ctx.inputs, in_grads):
                if pg is None or not parent.requires_grad:
                    continue
                if tuple(pg.shape) != parent.shape:
                    pg = unbroadcast(pg, parent.shape)
                key = id(parent)
                prev = grads.get(key)
                if prev is None:
                    grads[key] = pg
                elif key in owned:
                    prev += pg
                else:
                    grads[key] = prev + pg
                    owned.add(key)
            t._ctx = _FREED

    def _accumulate(self, g, handed):
        if self.grad is None:
            if id(g) in handed:
                g = g.copy()
            handed.add(id(g))
            self.grad, self._grad_owned = g, False
        elif self._grad_owned:
            self.grad += g
        else:
            self.grad, self._grad_owned = self.grad + g, True

    def _topological_order(self):
        """Tensors that need a gradient, each after every tensor it was computed from."""
        order, visited, stack = [], set(), [(self, False)]
        while stack:
            t, expanded = stack.pop()
            if expanded:
                order.append(t)
                continue
            if id(t) in visited:
                continue
            visited.add(id(t))
            stack.append((t, True))
            ctx = t._ctx
            if ctx is not None and ctx is not _FREED:
                for p in ctx.inputs:
                    if p.requires_grad and id(p) not in visited:
                        stack.append((p, False))
        return order

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

    def sum(self, axis=None, keepdims=False):
        return ops.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return ops.Mean.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return ops.Max.apply(self, axis=axis, keepdims=keepdims)

    def var(self, axis=None, keepdims=False, correction=1):
        """Variance; correction=1 (PyTorch's default) divides by n - 1, correction=0 by n."""
        return ops.Var.apply(self, axis=axis, keepdims=keepdims, correction=correction)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return ops.Reshape.apply(self, shape=tuple(shape))

    view = reshape

    def flatten(self, start=0):
        return self.reshape(self.shape[:start] + (-1,))

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


def is_tensor(x):
    return isinstance(x, Tensor)


__all__ = ["Tensor", "Function", "tensor", "concatenate", "cat", "stack", "split", "where", "is_grad_enabled"]
