"""Loading of the compiled op library ``cdred_fast._C`` and the build report."""

from __future__ import annotations

import functools
import importlib
import json
import os
import warnings

import torch

_load_error: str | None = None
# A path to the op library built by tools/cuda_emu/build.py: loaded instead of cdred_fast._C, so
# that every op runs its CUDA kernels, emulated on the CPU, on CPU tensors (the test suite's
# python_tests/test_cuda_emulation.py sets it in a child process).
EMULATION_LIBRARY_ENV = "CDRED_FAST_CUDA_EMULATION_LIBRARY"


@functools.lru_cache(maxsize=None)
def load() -> bool:
    """Import the op library once. Returns False (and remembers why) when it is missing or broken.

    A library that exists but fails to load (an ABI mismatch, a CUDA runtime that is not
    torch's) takes the CPU kernels down with the CUDA ones, so that case warns once, with
    the reason; ``build_info()["load_error"]`` keeps it.
    """
    global _load_error
    if os.environ.get("CDRED_FAST_DISABLE_EXTENSION") == "1":
        _load_error = "disabled by CDRED_FAST_DISABLE_EXTENSION=1"
        return False
    emulated = os.environ.get(EMULATION_LIBRARY_ENV)
    if emulated:  # the CUDA emulator's build (tools/cuda_emu), for tests: no fallback, no _C
        if not os.path.isfile(emulated):
            raise RuntimeError(
                f"{EMULATION_LIBRARY_ENV}={emulated}: no such file (build it: python tools/cuda_emu/build.py)"
            )
        torch.ops.load_library(emulated)
        return True
    try:
        importlib.import_module("cdred_fast._C")  # runs the TORCH_LIBRARY registrations
    except ModuleNotFoundError:
        _load_error = (
            "the C++ extension cdred_fast._C is not built. Install the package with "
            "`pip install --no-build-isolation .` (torch installed first)."
        )
        return False
    except ImportError as exc:  # ABI mismatch, missing symbols, a second CUDA runtime, ...
        _load_error = (
            f"cdred_fast._C failed to load against torch {torch.__version__}: {exc}. Rebuild it with "
            "`pip install --no-build-isolation --force-reinstall --no-deps .` under the torch you use."
        )
        warnings.warn(
            f"cdred_fast: the fused ops (CPU and CUDA) are unavailable, every op runs the pure-PyTorch "
            f"reference: {_load_error}",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


def available() -> bool:
    """True when the fused ops are usable in this process."""
    return load()


def load_error() -> str | None:
    """Why the library is not available (None when it is)."""
    load()
    return _load_error


def require() -> None:
    """Raise a RuntimeError that says what to do when the fused ops are unavailable."""
    if not load():
        raise RuntimeError(f"cdred_fast fused ops are unavailable: {_load_error}")


def build_info() -> dict:
    """What the installed extension was compiled with.

    Keys: ``torch_version`` (the torch it was built against), ``torch_version_runtime``,
    ``cpu_kernels`` and ``cuda_kernels`` (bools), ``cuda_arch_list`` (list of str),
    ``cuda_version`` (torch's CUDA version the kernels were built for, or None),
    ``nvcc_version`` (the CUDA version of the nvcc that compiled them, or None),
    ``extension_loaded`` and ``load_error``; ``cuda_emulation`` (True only for the CUDA
    emulator's test build, tools/cuda_emu, whose ops run their CUDA kernels on the CPU); and
    ``cpu_native_bf16``, this CPU's native bfloat16 instruction sets (:func:`cpu_native_bf16`).
    """

    info = {
        "torch_version": None,
        "torch_version_runtime": torch.__version__,
        "cpu_kernels": False,
        "cuda_kernels": False,
        "cuda_arch_list": [],
        "cuda_version": None,
        "nvcc_version": None,
        "cuda_emulation": False,
        "extension_loaded": load(),
        "load_error": _load_error,
        "cpu_native_bf16": cpu_native_bf16(),
    }
    if info["extension_loaded"]:
        compiled = json.loads(torch.ops.cdred_fast._build_info())
        info.update(compiled)
    return info


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # Linux /proc/cpuinfo names of native bf16 instructions


def cpuinfo_value(key: str) -> str:
    """The value of the first ``key : value`` line of ``/proc/cpuinfo`` (e.g. ``"flags"``,
    ``"model name"``), ``""`` when there is none (or off Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def bf16_flags_of(flags: str) -> list[str]:
    """The native-bf16 instruction sets named in a ``/proc/cpuinfo`` ``flags`` line."""
    present = set(flags.split())
    return [f for f in BF16_CPU_FLAGS if f in present]


def cpu_native_bf16() -> list[str]:
    """This CPU's native bfloat16 instruction sets, ``[]`` for none: ``"avx512_bf16"`` (bf16 dot
    products, e.g. AMD Zen 4, Intel Cooper Lake and later) and ``"amx_bf16"`` (Intel AMX tiles).
    Read from ``/proc/cpuinfo``, so ``[]`` off Linux. What ``matmul_precision="medium"`` gains
    and changes depends on these (bench/RESULTS.md, "Reduced precision")."""
    return bf16_flags_of(cpuinfo_value("flags"))
