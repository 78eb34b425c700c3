"""Linearizability of locked and leashed stores: in a concurrent run every push records the
version it created on each shard and every pull records the versions it read. Each shard's
versions must be 1..N, each given to exactly one update, and every pulled shard must equal the
initial value plus the sum of exactly the updates with version <= the version pulled."""

import threading

import numpy as np
import pytest
from conftest import run_threads

import fastps

N_ELEMS = 1 << 18
SHARDS = 4
THREADS = 3
PUSHES = 300


@pytest.mark.parametrize("mode,persistence", [("locked", -1), ("leashed", -1), ("leashed", 0)])
def test_every_pull_is_the_sum_of_exactly_the_updates_it_should_see(mode, persistence):
    init = np.arange(N_ELEMS, dtype=np.float32) % 7
    pushes, pulls = [], []  # (deltas, versions per shard), (values, versions per shard)
    lock = threading.Lock()
    with fastps.Store(init=init, shards=SHARDS, mode=mode, lr=1.0, persistence=persistence,
                      max_learners=THREADS) as store:  # fmt: skip
        ranges = store.shard_ranges()
        start = threading.Barrier(THREADS)

        def learner(seed):
            rng = np.random.default_rng(seed)
            h = store.learner()
            buf = np.empty(N_ELEMS, np.float32)
            mine_push, mine_pull = [], []
            start.wait()
            for _ in range(PUSHES):
                h.pull(buf)
                mine_pull.append(([float(buf[b]) for b, _ in ranges],
                                  [h.read_version(s) for s in range(SHARDS)],
                                  [bool(np.all(buf[b:e] == buf[b] - init[b] + init[b:e]))
                                   for b, e in ranges]))  # fmt: skip
                delta = int(rng.integers(1, 1000))  # integer: sums stay exact in float32
                h.push(np.full(N_ELEMS, -delta, np.float32))
                mine_push.append((delta, h.last_push_versions()))
            with lock:
                pushes.extend(mine_push)
                pulls.extend(mine_pull)

        run_threads(learner, THREADS, args=lambda i: (i,))
        final = store.read()
        st = store.stats()

    for s, (b, e) in enumerate(ranges):
        by_version = {}
        for delta, versions in pushes:
            if versions[s]:
                assert versions[s] not in by_version, f"version {versions[s]} given twice"
                by_version[versions[s]] = delta
        n = st["versions"][s]
        assert sorted(by_version) == list(range(1, n + 1))  # 1..N, no gaps, no repeats
        prefix = np.concatenate([[0], np.cumsum([by_version[v] for v in range(1, n + 1)])])
        for values, versions, whole in pulls:
            assert whole[s], "torn shard read"
            assert values[s] == init[b] + prefix[versions[s]], (s, versions[s])
        np.testing.assert_array_equal(final[b:e], init[b:e] + prefix[n])
    dropped = sum(1 for _, v in pushes for x in v if x == 0)
    assert dropped == st["dropped"]
    print(f"{mode} persistence={persistence}: {len(pushes)} pushes, {len(pulls)} pulls checked, "
          f"{st['cas_failures']} CAS failures, {dropped} dropped")  # fmt: skip
