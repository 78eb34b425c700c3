"""fit(): train a torch model with P asynchronous learners through a fastps Store.

Each learner (a spawned process by default, or a thread) holds its own copy of the model and an
AsyncOptimizer, draws its own shuffled mini-batches, and loops: forward and backward, push the
gradient, pull the parameters. The parent creates the store in shared memory, evaluates the
store's parameters on the test set as training goes, writes checkpoints, and collects each
learner's time split (pull / compute / push). Variants other than "async" come later.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastps.layout import ParamLayout
from fastps.step_size import StepSize
from fastps.store import Store
from fastps.torch import AsyncOptimizer

VARIANTS = ("async",)


@dataclass
class History:
    """What a fit() run measured: evaluation points, per-learner time splits, the config."""

    evals: list[dict[str, Any]] = field(default_factory=list)  # t_s, updates, loss, accuracy
    learners: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # the store's, at the end

    @property
    def final_accuracy(self) -> float:
        return self.evals[-1]["accuracy"] if self.evals else float("nan")

    def save(self, path: str | os.PathLike[str]) -> None:
        """JSON lines: the config, then one line per evaluation and per learner, then stats."""
        with open(path, "w") as f:
            f.write(json.dumps({"config": self.config}) + "\n")
            for e in self.evals:
                f.write(json.dumps({"eval": e}) + "\n")
            for ln in self.learners:
                f.write(json.dumps({"learner": ln}) + "\n")
            f.write(json.dumps({"stats": self.stats}) + "\n")


@dataclass
class _Plan:
    batch_size: int
    seed: int
    quota: list[int]  # updates per learner
    variant: str


def _load_data(data: Any) -> Any:
    """A Dataset from a Dataset, a data set name, or a callable that loads one."""
    if isinstance(data, str):
        from fastps.train import data as datasets

        return datasets.load(data)
    if callable(data):
        return data()
    return data


def mean_staleness(hist: list[int]) -> float:
    """Mean tau of a staleness histogram (the overflow bin counted at its lower edge)."""
    total = sum(hist)
    return sum(t * c for t, c in enumerate(hist)) / total if total else 0.0


def _evaluate(model: torch.nn.Module, layout: ParamLayout, params: np.ndarray, ds: Any,
              batch: int = 2048) -> tuple[float, float]:  # fmt: skip
    views = layout.unflatten(torch.from_numpy(params))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(views[name])
        model.eval()
        loss, correct = 0.0, 0
        for i in range(0, len(ds.x_test), batch):
            x = torch.from_numpy(ds.x_test[i : i + batch])
            y = torch.from_numpy(ds.y_test[i : i + batch])
            out = model(x)
            loss += float(torch.nn.functional.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
    n = len(ds.x_test)
    return loss / n, correct / n


def _learner(rank: int, store: Store, model_fn: Callable[[], torch.nn.Module], data: Any,
             plan: _Plan, out: Any) -> None:  # fmt: skip
    try:
        torch.set_num_threads(1)  # P learners must not oversubscribe the cores
        ds = _load_data(data)
        torch.manual_seed(plan.seed + rank)
        model = model_fn()
        opt = AsyncOptimizer(model, store)
        rng = np.random.default_rng([plan.seed, rank])
        n = len(ds.x_train)
        nb = max(1, n // plan.batch_size)
        order = rng.permutation(n)
        t_pull = t_compute = t_push = 0.0
        losses = []
        for step in range(plan.quota[rank]):
            j = step % nb
            if j == 0 and step:
                order = rng.permutation(n)
            idx = order[j * plan.batch_size : (j + 1) * plan.batch_size]
            x, y = torch.from_numpy(ds.x_train[idx]), torch.from_numpy(ds.y_train[idx])
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            t1 = time.perf_counter()
            opt._gather_grads()
            opt.handle.push(opt.flat_grads)
            t2 = time.perf_counter()
            opt.handle.pull(opt.flat_params)
            t3 = time.perf_counter()
            t_compute, t_push, t_pull = t_compute + t1 - t0, t_push + t2 - t1, t_pull + t3 - t2
            losses.append(float(loss.detach()))
        opt.close()
        out.put(("done", rank, {"id": rank, "updates": plan.quota[rank], "compute_s": t_compute,
                                "push_s": t_push, "pull_s": t_pull,
                                "loss_first": losses[0] if losses else None,
                                "loss_last": losses[-1] if losses else None}))  # fmt: skip
    except BaseException:
        out.put(("error", rank, traceback.format_exc()))


def fit(
    model_fn: Callable[[], torch.nn.Module],
    data: Any,
    *,
    learners: int = 4,
    variant: str = "async",
    mode: str = "leashed",
    step_size: Any = None,
    lr: float = 0.05,
    momentum: float = 0.0,
    batch_size: int = 64,
    epochs: float | None = 1.0,
    updates: int | None = None,
    seed: int = 0,
    backend: str = "process",
    eval_every: int | None = None,
    checkpoint_every: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    timeout_s: float = 3600.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    **store_kwargs: Any,
) -> History:
    """Train ``model_fn()`` on ``data`` with ``learners`` asynchronous learners; return History.

    ``data``: a Dataset (fastps.train.data) or the name of one (each learner process loads it).
    ``model_fn``: builds the model (picklable: a module-level function or a functools.partial).
    The run makes ``updates`` pushes in all (default: ``epochs`` passes of the training set in
    mini-batches of ``batch_size``), shared equally by the learners. ``eval_every`` updates the
    parent evaluates the store's parameters on the test set (default: 10 times a run).
    ``checkpoint_every`` updates it saves the store to ``checkpoint`` (atomically);
    ``resume_from`` starts from such a file and makes only the updates still missing.
    ``backend``: "process" (spawned learners; the store in shared memory) or "thread".
    Store arguments (mode, step_size, lr, momentum, ...) pass through. A learner that raises
    stops the run with RuntimeError carrying its traceback; fit() never waits forever.
    ``progress`` is called about 20 times a second with {"updates", "total"}, and with each
    evaluation record (which has "accuracy").
    """
    if variant not in VARIANTS:
        raise ValueError(
            f"fit: variant must be one of {', '.join(VARIANTS)} (got {variant!r}); the sync, "
            "K-sync, K-batch and local-update variants are not implemented yet"
        )
    if backend not in ("process", "thread"):
        raise ValueError(f"fit: backend must be 'process' or 'thread' (got {backend!r})")
    if not isinstance(learners, int) or learners < 1:
        raise ValueError(f"fit: learners must be an integer >= 1 (got {learners!r})")
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError("fit: checkpoint_every needs checkpoint=PATH")
    ds = _load_data(data)
    if updates is None:
        if epochs is None:
            raise ValueError("fit: give epochs or updates")
        updates = max(1, math.ceil(epochs * len(ds.x_train) / batch_size))
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
    remaining = max(0, updates - done_before)
    quota = [remaining // learners + (r < remaining % learners) for r in range(learners)]
    plan = _Plan(batch_size, seed + done_before, quota, variant)
    config = {"learners": learners, "variant": variant, "mode": store.mode, "lr": lr,
              "momentum": momentum, "batch_size": batch_size, "updates": updates,
              "resumed_at": done_before, "seed": seed, "backend": backend,
              "step_size": repr(store.step_size)}  # fmt: skip
    history = History(config=config)
    eval_every = eval_every or max(1, updates // 10)
    # Processes load a named or callable data set themselves instead of unpickling a copy.
    payload = data if (backend == "process" and (isinstance(data, str) or callable(data))) else ds

    workers: list[Any]
    if backend == "process":
        ctx = mp.get_context("spawn")
        out: Any = ctx.Queue()
        workers = [ctx.Process(target=_learner, args=(r, store, model_fn, payload, plan, out),
                               daemon=True) for r in range(learners)]  # fmt: skip
    else:
        out = queue_mod.Queue()
        workers = [threading.Thread(target=_learner, args=(r, store, model_fn, ds, plan, out),
                                    daemon=True) for r in range(learners)]  # fmt: skip
    t_start = time.perf_counter()

    def evaluate() -> None:
        loss, acc = _evaluate(model, layout, store.read(), ds)
        st = store.stats()
        record = {
            "t_s": time.perf_counter() - t_start,
            "updates": st["clock"],
            "loss": loss,
            "accuracy": acc,
            "staleness_mean": mean_staleness(st["staleness_hist"]),
        }
        history.evals.append(record)
        if progress:
            progress(record)

    next_eval = done_before + eval_every
    next_ckpt = done_before + checkpoint_every if checkpoint_every else None
    try:
        evaluate()
        for w in workers:
            w.start()
        finished: dict[int, dict[str, Any]] = {}
        while len(finished) < learners:
            if time.perf_counter() - t_start > timeout_s:
                raise RuntimeError(f"fit: learners did not finish within timeout_s={timeout_s}")
            try:
                kind, rank, payload_msg = out.get(timeout=0.05)
                if kind == "error":
                    raise RuntimeError(f"fit: learner {rank} failed:\n{payload_msg}")
                finished[rank] = payload_msg
            except queue_mod.Empty:
                pass
            if backend == "process":
                for r, w in enumerate(workers):
                    if r not in finished and not w.is_alive() and w.exitcode not in (0, None):
                        raise RuntimeError(f"fit: learner {r} died with exit code {w.exitcode}")
            clock = store.stats()["clock"]
            if progress:
                progress({"updates": clock, "total": updates})
            if next_ckpt is not None and checkpoint is not None and clock >= next_ckpt:
                store.save(checkpoint, metadata={"layout": layout.to_json(), "fit": config,
                                                 "updates_done": clock})  # fmt: skip
                next_ckpt = clock - clock % checkpoint_every + checkpoint_every
            if clock >= next_eval:
                evaluate()
                next_eval = clock - clock % eval_every + eval_every
        history.learners = [finished[r] for r in range(learners)]
        evaluate()
        if checkpoint is not None:
            store.save(checkpoint, metadata={"layout": layout.to_json(), "fit": config,
                                             "updates_done": store.stats()["clock"]})  # fmt: skip
        history.stats = {k: v for k, v in store.stats().items() if k != "versions"}
    finally:
        for w in workers:
            if backend == "process" and w.is_alive():
                w.kill()
            w.join(timeout=10)
        store.close()
    return history


__all__ = ["VARIANTS", "History", "fit"]
