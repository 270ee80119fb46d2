"""Test scaffolding: the "strict" simulated device, a stand-in for a GPU on machines without one.

Its arrays hold host memory but behave the way CuPy's do where it matters: `np.asarray(x)` raises,
mixing them with NumPy arrays raises, reductions stay 0-d device arrays, matmul takes no `out=`, and the
`xp` functions return strict arrays. Every test that takes a device runs on it, so code that would fail
on a user's GPU fails in CI. The backend (autograd/backend.py) loads this module only when the device
"strict" is asked for; the library itself never needs it.

It also keeps a device memory count, as CuPy's memory pool does: `memory.in_use` and `memory.peak` are
the bytes of the live arrays it allocated, and `with memory.limited(nbytes):` makes an allocation past
`nbytes` raise `OutOfDeviceMemory`, a MemoryError, as CuPy raises its OutOfMemoryError -- so a program's
out-of-memory handling can be tested without a GPU.
"""

import contextlib
import types
import weakref

import numpy as np


class OutOfDeviceMemory(MemoryError):
    """The strict device ran out of memory (CuPy's `cupy.cuda.memory.OutOfMemoryError` is a MemoryError too)."""


class DeviceMemory:
    """The strict device's memory: the bytes of its live arrays (each counted once, from its allocation
    until it is freed), their peak, and an optional limit.

    >>> with memory.limited(1 << 20):
    ...     strict_xp.zeros(1 << 20, dtype=np.float32)  # 4 MiB  # doctest: +SKIP
    OutOfDeviceMemory: Out of memory allocating 4,194,304 bytes on device 'strict' (...)
    """

    def __init__(self):
        self.limit = 0  # bytes; 0: no limit
        self.in_use = 0
        self.peak = 0
        self._live = set()  # ids of the host arrays counted, each until it is garbage-collected

    def allocate(self, array):
        """Count `array` (a host array that owns its memory) as allocated on the device, or raise
        OutOfDeviceMemory when that would pass the limit."""
        key = id(array)
        if key in self._live:
            return
        nbytes = array.nbytes
        if self.limit and self.in_use + nbytes > self.limit:
            raise OutOfDeviceMemory(
                f"Out of memory allocating {nbytes:,} bytes on device 'strict' (allocated so far: "
                f"{self.in_use:,} bytes, limit set to: {self.limit:,} bytes)")
        self._live.add(key)
        self.in_use += nbytes
        self.peak = max(self.peak, self.in_use)
        weakref.finalize(array, self._free, key, nbytes)

    def _free(self, key, nbytes):
        self._live.discard(key)
        self.in_use -= nbytes

    @contextlib.contextmanager
    def limited(self, nbytes):
        """Within the block, the device has `nbytes` bytes: an allocation past them raises."""
        previous, self.limit = self.limit, nbytes
        try:
            yield self
        finally:
            self.limit = previous


memory = DeviceMemory()


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
        if obj.base is None:  # it owns its memory: a new allocation (a view shares its base's)
            memory.allocate(obj)
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
