"""What a simulation measured (SimResult) and the closed forms it is compared with
(research/sync-async-spectrum.md, section 2.2)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastps.sim.delays import Delay, harmonic


@dataclass
class SimResult:
    """What one simulation measured (after ``warmup`` updates) and the closed forms.

    ``predicted_*`` is None where no closed form is known for the configuration; ``formulas``
    names each one used. ``staleness_hist[s]`` counts gradients of staleness s. ``idle_fraction``
    is the share of the learners' time spent waiting for an update, ``wasted_fraction`` the share
    spent on work that was cancelled or dropped. The raw per-update arrays are kept
    (``update_times``, ``update_k``, per gradient ``staleness`` and ``learner``) but left out of
    ``to_dict``.

    local-sgd only (None otherwise): ``local_steps`` (tau); ``mean_time_per_local_step`` (the
    time per update is per round of tau steps); ``sync_time_per_step``, sync's time per step on
    the same step times (tau = 1, one D per step); ``speedup`` = sync_time_per_step /
    mean_time_per_local_step; and the closed forms ``predicted_time_per_local_step``,
    ``predicted_speedup``.
    """

    variant: str
    learners: int
    k: int
    updates: int
    time: float
    mean_time_per_update: float
    mean_staleness: float
    fresh_fraction: float
    max_staleness: int
    staleness_hist: list[int]
    gradients: int
    gradients_per_learner: list[int]
    cancelled: int
    dropped: int
    idle_fraction: float
    wasted_fraction: float
    predicted_time_per_update: float | None
    predicted_mean_staleness: float | None
    predicted_fresh_fraction: float | None
    formulas: dict[str, str]
    config: dict[str, Any]
    mean_k: float = 0.0
    error_final: float | None = None
    error_tail: float | None = None
    predicted_error_floor: float | None = None
    error_curve: list[list[float]] | None = None
    local_steps: int | None = None
    mean_time_per_local_step: float | None = None
    predicted_time_per_local_step: float | None = None
    sync_time_per_step: float | None = None
    speedup: float | None = None
    predicted_speedup: float | None = None
    update_times: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    update_k: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    staleness: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    learner: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    error: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Every scalar and list field (JSON-ready), without the raw arrays."""
        skip = {"update_times", "update_k", "staleness", "learner", "error"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}


def predict(
    variant: str,
    p: int,
    k: int,
    compute: Delay,
    comm: Delay | None,
    slowdown: np.ndarray,
    scripted: bool,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Closed forms (research/sync-async-spectrum.md 2.2) where they hold exactly."""
    out: dict[str, float | None] = {"time": None, "staleness": None, "fresh": None}
    form: dict[str, str] = {}
    uniform = not scripted and bool(np.all(slowdown == 1.0))
    d_fixed = comm is None or comm.kind == "fixed"
    dmean = comm.mean if comm is not None else 0.0
    exp_only = compute.kind == "exp" and comm is None

    def order_stat(kk: int) -> tuple[float, str] | None:  # E[(X + D)_{K:P}] and its formula
        if not uniform:
            return None
        hk = harmonic(p) - harmonic(p - kk)
        plus_d = " + D" if comm is not None else ""
        if d_fixed:
            e = compute.order_stat(kk, p)
            if e is None:
                return None
            text = {"exp": "(H_P - H_(P-K))/mu", "shifted-exp": "Delta + (H_P - H_(P-K))/mu",
                    "pareto": "E[X_(K:P)] of Pareto(x_m, alpha)", "fixed": "1/mu"}  # fmt: skip
            return e + dmean, text[compute.kind] + plus_d
        if compute.kind == "fixed":  # 1/mu + exp: a shifted exponential
            return 1.0 / compute.mu + hk * dmean, "1/mu + (H_P - H_(P-K)) E[D]"
        return None

    if variant in ("sync", "k-sync") or (variant == "k-async" and k == p):
        got = order_stat(k)
        if got is not None:
            out["time"], form["time"] = got
            if variant == "k-async":
                form["time"] += " (K = P: as sync)"
    elif variant in ("async", "k-batch-async") or (variant == "k-async" and k == 1):
        if not scripted:  # renewal: each learner delivers at rate 1/E[its X + D]
            rate = float(np.sum(1.0 / (slowdown * compute.mean + dmean)))
            out["time"] = k / rate
            tail = " + D" if comm is not None else ""
            form["time"] = f"K / sum_l 1/E[X_l{tail}]" + (f" = K E[X{tail}]/P" if uniform else "")
    elif variant == "k-async" and exp_only and uniform:
        out["time"] = (harmonic(p) - harmonic(p - k)) / compute.mu
        form["time"] = "(H_P - H_(P-K))/mu (memoryless: as K-sync)"
    elif variant == "k-batch-sync" and uniform:
        if exp_only:
            out["time"] = k / (p * compute.mu)
            form["time"] = "K/(P mu) (a Poisson stream of rate P mu)"
        elif compute.kind == "fixed" and d_fixed:
            out["time"] = math.ceil(k / p) * (1.0 / compute.mu + dmean)
            form["time"] = "ceil(K/P) (x + d)"
    if variant in ("sync", "k-sync", "k-batch-sync", "adasync"):
        out["staleness"], out["fresh"] = 0.0, 1.0
        form["staleness"] = "0 (every gradient is on the current model)"
    elif variant in ("async", "k-async"):
        out["staleness"] = p / k - 1
        form["staleness"] = "P/K - 1 (steady state, any times)"
        if exp_only and uniform:
            out["fresh"] = k / p
            form["fresh"] = "K/P (exponential times)"
    else:
        out["staleness"] = (p - 1) / k
        form["staleness"] = "(P - 1)/K (steady state, any times)"
    return out, form


__all__ = ["SimResult", "predict"]
