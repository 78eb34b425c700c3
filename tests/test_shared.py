"""Stores in POSIX shared memory: attach by name from other processes."""

import gc
import multiprocessing as mp
import os
import pickle
import re
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import CONSISTENT, create_shared_and_wait, spawn_ready

import fastps

N = 1 << 16
PUSHES = 300


def _child_pushes(name, pushes, ready, go):
    store = fastps.Store.attach(name)
    h = store.learner()
    buf = np.empty(store.size, np.float32)
    g = np.full(store.size, -1.0, np.float32)
    ready.set()
    go.wait()
    for _ in range(pushes):
        h.pull(buf)
        h.push(g)
    h.close()
    store.close()


@pytest.mark.parametrize("mode", CONSISTENT)
def test_two_processes_push_concurrently_and_the_creator_sees_every_update(mode, shm_name):
    ctx = mp.get_context("spawn")
    with fastps.Store(N, shards=4, mode=mode, lr=1.0, shared=shm_name) as store:
        ready = [ctx.Event() for _ in range(2)]
        go = ctx.Event()
        procs = [ctx.Process(target=_child_pushes, args=(shm_name, PUSHES, r, go)) for r in ready]
        for p in procs:
            p.start()
        for r in ready:
            assert r.wait(60)
        assert store.stats()["learners"] == 2  # counted across processes
        go.set()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        np.testing.assert_array_equal(store.read(), np.full(N, 2 * PUSHES, np.float32))
        st = store.stats()
        assert st["clock"] == 2 * PUSHES and st["learners"] == 0
        assert sum(st["staleness_hist"]) == 2 * PUSHES * 4


def test_segment_is_private_to_the_user_and_unlinked_on_close(shm_name):
    path = f"/dev/shm/fastps.{shm_name}"
    store = fastps.Store(100, shared=shm_name, mode="locked")
    assert store.name == shm_name
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    other = fastps.Store.attach(shm_name)
    other.learner().push(np.ones(100, np.float32))
    np.testing.assert_array_equal(store.read(), np.full(100, -0.01, np.float32))
    assert other.config == store.config
    store.close()
    assert not os.path.exists(path)
    # An attached process keeps its mapping after the creator unlinks the name.
    np.testing.assert_array_equal(other.read(), np.full(100, -0.01, np.float32))
    other.close()
    with pytest.raises(ValueError, match=f"attach: no shared store named '{shm_name}'"):
        fastps.Store.attach(shm_name)


def test_attacher_close_does_not_unlink(shm_name):
    with fastps.Store(10, shared=shm_name) as store:
        fastps.Store.attach(shm_name).close()
        assert os.path.exists(f"/dev/shm/fastps.{shm_name}")
        assert store.stats()["size"] == 10


def _child_pushes_via_pickle(store, pushes):
    with store, store.learner() as h:
        for _ in range(pushes):
            h.push(np.ones(store.size, np.float32))


@pytest.mark.parametrize("named", [True, False], ids=["named", "shared-True"])
def test_a_shared_store_pickles_by_name_into_a_spawned_process(shm_name, named):
    ctx = mp.get_context("spawn")
    with fastps.Store(64, shared=shm_name if named else True, lr=1.0) as store:
        p = ctx.Process(target=_child_pushes_via_pickle, args=(store, 7))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        np.testing.assert_array_equal(store.read(), np.full(64, -7, np.float32))
        assert os.path.exists(f"/dev/shm/fastps.{store.name}")  # the child's close kept it


def test_a_private_store_refuses_to_pickle():
    with fastps.Store(8) as store:
        with pytest.raises(TypeError, match=r"Store: a private store cannot be pickled"):
            pickle.dumps(store)


def test_cleanup_removes_the_segment_of_a_crashed_creator(shm_name):
    p = spawn_ready(create_shared_and_wait, shm_name)
    path = f"/dev/shm/fastps.{shm_name}"
    with pytest.raises(
        RuntimeError,
        match=rf"cleanup: store '{shm_name}' is still open in its creator \(pid {p.pid}\)",
    ):
        fastps.cleanup(shm_name)
    assert shm_name not in fastps.cleanup()  # its creator is alive: left alone
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    assert os.path.exists(path)
    survivor = fastps.Store.attach(shm_name)  # attached processes keep working after cleanup
    assert shm_name in fastps.cleanup()
    assert not os.path.exists(path)
    survivor.learner().push(np.ones(1000, np.float32))
    survivor.close()


def test_cleanup_refuses_unsafe_foreign_and_non_store_names(shm_name):
    with pytest.raises(ValueError, match=r"shared name '\.\./etc' has the character '/'"):
        fastps.cleanup("../etc")
    path = f"/dev/shm/fastps.{shm_name}"
    with open(path, "wb") as f:
        f.write(b"\0" * 4096)
    assert shm_name not in fastps.cleanup()  # not a store: the scan leaves it
    with pytest.raises(RuntimeError, match=rf"cleanup: '{shm_name}' is not a fastps store"):
        fastps.cleanup(shm_name)
    if os.geteuid() == 0:
        os.chown(path, 4242, 4242)
        with pytest.raises(ValueError, match=r"belongs to uid 4242"):
            fastps.cleanup(shm_name, force=True)
        os.chown(path, 0, 0)
    assert fastps.cleanup(shm_name, force=True) == [shm_name]
    assert not os.path.exists(path)


# -- who unlinks, shared=True, reclaiming, cleanup's scan (issues 17 and 19) ---------------


def _fork(child):
    """Run child() in a forked process that leaves with os._exit; returns its exit status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child()
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _drop(store):
    store._s = None  # the child's copy of the native Store (its Arena) is destroyed here
    gc.collect()


def test_a_forked_child_closing_its_copy_leaves_the_name_attachable(shm_name):
    with fastps.Store(64, shared=shm_name, lr=1.0) as store:
        assert _fork(store.close) == 0
        assert _fork(lambda: _drop(store)) == 0
        with fastps.Store.attach(shm_name) as other:
            other.learner().push(np.ones(64, np.float32))
        np.testing.assert_array_equal(store.read(), np.full(64, -1, np.float32))
    assert not os.path.exists(f"/dev/shm/fastps.{shm_name}")  # the creator's close unlinks


_FORK_AND_EXIT = """
import os, sys
import fastps
store = fastps.Store(64, shared=sys.argv[1])
anon = fastps.Store(64, shared=True)
pid = os.fork()
if pid:  # the parent checks after the child exited normally (atexit, garbage collection)
    os.waitpid(pid, 0)
    for name in (sys.argv[1], anon.name):
        fastps.Store.attach(name).close()
    print("attached", anon.name)
"""


def test_a_forked_child_exiting_normally_leaves_the_names(shm_name, tmp_path):
    out = subprocess.run([sys.executable, "-c", _FORK_AND_EXIT, shm_name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    anon = out.stdout.split()[-1]
    assert out.stdout.startswith("attached auto-")
    # The parent exited normally too, without closing: it unlinked both.
    assert not os.path.exists(f"/dev/shm/fastps.{shm_name}")
    assert not os.path.exists(f"/dev/shm/fastps.{anon}")


def test_shared_true_makes_a_unique_name_removed_on_close_or_drop():
    with fastps.Store(64, shared=True, lr=1.0) as store, fastps.Store(64, shared=True) as other:
        assert re.fullmatch(rf"auto-{os.getpid()}-[0-9a-f]{{12}}", store.name)
        assert store.name != other.name
        assert os.path.exists(f"/dev/shm/fastps.{store.name}")
        assert repr(store).endswith(f"shared={store.name!r})")
        copy = pickle.loads(pickle.dumps(store))  # attaches by name
        copy.learner().push(np.ones(64, np.float32))
        copy.close()
        np.testing.assert_array_equal(store.read(), np.full(64, -1, np.float32))
    assert not os.path.exists(f"/dev/shm/fastps.{store.name}")
    dropped = fastps.Store(64, shared=True)
    path = f"/dev/shm/fastps.{dropped.name}"
    del dropped
    gc.collect()
    assert not os.path.exists(path)
    with fastps.Store(8, shared=False) as private, fastps.Store(8, shared=None) as default:
        assert private.name is None and default.name is None


_KEPT = []


def _create_and_exit(name):
    # Kept until os._exit (dropping the store would close it, and unlink the name).
    return lambda: _KEPT.append(fastps.Store(100, shared=name, lr=1.0))


def test_a_stale_segment_of_a_dead_creator_is_reclaimed_with_a_warning(shm_name):
    assert _fork(_create_and_exit(shm_name)) == 0
    creator = fastps._core.Store.inspect(shm_name).creator_pid
    with pytest.warns(
        UserWarning,
        match=rf"Store: reclaimed stale shared segment '{shm_name}' \(creator pid {creator} is gone\)",
    ):
        store = fastps.Store(100, shared=shm_name, lr=1.0)
    with store:
        store.learner().push(np.ones(100, np.float32))
        np.testing.assert_array_equal(store.read(), np.full(100, -1, np.float32))
        assert fastps._core.Store.inspect(shm_name).creator_pid == os.getpid()
    assert not os.path.exists(f"/dev/shm/fastps.{shm_name}")


def _attach_and_hold(name, started):
    store = fastps.Store.attach(name)
    h = store.learner()  # noqa: F841 (registered as a learner until killed)
    started.set()
    time.sleep(60)


def test_a_live_segment_is_refused_naming_its_creator_then_its_learner(shm_name):
    ctx = mp.get_context("spawn")
    ready, held = ctx.Event(), ctx.Event()
    creator = ctx.Process(target=create_shared_and_wait, args=(shm_name, ready))
    creator.start()
    assert ready.wait(60)
    learner = ctx.Process(target=_attach_and_hold, args=(shm_name, held))
    learner.start()
    try:
        assert held.wait(60)
        with pytest.raises(
            RuntimeError,
            match=rf"Store: cannot create shared segment '{shm_name}': File exists, and its "
            rf"creator \(pid {creator.pid}\) is running; attach to it with "
            rf"fastps.Store.attach\('{shm_name}'\)",
        ):
            fastps.Store(100, shared=shm_name)
        os.kill(creator.pid, signal.SIGKILL)
        creator.join()
        with pytest.raises(
            RuntimeError,
            match=rf"its creator \(pid {creator.pid}\) is gone, but pid {learner.pid} still uses "
            "it as a learner",
        ):
            fastps.Store(100, shared=shm_name)
        with fastps.Store.attach(shm_name) as other:
            assert other.stats()["learners"] == 1  # refused: unchanged
    finally:
        learner.kill()
        learner.join()
    with pytest.warns(UserWarning, match=rf"creator pid {creator.pid} is gone"):
        fastps.Store(100, shared=shm_name).close()


def test_creating_over_a_file_that_is_not_a_store_is_refused_naming_the_path(shm_name):
    path = f"/dev/shm/fastps.{shm_name}"
    with open(path, "wb") as f:
        f.write(b"\xff" * 4096)
    with pytest.raises(
        RuntimeError,
        match=rf"Store: cannot create shared segment '{shm_name}': File exists, and "
        rf"{path} is not a fastps store of this version",
    ):
        fastps.Store(100, shared=shm_name)
    with open(path, "rb") as f:
        assert f.read() == b"\xff" * 4096  # left as it was


def test_cleanup_goes_on_past_names_it_cannot_decode(shm_name):
    odd = [b"/dev/shm/fastps.\xff\xfe", f"/dev/shm/fastps.-{shm_name}".encode() + b"\xff\xfe"]
    assert _fork(_create_and_exit(shm_name)) == 0  # a dead creator's segment, sorted after odd[1]
    made = []
    try:
        for path in odd:
            if not os.path.exists(path):
                open(path, "wb").close()
                made.append(path)
        assert shm_name in fastps.cleanup()
        assert not os.path.exists(f"/dev/shm/fastps.{shm_name}")
        assert all(os.path.exists(path) for path in made)  # skipped, not removed
    finally:
        for path in made:
            os.unlink(path)
