"""The server side of a RayStore: one ``ShardServer`` actor per range, owning a native
``fastps.Store`` for it, with the mode, step size and optimizer of the whole store.

Fault tolerance (docs/ray.md):

1. Servers are restartable actors. With ``checkpoint_dir`` each server saves its range there
   (``Store.save``: atomic, checksummed) every ``checkpoint_every_s`` seconds, while pushes wait
   for the few milliseconds a save takes, so a checkpoint is one instant of the server.
2. Every push carries the learner's id and sequence number; the checkpoint records, per learner,
   the last sequence number applied. A restarted server loads its latest checkpoint.
3. Learners retry a call whose server died (Ray resubmits it; the handle retries too, for
   ``retry_timeout_s``). A retried push already in the checkpoint is not applied twice.
4. Each call also carries how many pushes the server acknowledged to this learner. A restarted
   server that finds a learner's acknowledged count above its own record has lost those pushes:
   it adds the difference to ``stats()["lost_updates"]`` once. Lost updates are counted, not
   hidden or replayed.

Invariants: a learner's calls run one at a time on a server (a per-learner lock), so a
resubmitted call cannot pass the duplicate check twice; a checkpoint runs alone (a gate waits
for the pushes and pulls in flight and holds new ones back).
"""

from __future__ import annotations

import os
import threading
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import ray

from fastps.step_size import Hook, StepSize
from fastps.store import LearnerHandle, Store


def _reconstructed() -> bool:
    """Whether the calling actor is a restart (Ray's own check uses a deprecated accessor)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def _hook_fn(step_size: Any) -> Callable[..., float] | None:
    """The Python callable of a hook step size (Store.load wants it again), else None."""
    if isinstance(step_size, Hook):
        return step_size.fn
    if callable(step_size) and not isinstance(step_size, StepSize):
        return step_size  # type: ignore[no-any-return]
    return None


class ShardServer:
    """One Ray actor: a native Store for elements [begin, end) of the RayStore's vector.

    Calls from many learners run in parallel threads (the native store releases the GIL), so
    the store's consistency mode governs concurrent pushes exactly as on one host. A gate makes
    a checkpoint wait for the pushes in flight and holds new ones back while it saves.
    """

    def __init__(self, index: int, begin: int, end: int, init: list[Any],
                 store_kwargs: dict[str, Any], checkpoint_path: str | None,
                 checkpoint_every_s: float | None, load_path: str | None = None) -> None:  # fmt: skip
        self.index, self.begin, self.end = index, begin, end
        self.token = uuid.uuid4().hex[:12]  # this incarnation of the server
        self._kwargs = store_kwargs
        self._ckpt = checkpoint_path
        self._cv = threading.Condition()
        self._saving = False
        self._inflight = 0
        self._handles: dict[str, LearnerHandle] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._fresh: set[str] = set()  # learners whose read versions belong to this incarnation
        self._last: dict[str, int] = {}  # learner id -> last push sequence number applied
        self._lost = 0
        self._checkpoints = 0
        self._checkpoint_clock: int | None = None
        self.reconstructed = _reconstructed()
        self.restored_clock: int | None = None
        source = load_path
        if self.reconstructed and checkpoint_path and os.path.exists(checkpoint_path):
            source = checkpoint_path
        if source is not None:
            self._store = self._load(source)
            self.restored_clock = self._store.stats()["clock"]
        else:
            ref = init[0]  # [ObjectRef] or [None]
            self._store = Store(end - begin, init=None if ref is None else ray.get(ref),
                                **store_kwargs)  # fmt: skip
        self._applied = self._store.stats()["pushes"]
        if checkpoint_path and not self.reconstructed:
            self.checkpoint()  # replaces any older file: a restart never loads another run
        self._stop = threading.Event()
        if checkpoint_path and checkpoint_every_s:
            threading.Thread(target=self._every, args=(checkpoint_every_s,), daemon=True,
                             name=f"fastps-checkpoint-{index}").start()  # fmt: skip

    def _load(self, path: str) -> Store:
        store = Store.load(path, max_learners=self._kwargs.get("max_learners"),
                           step_size=_hook_fn(self._kwargs.get("step_size")))  # fmt: skip
        meta = store.metadata or {}
        if meta.get("range") != [self.begin, self.end]:
            store.close()
            raise ValueError(
                f"ShardServer: {path} holds range {meta.get('range')}, expected "
                f"{[self.begin, self.end]}"
            )
        self._last = {str(k): int(v) for k, v in meta.get("last", {}).items()}
        self._lost = int(meta.get("lost", 0))
        return store

    def _every(self, period: float) -> None:
        while not self._stop.wait(period):
            try:
                self.checkpoint()
            except Exception:  # noqa: BLE001 -- a failed save keeps the previous file; retry
                pass

    # -- the gate: pushes and pulls run together; a checkpoint runs alone ----------------------

    def _enter(self) -> None:
        with self._cv:
            while self._saving:
                self._cv.wait()
            self._inflight += 1

    def _leave(self) -> None:
        with self._cv:
            self._inflight -= 1
            if self._inflight == 0:
                self._cv.notify_all()

    def _account(self, lid: str, acked: int) -> None:
        """A learner acknowledged more pushes than this server has applied: they were lost
        with a previous incarnation (applied after its last checkpoint). Count them once."""
        last = self._last.get(lid, 0)
        if acked > last:
            self._lost += acked - last
            self._last[lid] = acked

    def _lock(self, lid: str) -> threading.Lock:
        """One learner's calls run one at a time here: a call resubmitted while the first is
        still running (Ray's retry and the handle's) must not pass the duplicate check twice."""
        with self._cv:
            lock = self._locks.get(lid)
            if lock is None:
                lock = self._locks[lid] = threading.Lock()
            return lock

    def _handle(self, lid: str) -> LearnerHandle:
        h = self._handles.get(lid)
        if h is None:
            h = self._handles[lid] = self._store.learner()
        return h

    # -- calls ------------------------------------------------------------------------------

    def ready(self) -> tuple[str, int]:
        """(incarnation token, process id): returns once the server is up."""
        return self.token, os.getpid()

    def join(self, lid: str) -> int:
        """The last push sequence number applied for learner ``lid`` (0 for a new one)."""
        return self._last.get(lid, 0)

    def pull(self, lid: str, acked: int) -> tuple[str, np.ndarray, list[int]]:
        """(token, this range's parameters, the version of each native shard read)."""
        with self._lock(lid):
            return self._pull(lid, acked)

    def _pull(self, lid: str, acked: int) -> tuple[str, np.ndarray, list[int]]:
        out = np.empty(self.end - self.begin, np.float32)
        self._enter()
        try:
            self._account(lid, acked)
            h = self._handle(lid)
            h.pull(out)
            self._fresh.add(lid)
            versions = [h.read_version(s) for s in range(self._store.shards)]
        finally:
            self._leave()
        return self.token, out, versions

    def push(self, lid: str, seq: int, read_token: str | None, grad: np.ndarray | None,
             dtype: str) -> tuple[str, int, int, list[int]]:  # fmt: skip
        """Apply push number ``seq`` of learner ``lid``; (token, shard updates not applied,
        this server's applied-push count, the versions it created per shard (0: none)).
        ``grad``: this range of the gradient, ``dtype`` its element type ("float32",
        "float16", or "bfloat16": raw 16-bit bits); None: a push the learner skipped (NaN)."""
        with self._lock(lid):
            return self._push(lid, seq, read_token, grad, dtype)

    def _push(self, lid: str, seq: int, read_token: str | None, grad: np.ndarray | None,
              dtype: str) -> tuple[str, int, int, list[int]]:  # fmt: skip
        self._enter()
        try:
            self._account(lid, seq - 1)
            if seq <= self._last.get(lid, 0):  # a retry of a push the checkpoint already holds
                return self.token, 0, self._applied, [0] * self._store.shards
            h = self._handle(lid)
            if read_token is not None and read_token != self.token and lid not in self._fresh:
                # The learner read from an incarnation that is gone: its versions mean nothing
                # here. Read this one's (the retried gradient counts staleness 0).
                h.pull(np.empty(self.end - self.begin, np.float32))
                self._fresh.add(lid)
            if grad is None:
                dropped = self._store.shards
            else:  # float32 or float16 as they are; bfloat16 arrives as its raw 16-bit bits
                dropped = h.push(grad, dtype="bfloat16" if dtype == "bfloat16" else None)
            self._last[lid] = seq
            self._applied += 1
            return self.token, dropped, self._applied, list(h.last_push_versions())
        finally:
            self._leave()

    def push_pull(self, lid: str, seq: int, read_token: str | None, grad: np.ndarray | None,
                  dtype: str) -> tuple[str, int, int, list[int], np.ndarray, list[int]]:  # fmt: skip
        """push, then pull, in one call: (token, not applied, applied count, versions created,
        params, versions read)."""
        with self._lock(lid):
            token, dropped, applied, pushed = self._push(lid, seq, read_token, grad, dtype)
            _, out, versions = self._pull(lid, seq)
        return token, dropped, applied, pushed, out, versions

    def close_learner(self, lid: str) -> None:
        with self._lock(lid):
            h = self._handles.pop(lid, None)
            self._fresh.discard(lid)
            if h is not None:
                h.close()

    def read(self) -> np.ndarray:
        return self._store.read()

    def checkpoint(self, path: str | None = None, metadata: Any = None) -> int:
        """Save this server's range to ``path`` (default: its checkpoint file) at one instant;
        returns the applied-push count saved."""
        path = path or self._ckpt
        if path is None:
            raise ValueError("checkpoint: this RayStore has no checkpoint_dir (pass a path)")
        with self._cv:
            while self._saving:
                self._cv.wait()
            self._saving = True
            while self._inflight:
                self._cv.wait()
        try:
            meta = {"range": [self.begin, self.end], "server": self.index,
                    "last": dict(self._last), "lost": self._lost, "user": metadata}  # fmt: skip
            self._store.save(path, metadata=meta)
            applied = self._applied
            if path == self._ckpt:
                self._checkpoints += 1
                self._checkpoint_clock = applied
        finally:
            with self._cv:
                self._saving = False
                self._cv.notify_all()
        return applied

    def stats(self) -> dict[str, Any]:
        s = self._store.stats()
        s.update(server=self.index, range=[self.begin, self.end], token=self.token,
                 pid=os.getpid(), applied=self._applied, lost_updates=self._lost,
                 reconstructed=self.reconstructed, restored_clock=self.restored_clock,
                 checkpoints=self._checkpoints, checkpoint_pushes=self._checkpoint_clock)  # fmt: skip
        return s

    def shutdown(self) -> None:
        self._stop.set()
        for h in self._handles.values():
            h.close()
        self._handles.clear()
        self._store.close()
