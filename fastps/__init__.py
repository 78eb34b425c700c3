"""fastps: a lock-free, sharded parameter store for asynchronous SGD.

import fastps, numpy as np
with fastps.Store(init=np.zeros(1024, np.float32), mode="leashed", lr=0.1) as store:
    h = store.learner()
    w = np.empty(1024, np.float32)
    h.pull(w)                       # parameters + the version of each shard read
    h.push(np.ones(1024, np.float32))  # w -= lr * g, staleness measured per shard
"""

from fastps import _core, step_size
from fastps.segments import cleanup
from fastps.step_size import (
    Constant,
    Exponential,
    Inverse,
    Projected,
    StalenessDistance,
    StepSize,
    TailTau,
)
from fastps.store import MODES, LearnerHandle, Store

__version__: str = _core.__version__
built_with_cuda: bool = _core.built_with_cuda


def cuda_available() -> bool:
    """True when a CUDA driver and a GPU answer; False on CPU-only builds or machines."""
    return _core.cuda_available()


__all__ = [
    "MODES", "Constant", "Exponential", "Inverse", "LearnerHandle", "Projected",
    "StalenessDistance", "StepSize", "Store", "TailTau", "__version__", "built_with_cuda",
    "cleanup", "cuda_available", "step_size",
]  # fmt: skip
