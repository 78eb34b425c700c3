"""Damaged shared segments (issue 17, items 1 and 9): whatever value one word of a store's
header, shard descriptors, registration entries, slot states or reader words holds, attaching
to it and the calls after it (learner, pull, push, read, stats, save, recover, close) end in a
result or a ValueError / RuntimeError: never a signal, never a hang.

Each damaged case runs in a child process (a crash must not take pytest with it): the parent
creates a real shared store and keeps it idle; a child snapshots the segment, then per case
writes one 4-byte word, exercises the store, reports the outcome on one line and restores the
snapshot. A child that dies by a signal, or reports nothing for CASE_TIMEOUT_S, is recorded
against the case it was in, and a new child goes on from the next case.

Where the words are: the header's offsets are pinned by static_asserts in csrc/src/layout.h
(HEADER_* below); everything else is read from the header itself.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import fastps

# Pinned by static_asserts in csrc/src/layout.h (the format of a shared segment).
HEADER_BYTES = 512
HEADER_SLOTS = 120  # u32 V
HEADER_ENTRIES = 140  # u32 registration entries
HEADER_READER_WORDS = 144  # u32
HEADER_ENTRIES_OFF = 152  # then readers_off, shards_off, slots_off, hist_off, cdf_off, data_off
SHARD_DESC_BYTES = 256
SHARD_LOCK_WORD = 64  # glibc's pthread_mutex_t starts with its lock word
SHARD_CURRENT = 136  # leashed: (version << 16) | slot
ENTRY_BYTES = 16
SLOT_HEADER_BYTES = 64

CASE_TIMEOUT_S = 20.0
VALUES = (0, 2**31 - 1, 2**32 - 1)
OK_TYPES = ("ok", "ValueError", "RuntimeError")

# The child: argv = name, checkpoint path; stdin: a JSON list of [offset, value]; one line per
# case on stdout. Its address space is capped so that a damaged count cannot make it allocate the
# machine's memory (a MemoryError is then a finding like any other).
CHILD = r"""
import json, os, resource, sys
import numpy as np
import fastps

resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
name, ckpt, cases = sys.argv[1], sys.argv[2], json.load(sys.stdin)
path = f"/dev/shm/fastps.{name}"
fd = os.open(path, os.O_RDWR)
snapshot = os.pread(fd, os.fstat(fd).st_size, 0)

def exercise():
    store = fastps.Store.attach(name)
    try:
        out = np.empty(store.size, np.float32)
        with store.learner() as h:
            h.pull(out)
            h.push(np.ones(store.size, np.float32))
        store.read(out)
        store.stats()
        store.save(ckpt)
        store.recover()
    finally:
        store.close()

for off, value in cases:
    os.pwrite(fd, value.to_bytes(4, "little"), off)
    try:
        exercise()
        outcome = "ok"
    except Exception as e:  # the parent decides which types are fine
        outcome = f"{type(e).__name__}: {e}"
    os.pwrite(fd, snapshot, 0)
    print(json.dumps([off, value, outcome]), flush=True)
"""


def u32(buf: bytes, off: int) -> int:
    return struct.unpack_from("<I", buf, off)[0]


def u64(buf: bytes, off: int) -> int:
    return struct.unpack_from("<Q", buf, off)[0]


def regions(name: str) -> dict[str, tuple[int, int]]:
    """Byte ranges [begin, end) of the parts of segment `name`, from its header."""
    with open(f"/dev/shm/fastps.{name}", "rb") as f:
        h = f.read(HEADER_BYTES)
    entries, reader_words = u32(h, HEADER_ENTRIES), u32(h, HEADER_READER_WORDS)
    entries_off, readers_off, shards_off, slots_off, hist_off, cdf_off, data_off = (
        u64(h, HEADER_ENTRIES_OFF + 8 * i) for i in range(7)
    )
    return {
        "header": (0, HEADER_BYTES),
        "shards": (shards_off, slots_off),
        "slots": (slots_off, entries_off),
        "entries": (entries_off, entries_off + entries * ENTRY_BYTES),
        "readers": (readers_off, hist_off),
        "hist": (hist_off, cdf_off),
        "cdf": (cdf_off, data_off),
        "reader_words": (reader_words, reader_words),  # not a range: for the slot stride
    }


def words(name: str, *, everything: bool) -> list[int]:
    """Offsets of the 4-byte words to damage: every word of the header, the shard descriptors
    and the registration entries; the state word of every slot header and every reader word
    (and with `everything`, every word before the data: histograms, the TAIL-tau table and the
    padding of the slot headers too)."""
    r = regions(name)
    out = [o for part in ("header", "shards", "entries") for o in range(*r[part], 4)]
    if everything:
        out += [o for part in ("slots", "readers", "hist", "cdf") for o in range(*r[part], 4)]
        return out
    for base in range(*r["slots"], SLOT_HEADER_BYTES):
        out += [base, base + 4]  # the 64-bit state word
    return out + list(range(*r["readers"], 4))


def run_cases(name: str, ckpt, cases: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """Runs `cases` in child processes (checkpoints go to `ckpt`); maps each case to its outcome
    line ("ok", "ValueError: ...", ..., "signal N", "hang")."""
    outcomes: dict[tuple[int, int], str] = {}
    todo = list(cases)
    env = dict(os.environ, PYTHONFAULTHANDLER="")
    while todo:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, name, str(ckpt)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/tmp", env=env, text=True,
        )  # fmt: skip
        assert child.stdin is not None
        child.stdin.write(json.dumps(todo))
        child.stdin.close()
        done = 0
        deadline = time.monotonic() + CASE_TIMEOUT_S
        assert child.stdout is not None
        while done < len(todo):
            ready, _, _ = select.select(
                [child.stdout], [], [], max(0.0, deadline - time.monotonic())
            )
            if not ready:
                child.kill()
                child.wait()
                outcomes[todo[done]] = "hang"
                done += 1
                break
            line = child.stdout.readline()
            if not line:  # the child ended before reporting this case
                rc = child.wait()
                outcomes[todo[done]] = f"signal {-rc}" if rc < 0 else f"exit {rc}"
                done += 1
                break
            off, value, outcome = json.loads(line)
            outcomes[(off, value)] = outcome
            done += 1
            deadline = time.monotonic() + CASE_TIMEOUT_S
        else:
            child.wait()
        child.stdout.close()
        todo = todo[done:]
    return outcomes


def bad(outcomes: dict[tuple[int, int], str]) -> list[str]:
    return [
        f"word at byte {off} = {value:#x}: {o}"
        for (off, value), o in sorted(outcomes.items())
        if not o.startswith(OK_TYPES)
    ]


def make_store(name: str, mode: str) -> fastps.Store:
    return fastps.Store(
        1000, init=np.arange(1000, dtype=np.float32), shards=3, mode=mode, max_learners=2,
        shared=name, momentum=0.5 if mode == "leashed" else 0.0,
    )  # fmt: skip


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", fastps.MODES)
def test_no_damaged_word_crashes_or_hangs(mode, shm_name, tmp_path):
    """Every word of the header, shard descriptors, entries, slot states and reader words,
    written with 0, 2^31-1, 2^32-1 and one seeded random value: no signal, no hang, and the
    structural words are refused at attach with a ValueError."""
    rng = random.Random(17)
    with make_store(shm_name, mode):
        offsets = words(shm_name, everything=False)
        cases = [(o, v) for o in offsets for v in (*VALUES, rng.getrandbits(32))]
        outcomes = run_cases(shm_name, tmp_path / "c.fps", cases)
    assert not bad(outcomes), "\n".join(bad(outcomes)[:40])
    # The offsets, counts and sizes are checked at attach: damaged, they are refused there.
    for field in (HEADER_SLOTS, HEADER_ENTRIES, HEADER_READER_WORDS, HEADER_ENTRIES_OFF):
        for v in VALUES:
            assert outcomes[(field, v)].startswith("ValueError: attach: store "), outcomes[
                (field, v)
            ]


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("mode", fastps.MODES)
def test_no_damaged_word_crashes_or_hangs_exhaustive(mode, shm_name, tmp_path):
    """Every word before the data, with the three edge values and eight seeded random ones."""
    rng = random.Random(1717)
    with make_store(shm_name, mode):
        offsets = words(shm_name, everything=True)
        cases = [
            (o, v) for o in offsets for v in (*VALUES, *(rng.getrandbits(32) for _ in range(8)))
        ]
        outcomes = run_cases(shm_name, tmp_path / "c.fps", cases)
    assert not bad(outcomes), "\n".join(bad(outcomes)[:40])


def test_the_issue_reproducer_is_refused_not_a_crash(shm_name, tmp_path):
    """Issue 17's reproducer: the header's entry count set to 2^31."""
    with fastps.Store(1000, shards=3, shared=shm_name):
        outcomes = run_cases(shm_name, tmp_path / "c.fps", [(HEADER_ENTRIES, 2**31)])
    assert outcomes[(HEADER_ENTRIES, 2**31)] == (
        f"ValueError: attach: store '{shm_name}' is damaged: header entry count 2147483648, "
        "expected 20"
    )


@pytest.mark.parametrize(
    ("mode", "value", "message"),
    [
        ("leashed", 0, "header slot count 0, expected 9"),
        ("leashed", 2**31 - 1, "header slot count 2147483647, expected 9"),
        ("locked", 2**32 - 1, "header slot count 4294967295, expected 1"),
    ],
)
def test_a_damaged_slot_count_names_the_field(mode, value, message, shm_name, tmp_path):
    with make_store(shm_name, mode):
        outcomes = run_cases(shm_name, tmp_path / "c.fps", [(HEADER_SLOTS, value)])
    assert outcomes[(HEADER_SLOTS, value)] == (
        f"ValueError: attach: store '{shm_name}' is damaged: {message}"
    )


def documented_slots(max_learners: int, distance: bool) -> int:
    """V as Store's docstring states it: "A*max_learners+B version slots per shard (C*... with
    StalenessDistance)"."""
    doc = " ".join((fastps.Store.__doc__ or "").split())
    found = re.search(
        r"keeps (\d+)\*max_learners\+(\d+) version slots per shard \((\d+)\*max_learners\+(\d+) "
        r"with StalenessDistance\)",
        doc,
    )
    assert found, "Store's docstring no longer states the leashed slot count"
    a, b, c, d = map(int, found.groups())
    return c * max_learners + d if distance else a * max_learners + b


@pytest.mark.parametrize(
    ("max_learners", "momentum", "distance"),
    [(1, 0.0, False), (16, 0.0, False), (4, 0.5, False), (4, 0.0, True)],
)
def test_leashed_segment_holds_the_documented_slot_count(
    max_learners, momentum, distance, shm_name
):
    """Item 9: a leashed shared segment is V slot blocks per shard (each shard's padded length,
    parameters then momentum) plus less than 64 KiB of metadata, V as the docstring says; the
    segment's pages are all reserved in /dev/shm (posix_fallocate)."""
    n, shards = 2**16, 2
    step = fastps.StalenessDistance(c=1.0, eta_max=0.1) if distance else None
    with fastps.Store(
        n, shards=shards, mode="leashed", max_learners=max_learners, momentum=momentum,
        step_size=step, shared=shm_name,
    ):  # fmt: skip
        path = f"/dev/shm/fastps.{shm_name}"
        size = os.path.getsize(path)
        allocated = os.stat(path).st_blocks * 512
    slots = documented_slots(max_learners, distance)
    data = slots * n * 4 * (2 if momentum else 1)
    assert 0 < size - data < 64 << 10, (size, data, slots)
    assert allocated >= size  # reserved up front, not on first touch


def poke(name: str, offset: int, value: int) -> None:
    """Writes one little-endian 4-byte word of segment `name`."""
    fd = os.open(f"/dev/shm/fastps.{name}", os.O_RDWR)
    try:
        os.pwrite(fd, value.to_bytes(4, "little"), offset)
    finally:
        os.close(fd)


def test_a_damaged_current_slot_is_refused_by_pin(shm_name, tmp_path):
    """The slot index in a leashed shard's `current` addresses reader words: bounds-checked."""
    with make_store(shm_name, "leashed"):
        at = regions(shm_name)["shards"][0] + SHARD_CURRENT
        outcomes = run_cases(shm_name, tmp_path / "c.fps", [(at, 0xFFFF)])
    assert outcomes[(at, 0xFFFF)] == (
        f"RuntimeError: store '{shm_name}' is damaged: shard 0's current version 0 names slot "
        "65535, it has 9 slots"
    )


def test_a_nan_in_the_tail_tau_table_is_refused_by_save(shm_name, tmp_path):
    with make_store(shm_name, "locked"):
        at = regions(shm_name)["cdf"][0] + 4  # the high word of entry 0
        outcomes = run_cases(shm_name, tmp_path / "c.fps", [(at, 2**31 - 1)])
    assert outcomes[(at, 2**31 - 1)] == (
        f"RuntimeError: store '{shm_name}' is damaged: TAIL-tau table entry 0 is nan, expected "
        "a value in [0, 1]"
    )


@pytest.mark.timeout(60)
def test_slots_no_process_writes_end_a_push_at_once(shm_name):
    """Every slot of shard 0 in a state nobody writes: the writer finds none free and says why
    instead of waiting forever."""
    with make_store(shm_name, "leashed") as store:
        begin, end = regions(shm_name)["slots"]
        for slot in range(begin, begin + (end - begin) // 3, SLOT_HEADER_BYTES):  # shard 0's
            poke(shm_name, slot, 0xFF)
        with store.learner() as h, pytest.raises(RuntimeError) as err:
            h.push(np.ones(1000, np.float32))
    assert str(err.value) == (
        f"store '{shm_name}' is damaged: shard 0's slot 0 has state word 0x1000000ff"
    )


@pytest.mark.timeout(60)
def test_a_lock_held_by_no_live_thread_ends_the_wait(shm_name):
    with make_store(shm_name, "locked") as store:
        poke(shm_name, regions(shm_name)["shards"][0] + SHARD_LOCK_WORD, 0x3FFFFFFE)
        with pytest.raises(RuntimeError) as err:
            store.read()
    assert str(err.value) == (
        f"store '{shm_name}' is damaged: shard 0's lock is held by thread 1073741822, which "
        "does not exist"
    )


@pytest.mark.timeout(60)
def test_a_step_size_hook_that_reads_its_locked_store_gets_an_error_not_a_deadlock():
    """push holds the shard lock while it asks the hook for eta; read() from the hook would
    wait for that lock forever."""
    box = {}

    def hook(tau, stats):
        box["store"].read()
        return 0.1

    with fastps.Store(1000, mode="locked", step_size=hook) as store:
        box["store"] = store
        with store.learner() as h, pytest.raises(RuntimeError) as err:
            h.push(np.ones(1000, np.float32))
    assert str(err.value) == (
        "store '': shard 0's lock is held by this thread (a step-size hook may not call into its "
        "own store), or the segment is damaged"
    )


@pytest.mark.timeout(60)
def test_entries_no_process_writes_are_recovered(shm_name):
    """Every reserved reader entry holding a state no process writes: read() would wait for one
    forever; recovery frees them like a dead process's."""
    with make_store(shm_name, "leashed") as store:
        begin, _ = regions(shm_name)["entries"]
        for e in range(2, 6):  # the 4 entries after max_learners=2 handles
            poke(shm_name, begin + e * ENTRY_BYTES + 4, 0x7FFFFFFF)  # state word, pid 0
        assert store.read()[999] == 999.0
        assert store.stats()["recovered"] == 4
