"""The client side of a RayStore: a learner's handle, ``pull(out)`` and ``push(grad)`` like
``fastps.LearnerHandle``, each call split into one call per server, sent in parallel.

A pull fetches every range into ``out``; a push is checked whole (length, dtype, NaN) before
anything is sent, then each range travels as a zero-copy slice to its server. Every push carries
this learner's id, its sequence number and the id of this copy of the handle, and every call the
pushes each server acknowledged: a restarted server skips a retried push and counts the pushes
it lost (server.py). A handle restored from a pickle (in a task, or in an actor's constructor,
which Ray runs again on a restart) first asks the servers where the learner's sequence stands,
so its pushes continue it instead of repeating numbers the servers took for retries.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastps import config
from fastps.buffers import flat_grad, flat_out
from fastps.ray import session


class RayLearnerHandle:
    """One learner's connection to a RayStore: ``pull(out)``, ``push(grad)``, like
    ``fastps.LearnerHandle``. Passed to a Ray task or actor it pickles by name (the store's
    name, this learner's id and its sequence numbers), never by value. An unpickled copy
    continues the learner's push sequence where the servers have it. Use each handle in one
    place at a time: a push that another copy already sent under the same number raises
    RuntimeError (one handle per learner: ``store.learner()`` for each).
    """

    def __init__(self, meta: dict[str, Any], lid: str, acked: Sequence[int] | None = None,
                 tokens: Sequence[str | None] | None = None, rejoin: bool = False) -> None:  # fmt: skip
        self._meta = meta
        self._lid = lid
        n = len(meta["ranges"])
        self._acked = list(acked) if acked is not None else [0] * n  # pushes acked per server
        self._tokens: list[str | None] = list(tokens) if tokens is not None else [None] * n
        self._copy = uuid.uuid4().hex[:12]  # this copy of the handle: a retry comes from it
        self._rejoin = rejoin  # restored from a pickle: ask the servers before the first call
        self._last_acks: list[tuple[str, int]] = []
        self._versions: list[int] = []
        self._pushed: list[int] = []  # versions the last push created, per native shard
        self._backdate = 0  # sent with the next push (LearnerHandle.backdate's rule)
        self._closed = False

    @property
    def id(self) -> str:
        """This learner's id on every server (``store.learner(name=...)`` fixes it)."""
        return self._lid

    @property
    def size(self) -> int:
        """The store's number of parameters (``grad`` and ``out`` have this many elements)."""
        return int(self._meta["size"])

    @property
    def pushes(self) -> int:
        """Pushes acknowledged by every server (retried ones counted once)."""
        return min(self._acked)

    def _servers(self, api: str) -> list[Any]:
        if self._closed:
            raise RuntimeError(f"{api}: this learner handle is closed")
        servers = session.actors(self._meta["name"], len(self._meta["ranges"]), api)
        if self._rejoin:
            # A copy restored from a pickle carries the sequence of the moment it was pickled;
            # the servers know how far this learner got since (an actor's earlier incarnation,
            # an earlier task). Continue from there (the larger count: a server that lost
            # pushes to a restart then counts them as lost).
            last = self._gather(lambda j: servers[j].join.remote(self._lid), api)
            self._acked = [max(a, int(b)) for a, b in zip(self._acked, last)]
            self._rejoin = False
        return servers

    def _gather(self, submit: Callable[[int], Any], api: str) -> list[Any]:
        n = len(self._meta["ranges"])
        return session.gather(submit, n, self._meta["retry_timeout_s"], self._meta["name"], api)

    def pull(self, out: Any) -> Any:
        """Fetch every range in parallel into ``out`` (float32, ``store.size`` elements: numpy,
        or torch on the CPU or a GPU); returns ``out``. Records each range's versions."""
        target = flat_out("pull", out, self._meta["size"])
        servers = self._servers("pull")
        replies = self._gather(lambda j: servers[j].pull.remote(self._lid, self._acked[j]), "pull")
        self._took(target, replies)
        return out

    def _took(self, target: tuple[np.ndarray | None, Any], replies: list[Any]) -> None:
        """Write pulled ranges (the last three fields of each reply) and note what was read."""
        self._versions = [v for r in replies for v in r[-1]]
        self._tokens = [r[0] for r in replies]
        write_ranges(target, self._meta["ranges"], [r[-2] for r in replies])

    def push(self, grad: Any) -> int:
        """Send each range of ``grad`` to its server in parallel; every server applies
        ``w -= eta(tau) * (g + weight_decay * w)`` to its range as a local store would.

        ``grad``: ``store.size`` contiguous elements, float32, float16 or bfloat16 (numpy, or
        torch on the CPU or a GPU). It is checked whole before anything is sent, so a refused
        gradient changes no server. Returns the shard updates not applied (see
        ``LearnerHandle.push``).
        """
        return self._send("push", grad, None)

    def push_pull(self, grad: Any, out: Any) -> int:
        """``push(grad)`` then ``pull(out)`` in one call to each server instead of two (the
        pull sees this push applied). Returns the shard updates not applied."""
        return self._send("push_pull", grad, flat_out("pull", out, self._meta["size"]))

    def _send(self, method: str, grad: Any, target: tuple[np.ndarray | None, Any] | None) -> int:
        arr, dtype, finite = flat_grad(method, grad, self._meta["size"], self._meta["nan_guard"])
        payload: np.ndarray | None = arr
        if not finite:
            if self._meta["nan_guard"] == "raise":
                raise ValueError(
                    f"{method}: grad holds NaN or Inf (nan_guard='raise'); nothing applied"
                )
            payload = None  # "skip": every server counts the push, none applies it
        servers = self._servers(method)
        ranges = self._meta["ranges"]
        seqs = [a + 1 for a in self._acked]
        replies = self._gather(
            lambda j: getattr(servers[j], method).remote(
                self._lid, seqs[j], self._copy, self._tokens[j],
                None if payload is None else payload[ranges[j][0] : ranges[j][1]], dtype,
                self._backdate,
            ), method,
        )  # fmt: skip
        self._backdate = 0  # applied by every server (a retried push was applied before)
        self._acked = seqs
        self._last_acks = [(r[0], r[2]) for r in replies]
        self._pushed = [v for r in replies for v in r[3]]
        if target is not None:
            self._took(target, replies)
        return sum(r[1] for r in replies)

    def backdate(self, updates: int) -> None:
        """``LearnerHandle.backdate`` across servers: the next push counts its staleness from
        ``updates`` versions before the last pull, on every server (each applies it to its
        handle for this learner, where it holds until the next pull, as locally). Needs a pull
        first; ValueError, nothing changed, beyond a shard's version 0. StalenessDistance is
        refused by the servers (they no longer have the older model)."""
        n = config.check_int("backdate", "updates", updates)
        if not self._versions:
            raise ValueError("backdate: needs a pull first (it moves the last pull's versions)")
        for s, v in enumerate(self._versions):
            if v < n:
                raise ValueError(
                    f"backdate: shard {s} was read at version {v}, fewer than {n} updates ago"
                )
        self._backdate = n

    def read_version(self, shard: int) -> int:
        """Version of native shard ``shard`` (numbered across servers, in order) read by the
        last pull (0 before the first pull)."""
        if not self._versions:
            return 0
        if not 0 <= shard < len(self._versions):
            raise ValueError(f"read_version: shard {shard} out of range [0, {len(self._versions)})")
        return self._versions[shard]

    def last_push_versions(self) -> list[int]:
        """Per native shard (numbered across servers), the version the last push created (0
        where it was dropped or skipped), as ``LearnerHandle.last_push_versions``."""
        return list(self._pushed)

    def last_acks(self) -> list[tuple[str, int]]:
        """Per server, (incarnation token, that server's applied-push count) of the reply to
        the last push: which incarnation of each server acknowledged it, for audits."""
        return list(self._last_acks)

    def close(self) -> None:
        """Give back this learner's place on every server. Later calls raise RuntimeError.
        Idempotent; a handle of a closed store has no place left to give back."""
        if self._closed:
            return
        try:
            servers = self._servers("close")
            self._gather(lambda j: servers[j].close_learner.remote(self._lid), "close")
        except session.StoreClosed:
            pass
        self._closed = True

    def __enter__(self) -> RayLearnerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (RayLearnerHandle, (self._meta, self._lid, self._acked, self._tokens, True))

    def __repr__(self) -> str:
        return f"fastps.ray.RayLearnerHandle(store={self._meta['name']!r}, id={self._lid!r})"


def write_ranges(target: tuple[np.ndarray | None, Any], ranges: Sequence[tuple[int, int]],
                 parts: Sequence[np.ndarray]) -> None:  # fmt: skip
    """Write each server's ``parts[j]`` to elements ``ranges[j]`` of ``target``, a
    ``fastps.buffers.flat_out`` pair: (host view, None) or (None, CUDA tensor)."""
    dest, tensor = target
    for (b, e), arr in zip(ranges, parts):
        if dest is not None:
            dest[b:e] = arr
        else:
            import torch

            # Replies from the object store are read-only; torch wants a writeable array.
            tensor[b:e].copy_(torch.from_numpy(arr if arr.flags.writeable else arr.copy()))
