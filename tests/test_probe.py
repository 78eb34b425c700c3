"""fastps.probe: the bandwidth probes the benchmarks take as the machine's baselines."""

import subprocess
import sys

import numpy as np
import pytest

from fastps import probe


def test_probes_compute_what_they_say():
    rng = np.random.default_rng(0)
    b, c = rng.standard_normal(1000, dtype=np.float32), rng.standard_normal(1000, dtype=np.float32)
    a = np.empty_like(b)
    probe.triad(a, b, c, 0.5)
    np.testing.assert_allclose(a, b + np.float32(0.5) * c, rtol=1e-6)
    w = b.copy()
    probe.axpy(w, c, -2.0)
    np.testing.assert_allclose(w, b - np.float32(2.0) * c, rtol=1e-6, atol=1e-6)
    out = np.zeros_like(b)
    probe.copy(out, b)
    np.testing.assert_array_equal(out, b)
    assert isinstance(probe.kernel_isa(), str) and probe.kernel_isa()


def test_probes_refuse_mismatched_or_converted_buffers():
    w = np.ones(1000, np.float32)
    with pytest.raises(ValueError, match="probe_axpy: w has 1000 elements, g 1024"):
        probe.axpy(w, np.ones(1024, np.float32), 1.0)
    with pytest.raises(TypeError):  # no silent conversion: the probe would time a temporary
        probe.copy(w, np.ones(1000, np.float64))
    with pytest.raises(TypeError):
        probe.copy(np.ones(2000, np.float32)[::2], w)


def test_probe_module_imports_no_torch(tmp_path):
    code = "import sys, fastps.probe; print('torch' in sys.modules)"
    # Outside the checkout: "-c" puts the working directory first on sys.path, and the source
    # tree's fastps has no built extension (the installed one has).
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)  # fmt: skip
    assert r.stdout.strip() == "False", r.stderr
