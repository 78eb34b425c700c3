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


__all__ = ["COMM_KINDS", "DELAYS", "Cycles", "Delay", "harmonic"]
