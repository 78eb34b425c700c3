"""Property-based tests over the Python API (hypothesis): random sizes, shard counts, modes,
dtypes, strides, and orders of pull / push / close / attach / save / load. Every call either
does exactly what the numpy reference model says or raises a clear error and changes nothing."""

import os
import tempfile
import uuid

import numpy as np
import pytest
import torch
from conftest import MODES, reference_apply
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import fastps

CALLS = {"ok": 0, "refused": 0}
ERRORS = (ValueError, TypeError, RuntimeError)
GRAD_DTYPES = ["float32", "float16", "bfloat16", "float64", "int32"]


def make_grad(rng, n, dtype, extra, stride, nonfinite):
    """A gradient as a torch tensor (every dtype above), possibly of the wrong length, strided,
    or holding a NaN; and whether the store should accept it."""
    length = n + extra
    g = torch.from_numpy(rng.integers(-4, 5, length * stride).astype(np.float32) / 4)
    g = g.to(getattr(torch, dtype))[::stride]
    if nonfinite and length:
        g[rng.integers(length)] = float("nan") if dtype != "int32" else 0
    # A strided view of one element is still contiguous (numpy and torch agree): accepted.
    ok = dtype in ("float32", "float16", "bfloat16") and extra == 0 and (stride == 1 or length <= 1)
    return g, ok, ok and nonfinite and dtype != "int32"


class StoreMachine(RuleBasedStateMachine):
    @initialize(
        size=st.integers(1, 3000), shard_frac=st.floats(0, 1), mode=st.sampled_from(MODES),
        momentum=st.sampled_from([0.0, 0.5]), nan_guard=st.sampled_from(["raise", "skip"]),
        shared=st.booleans(), seed=st.integers(0, 2**32 - 1),
    )  # fmt: skip
    def setup(self, size, shard_frac, mode, momentum, nan_guard, shared, seed):
        self.rng = np.random.default_rng(seed)
        blocks = (size + 15) // 16
        shards = 1 + int(shard_frac * (min(blocks, 16) - 1))
        self.kw = dict(lr=0.5, momentum=momentum, weight_decay=0.0)
        init = self.rng.integers(-8, 8, size).astype(np.float32)
        self.name = f"hyp-{uuid.uuid4().hex[:10]}" if shared else None
        self.store = fastps.Store(init=init, shards=shards, mode=mode, nan_guard=nan_guard,
                                  shared=self.name, max_learners=3, **self.kw)  # fmt: skip
        self.views = [self.store]  # the store and stores attached to it by name
        self.w, self.m = init.copy(), np.zeros(size, np.float32)
        self.handles = []
        self.nan_guard = nan_guard
        self.dir = tempfile.mkdtemp()
        self.closed = False

    def teardown(self):
        for v in getattr(self, "views", []):
            v.close()
        if getattr(self, "name", None) and os.path.exists(f"/dev/shm/fastps.{self.name}"):
            os.unlink(f"/dev/shm/fastps.{self.name}")

    def refused(self, call, *args):
        before = None if self.closed else self.store.read()
        with pytest.raises(ERRORS):
            call(*args)
        if before is not None:
            np.testing.assert_array_equal(self.store.read(), before)
        CALLS["refused"] += 1

    @precondition(lambda self: not self.closed)
    @rule(view=st.integers(0, 3))
    def open_handle(self, view):
        store = self.views[view % len(self.views)]
        if len(self.handles) >= 3:
            self.refused(store.learner)
        else:
            self.handles.append(store.learner())
            CALLS["ok"] += 1

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 2))
    def close_handle(self, i):
        self.handles.pop(i % len(self.handles)).close()
        CALLS["ok"] += 1

    @precondition(lambda self: self.handles and not self.closed)
    @rule(i=st.integers(0, 2), dtype=st.sampled_from(GRAD_DTYPES), extra=st.sampled_from([0, 0, 0, -1, 3]),
          stride=st.sampled_from([1, 1, 2]), nonfinite=st.booleans())  # fmt: skip
    def push(self, i, dtype, extra, stride, nonfinite):
        h = self.handles[i % len(self.handles)]
        n = self.store.size
        if n + extra < 0:
            return
        g, ok, has_nan = make_grad(self.rng, n, dtype, extra, stride, nonfinite)
        if not ok or (has_nan and self.nan_guard == "raise"):
            self.refused(h.push, g)
        elif has_nan:  # skipped and counted
            before = self.store.stats()["nonfinite_skipped"]
            assert h.push(g) == self.store.shards
            assert self.store.stats()["nonfinite_skipped"] == before + 1
            CALLS["ok"] += 1
        else:
            h.push(g)
            reference_apply(self.w, self.m, g.to(torch.float32).numpy(), **self.kw)
            CALLS["ok"] += 1

    @precondition(lambda self: self.handles and not self.closed)
    @rule(
        i=st.integers(0, 2),
        kind=st.sampled_from(["numpy", "torch", "strided", "short", "f64", "readonly"]),
    )
    def pull(self, i, kind):
        h = self.handles[i % len(self.handles)]
        n = self.store.size
        out = {
            "numpy": lambda: np.full(n, 99, np.float32),
            "torch": lambda: torch.full((n,), 99.0),
            "strided": lambda: np.full(2 * n, 99, np.float32)[::2],
            "short": lambda: np.full(max(n - 1, 0), 99, np.float32),
            "f64": lambda: np.full(n, 99, np.float64),
            "readonly": lambda: np.full(n, 99, np.float32),
        }[kind]()
        if kind == "readonly":
            out.setflags(write=False)
        if kind in ("numpy", "torch") or (kind == "strided" and n == 1):
            h.pull(out)
            np.testing.assert_array_equal(np.asarray(out), self.w)
            CALLS["ok"] += 1
        else:
            self.refused(h.pull, out)
            assert np.all(np.asarray(out) == 99)

    @precondition(lambda self: self.name and not self.closed and len(self.views) < 3)
    @rule()
    def attach(self):
        self.views.append(fastps.Store.attach(self.name))
        CALLS["ok"] += 1

    @precondition(lambda self: not self.closed and not self.handles)
    @rule(mode=st.sampled_from(MODES))
    def save_and_load(self, mode):
        path = os.path.join(self.dir, "s.ckpt")
        self.store.save(path)
        for v in self.views:
            v.close()
        self.store = fastps.Store.load(path, mode=mode, shared=self.name)
        self.views = [self.store]
        CALLS["ok"] += 1

    @precondition(lambda self: not self.closed)
    @rule()
    def close_store(self):
        for v in self.views:
            v.close()
        self.closed = True
        for h in self.handles:
            self.refused(h.push, np.zeros(self.w.size, np.float32))
            self.refused(h.pull, np.zeros(self.w.size, np.float32))
        self.refused(self.store.learner)

    @precondition(lambda self: self.closed)
    @rule()
    def closed_store_refuses(self):
        self.refused(self.store.read)
        self.refused(self.store.save, os.path.join(self.dir, "x.ckpt"))
        assert not os.path.exists(os.path.join(self.dir, "x.ckpt"))

    @invariant()
    def matches_the_model(self):
        if hasattr(self, "store") and not self.closed:
            np.testing.assert_array_equal(self.store.read(), self.w)
            assert self.store.stats()["learners"] == len(self.handles)


def test_the_store_matches_its_model_under_random_call_sequences():
    CALLS.update(ok=0, refused=0)
    run_state_machine_as_test(
        StoreMachine,
        settings=settings(
            max_examples=max(150, settings.default.max_examples), stateful_step_count=30,
            deadline=None, suppress_health_check=[HealthCheck.too_slow],
        ),
    )  # fmt: skip
    print(f"property tests: {CALLS['ok']} calls did the right thing, {CALLS['refused']} refused")
    # Both kinds of call really happened (a machine whose rules never fire would pass vacuously).
    assert CALLS["ok"] > 100 and CALLS["refused"] > 100
