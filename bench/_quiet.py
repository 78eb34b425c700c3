"""Other load on a shared machine: how busy other processes kept it, waiting for quiet, and
when to measure again (``Quiet``, the one rule every benchmark and results script follows).

Part of the harness (bench/_harness.py re-exports every name here). Needs only the standard
library.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from _output import log

T = TypeVar("T")


def _busy_s() -> float | None:
    """CPU seconds all CPUs spent busy (incl. steal) since boot, from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _self_s(children: bool = False) -> float:
    t = os.times()
    return t.user + t.system + (t.children_user + t.children_system if children else 0.0)


class ForeignLoad:
    """Measures, around a ``with`` block, how many CPUs *other* processes kept busy::

        load = ForeignLoad()
        with load:
            work()
        load.cores

    ``cores`` = (busy CPU time of the machine - CPU time of this process) / wall time, so 1.0
    means another process took a whole core meanwhile; NaN where /proc/stat is missing.
    ``children=True`` counts the child processes the block started and reaped (a training
    run's learners) as this process's own. Resolution is one clock tick (10 ms) per CPU: trust
    it for blocks of 0.1 s and more.
    """

    cores: float = math.nan

    def __init__(self, *, children: bool = False) -> None:
        self._children = children

    def __enter__(self) -> None:
        self._t, self._busy = time.perf_counter(), _busy_s()
        self._self = _self_s(self._children)

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t
        busy = _busy_s()
        if busy is None or self._busy is None or wall <= 0:
            return
        own = _self_s(self._children) - self._self
        self.cores = max(0.0, (busy - self._busy) - own) / wall


def wait_quiet(threshold: float, max_wait_s: float, sample_s: float = 0.5) -> float:
    """Sleep until other processes use less than ``threshold`` CPUs (or ``max_wait_s`` passed).

    Returns the last sample. Logs while it waits, so a slow run explains itself.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        load = ForeignLoad()
        with load:
            time.sleep(sample_s)
        if not load.cores >= threshold or time.monotonic() >= deadline:
            return load.cores
        log(f"other processes keep {load.cores:.2f} CPUs busy; waiting for a quiet machine")
        time.sleep(max(0.0, min(2.0, deadline - time.monotonic())))


class Quiet:
    """When to measure again because other processes kept the shared machine busy.

    A measurement (a cell, a training run) during which other processes kept ``below`` CPUs
    or more busy is made again, at most ``retries`` times, after waiting up to ``max_wait_s``
    for a quiet machine, while the waits stay within ``budget_s`` for the whole script (so a
    busy machine costs a bounded amount of time; the records keep ``foreign_cpus`` and
    ``attempts`` either way). With ``charge_runs=True`` the repeated measurements count
    against the budget too, and a wait begins only while the budget still holds one more
    measurement as long as the last (the results scripts, whose fit() runs take minutes).
    ``spent_s`` is the budget used so far. The default never measures again.
    """

    def __init__(self, below: float = math.inf, retries: int = 0, max_wait_s: float = 0.0,
                 budget_s: float = 0.0, *, charge_runs: bool = False) -> None:  # fmt: skip
        self.below, self.retries = below, retries
        self.max_wait_s, self.budget_s = max_wait_s, budget_s
        self.charge_runs = charge_runs
        self.spent_s = 0.0
        self._spent_logged = False

    @classmethod
    def from_args(cls, a: argparse.Namespace, *, charge_runs: bool = False) -> Quiet:
        """The policy of ``add_quiet_args``'s flags."""
        return cls(a.quiet_below, a.retries, a.max_wait, a.wait_budget, charge_runs=charge_runs)

    def wait(self, reserve_s: float = 0.0) -> bool:
        """Wait for a quiet machine (at most ``max_wait_s``) out of the budget, keeping
        ``reserve_s`` of it; False, without waiting, once the budget is spent."""
        left = self.budget_s - self.spent_s - reserve_s
        if left <= 0:
            if not self._spent_logged:
                log("--wait-budget spent: measuring on, with foreign_cpus in the records")
                self._spent_logged = True
            return False
        t0 = time.monotonic()
        wait_quiet(self.below, min(self.max_wait_s, left))
        self.spent_s += time.monotonic() - t0
        return True

    def again(self, foreign_cpus: float, attempt: int, run_s: float = 0.0,
              what: str = "run") -> bool:  # fmt: skip
        """Whether attempt ``attempt`` (1-based), which took ``run_s`` while other processes
        kept ``foreign_cpus`` busy, is to be made again; True after waiting for quiet."""
        charged = run_s if self.charge_runs else 0.0
        if attempt > 1:
            self.spent_s += charged  # the repeated measurement itself
        if not foreign_cpus >= self.below or attempt > self.retries:
            return False
        if self.budget_s - self.spent_s > charged:  # else wait() says the budget is spent
            log(f"other processes kept {foreign_cpus:.2f} CPUs busy during the {what}; again")
        return self.wait(charged)

    def measure(self, body: Callable[[], T], *, what: str = "run",
                children: bool = False) -> tuple[T, float, int]:  # fmt: skip
        """(body(), foreign CPUs, attempts): ``body`` run under a ``ForeignLoad`` (``children``
        as there), again while ``again`` says so; the last attempt's result."""
        attempt = 1
        while True:
            load = ForeignLoad(children=children)
            t0 = time.monotonic()
            with load:
                result = body()
            if not self.again(load.cores, attempt, time.monotonic() - t0, what):
                return result, load.cores, attempt
            attempt += 1


def add_quiet_args(p: argparse.ArgumentParser, *, retries: int, max_wait: float,
                   wait_budget: float) -> None:  # fmt: skip
    """The flags that re-measure a cell run while other processes kept the machine busy."""
    p.add_argument("--quiet-below", type=float, default=0.25,
                   help="CPUs other processes may keep busy during a cell before it is measured "
                   "again (default 0.25; recorded as foreign_cpus)")  # fmt: skip
    p.add_argument("--retries", type=int, default=retries,
                   help=f"re-measurements of a noisy cell (default {retries})")  # fmt: skip
    p.add_argument("--max-wait", type=float, default=max_wait,
                   help=f"most seconds per wait for quiet (default {max_wait:g})")  # fmt: skip
    p.add_argument("--wait-budget", type=float, default=wait_budget,
                   help=f"most seconds of waiting for quiet in the whole run "
                   f"(default {wait_budget:g})")  # fmt: skip


def report_noisy(records: Sequence[dict[str, Any]], threshold: float, what: str) -> None:
    """A '#' line counting the records measured while others kept >= threshold CPUs busy."""
    noisy = [r for r in records if r["foreign_cpus"] >= threshold]
    if noisy:
        print(f"# {len(noisy)} of {len(records)} {what} ran while other processes kept "
              f">= {threshold} CPUs busy (after retries): see other_cpus")  # fmt: skip
