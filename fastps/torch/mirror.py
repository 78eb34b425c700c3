"""What a learner's optimizer leaves behind, and when it must stop.

Why a mirror. PyTorch's Hogwild example shares the model's tensors between processes
(``model.share_memory()``) and evaluates the parent's model after ``join``. With fastps the
trained parameters live in the store, and each learner trains a flat copy of them. Views of
the store's memory cannot replace the shared tensors: locked and leashed modes do not keep one
place per parameter (leashed publishes new versions), the store does not hand out its memory,
and torch re-homes any storage it pickles into its own shared memory. So each learner keeps the
module's original (shared) tensors and, when it closes, exits or is collected, writes the
store's parameters into them. Closes are serialised by an exclusive ``flock`` on the store's
segment (a thread lock for a store with no segment): each one reads the store inside the lock,
so the last learner to close, after every learner's last push, writes the final parameters.

The creator's liveness: a learner whose store's creator died (SIGKILL) would train forever;
``Liveness.check`` asks the store at most every 0.25 s and raises.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing.util
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from fastps.segments import SHM_DIR
from fastps.store import Store

CHECK_EVERY_S = 0.25  # at most one liveness check per learner in this period
_local_lock = threading.Lock()  # stores without a segment: their learners share this process


@contextlib.contextmanager
def write_lock(store: Any) -> Iterator[None]:
    """Exclusive among the store's learners (processes and threads) while the body runs."""
    name = store.name if isinstance(store, Store) else None
    fd = -1
    if name is not None:
        try:  # flock: per open file, released when the holder exits, however it exits
            fd = os.open(os.path.join(SHM_DIR, "fastps." + name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # the name is gone (creator closed, cleanup): nobody left to mirror to
            fd = -1
    with _local_lock:
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fd >= 0:
                os.close(fd)  # releases the flock


def shared_originals(params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """The tensors other processes can see (shared CPU memory or CUDA), else None."""
    return [p.data if p.data.is_cuda or p.data.is_shared() else None for p in params]


class Finisher:
    """Closes a learner once: writes the store back into the shared originals, then closes the
    handle. Holds no reference to the optimizer, so collecting it runs ``finish``."""

    def __init__(self, store: Any, handle: Any, flat: torch.Tensor,
                 pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:  # fmt: skip
        self.store, self.handle, self.flat, self.pairs = store, handle, flat, pairs
        self.done = False

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            if self.pairs:
                with write_lock(self.store):
                    self.handle.pull(self.flat)
                    with torch.no_grad():
                        for orig, view in self.pairs:
                            orig.copy_(view)
        finally:
            self.handle.close()


def register(owner: object, finisher: Finisher) -> Any:
    """Run ``finisher.finish`` when ``owner`` is collected or the process exits: at the
    interpreter's exit, and in multiprocessing children (whose fork start exits with
    os._exit, past atexit) when the child's bootstrap finishes."""
    return multiprocessing.util.Finalize(owner, finisher.finish, exitpriority=100)


class Liveness:
    """Raises once the store's creator process has exited (checked at most every 0.25 s)."""

    def __init__(self, store: Any, pid: int | None) -> None:
        self.alive = getattr(store, "creator_alive", None)  # a local store's; None elsewhere
        self.pid = pid
        self.next_check = time.monotonic() + CHECK_EVERY_S

    def check(self) -> None:
        if self.alive is None:
            return
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + CHECK_EVERY_S
        if not self.alive():
            who = f" (pid {self.pid})" if self.pid is not None else ""
            raise RuntimeError(
                f"AsyncOptimizer: the store's creator process{who} has exited; stopping"
            )
