"""simulate(): one run of the simulator, from its checks to its SimResult (the model:
fastps.sim's docstring and docs/simulate.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastps.sim.delays import COMM_KINDS, DELAYS, Cycles, Delay
from fastps.sim.local import Exchanges, local_sgd, predict_local, sync_time
from fastps.sim.quadratic import MODELS, Quadratic, adasync
from fastps.sim.result import SimResult, predict
from fastps.sim.traces import k_async, k_batch_async, k_batch_sync, rounds
from fastps.train.variants import SIMULATED, TABLE

# The variant table's rows that the simulator models: the spectrum (sync ... adasync), then
# periodic averaging (fastps.sim.local), which is no point of the spectrum.
PERIODIC = ("local-sgd",)
VARIANTS = (*SIMULATED, *PERIODIC)
MAX_LOCAL_STEPS = 1_000_000  # a round's P x tau step times are held at once
# How each variant's events are generated (adasync: fastps.sim.quadratic.adasync).
TRACES = {"sync": rounds, "k-sync": rounds, "k-batch-sync": k_batch_sync, "async": k_batch_async,
          "k-async": k_async, "k-batch-async": k_batch_async}  # fmt: skip


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"simulate: {msg}")


def _exchange_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, 2])  # [seed, 0]: the learners; [seed, 1]: the model


def simulate(
    variant: str,
    learners: int,
    k: int | None = None,
    *,
    delay: str = "exp",
    mu: float = 1.0,
    shift: float | None = None,
    alpha: float = 3.0,
    comm_delay: float = 0.0,
    comm_kind: str = "fixed",
    slowdown: Sequence[float] | None = None,
    times: Any = None,
    updates: int = 100_000,
    warmup: int = 0,
    seed: int = 0,
    model: str = "none",
    lr: float = 0.1,
    dim: int = 20,
    noise: float = 4.0,
    interval: float = 10.0,
    points: int = 50,
    local_steps: int | None = None,
) -> SimResult:
    """Simulate ``updates`` PS updates of ``variant`` with ``learners`` (P) learners (see above).

    ``k``: gradients per update (k-sync, k-async: 1..P; k-batch-*: any >= 1; adasync: K0;
    sync and async fix it to P and 1). Compute time X: ``delay`` in exp, shifted-exp (X = shift
    + exp(mu), shift 1 by default), pareto (shape ``alpha`` > 1, mean 1/mu), fixed (1/mu), times
    ``slowdown[l]`` for learner l; or ``times``, a scripted (P, M) table: learner l's c-th
    computation takes times[l, c % M] (times ``slowdown``). Communication D after each
    computation: ``comm_delay`` (mean; 0 for none), ``comm_kind`` fixed or exp. ``warmup``
    updates are simulated but left out of the statistics. ``model="quadratic"``: also apply each
    update as an SGD step (step ``lr``) on a ``dim``-dimensional quadratic with gradient noise
    of variance ``noise`` (see Quadratic) and report the error F(w) against time (needed by
    adasync, whose K follows F; ``interval``: time between K changes). ``points``: entries of
    ``error_curve``.

    local-sgd: ``updates`` rounds of ``local_steps`` (tau, 4 by default as in fit) local steps
    per learner, then one exchange of delay D (``comm_delay``, ``comm_kind``) that averages the
    P models (fastps.sim.local); K is P. Besides the time per update (per round) it reports the
    time per local step, sync's time per step on the same step times (tau = 1, one D per step)
    and the speedup over it, each with its closed form. It has no quadratic model.
    """
    _check(variant in VARIANTS, f"variant must be one of {', '.join(VARIANTS)} (got {variant!r})")
    _check(isinstance(learners, int) and not isinstance(learners, bool) and learners >= 1,
           f"learners must be an integer >= 1 (got {learners!r})")  # fmt: skip
    p = learners
    row = TABLE[variant]  # K's rule is the variant table's (fastps.train.variants)
    fixed, bound = row.fixed_k(p), row.k_bound(p)
    if fixed is not None:
        _check(k in (None, fixed), f"variant {variant!r} fixes k = {fixed} (got k={k})")
        k = fixed
    elif not (isinstance(k, int) and not isinstance(k, bool) and k >= 1
              and (bound is None or k <= bound)):  # fmt: skip
        shown = "any" if bound is None else str(bound)
        raise ValueError(f"simulate: variant {variant!r} needs k in [1, {shown}] (got k={k!r})")
    if variant in PERIODIC:
        local_steps = 4 if local_steps is None else local_steps
        _check(isinstance(local_steps, int) and not isinstance(local_steps, bool)
               and 1 <= local_steps <= MAX_LOCAL_STEPS,
               f"local_steps must be an integer in [1, {MAX_LOCAL_STEPS}] (got "
               f"{local_steps!r})")  # fmt: skip
        _check(model == "none", "local-sgd has no model: on the simulator's quadratic (the same "
               "for every learner, gradients linear in w) the average of the local models is "
               "exactly sync SGD's, so it would hide the cost of tau")  # fmt: skip
    else:
        _check(local_steps is None, f"local_steps applies to {', '.join(PERIODIC)} only (got "
               f"variant={variant!r}, local_steps={local_steps!r})")  # fmt: skip
    _check(delay in DELAYS, f"delay must be one of {', '.join(DELAYS)} (got {delay!r})")
    _check(math.isfinite(mu) and mu > 0, f"mu must be > 0 (got {mu})")
    if shift is None:
        shift = 1.0 if delay == "shifted-exp" else 0.0
    _check(
        delay == "shifted-exp" or shift == 0.0,
        f"shift applies to delay='shifted-exp' only (got delay={delay!r}, shift={shift})",
    )
    _check(math.isfinite(shift) and shift >= 0, f"shift must be >= 0 (got {shift})")
    _check(
        delay != "pareto" or alpha > 1, f"pareto needs alpha > 1 for a finite mean (got {alpha})"
    )
    _check(comm_kind in COMM_KINDS, f"comm_kind must be fixed or exp (got {comm_kind!r})")
    _check(math.isfinite(comm_delay) and comm_delay >= 0,
           f"comm_delay must be >= 0 (got {comm_delay})")  # fmt: skip
    _check(
        isinstance(updates, int) and updates >= 1,
        f"updates must be an integer >= 1 (got {updates!r})",
    )
    _check(
        isinstance(warmup, int) and 0 <= warmup < updates,
        f"warmup must be an integer in [0, updates) (got {warmup!r} with updates={updates})",
    )
    _check(model in MODELS, f"model must be none or quadratic (got {model!r})")
    _check(
        variant != "adasync" or model == "quadratic",
        "adasync sets K from the loss: it needs model='quadratic'",
    )
    _check(interval > 0, f"interval must be > 0 (got {interval})")
    _check(
        isinstance(points, int) and points >= 2, f"points must be an integer >= 2 (got {points!r})"
    )
    _check(isinstance(dim, int) and dim >= 1, f"dim must be an integer >= 1 (got {dim!r})")
    _check(lr > 0 and noise >= 0, f"lr must be > 0 and noise >= 0 (got lr={lr}, noise={noise})")
    slow = np.ones(p) if slowdown is None else np.asarray(slowdown, np.float64)
    _check(slow.shape == (p,), f"slowdown has {slow.size} entries, expected {p} (one per learner)")
    _check(bool(np.all(np.isfinite(slow) & (slow > 0))), "slowdown entries must be > 0")
    table = None
    if times is not None:
        table = np.asarray(times, np.float64)
        if table.ndim == 1:
            table = table[:, None]
        _check(
            table.ndim == 2 and table.shape[0] == p and table.shape[1] >= 1,
            f"times must have one row per learner: shape ({p}, M) (got {np.shape(times)})",
        )
        _check(bool(np.all(np.isfinite(table) & (table > 0))), "times entries must be > 0")

    compute = Delay(delay, mu, shift, alpha)
    comm = Delay(comm_kind, 1.0 / comm_delay) if comm_delay > 0 else None
    rng = np.random.default_rng([seed, 0])
    cyc = Cycles(p, rng, compute, comm, slow, table)
    quad = Quadratic(dim=dim, noise=noise, lr=lr) if model == "quadratic" else None
    model_rng = np.random.default_rng([seed, 1])
    losses = None
    tau = local_steps if local_steps is not None else 1
    if variant in PERIODIC:  # the exchanges' D from their own stream: the step times stay shared
        trace = local_sgd(cyc, p, tau, updates, Exchanges(comm, _exchange_rng(seed)))
    elif quad is not None and row.adapts == "k":  # adasync (checked above: it has the model)
        trace, losses = adasync(cyc, p, k, updates, quad, interval, model_rng)
    else:
        # k-async with K = 1 is async: the merged renewal processes are exact for both
        trace = TRACES["k-batch-async" if variant == "k-async" and k == 1 else variant](
            cyc, p, k, updates
        )
    if quad is not None and losses is None:
        losses = quad.run(trace, model_rng)

    w = warmup
    g0 = int(trace.k[:w].sum())
    stal = trace.staleness[g0:]
    t_start = trace.times[w - 1] if w else 0.0
    elapsed = float(trace.times[-1] - t_start)
    hist = np.bincount(stal).tolist() if stal.size else [0]
    if variant in PERIODIC:
        uniform = table is None and bool(np.all(slow == 1.0))
        local, form = predict_local(p, tau, compute, comm, uniform)
        pred = {"time": local["time"], "staleness": 0.0, "fresh": 1.0}
        form["staleness"] = "0 (every model averaged started from the last average)"
    else:
        pred, form = predict(variant, p, k, compute, comm, slow, table is not None)
    config = {"variant": variant, "learners": p, "k": k, "delay": delay, "mu": mu, "shift": shift,
              "alpha": alpha if delay == "pareto" else None, "comm_delay": comm_delay,
              "comm_kind": comm_kind if comm_delay > 0 else None,
              "slowdown": None if slowdown is None else slow.tolist(),
              "scripted": table is not None, "updates": updates, "warmup": warmup, "seed": seed,
              "model": model}  # fmt: skip
    if variant in PERIODIC:
        config.update(local_steps=tau)
    if quad is not None:
        adaptive = interval if variant == "adasync" else None
        config.update(lr=lr, dim=dim, noise=noise, interval=adaptive)
    res = SimResult(
        variant=variant, learners=p, k=k, updates=updates - w, time=float(trace.times[-1]),
        mean_time_per_update=elapsed / (updates - w),
        mean_staleness=float(stal.mean()) if stal.size else 0.0,
        fresh_fraction=float(np.mean(stal == 0)) if stal.size else 1.0,
        max_staleness=int(stal.max()) if stal.size else 0,
        staleness_hist=hist, gradients=int(stal.size),
        gradients_per_learner=np.bincount(trace.learner[g0:], minlength=p).tolist(),
        cancelled=int(trace.cancelled[w:].sum()), dropped=int(trace.dropped[w:].sum()),
        idle_fraction=float(trace.idle[w:].sum() / (p * elapsed)) if elapsed > 0 else 0.0,
        wasted_fraction=float(trace.wasted[w:].sum() / (p * elapsed)) if elapsed > 0 else 0.0,
        predicted_time_per_update=pred["time"], predicted_mean_staleness=pred["staleness"],
        predicted_fresh_fraction=pred["fresh"], formulas=form, config=config,
        mean_k=float(trace.k[w:].mean()), update_times=trace.times, update_k=trace.k,
        staleness=trace.staleness, learner=trace.learner,
    )  # fmt: skip
    if variant in PERIODIC:
        res.local_steps = tau
        res.mean_time_per_local_step = elapsed / ((updates - w) * tau)
        res.predicted_time_per_local_step = local["step"]
        # sync on the same step times: tau = 1, one D per step (the first D's are the rounds')
        base = elapsed if tau == 1 else sync_time(
            Cycles(p, np.random.default_rng([seed, 0]), compute, comm, slow, table), p,
            updates * tau, w * tau, Exchanges(comm, _exchange_rng(seed)))  # fmt: skip
        res.sync_time_per_step = base / ((updates - w) * tau)
        res.speedup = res.sync_time_per_step / res.mean_time_per_local_step
        res.predicted_speedup = local["speedup"]
    if quad is not None and losses is not None:
        res.error = losses
        res.error_final = float(losses[-1])
        res.error_tail = float(losses[len(losses) // 2 :].mean())
        if variant in ("sync", "k-sync", "k-batch-sync"):
            res.predicted_error_floor = quad.floor(k)
            form["error_floor"] = "1/2 sum_i lr v/(2 - lr lambda_i), v = noise/(dim K)"
        # log-spaced: the fast early decay and the floor both show
        idx = np.unique(np.concatenate([[0], np.geomspace(1, updates, points - 1).round()]))
        idx = idx.astype(np.int64)
        t_at = np.concatenate([[0.0], trace.times])
        res.error_curve = [[float(t_at[i]), float(losses[i])] for i in idx]
    return res


__all__ = ["TRACES", "VARIANTS", "simulate"]
