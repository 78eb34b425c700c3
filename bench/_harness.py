"""Shared benchmark harness: warmup, repeats, environment capture, JSON-lines output.

Output contract of every ``bench/bench_<question>.py`` script:

* stdout first carries **one JSON object per line**, one per measured cell::

      {"bench", "params", "env": {git_sha, cpu, gpu, threads, cuda},
       "median_s", "p10_s", "p90_s", "items_per_s", ...extra}

  ``median_s``/``p10_s``/``p90_s`` are the time of **one call** (for cells that run several
  threads at once: one round in which every thread makes one call), taken over the repeats.
  A repeat times ``batch`` back-to-back calls and divides by ``batch``, so calls far below the
  timer's resolution are still measured. ``items_per_s`` counts items processed by all threads.
* after the JSON lines, stdout carries a readable table in which **every line starts with
  '#'**, so a JSON-lines consumer keeps only the records with e.g.
  ``python bench/bench_store.py | grep -v '^#' > out.jsonl`` (or skips lines starting with '#').
* progress and diagnostics go to stderr (``log``). Benchmarks report; they never assert.

``env.git_sha`` ends in ``-dirty`` when the work tree had uncommitted changes, ``env.threads``
is the number of threads the cell ran with, and ``env.cores`` the CPUs the process may use.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

_REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    """One line of progress on stderr (stdout is reserved for records and the table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- timing -------------------------------------------------------------------------------------


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


# -- other load on the machine ------------------------------------------------------------------


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


# -- environment --------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _static_env() -> dict[str, Any]:
    return {"git_sha": _git_sha(), "cpu": _cpu_model(), "gpu": _gpu_name(), "cuda": _cuda(),
            "kernel_isa": _kernel_isa()}  # fmt: skip


def _kernel_isa() -> str | None:
    try:
        from fastps import _core

        return _core.kernel_isa
    except (ImportError, AttributeError):
        return None


def env(threads: int) -> dict[str, Any]:
    """{git_sha, cpu, gpu, threads, cuda, cores, kernel_isa} for a cell that ran with ``threads`` threads."""
    e = dict(_static_env())
    e["threads"] = threads
    e["cores"] = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    return e


def _git_sha() -> str | None:
    try:
        sha = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or None


def _gpu_name() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out else None


def _cuda() -> bool:
    try:
        import fastps
    except ImportError:
        return False
    return bool(fastps.cuda_available())


# -- output -------------------------------------------------------------------------------------


def record(
    bench: str,
    params: dict[str, Any],
    timing: Timing,
    *,
    items_per_call: float,
    threads: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON object for one cell; ``items_per_call`` counts items of all threads in a round."""
    rec: dict[str, Any] = {
        "bench": bench,
        "params": params,
        "env": env(threads),
        "median_s": timing.median_s,
        "p10_s": timing.p10_s,
        "p90_s": timing.p90_s,
        "items_per_s": items_per_call / timing.median_s if timing.median_s > 0 else math.inf,
        "batch": timing.batch,
        "repeats": len(timing.samples),
    }
    rec.update(extra)
    return rec


def emit(rec: dict[str, Any], files: Sequence[IO[str]] = ()) -> None:
    """Write ``rec`` as one JSON line to stdout and to each of ``files`` (flushed)."""
    line = json.dumps(rec, sort_keys=False, allow_nan=True)
    for f in (sys.stdout, *files):
        print(line, file=f, flush=True)


def print_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None
) -> None:
    """A right-aligned table on stdout, every line prefixed with '# ' (see module docstring)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    out = []
    if title:
        out.append(f"# {title}")
    out.append("# " + "  ".join(h.rjust(w) for h, w in zip(header, widths)))
    out.append("# " + "  ".join("-" * w for w in widths))
    out += ["# " + "  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    print("\n".join(out), flush=True)


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        if x == 0 or 0.01 <= abs(x) < 1e5:
            return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"
        return f"{x:.2e}"
    return str(x)


# -- argument types -------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    """argparse type: "1,2,4" -> [1, 2, 4], positive integers only."""
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers (got {text!r})"
        ) from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers (got {text!r})")
    return vals


def mode_list(text: str) -> list[str]:
    """argparse type: "leashed,locked" -> the consistency modes named."""
    import fastps

    vals = [x.strip() for x in text.split(",") if x.strip()]
    bad = [m for m in vals if m not in fastps.MODES]
    if not vals or bad:
        raise argparse.ArgumentTypeError(
            f"modes must be among {', '.join(fastps.MODES)} (got {text!r})"
        )
    return vals


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
