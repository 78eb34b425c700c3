"""Stores in POSIX shared memory: attach by name from other processes."""

import multiprocessing as mp
import os
import pickle
import signal
import stat
import time

import numpy as np
import pytest
from conftest import CONSISTENT

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


def test_a_shared_store_pickles_by_name_into_a_spawned_process(shm_name):
    ctx = mp.get_context("spawn")
    with fastps.Store(64, shared=shm_name, lr=1.0) as store:
        p = ctx.Process(target=_child_pushes_via_pickle, args=(store, 7))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        np.testing.assert_array_equal(store.read(), np.full(64, -7, np.float32))
        assert os.path.exists(f"/dev/shm/fastps.{shm_name}")  # the child's close kept it


def test_a_private_store_refuses_to_pickle():
    with fastps.Store(8) as store:
        with pytest.raises(TypeError, match=r"Store: a private store cannot be pickled"):
            pickle.dumps(store)


def _create_and_die(name, ready):
    store = fastps.Store(1000, shared=name)  # never closed: the process is killed
    ready.set()
    time.sleep(60)
    store.close()


def test_cleanup_removes_the_segment_of_a_crashed_creator(shm_name):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_create_and_die, args=(shm_name, ready))
    p.start()
    assert ready.wait(60)
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
