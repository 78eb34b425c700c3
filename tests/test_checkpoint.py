"""Checkpoints: exact round trips, consistent snapshots under load, atomic replacement, and
refusal of damaged files before anything is created."""

import json
import multiprocessing as mp
import os
import signal
import struct
import subprocess
import threading
import time
import zlib

import numpy as np
import pytest
from conftest import CONSISTENT, MODES, pull_push
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    with fastps.Store(init=np.full(n, 3.0, np.float32)) as store:
        store.save(path)  # removes what the killed writers left
    assert os.listdir(tmp_path) == ["s.ckpt"]


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


# -- crafted headers with a valid checksum (issue 17.6) ----------------------------------------


def craft(good, change=None, *, head=None):
    """``good`` (a checkpoint's bytes) with its header changed by ``change(header)`` (or
    replaced by the raw JSON text ``head``) and the CRC recomputed: only the schema can refuse
    it."""
    head_len = struct.unpack_from("<Q", good, 16)[0]
    body = good[24 + head_len : -4]
    if head is None:
        header = json.loads(good[24 : 24 + head_len])
        change(header)
        head = json.dumps(header)  # allow_nan: NaN and Infinity are written as such
    raw = head.encode()
    out = good[:16] + struct.pack("<Q", len(raw)) + raw + body
    return out + struct.pack("<I", zlib.crc32(out))


def _set(path, value):
    def change(h):
        *parents, last = path
        for k in parents:
            h = h[k]
        h[last] = value

    return change


def _delete(path):
    def change(h):
        *parents, last = path
        for k in parents:
            h = h[k]
        del h[last]

    return change


def _swap_cdf(h):
    h["counters"]["cdf"][0], h["counters"]["cdf"][-1] = 0.9, 0.1


F = r"load: checkpoint '.*bad.ckpt': header field"
CRAFTED = {
    "missing config.shards": (_delete(["config", "shards"]), F + r" 'config.shards' is missing"),
    "missing counters": (_delete(["counters"]), F + r" 'counters' is missing"),
    "missing step kind": (
        _delete(["config", "step", "kind"]),
        F + r" 'config.step.kind' is missing",
    ),
    "missing cdf": (_delete(["counters", "cdf"]), F + r" 'counters.cdf' is missing"),
    "shards as str": (
        _set(["config", "shards"], "3"),
        F + r" 'config.shards' must be an integer \(got str\)",
    ),
    "size as float": (
        _set(["config", "size"], 1000.0),
        F + r" 'config.size' must be an integer \(got float\)",
    ),
    "lr as str": (_set(["config", "lr"], "0.1"), F + r" 'config.lr' must be a number \(got str\)"),
    "nesterov as int": (
        _set(["config", "nesterov"], 1),
        F + r" 'config.nesterov' must be a bool \(got int\)",
    ),
    "mode as int": (
        _set(["config", "mode"], 1),
        F + r" 'config.mode' must be a string \(got int\)",
    ),
    "unknown mode": (
        _set(["config", "mode"], "fast"),
        F + r" 'config.mode' must be one of locked, hogwild, leashed \(got 'fast'\)",
    ),
    "unknown nan_guard": (
        _set(["config", "nan_guard"], ""),
        F + r" 'config.nan_guard' must be one of raise, skip, off \(got ''\)",
    ),
    "unknown step kind": (
        _set(["config", "step", "kind"], "magic"),
        F + r" 'config.step.kind' must be one of constant, .*tail_tau.* \(got 'magic'\)",
    ),
    "step as list": (
        _set(["config", "step"], []),
        F + r" 'config.step' must be an object \(got list\)",
    ),
    "warmup negative": (
        _set(["config", "step", "warmup"], -1),
        F + r" 'config.step.warmup' must be in \[0, 2\^64-1\] \(got -1\)",
    ),
    "lr out of range": (
        _set(["config", "lr"], -1.0),
        r"load: checkpoint '.*bad.ckpt': header field 'config' is refused: TailTau: lr must be finite "
        r"and >= 0 \(got -1\)",
    ),
    "max_learners out of range": (
        _set(["config", "max_learners"], 0),
        r"load: checkpoint '.*bad.ckpt': header field 'config' is refused: max_learners must be "
        r"in \[1, 1024\] \(got 0\)",
    ),
    "clock negative": (
        _set(["counters", "clock"], -1),
        F + r" 'counters.clock' must be in \[0, 2\^64-1\] \(got -1\)",
    ),
    "pushes too large": (
        _set(["counters", "pushes"], 2**64),
        F + r" 'counters.pushes' must be in \[0, 2\^64-1\] \(got 18446744073709551616\)",
    ),
    "versions short": (
        _set(["counters", "versions"], [1, 2]),
        F + r" 'counters.versions' must have 3 entries \(got 2\)",
    ),
    "versions as dict": (
        _set(["counters", "versions"], {}),
        F + r" 'counters.versions' must be a list \(got dict\)",
    ),
    "hist entry str": (
        _set(["counters", "hist", 5], "x"),
        F + r" 'counters.hist\[5\]' must be an integer \(got str\)",
    ),
    "hist short": (
        _set(["counters", "hist"], [0] * 10),
        F + r" 'counters.hist' must have 195 entries \(got 10\)",
    ),
    "cdf NaN": (
        _set(["counters", "cdf", 3], float("nan")),
        F + r" 'counters.cdf\[3\]' must be finite, in \[0, 1\] \(got nan\)",
    ),
    "cdf Inf": (
        _set(["counters", "cdf", 0], float("inf")),
        F + r" 'counters.cdf\[0\]' must be finite, in \[0, 1\] \(got inf\)",
    ),
    "cdf above 1": (
        _set(["counters", "cdf", 0], 1.5),
        F + r" 'counters.cdf\[0\]' must be finite, in \[0, 1\] \(got 1.5\)",
    ),
    "cdf decreasing": (
        _swap_cdf,
        F + r" 'counters.cdf' must be non-decreasing \(0.9 at 0, 0.8\d* at 1\)",
    ),
    "cdf short": (
        _set(["counters", "cdf"], [0.5]),
        F + r" 'counters.cdf' must have 65 entries \(got 1\)",
    ),
    "cdf_hist short": (
        _set(["counters", "cdf_hist"], []),
        F + r" 'counters.cdf_hist' must have 65 entries \(got 0\)",
    ),
    "cdf_ready 2": (
        _set(["counters", "cdf_ready"], 2),
        F + r" 'counters.cdf_ready' must be in \[0, 1\] \(got 2\)",
    ),
    "shard ranges shifted": (
        _set(["shard_ranges"], [[0, 320], [320, 672], [672, 1000]]),
        F + r" 'shard_ranges' must be \[\[0, 336\], \[336, 672\], \[672, 1000\]\] \(the split of "
        r"size 1000 into 3 shards\), got \[\[0, 320\], \[320, 672\], \[672, 1000\]\]",
    ),
    "shard ranges short": (
        _set(["shard_ranges"], [[0, 1000]]),
        F + r" 'shard_ranges' must have 3 entries \(got 1\)",
    ),
    "shard range not a pair": (
        _set(["shard_ranges", 1], [0, 1, 2]),
        F + r" 'shard_ranges\[1\]' must have 2 entries \(got 3\)",
    ),
    "arrays without momentum": (
        _set(["arrays"], ["params"]),
        F + r" 'arrays' must be \['params', 'momentum'\] for momentum 0.9 \(got \['params'\]\)",
    ),
    "arrays unknown": (
        _set(["arrays"], ["params", "velocity"]),
        F + r" 'arrays\[1\]' must be one of params, momentum \(got 'velocity'\)",
    ),
    "saved_unix_s as str": (
        _set(["saved_unix_s"], "now"),
        F + r" 'saved_unix_s' must be a number \(got str\)",
    ),
    "header a list": (
        lambda h: None,  # replaced below: the header itself is not an object
        r"load: checkpoint '.*bad.ckpt': header must be a JSON object \(got list\)",
    ),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_headers_are_refused_with_value_error(tmp_path, good, shm_name, case):
    change, msg = CRAFTED[case]
    data = craft(good, head="[1, 2]") if case == "header a list" else craft(good, change)
    with pytest.raises(ValueError, match=msg):
        fastps.Store.load(write(tmp_path, data), shared=shm_name)
    assert not os.path.exists(f"/dev/shm/fastps.{shm_name}")  # refused before anything exists


def test_crafted_header_that_only_adds_keys_loads(tmp_path, good):
    def change(h):
        h["counters"]["future_counter"] = 7
        h["config"]["future_option"] = "x"

    with fastps.Store.load(write(tmp_path, craft(good, change))) as loaded:
        with fastps.Store.load(write(tmp_path, good)) as ref:
            np.testing.assert_array_equal(loaded.read(), ref.read())


@pytest.mark.parametrize("depth", [200, 100_000])
def test_deeply_nested_header_is_refused(tmp_path, good, depth):
    head_len = struct.unpack_from("<Q", good, 16)[0]
    text = good[24 : 24 + head_len].decode()
    nested = "[" * depth + "]" * depth
    data = craft(good, head=text.replace('"metadata": null', f'"metadata": {nested}'))
    assert len(data) > len(good)  # the metadata was replaced
    deeper = {200: r"header field 'metadata' nests deeper than 99 levels",
              100_000: r"header nests deeper than Python's JSON parser allows"}  # fmt: skip
    with pytest.raises(ValueError, match=r"load: checkpoint '.*bad.ckpt': " + deeper[depth]):
        fastps.Store.load(write(tmp_path, data))


def test_metadata_nested_too_deep_is_not_saved(tmp_path):
    deep = []
    for _ in range(150):
        deep = [deep]
    with fastps.Store(10) as store:
        with pytest.raises(ValueError, match=r"save: metadata nests deeper than 99 levels"):
            store.save(tmp_path / "s.ckpt", metadata=deep)
        ok = [[[1]]]
        store.save(tmp_path / "s.ckpt", metadata=ok)
    with fastps.Store.load(tmp_path / "s.ckpt") as loaded:
        assert loaded.metadata == ok
    assert os.listdir(tmp_path) == ["s.ckpt"]


def test_a_nan_tail_tau_table_never_reaches_the_parameters(tmp_path, good, shm_name):
    """Today's failure: the table loaded, and the first push after the warm-up turned the
    parameters to NaN. Refused now, whatever the table's state."""

    def change(h):
        h["counters"]["cdf"] = [float("nan")] * len(h["counters"]["cdf"])
        h["counters"]["cdf_ready"] = 1

    with pytest.raises(ValueError, match=F + r" 'counters.cdf\[0\]' must be finite"):
        fastps.Store.load(write(tmp_path, craft(good, change)), shared=shm_name)
    assert not os.path.exists(f"/dev/shm/fastps.{shm_name}")


def _leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list) and node:
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    else:
        yield path


_JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 3, 15, 16, 64, 1000, 1024, 2**31, 2**32, 2**63, 2**64 - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["leashed", "locked", "tail_tau", "hook", "constant", "skip", "params"]),
    st.lists(st.integers(min_value=-2, max_value=2000), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(
    deadline=None, max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_header_mutations_raise_value_error_or_load_the_saved_parameters(tmp_path, data):
    path = tmp_path / "small.ckpt"
    if not path.exists():
        with fastps.Store(init=np.arange(40, dtype=np.float32), shards=2, momentum=0.5,
                          step_size=fastps.TailTau(warmup=2), staleness_bins=4) as s:  # fmt: skip
            h = s.learner()
            for _ in range(3):
                h.push(np.ones(40, np.float32))
            s.save(path, metadata={"k": [1, 2]})
    good = path.read_bytes()
    with fastps.Store.load(path) as ref:
        saved = ref.read()
    head_len = struct.unpack_from("<Q", good, 16)[0]
    leaves = list(_leaves(json.loads(good[24 : 24 + head_len])))
    changes = data.draw(
        st.lists(st.tuples(st.sampled_from(leaves), _JSON_VALUES), min_size=1, max_size=3)
    )
    bad = tmp_path / "mutated.ckpt"

    def change(h):
        for where, value in changes:
            node = h
            for k in where[:-1]:
                node = node[k]
            node[where[-1]] = value

    bad.write_bytes(craft(good, change))
    try:
        loaded = fastps.Store.load(bad)
    except ValueError:
        return
    with loaded:
        np.testing.assert_array_equal(loaded.read(), saved)


# -- temporaries of killed writers (issue 17.8) ------------------------------------------------


def _save_and_stop(path):
    """Save, but stop (SIGSTOP) between writing the temporary and renaming it: the parent then
    SIGKILLs this process in the middle of a save, every time."""
    os.replace = lambda *a: os.kill(os.getpid(), signal.SIGSTOP)
    with fastps.Store(init=np.full(1000, 2.0, np.float32)) as store:
        store.save(path)


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _temporaries(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".tmp"))


def test_a_save_removes_temporaries_of_killed_writers_only(tmp_path):
    path = tmp_path / "s.ckpt"
    with fastps.Store(init=np.full(1000, 1.0, np.float32)) as store:
        store.save(path)
    ctx = mp.get_context("spawn")
    killed = [ctx.Process(target=_save_and_stop, args=(path,)) for _ in range(2)]
    for p in killed:  # a stopped writer is alive: the second save leaves the first's file
        p.start()
        deadline = time.monotonic() + 60
        while _state(p.pid) != "T":
            assert time.monotonic() < deadline, "the writer never stopped"
            time.sleep(0.01)
    for p in killed:
        os.kill(p.pid, signal.SIGKILL)
    killed[0].join()  # dead and reaped: /proc/PID is gone
    while _state(killed[1].pid) != "Z":  # dead, not reaped: a zombie
        time.sleep(0.01)
    stale = _temporaries(tmp_path)
    assert [f.split(".")[-3] for f in stale] == sorted(str(p.pid) for p in killed)
    # A live writer of the same path (another process), this process's own name, and a dead
    # writer of another path are left alone.
    live = subprocess.Popen(["sleep", "60"])
    try:
        host = stale[0].split(".")[-4]
        kept = [f".s.ckpt.{host}.{live.pid}.abc123.tmp", f".s.ckpt.{host}.{os.getpid()}.x_1.tmp",
                f".t.ckpt.{host}.{killed[0].pid}.abc.tmp", ".s.ckpt.oldstyle.tmp"]  # fmt: skip
        for f in kept:
            (tmp_path / f).write_bytes(b"partial")
        with fastps.Store(init=np.full(1000, 3.0, np.float32)) as store:
            store.save(path)
        assert _temporaries(tmp_path) == sorted(kept)
        with fastps.Store.load(path) as loaded:
            np.testing.assert_array_equal(loaded.read(), 3.0)
    finally:
        live.kill()
        live.wait()
        killed[1].join()
