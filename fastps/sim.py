"""Runtime simulator of the sync-to-async spectrum (Dutta et al. 2018; DESIGN.md, "Coordination").

P learners compute gradients; a parameter server (PS) averages K of them into one update. Each
learner's c-th computation takes X (compute: exp(mu), Delta + exp(mu), Pareto, fixed) and then D
(communication: push and pull, fixed or exponential); the gradient reaches the PS at
start + X + D. The variants differ in who waits, who gets the new model and what an update
cancels:

============== ======================================= ========================================
variant        an update takes                         then
============== ======================================= ========================================
sync           all P gradients on the current model    everyone restarts on the new model
k-sync         the first K on the current model        everyone restarts; the others' work is
                                                       cancelled (or, when already computed and
                                                       in flight, dropped on arrival)
k-batch-sync   K from any learners on the current      contributors keep computing on the same
               model                                   model; at the update everyone restarts
async          each gradient                           the pusher pulls the new model
k-async        K from K distinct learners, any model   the K contributors waited; they restart on
                                                       the new model, the others go on (stale)
k-batch-async  K from any learners, any model          a pusher pulls whatever is current at
                                                       once (the new model if its push made the
                                                       update), never waits
adasync        k-sync with K = min(P, ceil(K0 sqrt(F0/F))) re-set every ``interval`` time units
============== ======================================= ========================================

Staleness of a gradient used in update j (0-based) = j - the version it was computed on.
Simultaneous arrivals are handled in learner order. Randomness: learner l's c-th computation
takes the c-th entry of its own stream (k-batch-sync: round r's i-th computation is entry
r*K + i), so variants run with the same seed see the same learner times; k-async with K = 1 is
exactly async and with K = P exactly sync.

Each variant has one exact implementation: order statistics per round (sync, k-sync,
k-batch-sync), merged renewal processes (async, k-batch-async), a heap of finish times
(k-async), a round loop (adasync). ``simulate`` returns a SimResult with the measurements and,
where one exists, the closed form (research/sync-async-spectrum.md, section 2.2).
Optionally each update is also applied as an SGD step to a noisy quadratic, which gives the error
against simulated wall-clock time (``model="quadratic"``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

VARIANTS = ("sync", "k-sync", "k-batch-sync", "async", "k-async", "k-batch-async", "adasync")
DELAYS = ("exp", "shifted-exp", "pareto", "fixed")
COMM_KINDS = ("fixed", "exp")
MODELS = ("none", "quadratic")
_BATCH = ("k-batch-sync", "k-batch-async")  # K may exceed P: gradients from any learners


def harmonic(n: int) -> float:
    """H_n = 1 + 1/2 + ... + 1/n (H_0 = 0)."""
    return math.fsum(1.0 / i for i in range(1, n + 1))


# -- time distributions -------------------------------------------------------------------------


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


class _Cycles:
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


# -- the variants ---------------------------------------------------------------------------------


@dataclass
class _Trace:
    """One run: per update (time, K, idle/wasted learner time, cancelled, dropped), per gradient
    in update order (staleness, learner)."""

    times: np.ndarray
    k: np.ndarray
    staleness: np.ndarray
    learner: np.ndarray
    idle: np.ndarray
    wasted: np.ndarray
    cancelled: np.ndarray
    dropped: np.ndarray


def _rounds(cyc: _Cycles, p: int, k: int, n: int) -> _Trace:
    """sync and k-sync: rounds are independent. Round r: every learner starts its r-th computation
    on the current model; the update comes with the K-th arrival; the rest is cancelled (still
    computing) or dropped (computed, in flight)."""
    times, who, idle, wasted, canc, drop = [], [], [], [], [], []
    step = cyc.block
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        x, d = cyc.cols(r0, r1)
        cyc.release(r1)
        c = (x + d).T  # (R, P)
        order = np.argsort(c, axis=1, kind="stable")  # ties: lower learner first
        rows = np.arange(r1 - r0)[:, None]
        t = c[rows[:, 0], order[:, k - 1]]
        arrived = c[rows, order[:, :k]]
        late = order[:, k:]
        times.append(t)
        who.append(order[:, :k].ravel())
        idle.append((t[:, None] - arrived).sum(1))
        wasted.append(t * (p - k))
        computed = x.T[rows, late] <= t[:, None]
        drop.append(computed.sum(1))
        canc.append((p - k) - computed.sum(1))
    dur = np.concatenate(times)
    return _Trace(np.cumsum(dur), np.full(n, k), np.zeros(n * k, np.int64),
                  np.concatenate(who), np.concatenate(idle), np.concatenate(wasted),
                  np.concatenate(canc), np.concatenate(drop))  # fmt: skip


def _k_batch_sync(cyc: _Cycles, p: int, k: int, n: int) -> _Trace:
    """Round r: learner l's i-th computation is column r*K + i of its stream; each learner keeps
    computing on the round's model; the K-th arrival (over all learners) makes the update, and
    everyone but its sender has work in progress, cancelled or (computed, in flight) dropped."""
    times, who, wasted, canc, drop = [], [], [], [], []
    step = max(1, cyc.block // k)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        R = r1 - r0
        x, d = cyc.cols(r0 * k, r1 * k)
        cyc.release(r1 * k)
        x = x.reshape(p, R, k).transpose(1, 0, 2)  # (R, P, K)
        arr = np.cumsum(x + d.reshape(p, R, k).transpose(1, 0, 2), axis=2)
        flat = arr.reshape(R, p * k)  # learner-major: ties in flat order are in learner order
        rows = np.arange(R)
        t = np.partition(flat, k - 1, axis=1)[:, k - 1]  # the K-th arrival: the update
        # The first K arrivals in (time, learner) order: all before t, then the ties at t with the
        # lowest flat index (a learner's own arrivals never tie: times are > 0).
        before = flat < t[:, None]
        ties = flat == t[:, None]
        need = k - before.sum(1)
        take = before | (ties & (np.cumsum(ties, axis=1) <= need[:, None]))
        pos = np.nonzero(take)[1].reshape(R, k)  # flat indices, ascending
        pos = np.take_along_axis(pos, np.argsort(flat[rows[:, None], pos], axis=1, kind="stable"),
                                 axis=1)  # fmt: skip
        src = pos // k  # learner of each of the K gradients, in arrival order
        trigger = src[:, -1]
        used = take.reshape(R, p, k).sum(2)
        pending = np.minimum(used, k - 1)  # the computation each learner is in at the update
        rr, ll = rows[:, None], np.arange(p)[None, :]
        start = np.where(used == 0, 0.0, arr[rr, ll, np.maximum(used - 1, 0)])
        computed = start + x[rr, ll, pending] <= t[:, None]
        other = ll != trigger[:, None]
        times.append(t)
        who.append(src.ravel())
        wasted.append(np.where(other, t[:, None] - start, 0.0).sum(1))
        drop.append((computed & other).sum(1))
        canc.append((~computed & other).sum(1))
    return _Trace(np.cumsum(np.concatenate(times)), np.full(n, k), np.zeros(n * k, np.int64),
                  np.concatenate(who), np.zeros(n), np.concatenate(wasted),
                  np.concatenate(canc), np.concatenate(drop))  # fmt: skip


def _k_batch_async(cyc: _Cycles, p: int, k: int, n: int) -> _Trace:
    """async (K = 1) and k-batch-async: nobody waits, so learner l's arrivals are the partial sums
    of its stream, independent of the others. Merge them in (time, learner) order; update j is
    made by arrival (j+1)K - 1. A learner whose previous arrival had global index m pulled the
    model of version floor((m+1)/K); its gradient, arrival g, is used in update floor(g/K)."""
    total = n * k
    base = cyc.times.mean(1) if cyc.times is not None else cyc.compute.mean
    rate = 1.0 / (cyc.slowdown * base + (cyc.comm.mean if cyc.comm is not None else 0.0))
    m = int(total * rate.max() / rate.sum() * 1.05) + 32  # the fastest learner's share, and some
    while True:
        x, d = cyc.cols(0, m)
        arr = np.cumsum(x + d, axis=1)
        horizon = arr[:, -1].min()  # every arrival up to here is known
        ok = arr <= horizon
        have = int(ok.sum())
        if have >= total:
            break
        m = int(m * 1.3 * total / max(have, 1)) + 32
    li, ci = np.nonzero(ok)
    t = arr[li, ci]
    order = np.lexsort((li, t))[:total]
    li, ci, t = li[order], ci[order], t[order]
    rank = np.full(arr.shape, -1, np.int64)
    rank[li, ci] = np.arange(total)
    prev = np.where(ci > 0, rank[li, np.maximum(ci - 1, 0)], -1)
    stal = np.arange(total) // k - (prev + 1) // k
    z = np.zeros(n)
    zi = np.zeros(n, np.int64)
    return _Trace(t[k - 1 :: k].copy(), np.full(n, k), stal, li, z, z.copy(), zi, zi.copy())


def _k_async(cyc: _Cycles, p: int, k: int, n: int) -> _Trace:
    """async (K = 1) and k-async: a heap of finish times. Update j takes the next K arrivals (from
    K distinct learners: a learner that pushed waits); those K restart on the new model."""
    width = max(64, 2 * (n * k) // p + 64)
    x, d = cyc.cols(0, width)
    cl = (x + d).tolist()
    cur = [1] * p
    ver = [0] * p
    heap = [(cl[r][0], r) for r in range(p)]
    heapq.heapify(heap)
    times = [0.0] * n
    idle = [0.0] * n
    stal = [0] * (n * k)
    who = [0] * (n * k)
    pop, push = heapq.heappop, heapq.heappush
    g = 0
    for j in range(n):
        batch = [pop(heap) for _ in range(k)]
        t = batch[-1][0]
        times[j] = t
        w = 0.0
        for ta, r in batch:
            stal[g] = j - ver[r]
            who[g] = r
            g += 1
            w += t - ta
            ver[r] = j + 1
            c = cur[r]
            if c >= len(cl[r]):
                width *= 2
                x, d = cyc.cols(0, width)
                cl = (x + d).tolist()
            push(heap, (t + cl[r][c], r))
            cur[r] = c + 1
        idle[j] = w
    zi = np.zeros(n, np.int64)
    return _Trace(np.array(times), np.full(n, k), np.array(stal, np.int64),
                  np.array(who, np.int64), np.array(idle), np.zeros(n), zi, zi.copy())  # fmt: skip


# -- the quadratic model --------------------------------------------------------------------------


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

    def run(self, trace: _Trace, rng: np.random.Generator) -> np.ndarray:
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


def _adasync(cyc: _Cycles, p: int, k0: int, n: int, model: Quadratic, interval: float,
             rng: np.random.Generator) -> tuple[_Trace, np.ndarray]:  # fmt: skip
    """K-sync (rounds as in _rounds) whose K is re-set before the first round that starts at or
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
    trace = _Trace(times, ks, np.zeros(int(ks.sum()), np.int64), np.concatenate(who), idle,
                   wasted, canc, drop)  # fmt: skip
    return trace, losses


# -- the result -----------------------------------------------------------------------------------


@dataclass
class SimResult:
    """What one simulation measured (after ``warmup`` updates) and the closed forms.

    ``predicted_*`` is None where no closed form is known for the configuration; ``formulas``
    names each one used. ``staleness_hist[s]`` counts gradients of staleness s. ``idle_fraction``
    is the share of the learners' time spent waiting for an update, ``wasted_fraction`` the share
    spent on work that was cancelled or dropped. The raw per-update arrays are kept
    (``update_times``, ``update_k``, per gradient ``staleness`` and ``learner``) but left out of
    ``to_dict``.
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
    update_times: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    update_k: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    staleness: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    learner: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    error: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Every scalar and list field (JSON-ready), without the raw arrays."""
        skip = {"update_times", "update_k", "staleness", "learner", "error"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"simulate: {msg}")


def _predict(
    variant: str, p: int, k: int, compute: Delay, comm: Delay | None, slowdown: np.ndarray,
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
    """
    _check(variant in VARIANTS, f"variant must be one of {', '.join(VARIANTS)} (got {variant!r})")
    _check(isinstance(learners, int) and not isinstance(learners, bool) and learners >= 1,
           f"learners must be an integer >= 1 (got {learners!r})")  # fmt: skip
    p = learners
    if variant in ("sync", "async"):
        fixed = p if variant == "sync" else 1
        _check(k in (None, fixed), f"variant {variant!r} fixes k = {fixed} (got k={k})")
        k = fixed
    elif not (isinstance(k, int) and not isinstance(k, bool) and k >= 1
              and (variant in _BATCH or k <= p)):  # fmt: skip
        bound = "any" if variant in _BATCH else str(p)
        raise ValueError(f"simulate: variant {variant!r} needs k in [1, {bound}] (got k={k!r})")
    _check(delay in DELAYS, f"delay must be one of {', '.join(DELAYS)} (got {delay!r})")
    _check(math.isfinite(mu) and mu > 0, f"mu must be > 0 (got {mu})")
    if shift is None:
        shift = 1.0 if delay == "shifted-exp" else 0.0
    _check(delay == "shifted-exp" or shift == 0.0,
           f"shift applies to delay='shifted-exp' only (got delay={delay!r}, shift={shift})")
    _check(math.isfinite(shift) and shift >= 0, f"shift must be >= 0 (got {shift})")
    _check(delay != "pareto" or alpha > 1,
           f"pareto needs alpha > 1 for a finite mean (got {alpha})")
    _check(comm_kind in COMM_KINDS, f"comm_kind must be fixed or exp (got {comm_kind!r})")
    _check(math.isfinite(comm_delay) and comm_delay >= 0,
           f"comm_delay must be >= 0 (got {comm_delay})")  # fmt: skip
    _check(isinstance(updates, int) and updates >= 1,
           f"updates must be an integer >= 1 (got {updates!r})")
    _check(isinstance(warmup, int) and 0 <= warmup < updates,
           f"warmup must be an integer in [0, updates) (got {warmup!r} with updates={updates})")
    _check(model in MODELS, f"model must be none or quadratic (got {model!r})")
    _check(variant != "adasync" or model == "quadratic",
           "adasync sets K from the loss: it needs model='quadratic'")
    _check(interval > 0, f"interval must be > 0 (got {interval})")
    _check(isinstance(points, int) and points >= 2,
           f"points must be an integer >= 2 (got {points!r})")
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
        _check(table.ndim == 2 and table.shape[0] == p and table.shape[1] >= 1,
               f"times must have one row per learner: shape ({p}, M) (got {np.shape(times)})")
        _check(bool(np.all(np.isfinite(table) & (table > 0))), "times entries must be > 0")

    compute = Delay(delay, mu, shift, alpha)
    comm = Delay(comm_kind, 1.0 / comm_delay) if comm_delay > 0 else None
    rng = np.random.default_rng([seed, 0])
    cyc = _Cycles(p, rng, compute, comm, slow, table)
    quad = Quadratic(dim=dim, noise=noise, lr=lr) if model == "quadratic" else None
    model_rng = np.random.default_rng([seed, 1])
    losses = None
    if variant == "adasync":
        assert quad is not None
        trace, losses = _adasync(cyc, p, k, updates, quad, interval, model_rng)
    elif variant in ("sync", "k-sync"):
        trace = _rounds(cyc, p, k, updates)
    elif variant == "k-batch-sync":
        trace = _k_batch_sync(cyc, p, k, updates)
    elif variant == "k-async" and k > 1:
        trace = _k_async(cyc, p, k, updates)
    else:
        trace = _k_batch_async(cyc, p, k, updates)
    if quad is not None and losses is None:
        losses = quad.run(trace, model_rng)

    w = warmup
    g0 = int(trace.k[:w].sum())
    stal = trace.staleness[g0:]
    t_start = trace.times[w - 1] if w else 0.0
    elapsed = float(trace.times[-1] - t_start)
    hist = np.bincount(stal).tolist() if stal.size else [0]
    pred, form = _predict(variant, p, k, compute, comm, slow, table is not None)
    config = {"variant": variant, "learners": p, "k": k, "delay": delay, "mu": mu, "shift": shift,
              "alpha": alpha if delay == "pareto" else None, "comm_delay": comm_delay,
              "comm_kind": comm_kind if comm_delay > 0 else None,
              "slowdown": None if slowdown is None else slow.tolist(),
              "scripted": table is not None, "updates": updates, "warmup": warmup, "seed": seed,
              "model": model}  # fmt: skip
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


__all__ = ["DELAYS", "MODELS", "VARIANTS", "Delay", "Quadratic", "SimResult", "harmonic",
           "simulate"]  # fmt: skip
