"""The noisy quadratic the simulator can train along a trace (error against simulated time),
and adasync, whose K follows that error."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fastps.sim.delays import Cycles
from fastps.sim.traces import Trace

MODELS = ("none", "quadratic")


@dataclass(frozen=True)
class Quadratic:
    """F(w) = 1/2 sum_i lambda_i w_i^2, lambda evenly spaced in [lam_min, lam_max], minimum 0.

    A learner's gradient at w is lambda * w + xi with xi ~ N(0, noise / dim per coordinate) (the
    variance of one mini-batch gradient is ``noise``). An update averages its K gradients, each
    taken at the model its learner read: w_{j+1} = w_j - (lr / K) sum_l g(w_{j - tau_l}).
    """

    dim: int = 20
    lam_min: float = 0.2
    lam_max: float = 2.0
    noise: float = 4.0
    lr: float = 0.1
    w0: float = 3.0

    @property
    def lam(self) -> np.ndarray:
        return np.linspace(self.lam_min, self.lam_max, self.dim)

    def loss(self, w: np.ndarray) -> np.ndarray:
        return 0.5 * (w * w) @ self.lam

    def floor(self, k: int) -> float:
        """E[F] in steady state for fresh gradients averaged K at a time (sync variants): each
        coordinate follows w <- (1 - lr lam) w - lr xi_K, so E[w^2] = lr v / (lam (2 - lr lam))
        with v = noise / (dim K)."""
        v = self.noise / (self.dim * k)
        return float(0.5 * np.sum(self.lr * v / (2.0 - self.lr * self.lam)))

    def run(self, trace: Trace, rng: np.random.Generator) -> np.ndarray:
        """F(w_j) for j = 0..n along the trace's staleness."""
        n = len(trace.times)
        lam, lr = self.lam, self.lr
        hist = np.empty((n + 1, self.dim))
        hist[0] = self.w0
        ks = trace.k
        noise = rng.standard_normal((n, self.dim)) * np.sqrt(self.noise / self.dim / ks)[:, None]
        ends = np.cumsum(ks)
        if not trace.staleness.any():  # fresh gradients: w_{j+1} = (1 - lr lam) w_j - lr xi
            for j in range(n):
                hist[j + 1] = hist[j] * (1.0 - lr * lam) - lr * noise[j]
        else:
            src = np.repeat(np.arange(n), ks) - trace.staleness
            for j in range(n):
                reads = hist[src[ends[j] - ks[j] : ends[j]]]
                hist[j + 1] = hist[j] - (lr / ks[j]) * lam * reads.sum(0) - lr * noise[j]
        return self.loss(hist)


def adasync(cyc: Cycles, p: int, k0: int, n: int, model: Quadratic, interval: float,
             rng: np.random.Generator) -> tuple[Trace, np.ndarray]:  # fmt: skip
    """K-sync (rounds as in rounds) whose K is re-set before the first round that starts at or
    after l * interval, to min(P, ceil(K0 sqrt(F(w_0) / F(w)))) with w the model then."""
    lam, lr = model.lam, model.lr
    shrink = 1.0 - lr * lam
    w = np.full(model.dim, model.w0)
    f0 = float(model.loss(w))
    losses = np.empty(n + 1)
    losses[0] = f0
    xi = rng.standard_normal((n, model.dim)) * math.sqrt(model.noise / model.dim)
    k, t, nxt = k0, 0.0, interval
    times, ks = np.empty(n), np.empty(n, np.int64)
    idle, wasted = np.empty(n), np.empty(n)
    canc, drop = np.empty(n, np.int64), np.empty(n, np.int64)
    who: list[np.ndarray] = []
    j = 0
    while j < n:
        b1 = min(n, (j // cyc.block + 1) * cyc.block)  # the rest of this block of rounds
        x, d = cyc.cols(j, b1)
        c, x = (x + d).T, x.T
        order = np.argsort(c, axis=1, kind="stable")  # the same whatever K is
        rows = np.arange(len(c))
        i = 0
        while i < len(c):
            if t >= nxt:
                f = float(losses[j])
                k = max(1, min(p, math.ceil(k0 * math.sqrt(f0 / f)))) if f > 0 else p
                while nxt <= t:
                    nxt += interval
            # rounds i.. with this K, up to the first that starts at or after nxt
            width = 64
            while True:
                seg = rows[i : i + width]
                dur = c[seg, order[seg, k - 1]]
                end = t + np.cumsum(dur)
                over = np.nonzero(end[:-1] >= nxt)[0]
                if over.size or i + width >= len(c):
                    r = int(over[0]) + 1 if over.size else len(seg)
                    break
                width *= 2
            seg, dur, end = seg[:r], dur[:r], end[:r]
            sl = slice(j, j + r)
            times[sl], ks[sl] = end, k
            idle[sl] = dur * k - c[seg[:, None], order[seg, :k]].sum(1)
            wasted[sl] = dur * (p - k)
            done = (x[seg[:, None], order[seg, k:]] <= dur[:, None]).sum(1)
            drop[sl], canc[sl] = done, p - k - done
            who.append(order[seg, :k].ravel())
            step = lr / math.sqrt(k)
            for q in range(j, j + r):  # fresh gradients averaged K at a time
                w = w * shrink - step * xi[q]
                losses[q + 1] = model.loss(w)
            t = float(end[-1])
            i, j = i + r, j + r
        cyc.release(j)
    trace = Trace(times, ks, np.zeros(int(ks.sum()), np.int64), np.concatenate(who), idle,
                   wasted, canc, drop)  # fmt: skip
    return trace, losses


__all__ = ["MODELS", "Quadratic", "adasync"]
