"""Test scaffolding: the "strict" simulated device, a stand-in for a GPU on machines without one.

Its arrays hold host memory but behave the way CuPy's do where it matters: `np.asarray(x)` raises,
mixing them with NumPy arrays raises, reductions stay 0-d device arrays, matmul takes no `out=`, and the
`xp` functions return strict arrays. Every test that takes a device runs on it, so code that would fail
on a user's GPU fails in CI. The backend (autograd/backend.py) loads this module only when the device
"strict" is asked for; the library itself never needs it.
"""

import types

import numpy as np


def _unwrap(obj, allow_host=False):
    """Strict arrays -> their host arrays, recursively; a NumPy array (but not a scalar) is refused."""
    if isinstance(obj, StrictArray):
        return obj._a
    if isinstance(obj, np.ndarray) and obj.ndim > 0 and not allow_host:
        raise TypeError(
            f"Unsupported type {type(obj)}: a host NumPy array was mixed with arrays on device 'strict' "
            "(CuPy refuses this too). Move it to the device first."
        )
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(o, allow_host) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v, allow_host) for k, v in obj.items()}
    return obj


def _wrap(obj):
    if isinstance(obj, np.ndarray):
        return StrictArray(obj)
    if isinstance(obj, np.generic):  # CuPy keeps reductions as 0-d device arrays, not host scalars
        return StrictArray(np.asarray(obj))
    if isinstance(obj, tuple):
        return tuple(_wrap(o) for o in obj)
    if isinstance(obj, list):
        return [_wrap(o) for o in obj]
    if isinstance(obj, (types.ModuleType, np.random.Generator)):
        return _StrictNamespace(obj)
    return obj


class StrictArray:
    """A host array dressed as a device array: it refuses implicit conversion to NumPy, as CuPy's do."""

    __slots__ = ("_a",)

    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed (device 'strict' behaves like CuPy). "
            "Copy to the host explicitly with .get() or Tensor.numpy()."
        )

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out")
        if ufunc is np.matmul and out is not None:
            raise TypeError("matmul with out= is not supported on device 'strict' (CuPy's matmul takes no out)")
        kwargs = _unwrap(kwargs)
        result = getattr(ufunc, method)(*_unwrap(inputs), **kwargs)
        if out is not None:
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def get(self):
        """Copy to the host (CuPy's name for it)."""
        return self._a.copy()

    # What CuPy allows on a device array: shape facts, indexing, methods, and scalar conversion (a sync).
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    T = property(lambda self: StrictArray(self._a.T))
    base = property(lambda self: None if self._a.base is None else StrictArray(self._a.base))

    def __len__(self):
        return len(self._a)

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap(index)])

    def __setitem__(self, index, value):
        self._a[_unwrap(index)] = _unwrap(value)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def __repr__(self):
        return repr(self._a).replace("array(", "strict_array(", 1)

    def __getattr__(self, name):
        if name.startswith("__"):  # __array_interface__ and friends would hand NumPy the host buffer
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            return lambda *args, **kwargs: _wrap(attr(*_unwrap(args), **_unwrap(kwargs)))
        return _wrap(attr)


def _forward_operator(name):
    def op(self, *args):
        return _wrap(getattr(self._a, name)(*_unwrap(args)))

    op.__name__ = name
    return op


def _forward_inplace(name):
    def op(self, other):
        getattr(self._a, name)(_unwrap(other))
        return self

    op.__name__ = name
    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
    setattr(StrictArray, f"__{_name}__", _forward_operator(f"__{_name}__"))
    setattr(StrictArray, f"__r{_name}__", _forward_operator(f"__r{_name}__"))
    setattr(StrictArray, f"__i{_name}__", _forward_inplace(f"__i{_name}__"))
for _name in ("lt", "le", "gt", "ge", "eq", "ne", "neg", "pos", "abs", "invert"):
    setattr(StrictArray, f"__{_name}__", _forward_operator(f"__{_name}__"))
StrictArray.__hash__ = None


class _StrictNamespace:
    """NumPy (or one of its submodules or generators) seen through the strict device: functions take
    strict arrays and return strict arrays; host arrays are refused except by asarray/array, which are
    the explicit host-to-device copies."""

    _TRANSFERS = ("asarray", "array", "ascontiguousarray")

    def __init__(self, namespace):
        self._ns = namespace

    def __getattr__(self, name):
        if name == "ndarray":
            return StrictArray
        attr = getattr(self._ns, name)
        if isinstance(attr, (types.ModuleType, np.random.Generator)):
            return _StrictNamespace(attr)
        if isinstance(attr, (np.ufunc, type)) or not callable(attr):
            return attr  # ufuncs dispatch through StrictArray.__array_ufunc__; dtypes and constants pass
        allow_host = name in self._TRANSFERS

        def call(*args, **kwargs):
            return _wrap(attr(*_unwrap(args, allow_host), **_unwrap(kwargs, allow_host)))

        return call


strict_xp = _StrictNamespace(np)
