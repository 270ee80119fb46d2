"""The one place that knows about devices.

A device is a name ("cpu", "cuda", "strict") and an array module (`xp`): NumPy on "cpu", CuPy on "cuda".
Every op asks for the module of its inputs with `get_array_module(*arrays)` and writes one code path;
no other file imports cupy or branches on the device.

"strict" is a simulated accelerator for tests on machines without a GPU (autograd/testing.py, loaded
only when that device is asked for): arrays that behave the way CuPy's do where it matters, so a stray
`np.` call on device data fails in CI instead of on a user's GPU.

`keep_freed_memory()` tunes the C library's allocator for training loops; programs that want it call it.
"""

import ctypes
import functools
import sys

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


_STRICT_MODULE = "autograd.testing"  # where the strict device lives: imported only when it is asked for


def _strict():
    from autograd import testing

    return testing


def cuda_available():
    """True where CuPy imports and sees at least one GPU."""
    try:
        _cupy()
    except DeviceError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# Host memory


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc serves allocations over 128 KiB-32 MiB with fresh mmap'd pages and unmaps them on
    free, so every step of a training loop faults its large temporaries (logits, gradients) in anew,
    and touching fresh pages is slow (docs/performance.md has the figures). Peak memory is unchanged;
    memory is reused, not added.
    Not done on import: a program that wants it calls it once at its start (the examples and benchmarks
    do: `autograd.backend.keep_freed_memory()`). Returns whether it took effect (False where the C
    library is not glibc).
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
        return _strict().strict_xp
    return np


def get_array_module(*arrays):
    """The array module that `arrays` live in (chainer's `backend.get_array_module`)."""
    for a in arrays:
        device = device_of(a)
        if device != "cpu":
            return xp_for(device)
    return np


def device_of(array):
    """"cpu" for NumPy arrays (and anything else on the host), "cuda" for CuPy's, "strict" for the test
    device's: read off the array's type, so the device never has to be imported to ask."""
    module = type(array).__module__
    if module.startswith("cupy"):
        return "cuda"
    if module == _STRICT_MODULE:
        return "strict"
    return "cpu"


def to_host(array):
    """A NumPy array with the same values (a copy where the array lives on a device)."""
    if device_of(array) != "cpu":
        return array.get()  # CuPy's name for the copy to the host; the strict device has it too
    return np.asarray(array)


def to_device(array, device):
    """`array` (NumPy, CuPy or strict) moved to `device`; returned as is when already there."""
    if device_of(array) == check_device(device):
        return array
    host = to_host(array)
    if device == "cpu":
        return host
    return xp_for(device).asarray(host)  # a copy, on the strict device as on a real one
