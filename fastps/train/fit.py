"""fit(): train a torch model with P asynchronous learners through a fastps Store.

Each learner (a process by default, a thread, or a Ray actor) holds its own copy of the model
and an AsyncOptimizer, draws its own shuffled mini-batches, and loops: forward and backward,
then its variant's step (push the gradient, hand it to the coordinator, or take local steps and
exchange models). The parent evaluates the store's parameters on the test set as training
goes, writes checkpoints, and collects each learner's time split (compute / push / pull /
wait). fit() only wires the rooms of fastps.train together:

- variants.py: the table of variants (options, K, the family class that knows its step)
- options.py: fit()'s checks and defaults (Options), the run's length (Budget), Straggler
- learner.py: the learner loop; coordinator.py: the coordinator thread
- run.py: the parent's run (supervision, evaluations, checkpoints); history.py: History
- backends/: processes, threads (local.py) and Ray actors (ray_actors.py) behind one interface
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastps.train.backends import backend_class
from fastps.train.history import History, mean_staleness
from fastps.train.options import Options, Straggler, learner_threads
from fastps.train.run import execute
from fastps.train.variants import AVERAGING, CANCELLING, LOCAL, VARIANT_OPTIONS, VARIANTS

if TYPE_CHECKING:
    import torch


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
    ``progress`` is called about 20 times a second with {"updates", "total", "started"}
    ("total": the run's store updates, estimated at tau_0 or K_0 for adacomm and adasync, None
    with only a time budget; "started": False while the learners set up, True once all have
    started), and with each evaluation record (which has "accuracy").
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
    opts = Options.check(
        store_kwargs, learners=learners, variant=variant, k=k, straggler=straggler,
        local_steps=local_steps, alpha=alpha, n_fetch=n_fetch, n_push=n_push,
        interval_s=interval_s, time_budget_s=time_budget_s, comm_delay=comm_delay,
        eval_train=eval_train, mode=mode, step_size=step_size, lr=lr, momentum=momentum,
        batch_size=batch_size, epochs=epochs, updates=updates, seed=seed, backend=backend,
        address=address, eval_every=eval_every, evals=evals, checkpoint_every=checkpoint_every,
        checkpoint=checkpoint, resume_from=resume_from, timeout_s=timeout_s, progress=progress,
        devices=devices, threads=threads,
    )  # fmt: skip
    cls = backend_class(opts.backend)
    cls.check(opts)
    return execute(model_fn, data, opts, cls(opts))


__all__ = ["AVERAGING", "CANCELLING", "LOCAL", "VARIANTS", "VARIANT_OPTIONS", "History",
           "Straggler", "fit", "learner_threads", "mean_staleness"]  # fmt: skip
