"""What is present for the GPU path, probed without TensorRT's Python package or torch.

The GPU through the NVIDIA driver's libcuda, the TensorRT library Triton's
backend runs through libnvinfer, both with ctypes, so a missing piece is one
line (``Unavailable``), not a traceback. ``require_tensorrt`` is the GPU
tools' common start: the ``tensorrt`` module and a GPU, or exit status 3.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

__all__ = [
    "EXIT_UNAVAILABLE",
    "Unavailable",
    "decode_tensorrt_version",
    "missing_message",
    "probe_gpu",
    "probe_tensorrt_library",
    "require_tensorrt",
    "runtime",
]

# Exit status of the GPU tools when TensorRT or a GPU is missing: nothing was
# done, and callers (the image's entrypoint, CI) can tell it from a failure.
EXIT_UNAVAILABLE = 3


class Unavailable(Exception):
    """TensorRT, the NVIDIA driver or a GPU is missing; the message says which."""


def missing_message(tool: str, problems: list[str]) -> str:
    """One line saying what ``tool`` lacks to run here."""
    return f"{tool}: cannot run here: {'; '.join(problems)}. Run it in the GPU image (docker/) or on a machine with both (docs/gpu.md)."


_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
_CUDA_ERROR_NO_DEVICE = 100


def probe_gpu(index: int = 0) -> dict:
    """Name, compute capability, memory and driver of CUDA device ``index``.

    Asks the NVIDIA driver directly (libcuda), so it works without torch,
    TensorRT or the CUDA runtime. Raises Unavailable with a one-line reason.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        raise Unavailable("no NVIDIA driver (libcuda.so.1 not found), so no CUDA GPU is visible") from None
    rc = cuda.cuInit(0)
    if rc == _CUDA_ERROR_NO_DEVICE:
        raise Unavailable("no CUDA GPU is visible (the NVIDIA driver reports no device)")
    if rc != 0:
        raise Unavailable(f"the NVIDIA driver failed to initialise (cuInit error {rc})")
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        raise Unavailable("no CUDA GPU is visible")
    if not 0 <= index < count.value:
        raise Unavailable(f"CUDA device {index} does not exist ({count.value} visible)")
    device = ctypes.c_int(0)
    cuda.cuDeviceGet(ctypes.byref(device), index)
    name = ctypes.create_string_buffer(256)
    cuda.cuDeviceGetName(name, 256, device)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
    memory = ctypes.c_size_t(0)
    cuda.cuDeviceTotalMem_v2(ctypes.byref(memory), device)
    driver = ctypes.c_int(0)
    cuda.cuDriverGetVersion(ctypes.byref(driver))
    return {
        "index": index,
        "name": name.value.decode(errors="replace"),
        "compute_capability": f"{major.value}.{minor.value}",
        "memory_bytes": int(memory.value),
        "cuda_driver_version": f"{driver.value // 1000}.{driver.value % 1000 // 10}",
    }


def decode_tensorrt_version(value: int) -> str:
    """getInferLibVersion()'s integer as major.minor.patch.

    TensorRT 10 encodes major*10000 + minor*100 + patch; earlier releases
    major*1000 + minor*100 + patch.
    """
    if value >= 100000:
        return f"{value // 10000}.{value % 10000 // 100}.{value % 100}"
    return f"{value // 1000}.{value % 1000 // 100}.{value % 100}"


def _libnvinfer_candidates() -> list[str]:
    explicit = os.environ.get("SPLADE_LIBNVINFER")
    if explicit:
        return [explicit]
    # The dynamic loader's search first (what Triton's TensorRT backend links),
    # then the backend's own folder.
    names = ["libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"]
    return names + sorted(glob.glob("/opt/tritonserver/backends/tensorrt/libnvinfer.so.*"))


def probe_tensorrt_library() -> dict:
    """Version and file of the TensorRT library this process would load.

    Run it in a process that has not imported the ``tensorrt`` Python package
    (which loads its own copy): in the GPU image that is the library Triton's
    TensorRT backend uses. Raises Unavailable when none is found.
    """
    for candidate in _libnvinfer_candidates():
        try:
            lib = ctypes.CDLL(candidate)
        except OSError:
            continue
        lib.getInferLibVersion.restype = ctypes.c_int32
        version = decode_tensorrt_version(int(lib.getInferLibVersion()))
        return {"version": version, "library": candidate}
    raise Unavailable("TensorRT is not installed (no libnvinfer found; set SPLADE_LIBNVINFER to its path)")


def runtime() -> dict:
    """What this server runs: {"tensorrt_version", "gpu"}; Unavailable names all that is missing."""
    found, problems = {}, []
    for key, probe in (("tensorrt_version", lambda: probe_tensorrt_library()["version"]),
                       # Device 0 of those visible: choose with CUDA_VISIBLE_DEVICES.
                       ("gpu", lambda: probe_gpu(0))):
        try:
            found[key] = probe()
        except Unavailable as e:
            problems.append(str(e))
    if problems:
        raise Unavailable("; ".join(problems))
    return found


def import_tensorrt():
    """TensorRT's Python module: ``tensorrt`` (NVIDIA's meta package) or, as the GPU image
    installs it, the bindings wheel alone over the base image's TensorRT libraries."""
    try:
        import tensorrt
    except ImportError:
        import tensorrt_bindings as tensorrt
    return tensorrt


def require_tensorrt(tool: str, *extra):
    """(the ``tensorrt`` module, GPU info, results of ``extra``), or exit status 3 with one line.

    ``extra``: more probes (callables raising Unavailable), run only when
    TensorRT and a GPU are both present.
    """
    problems, trt, gpu = [], None, None
    try:
        trt = import_tensorrt()
    except Exception as e:  # ImportError, or OSError when its libraries are missing
        problems.append(f"TensorRT is not installed (import tensorrt: {str(e).splitlines()[0] if str(e) else type(e).__name__})")
    try:
        gpu = probe_gpu(0)
    except Unavailable as e:
        problems.append(str(e))
    found = []
    for probe in extra if not problems else ():
        try:
            found.append(probe())
        except Unavailable as e:
            problems.append(str(e))
    if problems:
        print(missing_message(tool, problems), file=sys.stderr)
        sys.exit(EXIT_UNAVAILABLE)
    return (trt, gpu, *found)
