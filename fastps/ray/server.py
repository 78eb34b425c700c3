"""The server side of a RayStore: one ``ShardServer`` actor per range, owning a native
``fastps.Store`` for it, with the mode, step size and optimizer of the whole store.

Fault tolerance (docs/ray.md):

1. Servers are restartable actors, built from small arguments passed inline (Ray keeps them
   with the actor, so no restart can lose them); the initial values come afterwards through
   ``start(init)``. With ``checkpoint_dir`` each server saves its range there at once and
   every ``checkpoint_every_s`` seconds (``Store.save``: atomic, checksummed), while pushes wait
   for the few milliseconds a save takes, so a checkpoint is one instant of the server. Without
   it, a server given initial values saves them once to a file on its node (``init_path``).
2. Every push carries the learner's id, its sequence number and the id of the handle's copy;
   the checkpoint records, per learner, the last sequence number applied and the copy that
   sent it. A restarted server loads its latest checkpoint, else its initial values.
3. Learners retry a call whose server died (Ray resubmits it; the handle retries too, for
   ``retry_timeout_s``). A retried push already in the checkpoint is not applied twice. A push
   whose number was already applied from another copy of the handle is no retry: it raises
   (two copies in use at once), so a push is applied once or refused, never dropped silently.
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
import tempfile
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

    def __init__(self, index: int, begin: int, end: int, store_kwargs: dict[str, Any],
                 checkpoint_path: str | None, checkpoint_every_s: float | None,
                 load_path: str | None = None, keep_init: str | None = None) -> None:  # fmt: skip
        """``keep_init``: the store's name when this server keeps its initial values in a file
        on its node (``init_path``: no ``checkpoint_path``, and values that are not zeros or
        ``load_path``'s). Every argument is small and passed inline; the values come with
        ``start(init)``."""
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
        self._sender: dict[str, str] = {}  # learner id -> the handle copy that sent that push
        self._lost = 0
        self._checkpoints = 0
        self._checkpoint_clock: int | None = None
        self._init_path = None if keep_init is None else init_path(keep_init, index)
        self._every_s = checkpoint_every_s
        self._store: Store  # set by _started: here from a checkpoint, else by start(init)
        self._has_store = False
        self._provisional = False  # a restart's zeros, which a resubmitted start() replaces
        self._stop = threading.Event()
        self.reconstructed = _reconstructed()
        self.restored_clock: int | None = None
        if self.reconstructed:
            for source in (checkpoint_path, self._init_path, load_path):
                if source is not None and os.path.exists(source):
                    self._started(self._load(source))
                    self.restored_clock = self._applied
                    return
            if self._init_path is not None:  # a restart on another node: the values are not here
                raise RuntimeError(
                    f"ShardServer {index}: restarted without its initial values "
                    f"({self._init_path} "
                    "is not on this node; give RayStore a checkpoint_dir on shared storage)"
                )
            # Zeros, or a restart before start() finished (Ray resubmits it: it replaces these).
            self._started(Store(end - begin, **store_kwargs))
            self._provisional = True
        elif load_path is not None:
            self._started(self._load(load_path))

    def start(self, init: np.ndarray | None) -> None:
        """Build the range's Store from its initial values (None: zeros), once; a server made
        from a checkpoint (load, restart) has one already."""
        if self._has_store and not self._provisional:
            return
        replacing = self._provisional
        if replacing:
            self._provisional = False
            self._store.close()
        store = Store(self.end - self.begin, init=init, **self._kwargs)
        if init is not None and self._init_path is not None:
            os.makedirs(os.path.dirname(self._init_path), exist_ok=True)
            store.save(self._init_path, metadata={"range": [self.begin, self.end],
                                                  "server": self.index})  # fmt: skip
        self._started(store, fresh=True, thread=not replacing)

    def _started(self, store: Store, *, fresh: bool = False, thread: bool = True) -> None:
        """Serve ``store``; ``fresh``: new values (not a checkpoint's), saved at once."""
        self._store = store
        self._has_store = True
        self._applied = store.stats()["pushes"]
        if self._ckpt and (fresh or not self.reconstructed):
            self.checkpoint()  # replaces any older file: a restart never loads another run
        if thread and self._ckpt and self._every_s:
            threading.Thread(target=self._every, args=(self._every_s,), daemon=True,
                             name=f"fastps-checkpoint-{self.index}").start()  # fmt: skip

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
        self._sender = {str(k): str(v) for k, v in meta.get("sender", {}).items()}
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
        if not self._has_store:
            raise RuntimeError(f"ShardServer {self.index}: ready before start")
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

    def push(self, lid: str, seq: int, copy: str, read_token: str | None,
             grad: np.ndarray | None, dtype: str,
             backdate: int = 0) -> tuple[str, int, int, list[int]]:  # fmt: skip
        """Apply push number ``seq`` of learner ``lid``, sent by the handle copy ``copy``;
        (token, shard updates not applied, this server's applied-push count, the versions it
        created per shard (0: none)). ``grad``: this range of the gradient, ``dtype`` its
        element type ("float32", "float16", or "bfloat16": raw 16-bit bits); None: a push the
        learner skipped (NaN). ``backdate``: LearnerHandle.backdate before the push. RuntimeError
        when another copy already sent number ``seq``."""
        with self._lock(lid):
            return self._push(lid, seq, copy, read_token, grad, dtype, backdate)

    def _push(self, lid: str, seq: int, copy: str, read_token: str | None,
              grad: np.ndarray | None, dtype: str,
              backdate: int = 0) -> tuple[str, int, int, list[int]]:  # fmt: skip
        self._enter()
        try:
            self._account(lid, seq - 1)
            last = self._last.get(lid, 0)
            if seq <= last:
                if self._sender.get(lid, copy) != copy:  # not a retry: two copies at once
                    raise RuntimeError(
                        f"push: learner {lid} pushed number {seq} from two copies of its handle "
                        f"(this server applied up to {last} from another): use one handle per "
                        "place, store.learner() for each; nothing applied"
                    )
                return self.token, 0, self._applied, [0] * self._store.shards  # a retry
            h = self._handle(lid)
            if read_token is not None and read_token != self.token and lid not in self._fresh:
                # The learner read from an incarnation that is gone: its versions mean nothing
                # here. Read this one's (the retried gradient counts staleness 0).
                h.pull(np.empty(self.end - self.begin, np.float32))
                self._fresh.add(lid)
            elif backdate:
                h.backdate(backdate)
            if grad is None:
                dropped = self._store.shards
            else:  # float32 or float16 as they are; bfloat16 arrives as its raw 16-bit bits
                dropped = h.push(grad, dtype="bfloat16" if dtype == "bfloat16" else None)
            self._last[lid] = seq
            self._sender[lid] = copy
            self._applied += 1
            return self.token, dropped, self._applied, list(h.last_push_versions())
        finally:
            self._leave()

    def push_pull(self, lid: str, seq: int, copy: str, read_token: str | None,
                  grad: np.ndarray | None, dtype: str,
                  backdate: int = 0) -> tuple[str, int, int, list[int], np.ndarray, list[int]]:  # fmt: skip
        """push, then pull, in one call: (token, not applied, applied count, versions created,
        params, versions read)."""
        with self._lock(lid):
            token, dropped, applied, pushed = self._push(lid, seq, copy, read_token, grad, dtype,
                                                         backdate)  # fmt: skip
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
                    "last": dict(self._last), "sender": dict(self._sender), "lost": self._lost,
                    "user": metadata}  # fmt: skip
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
        """Stop checkpointing, close the Store and remove the node-local initial values."""
        self._stop.set()
        for h in self._handles.values():
            h.close()
        self._handles.clear()
        if self._has_store:
            self._store.close()
        if self._init_path is not None:
            try:
                os.unlink(self._init_path)
            except FileNotFoundError:
                pass


def init_path(store: str, index: int) -> str:
    """Where server ``index`` of the RayStore named ``store`` keeps its initial values on its
    node when the store has no checkpoint_dir (a restart in place reloads them)."""
    return os.path.join(tempfile.gettempdir(), "fastps-ray", f"{store}-server{index}.fpsck")
