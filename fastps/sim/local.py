"""local-sgd: periodic averaging (research/sync-async-spectrum.md 3.3, the runtime model shared
with AdaComm). Each of the P learners takes tau local steps on its own model, learner l's k-th
step of round r taking column r tau + k of its own stream (the same times as the other variants
with the same seed); then one exchange of delay D averages the P models. A round lasts
max_l sum_k Y_(l,k) + D, and a learner that finishes its tau steps first waits (idle).

Closed forms (equal learners, no scripted times), per local step:
E[T] = E[Ybar_(P:P)] + E[D]/tau, and the speedup over sync (tau = 1 in the same model, one D per
step) is (E[Y_(P:P)] + E[D]) / (E[Ybar_(P:P)] + E[D]/tau). E[Ybar_(P:P)] is Delay.mean_max.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fastps.sim.delays import Cycles, Delay
from fastps.sim.traces import Trace


class Exchanges:
    """D of the exchanges in order: zero, fixed, or exponential from its own stream (``rng``), so
    the learners' step times are those of the other variants whatever the kind of D. Drawn in
    chunks (``take``), the values do not depend on the chunk sizes."""

    def __init__(self, comm: Delay | None, rng: np.random.Generator) -> None:
        self.comm, self.rng = comm, rng

    def take(self, n: int) -> np.ndarray:
        return np.zeros(n) if self.comm is None else self.comm.sample(self.rng, (n,))


def rounds(
    cyc: Cycles, p: int, tau: int, n: int, d: Exchanges
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Rounds 0..n-1 in chunks: (durations, idle learner time) of each. Round r lasts
    max_l sum_k Y_(l, r tau + k) + D_r; a learner idles from the end of its tau steps to the
    slowest's."""
    step = max(1, cyc.block // tau)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        x, _ = cyc.cols(r0 * tau, r1 * tau)  # per-learner D is not used: one D per exchange
        cyc.release(r1 * tau)
        s = x.reshape(p, r1 - r0, tau).sum(2)  # (P, R): each learner's round of tau steps
        top = s.max(0)
        yield top + d.take(r1 - r0), (top[None, :] - s).sum(0)


def local_sgd(cyc: Cycles, p: int, tau: int, n: int, d: Exchanges) -> Trace:
    """n rounds of tau local steps (``rounds``). Every model averaged was started from the last
    average (staleness 0); nothing is cancelled or dropped."""
    times, idle = zip(*rounds(cyc, p, tau, n, d))
    zi = np.zeros(n, np.int64)
    return Trace(np.cumsum(np.concatenate(times)), np.full(n, p), np.zeros(n * p, np.int64),
                 np.tile(np.arange(p), n), np.concatenate(idle), np.zeros(n), zi,
                 zi.copy())  # fmt: skip


def sync_time(cyc: Cycles, p: int, n: int, skip: int, d: Exchanges) -> float:
    """Sync in the same model (tau = 1, one D per step) over steps skip..n-1, streamed: the
    simulated time those steps take (for local-sgd's speedup, on its step times)."""
    total, done = 0.0, 0
    for dur, _ in rounds(cyc, p, 1, n, d):
        lo = max(0, skip - done)
        done += len(dur)
        if lo < len(dur):
            total += float(dur[lo:].sum())
    return total


def predict_local(
    p: int, tau: int, compute: Delay, comm: Delay | None, uniform: bool
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Per local step E[Ybar_(P:P)] + E[D]/tau, per round tau times that, and the speedup over
    sync (E[Y_(P:P)] + E[D]) / (E[Ybar_(P:P)] + E[D]/tau); None where no closed form holds."""
    out: dict[str, float | None] = {"step": None, "time": None, "speedup": None}
    form: dict[str, str] = {}
    if not uniform:
        return out, form
    ybar, y1 = compute.mean_max(p, tau), compute.mean_max(p, 1)
    if ybar is None or y1 is None:
        none = f"none for {compute.kind} step times (E[Ybar_(m:m)] has no closed form)"
        form["step"] = form["time"] = none
        return out, form
    dmean = comm.mean if comm is not None else 0.0
    gamma = "Gamma(tau, scale 1/(mu tau))"  # E[max] by its CDF: Delay.mean_max
    text = {"exp": f"Ybar ~ {gamma}", "shifted-exp": f"Ybar ~ Delta + {gamma}",
            "fixed": "Ybar = 1/mu"}[compute.kind]  # fmt: skip
    step = ybar + dmean / tau
    out["step"], out["time"], out["speedup"] = step, tau * ybar + dmean, (y1 + dmean) / step
    form["step"] = f"E[Ybar_(m:m)] + E[D]/tau, {text}"
    form["time"] = "tau E[Ybar_(m:m)] + E[D]"
    form["speedup"] = "(E[Y_(m:m)] + E[D]) / (E[Ybar_(m:m)] + E[D]/tau)"
    return out, form


__all__ = ["Exchanges", "local_sgd", "predict_local", "rounds", "sync_time"]
