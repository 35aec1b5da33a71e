"""The build refuses an isolated `pip install .` quickly, with the command to run instead."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_isolated_build_stops_with_instructions(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns("build", ".git", "*.so", "__pycache__", ".benchmarks"))
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.time() - start
    out = proc.stdout + proc.stderr
    if "Could not find a version that satisfies the requirement scikit-build-core" in out:
        pytest.skip("PyPI unreachable: pip could not set up the isolated build environment")
    assert proc.returncode != 0, "an isolated build must not succeed against a torch it cannot see"
    assert "pip install --no-build-isolation ." in out
    assert "torch is not importable" in out
    assert not list((tmp_path / "dist").glob("*.whl"))
    assert elapsed < 120, f"the isolated build took {elapsed:.0f} s to stop"


def test_broken_extension_warns_once_and_reports_why(tmp_path):
    """A library that exists but cannot load (here: a truncated binary) must not silently take
    the CPU kernels away: one RuntimeWarning that says why, and build_info()["load_error"]."""
    import importlib.machinery

    pkg = tmp_path / "cdred_fast"
    shutil.copytree(ROOT / "cdred_fast", pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (pkg / f"_C{suffix}").write_bytes(b"\x7fELF" + b"\0" * 60)  # an ELF header and nothing else
    code = f"""
import json, sys, warnings
# the editable install's finder would send `cdred_fast` back to the source tree
sys.meta_path = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
sys.path.insert(0, {str(tmp_path)!r})
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import cdred_fast
    from cdred_fast import ops
    info = cdred_fast.build_info()
    cdred_fast.build_info()
assert cdred_fast.__file__.startswith({str(tmp_path)!r}), cdred_fast.__file__
print(json.dumps({{"info": info, "warnings": [str(w.message) for w in caught if w.category is RuntimeWarning]}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["info"]["extension_loaded"] is False
    assert "failed to load" in out["info"]["load_error"]
    assert len(out["warnings"]) == 1, out["warnings"]
    assert "unavailable" in out["warnings"][0] and "failed to load" in out["warnings"][0]


def test_gpu_cases_run_on_the_cpu_kernels():
    """The compute-sanitizer cases of scripts/gpu_check.sh, on the CPU kernels: they stay correct between GPU runs."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gpu_cases.py"), "all", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok ") == 14, proc.stdout


def test_gpu_report_reads_results_and_checks_targets(tmp_path):
    """tools/gpu_report.py on hand-made inputs: counts, sanitizer rows, the benchmark run (every
    variant present) and the plan targets, as two verdicts (checks, targets)."""
    (tmp_path / "nvidia-smi.txt").write_text("NVIDIA H200, 570.00, 143771 MiB")
    (tmp_path / "build.status").write_text("ok 95")
    (tmp_path / "build_info.json").write_text(
        '{"extension_loaded": true, "cuda_kernels": true, "torch_version_runtime": "2.13.0+cu130", '
        '"cuda_version": "13.0", "nvcc_version": "13.0", "cuda_arch_list": ["90"]}'
    )
    (tmp_path / "cuda-tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="0" errors="0" skipped="1">'
        '<testcase classname="a" name="t1"/><testcase classname="a" name="t2"/>'
        '<testcase classname="a" name="t3"><skipped/></testcase></testsuite></testsuites>'
    )
    (tmp_path / "cuda-tests.rc").write_text("0")
    (tmp_path / "sanitizer.txt").write_text("mppi memcheck ok 12\nmppi racecheck ok 30\n")
    (tmp_path / "bench.rc").write_text("0")

    def bench(times_ms):
        return {
            "benchmarks": [
                {"group": "A6", "extra_info": {"impl": impl}, "stats": {"median": ms / 1e3}}
                for impl, ms in times_ms.items()
            ]
        }

    import ast
    import json

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gpu_report
    finally:
        sys.path.pop(0)
    # the report expects the benchmark's variants
    tree = ast.parse((ROOT / "bench" / "test_bench_plan_gpu.py").read_text())
    bench_variants = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "VARIANTS"
    )
    assert tuple(bench_variants) == gpu_report.VARIANTS

    times = {"fused": 3.1, "fused-graph": 2.9, "reference": 70.0, "reference-compiled": 9.0}
    times |= {"fused-graph-tf32": 0.9, "fused-graph-bf16": 1.2}
    (tmp_path / "bench.json").write_text(json.dumps(bench(times)))
    text, ok, met = gpu_report.render(tmp_path, 300)
    assert ok and met, text
    assert "2 passed, 0 failed, 1 skipped" in text and "NVIDIA H200" in text and "24.1x" in text and "3.1x" in text
    # the 1 ms line on the fastest fused variant, with the float32 plan beside it
    assert "fastest fused plan (fused-graph-tf32) <= 1 ms | 0.900 ms (float32 fused-graph: 2.900 ms) | yes" in text
    assert "| fused-graph-tf32 | 0.900 ms | yes | 3.22x |" in text
    assert "| fused-graph-bf16 | 1.200 ms | no | 2.42x |" in text
    assert "Checks: PASS. Targets: met." in text
    # a missed target (19x) leaves the checks passing: exit status 3
    (tmp_path / "bench.json").write_text(json.dumps(bench({**times, "reference": 55.1})))
    text, ok, met = gpu_report.render(tmp_path, 300)
    assert ok and not met and "19.0x | **no**" in text
    assert gpu_report.main([str(tmp_path), "--out", str(tmp_path / "r.md")]) == 3
    # a variant without a result (it crashed) fails the checks, and so does a stopped run
    (tmp_path / "bench.json").write_text(json.dumps(bench({k: v for k, v in times.items() if k != "fused-graph"})))
    text, ok, met = gpu_report.render(tmp_path, 300)
    assert not ok and "A6: no fused-graph" in text, text
    assert gpu_report.main([str(tmp_path), "--out", str(tmp_path / "r.md")]) == 1
    (tmp_path / "bench.json").write_text(json.dumps(bench(times)))
    (tmp_path / "bench.rc").write_text("124")
    text, ok, met = gpu_report.render(tmp_path, 300)
    assert not ok and "stopped by its time limit" in text
    (tmp_path / "bench.rc").write_text("0")
    # a failed test fails the checks
    (tmp_path / "cuda-tests.xml").write_text(
        '<testsuite tests="1" failures="1" errors="0" skipped="0"><testcase classname="a" name="t1">'
        "<failure/></testcase></testsuite>"
    )
    text, ok, met = gpu_report.render(tmp_path, 300)
    assert not ok and "`a::t1`" in text
    assert gpu_report.main([str(tmp_path), "--out", str(tmp_path / "r.md")]) == 1


def test_cpu_report_writes_one_section_per_cpu_kind(tmp_path):
    """tools/cpu_report.py on a hand-made benchmark JSON: medians, speed-ups over the reference,
    the 2x goal per variant, a missing workload named, and one section per CPU kind (a rerun on
    the same kind replaces its section in place)."""
    import json

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import cpu_report
    finally:
        sys.path.pop(0)

    def bench(update_ref=1.0):
        rows = []
        for group, ref in (
            ("plan SPEC defaults A=6 cpu", 1.8),
            ("plan SPEC defaults A=38 cpu", 2.2),
            ("update B=256 cpu", update_ref),
        ):
            for impl, t in (
                ("reference", ref),
                ("fused-default", ref / 2.5),
                ("fused", ref / 1.5),
                ("fused-bf16", ref / 2.5),
            ):
                rows.append({"group": group, "extra_info": {"impl": impl}, "stats": {"median": t}})
        return {"benchmarks": rows}

    amd = dict(model="AMD EPYC", family="26", native_bf16=["avx512_bf16"], cores=2, threads=2)
    amd.update(default="update products float32, matmul_precision medium (auto)", capability="AVX512")
    amd.update(torch="2.13.0+cpu")
    text = cpu_report.section(bench(), amd, "2026-11-30", "abc1234")
    assert text.startswith("## AMD EPYC (CPU family 26; avx512_bf16)\n")
    assert "| one plan, A = 6 | 1.800 s | 0.720 s (2.50x) | 1.200 s (1.50x) | 0.720 s (2.50x) | - |" in text
    assert "- `fused`: not met (1.50-1.50x)" in text and "- `fused-bf16`: **met** (2.50-2.50x)" in text
    assert "- `fused-default`: **met** (2.50-2.50x)" in text
    assert "- `fused-medium`: not measured at every shape" in text
    assert "`fused-default` on this CPU: update products float32, matmul_precision medium (auto). Goal" in text
    no_update = {"benchmarks": [b for b in bench()["benchmarks"] if not b["group"].startswith("update")]}
    with pytest.raises(ValueError, match="no reference time for 'update B=256 cpu'"):
        cpu_report.section(no_update, amd, "2026-11-30", "abc1234")

    out = tmp_path / "RESULTS-cpu.md"
    amx = {**amd, "model": "Intel Xeon", "family": "6", "native_bf16": ["avx512_bf16", "amx_bf16"]}
    # this machine's defaults, in the words the CLI prints when a run starts
    from cdred_fast import CDREDConfig
    from cdred_fast.precision import describe

    assert describe(CDREDConfig(), "cpu").startswith("precision: " + cpu_report.defaults_in_words() + ";")
    doc = cpu_report.merge("# An old header\n\nold words\n\n", text)
    assert "old words" not in doc
    doc = cpu_report.merge(doc, cpu_report.section(bench(), amx, "2026-11-30", "abc1234"))
    doc = cpu_report.merge(doc, cpu_report.section(bench(update_ref=2.0), amd, "2026-12-01", "def5678"))
    assert doc.startswith("# Benchmark results per CPU kind")
    assert doc.count("## AMD EPYC (CPU family 26; avx512_bf16)") == 1
    assert doc.count("## Intel Xeon (CPU family 6; avx512_bf16, amx_bf16)") == 1
    assert doc.index("## AMD EPYC") < doc.index("## Intel Xeon") and "def5678" in doc and "abc1234" in doc
    assert "| one update, B = 256 | 2.000 s |" in doc
    # the command line: the JSON read, the section printed and the file written
    (tmp_path / "bench.json").write_text(json.dumps(bench()))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "cpu_report.py"), str(tmp_path / "bench.json"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().count("\n## ") == 1 and "| one plan, A = 38 | 2.200 s |" in out.read_text()


def test_cuda_skip_reason_names_what_is_missing(monkeypatch):
    """CUDA tests skip without a visible device, and also with one when the extension has no
    CUDA kernels; the reason says which."""
    import testing_utils

    from cdred_fast.ops import _dispatch

    monkeypatch.setattr(testing_utils.torch.cuda, "is_available", lambda: False)
    assert "no CUDA device is visible" in testing_utils.cuda_skip_reason()
    assert "no CUDA device is visible" in testing_utils.cuda_skip_reason(need_kernels=False)
    monkeypatch.setattr(testing_utils.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_dispatch._lib, "available", lambda: True)
    monkeypatch.setattr(_dispatch, "_cuda_kernels_built", lambda: False)
    assert "built without CUDA kernels" in testing_utils.cuda_skip_reason()
    assert testing_utils.cuda_skip_reason(need_kernels=False) == ""
    monkeypatch.setattr(_dispatch, "_cuda_kernels_built", lambda: True)
    assert testing_utils.cuda_skip_reason() == ""
    monkeypatch.setattr(_dispatch._lib, "available", lambda: False)
    monkeypatch.setattr(_dispatch._lib, "load_error", lambda: "not built")
    assert "not loaded (not built)" in testing_utils.cuda_skip_reason()


def test_build_info_reports_the_cpus_native_bf16_instructions():
    """build_info()["cpu_native_bf16"]: the native-bf16 instruction sets of the CPU's flags line,
    in a fixed order, and nothing else."""
    import cdred_fast
    from cdred_fast.precision import BF16_CPU_FLAGS, bf16_flags_of

    assert bf16_flags_of("fpu sse2 avx512f avx512_bf16 amx_tile amx_bf16") == ["avx512_bf16", "amx_bf16"]
    assert bf16_flags_of("fpu amx_bf16 avx2") == ["amx_bf16"]
    assert bf16_flags_of("fpu avx512f avx512_bf16x") == []  # whole names only
    found = cdred_fast.build_info()["cpu_native_bf16"]
    assert isinstance(found, list) and set(found) <= set(BF16_CPU_FLAGS)
