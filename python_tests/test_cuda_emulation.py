"""The CUDA kernels, run on the CPU by the emulator of tools/cuda_emu (docs/DEV.md).

No GPU is needed: tools/cuda_emu/build.py compiles csrc/**/*.cu (launches and shared memory
rewritten) with the op fronts into a library whose every op runs its CUDA kernels on CPU
tensors. Child processes load it in place of cdred_fast._C (CDRED_FAST_CUDA_EMULATION_LIBRARY)
and run this suite's op and model tests: parity with the pure-PyTorch reference, edge cases,
opcheck, agent-level parity. They run in three orders of the threads between barriers, so that
a missing __syncthreads / __syncwarp changes a result in at least one of them; with the
library built with AddressSanitizer, which reports a kernel's read or write outside its tensors
(what compute-sanitizer's memcheck does on a GPU); and with ThreadSanitizer, which reports two
threads of a block touching the same memory, one writing, with no barrier between them (what
its racecheck does). The emulator checks itself first: kernels with known defects must be
reported.

Device arithmetic is modelled in part: the kernels take their device branches and may contract
a product and a sum into a fused multiply-add, as nvcc does. What this cannot see (cuda_emu.h
says more): the CUDA math library (expf is the host's), races between blocks, timing.
scripts/gpu_check.sh covers those on a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cdred_fast._lib import EMULATION_LIBRARY_ENV

ROOT = Path(__file__).resolve().parents[1]


def _build_module():
    """tools/cuda_emu/build.py as a module (it imports torch only when it builds)."""
    spec = importlib.util.spec_from_file_location("cuda_emu_build", ROOT / "tools" / "cuda_emu" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = [
    pytest.mark.skipif(
        platform.machine() != "x86_64" or sys.platform != "linux",
        reason="the CUDA emulator runs on x86-64 Linux only (its fiber switch is x86-64 assembly)",
    ),
    pytest.mark.skipif(
        platform.machine() == "x86_64" and not _build_module().host_has_fma(),
        reason="the CUDA emulator contracts into FMA instructions as nvcc does, and this CPU has none",
    ),
]

# Tests of the ops (every kernel, its edge cases and bad inputs) ...
OP_TESTS = [
    "test_reward_ops.py",
    "test_rnd_ops.py",
    "test_block_ops.py",
    "test_mppi_ops.py",
    "test_mppi_ops_errors.py",
    "test_rnd_ops_errors.py",
    "test_fuzz_ops.py",
    "test_op_robustness.py",
    "test_ops_dispatch.py",
]
# ... and of what is built on them: planning, updates, bfloat16 planning, the drop-in planner.
MODEL_TESTS = [
    "test_input_validation.py",
    "test_bf16_planning.py",
    "test_bf16_update.py",
    "test_planner_reference.py",
    "test_planner.py",
    "test_plan_compile.py",
    "test_update_parity.py",
    "test_agent_planning.py",
    "test_iqmpc_planning.py",
    "test_agent.py",
    "test_world_model.py",
    "test_layers.py",
]


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _build(*flags: str) -> str:
    """Build (or bring up to date) the emulator's op library; its path."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "cuda_emu" / "build.py"), *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        pytest.fail("building the CUDA emulator's op library failed:\n" + _tail(proc.stdout + proc.stderr))
    path = proc.stdout.strip().splitlines()[-1]
    assert Path(path).is_file(), proc.stdout
    return path


@pytest.fixture(scope="module")
def library() -> str:
    return _build()


def _sanitizer_environment(name: str) -> dict[str, str]:
    """tools/cuda_emu/build.py's environment for its sanitizer builds (skips without the runtime)."""
    try:
        env = _build_module().sanitizer_environment(name)
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"no {name} runtime: {exc}")
    # the runtime must start under this Python on this kernel (TSan maps fixed address ranges)
    probe = subprocess.run(
        [sys.executable, "-c", "import torch"], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    if probe.returncode != 0:
        pytest.skip(f"the {name} runtime does not start here: {_tail(probe.stderr, 3)}")
    return env


@pytest.fixture(scope="module")
def asan_library() -> tuple[str, dict[str, str]]:
    env = _sanitizer_environment("asan")
    return _build("--sanitizer", "asan"), env


@pytest.fixture(scope="module")
def tsan_library() -> tuple[str, dict[str, str]]:
    env = _sanitizer_environment("tsan")
    return _build("--sanitizer", "tsan"), env


def _run(
    library: str, args: list[str], order: str, timeout: int = 1800, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}), EMULATION_LIBRARY_ENV: library, "CUDA_EMU_ORDER": order}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _pytest(library: str, files: list[str], order: str, *extra: str, env: dict[str, str] | None = None) -> None:
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable", "-m", "not cuda"]
    proc = _run(library, [*args, *extra, *(f"python_tests/{f}" for f in files)], order, env=env)
    assert proc.returncode == 0, f"CUDA_EMU_ORDER={order}:\n" + _tail(proc.stdout + proc.stderr)
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) > 0, proc.stdout


SELFTEST = r"""
import json, torch
import cdred_fast
out = {"build_info": cdred_fast.build_info()}
x = torch.arange(64, dtype=torch.float32)
ops = torch.ops.cuda_emu_selftest
out["sum"] = ops.sum(x).item()
out["racy_sum"] = ops.racy_sum(x).item()
out["dynamic_ok"] = ops.dynamic_shared(x, 256).tolist()
u = torch.rand(256, generator=torch.Generator().manual_seed(0)) + 0.5
c = ops.contraction(u, u * u)  # x * x - rounded(x * x): 0 unless the product was contracted
out["contracted_nonzero"] = int((c[0] != 0).sum())
out["rounded_nonzero"] = int((c[1] != 0).sum())
for name, args in [("divergent", (x,)), ("partial_warp", (x,)), ("dynamic_shared", (x, 65536))]:
    try:
        getattr(ops, name)(*args)
        out[name] = "no error"
    except RuntimeError as e:
        out[name] = str(e).splitlines()[0]
print(json.dumps(out))
"""


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_the_emulator_reports_the_defects_it_is_for(library, order):
    proc = _run(library, ["-c", SELFTEST], order, timeout=300)
    assert proc.returncode == 0, _tail(proc.stdout + proc.stderr)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["build_info"]["cuda_emulation"] is True and out["build_info"]["extension_loaded"]
    assert out["sum"] == sum(range(64))  # a correct block reduction (shuffles + shared memory)
    assert out["dynamic_ok"] == [1.0] * 64
    # device arithmetic: a product and a sum contract into an FMA (its result is then the
    # product's rounding error, non-zero for most x) unless the _rn intrinsics round the product
    assert out["contracted_nonzero"] > 100 and out["rounded_nonzero"] == 0
    # thread 0 reads the others' shared values without a barrier: when it runs first (forward),
    # it reads shared memory as the block found it (0xff bytes, NaN); in reverse order the
    # others have written first and the race goes unseen, hence the several orders below
    racy = out["racy_sum"]
    assert (racy != racy) if order == "forward" else racy == sum(range(64))
    assert "deadlock" in out["divergent"] and "16 at __syncthreads, 48 ended" in out["divergent"]
    assert "partial warp" in out["partial_warp"]
    assert "65536 bytes of dynamic shared memory" in out["dynamic_shared"]


def test_cuda_kernels_pass_the_op_and_model_tests(library):
    """Every op and model test of this suite (CPU tensors), with the CUDA kernels doing the work."""
    _pytest(library, OP_TESTS + MODEL_TESTS, "forward")


@pytest.mark.parametrize("order", ["reverse", "random:1"])
def test_cuda_kernels_pass_the_op_tests_in_other_thread_orders(library, order):
    """The op tests again with the threads between barriers run in reverse and in a random
    order (the largest reward shapes left out: they are the slowest to emulate)."""
    _pytest(library, OP_TESTS, order, "-k", "not 4097")


def test_the_asan_build_reports_an_out_of_bounds_read(asan_library):
    library, env = asan_library
    code = "import torch, cdred_fast; torch.ops.cuda_emu_selftest.out_of_bounds(torch.zeros(64))"
    proc = _run(library, ["-c", code], "forward", timeout=300, env=env)
    assert proc.returncode != 0 and "heap-buffer-overflow" in proc.stderr, _tail(proc.stdout + proc.stderr)
    assert "out_of_bounds_kernel" in proc.stderr  # the report names the kernel


def test_cuda_kernels_stay_inside_their_tensors(asan_library):
    """The op tests under AddressSanitizer: no kernel reads or writes outside its tensors."""
    library, env = asan_library
    _pytest(library, OP_TESTS, "forward", "-k", "not 4097 and not fuzz", env=env)


def test_elite_update_on_a_device_with_less_shared_memory(library):
    """With 48 KiB of shared memory per block (CUDA_EMU_SMEM_OPTIN), mppi_elite_update sorts at
    most 2,048 candidates in the block; the MPPI op tests' larger shapes (2,049 to 5,000
    candidates) then take its at::sort fallback."""
    _pytest(library, ["test_mppi_ops.py"], "forward", env={"CUDA_EMU_SMEM_OPTIN": "49152"})


def _race_reports(log_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted(log_dir.glob("tsan*")))


def test_the_tsan_build_reports_a_race(tsan_library, tmp_path):
    library, env = tsan_library
    env = {**env, "TSAN_OPTIONS": f"{env['TSAN_OPTIONS']} log_path={tmp_path / 'tsan'}"}
    code = "import torch, cdred_fast; torch.ops.cuda_emu_selftest.racy_sum(torch.arange(64.0))"
    _run(library, ["-c", code], "reverse", timeout=300, env=env)  # the order that hides the wrong result
    reports = _race_reports(tmp_path)
    assert "data race" in reports and "racy_sum_kernel" in reports, reports[-3000:]
    # a correct block reduction (barriers, shuffles) is not reported
    (tmp_path / "clean").mkdir()
    env["TSAN_OPTIONS"] = env["TSAN_OPTIONS"].replace(str(tmp_path / "tsan"), str(tmp_path / "clean" / "tsan"))
    code = "import torch, cdred_fast; print(torch.ops.cuda_emu_selftest.sum(torch.arange(64.0)).item())"
    proc = _run(library, ["-c", code], "forward", timeout=300, env=env)
    assert proc.stdout.strip() == "2016.0" and not _race_reports(tmp_path / "clean"), _tail(proc.stderr)


def test_cuda_kernels_have_no_data_races(tsan_library, tmp_path):
    """The kernels' parity tests under ThreadSanitizer (the emulator's racecheck): no two threads
    of a block touch the same memory, one writing, without a barrier between them. One torch
    thread; the largest reward shapes left out (the slowest to run instrumented)."""
    library, env = tsan_library
    # reports go to files (pytest captures stderr); exit status 0 with reports, so the reports,
    # not pytest's summary, are what the assertion below shows
    env = {**env, "TSAN_OPTIONS": f"{env['TSAN_OPTIONS']} exitcode=0 log_path={tmp_path / 'tsan'}"}
    select = "not 4097 and not thread and (matches or parity or hand or ties or zero or degenerate or plus)"
    files = ["test_mppi_ops.py", "test_block_ops.py", "test_reward_ops.py", "test_rnd_ops.py"]
    _pytest(library, files, "forward", "-k", select, env=env)
    reports = _race_reports(tmp_path)
    assert not reports, reports[-6000:]
