import multiprocessing
import os
import threading
import time
import types
import uuid

import numpy as np
import pytest
from hypothesis import settings

import fastps

# CI explores the same examples every run (a new counterexample should not fail a submission at
# random); locally hypothesis keeps exploring. HYPOTHESIS_PROFILE=deep explores ten times more.
settings.register_profile("ci", derandomize=True)
settings.register_profile("deep", max_examples=1500)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default")
)

MODES = fastps.MODES
CONSISTENT = ("locked", "leashed")


@pytest.fixture
def shm_name():
    """A fresh shared-memory name; the segment is removed after the test if it still exists."""
    name = f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield name
    path = f"/dev/shm/fastps.{name}"
    if os.path.exists(path):
        os.unlink(path)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance with 2 CPUs for one test module (tests/test_ray*.py use it through
    ``pytestmark``), shut down after the module."""
    ray = pytest.importorskip("ray")
    fray = pytest.importorskip("fastps.ray")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    assert fray.init(num_cpus=2) is True
    yield
    ray.shutdown()


def wait_until(cond, what, timeout=60.0):
    """Poll ``cond()`` until true; AssertionError naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def spawn_ready(target, *args, daemon=False):
    """Start ``target(*args, ready)`` in a spawned process and return it once it set ``ready``
    (an Event it receives last)."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=target, args=(*args, ready), daemon=daemon)
    p.start()
    assert ready.wait(60), f"{target.__name__} did not start"
    return p


def train_side_by_side(batches, *pairs):
    """Each (model, optimizer) pair takes the same cross-entropy steps on ``batches`` of (x, y),
    in turn: a torch reference beside fastps's AsyncOptimizer."""
    import torch

    for x, y in batches:
        for model, opt in pairs:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()


def assert_same_parameters(ref, ours, rtol=2e-6, atol=1e-7):
    """Every parameter of ``ours`` equals ``ref``'s, named in the message when not."""
    import torch

    for (name, p), q in zip(ref.named_parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=rtol, atol=atol, msg=name)


def create_shared_and_wait(name, ready, size=1000):
    """A spawned process's target: create the shared store ``name``, set ``ready`` and wait to
    be killed (the store is never closed by a live creator)."""
    store = fastps.Store(size, shared=name)
    ready.set()
    time.sleep(60)
    store.close()


def reference_apply(w, m, g, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """numpy float32 reference of the store's update, in the same operation order."""
    f = np.float32
    d = g.astype(np.float32)
    if weight_decay:
        d = d + f(weight_decay) * w
    if momentum:
        m[:] = f(momentum) * m + d
        d = d + f(momentum) * m if nesterov else m.copy()
    w[:] = w - f(lr) * d


def run_threads(target, count, *, args=lambda i: ()):
    """Start `count` threads running target(*args(i)) and wait for all of them."""
    ts = [threading.Thread(target=target, args=args(i)) for i in range(count)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def pull_push(store, pushes, value=-1.0):
    """One learner: `pushes` times pull, then push `value` everywhere (lr=1 adds -value)."""
    h = store.learner()
    buf = np.empty(store.size, np.float32)
    g = np.full(store.size, value, np.float32)
    for _ in range(pushes):
        h.pull(buf)
        h.push(g)
    h.close()


def blobs(n=2000, d=8, classes=3, seed=0):
    """Gaussian blobs that overlap: logistic regression reaches about 90%, not 100%."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d)).astype(np.float32) * 1.2
    y = rng.integers(0, classes, n)
    x = (centres[y] + rng.standard_normal((n, d))).astype(np.float32)
    cut = n * 4 // 5
    return types.SimpleNamespace(x_train=x[:cut], y_train=y[:cut], x_test=x[cut:], y_test=y[cut:])
