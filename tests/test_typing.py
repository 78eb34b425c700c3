"""The extension's stub matches what the extension really exports."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")


def test_core_stub_matches_the_extension(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "fastps._core", "--allowlist",
         str(Path(__file__).with_name("stubtest_allowlist.txt"))],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_package_type_checks(tmp_path):
    r = subprocess.run(  # -p: the installed package (it ships py.typed)
        [sys.executable, "-m", "mypy", "-p", "fastps", "--ignore-missing-imports"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
