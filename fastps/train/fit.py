"""fit(): train a torch model with P asynchronous learners through a fastps Store.

Each learner (a process by default, or a thread) holds its own copy of the model and an
AsyncOptimizer, draws its own shuffled mini-batches, and loops: forward and backward, push the
gradient, pull the parameters. The parent creates the store in shared memory, evaluates the
store's parameters on the test set as training goes, writes checkpoints, and collects each
learner's time split (compute / push / pull / wait). The other variants hand their gradients
or models to a coordinator thread in the parent (_Coordinator), which makes the store updates.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
import traceback
import types
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastps.layout import ParamLayout
from fastps.step_size import StepSize
from fastps.store import Store, cleanup
from fastps.torch import AsyncOptimizer

VARIANTS = ("async", "sync", "k-sync", "k-batch-sync", "k-async", "k-batch-async", "adasync",
            "local-sgd", "adacomm", "easgd", "downpour")  # fmt: skip
LOCAL = ("local-sgd", "adacomm", "easgd", "downpour")  # local SGD steps between exchanges
AVERAGING = ("local-sgd", "adacomm")  # models averaged by the coordinator, all P each round
# The options only some variants use: fit() refuses them for the others (k: the others fix it)
# and so does `fastps train`, which takes this table.
VARIANT_OPTIONS: dict[str, tuple[str, ...]] = {
    "k": ("k-sync", "k-batch-sync", "k-async", "k-batch-async", "adasync"),
    "local_steps": ("local-sgd", "adacomm", "easgd"),
    "alpha": ("easgd",),
    "n_fetch": ("downpour",),
    "n_push": ("downpour",),
    "interval_s": ("adasync",),
}
CANCELLING = ("k-sync", "k-batch-sync", "adasync")  # an update cancels the work in progress
"""Who waits for whom (DESIGN.md, "Coordination"); every variant but async averages K gradients
into one update, w -= (lr / K) * sum(g), made by a coordinator thread in the parent."""


@dataclass(frozen=True)
class Straggler:
    """Injected compute delay per mini-batch, for experiments with slow learners.

    kind "exp": X ~ Exp(mean); "shifted-exp": shift + Exp(mean); "slow": ``delay`` seconds for
    learner ``learner`` only; "fixed": ``delay`` for everyone.
    """

    kind: str = "exp"
    mean: float = 0.0
    shift: float = 0.0
    learner: int = 0
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("exp", "shifted-exp", "slow", "fixed"):
            raise ValueError(
                f"Straggler: kind must be exp, shifted-exp, slow or fixed (got {self.kind!r})"
            )
        if min(self.mean, self.shift, self.delay) < 0:
            raise ValueError("Straggler: delays must be >= 0")

    def sample(self, rank: int, rng: np.random.Generator) -> float:
        if self.kind == "exp":
            return float(rng.exponential(self.mean)) if self.mean else 0.0
        if self.kind == "shifted-exp":
            return self.shift + (float(rng.exponential(self.mean)) if self.mean else 0.0)
        if self.kind == "slow":
            return self.delay if rank == self.learner else 0.0
        return self.delay


@dataclass
class History:
    """What a fit() run measured: evaluation points, per-learner time splits, the config."""

    # t_s, updates, loss, accuracy: t_s and updates when the evaluated parameters were read
    evals: list[dict[str, Any]] = field(default_factory=list)
    learners: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # the store's, at the end
    coordinator: dict[str, Any] = field(default_factory=dict)  # K-variants: dropped, staleness
    # One per store update: the coordinator's (K-variants) or, for async, easgd and downpour,
    # each learner's pushes merged in time order (t_s, learner, loss, staleness).
    updates: list[dict[str, Any]] = field(default_factory=list)
    # Seconds from fit()'s start (the t_s origin) to the moment the learners began, after
    # loading their data: t_s - started_s is training time.
    started_s: float = 0.0

    @property
    def final_accuracy(self) -> float:
        return self.evals[-1]["accuracy"] if self.evals else float("nan")

    def save(self, path: str | os.PathLike[str]) -> None:
        """JSON lines: the config, then one line per evaluation and per learner, then stats."""
        with open(path, "w") as f:
            f.write(json.dumps({"config": self.config, "started_s": self.started_s}) + "\n")
            for e in self.evals:
                f.write(json.dumps({"eval": e}) + "\n")
            for ln in self.learners:
                f.write(json.dumps({"learner": ln}) + "\n")
            for u in self.updates:
                f.write(json.dumps({"update": u}) + "\n")
            if self.coordinator:
                f.write(json.dumps({"coordinator": self.coordinator}) + "\n")
            f.write(json.dumps({"stats": self.stats}) + "\n")


_UNBOUNDED = 2**62  # a learner's quota when only the time budget ends the run


def _batches_per_update(variant: str, k: int, learners: int, local_steps: int,
                        n_push: int) -> int:  # fmt: skip
    """Mini-batches that go into one store update (adacomm at tau_0, adasync at K_0)."""
    if variant in AVERAGING:
        return learners * local_steps  # every learner's round of tau local steps
    if variant == "easgd":
        return local_steps
    if variant == "downpour":
        return n_push
    return k  # async 1, sync P, the K-variants K


def _check_int(name: str, value: Any, low: int) -> None:
    """ValueError unless ``value`` is an integer (not a bool) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"fit: {name} must be an integer >= {low} (got {value!r})")


def _process_context() -> Any:
    """Where learner processes come from: a fork server that has imported torch and fastps
    once, so a learner does not import them again (4 MLP learners on Fashion-MNIST began
    training 0.6-0.9 s after fit() was called, against 3.0-3.3 s spawned; the first run also
    starts the server, 2.1 s; it outlives a run and serves the next), or spawn where the
    platform has no fork server. Like spawn, it forks no thread of this process: the server
    is a fresh interpreter."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "fastps.train.fit", "fastps.train.data"])
    return ctx


def _eval_spacing(eval_every: int | None, evals: int | None, total: int | None) -> int:
    """Updates between evaluations: ``eval_every``, else ``evals`` (10) spread over a run of
    ``total`` updates, else (only a time budget) 200."""
    if eval_every:
        return eval_every
    return max(1, total // (evals or 10)) if total else 200


@dataclass(frozen=True)
class _Budget:
    """How much a run trains: ``epochs`` passes over the training set, counted in mini-batches
    that go into updates (a sync update with P learners uses P of them, a local-SGD round
    P x tau), or ``updates`` store updates, or (neither) until the time budget is spent.

    total: the run's store updates, absolute (resumed ones included); None when only the time
    budget limits it. For adacomm and adasync, whose mini-batches per update change as tau
    and K adapt, ``batches`` is the cap the coordinator counts, and ``total`` an estimate
    (at tau_0 or K_0) for progress reports.
    """

    total: int | None
    batches: int | None = None
    per_update: int = 1

    @staticmethod
    def of(variant: str, *, k: int, learners: int, local_steps: int, n_push: int,
           n_train: int, batch_size: int, epochs: float | None, updates: int | None,
           time_budget_s: float | None) -> _Budget:  # fmt: skip
        per = _batches_per_update(variant, k, learners, local_steps, n_push)
        if updates is not None:
            _check_int("updates", updates, 1)
            if epochs is not None:
                raise ValueError(f"fit: give epochs or updates, not both (got epochs={epochs}, "
                                 f"updates={updates})")  # fmt: skip
            return _Budget(updates, None, per)
        if epochs is None:
            if time_budget_s:
                return _Budget(None, None, per)
            epochs = 1.0
        if not 0.0 < epochs < math.inf:
            raise ValueError(f"fit: epochs must be a number > 0 (got {epochs!r})")
        batches = max(1, math.ceil(epochs * n_train / batch_size))
        total = max(1, math.ceil(batches / per))
        return _Budget(total, batches if variant in ("adacomm", "adasync") else None, per)

    def quota(self, learners: int, done_before: int) -> list[int]:
        """Pushes per uncoordinated learner (async, easgd, downpour) still to make."""
        if self.total is None:
            return [_UNBOUNDED] * learners
        left = max(0, self.total - done_before)
        return [left // learners + (r < left % learners) for r in range(learners)]

    def targets(self, done_before: int) -> tuple[float, float]:
        """The coordinator's caps: (absolute update count, mini-batches in this run)."""
        if self.batches is not None:  # resumed updates counted at tau_0 or K_0
            return math.inf, max(0, self.batches - done_before * self.per_update)
        return (math.inf if self.total is None else self.total), math.inf


@dataclass
class _Plan:
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
    # a _attach_array spec), or None when the model has none.
    buffers: Any = None
    threads: int = 1  # torch threads of each learner
    watch_parent: bool = False  # processes: stop when the process that ran fit() is gone


@dataclass
class _Link:
    """A coordinated learner's channels: its gradient slot, the coordinator's inbox, its replies."""

    slots: Any  # (shared-memory name, shape) for processes, or the numpy array for threads
    inbox: Any
    reply: Any
    version: Any  # .value: updates applied so far (set by the coordinator; read by learners)
    cancels: bool  # k-sync, k-batch-sync: an update cancels the work in progress

    def slot_array(self) -> tuple[np.ndarray, Any]:
        return _attach_array(self.slots)


def _attach_array(spec: Any) -> tuple[np.ndarray, Any]:
    """A float32 array shared with the parent: ``spec`` is the array itself (threads) or
    (shared-memory name, shape) (processes; the SharedMemory is returned for closing)."""
    if isinstance(spec, np.ndarray):
        return spec, None
    from multiprocessing import shared_memory

    name, shape = spec
    shm = shared_memory.SharedMemory(name=name)
    return np.ndarray(shape, np.float32, buffer=shm.buf), shm


def _float_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    """The module's floating-point buffers (BatchNorm's running statistics), in a fixed order:
    state that training changes but the store does not hold."""
    return [b for _name, b in model.named_buffers() if b.is_floating_point()]


def _load_data(data: Any) -> Any:
    """A Dataset from a Dataset, a data set name, or a callable that loads one."""
    if isinstance(data, str):
        from fastps.train import data as datasets

        return datasets.load(data)
    if callable(data):
        return data()
    return data


def _check_devices(devices: Sequence[str] | None) -> list[str] | None:
    """The learners' devices as torch device strings; refuses what cannot run here."""
    if devices is None:
        return None
    if isinstance(devices, str) or not len(devices):
        raise ValueError(f"fit: devices must be a non-empty list of devices (got {devices!r})")
    names = []
    for d in devices:
        try:
            dev = torch.device(d)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"fit: devices: {d!r} is not a torch device ({e})") from None
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"fit: devices: {d!r} is neither cpu nor cuda")
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"fit: devices: {d!r} needs a CUDA GPU, and none answers here")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise ValueError(f"fit: devices: {d!r} does not exist "
                                 f"({torch.cuda.device_count()} GPU(s))")  # fmt: skip
        names.append(str(dev))
    return names


def _reporters(store: Any, model: torch.nn.Module, layout: ParamLayout, ds: Any,
               history: History, config: dict[str, Any], *, t_start: float, eval_train: int,
               checkpoint: str | os.PathLike[str] | None,
               progress: Callable[[dict[str, Any]], None] | None,
               staleness: Callable[[], float] | None = None,
               buffers: np.ndarray | None = None,
               ) -> tuple[Callable[..., None], Callable[[], None] | None]:  # fmt: skip
    """(evaluate, save) of a run on ``store`` (a Store or a RayStore). evaluate() appends one
    evaluation of the store's parameters to the history and reports it; its t_s and updates
    are taken when the parameters are read (``final=True``: the end of the run, which replaces
    an evaluation at the same update count); its staleness_mean is ``staleness()`` when given
    (a coordinator's), else the store histogram's; ``buffers`` (the learners' latest
    floating-point buffers, flat) go into the model first. save() checkpoints the store to
    ``checkpoint`` (None without one)."""

    def evaluate(final: bool = False) -> None:
        params = store.read()
        st = store.stats()
        t_s = time.perf_counter() - t_start
        if buffers is not None:
            _load_buffers(model, buffers.copy())
        loss, acc = _evaluate(model, layout, params, ds.x_test, ds.y_test)
        tau = staleness() if staleness is not None else mean_staleness(st["staleness_hist"])
        record = {"t_s": t_s, "updates": st["clock"], "loss": loss, "accuracy": acc,
                  "staleness_mean": tau}  # fmt: skip
        if eval_train:
            n = eval_train
            record["train_loss"], record["train_accuracy"] = _evaluate(
                model, layout, params, ds.x_train[:n], ds.y_train[:n]
            )
        if final and history.evals and history.evals[-1]["updates"] == st["clock"]:
            # The run ended on an evaluation's update count: one record per count, taken
            # now that every learner has written its last buffers.
            history.evals[-1] = record
        else:
            history.evals.append(record)
        if progress:
            progress(record)

    def save() -> None:
        store.save(checkpoint, metadata={"layout": layout.to_json(), "fit": config,
                                         "updates_done": store.stats()["clock"]})  # fmt: skip

    return evaluate, save if checkpoint is not None else None


def _supervise(out: Any, store: Any, learners: int, start: Any, stop: Any, history: History,
               coordinator: _Coordinator | None, *, t_start: float, timeout_s: float,
               time_budget_s: float | None, updates: int | None, done_before: int,
               eval_every: int,
               checkpoint_every: int | None, evaluate: Callable[[], None],
               save: Callable[[], None] | None, alive: Callable[[dict[int, Any]], None],
               progress: Callable[[dict[str, Any]], None] | None) -> dict[int, dict[str, Any]]:  # fmt: skip
    """The parent's loop of a run (any backend), until every learner has reported "done":
    starts the learners when all are "ready", stops them when the time budget is spent, raises
    when a learner sends "error", ``alive`` finds one dead, the coordinator fails or timeout_s
    passes; evaluates every eval_every updates and saves every checkpoint_every (when ``save``
    is given). Returns the learners' records by rank."""
    finished: dict[int, dict[str, Any]] = {}
    ready: set[int] = set()
    t_begin = math.inf
    next_eval = done_before + eval_every
    next_ckpt = done_before + checkpoint_every if checkpoint_every and save else None
    while len(finished) < learners:
        if time.perf_counter() - t_start > timeout_s:
            raise RuntimeError(f"fit: learners did not finish within timeout_s={timeout_s}")
        if time_budget_s and start.is_set() and time.perf_counter() - t_begin > time_budget_s:
            stop.set()  # learners finish their step and report
        if coordinator is not None and coordinator.error is not None:
            raise RuntimeError(f"fit: the coordinator failed: {coordinator.error!r}")
        try:
            kind, rank, payload = out.get(timeout=0.05)
        except queue_mod.Empty:
            pass
        else:
            if kind == "error":
                raise RuntimeError(f"fit: learner {rank} failed:\n{payload}")
            if kind == "done":
                finished[rank] = payload
            else:
                ready.add(rank)
                if len(ready) == learners and not start.is_set():  # restarted: ready again
                    t_begin = time.perf_counter()
                    history.started_s = t_begin - t_start
                    if coordinator is not None:  # its clocks start with the learners
                        coordinator.next_adapt = t_begin + coordinator.interval_s
                        if time_budget_s:
                            coordinator.deadline = t_begin + time_budget_s
                    start.set()
        alive(finished)
        clock = store.stats()["clock"]
        if progress:
            progress({"updates": clock, "total": updates})
        if next_ckpt is not None and save is not None and clock >= next_ckpt:
            save()
            next_ckpt = clock - clock % checkpoint_every + checkpoint_every  # type: ignore[operator]
        if clock >= next_eval:
            evaluate()
            # from the count the evaluation read (learners go on meanwhile): not twice at one
            seen = history.evals[-1]["updates"]
            next_eval = seen - seen % eval_every + eval_every
    return finished


def _collect(history: History, finished: dict[int, dict[str, Any]], learners: int,
             coordinator: _Coordinator | None, coord_thread: threading.Thread | None,
             t_start: float) -> None:  # fmt: skip
    """Every learner has stopped: their records, the coordinator's summary and the update log
    go into the history."""
    history.learners = [finished[r] for r in range(learners)]
    # Also takes the push logs out of the learner records (coordinated learners have none).
    pushed = _merge_pushes(history.learners, time.time() - (time.perf_counter() - t_start))
    if coordinator is not None and coord_thread is not None:
        coordinator.quit.set()  # nothing more can arrive
        coord_thread.join(timeout=10)
        history.coordinator = coordinator.summary()
        history.coordinator["cancelled"] = sum(ln["cancelled"] for ln in history.learners)
        history.updates = coordinator.log
    else:
        history.updates = pushed


def _merge_pushes(learners: list[dict[str, Any]], t0: float) -> list[dict[str, Any]]:
    """The uncoordinated learners' pushes as one time-ordered update log (and out of the
    per-learner records, where they would be repeated). Learners stamp pushes with the wall
    clock (comparable across hosts, unlike perf_counter); t0 is fit's start on that clock."""
    rows = [(t, ln["id"], loss, tau) for ln in learners for t, loss, tau in ln.pop("pushes", [])]
    rows.sort()
    return [{"update": i + 1, "t_s": t - t0, "k": 1, "learners": [r], "loss": loss,
             "staleness": tau} for i, (t, r, loss, tau) in enumerate(rows)]  # fmt: skip


def learner_threads(learners: int) -> int:
    """Torch threads per learner so that ``learners`` of them share this process's cores
    (PyTorch's advice for P processes on N cores: floor(N / P), at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // learners)


def mean_staleness(hist: list[int]) -> float:
    """Mean tau of a staleness histogram (the overflow bin counted at its lower edge)."""
    total = sum(hist)
    return sum(t * c for t, c in enumerate(hist)) / total if total else 0.0


def _load_buffers(model: torch.nn.Module, flat: np.ndarray) -> None:
    src = torch.from_numpy(flat)
    offset = 0
    with torch.no_grad():
        for b in _float_buffers(model):
            b.copy_(src[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


def _evaluate(model: torch.nn.Module, layout: ParamLayout, params: np.ndarray, xs: np.ndarray,
              ys: np.ndarray, batch: int = 2048) -> tuple[float, float]:  # fmt: skip
    views = layout.unflatten(torch.from_numpy(params))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(views[name])
        model.eval()
        loss, correct = 0.0, 0
        for i in range(0, len(xs), batch):
            x = torch.from_numpy(xs[i : i + batch])
            y = torch.from_numpy(ys[i : i + batch])
            out = model(x)
            loss += float(torch.nn.functional.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
    n = len(xs)
    return loss / n, correct / n


class _Orphaned(Exception):
    """The process that ran fit() died (killed): its learner processes stop on their own."""


def _orphan_check(plan: _Plan) -> Callable[[], None]:
    """check(): raises _Orphaned when fit()'s process has died, looking at most every 0.25 s
    (one poll of multiprocessing's sentinel pipe to the parent). Without it a learner waiting
    for a reply, or making its quota, would outlive a killed run."""
    parent = mp.parent_process() if plan.watch_parent else None
    next_look = 0.0

    def check() -> None:
        nonlocal next_look
        if parent is None:
            return
        now = time.perf_counter()
        if now >= next_look:
            next_look = now + 0.25
            if not parent.is_alive():
                raise _Orphaned

    return check


def _learner(rank: int, store: Store, model_fn: Callable[[], torch.nn.Module], data: Any,
             plan: _Plan, out: Any, start: Any, stop: Any, link: _Link | None = None) -> None:  # fmt: skip
    shm = buf_shm = None
    try:
        torch.set_num_threads(plan.threads)  # P learners must not oversubscribe the cores
        ds = _load_data(data)
        torch.manual_seed(plan.seed + rank)
        device = torch.device(plan.devices[rank % len(plan.devices)] if plan.devices else "cpu")
        model = model_fn().to(device)
        opt = AsyncOptimizer(model, store)  # on a GPU: pipelined CUDA pushes and pulls
        bufs = _float_buffers(model) if plan.buffers is not None else []
        if bufs:
            shared_bufs, buf_shm = _attach_array(plan.buffers)
            flat_bufs = torch.from_numpy(shared_bufs)
        rng = np.random.default_rng([plan.seed, rank])
        n = len(ds.x_train)
        nb = max(1, n // plan.batch_size)
        order = rng.permutation(n)
        t = {"compute_s": 0.0, "push_s": 0.0, "pull_s": 0.0, "wait_s": 0.0, "delay_s": 0.0}
        losses: list[float] = []
        pushes: list[tuple[float, float, float]] = []  # (wall time, loss, mean tau) per push
        cancelled = sent = 0
        if link is not None:
            slots, shm = link.slot_array()
            mine = torch.from_numpy(slots[rank])

        def overtaken() -> int:  # updates that replaced the model this work started from
            if link is None or not link.cancels:
                return 0
            # The store's version moves before the coordinator publishes it here: a pull may
            # already see the new model while `version` still shows the old count.
            return max(0, int(link.version.value) - opt.handle.read_version(0))

        orphaned = _orphan_check(plan)
        out.put(("ready", rank, None))
        while not start.wait(0.25):
            orphaned()
        t_go = time.perf_counter()
        opt.handle.pull(opt.flat_params)
        step = 0
        v = plan.variant
        if v in LOCAL:
            ref = opt.flat_params.clone()  # local-sgd: the model of the last exchange
            centre = torch.empty_like(opt.flat_params)  # easgd: the centre variable, pulled
            acc = torch.zeros_like(opt.flat_grads)  # downpour: gradients since the last push

        def timed(key: str, fn: Callable[..., Any], *args: Any) -> Any:
            t_in = time.perf_counter()
            result = fn(*args)
            t[key] += time.perf_counter() - t_in
            return result

        def send(fn: Callable[..., Any], *args: Any) -> Any:  # crosses the (emulated) network
            if plan.comm_delay:
                time.sleep(plan.comm_delay)
            return fn(*args)

        def push(g: torch.Tensor) -> None:
            timed("push_s", send, opt.handle.push, g)
            h = opt.handle
            taus = [v - 1 - h.read_version(s) for s, v in enumerate(h.last_push_versions()) if v]
            pushes.append((time.time(), losses[-1] if losses else math.nan,
                           sum(taus) / len(taus) if taus else math.nan))  # fmt: skip

        def pull(buf: torch.Tensor) -> None:
            timed("pull_s", send, opt.handle.pull, buf)

        def ask(loss_value: float) -> Any:  # the slot holds this learner's contribution
            if link is None:
                raise RuntimeError("fit: an uncoordinated learner asked the coordinator")
            msg = (rank, opt.handle.read_version(0), loss_value)
            timed("push_s", send, link.inbox.put, msg)  # the hand-over is this learner's push
            return timed("wait_s", await_reply)

        def await_reply() -> Any:  # (not "reply": the loop below names the answer so)
            while True:
                try:
                    return link.reply.get(timeout=0.25)  # type: ignore[union-attr]
                except queue_mod.Empty:
                    orphaned()

        def local_step() -> None:
            with torch.no_grad():
                opt.flat_params.add_(opt.flat_grads, alpha=-plan.lr)

        tau = plan.local_steps  # adacomm: the coordinator sends a new one with every reply
        since = 0  # local steps since the last exchange
        round_losses: list[float] = []
        # A coordinated learner runs until the coordinator says stop; the others make their
        # quota, or stop early when the time budget is spent.
        while link is not None or (sent < plan.quota[rank] and not stop.is_set()):
            orphaned()
            j = step % nb
            if j == 0 and step:
                order = rng.permutation(n)
            idx = order[j * plan.batch_size : (j + 1) * plan.batch_size]
            x = torch.from_numpy(ds.x_train[idx]).to(device)
            y = torch.from_numpy(ds.y_train[idx]).to(device)
            if plan.straggler is not None:
                d = plan.straggler.sample(rank, rng)
                t_in = time.perf_counter()
                end = t_in + d
                while time.perf_counter() < end and not overtaken():
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
            if overtaken():  # cancelled by an update: start again on the new model
                cancelled += 1
                pull(opt.flat_params)
                continue
            opt._gather_grads()
            losses.append(float(loss.detach()))
            step += 1
            if v == "downpour":
                acc.add_(opt.flat_grads)
                timed("compute_s", local_step)
                if step % plan.n_push == 0:  # the gradient accrued since the last push
                    push(acc)
                    acc.zero_()
                    sent += 1
                if step % plan.n_fetch == 0:
                    pull(opt.flat_params)
            elif v == "easgd":
                timed("compute_s", local_step)
                if step % plan.local_steps == 0:
                    pull(centre)
                    with torch.no_grad():
                        e = plan.alpha * (opt.flat_params - centre)
                        opt.flat_params.sub_(e)  # the elastic pull toward the centre...
                    push(e / -plan.lr)  # ...and the centre's toward x: centre += e
                    sent += 1
            elif v in AVERAGING:
                timed("compute_s", local_step)
                since += 1
                round_losses.append(losses[-1])
                if since < tau:
                    continue
                # The store's step w -= lr * g with g = (ref - x) / lr adds x - ref: the
                # coordinator averages these into the mean of the learners' models.
                mine.copy_((ref - opt.flat_params) / plan.lr)
                reply = ask(float(np.mean(round_losses)))
                since, round_losses = 0, []
                sent += 1
                if isinstance(reply, tuple):  # adacomm: ("pull", the next round's tau)
                    reply, tau = reply
                if reply == "stop":
                    break
                pull(opt.flat_params)
                ref.copy_(opt.flat_params)
            elif link is None:  # async: push, then pull
                push(opt.flat_grads)
                sent += 1
                pull(opt.flat_params)
            else:  # the K-variants: hand the gradient to the coordinator
                mine.copy_(opt.flat_grads)
                reply = ask(losses[-1])  # "pull", "keep" or "stop"
                sent += 1
                if reply == "stop":
                    break
                if reply == "pull":
                    pull(opt.flat_params)
        opt.close()
        t["run_s"] = time.perf_counter() - t_go  # from the start event to this learner's end
        out.put(("done", rank, {"id": rank, "updates": sent, "steps": step, "cancelled": cancelled, **t,
                                "loss_first": losses[0] if losses else None,
                                "loss_last": losses[-1] if losses else None,
                                "device": str(device), "threads": torch.get_num_threads(),
                                "pushes": pushes}))  # fmt: skip
    except _Orphaned:
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


class _Coordinator:
    """Turns the learners' gradients into store updates for the K-variants (a parent thread).

    Each message is (rank, version the gradient was computed on, loss); the gradient itself is
    in the learner's slot, which the learner does not touch until it has a reply.
    - sync, k-sync: a round takes the first K gradients computed on the current model; those K
      learners wait for the update; a gradient from an older model arrives late and is dropped.
    - k-batch-sync: K gradients from any learners on the current model; a contributor keeps
      computing on the same model until the update; older gradients are dropped.
    - k-async: K gradients from K distinct learners, whatever their model; those K wait.
    - k-batch-async: K gradients from any learners; nobody waits, everyone pulls what is current.
    """

    def __init__(self, variant: str, k: int, learners: int, store: Store, slots: np.ndarray,
                 inbox: Any, replies: list[Any], target: float, version: Any, *,
                 tau0: int = 1, interval_s: float = 1.0, deadline: float = math.inf,
                 target_batches: float = math.inf) -> None:  # fmt: skip
        self.variant, self.k, self.P = variant, k, learners
        self.handle = store.learner()
        self.scratch = np.empty(store.size, np.float32)
        self.acc = np.zeros(store.size, np.float32)
        self.slots, self.inbox, self.replies = slots, inbox, replies
        self.target = target  # absolute update count (inf: no cap)
        self.target_batches = target_batches  # mini-batches in updates of this run (inf: none)
        self.batches = 0
        self.updates = store.stats()["clock"]  # the coordinator is the only writer
        self.version = version
        self.version.value = self.updates
        # (rank, version, loss, staleness) of the gradients in acc
        self.batch: list[tuple[int, int, float, int]] = []
        self.waiting: list[int] = []
        self.dropped = 0
        self.after_end = 0
        self.tau_sum = self.tau_n = 0  # staleness of every gradient taken (read by evaluate)
        self.log: list[dict[str, Any]] = []
        self.stopped: set[int] = set()
        self.error: BaseException | None = None
        self.t0 = time.perf_counter()
        self.quit = threading.Event()
        self.deadline = deadline  # perf_counter time after which no update is made
        # AdaComm / AdaSync: F_0, the losses of the current round or interval, tau and K now.
        self.tau0, self.tau = tau0, tau0
        self.k0 = k
        self.f0: float | None = None
        self.round_losses: list[float] = []
        self.interval_s = interval_s
        self.next_adapt = self.t0 + interval_s  # re-armed when the learners start
        self.adaptations: list[tuple[float, int]] = []  # adasync: (t_s, K after it)

    def done(self) -> bool:
        return (self.updates >= self.target or self.batches >= self.target_batches
                or time.perf_counter() >= self.deadline)  # fmt: skip

    def staleness_mean(self) -> float:
        """Mean staleness of the gradients taken so far (the store's own stays 0: the
        coordinator is its only writer)."""
        n = self.tau_n
        return self.tau_sum / n if n else 0.0

    def reply(self, rank: int, what: str) -> None:
        if self.done():
            what = "stop"
        if what == "stop":
            self.stopped.add(rank)
        self.replies[rank].put(
            (what, self.tau) if self.variant == "adacomm" and what != "stop" else what
        )

    def adapt(self) -> None:
        """AdaComm: tau = ceil(sqrt(F_l / F_0) * tau_0) in [1, tau_0] after every round.
        AdaSync: K = min(P, ceil(K_0 * sqrt(F_0 / F_l))) every interval_s seconds."""
        if not self.round_losses:
            return
        f = float(np.mean(self.round_losses))
        self.round_losses = []
        if self.f0 is None:
            self.f0 = f
            return
        ratio = f / self.f0 if self.f0 > 0 else 1.0
        if self.variant == "adacomm":
            self.tau = max(1, min(self.tau0, math.ceil(math.sqrt(ratio) * self.tau0)))
        else:
            self.k = max(
                1, min(self.P, math.ceil(self.k0 * math.sqrt(1 / ratio if ratio > 0 else 1)))
            )

    def apply(self) -> None:
        self.handle.pull(self.scratch)  # the store's own tau stays 0: the only writer is us
        self.handle.push(self.acc / np.float32(len(self.batch)))
        self.updates += 1
        self.version.value = self.updates  # learners of the cancelling variants watch it
        # adacomm: every contribution is a round of tau local steps (tau adapts after it)
        self.batches += len(self.batch) * (self.tau if self.variant in AVERAGING else 1)
        contributors = {b[0] for b in self.batch}
        # The work in progress of every other learner is cancelled (k-sync, k-batch-sync) or
        # kept (k-async, k-batch-async); sync has none.
        self.log.append({"update": self.updates, "t_s": time.perf_counter() - self.t0,
                         "k": len(self.batch), "learners": [b[0] for b in self.batch],
                         "versions": [b[1] for b in self.batch],
                         "loss": float(np.mean([b[2] for b in self.batch])),
                         "staleness": float(np.mean([b[3] for b in self.batch])),
                         "in_progress": self.P - len(contributors), "tau": self.tau})  # fmt: skip
        if self.variant == "adacomm":
            self.adapt()
        self.acc.fill(0.0)
        self.batch = []
        waiting, self.waiting = self.waiting, []
        for r in waiting:
            self.reply(r, "pull")

    def on_gradient(self, rank: int, version: int, loss: float = math.nan) -> None:
        v = self.variant
        if v in ("sync", *CANCELLING, *AVERAGING) and version < self.updates:
            self.dropped += 1  # overtaken after the learner last looked: a late gradient
            self.reply(rank, "pull")
            return
        tau = self.updates - version
        self.tau_sum += tau
        self.tau_n += 1
        self.acc += self.slots[rank]
        self.batch.append((rank, version, loss, tau))
        full = len(self.batch) >= self.k  # >=: AdaSync may have lowered K meanwhile
        # The sender that completes a batch is answered after the update (apply() replies
        # to the waiting), so its pull sees the new model; the others are answered now.
        if v == "k-batch-async" and not full:
            self.reply(rank, "pull")
        elif v == "k-batch-sync" and not full:
            self.reply(rank, "keep")
        else:
            self.waiting.append(rank)
        if full:
            self.apply()

    def run(self) -> None:
        try:
            while len(self.stopped) < self.P and not self.quit.is_set():
                try:
                    rank, version, loss = self.inbox.get(timeout=0.05)
                except queue_mod.Empty:
                    continue
                if self.variant in ("adacomm", "adasync"):
                    self.round_losses.append(loss)
                    now = time.perf_counter()
                    if self.variant == "adasync" and now >= self.next_adapt:
                        self.adapt()
                        self.adaptations.append((now - self.t0, self.k))
                        while self.next_adapt <= now:  # intervals without a gradient are skipped
                            self.next_adapt += self.interval_s
                if self.done():
                    if self.variant in CANCELLING and version < self.updates:
                        self.dropped += 1  # a late gradient of the last update
                    else:
                        self.after_end += 1  # computed while the last update was made
                    self.reply(rank, "stop")
                    for r in self.waiting:
                        self.reply(r, "stop")
                    self.waiting = []
                else:
                    self.on_gradient(rank, version, loss)
        except BaseException as e:
            self.error = e
        finally:
            self.handle.close()

    def summary(self) -> dict[str, Any]:
        return {"updates": self.updates, "dropped_late": self.dropped, "after_end": self.after_end,
                "staleness_mean": self.staleness_mean(), "gradients": self.tau_n,
                "batches": self.batches,
                **({"adaptations": self.adaptations} if self.variant == "adasync" else {})}  # fmt: skip


def fit(
    model_fn: Callable[[], torch.nn.Module],
    data: Any,
    *,
    learners: int = 4,
    variant: str = "async",
    k: int | None = None,
    straggler: Straggler | None = None,
    local_steps: int | None = None,
    alpha: float | None = None,
    n_fetch: int | None = None,
    n_push: int | None = None,
    interval_s: float | None = None,
    time_budget_s: float | None = None,
    comm_delay: float = 0.0,
    eval_train: int = 0,
    mode: str = "leashed",
    step_size: Any = None,
    lr: float = 0.05,
    momentum: float = 0.0,
    batch_size: int = 64,
    epochs: float | None = None,
    updates: int | None = None,
    seed: int = 0,
    backend: str = "process",
    address: str | None = None,
    eval_every: int | None = None,
    evals: int | None = None,
    checkpoint_every: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    timeout_s: float = 3600.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    devices: Sequence[str] | None = None,
    threads: int | None = None,
    **store_kwargs: Any,
) -> History:
    """Train ``model_fn()`` on ``data`` with ``learners`` asynchronous learners; return History.

    ``data``: a Dataset (fastps.train.data) or the name of one (each learner process loads it).
    ``model_fn``: builds the model (picklable: a module-level function or a functools.partial).
    How long it trains: ``epochs`` passes over the training set in mini-batches of
    ``batch_size``, counted in the mini-batches that go into updates (a sync update with P
    learners uses P, a local-SGD round P x local_steps; dropped and cancelled gradients do not
    count), or ``updates`` store updates, or, with neither, one epoch; with only
    ``time_budget_s``, until that many seconds have passed. The uncoordinated learners (async,
    easgd, downpour) share the updates equally; a time budget also ends a run given in epochs
    or updates when it is spent first. ``eval_every`` updates the parent evaluates the store's
    parameters on the test set (default: ``evals`` times a run, 10 unless given; every 200
    updates with only a time budget, where ``evals`` is refused).
    ``checkpoint_every`` updates it saves the store to ``checkpoint`` (atomically);
    ``resume_from`` starts from such a file and makes only the updates still missing.
    ``backend``: "process" (learner processes from a fork server that has imported torch,
    spawned where there is none; the store in shared memory), "thread", or
    "ray" (learner actors and a fastps.ray.RayStore; ``address`` names the Ray cluster, None
    starts a local one; ``checkpoint`` and ``resume_from`` are then folders; docs/ray.md).
    Store arguments (mode, step_size, lr, momentum, ...) pass through. A learner that raises
    stops the run with RuntimeError carrying its traceback; fit() never waits forever.
    ``progress`` is called about 20 times a second with {"updates", "total"} ("total": the
    run's store updates, estimated at tau_0 or K_0 for adacomm and adasync, None with only a
    time budget), and with each evaluation record (which has "accuracy").
    ``variant`` (see VARIANTS) and ``k``: async pushes every gradient itself; the others send
    gradients to a coordinator that averages K of them into one update (sync: K = learners).
    ``straggler``: an injected delay before each mini-batch (a Straggler). ``comm_delay``: an
    injected network latency, seconds slept before every push, pull and hand-over of a
    gradient or model to the coordinator (counted in the learner's push_s and pull_s).
    ``eval_train``: each evaluation also measures the loss and accuracy of the first
    ``eval_train`` training examples (``train_loss``, ``train_accuracy``).
    ``devices``: where the learners compute, e.g. ``["cuda:0", "cuda:1"]`` (learner r on
    ``devices[r % len(devices)]``); default the CPU. On a GPU a learner's pushes and pulls
    take the pipelined CUDA path of fastps.transfer.
    ``threads``: torch threads per learner (default ``learner_threads(learners)``: the cores
    this process may use, shared out so that the learners do not oversubscribe them; the
    Ray backend gives each learner actor one CPU and one thread).
    """
    if variant not in VARIANTS:
        raise ValueError(f"fit: variant must be one of {', '.join(VARIANTS)} (got {variant!r})")
    # An option the variant would ignore is refused, not dropped silently.
    options = {"local_steps": local_steps, "alpha": alpha, "n_fetch": n_fetch, "n_push": n_push,
               "interval_s": interval_s}  # fmt: skip
    for name_, val in options.items():
        users = VARIANT_OPTIONS[name_]
        if val is not None and variant not in users:
            raise ValueError(f"fit: {name_} is for variant {' and '.join(users)}; "
                             f"{variant!r} does not use it (got {name_}={val!r})")  # fmt: skip
    n_fetch = 1 if n_fetch is None else n_fetch
    n_push = 1 if n_push is None else n_push
    interval_s = 1.0 if interval_s is None else interval_s
    if not 0.0 < interval_s < math.inf:
        raise ValueError(f"fit: interval_s must be seconds > 0 (got {interval_s})")
    if local_steps is None:
        local_steps = 4 if variant in AVERAGING else 1
    if alpha is None:
        alpha = 2.0 / (learners + 2)  # EASGD's elastic rate for m learners
    for name_, val in (("local_steps", local_steps), ("n_fetch", n_fetch), ("n_push", n_push)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"fit: {name_} must be an integer >= 1 (got {val!r})")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"fit: alpha must be in [0, 1] (got {alpha})")
    if not 0.0 <= comm_delay < math.inf:
        raise ValueError(f"fit: comm_delay must be finite seconds >= 0 (got {comm_delay})")
    _check_int("eval_train", eval_train, 0)
    if evals is not None:
        _check_int("evals", evals, 1)
        if eval_every is not None:
            raise ValueError(f"fit: give eval_every or evals, not both (got eval_every="
                             f"{eval_every}, evals={evals})")  # fmt: skip
        if epochs is None and updates is None and time_budget_s:
            raise ValueError("fit: evals needs a run of known length (epochs or updates); with "
                             "only time_budget_s give eval_every")  # fmt: skip
    if variant in LOCAL and (momentum or step_size is not None or store_kwargs.get("weight_decay")):
        raise ValueError(
            f"fit: {variant} exchanges models through the store's plain step (no momentum, "
            "weight decay or step-size policy); it takes its local steps with lr"
        )
    if variant not in VARIANT_OPTIONS["k"]:
        fixed = learners if variant in ("sync", *AVERAGING) else 1
        if k not in (None, fixed):
            raise ValueError(f"fit: variant {variant!r} fixes k (got k={k})")
        k = fixed
    elif not isinstance(k, int) or not 1 <= k <= (learners if "batch" not in variant else 10**6):
        bound = learners if "batch" not in variant else "any"
        raise ValueError(f"fit: variant {variant!r} needs k in [1, {bound}] (got k={k!r})")
    if backend not in ("process", "thread", "ray"):
        raise ValueError(f"fit: backend must be 'process', 'thread' or 'ray' (got {backend!r})")
    _check_int("learners", learners, 1)
    if threads is not None:
        _check_int("threads", threads, 1)
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError("fit: checkpoint_every needs checkpoint=PATH")
    device_names = _check_devices(devices)
    if backend == "ray":
        if threads is not None:
            raise ValueError("fit: threads is for the process and thread backends; with "
                             "backend='ray' each learner actor has one CPU and one thread")
        if devices is not None:
            raise ValueError("fit: devices is for the process and thread backends; with "
                             "backend='ray' each learner actor gets a GPU when the cluster has "
                             "one per learner")  # fmt: skip
        from fastps.train.ray_backend import fit_ray

        return fit_ray(model_fn, data, learners=learners, variant=variant, k=k,
                       straggler=straggler, local_steps=local_steps, alpha=alpha,
                       n_fetch=n_fetch, n_push=n_push, interval_s=interval_s,
                       time_budget_s=time_budget_s, mode=mode, step_size=step_size, lr=lr,
                       momentum=momentum, batch_size=batch_size, epochs=epochs, updates=updates,
                       seed=seed, eval_every=eval_every, evals=evals,
                       checkpoint_every=checkpoint_every,
                       checkpoint=checkpoint, resume_from=resume_from, timeout_s=timeout_s,
                       progress=progress, address=address, comm_delay=comm_delay,
                       eval_train=eval_train, **store_kwargs)  # fmt: skip
    ds = _load_data(data)
    budget = _Budget.of(variant, k=k, learners=learners, local_steps=local_steps, n_push=n_push,
                        n_train=len(ds.x_train), batch_size=batch_size, epochs=epochs,
                        updates=updates, time_budget_s=time_budget_s)  # fmt: skip
    updates = budget.total
    name = f"fit-{os.getpid()}-{uuid.uuid4().hex[:8]}" if backend == "process" else None
    model = model_fn()
    layout = ParamLayout.from_module(model)
    if resume_from is not None:
        hook = step_size if step_size is not None and not isinstance(step_size, StepSize) else None
        store = Store.load(resume_from, shared=name, step_size=hook)
        if store.size != layout.size:
            store.close()
            raise ValueError(
                f"fit: {resume_from} holds {store.size} elements, the model {layout.size}"
            )
    else:
        store = Store(init=layout.flatten(dict(model.named_parameters())), mode=mode, lr=lr,
                      momentum=momentum, step_size=step_size, shared=name,
                      max_learners=learners + 1, **store_kwargs)  # fmt: skip
    done_before = store.stats()["clock"]
    quota = budget.quota(learners, done_before)
    plan = _Plan(batch_size, seed + done_before, quota, variant, straggler, float(np.float32(lr)),
                 local_steps, alpha, n_fetch, n_push, device_names, comm_delay,
                 threads=threads if threads is not None else learner_threads(learners),
                 watch_parent=backend == "process")  # fmt: skip
    config = {"learners": learners, "variant": variant, "k": k, "local_steps": local_steps,
              "alpha": alpha, "n_fetch": n_fetch, "n_push": n_push, "mode": store.mode, "lr": lr,
              "momentum": momentum, "batch_size": batch_size, "updates": updates,
              "epochs": epochs, "batches": budget.batches, "time_budget_s": time_budget_s,
              "resumed_at": done_before, "seed": seed, "backend": backend,
              "step_size": repr(store.step_size), "devices": device_names,
              "comm_delay": comm_delay, "eval_train": eval_train,
              "threads": plan.threads}  # fmt: skip
    eval_every = _eval_spacing(eval_every, evals, updates)
    config["eval_every"] = eval_every
    history = History(config=config)
    # Processes load a named or callable data set themselves instead of unpickling a copy.
    payload = data if (backend == "process" and (isinstance(data, str) or callable(data))) else ds

    coordinated = variant not in ("async", "easgd", "downpour")
    shm = buf_shm = None
    # BatchNorm-like state: each learner writes its buffers here after every step.
    n_buf = sum(b.numel() for b in _float_buffers(model))
    shared_bufs: np.ndarray | None = None
    if n_buf and backend == "process":
        from multiprocessing import shared_memory

        buf_shm = shared_memory.SharedMemory(create=True, size=4 * n_buf)
        shared_bufs = np.ndarray((n_buf,), np.float32, buffer=buf_shm.buf)
        shared_bufs[:] = torch.cat([b.reshape(-1) for b in _float_buffers(model)]).numpy()
        plan.buffers = (buf_shm.name, (n_buf,))
    elif n_buf:
        shared_bufs = torch.cat([b.reshape(-1) for b in _float_buffers(model)]).numpy().copy()
        plan.buffers = shared_bufs
    links: list[_Link | None] = [None] * learners
    replies: list[Any] = []
    coordinator = None
    workers: list[Any]
    if backend == "process":
        ctx: Any = _process_context()
        out: Any = ctx.Queue()
        make_queue: Callable[[], Any] = ctx.Queue
    else:
        out = queue_mod.Queue()
        make_queue = queue_mod.Queue
    if coordinated:
        if backend == "process":
            from multiprocessing import shared_memory

            shm = shared_memory.SharedMemory(create=True, size=4 * learners * store.size)
            slots = np.ndarray((learners, store.size), np.float32, buffer=shm.buf)
            spec: Any = (shm.name, (learners, store.size))
        else:
            slots = spec = np.zeros((learners, store.size), np.float32)
        inbox, replies = make_queue(), [make_queue() for _ in range(learners)]
        version = (
            ctx.Value("q", 0, lock=False)
            if backend == "process"
            else types.SimpleNamespace(value=0)
        )
        cancels = variant in CANCELLING
        links = [_Link(spec, inbox, replies[r], version, cancels) for r in range(learners)]
        target, target_batches = budget.targets(done_before)
        coordinator = _Coordinator(variant, k, learners, store, slots, inbox, replies, target,
                                   version, tau0=local_steps, interval_s=interval_s,
                                   target_batches=target_batches)  # fmt: skip
    # Every learner sets up (data, model, handle) before any starts: start-up skew would
    # otherwise let the first ones make the whole run alone.
    start = ctx.Event() if backend == "process" else threading.Event()
    stop = ctx.Event() if backend == "process" else threading.Event()  # time budget spent
    if backend == "process":
        workers = [ctx.Process(target=_learner, daemon=True,
                               args=(r, store, model_fn, payload, plan, out, start, stop, links[r]))
                   for r in range(learners)]  # fmt: skip
    else:
        workers = [threading.Thread(target=_learner, daemon=True, name=f"fastps-learner-{r}",
                                    args=(r, store, model_fn, ds, plan, out, start, stop, links[r]))
                   for r in range(learners)]  # fmt: skip
    coord_thread = threading.Thread(target=coordinator.run, daemon=True) if coordinator else None
    t_start = time.perf_counter()
    if coordinator is not None:
        coordinator.t0 = t_start  # its log's t_s on the evaluations' clock

    evaluate, save = _reporters(store, model, layout, ds, history, config, t_start=t_start,
                                eval_train=eval_train, checkpoint=checkpoint, progress=progress,
                                staleness=coordinator.staleness_mean if coordinator else None,
                                buffers=shared_bufs)

    def alive(finished: dict[int, Any]) -> None:
        for r, w in enumerate(workers):
            if r not in finished and not w.is_alive() and w.exitcode not in (0, None):
                raise RuntimeError(f"fit: learner {r} died with exit code {w.exitcode}")

    try:
        evaluate()
        if coord_thread is not None:
            coord_thread.start()
        for w in workers:
            w.start()
        finished = _supervise(
            out, store, learners, start, stop, history, coordinator, t_start=t_start,
            timeout_s=timeout_s, time_budget_s=time_budget_s, updates=updates,
            done_before=done_before, eval_every=eval_every, checkpoint_every=checkpoint_every,
            evaluate=evaluate, save=save, alive=alive if backend == "process" else lambda finished: None, progress=progress,
        )  # fmt: skip
        _collect(history, finished, learners, coordinator, coord_thread, t_start)
        evaluate(final=True)
        if save is not None:
            save()
        history.stats = {k: v for k, v in store.stats().items() if k != "versions"}
    except BaseException:
        # Learner threads cannot be killed: release the ones waiting to start or for the
        # coordinator, and stop the others after their step, so the joins below are short.
        stop.set()
        start.set()
        for q in replies if backend == "thread" else []:  # processes are killed below
            q.put("stop")
        raise
    finally:
        if coordinator is not None:
            coordinator.quit.set()
        for w in workers:
            if backend == "process" and w.is_alive():
                w.kill()
            if w.ident is not None:
                w.join(timeout=10)
        if coord_thread is not None and coord_thread.ident is not None:
            coord_thread.join(timeout=10)
        store.close()
        for s in (shm, buf_shm):
            if s is not None:
                s.close()
                s.unlink()
    return history


__all__ = ["VARIANTS", "VARIANT_OPTIONS", "History", "Straggler", "fit", "learner_threads"]
