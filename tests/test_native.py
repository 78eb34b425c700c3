"""The native stress test (csrc/tests/stress_store.cc), built with CMake and run plain, under
ThreadSanitizer and under AddressSanitizer+UBSan. Locked and leashed must be clean; hogwild's
intended races are suppressed by csrc/tests/tsan.supp, which names its two accessors only."""

import os
import shutil
import subprocess
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
