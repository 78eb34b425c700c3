"""Recovery from learner processes that died in awkward places: inside TAIL-tau's CDF build,
or killed and not yet reaped by their parent (zombies)."""

import os
import signal
import time

import numpy as np
import pytest
from conftest import CONSISTENT, create_shared_and_wait, spawn_ready

import fastps

BINS = 65536  # the largest table: one CDF build costs far more than the push that elects it


def _build_forever(name, started):
    store = fastps.Store.attach(name)
    h = store.learner()
    buf = np.empty(store.size, np.float32)
    g = np.ones(store.size, np.float32)
    started.set()
    while True:  # refresh=1: every shard update rebuilds the CDF, nearly all the time goes there
        h.pull(buf)
        h.push(g)


def _state(pid):
    """The state letter of /proc/<pid>/stat ('R', 'S', 'Z', ...), '' once the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


def _until_zombie(pid):
    """Waits until pid is a zombie whose other threads have all exited (until then the store
    counts it alive: a leader that called pthread_exit shows 'Z' while its threads run)."""
    deadline = time.monotonic() + 30
    while _state(pid) != "Z" or os.listdir(f"/proc/{pid}/task") != [str(pid)]:
        assert time.monotonic() < deadline, f"pid {pid} never became a zombie"
        time.sleep(0.005)


@pytest.mark.parametrize("mode", fastps.MODES)
def test_learners_killed_inside_the_tail_tau_build_do_not_stop_later_builds(mode, shm_name):
    tail = fastps.TailTau(warmup=1, refresh=1)
    with fastps.Store(16, shards=1, mode=mode, lr=0.01, shared=shm_name, staleness_bins=BINS,
                      step_size=tail) as store:  # fmt: skip
        for _ in range(3):
            p = spawn_ready(_build_forever, shm_name, daemon=True)
            time.sleep(0.05)
            os.kill(p.pid, signal.SIGKILL)  # almost surely inside a build, holding its flag
            p.join()
            store.recover()
            before = store.stats()["step_builds"]
            with store.learner() as h:
                for _ in range(20):
                    h.push(np.zeros(16, np.float32))
            # Each of the 20 shard updates elects a build (refresh=1) and no one else holds it.
            assert store.stats()["step_builds"] == before + 20


def _hold_the_build_and_die(name, started):
    store = fastps.Store.attach(name)
    if not store._s._hold_cdf_build():
        raise RuntimeError("the CDF build was held already")
    started.set()
    time.sleep(60)


@pytest.mark.parametrize("mode", CONSISTENT)
def test_recover_takes_over_the_build_of_a_dead_holder_and_leaves_a_live_one(mode, shm_name):
    tail = fastps.TailTau(warmup=4, refresh=4)
    with fastps.Store(16, shards=1, mode=mode, shared=shm_name, step_size=tail) as store:
        p = spawn_ready(_hold_the_build_and_die, shm_name)
        with store.learner() as h:

            def step():
                h.pull(np.empty(16, np.float32))  # so every update has tau 0
                h.push(np.zeros(16, np.float32))

            for _ in range(8):  # updates 4 and 8 elect builds; the holder makes them skip
                step()
            assert store.stats()["step_builds"] == 0
            assert store.stats()["step_hist"] is None
            assert store.recover() == 0  # the holder is alive: its build stays its own
            assert store.stats()["step_builds"] == 0
            os.kill(p.pid, signal.SIGKILL)
            p.join()
            assert store.recover() == 0  # no handle to recover, but the build is taken over
            st = store.stats()
            assert st["step_builds"] == 1 and st["step_hist"][0] == 8  # 8 updates at tau 0
            for _ in range(8):
                step()
            assert store.stats()["step_builds"] == 3  # updates 12 and 16
            assert store._s._hold_cdf_build()  # now this (live) process holds it
            assert store.recover() == 0
            for _ in range(4):
                step()
            assert store.stats()["step_builds"] == 3


def _hold_a_handle(name, started):
    store = fastps.Store.attach(name)
    h = store.learner()
    h.pull(np.empty(store.size, np.float32))  # leashed: a kept read pin, as a learner has
    started.set()
    time.sleep(60)


@pytest.mark.parametrize("mode", CONSISTENT)
def test_a_killed_learner_not_yet_reaped_is_recovered_and_its_place_reused(mode, shm_name):
    with fastps.Store(64, mode=mode, shared=shm_name, max_learners=1) as store:
        p = spawn_ready(_hold_a_handle, shm_name)
        with pytest.raises(RuntimeError, match=r"learner: 1 handles are open"):
            store.learner()
        os.kill(p.pid, signal.SIGKILL)
        _until_zombie(p.pid)  # killed, not waited for: kill(pid, 0) still succeeds
        assert store.recover() == 1
        assert store.stats()["learners"] == 0 and store.stats()["recovered"] == 1
        with store.learner() as h:  # its place
            h.push(np.ones(64, np.float32))
        assert _state(p.pid) == "Z"  # all of it before the parent reaped the child
        p.join()
        if mode == "leashed":
            assert store.stats()["slots_in_use"] == 1  # its read pin went with it


def test_creator_alive_turns_false_when_the_creator_is_killed_even_before_it_is_reaped(shm_name):
    p = spawn_ready(create_shared_and_wait, shm_name)
    with fastps.Store.attach(shm_name) as store:
        assert store.creator_alive() is True
        os.kill(p.pid, signal.SIGKILL)
        _until_zombie(p.pid)
        assert store.creator_alive() is False
        p.join()
        assert store.creator_alive() is False
        assert fastps.Store.attach(shm_name).creator_alive() is False  # any attacher agrees
    assert fastps.cleanup(shm_name) == [shm_name]


def test_creator_alive_of_this_process_and_of_a_closed_store():
    with fastps.Store(16) as private:
        assert private.creator_alive() is True
    with pytest.raises(RuntimeError, match=r"creator_alive: the store is closed"):
        private.creator_alive()
    with fastps.Store(16, shared=True) as shared:
        assert shared.creator_alive() is True
        with fastps.Store.attach(shared.name) as other:
            assert other.creator_alive() is True
