"""The learner loop: one learner of a fit() run, on any backend.

A learner holds its own copy of the model and an AsyncOptimizer, draws its own shuffled
mini-batches, and loops: (injected delay), forward and backward, then its variant family's step
(fastps.train.variants) pushes the gradient, hands it to the coordinator, or takes a local step
and exchanges models. It reports on ``out``: ("ready", rank, None) once set up, then ("done",
rank, record) or ("error", rank, traceback). Which backend runs it only changes the channels it
is given (queues, events, the gradient slot): see fastps.train.backends.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import queue as queue_mod
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastps.segments import cleanup
from fastps.torch import AsyncOptimizer
from fastps.train.options import Straggler
from fastps.train.variants import TABLE


@dataclass
class LearnerConfig:
    """What every learner of a run is told (picklable: it travels to learner processes)."""

    batch_size: int
    seed: int
    quota: list[int]  # updates per learner (async); coordinated learners run until told to stop
    variant: str
    straggler: Straggler | None = None
    lr: float = 0.05  # the local step size of the local-update variants
    local_steps: int = 1
    alpha: float = 0.0
    n_fetch: int = 1
    n_push: int = 1
    devices: list[str] | None = None  # learner r computes on devices[r % len(devices)]
    comm_delay: float = 0.0  # seconds slept before every push, pull and hand-over
    # Where learners write their floating-point buffers after every step (last writer wins;
    # an attach_array spec), or None when the model has none.
    buffers: Any = None
    threads: int = 1  # torch threads of each learner
    watch_parent: bool = False  # processes: stop when the process that ran fit() is gone


@dataclass
class Link:
    """A coordinated learner's channels: its gradient slot, the coordinator's inbox, its replies."""

    slots: Any  # (shared-memory name, shape) for processes, or the numpy array for threads
    inbox: Any
    reply: Any
    version: Any  # .value: updates applied so far (set by the coordinator; read by learners)
    cancels: bool  # k-sync, k-batch-sync: an update cancels the work in progress

    def slot_array(self) -> tuple[np.ndarray, Any]:
        return attach_array(self.slots)


def attach_array(spec: Any) -> tuple[np.ndarray, Any]:
    """A float32 array shared with the parent: ``spec`` is the array itself (threads) or
    (shared-memory name, shape) (processes; the SharedMemory is returned for closing)."""
    if isinstance(spec, np.ndarray):
        return spec, None
    from multiprocessing import shared_memory

    name, shape = spec
    shm = shared_memory.SharedMemory(name=name)
    return np.ndarray(shape, np.float32, buffer=shm.buf), shm


def float_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    """The module's floating-point buffers (BatchNorm's running statistics), in a fixed order:
    state that training changes but the store does not hold."""
    return [b for _name, b in model.named_buffers() if b.is_floating_point()]


def load_buffers(model: torch.nn.Module, flat: np.ndarray) -> None:
    """Copy ``flat`` (float_buffers concatenated) into the model's floating-point buffers."""
    src = torch.from_numpy(flat)
    offset = 0
    with torch.no_grad():
        for b in float_buffers(model):
            b.copy_(src[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


def load_data(data: Any) -> Any:
    """A Dataset from a Dataset, a data set name, or a callable that loads one."""
    if isinstance(data, str):
        from fastps.train import data as datasets

        return datasets.load(data)
    if callable(data):
        return data()
    return data


class Orphaned(Exception):
    """The process that ran fit() died (killed): its learner processes stop on their own."""


def orphan_check(config: LearnerConfig) -> Callable[[], None]:
    """check(): raises Orphaned when fit()'s process has died, looking at most every 0.25 s
    (one poll of multiprocessing's sentinel pipe to the parent). Without it a learner waiting
    for a reply, or making its quota, would outlive a killed run."""
    parent = mp.parent_process() if config.watch_parent else None
    next_look = 0.0

    def check() -> None:
        nonlocal next_look
        if parent is None:
            return
        now = time.perf_counter()
        if now >= next_look:
            next_look = now + 0.25
            if not parent.is_alive():
                raise Orphaned

    return check


class Exchange:
    """A learner's side of the run: its optimizer, the timed and (emulated) delayed calls that
    reach the store and the coordinator, and its counters. The variant families
    (fastps.train.variants.Step) act through it."""

    def __init__(self, rank: int, opt: AsyncOptimizer, config: LearnerConfig,
                 link: Link | None, orphaned: Callable[[], None],
                 slot: torch.Tensor | None = None) -> None:  # fmt: skip
        self.rank, self.opt, self.config, self.link = rank, opt, config, link
        self.orphaned = orphaned
        self.times = {"compute_s": 0.0, "push_s": 0.0, "pull_s": 0.0, "wait_s": 0.0,
                      "delay_s": 0.0}  # fmt: skip
        self.losses: list[float] = []
        self.pushes: list[tuple[float, float, float]] = []  # (wall time, loss, mean tau) per push
        self.sent = 0
        self._slot = slot  # this learner's row of the coordinator's gradient slots

    def timed(self, key: str, fn: Callable[..., Any], *args: Any) -> Any:
        t_in = time.perf_counter()
        result = fn(*args)
        self.times[key] += time.perf_counter() - t_in
        return result

    def send(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn`` across the (emulated) network: comm_delay seconds first."""
        if self.config.comm_delay:
            time.sleep(self.config.comm_delay)
        return fn(*args)

    def push(self, grad: torch.Tensor) -> None:
        self.timed("push_s", self.send, self.opt.handle.push, grad)
        h = self.opt.handle
        taus = [v - 1 - h.read_version(s) for s, v in enumerate(h.last_push_versions()) if v]
        self.pushes.append((time.time(), self.losses[-1] if self.losses else math.nan,
                            sum(taus) / len(taus) if taus else math.nan))  # fmt: skip

    def pull(self, buf: torch.Tensor) -> None:
        self.timed("pull_s", self.send, self.opt.handle.pull, buf)

    def slot(self) -> torch.Tensor:
        """This learner's row of the gradient slots (what ``ask`` hands over)."""
        if self._slot is None:
            raise RuntimeError("fit: an uncoordinated learner asked for a gradient slot")
        return self._slot

    def ask(self, loss_value: float) -> Any:
        """Hand the slot to the coordinator (this learner's push) and wait for its reply."""
        if self.link is None:
            raise RuntimeError("fit: an uncoordinated learner asked the coordinator")
        msg = (self.rank, self.opt.handle.read_version(0), loss_value)
        self.timed("push_s", self.send, self.link.inbox.put, msg)
        return self.timed("wait_s", self.await_reply)

    def await_reply(self) -> Any:
        link = self.link
        while True:
            try:
                return link.reply.get(timeout=0.25)  # type: ignore[union-attr]
            except queue_mod.Empty:
                self.orphaned()

    def local_step(self) -> None:
        """x -= lr * g, the local-update variants' own step (counted as compute)."""
        t_in = time.perf_counter()
        with torch.no_grad():
            self.opt.flat_params.add_(self.opt.flat_grads, alpha=-self.config.lr)
        self.times["compute_s"] += time.perf_counter() - t_in

    def overtaken(self) -> int:
        """Updates that replaced the model this work started from (cancelling variants)."""
        if self.link is None or not self.link.cancels:
            return 0
        # The store's version moves before the coordinator publishes it here: a pull may
        # already see the new model while `version` still shows the old count.
        return max(0, int(self.link.version.value) - self.opt.handle.read_version(0))


def run_learner(rank: int, store: Any, model_fn: Callable[[], torch.nn.Module], data: Any,
                config: LearnerConfig, out: Any, start: Any, stop: Any,
                link: Link | None = None) -> None:  # fmt: skip
    """Learner ``rank`` of a run on ``store`` (a Store, or what a backend hands out in its
    place); reports on ``out``, starts when ``start`` is set, stops early when ``stop`` is."""
    shm = buf_shm = None
    try:
        torch.set_num_threads(config.threads)  # P learners must not oversubscribe the cores
        ds = load_data(data)
        torch.manual_seed(config.seed + rank)
        device = torch.device(config.devices[rank % len(config.devices)]
                              if config.devices else "cpu")  # fmt: skip
        model = model_fn().to(device)
        opt = AsyncOptimizer(model, store)  # on a GPU: pipelined CUDA pushes and pulls
        bufs = float_buffers(model) if config.buffers is not None else []
        if bufs:
            shared_bufs, buf_shm = attach_array(config.buffers)
            flat_bufs = torch.from_numpy(shared_bufs)
        rng = np.random.default_rng([config.seed, rank])
        n = len(ds.x_train)
        nb = max(1, n // config.batch_size)
        order = rng.permutation(n)
        cancelled = 0
        orphaned = orphan_check(config)
        slot = None
        if link is not None:
            slots, shm = link.slot_array()
            slot = torch.from_numpy(slots[rank])
        io = Exchange(rank, opt, config, link, orphaned, slot)
        out.put(("ready", rank, None))
        while not start.wait(0.25):
            orphaned()
        t_go = time.perf_counter()
        opt.handle.pull(opt.flat_params)
        step = 0
        family = TABLE[config.variant].family(io)
        t = io.times
        # A coordinated learner runs until the coordinator says stop; the others make their
        # quota, or stop early when the time budget is spent.
        while link is not None or (io.sent < config.quota[rank] and not stop.is_set()):
            orphaned()
            j = step % nb
            if j == 0 and step:
                order = rng.permutation(n)
            idx = order[j * config.batch_size : (j + 1) * config.batch_size]
            x = torch.from_numpy(ds.x_train[idx]).to(device)
            y = torch.from_numpy(ds.y_train[idx]).to(device)
            if config.straggler is not None:
                d = config.straggler.sample(rank, rng)
                t_in = time.perf_counter()
                end = t_in + d
                while time.perf_counter() < end and not io.overtaken():
                    time.sleep(min(0.001, max(0.0, end - time.perf_counter())))
                t["delay_s"] += time.perf_counter() - t_in  # an update may cut it short
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if bufs:  # the forward pass moved them; the parent evaluates the latest
                with torch.no_grad():
                    flat_bufs.copy_(torch.cat([b.reshape(-1) for b in bufs]))
            t["compute_s"] += time.perf_counter() - t0
            if io.overtaken():  # cancelled by an update: start again on the new model
                cancelled += 1
                io.pull(opt.flat_params)
                continue
            opt.gather_grads()
            io.losses.append(float(loss.detach()))
            step += 1
            if not family.after_gradient(step):
                break
        opt.close()
        t["run_s"] = time.perf_counter() - t_go  # from the start event to this learner's end
        losses = io.losses
        out.put(("done", rank, {"id": rank, "updates": io.sent, "steps": step,
                                "cancelled": cancelled, **t,
                                "loss_first": losses[0] if losses else None,
                                "loss_last": losses[-1] if losses else None,
                                "device": str(device), "threads": torch.get_num_threads(),
                                "pushes": io.pushes}))  # fmt: skip
    except Orphaned:
        # Nobody is left to report to, and the killed creator cannot unlink the store's name:
        # the first learner to notice removes it (cleanup() only removes a store whose creator
        # is gone; the others find it removed).
        if store.name is not None:
            with contextlib.suppress(Exception):
                cleanup(store.name)
    except BaseException:
        out.put(("error", rank, traceback.format_exc()))
    finally:
        for s in (shm, buf_shm):
            if s is not None:
                s.close()


__all__ = ["Exchange", "LearnerConfig", "Link", "Orphaned", "attach_array", "float_buffers",
           "load_buffers", "load_data", "orphan_check", "run_learner"]  # fmt: skip
