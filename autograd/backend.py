"""The one place that knows about devices.

A device is a name ("cpu", "cuda", "strict") and an array module (`xp`): NumPy on "cpu", CuPy on "cuda".
Every op asks for the module of its inputs with `get_array_module(*arrays)` and writes one code path;
no other file imports cupy or branches on the device.

"strict" is a simulated accelerator for tests on machines without a GPU. Its arrays hold host memory
but behave the way CuPy's do where it matters: `np.asarray(x)` raises, mixing them with NumPy arrays
raises, and `xp` functions return strict arrays. A stray `np.` call on device data therefore fails in
CI instead of on a user's GPU.
"""

import ctypes
import functools
import sys
import types

import numpy as np

DEVICES = ("cpu", "cuda", "strict")


class DeviceError(RuntimeError):
    """A device was asked for that cannot be used here, or arrays from two devices were mixed."""


# ---------------------------------------------------------------------------------------------------
# CuPy, imported only when "cuda" is asked for


@functools.cache
def _cupy():
    try:
        import cupy
    except ImportError as e:
        raise DeviceError(
            "device 'cuda' needs CuPy, which is not installed. Install the GPU extra: "
            "pip install 'tinygrad-llm[gpu]' (CuPy for CUDA 12), or use device 'cpu'."
        ) from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDA driver missing or broken: CuPy raises its own runtime error types
        raise DeviceError(
            f"device 'cuda': CuPy is installed but no usable NVIDIA GPU was found ({e}). "
            "Check the driver with nvidia-smi, or use device 'cpu'."
        ) from e
    if count == 0:
        raise DeviceError("device 'cuda': CuPy is installed but this machine has no GPU; use device 'cpu'.")
    return cupy


def cuda_available():
    """True where CuPy imports and sees at least one GPU."""
    try:
        _cupy()
    except DeviceError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# The strict simulated device


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


# ---------------------------------------------------------------------------------------------------
# Host memory


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc serves allocations over 128 KiB-32 MiB with fresh mmap'd pages and unmaps them on
    free, so every step of a training loop faults its large temporaries (logits, gradients) in anew.
    On these machines touching fresh pages costs about 2 ms per MB: measured on a (512, 50257)
    cross-entropy-sized subtraction plus a (50257, 768) zeroed gradient, 48 ms a repetition with the
    default and 25 ms with freed memory kept. Peak memory is unchanged; memory is reused, not added.
    Called once when autograd is imported; a no-op where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


keep_freed_memory()


# ---------------------------------------------------------------------------------------------------
# The public helpers


def check_device(device):
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    return device


def xp_for(device):
    """The array module of a device: NumPy, CuPy or the strict simulation."""
    check_device(device)
    if device == "cuda":
        return _cupy()
    if device == "strict":
        return strict_xp
    return np


def get_array_module(*arrays):
    """The array module that `arrays` live in (chainer's `backend.get_array_module`)."""
    for a in arrays:
        if isinstance(a, StrictArray):
            return strict_xp
        if type(a).__module__.startswith("cupy"):
            return _cupy()
    return np


def device_of(array):
    if isinstance(array, StrictArray):
        return "strict"
    if type(array).__module__.startswith("cupy"):
        return "cuda"
    return "cpu"


def to_host(array):
    """A NumPy array with the same values (a copy where the array lives on a device)."""
    if isinstance(array, StrictArray):
        return array.get()
    if type(array).__module__.startswith("cupy"):
        return array.get()
    return np.asarray(array)


def to_device(array, device):
    """`array` (NumPy, CuPy or strict) moved to `device`; returned as is when already there."""
    if device_of(array) == check_device(device):
        return array
    host = to_host(array)
    if device == "cpu":
        return host
    if device == "strict":
        return StrictArray(np.array(host))  # a copy, as a real transfer makes
    return xp_for(device).asarray(host)
