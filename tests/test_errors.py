"""Bad input: each is refused with a clear error, and a refused call changes nothing."""

import os

import numpy as np
import pytest
import torch
from conftest import MODES

import fastps

N = 100


@pytest.fixture(params=MODES)
def store(request):
    init = np.arange(N, dtype=np.float32)
    with fastps.Store(init=init, shards=3, mode=request.param, momentum=0.5, lr=0.1) as s:
        yield s


def assert_unchanged(store, before_params, before_stats):
    np.testing.assert_array_equal(store.read(), before_params)
    assert store.stats() == before_stats


BAD_GRADS = [
    (np.ones(N - 1, np.float32), ValueError, r"push: grad has 99 elements, expected 100"),
    (np.ones(N + 1, np.float16), ValueError, r"push: grad has 101 elements, expected 100"),
    (
        np.ones(N, np.float64),
        TypeError,
        r"push: grad has dtype float64, expected float32, float16 or bfloat16",
    ),
    (np.ones(N, np.int32), TypeError, r"push: grad has dtype int32, expected float32"),
    (
        np.ones(N, ">f4"),
        TypeError,
        r"push: grad has dtype >f4, expected float32.*native byte order",
    ),
    (np.ones(2 * N, np.float32)[::2], ValueError, r"push: grad is not C-contiguous"),
    (
        torch.ones(N, dtype=torch.float64),
        TypeError,
        r"push: grad has dtype torch.float64, expected float32",
    ),
    (torch.ones(2 * N)[::2], ValueError, r"push: grad is not contiguous"),
    (
        torch.ones(N, device="meta"),
        ValueError,
        r"push: grad is on device meta, expected a CPU tensor",
    ),
    (
        [1.0] * N,
        TypeError,
        r"push: grad must be a numpy array, a torch CPU tensor, or an object with the buffer protocol or __dlpack__ \(got list\)",
    ),
    (None, TypeError, r"push: grad must be .* \(got NoneType\)"),
]


@pytest.mark.parametrize("grad,exc,msg", BAD_GRADS)
def test_bad_gradient_is_refused_and_changes_nothing(store, grad, exc, msg):
    h = store.learner()
    before = store.read(), store.stats()
    with pytest.raises(exc, match=msg):
        h.push(grad)
    assert_unchanged(store, *before)


BAD_OUTS = [
    (np.empty(N - 1, np.float32), ValueError, r"pull: out has 99 elements, expected 100"),
    (np.empty(N, np.float64), TypeError, r"pull: out has dtype float64, expected float32"),
    (np.empty(2 * N, np.float32)[::2], ValueError, r"pull: out is not C-contiguous"),
    (
        torch.empty(N, dtype=torch.float16),
        TypeError,
        r"pull: out has dtype torch.float16, expected float32",
    ),
    (
        torch.empty(N, device="meta"),
        ValueError,
        r"pull: out is on device meta, expected a CPU tensor",
    ),
    (torch.empty(2 * N)[::2], ValueError, r"pull: out is not contiguous"),
    ("abc", TypeError, r"pull: out must be a numpy array"),
]


@pytest.mark.parametrize("out,exc,msg", BAD_OUTS)
def test_bad_out_is_refused(store, out, exc, msg):
    h = store.learner()
    with pytest.raises(exc, match=msg):
        h.pull(out)


NONFINITE = [
    ("float32", np.nan), ("float32", np.inf), ("float32", -np.inf),
    ("float16", np.nan), ("float16", np.inf), ("bfloat16", np.nan), ("bfloat16", -np.inf),
]  # fmt: skip


def _grad_with(dtype, value, index):
    g = torch.ones(N, dtype=getattr(torch, dtype))
    g[index] = value
    return g


@pytest.mark.parametrize("dtype,value", NONFINITE)
def test_nonfinite_gradient_is_refused_by_default(store, dtype, value):
    h = store.learner()
    before = store.read(), store.stats()
    with pytest.raises(
        ValueError, match=r"push: grad\[57\] is not finite \(NaN or Inf\); nothing was applied"
    ):
        h.push(_grad_with(dtype, value, 57))
    assert_unchanged(store, *before)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,value", NONFINITE[:4])
def test_nan_guard_skip_counts_and_applies_nothing(mode, dtype, value):
    with fastps.Store(N, shards=3, mode=mode, nan_guard="skip", lr=1.0) as store:
        h = store.learner()
        assert h.push(_grad_with(dtype, value, N - 1)) == 3  # every shard update skipped
        h.push(np.ones(N, np.float32))
        st = store.stats()
        assert st["nonfinite_skipped"] == 1 and st["pushes"] == 1 and st["clock"] == 1
        np.testing.assert_array_equal(store.read(), -np.ones(N, np.float32))


def test_nan_guard_off_applies_what_it_is_given():
    with fastps.Store(N, nan_guard="off") as store:
        store.learner().push(_grad_with("float32", np.nan, 3))
        assert np.isnan(store.read()[3]) and store.stats()["nonfinite_skipped"] == 0
    with pytest.raises(
        ValueError, match=r"Store: nan_guard must be one of raise, skip, off \(got 'no'\)"
    ):
        fastps.Store(N, nan_guard="no")


def test_read_only_out_is_refused_and_left_alone(store):
    out = np.full(N, 7.0, np.float32)
    out.setflags(write=False)
    with pytest.raises(ValueError, match=r"pull: out is read-only, expected a writeable array"):
        store.learner().pull(out)
    with pytest.raises(ValueError, match=r"read: out is read-only"):
        store.read(out)
    assert np.all(out == 7.0)
    with pytest.raises(ValueError, match=r"read: out has 5 elements, expected 100"):
        store.read(np.empty(5, np.float32))


def test_a_refused_pull_keeps_the_read_versions(store):
    h, other = store.learner(), store.learner()
    h.pull(np.empty(N, np.float32))
    other.push(np.ones(N, np.float32))
    with pytest.raises(ValueError):
        h.pull(np.empty(N - 1, np.float32))
    assert [h.read_version(s) for s in range(3)] == [0, 0, 0]


def test_handle_after_store_closed(store):
    h = store.learner()
    store.close()
    with pytest.raises(RuntimeError, match=r"push: the store is closed"):
        h.push(np.ones(N, np.float32))
    with pytest.raises(RuntimeError, match=r"pull: the store is closed"):
        h.pull(np.empty(N, np.float32))
    for call, name in [(store.read, "read"), (store.stats, "stats"), (store.learner, "learner")]:
        with pytest.raises(RuntimeError, match=f"{name}: the store is closed"):
            call()
    store.close()  # idempotent


def test_closed_handle(store):
    h = store.learner()
    h.close()
    h.close()
    with pytest.raises(RuntimeError, match=r"push: this learner handle is closed"):
        h.push(np.ones(N, np.float32))
    assert store.stats()["learners"] == 0


BAD_ARGS = [
    (dict(), ValueError, r"Store: give size or init \(got neither\)"),
    (dict(size=0), ValueError, r"Store: size must be at least 1 \(got 0\)"),
    (dict(size=1.5), TypeError, r"Store: size must be an integer \(got float\)"),
    (
        dict(size=10, init=np.zeros(11)),
        ValueError,
        r"Store: init has 11 elements, expected size=10",
    ),
    (
        dict(init=np.zeros((2, 2))),
        ValueError,
        r"Store: init must be a flat 1-D vector \(got shape \(2, 2\); pass init.ravel\(\)\)",
    ),
    (dict(init=np.array(["a"])), TypeError, r"Store: init has dtype <U1, expected real numbers"),
    (dict(size=10, shards=0), ValueError, r"Store: shards must be in \[1, 1\] for size 10"),
    (
        dict(size=100, shards=8),
        ValueError,
        r"Store: shards must be in \[1, 7\] for size 100 .*got 8",
    ),
    (
        dict(size=10, mode="fast"),
        ValueError,
        r"Store: mode must be one of locked, hogwild, leashed \(got 'fast'\)",
    ),
    (dict(size=10, mode=1), TypeError, r"Store: mode must be a string \(got int\)"),
    (dict(size=10, lr=-1), ValueError, r"Store: lr must be finite and >= 0 \(got -1\)"),
    (dict(size=10, lr=float("nan")), ValueError, r"Store: lr must be finite \(got nan\)"),
    (dict(size=10, lr="0.1"), TypeError, r"Store: lr must be a number \(got str\)"),
    (dict(size=10, momentum=1.0), ValueError, r"Store: momentum must be in \[0, 1\) \(got 1\)"),
    (dict(size=10, nesterov=True), ValueError, r"Store: nesterov=True needs momentum > 0"),
    (dict(size=10, nesterov=1), TypeError, r"Store: nesterov must be a bool \(got int\)"),
    (dict(size=10, weight_decay=-0.1), ValueError, r"Store: weight_decay must be finite and >= 0"),
    (
        dict(size=10, persistence=-2),
        ValueError,
        r"Store: persistence must be -1 \(never drop\) or >= 0 \(got -2\)",
    ),
    (
        dict(size=10, max_learners=0),
        ValueError,
        r"Store: max_learners must be in \[1, 1024\] \(got 0\)",
    ),
    (
        dict(size=10, max_learners=5000),
        ValueError,
        r"Store: max_learners must be in \[1, 1024\] \(got 5000\)",
    ),
    (
        dict(size=10, staleness_bins=0),
        ValueError,
        r"Store: staleness_bins must be in \[1, 65536\] \(got 0\)",
    ),
    (dict(size=10, shared="a/b"), ValueError, r"Store: shared name 'a/b' has the character '/'"),
    (
        dict(size=10, shared=""),
        ValueError,
        r"Store: shared name must have 1 to 200 characters \(got 0\)",
    ),
    (
        dict(size=10, shared=5),
        TypeError,
        r"Store: shared must be a string name or None \(got int\)",
    ),
]


@pytest.mark.parametrize("kwargs,exc,msg", BAD_ARGS)
def test_invalid_constructor_arguments(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        fastps.Store(**kwargs)


def test_shared_name_taken(shm_name):
    with fastps.Store(10, shared=shm_name):
        with pytest.raises(
            RuntimeError, match=f"Store: cannot create shared segment '{shm_name}': File exists"
        ):
            fastps.Store(10, shared=shm_name)


def test_attach_missing(shm_name):
    with pytest.raises(ValueError, match=f"attach: no shared store named '{shm_name}'"):
        fastps.Store.attach(shm_name)
    with pytest.raises(TypeError, match=r"attach: name must be a string \(got int\)"):
        fastps.Store.attach(3)
    with pytest.raises(ValueError, match=r"attach: shared name '\.\./x' has the character '/'"):
        fastps.Store.attach("../x")


def test_attach_to_a_segment_that_is_not_a_store(shm_name):
    with open(f"/dev/shm/fastps.{shm_name}", "wb") as f:
        f.write(b"\xff" * 4096)
    with pytest.raises(
        ValueError, match=f"attach: shared segment '{shm_name}' is not a fastps store"
    ):
        fastps.Store.attach(shm_name)
    with open(f"/dev/shm/fastps.{shm_name}", "wb") as f:
        f.write(b"x" * 10)
    with pytest.raises(ValueError, match=r"has 10 bytes, too small for a fastps store"):
        fastps.Store.attach(shm_name)
    open(f"/dev/shm/fastps.{shm_name}", "wb").close()
    with pytest.raises(ValueError, match=r"is empty, not a fastps store"):
        fastps.Store.attach(shm_name)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a segment to another user")
def test_attach_to_a_foreign_segment_is_refused(shm_name):
    with fastps.Store(10, shared=shm_name):
        os.chown(f"/dev/shm/fastps.{shm_name}", 4242, 4242)
        with pytest.raises(ValueError, match=r"belongs to uid 4242, expected uid 0"):
            fastps.Store.attach(shm_name)
