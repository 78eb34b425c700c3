"""The native stress test (csrc/tests/stress_store.cc), built with CMake and run plain, under
ThreadSanitizer and under AddressSanitizer+UBSan. Locked and leashed must be clean; hogwild's
intended races are suppressed by csrc/tests/tsan.supp, which names its accessors only. Also the
CPU-only extension (FASTPS_CUDA=OFF), built with plain CMake and run: CI's pip build has CUDA;
a Debug build with -Werror and FASTPS_DCHECK on, running the stress test through ctest; the
formatting of csrc/ (clang-format); and the native rules the facade calls (validate,
shard_ranges, creator_alive) and the streamed leashed apply, against numpy."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastps
from fastps import _core

ROOT = Path(__file__).resolve().parents[1]
SANITIZERS = {
    "plain": ("Release", ""),
    "tsan": ("RelWithDebInfo", "-fsanitize=thread"),
    "asan-ubsan": ("RelWithDebInfo", "-fsanitize=address,undefined -fno-sanitize-recover=all"),
}

needs_cmake = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("c++") is None, reason="needs cmake and c++"
)
CSRC_SUFFIXES = {".h", ".cc", ".cu", ".cuh"}


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


@needs_cmake
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


@needs_cmake
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


@needs_cmake
@pytest.mark.slow  # a Debug build and a 30 s stress run: about 2 minutes on 2 cores
@pytest.mark.timeout(600)
def test_debug_build_with_werror_and_dchecks_passes_the_stress_test(tmp_path):
    """CPU-only Debug build (FASTPS_DCHECK on: every leashed slot transition is checked) with
    warnings as errors; the native stress test runs through ctest."""
    bdir = tmp_path / "build"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    for cmd in (
        ["cmake", "-S", str(ROOT), "-B", str(bdir), *gen, "-DCMAKE_BUILD_TYPE=Debug",
         "-DFASTPS_CUDA=OFF", "-DFASTPS_WERROR=ON", "-DFASTPS_BUILD_TESTS=ON",
         "-DFASTPS_BUILD_MODULE=OFF"],
        ["cmake", "--build", str(bdir), "-j", "2"],
    ):  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["ctest", "--output-on-failure"], cwd=bdir, capture_output=True, text=True,
                       timeout=500)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "100% tests passed" in r.stdout, r.stdout


def clang_format():
    """The clang-format of this environment (the pinned wheel), or None."""
    beside = Path(sys.executable).with_name("clang-format")
    return str(beside) if beside.exists() else shutil.which("clang-format")


def test_csrc_is_clang_formatted():
    exe = clang_format()
    if exe is None:
        pytest.skip("clang-format is not installed (pip install clang-format==23.1.5)")
    files = sorted(str(p) for p in (ROOT / "csrc").rglob("*") if p.suffix in CSRC_SUFFIXES)
    assert files
    r = subprocess.run([exe, "--dry-run", "--Werror", *files], capture_output=True, text=True,
                       cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]


def test_store_config_validate_names_the_python_argument():
    cfg = _core.StoreConfig()
    cfg.size = 10
    cfg.validate()
    cfg.max_learners = 0
    with pytest.raises(ValueError, match=r"Store: max_learners must be in \[1, 1024\] \(got 0\)"):
        cfg.validate()
    cfg.max_learners = 1
    cfg.lr = float("nan")
    with pytest.raises(ValueError, match=r"Store: lr must be finite \(got nan\)"):
        cfg.validate()
    cfg.lr = -1.0
    with pytest.raises(ValueError, match=r"Store: lr must be finite and >= 0 \(got -1\)"):
        cfg.validate()
    with pytest.raises(ValueError, match=r"Store: staleness_bins must be a non-negative 32-bit "):
        cfg.staleness_bins = -1
    too_big = r"Store: shards must be a non-negative 32-bit integer \(got 1099511627776\)"
    with pytest.raises(ValueError, match=too_big):
        cfg.shards = 2**40
    with pytest.raises(ValueError, match=r"Store: size must be at least 1 \(got -5\)"):
        cfg.size = -5
    with pytest.raises(TypeError):
        cfg.shards = 1.5


@pytest.mark.parametrize("size,shards", [(1, 1), (17, 2), (100, 7), (1000, 3), (4096, 16)])
def test_shard_ranges_is_the_split_the_store_uses(size, shards):
    ranges = _core.shard_ranges(size, shards)
    with fastps.Store(size, shards=shards) as store:
        assert ranges == [store._s.shard_range(s) for s in range(shards)]
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(b % 16 == 0 for b, _ in ranges)
    with pytest.raises(ValueError, match=r"shard_ranges: shards must be in \[1, 7\] for size 100"):
        _core.shard_ranges(100, 8)


def test_creator_alive_is_true_for_a_live_creator(shm_name):
    with fastps.Store(10, shared=shm_name):
        info = _core.Store.inspect(shm_name)
        assert info.is_store and info.creator_alive and info.creator_pid == os.getpid()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_leashed_push_past_the_cache_is_bitwise_numpy(dtype):
    """A store whose push working set exceeds the last-level cache writes its new versions with
    streaming stores: the values are the same bits as numpy's float32 expression."""
    n = (1 << 23) + 5
    rng = np.random.default_rng(7)
    w0 = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(dtype)
    lr, mu, wd = np.float32(0.01), np.float32(0.9), np.float32(1e-4)
    with fastps.Store(init=w0, shards=3, lr=0.01, momentum=0.9, nesterov=True,
                      weight_decay=1e-4, max_learners=1) as store:  # fmt: skip
        h = store.learner()
        w, m = w0.copy(), np.zeros(n, np.float32)
        for _ in range(2):
            h.push(g)
            d = g.astype(np.float32) + wd * w
            m = mu * m + d
            w = w - lr * (d + mu * m)
        out = np.empty(n, np.float32)
        h.pull(out)
    assert np.array_equal(out.view(np.uint32), w.view(np.uint32))
