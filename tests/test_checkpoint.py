"""Checkpoints: exact round trips, consistent snapshots under load, atomic replacement, and
refusal of damaged files before anything is created."""

import multiprocessing as mp
import os
import signal
import struct
import threading
import time

import numpy as np
import pytest
from conftest import CONSISTENT, MODES, pull_push

import fastps


def pushed_store(mode, **kw):
    rng = np.random.default_rng(7)
    store = fastps.Store(init=rng.standard_normal(1000).astype(np.float32), shards=3, mode=mode,
                         lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01,
                         step_size=fastps.TailTau(a=0.5, warmup=4), **kw)  # fmt: skip
    a, b = store.learner(), store.learner()
    buf = np.empty(1000, np.float32)
    for _i in range(5):
        a.pull(buf)
        b.pull(buf)
        a.push(rng.standard_normal(1000).astype(np.float32))
        b.push(rng.standard_normal(1000).astype(np.float32))
    a.close()
    b.close()
    return store


COMPARED = ("clock", "pushes", "shard_updates", "versions", "staleness_hist", "step_hist",
            "step_builds", "nonfinite_skipped")  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_is_exact_and_training_continues_identically(mode, tmp_path):
    path = tmp_path / "s.ckpt"
    with pushed_store(mode) as store:
        store.save(path, metadata={"epoch": 3, "layout": ["w", [10, 100]]})
        with fastps.Store.load(path) as loaded:
            assert loaded.metadata == {"epoch": 3, "layout": ["w", [10, 100]]}
            assert loaded.config == store.config
            np.testing.assert_array_equal(loaded.read(), store.read())
            st, lt = store.stats(), loaded.stats()
            assert {k: lt[k] for k in COMPARED if k != "step_builds"} == {
                k: st[k] for k in COMPARED if k != "step_builds"
            }
            # Same momentum, same TAIL-tau table, same versions: the next pushes agree bitwise.
            g = np.linspace(-1, 1, 1000, dtype=np.float32)
            for s in (store, loaded):
                h = s.learner()
                h.push(g)
                h.push(g)
            np.testing.assert_array_equal(loaded.read(), store.read())


def test_load_can_change_mode_and_runtime_options(tmp_path, shm_name):
    with pushed_store("locked") as store:
        store.save(tmp_path / "s.ckpt")
        with fastps.Store.load(tmp_path / "s.ckpt", mode="leashed", shared=shm_name,
                               max_learners=3, nan_guard="skip") as loaded:  # fmt: skip
            assert (loaded.mode, loaded.name) == ("leashed", shm_name)
            assert loaded.config["max_learners"] == 3 and loaded.config["nan_guard"] == "skip"
            np.testing.assert_array_equal(loaded.read(), store.read())
            assert loaded.stats()["versions"] == store.stats()["versions"]


@pytest.mark.parametrize("mode", CONSISTENT)
def test_saving_while_learners_push_gives_consistent_shards(mode, tmp_path):
    """Every push adds 1 to every element (lr=1, g=-1): in a consistent snapshot each shard is
    uniform and equal to its saved version."""
    n, threads, pushes = 1 << 16, 3, 300
    stop = threading.Event()
    with fastps.Store(n, shards=4, mode=mode, lr=1.0) as store:
        ts = [threading.Thread(target=pull_push, args=(store, pushes)) for _ in range(threads)]
        for t in ts:
            t.start()
        saved = 0
        while any(t.is_alive() for t in ts) or saved < 3:
            path = tmp_path / f"c{saved % 2}.ckpt"
            store.save(path)
            with fastps.Store.load(path) as snap:
                params, versions = snap.read(), snap.stats()["versions"]
                for (b, e), v in zip(snap.shard_ranges(), versions):
                    assert np.all(params[b:e] == v), f"torn shard at {b}: version {v}"
            saved += 1
        stop.set()
        for t in ts:
            t.join()
        assert store.stats()["versions"] == [threads * pushes] * 4
    assert saved >= 3


def _save_forever(path, n):
    store = fastps.Store(init=np.full(n, 2.0, np.float32), mode="locked")
    while True:
        store.save(path)


def test_a_crash_mid_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "s.ckpt"
    n = 1 << 22  # 16 MiB: a kill lands inside the write most of the time
    with fastps.Store(init=np.full(n, 1.0, np.float32)) as store:
        store.save(path)
    ctx = mp.get_context("spawn")
    outcomes = set()
    for delay in (0.3, 0.45, 0.6, 0.75):
        p = ctx.Process(target=_save_forever, args=(path, n))
        p.start()
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        with fastps.Store.load(path) as loaded:  # whole, and one of the two versions
            values = np.unique(loaded.read())
            assert len(values) == 1 and values[0] in (1.0, 2.0)
            outcomes.add(float(values[0]))
    leftovers = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    print(f"outcomes {sorted(outcomes)}, temporary files left by the kills: {len(leftovers)}")


# -- damaged files ---------------------------------------------------------------------------


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.ckpt"
    with pushed_store("leashed") as store:
        store.save(path)
    return path.read_bytes()


def write(tmp_path, data):
    p = tmp_path / "bad.ckpt"
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("cut", [0, 5, 23, 30, -4004, -5, -1])
def test_truncated_files_are_refused(tmp_path, good, shm_name, cut):
    path = write(tmp_path, good[:cut])
    with pytest.raises(ValueError, match=r"load: .*bad.ckpt is truncated"):
        fastps.Store.load(path, shared=shm_name)
    assert not os.path.exists(f"/dev/shm/fastps.{shm_name}")  # nothing was created


@pytest.mark.parametrize("where", ["payload", "crc", "header"])
def test_corrupted_files_are_refused(tmp_path, good, where):
    data = bytearray(good)
    head_len = struct.unpack_from("<Q", data, 16)[0]
    pos = {"payload": 24 + head_len + 100, "crc": len(data) - 2, "header": 24 + head_len // 2}[
        where
    ]
    data[pos] ^= 0x10
    with pytest.raises(ValueError, match=r"load: .*bad.ckpt is corrupted"):
        fastps.Store.load(write(tmp_path, bytes(data)))


def test_wrong_magic_version_and_layout(tmp_path, good):
    with pytest.raises(ValueError, match=r"is not a fastps checkpoint"):
        fastps.Store.load(write(tmp_path, b"NOTACKPT" + good[8:]))
    with pytest.raises(ValueError, match=r"has format version 2, expected 1"):
        fastps.Store.load(write(tmp_path, good[:8] + struct.pack("<I", 2) + good[12:]))
    path = write(tmp_path, good)
    with pytest.raises(ValueError, match=r"has size=1000, expected 1024 \(wrong layout\)"):
        fastps.Store.load(path, size=1024)
    with pytest.raises(ValueError, match=r"has shards=3, expected 4 \(wrong layout\)"):
        fastps.Store.load(path, shards=4)
    with pytest.raises(ValueError, match=r"step_size is only for checkpoints saved with a hook"):
        fastps.Store.load(path, step_size=lambda tau, st: 0.1)
    fastps.Store.load(path, size=1000, shards=3).close()


def test_metadata_that_is_not_json_keeps_the_old_file(tmp_path):
    path = tmp_path / "s.ckpt"
    with fastps.Store(10) as store:
        store.save(path, metadata=[1])
        before = path.read_bytes()
        with pytest.raises(TypeError, match=r"save: metadata must be JSON-serialisable"):
            store.save(path, metadata={"x": object()})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["s.ckpt"]


def test_hook_checkpoint_needs_the_hook_again(tmp_path):
    def hook(tau, stats):
        return 0.5

    with fastps.Store(10, step_size=hook) as store:
        store.learner().push(np.ones(10, np.float32))
        store.save(tmp_path / "h.ckpt")
    with pytest.raises(ValueError, match=r"saved with a Python step_size hook; pass it again"):
        fastps.Store.load(tmp_path / "h.ckpt")
    with fastps.Store.load(tmp_path / "h.ckpt", step_size=hook) as loaded:
        loaded.learner().push(np.ones(10, np.float32))
        np.testing.assert_array_equal(loaded.read(), -1.0)


def test_native_load_refuses_a_store_in_use():
    with fastps.Store(10) as store:
        store.learner().push(np.ones(10, np.float32))
        params = np.zeros(10, np.float32)
        c = store._s.save(params, None)
        with pytest.raises(RuntimeError, match=r"load: the store is already in use"):
            store._s.load(params, None, c)
