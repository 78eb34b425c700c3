"""fit()'s options: their checks, the variant's defaults, and how long a run trains.

``Options.check`` is the one place fit()'s arguments are validated (in a fixed order, so that
one bad argument always gives the same message); which variant takes which option comes from
the variant table (fastps.train.variants). ``Budget`` turns epochs / updates / a time budget
into store updates and per-learner quotas. ``Straggler`` is the injected compute delay.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastps.step_size import Constant, StalenessDistance, StepSize
from fastps.train.variants import VARIANT_OPTIONS, Variant, variant

BACKENDS = ("process", "thread", "ray")
UNBOUNDED = 2**62  # a learner's quota when only the time budget ends the run


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


def check_int(name: str, value: Any, low: int) -> None:
    """ValueError unless ``value`` is an integer (not a bool) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"fit: {name} must be an integer >= {low} (got {value!r})")


def check_staleness_policy(row: Variant, step_size: Any) -> None:
    """Refuse a staleness-dependent step size where it cannot do what it promises.

    In the coordinated variants the coordinator is the store's only writer. In sync, k-sync,
    k-batch-sync and adasync every gradient applied was computed on the current model (a late
    one is dropped), so tau is 0 by construction and a staleness policy (Inverse, Exponential,
    TailTau, StalenessDistance, a hook) would silently reduce to its tau = 0 step: refused. In
    k-async and k-batch-async the coordinator backdates its push to the oldest gradient of the
    update (``LearnerHandle.backdate``), so the policy sees the true staleness; only
    StalenessDistance is refused there (it needs the older model itself). The constant step
    (``step_size=None`` or ``Constant()``) is taken everywhere."""
    if not row.coordinated or row.local or step_size is None:
        return
    if isinstance(step_size, Constant):  # the constant step (ProjectedConstant included)
        return
    name = type(step_size).__name__ if isinstance(step_size, StepSize) else "a step_size hook"
    if row.drops_late:
        raise ValueError(
            f"fit: variant {row.name!r} applies only gradients computed on the current model "
            f"(staleness 0 by construction); a staleness-dependent step size ({name}) would "
            "always take its tau = 0 step. Use the constant step (step_size=None or Constant()) "
            "or an async variant"
        )
    if isinstance(step_size, StalenessDistance):
        raise ValueError(
            f"fit: variant {row.name!r} applies averaged gradients of older models that the "
            "store no longer keeps; StalenessDistance needs that model (use Inverse, "
            "Exponential, TailTau or the async variant)"
        )


def check_devices(devices: Sequence[str] | None) -> list[str] | None:
    """The learners' devices as torch device strings; refuses what cannot run here."""
    if devices is None:
        return None
    import torch

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


def learner_threads(learners: int) -> int:
    """Torch threads per learner so that ``learners`` of them share this process's cores
    (PyTorch's advice for P processes on N cores: floor(N / P), at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // learners)


def eval_spacing(eval_every: int | None, evals: int | None, total: int | None) -> int:
    """Updates between evaluations: ``eval_every``, else ``evals`` (10) spread over a run of
    ``total`` updates, else (only a time budget) 200."""
    if eval_every:
        return eval_every
    return max(1, total // (evals or 10)) if total else 200


@dataclass(frozen=True)
class Options:
    """fit()'s arguments after ``check``: the variant's row of the table, K and the variant's
    options with their defaults filled in, the devices as torch device strings; the rest as
    given. ``store`` holds the keyword arguments that pass through to the store."""

    variant: Variant
    learners: int
    k: int
    local_steps: int
    alpha: float
    n_fetch: int
    n_push: int
    interval_s: float
    straggler: Straggler | None
    time_budget_s: float | None
    comm_delay: float
    eval_train: int
    mode: str
    step_size: Any
    lr: float
    momentum: float
    batch_size: int
    epochs: float | None
    updates: int | None
    seed: int
    backend: str
    address: str | None
    eval_every: int | None
    evals: int | None
    checkpoint_every: int | None
    checkpoint: str | os.PathLike[str] | None
    resume_from: str | os.PathLike[str] | None
    timeout_s: float
    progress: Callable[[dict[str, Any]], None] | None
    devices: list[str] | None
    threads: int | None
    store: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def check(store: dict[str, Any], **kw: Any) -> Options:
        """Options from fit()'s keyword arguments ``kw`` (every one of them) and its store
        keyword arguments; ValueError, naming fit, for the first that is wrong."""
        row = variant(kw["variant"])
        learners = kw["learners"]
        # An option the variant would ignore is refused, not dropped silently.
        for name in ("local_steps", "alpha", "n_fetch", "n_push", "interval_s"):
            val = kw[name]
            if val is not None and not row.takes(name):
                users = VARIANT_OPTIONS[name]
                raise ValueError(f"fit: {name} is for variant {' and '.join(users)}; "
                                 f"{row.name!r} does not use it (got {name}={val!r})")  # fmt: skip
        n_fetch = 1 if kw["n_fetch"] is None else kw["n_fetch"]
        n_push = 1 if kw["n_push"] is None else kw["n_push"]
        interval_s = 1.0 if kw["interval_s"] is None else kw["interval_s"]
        if not 0.0 < interval_s < math.inf:
            raise ValueError(f"fit: interval_s must be seconds > 0 (got {interval_s})")
        local_steps = kw["local_steps"]
        if local_steps is None:
            local_steps = 4 if row.averaging else 1
        alpha = kw["alpha"]
        if alpha is None:
            alpha = 2.0 / (learners + 2)  # EASGD's elastic rate for m learners
        for name, val in (("local_steps", local_steps), ("n_fetch", n_fetch), ("n_push", n_push)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"fit: {name} must be an integer >= 1 (got {val!r})")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"fit: alpha must be in [0, 1] (got {alpha})")
        if not 0.0 <= kw["comm_delay"] < math.inf:
            raise ValueError(f"fit: comm_delay must be finite seconds >= 0 "
                             f"(got {kw['comm_delay']})")  # fmt: skip
        check_int("eval_train", kw["eval_train"], 0)
        evals, eval_every = kw["evals"], kw["eval_every"]
        if evals is not None:
            check_int("evals", evals, 1)
            if eval_every is not None:
                raise ValueError(f"fit: give eval_every or evals, not both (got eval_every="
                                 f"{eval_every}, evals={evals})")  # fmt: skip
            if kw["epochs"] is None and kw["updates"] is None and kw["time_budget_s"]:
                raise ValueError("fit: evals needs a run of known length (epochs or updates); "
                                 "with only time_budget_s give eval_every")  # fmt: skip
        if row.local and (kw["momentum"] or kw["step_size"] is not None
                          or store.get("weight_decay")):  # fmt: skip
            raise ValueError(
                f"fit: {row.name} exchanges models through the store's plain step (no momentum, "
                "weight decay or step-size policy); it takes its local steps with lr"
            )
        check_staleness_policy(row, kw["step_size"])
        k = kw["k"]
        fixed = row.fixed_k(learners)
        if fixed is not None:
            if k not in (None, fixed):
                raise ValueError(f"fit: variant {row.name!r} fixes k (got k={k})")
            k = fixed
        else:
            bound = row.k_bound(learners)
            if not isinstance(k, int) or not 1 <= k <= (10**6 if bound is None else bound):
                shown = "any" if bound is None else bound
                raise ValueError(f"fit: variant {row.name!r} needs k in [1, {shown}] (got k={k!r})")
        if kw["backend"] not in BACKENDS:
            raise ValueError(f"fit: backend must be 'process', 'thread' or 'ray' "
                             f"(got {kw['backend']!r})")  # fmt: skip
        check_int("learners", learners, 1)
        if kw["threads"] is not None:
            check_int("threads", kw["threads"], 1)
        if kw["checkpoint_every"] is not None and kw["checkpoint"] is None:
            raise ValueError("fit: checkpoint_every needs checkpoint=PATH")
        devices = check_devices(kw["devices"])
        given = {**kw, "variant": row, "k": k, "local_steps": local_steps, "alpha": alpha,
                 "n_fetch": n_fetch, "n_push": n_push, "interval_s": interval_s,
                 "devices": devices}  # fmt: skip
        return Options(store=dict(store), **given)


@dataclass(frozen=True)
class Budget:
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
    def of(opts: Options, n_train: int) -> Budget:
        """The budget of a run of ``opts`` on a training set of ``n_train`` examples."""
        per = opts.variant.family.batches_per_update(opts.k, opts.learners, opts.local_steps,
                                                     opts.n_push)  # fmt: skip
        epochs, updates = opts.epochs, opts.updates
        if updates is not None:
            check_int("updates", updates, 1)
            if epochs is not None:
                raise ValueError(f"fit: give epochs or updates, not both (got epochs={epochs}, "
                                 f"updates={updates})")  # fmt: skip
            return Budget(updates, None, per)
        if epochs is None:
            if opts.time_budget_s:
                return Budget(None, None, per)
            epochs = 1.0
        if not 0.0 < epochs < math.inf:
            raise ValueError(f"fit: epochs must be a number > 0 (got {epochs!r})")
        batches = max(1, math.ceil(epochs * n_train / opts.batch_size))
        total = max(1, math.ceil(batches / per))
        return Budget(total, batches if opts.variant.adapts else None, per)

    def quota(self, learners: int, done_before: int) -> list[int]:
        """Pushes per uncoordinated learner (async, easgd, downpour) still to make."""
        if self.total is None:
            return [UNBOUNDED] * learners
        left = max(0, self.total - done_before)
        return [left // learners + (r < left % learners) for r in range(learners)]

    def targets(self, done_before: int) -> tuple[float, float]:
        """The coordinator's caps: (absolute update count, mini-batches in this run)."""
        if self.batches is not None:  # resumed updates counted at tau_0 or K_0
            return math.inf, max(0, self.batches - done_before * self.per_update)
        return (math.inf if self.total is None else self.total), math.inf


__all__ = ["BACKENDS", "UNBOUNDED", "Budget", "Options", "Straggler", "check_devices",
           "check_int", "eval_spacing", "learner_threads"]  # fmt: skip
