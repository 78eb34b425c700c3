"""The variants' exact event sequences (one implementation each): order statistics per round
(sync, k-sync, k-batch-sync), merged renewal processes (async, k-batch-async), a heap of finish
times (k-async). Each returns a Trace: per update and per gradient, what happened."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from fastps.sim.delays import Cycles


@dataclass
class Trace:
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


def rounds(cyc: Cycles, p: int, k: int, n: int) -> Trace:
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
    return Trace(np.cumsum(dur), np.full(n, k), np.zeros(n * k, np.int64),
                  np.concatenate(who), np.concatenate(idle), np.concatenate(wasted),
                  np.concatenate(canc), np.concatenate(drop))  # fmt: skip


def k_batch_sync(cyc: Cycles, p: int, k: int, n: int) -> Trace:
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
    return Trace(np.cumsum(np.concatenate(times)), np.full(n, k), np.zeros(n * k, np.int64),
                  np.concatenate(who), np.zeros(n), np.concatenate(wasted),
                  np.concatenate(canc), np.concatenate(drop))  # fmt: skip


def k_batch_async(cyc: Cycles, p: int, k: int, n: int) -> Trace:
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
    return Trace(t[k - 1 :: k].copy(), np.full(n, k), stal, li, z, z.copy(), zi, zi.copy())


def k_async(cyc: Cycles, p: int, k: int, n: int) -> Trace:
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
    return Trace(np.array(times), np.full(n, k), np.array(stal, np.int64),
                  np.array(who, np.int64), np.array(idle), np.zeros(n), zi, zi.copy())  # fmt: skip


__all__ = ["Trace", "k_async", "k_batch_async", "k_batch_sync", "rounds"]
