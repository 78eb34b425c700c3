"""Bandwidth probes: the machine's own speed for the memory shapes of push and pull.

The benchmarks (bench/bench_store.py, bench/bench_transfer.py) compare fastps with these native
loops, which move the same bytes as a push or a pull and do nothing else::

    import numpy as np
    from fastps import probe
    w, g = np.ones(1 << 20, np.float32), np.full(1 << 20, 1e-3, np.float32)
    probe.axpy(w, g, -0.1)      # w += -0.1 * g: the shape of a locked or hogwild push
    probe.kernel_isa()          # e.g. "avx2": the vector ISA the kernels were built for

* ``copy(dst, src)``: ``dst[:] = src`` (memcpy). 8 B per element moved: the shape of a pull.
* ``triad(a, b, c, s)``: ``a[:] = b + s * c``. 12 B per element, three streams: the shape of
  a leashed push, which writes a new version beside the one it reads.
* ``axpy(w, g, s)``: ``w[:] += s * g`` in place. 12 B per element, two streams: the shape of
  a locked or hogwild push.
* ``kernel_isa()``: the instruction set the native kernels (store and probes) were compiled
  for, recorded beside every benchmark figure.

Contract of ``copy``, ``triad`` and ``axpy``: every array is a C-contiguous float32 numpy
array (no conversion is made: another dtype or a strided view raises TypeError, since the
probe would otherwise time a temporary copy), all of the same length (else ValueError, e.g.
``"probe_axpy: w has 1000 elements, g 1024"``); the output array (``dst``, ``a``, ``w``) is
written in place and may alias no input. They block until done, release the GIL meanwhile
(so T Python threads probe T cores at once), keep no reference to any array after they
return, and are thread-safe on distinct outputs.

This module imports neither torch nor any other part of fastps.
"""

from __future__ import annotations

from fastps import _core

__all__ = ["axpy", "copy", "kernel_isa", "triad"]

# The probes are the native functions themselves, not Python wrappers: they are the baselines
# of calls that take about a microsecond, and a Python frame around each would add a tenth of
# that to the baseline alone. Their contract is the module docstring's.
copy = _core.probe_copy
triad = _core.probe_triad
axpy = _core.probe_axpy


def kernel_isa() -> str:
    """The vector instruction set the native kernels were compiled for (e.g. ``"avx2"``)."""
    return _core.kernel_isa
