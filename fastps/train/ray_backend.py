"""fit(..., backend="ray"): the learners are Ray actors, the store a fastps.ray.RayStore.

The learner loop and the coordinator are fit's own (``_learner``, ``_Coordinator``); only their
channels change. Where the process backend uses multiprocessing queues, events, a shared value
and a shared-memory gradient slot per learner, here one small asynchronous actor (``_Hub``)
holds named queues, flags and values, and a coordinated learner sends its gradient with its
message to the coordinator (a thread of the driver, as in the other backends).

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
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fastps.layout import ParamLayout
from fastps.train.fit import (
    CANCELLING,
    History,
    _Budget,
    _collect,
    _Coordinator,
    _eval_spacing,
    _float_buffers,
    _learner,
    _Link,
    _load_data,
    _Plan,
    _reporters,
    _supervise,
)


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

    def __init__(self, rank: int, store: Any, model_fn: Callable[[], torch.nn.Module],
                 data: Any, plan: _Plan, hub: Any, learners: int, coordinated: bool,
                 cancels: bool) -> None:  # fmt: skip
        self.args = (rank, store, model_fn, data, plan, hub, learners, coordinated, cancels)

    def run(self) -> None:
        rank, store, model_fn, data, plan, hub, learners, coordinated, cancels = self.args
        data = _ray().get(data[0])
        # Named per run (the store's name is new for every fit call, resumed or not), so only a
        # restart of this very learner finds pushes already made under the name.
        handle = store.learner(name=f"{store.name}/rank{rank}")
        if handle.pushes:  # a restart: the rest of the quota of the learner that died
            quota = list(plan.quota)
            quota[rank] = max(0, quota[rank] - handle.pushes)
            plan = dataclasses.replace(plan, quota=quota)
        link = None
        if coordinated:
            row = np.zeros(store.size, np.float32)
            # Every row of this (P, size) view is `row`: _learner writes slots[rank] and the
            # inbox sends it, so a learner holds one gradient slot, not P.
            slots = np.lib.stride_tricks.as_strided(row, (learners, store.size), (0, 4),
                                                    writeable=True)  # fmt: skip
            link = _Link(slots, _Inbox(hub, row), _Queue(hub, f"reply{rank}"),
                         _Value(hub, "version"), cancels)  # fmt: skip
        rank_store: Any = _RankStore(store, handle)  # duck-types the Store _learner uses
        _learner(rank, rank_store, model_fn, data, plan, _Queue(hub, "out"),
                 _Event(hub, "start"), _Event(hub, "stop"), link)  # fmt: skip


def fit_ray(model_fn: Callable[[], torch.nn.Module], data: Any, *, learners: int, variant: str,
            k: int, straggler: Any, local_steps: int, alpha: float, n_fetch: int, n_push: int,
            interval_s: float, time_budget_s: float | None, mode: str, step_size: Any,
            lr: float, momentum: float, batch_size: int, epochs: float | None,
            updates: int | None, seed: int, eval_every: int | None, evals: int | None,
            checkpoint_every: int | None, checkpoint: str | os.PathLike[str] | None,
            resume_from: str | os.PathLike[str] | None, timeout_s: float,
            progress: Callable[[dict[str, Any]], None] | None, address: str | None,
            comm_delay: float = 0.0, eval_train: int = 0, learner_restarts: int = 3,
            **store_kwargs: Any) -> History:  # fmt: skip
    """fit() with learner actors and a RayStore; arguments as fit(), checked there.

    ``checkpoint`` and ``resume_from`` are folders (``RayStore.save`` / ``RayStore.load``).
    Store arguments pass to RayStore (``servers``, ``shards_per_server``, ``checkpoint_dir``,
    ``checkpoint_every_s``, ``server_cpus``, ...). Without Ray initialised, a local instance
    on 127.0.0.1 is started with a CPU per learner (at least the machine's cores) and shut
    down at the end; ``address`` joins a cluster instead.
    """
    ray = _ray()
    import fastps.ray as fray

    started = False
    if not ray.is_initialized():
        cpus = None
        if address is None:
            servers = store_kwargs.get("servers", 2)
            cpus = max(os.cpu_count() or 1,
                       math.ceil(learners + servers * store_kwargs.get("server_cpus", 1.0)))  # fmt: skip
        started = fray.init(address, num_cpus=cpus)
    ds = _load_data(data)
    budget = _Budget.of(variant, k=k, learners=learners, local_steps=local_steps, n_push=n_push,
                        n_train=len(ds.x_train), batch_size=batch_size, epochs=epochs,
                        updates=updates, time_budget_s=time_budget_s)  # fmt: skip
    updates = budget.total
    model = model_fn()
    layout = ParamLayout.from_module(model)
    if _float_buffers(model):
        warnings.warn("fit: with backend='ray' the model's floating-point buffers (BatchNorm "
                      "statistics) stay with each learner actor; evaluations use model_fn()'s",
                      stacklevel=3)  # fmt: skip
    hub = learner_actors = None
    store = None
    coordinator = coord_thread = None
    try:
        have = ray.cluster_resources()
        server_cpus = store_kwargs.get("server_cpus", 1.0)
        need = learners + store_kwargs.get("servers", 2) * server_cpus
        if have.get("CPU", 0) < need:
            raise ValueError(
                f"fit: {learners} learner actors (1 CPU each) and the servers "
                f"(server_cpus={server_cpus:g} each) need {need:g} CPUs; the Ray cluster has "
                f"{have.get('CPU', 0):g} (pass server_cpus=0, or fewer learners)"
            )
        if resume_from is not None:
            hook = step_size if callable(step_size) else None
            store = fray.RayStore.load(resume_from, step_size=hook, **store_kwargs)
            if store.size != layout.size:
                raise ValueError(
                    f"fit: {resume_from} holds {store.size} elements, the model {layout.size}"
                )
        else:
            store = fray.RayStore(init=layout.flatten(dict(model.named_parameters())), mode=mode,
                                  lr=lr, momentum=momentum, step_size=step_size,
                                  max_learners=learners + 1, **store_kwargs)  # fmt: skip
        done_before = store.stats()["clock"]
        quota = budget.quota(learners, done_before)
        plan = _Plan(batch_size, seed + done_before, quota, variant, straggler,
                     float(np.float32(lr)), local_steps, alpha, n_fetch, n_push, None,
                     comm_delay)  # fmt: skip
        config = {"learners": learners, "variant": variant, "k": k, "local_steps": local_steps,
                  "alpha": alpha, "n_fetch": n_fetch, "n_push": n_push, "mode": store.mode,
                  "lr": lr, "momentum": momentum, "batch_size": batch_size, "updates": updates,
                  "epochs": epochs, "batches": budget.batches, "time_budget_s": time_budget_s,
                  "resumed_at": done_before, "seed": seed, "backend": "ray",
                  "servers": store.servers, "step_size": repr(store.step_size)}  # fmt: skip
        eval_every = _eval_spacing(eval_every, evals, updates)
        config["eval_every"] = eval_every
        history = History(config=config)
        payload = data if (isinstance(data, str) or callable(data)) else ds

        # The data reach each learner as a nested ref kept alive here, so a restarted learner
        # is rebuilt from the same arguments.
        args = [ray.put(payload)]
        hub = ray.remote(_Hub).options(num_cpus=0).remote()
        out, start, stop = _Queue(hub, "out"), _Event(hub, "start"), _Event(hub, "stop")
        coordinated = variant not in ("async", "easgd", "downpour")
        if coordinated:
            slots = np.zeros((learners, store.size), np.float32)
            version = _Value(hub, "version")
            replies = [_Queue(hub, f"reply{r}") for r in range(learners)]
            target, target_batches = budget.targets(done_before)
            coordinator = _Coordinator(variant, k, learners, store, slots,  # type: ignore[arg-type]
                                       _CoordinatorInbox(hub, slots), replies, target, version,
                                       tau0=local_steps, interval_s=interval_s,
                                       target_batches=target_batches)  # fmt: skip
            coord_thread = threading.Thread(target=coordinator.run, daemon=True)
        res = {"num_gpus": 1, "num_cpus": 1} if have.get("GPU", 0) >= learners else {"num_cpus": 1}
        if "num_gpus" in res:
            plan.devices = ["cuda:0"]  # Ray shows each learner actor its own GPU as cuda:0
        cls = ray.remote(_Learner)
        learner_actors = [
            cls.options(name=f"fastps-fit/{store.name}/learner{r}", max_restarts=learner_restarts,
                        max_task_retries=-1, **res).remote(
                r, store, model_fn, args, plan, hub, learners, coordinated, variant in CANCELLING)
            for r in range(learners)
        ]  # fmt: skip
        t_start = time.perf_counter()
        if coordinator is not None:
            coordinator.t0 = t_start  # its log's t_s on the evaluations' clock

        evaluate, save = _reporters(store, model, layout, ds, history, config, t_start=t_start,
                                    eval_train=eval_train, checkpoint=checkpoint,
                                    progress=progress,
                                    staleness=coordinator.staleness_mean if coordinator else None)

        def alive(finished: dict[int, Any]) -> None:
            done_refs, _ = ray.wait(list(runs.values()), timeout=0, num_returns=len(runs))
            for ref in done_refs:
                r = next(r for r, x in runs.items() if x == ref)
                del runs[r]
                try:
                    ray.get(ref)
                except Exception as e:  # noqa: BLE001 -- re-raised with the learner's rank
                    raise RuntimeError(f"fit: learner {r} died: {e}") from e

        evaluate()
        if coord_thread is not None:
            coord_thread.start()
        runs = {r: a.run.remote() for r, a in enumerate(learner_actors)}
        finished = _supervise(
            out, store, learners, start, stop, history, coordinator, t_start=t_start,
            timeout_s=timeout_s, time_budget_s=time_budget_s, updates=updates,
            done_before=done_before, eval_every=eval_every, checkpoint_every=checkpoint_every,
            evaluate=evaluate, save=save, alive=alive,
            progress=progress,
        )  # fmt: skip
        _collect(history, finished, learners, coordinator, coord_thread, t_start)
        evaluate(final=True)
        if save is not None:
            save()
        st = store.stats()
        history.stats = {k: v for k, v in st.items() if k not in ("versions", "servers")}
        return history
    finally:
        if coordinator is not None:
            coordinator.quit.set()
        if coord_thread is not None and coord_thread.ident is not None:
            coord_thread.join(timeout=10)
        for a in learner_actors or []:
            ray.kill(a, no_restart=True)
        if hub is not None:
            ray.kill(hub, no_restart=True)
        if store is not None:
            store.close()
        if started:
            ray.shutdown()


__all__ = ["fit_ray"]
