"""The runs bench/bench_train.py times: fit() with P learner processes (``run_fastps``) and
PyTorch's Hogwild pattern on the same model and batches (``run_hogwild``, after PyTorch's
mnist_hogwild example), each returning a ``Run``. The method is bench/bench_train.py's
docstring. torch and fastps are imported where they are used.
"""

from __future__ import annotations

import argparse
import functools
import math
import queue as queue_mod
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

DATASET = "fashion-mnist"
MODEL = "mlp"
TORCH = "torch-hogwild"
POLL_S = 0.05  # how often a parent looks at the learners (fit() waits on its queue this long)
EVAL_BATCH = 2048


# -- shared by both implementations --------------------------------------------------------------


@dataclass
class Run:
    """One training run's measurements (times in seconds, from the start event)."""

    updates: int
    learner_s: float  # the longest learner's time inside its steps
    wall_s: float | None  # start event to the last learner's end
    evals: list[tuple[float, int, float, float]]  # (t, updates, loss, accuracy)
    split: dict[str, float]  # seconds summed over learners, by part of the step
    extra: dict[str, Any]
    foreign_cpus: float = math.nan
    attempts: int = 1

    @property
    def updates_per_s(self) -> float:
        return self.updates / self.learner_s if self.learner_s > 0 else math.nan

    @property
    def wall_updates_per_s(self) -> float | None:
        return self.updates / self.wall_s if self.wall_s else None

    def reached(self, target: float) -> tuple[float, int] | None:
        """(time, updates) of the first evaluation after the start with accuracy >= target."""
        for t, u, _loss, acc in self.evals:
            if t >= 0 and acc >= target:
                return t, u
        return None

    @property
    def final_accuracy(self) -> float:
        return self.evals[-1][3] if self.evals else math.nan


def model_fn(ds: Any, seed: int) -> functools.partial[torch.nn.Module]:
    from fastps.train import models

    return functools.partial(models.build, MODEL, ds.input_shape, ds.classes, seed=seed)


def quota(total: int, P: int) -> list[int]:
    return [total // P + (r < total % P) for r in range(P)]


# -- torch-hogwild --------------------------------------------------------------------------------


def hogwild_worker(
    rank: int,
    model: torch.nn.Module,
    steps: int,
    cfg: dict[str, Any],
    counts: Any,
    out: Any,
    start: Any,
) -> None:
    """One Hogwild process (PyTorch's mnist_hogwild ``train``): SGD on the shared model."""
    try:
        import torch

        from fastps.train import data

        torch.set_num_threads(cfg["threads"])
        ds = data.load(cfg["dataset"])
        torch.manual_seed(cfg["seed"] + rank)
        opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
        rng = np.random.default_rng([cfg["seed"], rank])  # fit()'s learner draws the same
        n, bs = len(ds.x_train), cfg["batch_size"]
        nb = max(1, n // bs)
        order = rng.permutation(n)
        compute_s = step_s = 0.0
        out.put(("ready", rank, None))
        start.wait()
        for s in range(steps):
            j = s % nb
            if j == 0 and s:
                order = rng.permutation(n)
            idx = order[j * bs : (j + 1) * bs]
            x, y = torch.from_numpy(ds.x_train[idx]), torch.from_numpy(ds.y_train[idx])
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            counts[rank] = s + 1
            compute_s += t1 - t0
            step_s += t2 - t1
        out.put(
            (
                "done",
                rank,
                {
                    "updates": steps,
                    "compute_s": compute_s,
                    "step_s": step_s,
                    "t_end": time.perf_counter(),
                },
            )
        )
    except BaseException:  # noqa: BLE001 -- reported to the parent, which raises it
        out.put(("error", rank, traceback.format_exc()))


def evaluate_test(model: torch.nn.Module, ds: Any) -> tuple[float, float]:
    """(mean loss, accuracy) on the test set, as fit() evaluates."""
    import torch

    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ds.x_test), EVAL_BATCH):
            x = torch.from_numpy(ds.x_test[i : i + EVAL_BATCH])
            y = torch.from_numpy(ds.y_test[i : i + EVAL_BATCH])
            o = model(x)
            loss += float(torch.nn.functional.cross_entropy(o, y, reduction="sum"))
            correct += int((o.argmax(1) == y).sum())
    return loss / len(ds.x_test), correct / len(ds.x_test)


def run_hogwild(
    a: argparse.Namespace, ds: Any, P: int, updates: int, eval_every: int, momentum: float = 0.0
) -> Run:
    import torch
    import torch.multiprocessing as mp

    from fastps.train.fit import learner_threads

    ctx = mp.get_context("spawn")
    model = model_fn(ds, a.seed)()
    model.share_memory()
    snapshot = model_fn(ds, a.seed)()  # the parent evaluates a copy, as fit() copies the store
    counts = ctx.Array("q", P, lock=False)  # slot r: written by worker r only
    out, start = ctx.Queue(), ctx.Event()
    cfg = {
        "dataset": DATASET,
        "seed": a.seed,
        "lr": a.lr,
        "momentum": momentum,
        "batch_size": a.batch_size,
        "threads": learner_threads(P),  # as fit() sets its learners'
    }
    procs = [
        ctx.Process(target=hogwild_worker, daemon=True, args=(r, model, q, cfg, counts, out, start))
        for r, q in enumerate(quota(updates, P))
    ]
    evals: list[tuple[float, int, float, float]] = []

    def evaluate() -> None:
        t, done = time.perf_counter(), sum(counts)  # stamped when read, as fit() does
        with torch.no_grad():
            for p, q in zip(snapshot.parameters(), model.parameters()):
                p.copy_(q)
        loss, acc = evaluate_test(snapshot, ds)
        evals.append((t, done, loss, acc))

    t_limit = time.perf_counter() + a.timeout
    finished: dict[int, dict[str, Any]] = {}
    ready = 0
    t_go = math.nan
    try:
        evaluate()
        for pr in procs:
            pr.start()
        next_eval = eval_every
        while len(finished) < P:
            if time.perf_counter() > t_limit:
                raise RuntimeError(f"torch-hogwild: no end within --timeout {a.timeout} s")
            try:
                kind, rank, msg = out.get(timeout=POLL_S)
                if kind == "error":
                    raise RuntimeError(f"torch-hogwild: worker {rank} failed:\n{msg}")
                if kind == "ready":
                    ready += 1
                    if ready == P:
                        start.set()
                        t_go = time.perf_counter()
                else:
                    finished[rank] = msg
            except queue_mod.Empty:
                pass
            for r, pr in enumerate(procs):
                if r not in finished and not pr.is_alive() and pr.exitcode not in (0, None):
                    raise RuntimeError(f"torch-hogwild: worker {r} died ({pr.exitcode})")
            clock = sum(counts)
            if clock >= next_eval and clock < updates:
                evaluate()
                next_eval = clock - clock % eval_every + eval_every
        evaluate()
    finally:
        for pr in procs:
            if pr.is_alive():
                pr.kill()
            if pr.ident is not None:
                pr.join(timeout=10)
    learners = [finished[r] for r in range(P)]
    busy = [ln["compute_s"] + ln["step_s"] for ln in learners]
    split = {k: sum(ln[k] for ln in learners) for k in ("compute_s", "step_s")}
    return Run(
        updates=sum(ln["updates"] for ln in learners),
        learner_s=max(busy),
        wall_s=max(ln["t_end"] for ln in learners) - t_go,
        evals=[(t - t_go, u, loss, acc) for t, u, loss, acc in evals],
        split=split,
        extra={"step_share": split["step_s"] / sum(busy) if sum(busy) > 0 else math.nan},
    )


# -- fastps ---------------------------------------------------------------------------------------


def run_fastps(
    a: argparse.Namespace,
    ds: Any,
    P: int,
    updates: int,
    eval_every: int,
    mode: str,
    momentum: float = 0.0,
) -> Run:
    from fastps.train import data
    from fastps.train.fit import fit

    h = fit(
        model_fn(ds, a.seed),
        functools.partial(data.load, DATASET),
        learners=P,
        variant="async",
        mode=mode,
        lr=a.lr,
        momentum=momentum,
        batch_size=a.batch_size,
        updates=updates,
        eval_every=eval_every,
        seed=a.seed,
        backend="process",
        timeout_s=a.timeout,
    )
    # fit() stamps an evaluation when it reads the store, in seconds from its own start; the learners
    # began h.started_s after that.
    evals = [
        (float(e["t_s"]) - h.started_s, int(e["updates"]), float(e["loss"]), float(e["accuracy"]))
        for e in h.evals
    ]
    learner_s = [
        sum(float(ln.get(k, 0.0)) for k in ("compute_s", "push_s", "pull_s", "wait_s", "delay_s"))
        for ln in h.learners
    ]
    split = {
        k: sum(float(ln.get(k, 0.0)) for ln in h.learners)
        for k in ("compute_s", "push_s", "pull_s", "wait_s")
    }
    busy = sum(learner_s)
    return Run(
        updates=sum(int(ln["updates"]) for ln in h.learners),
        learner_s=max(learner_s),
        wall_s=max(float(ln["run_s"]) for ln in h.learners),
        evals=evals,
        split=split,
        extra={
            "push_pull_share": (split["push_s"] + split["pull_s"]) / busy if busy else math.nan,
            "staleness_mean": h.evals[-1].get("staleness_mean") if h.evals else None,
            "store_stats": {
                k: h.stats.get(k) for k in ("cas_failures", "slot_waits", "lock_wait_s", "dropped")
            },
        },
    )
