"""fit(..., backend="ray"): the learners are Ray actors, the store a fastps.ray.RayStore.

The learner loop and the coordinator are the run's own (fastps.train.learner.run_learner,
fastps.train.coordinator.Coordinator); only their channels change. Where the process backend
uses multiprocessing queues, events, a shared value and a shared-memory gradient slot per
learner, here one small asynchronous actor (``_Hub``) holds named queues, flags and values, and
a coordinated learner sends its gradient with its message to the coordinator (a thread of the
driver, as in the other backends).

A learner actor that dies is restarted by Ray (``learner_restarts`` times) and its ``run`` is
submitted again; its store handle is named after its rank, so the restarted learner continues
the push sequence of the one that died and makes only the rest of its quota (async, EASGD,
Downpour). A coordinated learner simply rejoins the next round.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import queue as queue_mod
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from fastps.layout import ParamLayout
from fastps.train.backends.base import Backend, Channels
from fastps.train.learner import LearnerConfig, Link, run_learner
from fastps.train.options import Options


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(
            "fit(backend='ray') needs Ray, an optional dependency: pip install 'fastps[ray]'"
        ) from None
    return ray


class _Hub:
    """Named FIFO queues, flags and values for one fit() run (an asyncio Ray actor)."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[Any]] = {}
        self._flags: set[str] = set()
        self._values: dict[str, int] = {}

    def _q(self, name: str) -> asyncio.Queue[Any]:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = asyncio.Queue()
        return q

    async def put(self, name: str, item: Any) -> None:
        self._q(name).put_nowait(item)

    async def get(self, name: str, timeout: float) -> tuple[bool, Any]:
        try:
            return True, await asyncio.wait_for(self._q(name).get(), timeout)
        except asyncio.TimeoutError:
            return False, None

    async def set(self, flag: str) -> None:
        self._flags.add(flag)

    async def is_set(self, flag: str) -> bool:
        return flag in self._flags

    async def set_value(self, name: str, value: int) -> None:
        self._values[name] = value

    async def value(self, name: str) -> int:
        return self._values.get(name, 0)


class _Queue:
    """queue.Queue's put/get over a hub queue (put does not wait for the hub)."""

    def __init__(self, hub: Any, name: str) -> None:
        self.hub, self.name = hub, name

    def put(self, item: Any) -> None:
        self.hub.put.remote(self.name, item)  # one caller's calls run in submission order

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        ok, item = _ray().get(self.hub.get.remote(self.name, 1e9 if timeout is None else timeout))
        if not ok:
            raise queue_mod.Empty
        return item


class _Inbox(_Queue):
    """A learner's side of the coordinator's inbox: each message carries the learner's slot."""

    def __init__(self, hub: Any, row: np.ndarray) -> None:
        super().__init__(hub, "inbox")
        self.row = row

    def put(self, item: Any) -> None:
        self.hub.put.remote(self.name, (*item, self.row))  # serialised now, before any reply


class _CoordinatorInbox(_Queue):
    """The coordinator's side: writes each message's gradient into the learner's slot."""

    def __init__(self, hub: Any, slots: np.ndarray) -> None:
        super().__init__(hub, "inbox")
        self.slots = slots

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        rank, version, loss, grad = super().get(block, timeout)
        self.slots[rank] = grad
        return rank, version, loss


class _Event:
    """threading.Event's set/is_set/wait over a hub flag; is_set asks the hub at most every
    ``poll_s`` (learners test the time-budget flag once a step)."""

    def __init__(self, hub: Any, name: str, poll_s: float = 0.02) -> None:
        self.hub, self.name, self.poll_s = hub, name, poll_s
        self._set = False
        self._asked = -math.inf

    def set(self) -> None:
        _ray().get(self.hub.set.remote(self.name))
        self._set = True

    def is_set(self) -> bool:
        if not self._set and time.monotonic() - self._asked >= self.poll_s:
            self._asked = time.monotonic()
            self._set = bool(_ray().get(self.hub.is_set.remote(self.name)))
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        end = math.inf if timeout is None else time.monotonic() + timeout
        while not self.is_set() and time.monotonic() < end:
            time.sleep(self.poll_s)
        return self._set


class _Value:
    """multiprocessing.Value's ``.value`` over a hub value (the coordinator's update count)."""

    def __init__(self, hub: Any, name: str) -> None:
        self.hub, self.name = hub, name

    @property
    def value(self) -> int:
        return int(_ray().get(self.hub.value.remote(self.name)))

    @value.setter
    def value(self, v: int) -> None:
        self.hub.set_value.remote(self.name, int(v))


class _RankStore:
    """What AsyncOptimizer needs of a store, handing out this rank's named handle."""

    def __init__(self, store: Any, handle: Any) -> None:
        self.size, self._handle = store.size, handle

    def learner(self) -> Any:
        return self._handle


class _Learner:
    """One learner actor: fit's learner loop with hub channels and a named store handle."""

    def __init__(self, rank: int, store: Any, model_fn: Callable[[], Any], data: Any,
                 config: LearnerConfig, hub: Any, learners: int, coordinated: bool,
                 cancels: bool) -> None:  # fmt: skip
        self.args = (rank, store, model_fn, data, config, hub, learners, coordinated, cancels)

    def run(self) -> None:
        rank, store, model_fn, data, config, hub, learners, coordinated, cancels = self.args
        data = _ray().get(data[0])
        # Named per run (the store's name is new for every fit call, resumed or not), so only a
        # restart of this very learner finds pushes already made under the name.
        handle = store.learner(name=f"{store.name}/rank{rank}")
        if handle.pushes:  # a restart: the rest of the quota of the learner that died
            quota = list(config.quota)
            quota[rank] = max(0, quota[rank] - handle.pushes)
            config = dataclasses.replace(config, quota=quota)
        link = None
        if coordinated:
            row = np.zeros(store.size, np.float32)
            # Every row of this (P, size) view is `row`: run_learner writes slots[rank] and the
            # inbox sends it, so a learner holds one gradient slot, not P.
            slots = np.lib.stride_tricks.as_strided(row, (learners, store.size), (0, 4),
                                                    writeable=True)  # fmt: skip
            link = Link(slots, _Inbox(hub, row), _Queue(hub, f"reply{rank}"),
                         _Value(hub, "version"), cancels)  # fmt: skip
        rank_store: Any = _RankStore(store, handle)  # duck-types the Store run_learner uses
        run_learner(rank, rank_store, model_fn, data, config, _Queue(hub, "out"),
                 _Event(hub, "start"), _Event(hub, "stop"), link)  # fmt: skip


class RayBackend(Backend):
    """Learner actors (one CPU each, a GPU each where the cluster has one per learner) and a
    RayStore. ``checkpoint`` and ``resume_from`` are folders (``RayStore.save`` /
    ``RayStore.load``). Store arguments pass to RayStore (``servers``, ``shards_per_server``,
    ``checkpoint_dir``, ``checkpoint_every_s``, ``server_cpus``, ...). Without Ray
    initialised, a local instance on 127.0.0.1 is started with a CPU per learner (at least the
    machine's cores) and shut down at the end; ``address`` joins a cluster instead."""

    name = "ray"

    def __init__(self, opts: Options) -> None:
        super().__init__(opts)
        kwargs = dict(opts.store)
        # Times Ray restarts a learner actor that died; the other store arguments go to RayStore.
        self.learner_restarts = kwargs.pop("learner_restarts", 3)
        self.store_kwargs = kwargs
        self.started = False
        self.have: dict[str, float] = {}
        self.hub: Any = None
        self.actors: list[Any] = []
        self.runs: dict[int, Any] = {}
        self.args: list[Any] = []

    @classmethod
    def check(cls, opts: Options) -> None:
        if opts.threads is not None:
            raise ValueError(
                "fit: threads is for the process and thread backends; with "
                "backend='ray' each learner actor has one CPU and one thread"
            )
        if opts.devices is not None:
            raise ValueError("fit: devices is for the process and thread backends; with "
                             "backend='ray' each learner actor gets a GPU when the cluster has "
                             "one per learner")  # fmt: skip

    def on_start(self) -> None:
        ray = _ray()
        import fastps.ray as fray

        o = self.opts
        if not ray.is_initialized():
            cpus = None
            if o.address is None:
                servers = self.store_kwargs.get("servers", 2)
                cpus = max(os.cpu_count() or 1,
                           math.ceil(o.learners + servers * self.store_kwargs.get("server_cpus", 0.0)))  # fmt: skip
            self.started = fray.init(o.address, num_cpus=cpus)

    def create_store(self, layout: ParamLayout, init: np.ndarray) -> Any:
        import fastps.ray as fray

        o = self.opts
        self.have = _ray().cluster_resources()
        server_cpus = self.store_kwargs.get("server_cpus", 0.0)
        need = o.learners + self.store_kwargs.get("servers", 2) * server_cpus
        if self.have.get("CPU", 0) < need:
            raise ValueError(
                f"fit: {o.learners} learner actors (1 CPU each) and the servers "
                f"(server_cpus={server_cpus:g} each) need {need:g} CPUs; the Ray cluster has "
                f"{self.have.get('CPU', 0):g} (pass server_cpus=0, or fewer learners)"
            )
        if o.resume_from is not None:
            hook = o.step_size if callable(o.step_size) else None
            store = fray.RayStore.load(o.resume_from, step_size=hook, **self.store_kwargs)
            if store.size != layout.size:
                store.close()
                raise ValueError(
                    f"fit: {o.resume_from} holds {store.size} elements, the model {layout.size}"
                )
            return store
        return fray.RayStore(init=init, mode=o.mode, lr=o.lr, momentum=o.momentum,
                             step_size=o.step_size, max_learners=o.learners + 1,
                             **self.store_kwargs)  # fmt: skip

    def adjust(self, config: LearnerConfig) -> None:
        if self.have.get("GPU", 0) >= self.opts.learners:
            config.devices = ["cuda:0"]  # Ray shows each learner actor its own GPU as cuda:0

    def config(self, store: Any, config: LearnerConfig) -> dict[str, Any]:
        return {"servers": store.servers}

    def share_buffers(self, flat: np.ndarray) -> tuple[np.ndarray | None, Any]:
        # share_buffers <- execute <- fit <- the caller
        warnings.warn("fit: with backend='ray' the model's floating-point buffers (BatchNorm "
                      "statistics) stay with each learner actor; evaluations use model_fn()'s",
                      stacklevel=4)  # fmt: skip
        return None, None

    def payload(self, data: Any, ds: Any) -> Any:
        return data if isinstance(data, str) or callable(data) else ds

    def channels(self, store: Any, config: LearnerConfig) -> Channels:
        ray = _ray()
        p = self.opts.learners
        self.hub = hub = ray.remote(_Hub).options(num_cpus=0).remote()
        ch = Channels(_Queue(hub, "out"), _Event(hub, "start"), _Event(hub, "stop"), [None] * p)
        if self.opts.variant.coordinated:
            ch.slots = np.zeros((p, store.size), np.float32)
            ch.version = _Value(hub, "version")
            ch.replies = [_Queue(hub, f"reply{r}") for r in range(p)]
            ch.inbox = _CoordinatorInbox(hub, ch.slots)
        return ch

    def create_learners(self, store: Any, model_fn: Callable[[], Any], payload: Any,
                        config: LearnerConfig, channels: Channels) -> None:  # fmt: skip
        ray = _ray()
        o = self.opts
        # The data reach each learner as a nested ref kept alive here, so a restarted learner
        # is rebuilt from the same arguments.
        self.args = [ray.put(payload)]
        res = {"num_gpus": 1, "num_cpus": 1} if config.devices else {"num_cpus": 1}
        cls = ray.remote(_Learner)
        self.actors = [
            cls.options(name=f"fastps-fit/{store.name}/learner{r}",
                        max_restarts=self.learner_restarts, max_task_retries=-1, **res).remote(
                r, store, model_fn, self.args, config, self.hub, o.learners,
                o.variant.coordinated, o.variant.cancelling)
            for r in range(o.learners)
        ]  # fmt: skip

    def start_learners(self) -> None:
        self.runs = {r: a.run.remote() for r, a in enumerate(self.actors)}

    def check_alive(self, finished: dict[int, Any]) -> None:
        ray, runs = _ray(), self.runs
        done_refs, _ = ray.wait(list(runs.values()), timeout=0, num_returns=len(runs))
        for ref in done_refs:
            r = next(r for r, x in runs.items() if x == ref)
            del runs[r]
            try:
                ray.get(ref)
            except Exception as e:  # noqa: BLE001 -- re-raised with the learner's rank
                raise RuntimeError(f"fit: learner {r} died: {e}") from e

    def stop_learners(self) -> None:
        for a in self.actors:
            _ray().kill(a, no_restart=True)
        self.actors = []

    def on_shutdown(self) -> None:
        if self.hub is not None:
            _ray().kill(self.hub, no_restart=True)
            self.hub = None
        if self.started:
            _ray().shutdown()


__all__ = ["RayBackend"]
