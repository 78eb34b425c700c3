"""The native stress test (csrc/tests/stress_store.cc), built with CMake and run plain, under
ThreadSanitizer and under AddressSanitizer+UBSan. Locked and leashed must be clean; hogwild's
intended races are suppressed by csrc/tests/tsan.supp, which names its accessors only. Also the
CPU-only extension (FASTPS_CUDA=OFF), built with plain CMake and run: CI's pip build has CUDA."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SANITIZERS = {
    "plain": ("Release", ""),
    "tsan": ("RelWithDebInfo", "-fsanitize=thread"),
    "asan-ubsan": ("RelWithDebInfo", "-fsanitize=address,undefined -fno-sanitize-recover=all"),
}

pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("c++") is None, reason="needs cmake and c++"
)


def build(tmp_path, build_type, flags):
    bdir = tmp_path / "build"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(bdir), *gen, f"-DCMAKE_BUILD_TYPE={build_type}",
         "-DFASTPS_BUILD_TESTS=ON", "-DFASTPS_BUILD_MODULE=OFF", "-DFASTPS_CUDA=OFF",
         f"-DCMAKE_CXX_FLAGS={flags} -fno-omit-frame-pointer", f"-DCMAKE_EXE_LINKER_FLAGS={flags}"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    subprocess.run(
        ["cmake", "--build", str(bdir), "--target", "stress_store", "-j", "2"],
        check=True,
        capture_output=True,
        text=True,
    )
    return bdir / "stress_store"


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", list(SANITIZERS))
def test_native_stress_is_exact_and_sanitizer_clean(tmp_path, kind):
    build_type, flags = SANITIZERS[kind]
    exe = build(tmp_path, build_type, flags)
    env = dict(os.environ, FASTPS_STRESS_HOGWILD="1",
               TSAN_OPTIONS=f"suppressions={ROOT}/csrc/tests/tsan.supp halt_on_error=1",
               ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="halt_on_error=1")  # fmt: skip
    pushes = "2000" if kind == "plain" else "400"
    r = subprocess.run([str(exe), pushes], env=env, capture_output=True, text=True, timeout=500)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING" not in r.stderr and "runtime error" not in r.stderr, r.stderr
    assert r.stdout.rstrip().endswith("stress_store: ok")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cpu_only_module_builds_and_runs_the_pipeline(tmp_path):
    """The extension built with FASTPS_CUDA=OFF (what a machine without nvcc gets) imports,
    says it has no CUDA, and runs the transfer pipeline on the CPU engine."""
    pybind11 = pytest.importorskip("pybind11")
    bdir = tmp_path / "build"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(bdir), *gen, "-DCMAKE_BUILD_TYPE=Release",
         "-DFASTPS_CUDA=OFF", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
         f"-DPython_EXECUTABLE={sys.executable}"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    subprocess.run(["cmake", "--build", str(bdir), "--target", "_core", "-j", "2"],
                   check=True, capture_output=True, text=True)  # fmt: skip
    pkg = tmp_path / "site" / "fastps"
    shutil.copytree(ROOT / "fastps", pkg)
    for so in bdir.glob("_core*.so"):
        shutil.copy(so, pkg)
    script = (
        "import numpy as np, fastps\n"
        "assert fastps.built_with_cuda is False and fastps.cuda_available() is False\n"
        "with fastps.Store(1000, lr=1.0, shards=3) as s:\n"
        "    h = s.learner()\n"
        "    h.configure_transfer(engine='cpu', chunk_bytes=256)\n"
        "    h.push(np.arange(1000, dtype=np.float32))\n"
        "    out = np.empty(1000, np.float32)\n"
        "    h.pull(out)\n"
        "    assert np.array_equal(out, -np.arange(1000, dtype=np.float32))\n"
        "print('cpu-only ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "cpu-only ok", r.stdout + r.stderr
