"""Staleness-adaptive step sizes eta(tau), computed natively on every shard update.

Pass one as ``fastps.Store(..., step_size=POLICY)``; the store's ``lr`` is eta0. The store keeps a
copy bound to its ``lr`` (and learner count) as ``store.step_size``, whose ``eta(tau, hist)``
returns exactly the float32 step the native path uses, so a policy can be plotted and checked.

- ``Constant()``: eta0.
- ``Inverse()``: eta0 / (tau + 1).
- ``Exponential(beta=None)``: eta0 * exp(-beta * tau); ``beta=None`` is FLeet's
  (2/t) ln(1 + floor(t/2)) with t = learners + 1.
- ``TailTau(a=1, warmup=None, refresh=None)`` (ASAP.SGD): eta0 * (1 + a (1 - 2 F(tau))), F the
  mid-CDF P[tau' < tau] + P[tau' = tau]/2 of the store's observed staleness, so the mean step over
  that distribution is exactly eta0. Scale 1 until ``warmup`` shard updates (15 x learners by
  default), then frozen, or rebuilt every ``refresh`` shard updates.
- ``StalenessDistance(c, eta_max)`` (Dutta et al. 2018): min(c / ||w_now - w_read||^2, eta_max).
- ``Projected.estimate(...)`` (Bhardwaj and Cong 2016): a Constant at sqrt(D_f / (M K L sigma^2)).
- any callable ``(tau, stats) -> eta``, run with the GIL for every shard update.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastps import _core


def _f32(x: float) -> float:
    """The float32 value the native path applies."""
    return float(np.float32(x))


def _check(policy: str, name: str, value: Any, *, lo: float = 0.0, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{policy}: {name} must be a number (got {type(value).__name__})")
    v = float(value)
    if not (math.isfinite(v) and lo <= v <= hi):
        rng = f"in [{lo:g}, {hi:g}]" if math.isfinite(hi) else f"finite and >= {lo:g}"
        raise ValueError(f"{policy}: {name} must be {rng} (got {v:g})")
    return v


@dataclass(frozen=True)
class StepSize:
    """Base of the policies. ``lr`` (eta0) is filled in when a Store binds the policy."""

    lr: float | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.lr is not None:
            object.__setattr__(self, "lr", _check(type(self).__name__, "lr", self.lr))

    def bind(self, lr: float, learners: int) -> StepSize:
        """A copy with eta0 = ``lr`` and learner-count defaults resolved."""
        return dataclasses.replace(self, lr=lr)

    def _eta0(self) -> float:
        if self.lr is None:
            raise ValueError(
                f"{type(self).__name__}.eta: the policy has no lr yet; use store.step_size, or "
                f"create it with lr="
            )
        return _f32(self.lr)  # the store keeps eta0 as float32

    def eta(self, tau: int, hist: Sequence[int] | None = None) -> float:
        """The step the store applies to a shard update of staleness ``tau``."""
        raise NotImplementedError

    def fill_native(self, cfg: Any) -> None:
        """Fill a _core.StepConfig with this policy (the form the native store and checkpoints
        keep)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(StepSize):
    """eta = eta0 whatever the staleness."""

    def eta(self, tau: int, hist: Sequence[int] | None = None) -> float:
        return self._eta0()

    def fill_native(self, cfg: Any) -> None:
        cfg.kind = _core.StepKind.constant


@dataclass(frozen=True)
class Inverse(StepSize):
    """eta = eta0 / (tau + 1)."""

    def eta(self, tau: int, hist: Sequence[int] | None = None) -> float:
        return _f32(self._eta0() / (tau + 1))

    def fill_native(self, cfg: Any) -> None:
        cfg.kind = _core.StepKind.inverse


def fleet_beta(learners: int) -> float:
    """FLeet's decay rate beta = (2/t) ln(1 + floor(t/2)), t = learners + 1."""
    t = learners + 1
    return (2.0 / t) * math.log(1 + t // 2)


@dataclass(frozen=True)
class Exponential(StepSize):
    """eta = eta0 * exp(-beta * tau); ``beta=None``: FLeet's rate for ``learners`` (the store's
    ``max_learners`` unless given)."""

    beta: float | None = None
    learners: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta is not None:
            object.__setattr__(self, "beta", _check("Exponential", "beta", self.beta))
        if self.learners is not None and (not isinstance(self.learners, int) or self.learners < 1):
            raise ValueError(
                f"Exponential: learners must be an integer >= 1 (got {self.learners!r})"
            )

    def bind(self, lr: float, learners: int) -> StepSize:
        beta = self.beta if self.beta is not None else fleet_beta(self.learners or learners)
        return dataclasses.replace(self, lr=lr, beta=beta)

    def eta(self, tau: int, hist: Sequence[int] | None = None) -> float:
        if self.beta is None:
            raise ValueError("Exponential.eta: beta is not resolved yet; use store.step_size")
        return _f32(self._eta0() * math.exp(-self.beta * float(tau)))

    def fill_native(self, cfg: Any) -> None:
        cfg.kind = _core.StepKind.exponential
        cfg.beta = self.beta


def mid_cdf(hist: Sequence[int], tau: int) -> float:
    """F(tau) = P[tau' < tau] + P[tau' = tau] / 2 over ``hist`` (its last bin collects every
    tau >= len(hist) - 1), evaluated exactly as the native table is built."""
    b = min(int(tau), len(hist) - 1)
    total = int(sum(hist))
    if total == 0:
        return 0.5
    cum = int(sum(hist[:b]))
    return (2 * cum + int(hist[b])) / (2 * total)  # exact ints, one rounding, as in C++


@dataclass(frozen=True)
class TailTau(StepSize):
    """TAIL-tau (ASAP.SGD): eta = eta0 * (1 + a * (1 - 2 F(tau))), F the mid-CDF.

    ``warmup``: shard updates with scale 1 before the CDF is built (default 15 x learners, the
    store's ``max_learners``). ``refresh``: rebuild the CDF every ``refresh`` shard updates after
    that (default: frozen). The histogram the current CDF came from is
    ``store.stats()["step_hist"]`` (None before the warm-up ends).
    """

    a: float = 1.0
    warmup: int | None = None
    refresh: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "a", _check("TailTau", "a", self.a, hi=1.0))
        for name in ("warmup", "refresh"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"TailTau: {name} must be an integer >= 1 or None (got {v!r})")

    def bind(self, lr: float, learners: int) -> StepSize:
        return dataclasses.replace(self, lr=lr, warmup=self.warmup or 15 * learners)

    def scale(self, tau: int, hist: Sequence[int] | None = None) -> float:
        """1 + a (1 - 2 F(tau)); 1 without a histogram (before the warm-up ends)."""
        if hist is None:
            return 1.0
        return 1.0 + self.a * (1.0 - 2.0 * mid_cdf(hist, tau))

    def eta(self, tau: int, hist: Sequence[int] | None = None) -> float:
        return _f32(self._eta0() * self.scale(tau, hist))

    def fill_native(self, cfg: Any) -> None:
        cfg.kind = _core.StepKind.tail_tau
        cfg.a = self.a
        cfg.warmup = self.warmup or 1
        cfg.refresh = self.refresh or 0


@dataclass(frozen=True)
class StalenessDistance(StepSize):
    """Dutta et al. 2018: eta = min(c / ||w_now - w_read||^2, eta_max) per shard, eta_max at
    distance 0. eta0 (``lr``) is not used. w_read is what the learner's last pull read: kept
    pinned in leashed mode (3 slots per learner instead of 2), copied at pull in the others."""

    c: float = 0.0
    eta_max: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "c", _check("StalenessDistance", "c", self.c))
        object.__setattr__(self, "eta_max", _check("StalenessDistance", "eta_max", self.eta_max))

    def eta(
        self, tau: int, hist: Sequence[int] | None = None, *, dist2: float | None = None
    ) -> float:
        if dist2 is None:
            raise ValueError("StalenessDistance.eta: pass dist2=||w_now - w_read||^2")
        return _f32(self.eta_max if dist2 == 0 else min(self.c / dist2, self.eta_max))

    def fill_native(self, cfg: Any) -> None:
        cfg.kind = _core.StepKind.distance
        cfg.c = self.c
        cfg.eta_max = self.eta_max


@dataclass(frozen=True)
class Hook(StepSize):
    """A Python callable ``fn(tau, stats) -> eta``; ``stats`` holds shard, learner, version and
    version_read. It runs with the GIL once per shard update (cost: bench/bench_policies.py). A
    hook that raises, or returns a non-finite or negative value, leaves that shard unchanged."""

    fn: Callable[[int, dict[str, int]], float] | None = None

    def eta(
        self, tau: int, hist: Sequence[int] | None = None, *, stats: dict[str, int] | None = None
    ) -> float:
        if self.fn is None:
            raise ValueError("Hook.eta: no callable in this process")
        return _f32(self.fn(tau, stats or {}))

    def fill_native(self, cfg: Any) -> None:
        cfg.kind = _core.StepKind.hook


def as_policy(step_size: Any) -> StepSize:
    """A StepSize from a policy, a callable (a Hook) or None (Constant)."""
    if step_size is None:
        return Constant()
    if isinstance(step_size, StepSize):
        return step_size
    if callable(step_size):
        return Hook(fn=step_size)
    raise TypeError(
        f"Store: step_size must be a fastps.step_size policy or a callable (tau, stats) -> eta "
        f"(got {type(step_size).__name__})"
    )


def from_native(cfg: Any, lr: float) -> StepSize:
    """The bound policy described by a _core.StepConfig (for stores attached by name)."""
    k = cfg.kind
    if k == _core.StepKind.inverse:
        return Inverse(lr=lr)
    if k == _core.StepKind.exponential:
        return Exponential(beta=cfg.beta, lr=lr)
    if k == _core.StepKind.tail_tau:
        return TailTau(a=cfg.a, warmup=cfg.warmup, refresh=cfg.refresh or None, lr=lr)
    if k == _core.StepKind.distance:
        return StalenessDistance(c=cfg.c, eta_max=cfg.eta_max, lr=lr)
    if k == _core.StepKind.hook:
        return Hook(lr=lr)
    return Constant(lr=lr)


@dataclass(frozen=True)
class ProjectedConstant(Constant):
    """The Constant that Projected.estimate returns, with the figures it came from."""

    D_f: float = 0.0
    sigma2: float = 0.0
    L: float = 0.0
    M: int = 1
    K: int = 1

    @property
    def alpha(self) -> float:
        """alpha = sqrt(K sigma^2 / (M L D_f)): guarantees for 1 and p learners differ by ~p/alpha."""
        return math.sqrt(self.K * self.sigma2 / (self.M * self.L * self.D_f))

    def p_over_alpha(self, learners: int) -> float:
        return learners / self.alpha


class Projected:
    """Bhardwaj and Cong (2016): the learning rate of the linear-speedup analysis,
    eta = sqrt(D_f / (M K L sigma^2)), from probe estimates."""

    @staticmethod
    def estimate(
        loss_fn: Callable[[np.ndarray, Any], tuple[float, np.ndarray]],
        params: Any,
        batches: Sequence[Any],
        updates: int,
        *,
        batch_size: int | None = None,
        probes: int = 4,
        probe_lr: float = 0.01,
    ) -> ProjectedConstant:
        """Estimate the projected rate.

        ``loss_fn(x, batch) -> (loss, grad)`` at parameters ``x`` (float64 numpy) for one
        mini-batch. ``params``: x1. ``batches``: the probe mini-batches (at least 2).
        ``updates``: K, the number of updates planned. ``batch_size``: M (default
        ``len(batches[0])``). Probe points: x1 and ``probes - 1`` steps of full-probe gradient
        descent with ``probe_lr``. D_f = f(x1) (taking f(x*) = 0), sigma^2 = the largest
        observed mini-batch gradient variance E||G(x, z) - mean G(x)||^2 over probe points, L =
        the largest ||g(x) - g(y)|| / ||x - y|| over pairs of probe points.
        """
        if len(batches) < 2:
            raise ValueError(f"Projected.estimate: needs at least 2 batches (got {len(batches)})")
        if not isinstance(updates, int) or updates < 1:
            raise ValueError(
                f"Projected.estimate: updates must be an integer >= 1 (got {updates!r})"
            )
        if probes < 2:
            raise ValueError(f"Projected.estimate: probes must be >= 2 (got {probes})")
        if batch_size is None:
            if not hasattr(batches[0], "__len__"):
                raise ValueError("Projected.estimate: pass batch_size (the batches have no len())")
            batch_size = len(batches[0])
        M = int(batch_size)
        x = np.asarray(params, dtype=np.float64).copy()
        points, means, sigma2, D_f = [], [], 0.0, 0.0
        for j in range(probes):
            losses, grads = zip(*(loss_fn(x, b) for b in batches))
            G = np.stack([np.asarray(g, dtype=np.float64) for g in grads])
            mean = G.mean(axis=0)
            sigma2 = max(sigma2, float(np.mean(np.sum((G - mean) ** 2, axis=1))))
            if j == 0:
                D_f = float(np.mean(losses))
            points.append(x.copy())
            means.append(mean)
            x = x - probe_lr * mean
        L = 0.0
        for i in range(probes):
            for k in range(i + 1, probes):
                dx = np.linalg.norm(points[i] - points[k])
                if dx > 0:
                    L = max(L, float(np.linalg.norm(means[i] - means[k]) / dx))
        if not (D_f > 0 and sigma2 > 0 and L > 0):
            raise ValueError(
                f"Projected.estimate: needs D_f, sigma^2 and L > 0 (got D_f={D_f:g}, "
                f"sigma^2={sigma2:g}, L={L:g})"
            )
        eta = math.sqrt(D_f / (M * updates * L * sigma2))
        return ProjectedConstant(lr=eta, D_f=D_f, sigma2=sigma2, L=L, M=M, K=updates)


__all__ = [
    "Constant", "Exponential", "Hook", "Inverse", "Projected", "ProjectedConstant",
    "StalenessDistance", "StepSize", "TailTau", "fleet_beta", "mid_cdf",
]  # fmt: skip
