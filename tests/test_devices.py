"""The backend's device facts: what a device is (device_info), how much memory a run took (peak_memory),
whether an error means it ran out (is_out_of_memory), the strict device's simulated memory and its
out-of-memory error, and the TF32 switch (enable_tf32) with when it may be thrown."""

import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autograd import DeviceError, backend
from autograd.testing import OutOfDeviceMemory, memory, strict_xp

ROOT = Path(__file__).resolve().parents[1]


def test_device_info_of_the_cpu():
    info = backend.device_info("cpu")
    assert set(info) == {"device", "name", "total_memory", "tf32"}
    assert info["device"] == "cpu" and info["tf32"] is False
    assert info["name"].endswith(f"CPU, {os.cpu_count()} cores")
    if sys.platform.startswith("linux"):
        assert info["total_memory"] == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_device_info_of_the_strict_device_reports_its_limit():
    with memory.limited(123_456):
        assert backend.device_info("strict")["total_memory"] == 123_456
    assert backend.device_info("strict")["name"].startswith("strict")


def test_device_info_refuses_an_unknown_device():
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        backend.device_info("tpu")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB is Linux's")
def test_peak_memory_of_the_cpu_is_the_peak_resident_size():
    import resource

    assert backend.peak_memory("cpu") == resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 > 0


def test_the_strict_device_counts_its_live_arrays_once_and_frees_them():
    gc.collect()
    start = memory.in_use
    a = strict_xp.zeros(1000, dtype=np.float32)
    assert memory.in_use == start + 4000
    view = a[10:]  # a view allocates nothing
    b = a + 1  # a new array does
    assert memory.in_use == start + 8000
    assert backend.peak_memory("strict") == memory.peak >= start + 8000
    del a, b, view
    gc.collect()
    assert memory.in_use == start


def test_the_strict_device_runs_out_of_memory_past_its_limit():
    gc.collect()
    x = strict_xp.ones(100, dtype=np.float32)  # 400 bytes
    with memory.limited(memory.in_use + 1000):
        small = x * 2  # 400 more: fits
        with pytest.raises(OutOfDeviceMemory, match=r"Out of memory allocating 4,000 bytes on device 'strict'") as e:
            strict_xp.zeros(1000, dtype=np.float32)
        assert backend.is_out_of_memory(e.value)
    assert memory.limit == 0  # restored after the block
    assert strict_xp.zeros(1000, dtype=np.float32).shape == (1000,) and small.shape == (100,)


def test_is_out_of_memory_knows_numpy_and_refuses_other_errors():
    with pytest.raises(MemoryError) as e:
        np.empty(2**62, dtype=np.uint8)  # 4 EiB: NumPy's own _ArrayMemoryError, at once
    assert backend.is_out_of_memory(e.value)
    assert not backend.is_out_of_memory(ValueError("shapes do not match"))
    assert not backend.is_out_of_memory(RuntimeError("out of memory"))  # the words alone are not enough


@pytest.mark.parametrize("device", ["cpu", "strict"])
def test_tf32_is_refused_off_the_gpu(device):
    with pytest.raises(DeviceError, match=f"TF32 is a math mode of NVIDIA GPUs: it needs device 'cuda', not '{device}'"):
        backend.enable_tf32(device)


def python(code, **env):
    """Run `code` in a fresh interpreter (CuPy, if installed, not yet imported), CUPY_TF32 as given."""
    environ = {k: v for k, v in os.environ.items() if k != "CUPY_TF32"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**environ, "PYTHONPATH": str(ROOT), **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_tf32_sets_cupys_variable_before_cupy_is_imported():
    code = ("import os, sys\nfrom autograd import backend\nbackend.enable_tf32('cuda')\n"
            "print(os.environ['CUPY_TF32'], 'cupy' in sys.modules, backend.tf32_enabled())")
    assert python(code) == "1 False True"


def test_tf32_is_refused_once_cupy_is_imported_without_it():
    code = ("import sys, types\nsys.modules['cupy'] = types.ModuleType('cupy')  # as if imported already\n"
            "from autograd import DeviceError, backend\n"
            "try:\n    backend.enable_tf32('cuda')\nexcept DeviceError as e:\n    print(e)\n")
    assert "before CuPy is first imported" in python(code)
    # set in the environment from the start, it is already in force: nothing to refuse
    code = code.replace("except DeviceError as e:\n    print(e)", "except DeviceError:\n    raise\nprint('ok')")
    assert python(code, CUPY_TF32="1") == "ok"


def test_tf32_is_off_by_default():
    assert python("from autograd import backend\nprint(backend.tf32_enabled())") == "False"


# ---------------------------------------------------------------------------------------------------
# On a real GPU (pytest -m gpu; skipped where there is none)

def gpu(test):
    """Marks a test as needing CuPy and a CUDA GPU (as conftest's "cuda" device does): `pytest -m gpu`."""
    skip = pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a CUDA GPU; none here")
    return pytest.mark.gpu(skip(test))


@gpu
def test_device_info_of_the_gpu():
    import cupy

    info = backend.device_info("cuda")
    free, total = cupy.cuda.Device().mem_info  # a second source (cudaMemGetInfo) for the same fact
    assert info["total_memory"] == pytest.approx(total, rel=0.05) and total > 2**30
    assert info["name"] and info["tf32"] is False


@gpu
def test_peak_memory_of_the_gpu_is_what_the_pool_holds():
    import cupy

    x = cupy.ones(64 * 2**20 // 4, dtype=cupy.float32)  # 64 MiB
    backend.synchronize("cuda")
    assert backend.peak_memory("cuda") == cupy.get_default_memory_pool().total_bytes() >= x.nbytes


@gpu
def test_running_out_of_gpu_memory_is_recognised():
    import cupy

    with pytest.raises(MemoryError) as e:
        cupy.empty(2 * backend.device_info("cuda")["total_memory"], dtype=cupy.uint8)
    assert isinstance(e.value, cupy.cuda.memory.OutOfMemoryError) and backend.is_out_of_memory(e.value)


@gpu
def test_tf32_changes_float32_matmuls_on_the_gpu():
    """TF32 keeps 10 mantissa bits of each input: a float32 matmul drifts from float64 by ~1e-3 relative
    with it and ~1e-6 without (on GPUs of compute capability 8.0 and up, where TF32 exists)."""
    code = ("import sys, numpy as np\nfrom autograd import backend\n"
            "if sys.argv[1] == 'tf32':\n    backend.enable_tf32('cuda')\n"
            "cp = backend.xp_for('cuda')\nrng = np.random.default_rng(0)\n"
            "a, b = (rng.standard_normal((512, 512)).astype(np.float32) for _ in range(2))\n"
            "got = cp.asnumpy(cp.asarray(a) @ cp.asarray(b)).astype(np.float64)\n"
            "want = a.astype(np.float64) @ b.astype(np.float64)\n"
            "print(np.abs(got - want).max() / np.abs(want).max(), backend.device_info('cuda')['tf32'])")
    errors = {}
    for mode in ("fp32", "tf32"):
        proc = subprocess.run([sys.executable, "-c", code, mode], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env={**{k: v for k, v in os.environ.items() if k != "CUPY_TF32"},
                                                "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr
        error, flag = proc.stdout.split()
        errors[mode] = float(error)
        assert flag == str(mode == "tf32")
    assert errors["fp32"] < 1e-5 < errors["tf32"], errors
