"""Learners on this machine: threads of this process, or processes sharing the store.

ThreadBackend: learner threads, queue.Queue channels, numpy gradient slots. ProcessBackend:
learner processes from a fork server, the store and the gradient slots in shared memory,
multiprocessing queues, events and a shared value; a learner process that dies is noticed,
and every learner process is killed at the end.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import threading
import types
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from fastps.layout import ParamLayout
from fastps.step_size import StepSize
from fastps.store import Store
from fastps.train.backends.base import Backend, Channels
from fastps.train.learner import LearnerConfig, Link, run_learner
from fastps.train.options import Options, learner_threads


def process_context() -> Any:
    """Where learner processes come from: a fork server that has imported torch and fastps
    once, so a learner does not import them again (4 MLP learners on Fashion-MNIST began
    training 0.6-0.9 s after fit() was called, against 3.0-3.3 s spawned; the first run also
    starts the server, 2.1 s; it outlives a run and serves the next), or spawn where the
    platform has no fork server. Like spawn, it forks no thread of this process: the server
    is a fresh interpreter."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "fastps.train.learner", "fastps.train.data"])
    return ctx


class ThreadBackend(Backend):
    """Learner threads of this process."""

    name = "thread"

    def __init__(self, opts: Options) -> None:
        super().__init__(opts)
        self.workers: list[Any] = []
        self.shared: list[Any] = []  # SharedMemory blocks this run created (processes)

    # -- what threads and processes differ in ---------------------------------------------

    def store_name(self) -> str | None:
        return None

    def queue(self) -> Any:
        return queue_mod.Queue()

    def event(self) -> Any:
        return threading.Event()

    def counter(self) -> Any:
        return types.SimpleNamespace(value=0)

    def array(self, shape: tuple[int, ...]) -> tuple[np.ndarray, Any]:
        """(a zeroed float32 array, the learners' spec of it)."""
        a = np.zeros(shape, np.float32)
        return a, a

    def worker(self, rank: int, args: tuple[Any, ...]) -> Any:
        return threading.Thread(target=run_learner, daemon=True, name=f"fastps-learner-{rank}",
                                args=args)  # fmt: skip

    # -- the hooks --------------------------------------------------------------------------

    def create_store(self, layout: ParamLayout, init: np.ndarray) -> Any:
        o = self.opts
        name = self.store_name()
        if o.resume_from is not None:
            hook = (o.step_size if o.step_size is not None
                    and not isinstance(o.step_size, StepSize) else None)  # fmt: skip
            store = Store.load(o.resume_from, shared=name, step_size=hook)
            if store.size != layout.size:
                store.close()
                raise ValueError(
                    f"fit: {o.resume_from} holds {store.size} elements, the model {layout.size}"
                )
            return store
        return Store(init=init, mode=o.mode, lr=o.lr, momentum=o.momentum,
                     step_size=o.step_size, shared=name, max_learners=o.learners + 1,
                     **o.store)  # fmt: skip

    def adjust(self, config: LearnerConfig) -> None:
        o = self.opts
        config.threads = o.threads if o.threads is not None else learner_threads(o.learners)

    def config(self, store: Any, config: LearnerConfig) -> dict[str, Any]:
        o = self.opts
        return {"devices": o.devices, "comm_delay": o.comm_delay, "eval_train": o.eval_train,
                "threads": config.threads}  # fmt: skip

    def share_buffers(self, flat: np.ndarray) -> tuple[np.ndarray | None, Any]:
        shared, spec = self.array(flat.shape)
        shared[:] = flat
        return shared, spec

    def payload(self, data: Any, ds: Any) -> Any:
        return ds

    def channels(self, store: Any, config: LearnerConfig) -> Channels:
        p = self.opts.learners
        ch = Channels(self.queue(), self.event(), self.event(), [None] * p)
        if self.opts.variant.coordinated:
            ch.slots, spec = self.array((p, store.size))
            ch.inbox, ch.replies = self.queue(), [self.queue() for _ in range(p)]
            ch.version = self.counter()
            cancels = self.opts.variant.cancelling
            ch.links = [Link(spec, ch.inbox, ch.replies[r], ch.version, cancels)
                        for r in range(p)]  # fmt: skip
        return ch

    def create_learners(self, store: Any, model_fn: Callable[[], Any], payload: Any,
                        config: LearnerConfig, channels: Channels) -> None:  # fmt: skip
        ch = channels
        self.workers = [
            self.worker(r, (r, store, model_fn, payload, config, ch.out, ch.start, ch.stop,
                            ch.links[r]))
            for r in range(self.opts.learners)
        ]  # fmt: skip

    def start_learners(self) -> None:
        for w in self.workers:
            w.start()

    def check_alive(self, finished: dict[int, Any]) -> None:
        """Threads cannot die unnoticed: one that raises reports its error."""

    def on_error(self, channels: Channels | None) -> None:
        # Learner threads cannot be killed: release the ones waiting to start or for the
        # coordinator, and stop the others after their step, so the joins are short.
        if channels is None:
            return
        channels.stop.set()
        channels.start.set()
        for q in channels.replies:
            q.put("stop")

    def stop_learners(self) -> None:
        for w in self.workers:
            if w.ident is not None:
                w.join(timeout=10)

    def on_shutdown(self) -> None:
        for s in self.shared:
            s.close()
            s.unlink()
        self.shared = []


class ProcessBackend(ThreadBackend):
    """Learner processes; the store, the gradient slots and the buffers in shared memory."""

    name = "process"

    def __init__(self, opts: Options) -> None:
        super().__init__(opts)
        self.ctx: Any = None

    def on_start(self) -> None:
        self.ctx = process_context()

    def store_name(self) -> str | None:
        return f"fit-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def queue(self) -> Any:
        return self.ctx.Queue()

    def event(self) -> Any:
        return self.ctx.Event()

    def counter(self) -> Any:
        return self.ctx.Value("q", 0, lock=False)

    def array(self, shape: tuple[int, ...]) -> tuple[np.ndarray, Any]:
        from multiprocessing import shared_memory

        shm = shared_memory.SharedMemory(create=True, size=4 * int(np.prod(shape)))
        self.shared.append(shm)
        a = np.ndarray(shape, np.float32, buffer=shm.buf)
        a.fill(0.0)
        return a, (shm.name, shape)

    def worker(self, rank: int, args: tuple[Any, ...]) -> Any:
        return self.ctx.Process(target=run_learner, daemon=True, args=args)

    def adjust(self, config: LearnerConfig) -> None:
        super().adjust(config)
        config.watch_parent = True

    def payload(self, data: Any, ds: Any) -> Any:
        # Processes load a named or callable data set themselves instead of unpickling a copy.
        return data if isinstance(data, str) or callable(data) else ds

    def check_alive(self, finished: dict[int, Any]) -> None:
        for r, w in enumerate(self.workers):
            if r not in finished and not w.is_alive() and w.exitcode not in (0, None):
                raise RuntimeError(f"fit: learner {r} died with exit code {w.exitcode}")

    def on_error(self, channels: Channels | None) -> None:
        if channels is not None:  # processes are killed by stop_learners
            channels.stop.set()
            channels.start.set()

    def stop_learners(self) -> None:
        for w in self.workers:
            if w.is_alive():
                w.kill()
            if w.ident is not None:
                w.join(timeout=10)


__all__ = ["ProcessBackend", "ThreadBackend", "process_context"]
