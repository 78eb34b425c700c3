"""Time distributions of the simulator: a learner's compute time X and communication time D
(Delay, with the order statistics the closed forms use), and the per-learner random streams
the variants draw them from (Cycles)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DELAYS = ("exp", "shifted-exp", "pareto", "fixed")
COMM_KINDS = ("fixed", "exp")


def harmonic(n: int) -> float:
    """H_n = 1 + 1/2 + ... + 1/n (H_0 = 0)."""
    return math.fsum(1.0 / i for i in range(1, n + 1))


def erlang_max(p: int, tau: int) -> float:
    """E[max of p independent Erlang(tau, rate 1) sums] = integral_0^inf (1 - F(u)^p) du, with
    1 - F(u) = e^-u sum_(n<tau) u^n/n! (integer tau), by Simpson's rule. numpy only; tau = 1
    gives H_p, p = 1 gives tau.

    Below lo = tau - 11 sqrt(tau) - 10, F(u) < e^-60 and the integrand is 1; past the grid's end
    p (1 - F) < 1e-20. On the grid, the Poisson terms u^n e^-u/n! with n < lo - 10 sqrt(end)
    are each below e^-50 of the largest and skipped, so the cost grows as sqrt(tau)."""
    if p == 1:
        return float(tau)
    lo = max(0.0, tau - 11.0 * math.sqrt(tau) - 10.0)
    end = tau + 12.0 * math.sqrt(tau) + 50.0 + math.log(p)
    u = np.linspace(lo, end, 40_001 if tau < 50 else 8_001)  # features of width sqrt(tau)
    logu = np.log(np.maximum(u, 1e-300))
    tail = np.zeros_like(u)  # 1 - F(u), summed term by term in logs (no overflow at large tau)
    for n in range(max(0, int(lo - 10.0 * math.sqrt(end))), tau):
        tail += np.exp(n * logu - u - math.lgamma(n + 1)) if n else np.exp(-u)
    h = -np.expm1(p * np.log1p(-np.minimum(tail, 1.0 - 1e-16)))  # 1 - F^p, exact for small tails
    w = np.ones_like(u)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return lo + float(np.dot(w, h) * (u[1] - u[0]) / 3.0)


@dataclass(frozen=True)
class Delay:
    """A learner's time per gradient: ``kind`` with mean ``1/mu`` (plus ``shift`` for shifted-exp).

    exp: X ~ exp(mu). shifted-exp: X = shift + exp(mu). pareto: shape ``alpha`` > 1, scale
    x_m = (alpha - 1) / (alpha mu) so that E[X] = 1/mu. fixed: X = 1/mu.
    """

    kind: str = "exp"
    mu: float = 1.0
    shift: float = 0.0
    alpha: float = 3.0

    @property
    def mean(self) -> float:
        return self.shift + 1.0 / self.mu

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        if self.kind in ("exp", "shifted-exp"):
            return self.shift + rng.exponential(1.0 / self.mu, shape)
        if self.kind == "pareto":
            xm = (self.alpha - 1.0) / (self.alpha * self.mu)
            return xm * (1.0 + rng.pareto(self.alpha, shape))
        return np.full(shape, 1.0 / self.mu)

    def mean_max(self, p: int, tau: int) -> float | None:
        """E[Ybar_(p:p)], the largest of p learners' means of tau draws (a local-SGD round's
        compute per step); None for pareto with tau > 1 (no closed form of the mean's law).

        exp: the mean is Gamma(tau, scale 1/(mu tau)), so (1/(mu tau)) E[max of p Erlang(tau)];
        shifted-exp adds the shift; fixed: 1/mu. tau = 1 is order_stat(p, p) (Pareto's too)."""
        if tau == 1:
            return self.order_stat(p, p)
        if self.kind in ("exp", "shifted-exp"):
            return self.shift + erlang_max(p, tau) / (self.mu * tau)
        if self.kind == "fixed":
            return 1.0 / self.mu
        return None

    def order_stat(self, k: int, p: int) -> float | None:
        """E[X_{k:p}], the k-th smallest of p draws (None where no closed form is used)."""
        if self.kind in ("exp", "shifted-exp"):
            return self.shift + (harmonic(p) - harmonic(p - k)) / self.mu
        if self.kind == "fixed":
            return 1.0 / self.mu
        a, xm = self.alpha, (self.alpha - 1.0) / (self.alpha * self.mu)
        if p - k + 1 <= 1.0 / a:
            return math.inf
        # Pareto(x_m, a): E[X_{k:p}] = x_m p!/(p-k)! Gamma(p-k+1-1/a) / Gamma(p+1-1/a)
        lg = math.lgamma
        return xm * math.exp(lg(p + 1) - lg(p - k + 1) + lg(p - k + 1 - 1 / a) - lg(p + 1 - 1 / a))


class Cycles:
    """Per-learner streams: learner l's c-th computation takes x[l, c] then d[l, c].

    Random streams are drawn in blocks of columns, in order, so the values do not depend on how
    many columns a variant asks for. A scripted table (``times``) repeats along the columns.
    """

    def __init__(self, p: int, rng: np.random.Generator, compute: Delay, comm: Delay | None,
                 slowdown: np.ndarray, times: np.ndarray | None) -> None:  # fmt: skip
        self.p, self.rng, self.compute, self.comm = p, rng, compute, comm
        self.slowdown, self.times = slowdown, times
        self.block = max(256, min(8192, (1 << 20) // p))
        self.xs: list[np.ndarray] = []
        self.ds: list[np.ndarray] = []
        self.base = 0  # column index of xs[0] (blocks before it were released)

    def _grow(self, upto: int) -> None:
        while self.base + self.block * len(self.xs) < upto:
            start = self.base + self.block * len(self.xs)
            shape = (self.p, self.block)
            if self.times is not None:
                cols = np.arange(start, start + self.block) % self.times.shape[1]
                x = self.times[:, cols]
            else:
                x = self.compute.sample(self.rng, shape)
            d = self.comm.sample(self.rng, shape) if self.comm is not None else np.zeros(shape)
            self.xs.append(x * self.slowdown[:, None])
            self.ds.append(d)

    def cols(self, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        """Compute and communication times of columns [c0, c1): two (P, c1 - c0) arrays."""
        self._grow(c1)
        b0, b1 = (c0 - self.base) // self.block, (c1 - 1 - self.base) // self.block + 1
        x = np.concatenate(self.xs[b0:b1], axis=1)
        d = np.concatenate(self.ds[b0:b1], axis=1)
        off = c0 - self.base - b0 * self.block
        return x[:, off : off + c1 - c0], d[:, off : off + c1 - c0]

    def release(self, c: int) -> None:
        """Columns before c are no longer needed."""
        while self.xs and self.base + self.block <= c:
            self.xs.pop(0)
            self.ds.pop(0)
            self.base += self.block


__all__ = ["COMM_KINDS", "DELAYS", "Cycles", "Delay", "erlang_max", "harmonic"]
