"""Timing of benchmark cells: warmup, batches, repeats, interleaved rounds and thread teams.

Part of the harness (bench/_harness.py re-exports every name here). A ``Timing`` holds the
per-call seconds of each repeat: a repeat times ``batch`` back-to-back calls and divides by
``batch``, so calls far below the timer's resolution are still measured. Needs only the
standard library.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Per-call seconds of each repeat (repeat wall time / batch)."""

    samples: tuple[float, ...]
    batch: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples)

    @property
    def p10_s(self) -> float:
        return _quantile(self.samples, 0.10)

    @property
    def p90_s(self) -> float:
        return _quantile(self.samples, 0.90)

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative noise of the cell."""
        return (self.p90_s - self.p10_s) / self.median_s if self.median_s > 0 else math.nan


def _quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), without needing numpy."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _run_batch(fn: Callable[[], object], batch: int) -> float:
    t0 = time.perf_counter()
    for _ in range(batch):
        fn()
    return time.perf_counter() - t0


def measure(
    fn: Callable[[], object], *, warmup: int = 2, repeats: int = 10, batch: int = 1
) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then time ``repeats`` batches of ``batch`` calls."""
    for _ in range(warmup):
        fn()
    samples = tuple(_run_batch(fn, batch) / batch for _ in range(max(1, repeats)))
    return Timing(samples, batch)


def plan(
    fn: Callable[[], object],
    *,
    target_s: float,
    max_repeats: int,
    min_repeats: int = 3,
    max_batch: int = 1 << 20,
) -> tuple[int, int]:
    """(batch, repeats) that spend about ``target_s`` of measured time on ``fn``.

    Times single calls, then doubles a batch until it lasts ``target_s / max_repeats``. Slow
    calls get batch 1 and fewer repeats (never below ``min_repeats``), so big sizes stay cheap;
    fast calls get large batches, so each repeat is far above the timer's resolution. ``fn``
    should be warm (a first call that faults pages in makes the plan too small, not wrong).
    """
    per_repeat = target_s / max_repeats
    batch = 1
    while True:
        t = _run_batch(fn, batch)
        if t >= per_repeat or batch >= max_batch:
            break
        batch = min(max_batch, batch * 2 if t <= 0 else max(batch * 2, int(batch * per_repeat / t)))
    t_call = t / batch
    repeats = max(min_repeats, min(max_repeats, int(target_s / (t_call * batch))))
    return batch, repeats


def measure_interleaved(
    fns: Mapping[str, Callable[[], object]], *, warmup: int = 2, repeats: int = 10, batch: int = 1
) -> dict[str, Timing]:
    """Time several callables in alternation: round k times ``batch`` calls of each in turn.

    Every callable gets ``warmup`` untimed calls first. The order rotates by one from round to
    round, so no callable always runs first (or right after a given other). Sample k of every
    returned Timing comes from the same round: compare callables round by round (``paired``),
    which cancels drift that lasts longer than a round (other load, clock changes).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for k in range(max(1, repeats)):
        shift = k % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_run_batch(fns[name], batch) / batch)
    return {name: Timing(tuple(xs), batch) for name, xs in samples.items()}


def paired(a: Timing, b: Timing, op: Callable[[float, float], float]) -> tuple[float, ...]:
    """``op(a_k, b_k)`` for each repeat k of two Timings from ``measure_interleaved``."""
    if len(a.samples) != len(b.samples):
        raise ValueError("paired: the timings have different numbers of repeats")
    return tuple(op(x, y) for x, y in zip(a.samples, b.samples))


def quantiles(xs: Sequence[float]) -> tuple[float, float, float]:
    """(p10, median, p90) of ``xs``."""
    return _quantile(xs, 0.10), statistics.median(xs), _quantile(xs, 0.90)


class ThreadTeam:
    """``k`` persistent worker threads that run one callable each per round.

    ``team.round()`` releases all workers, each calls its own function once, and returns when
    all are done: pass ``team.round`` to ``measure``. Workers are started once, so a round costs
    two barrier crossings (tens of microseconds), not thread creation. ``close()`` stops them.
    """

    def __init__(self, fns: Sequence[Callable[[], object]]) -> None:
        self._fns = list(fns)
        self._start = threading.Barrier(len(self._fns) + 1)
        self._done = threading.Barrier(len(self._fns) + 1)
        self._stop = False
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._work, args=(f,), name=f"bench-{i}", daemon=True)
            for i, f in enumerate(self._fns)
        ]
        for t in self._threads:
            t.start()

    def _work(self, fn: Callable[[], object]) -> None:
        while True:
            self._start.wait()
            if self._stop:
                return
            try:
                fn()
            except Exception as e:  # noqa: BLE001 -- re-raised by round() in the main thread
                self._errors.append(e)
            self._done.wait()

    def round(self) -> None:
        self._start.wait()
        self._done.wait()
        if self._errors:
            raise RuntimeError(
                f"ThreadTeam: a worker failed: {self._errors[0]!r}"
            ) from self._errors[0]

    def close(self) -> None:
        if self._stop:
            return
        self._stop = True
        self._start.wait()
        for t in self._threads:
            t.join()


def repeated(fn: Callable[[], object], calls: int) -> Callable[[], None]:
    """A callable that calls ``fn`` ``calls`` times (a worker's batch inside a ThreadTeam)."""

    def run() -> None:
        for _ in range(calls):
            fn()

    return run


def measure_parallel(
    fns: Sequence[Callable[[], object]], *, calls: int, warmup: int = 1, repeats: int = 10
) -> Timing:
    """Run ``fns`` at once, one thread each, ``calls`` times per thread per repeat.

    Returns per-round seconds (repeat wall time / ``calls``): the time in which every thread
    made one call. Rounds after warmup are timed from the main thread, barrier to barrier.
    """
    team = ThreadTeam([repeated(f, calls) for f in fns])
    try:
        t = measure(team.round, warmup=warmup, repeats=repeats)
    finally:
        team.close()
    return Timing(tuple(s / calls for s in t.samples), calls)
