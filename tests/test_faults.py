"""Learner processes killed with SIGKILL in the middle of pushes and pulls, over and over: the
store stays usable and consistent, and what the dead held is recovered."""

import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest
from conftest import CONSISTENT

import fastps

N = 1 << 18  # 1 MiB: a push or pull takes long enough that most kills land inside one
SHARDS = 4


def _learn_forever(name, started):
    store = fastps.Store.attach(name)
    h = store.learner()
    buf = np.empty(store.size, np.float32)
    g = np.full(store.size, -1.0, np.float32)
    started.set()
    while True:
        h.pull(buf)
        h.push(g)


@pytest.mark.parametrize("mode", CONSISTENT)
def test_learners_killed_mid_push_and_pull_leave_a_usable_consistent_store(mode, shm_name):
    ctx = mp.get_context("spawn")
    rng = np.random.default_rng(11)
    kills = 0
    with fastps.Store(
        N, shards=SHARDS, mode=mode, lr=1.0, shared=shm_name, max_learners=3
    ) as store:

        def start():
            started = ctx.Event()
            p = ctx.Process(target=_learn_forever, args=(shm_name, started), daemon=True)
            p.start()
            assert started.wait(60)
            return p

        def churn(procs):
            nonlocal kills
            for _ in range(12):
                time.sleep(rng.uniform(0.005, 0.05))
                victim = procs.pop(int(rng.integers(len(procs))))
                os.kill(victim.pid, signal.SIGKILL)
                victim.join()
                kills += 1
                procs.append(start())  # attaching recovers what the victim held
            clock_before = store.stats()["clock"]
            time.sleep(0.1)
            assert store.stats()["clock"] > clock_before  # survivors keep training

        procs = [start(), start()]
        try:
            churn(procs)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
        kills += 2
        held = store.stats().get("slots_in_use")  # leashed: versions the last two dead still hold
        store.recover()
        st = store.stats()
        params = store.read()
        assert st["learners"] == 0
        assert st["recovered"] == kills  # one handle per killed process
        ranges = store.shard_ranges()
        if mode == "leashed":
            assert st["slots_in_use"] == SHARDS  # no version leaked by the dead
            for (b, e), v in zip(ranges, st["versions"]):
                assert np.all(params[b:e] == v), "leashed publishes whole shard updates only"
        else:
            # A kill inside an apply leaves that shard's update partial (+1 on part of it):
            # counted as a lock takeover, never a lock held forever.
            torn = sum(int(params[b:e].max() != params[b:e].min()) for b, e in ranges)
            assert torn <= st["torn_shards"]
            for (b, e), v in zip(ranges, st["versions"]):
                assert v <= params[b:e].min() and params[b:e].max() <= v + st["torn_shards"]
            print(f"locked: {st['torn_shards']} lock takeovers, {torn} shards left torn")
        # Still usable: a fresh learner's push lands everywhere.
        h = store.learner()
        h.pull(np.empty(N, np.float32))
        h.push(np.full(N, -1.0, np.float32))
        np.testing.assert_array_equal(store.read(), params + 1)
        h.close()
    print(
        f"{mode}: {kills} kills survived, {st['recovered']} handles recovered"
        + (f", {held - SHARDS} slots held by the last two dead before recover()" if held else "")
    )


def _hold_a_handle_and_die(name, started):
    store = fastps.Store.attach(name)
    h1 = store.learner()
    h1.pull(np.empty(store.size, np.float32))  # keeps what it read pinned (staleness distance)
    h2 = store.learner()  # noqa: F841 (held until the kill)
    started.set()
    time.sleep(60)


def test_places_of_dead_learners_are_given_back(shm_name):
    ctx = mp.get_context("spawn")
    with fastps.Store(64, shared=shm_name, max_learners=2,
                      step_size=fastps.StalenessDistance(c=1.0, eta_max=0.1)) as store:  # fmt: skip
        started = ctx.Event()
        p = ctx.Process(target=_hold_a_handle_and_die, args=(shm_name, started))
        p.start()
        assert started.wait(60)
        assert store.stats()["learners"] == 2
        with pytest.raises(RuntimeError, match=r"learner: 2 handles are open"):
            store.learner()
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        h = store.learner()  # no free place: recovers the dead process's two, then succeeds
        st = store.stats()
        assert st["learners"] == 1 and st["recovered"] == 2
        assert st["slots_in_use"] == 1  # the dead handle's kept read pin is gone
        h.close()
