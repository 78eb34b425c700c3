"""The run of fit(), on any backend: the parent's side.

``execute`` wires a run together: it loads the data, fixes the budget, has the backend create
the store and the learners' channels, starts the coordinator (coordinated variants) and the
learners, supervises them (``supervise``: start, time budget, failures, evaluations,
checkpoints), and collects what they measured into a History. What differs between learner
processes, threads and Ray actors is the backend's (fastps.train.backends).
"""

from __future__ import annotations

import math
import os
import queue as queue_mod
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fastps.layout import ParamLayout
from fastps.train.coordinator import Coordinator
from fastps.train.history import History, mean_staleness, merge_pushes
from fastps.train.learner import LearnerConfig, float_buffers, load_buffers, load_data
from fastps.train.options import Budget, Options, eval_spacing

if TYPE_CHECKING:
    from fastps.train.backends.base import Backend


def evaluate_params(model: torch.nn.Module, layout: ParamLayout, params: np.ndarray, xs: np.ndarray,
              ys: np.ndarray, batch: int = 2048) -> tuple[float, float]:  # fmt: skip
    """(mean cross-entropy loss, accuracy) of ``model`` with the flat ``params`` on (xs, ys)."""
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


def reporters(store: Any, model: torch.nn.Module, layout: ParamLayout, ds: Any,
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
            load_buffers(model, buffers.copy())
        loss, accuracy = evaluate_params(model, layout, params, ds.x_test, ds.y_test)
        tau = staleness() if staleness is not None else mean_staleness(st["staleness_hist"])
        record = {"t_s": t_s, "updates": st["clock"], "loss": loss, "accuracy": accuracy,
                  "staleness_mean": tau}  # fmt: skip
        if eval_train:
            n = eval_train
            record["train_loss"], record["train_accuracy"] = evaluate_params(
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


def supervise(out: Any, store: Any, learners: int, start: Any, stop: Any, history: History,
               coordinator: Coordinator | None, *, t_start: float, timeout_s: float,
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
            progress({"updates": clock, "total": updates, "started": start.is_set()})
        if next_ckpt is not None and save is not None and clock >= next_ckpt:
            save()
            next_ckpt = clock - clock % checkpoint_every + checkpoint_every  # type: ignore[operator]
        if clock >= next_eval:
            evaluate()
            # from the count the evaluation read (learners go on meanwhile): not twice at one
            seen = history.evals[-1]["updates"]
            next_eval = seen - seen % eval_every + eval_every
    return finished


def collect(history: History, finished: dict[int, dict[str, Any]], learners: int,
             coordinator: Coordinator | None, coord_thread: threading.Thread | None,
             t_start: float) -> None:  # fmt: skip
    """Every learner has stopped: their records, the coordinator's summary and the update log
    go into the history."""
    history.learners = [finished[r] for r in range(learners)]
    # Also takes the push logs out of the learner records (coordinated learners have none).
    pushed = merge_pushes(history.learners, time.time() - (time.perf_counter() - t_start))
    if coordinator is not None and coord_thread is not None:
        coordinator.quit.set()  # nothing more can arrive
        coord_thread.join(timeout=10)
        history.coordinator = coordinator.summary()
        history.coordinator["cancelled"] = sum(ln["cancelled"] for ln in history.learners)
        history.updates = coordinator.log
    else:
        history.updates = pushed


def execute(model_fn: Callable[[], torch.nn.Module], data: Any, opts: Options,
            backend: Backend) -> History:  # fmt: skip
    """Train ``model_fn()`` on ``data`` as ``opts`` says, with learners on ``backend``."""
    backend.on_start()
    store = None
    ch = coordinator = coord_thread = None
    try:
        ds = load_data(data)
        budget = Budget.of(opts, len(ds.x_train))
        updates = budget.total
        model = model_fn()
        layout = ParamLayout.from_module(model)
        store = backend.create_store(layout, layout.flatten(dict(model.named_parameters())))
        done_before = store.stats()["clock"]
        row = opts.variant
        config = LearnerConfig(opts.batch_size, opts.seed + done_before,
                               budget.quota(opts.learners, done_before), row.name,
                               opts.straggler, float(np.float32(opts.lr)), opts.local_steps,
                               opts.alpha, opts.n_fetch, opts.n_push, opts.devices,
                               opts.comm_delay)  # fmt: skip
        backend.adjust(config)
        run_config = {"learners": opts.learners, "variant": row.name, "k": opts.k,
                      "local_steps": opts.local_steps, "alpha": opts.alpha,
                      "n_fetch": opts.n_fetch, "n_push": opts.n_push, "mode": store.mode,
                      "lr": opts.lr, "momentum": opts.momentum, "batch_size": opts.batch_size,
                      "updates": updates, "epochs": opts.epochs, "batches": budget.batches,
                      "time_budget_s": opts.time_budget_s, "resumed_at": done_before,
                      "seed": opts.seed, "backend": backend.name,
                      "step_size": repr(store.step_size),
                      **backend.config(store, config)}  # fmt: skip
        eval_every = eval_spacing(opts.eval_every, opts.evals, updates)
        run_config["eval_every"] = eval_every
        history = History(config=run_config)
        # BatchNorm-like state: each learner writes its buffers here after every step.
        bufs = float_buffers(model)
        shared_bufs = None
        if bufs:
            flat = torch.cat([b.reshape(-1) for b in bufs]).numpy()
            shared_bufs, config.buffers = backend.share_buffers(flat)
        ch = backend.channels(store, config)
        if row.coordinated:
            if ch.slots is None:
                raise RuntimeError(f"fit: backend {backend.name!r} gave the coordinator no slots")
            target, target_batches = budget.targets(done_before)
            coordinator = Coordinator(row, opts.k, opts.learners, store, ch.slots, ch.inbox,
                                      ch.replies, target, ch.version, tau0=opts.local_steps,
                                      interval_s=opts.interval_s,
                                      target_batches=target_batches)  # fmt: skip
            coord_thread = threading.Thread(target=coordinator.run, daemon=True)
        # Every learner sets up (data, model, handle) before any starts: start-up skew would
        # otherwise let the first ones make the whole run alone.
        backend.create_learners(store, model_fn, backend.payload(data, ds), config, ch)
        t_start = time.perf_counter()
        if coordinator is not None:
            coordinator.t0 = t_start  # its log's t_s on the evaluations' clock
        evaluate, save = reporters(store, model, layout, ds, history, run_config,
                                   t_start=t_start, eval_train=opts.eval_train,
                                   checkpoint=opts.checkpoint, progress=opts.progress,
                                   staleness=coordinator.staleness_mean if coordinator else None,
                                   buffers=shared_bufs)  # fmt: skip
        try:
            evaluate()
            if coord_thread is not None:
                coord_thread.start()
            backend.start_learners()
            finished = supervise(
                ch.out, store, opts.learners, ch.start, ch.stop, history, coordinator,
                t_start=t_start, timeout_s=opts.timeout_s, time_budget_s=opts.time_budget_s,
                updates=updates, done_before=done_before, eval_every=eval_every,
                checkpoint_every=opts.checkpoint_every, evaluate=evaluate, save=save,
                alive=backend.check_alive, progress=opts.progress,
            )  # fmt: skip
            collect(history, finished, opts.learners, coordinator, coord_thread, t_start)
            evaluate(final=True)
            if save is not None:
                save()
        except BaseException:
            backend.on_error(ch)  # release learners that wait, so the shutdown is short
            raise
        st = store.stats()
        history.stats = {k: v for k, v in st.items() if k not in ("versions", "servers")}
        return history
    finally:
        if coordinator is not None:
            coordinator.quit.set()
        backend.stop_learners()
        if coord_thread is not None and coord_thread.ident is not None:
            coord_thread.join(timeout=10)
        if store is not None:
            store.close()
        backend.on_shutdown()


__all__ = ["collect", "evaluate_params", "execute", "reporters", "supervise"]
