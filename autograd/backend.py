"""The one place that knows about devices.

A device is a name ("cpu", "cuda", "strict") and an array module (`xp`): NumPy on "cpu", CuPy on "cuda".
Every op asks for the module of its inputs with `get_array_module(*arrays)` and writes one code path;
no other file imports cupy or branches on the device.

"strict" is a simulated accelerator for tests on machines without a GPU (autograd/testing.py, loaded
only when that device is asked for): arrays that behave the way CuPy's do where it matters, so a stray
`np.` call on device data fails in CI instead of on a user's GPU.

`keep_freed_memory()` tunes the C library's allocator for training loops; programs that want it call it.
`blockwise` runs a chain of elementwise passes in cache-sized blocks on the host's cores, and inside
`host_parallel()` (a long prefill) BLAS runs on one thread while those same threads split the products
(`matmul`) and attention.
`device_info`, `peak_memory`, `is_out_of_memory` and `synchronize` answer a program's questions about a
device (what it is, how much memory a run took, whether an error means it ran out, when its queued work
is done) the same way for every device; `enable_tf32` switches CuPy's float32 matmuls to TensorFloat-32.
"""

import contextlib
import ctypes
import functools
import os
import platform
import sys
import threading

# OpenBLAS's worker threads spin for 2^28 cycles (about 0.1 s) after each BLAS call before they sleep, so
# the passes that follow a matmul (GELU, softmax, cross-entropy in `blockwise`, AdamW's threads) would
# find the other cores taken. 2^20 cycles (under a millisecond) still bridges the back-to-back GEMMs of a
# stacked matmul (docs/performance.md has the measurement). OpenBLAS reads the variable once, when NumPy
# loads it: this takes effect in a program that imports autograd (or a package built on it) before NumPy,
# as the examples do; a value already set is kept.
if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

import numpy as np  # noqa: E402  (after the setting above)

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
            "device 'cuda' needs CuPy, which is not installed. Install the GPU extra for the CUDA version "
            "that nvidia-smi shows: pip install -e '.[gpu-cuda13]' (CUDA 13) or '.[gpu-cuda12]' (CUDA 12), "
            "or use device 'cpu'."
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
# TensorFloat-32


def enable_tf32(device):
    """Let CuPy run float32 matmuls in TensorFloat-32 on the GPU's tensor cores (NVIDIA Ampere and later):
    the inputs are rounded to a 10-bit mantissa, the products summed in float32. Faster, and about three
    decimal digits per product instead of seven; PyTorch calls it
    `torch.backends.cuda.matmul.allow_tf32`. Off unless a program asks for it.

    CuPy's switch is its documented environment variable CUPY_TF32 (default 0), and when it is read matters: CuPy
    reads it once, at the first float32 matmul of the process, and keeps the answer (`get_compute_type` in
    cupy/_core/_routines_linalg.pyx); importing CuPy does not read it. This sets it before the backend
    first imports CuPy, so no matmul can have run yet. Once CuPy is imported a float32 matmul may already
    have fixed the mode, so asking then is refused rather than silently ignored.
    Only device "cuda" has TF32: the CPU and the strict test device multiply float32 in full float32, and
    are refused with a DeviceError instead of a switch that does nothing.
    """
    check_device(device)
    if device != "cuda":
        raise DeviceError(f"TF32 is a math mode of NVIDIA GPUs: it needs device 'cuda', not {device!r} "
                          "(the CPU multiplies float32 in full float32); leave TF32 off or use device 'cuda'")
    if os.environ.get("CUPY_TF32") == "1":
        return
    if "cupy" in sys.modules:
        raise DeviceError("TF32 must be switched on before CuPy is first imported (CuPy reads CUPY_TF32 at "
                          "its first float32 matmul); set CUPY_TF32=1 in the environment instead")
    os.environ["CUPY_TF32"] = "1"


def tf32_enabled():
    """Whether CuPy's float32 matmuls run in TF32 in this process (CUPY_TF32=1)."""
    return os.environ.get("CUPY_TF32") == "1"


# ---------------------------------------------------------------------------------------------------
# What a device is, how much memory a run took, and whether it ran out


def _host_memory_bytes():
    """Physical memory of this machine, or 0 where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def device_info(device):
    """{"device", "name", "total_memory", "tf32"} for `device`: the GPU's name and memory in bytes on "cuda"
    (from cudaGetDeviceProperties), the host on "cpu", the simulation and its memory limit on "strict";
    "tf32" says whether float32 matmuls run in TensorFloat-32 there (only ever on "cuda").

    >>> device_info("cpu")  # doctest: +SKIP
    {'device': 'cpu', 'name': 'x86_64 CPU, 16 cores', 'total_memory': 134217728000, 'tf32': False}
    """
    check_device(device)
    if device == "cuda":
        cupy = _cupy()
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        return {"device": device, "name": name, "total_memory": int(props["totalGlobalMem"]),
                "tf32": tf32_enabled()}
    if device == "strict":
        return {"device": device, "name": "strict (a simulated device in host memory)",
                "total_memory": _strict().memory.limit or _host_memory_bytes(), "tf32": False}
    cpu = f"{platform.machine() or 'unknown'} CPU, {os.cpu_count()} cores"
    return {"device": device, "name": cpu, "total_memory": _host_memory_bytes(), "tf32": False}


def peak_memory(device):
    """The most memory this process has held on `device` so far, in bytes.

    "cuda": the bytes CuPy's default memory pool holds (`MemoryPool.total_bytes()`). The pool keeps the
    blocks it frees for reuse instead of returning them to the GPU, so what it holds only grows: after a
    run it is the run's peak (a caller that empties the pool with `free_all_blocks()` resets it).
    "strict": the peak of the simulated device's live arrays (autograd/testing.py keeps the count).
    "cpu": the process's peak resident set size, which includes the interpreter and its libraries
    (0 where the OS has no getrusage).
    """
    check_device(device)
    if device == "cuda":
        return int(_cupy().get_default_memory_pool().total_bytes())
    if device == "strict":
        return _strict().memory.peak
    try:
        import resource  # POSIX only
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def synchronize(device):
    """Wait until `device` has finished the work queued on it: a GPU runs kernels asynchronously, so a
    timer read without this measures only the launches. Nothing to wait for on "cpu" and "strict"."""
    check_device(device)
    if device == "cuda":
        _cupy().cuda.Device().synchronize()


def is_out_of_memory(error):
    """Whether `error` says a device ran out of memory: every device raises a MemoryError subclass for it
    (CuPy's `cupy.cuda.memory.OutOfMemoryError`, NumPy's `_ArrayMemoryError`, the strict device's
    `OutOfDeviceMemory`), so one check serves all of them without importing CuPy."""
    return isinstance(error, MemoryError)


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


# ---------------------------------------------------------------------------------------------------
# Host elementwise work in cache-sized blocks over every core

HOST_THREADS = min(4, os.cpu_count() or 1)
BLOCK_ELEMENTS = 1 << 16  # 256 KiB of float32 per array: a chain of passes stays in the core's L2 cache
_pool = None


def blockwise(fn, *arrays, block=BLOCK_ELEMENTS):
    """fn(xp, *pieces) over matching row blocks of `arrays` (the same number of rows after flattening all
    but the last axis: an elementwise chain, or a row-wise one such as a normalization), in place.

    NumPy runs each ufunc on one core, one whole-array pass after another: a chain of eight passes over a
    (2, 256, 3072) activation streams it through memory eight times. In blocks of ~64K elements the chain
    runs while a block sits in cache, and the blocks are shared by HOST_THREADS threads (ufuncs release
    the GIL): a chain such as GELU's gains more than the extra core alone (docs/performance.md). On a GPU,
    the strict device, small arrays, or arrays whose rows are not each contiguous, fn is called once on
    the whole arrays: one kernel per pass is what a GPU wants. fn must not depend on where the blocks
    start or end.
    """
    first = arrays[0]
    xp = get_array_module(first)
    rows = first.size // first.shape[-1] if first.ndim else 1
    threaded = xp is np and first.size > 2 * block and HOST_THREADS > 1 and not _on_pool_thread()
    flat = _row_views(arrays, rows) if threaded else None
    if flat is None:
        fn(xp, *arrays)
        return
    step = max(1, block // flat[0].shape[1])
    starts = range(0, rows, step)

    def work(k):
        for i in starts[k::HOST_THREADS]:
            fn(np, *(f[i:i + step] for f in flat))

    parallel_map(work, range(HOST_THREADS))


def parallel_map(fn, items):
    """fn(item) for every item on the HOST_THREADS threads (each takes the next item when it is free);
    returns the results in order and re-raises the first exception. From one of those threads (a task
    that asks for more parallel work) the items run there, one after another: a task never waits for a
    free thread."""
    global _pool
    if _on_pool_thread():
        return [fn(item) for item in items]
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(HOST_THREADS, thread_name_prefix="blockwise")
    return list(_pool.map(fn, items))


def _on_pool_thread():
    return threading.current_thread().name.startswith("blockwise")


def _row_views(arrays, rows):
    """Each array as a (rows, columns) view of its own memory, or None where one cannot be: a NumPy array
    that is C-contiguous, or whose rows are each contiguous at a fixed stride (a slice of the last axis, as
    the gate and up halves of one stacked product are). A reshape that would copy gives None: the blocks
    must write into the arrays themselves."""
    views = []
    for a in arrays:
        if type(a) is not np.ndarray:
            return None
        if a.flags.c_contiguous:
            views.append(a.reshape(rows, -1))
            continue
        if a.ndim < 2 or a.strides[-1] != a.itemsize:
            return None
        view = a.reshape(rows, -1)
        if not np.may_share_memory(view, a):  # a copy: its memory is elsewhere
            return None
        views.append(view)
    return views


# ---------------------------------------------------------------------------------------------------
# Inference over many positions on the host: one set of threads for the products and the passes

_blas = None  # threadpoolctl's handle on the BLAS libraries NumPy loaded (False: none it can set)
_region = threading.local()  # .depth: 1 while this thread is inside a host_parallel() block
MATMUL_MIN_ROWS = 64  # a product of fewer rows than HOST_THREADS * this runs whole
PARALLEL_MIN_ROWS = 320  # host_parallel(rows) for fewer rows than this runs as outside it


@contextlib.contextmanager
def host_parallel(rows=None):
    """Inside: BLAS runs on one thread, and `matmul` and the attention op split their work over the
    HOST_THREADS threads that `blockwise` runs on (a product in row blocks, attention a (batch, key/value
    head, query chunk) block each). Nothing changes on a GPU, with one host thread, or where
    threadpoolctl finds no BLAS it can set, or for `rows` (the rows of the products inside: batch times
    positions) under PARALLEL_MIN_ROWS. The results are those of the same work outside, up to
    rounding: a product split in rows runs the same GEMM kernel on each block (the same floats, in
    SmolLM2's prefill too), and attention scales the queries rather than the scores (the same floats
    where 1/sqrt(head_dim) is a power of two).

    Why: with BLAS on its own threads, two sets of threads take turns on the cores. After each product
    OpenBLAS's threads spin for a while before they sleep (OPENBLAS_THREAD_TIMEOUT, above), so the
    passes between products (norms, SwiGLU, the softmax) share the cores with a spinning thread, and
    attention's small products each pay a hand-off between threads. A forward pass without a graph over
    many positions (a prefill) runs inside this (`Llama.forward`); a decoded token does not: its
    matrix-vector products are OpenBLAS's threads streaming the weights, with nothing between them to
    contend with. Nor does a short prefill: products of a few rows read the weights faster on BLAS's
    threads (SmolLM2 on 2 cores: 64 positions 1.6x and 192 positions 1.1x slower inside, 256 even,
    384 7 % and 512 9 % faster). docs/llama-performance.md has the measurement.
    """
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController

            controller = ThreadpoolController().select(user_api="blas")
            _blas = controller if controller.lib_controllers else False
        except Exception:  # no threadpoolctl, or a BLAS it cannot read: run as before
            _blas = False
    if not _blas or HOST_THREADS < 2 or getattr(_region, "depth", 0) or (rows is not None and rows < PARALLEL_MIN_ROWS):
        yield
        return
    with _blas.limit(limits=1):
        _region.depth = 1
        try:
            yield
        finally:
            _region.depth = 0


def in_host_parallel():
    """True inside `host_parallel()` (on the thread that entered it), where BLAS runs on one thread."""
    return getattr(_region, "depth", 0) > 0


def matmul(a, b):
    """a @ b; inside `host_parallel()`, a host product of a (N, K) `a` with many rows runs as HOST_THREADS
    row blocks, one on each thread, each written into its rows of the result."""
    n = a.shape[0] if a.ndim == 2 else 0
    if not in_host_parallel() or type(a) is not np.ndarray or n < HOST_THREADS * MATMUL_MIN_ROWS:
        return a @ b
    y = np.empty((n, b.shape[1]), dtype=np.result_type(a, b))
    bounds = [n * i // HOST_THREADS for i in range(HOST_THREADS + 1)]

    def block(i):
        np.matmul(a[bounds[i]:bounds[i + 1]], b, out=y[bounds[i]:bounds[i + 1]])

    parallel_map(block, range(HOST_THREADS))
    return y
