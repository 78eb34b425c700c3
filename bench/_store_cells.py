"""What the three store micro-benchmarks share: bench/bench_store.py (push and pull throughput
against the machine's baselines), bench/bench_policies.py (the cost of each step-size policy)
and bench/bench_guard.py (the cost of the NaN guard).

Here: their constants (learning rate, nominal bytes per element), their flags beyond the
harness's (--max-learners), aligned buffers, the ``Section`` runner that times paired stores
in alternation (the policies and the guard), and the fields every record of theirs carries
(``rate_fields``, ``paired_fields``). Records, tables and summaries stay in each script.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import _harness as H
import numpy as np

import fastps

LR = 1e-3
PUSH_BYTES = 12  # read w, read g, write w (float32)
PULL_BYTES = 8  # read w, write out
MIN_SHARD_ELEMS = 16
QUICK_SIZES = (1 << 10, 1 << 16, 1 << 20)
GUARD_OFF, GUARD_ON = "off", "raise"
STATS_KEYS = ("pushes", "shard_updates", "dropped", "cas_failures", "slot_waits", "lock_wait_s",
              "step_builds")  # fmt: skip


def add_store_args(p: argparse.ArgumentParser, *, quick_help: str, sizes: bool = True) -> None:
    """The harness's cell flags (``H.add_cell_args``) and --max-learners."""
    H.add_cell_args(p, quick_help=quick_help, sizes=sizes)
    p.add_argument("--max-learners", type=int, default=16,
                   help="Store max_learners (leashed: 2*max_learners+5 slots; default 16)")  # fmt: skip


def aligned(n: int, fill: float | np.ndarray = 0.0) -> np.ndarray:
    """A 64-byte-aligned float32 array (like torch's and fastps's own buffers), pages touched."""
    raw = np.empty(n + 16, np.float32)
    off = (-raw.ctypes.data % 64) // 4
    a = raw[off : off + n]
    a[...] = fill
    return a


def pow2(n: int) -> str:
    """``2^k`` for a power of two, else the number."""
    k = n.bit_length() - 1
    return f"2^{k}" if n == 1 << k else str(n)


def fmt(x: float | None, spec: str) -> str:
    """A table cell: '-' for None or NaN."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def ratio(x: float, y: float | None) -> float | None:
    return x / y if y else None


def stats_brief(st: Mapping[str, Any]) -> dict[str, Any]:
    """The counters of ``Store.stats()`` a record keeps."""
    return {k: st[k] for k in STATS_KEYS if k in st}


def rate_fields(rec: Mapping[str, Any], t: H.Timing, bytes_per_item: int) -> dict[str, Any]:
    """bytes_per_item, gb_per_s (nominal bytes at ``rec``'s items_per_s), us_per_call (one
    call, or one round of a thread team) and spread ((p90 - p10) / median)."""
    return {
        "bytes_per_item": bytes_per_item,
        "gb_per_s": rec["items_per_s"] * bytes_per_item / 1e9,
        "us_per_call": t.median_s * 1e6,
        "spread": t.spread,
    }


def paired_fields(t: H.Timing, ref: H.Timing, extra_key: str, per: int = 1) -> dict[str, Any]:
    """A timing against the reference timed in the same rounds (``Section.interleaved``):
    time_ratio (median of per-round ratios) with its p10/p90, and ``extra_key`` (median
    per-round extra time in us, over ``per``) with extra_us_p10/p90."""
    r = H.quantiles(H.paired(t, ref, lambda x, y: x / y))
    extra = H.quantiles(H.paired(t, ref, lambda x, y: (x - y) * 1e6 / per))
    return {
        "time_ratio": r[1],
        "time_ratio_p10": r[0],
        "time_ratio_p90": r[2],
        extra_key: extra[1],
        "extra_us_p10": extra[0],
        "extra_us_p90": extra[2],
    }


class Section:
    """Runs the cells of a paired section (policies, guard): a quiet wait before each, timings
    in alternation, again when other processes disturbed them (``H.Quiet``); keeps the records.
    """

    def __init__(self, args: argparse.Namespace, files: Sequence[IO[str]]) -> None:
        self.a = args
        self.files = files
        self.quiet = H.Quiet.from_args(args)
        self.records: list[dict[str, Any]] = []

    def run(self, label: str, sizes: Sequence[int], S: int, cell: Callable[..., None]) -> None:
        """``cell(self, mode, n, S, g, out)`` for every size and mode, with one gradient and one
        out buffer a size; sizes with fewer than MIN_SHARD_ELEMS elements a shard are skipped."""
        for n in sizes:
            if n // S < MIN_SHARD_ELEMS:
                H.log(
                    f"{label}: skipping n={pow2(n)} (fewer than {MIN_SHARD_ELEMS} elements/shard)"
                )
                continue
            rng = np.random.default_rng(n)
            g = aligned(n, rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3))
            out = aligned(n)
            for mode in self.a.modes:
                t0 = time.perf_counter()
                self.quiet.wait()
                cell(self, mode, n, S, g, out)
                H.log(f"{label} n={pow2(n)} mode={mode}: done in {time.perf_counter() - t0:.1f} s")

    def interleaved(self, fns: Mapping[str, Callable[[], object]], warmup: int,
                    ref: str) -> dict[str, H.Timing]:  # fmt: skip
        """``fns`` timed in alternation, --repeats rounds, about --target-s of timing each; the
        batch is planned on ``fns[ref]``, so every callable runs the same calls per round."""
        a = self.a
        for _ in range(warmup):
            for f in fns.values():
                f()
        batch, _ = H.plan(fns[ref], target_s=a.target_s, max_repeats=a.repeats,
                          min_repeats=a.repeats)  # fmt: skip
        return H.measure_interleaved(fns, warmup=0, repeats=a.repeats, batch=batch)

    def emit(self, rec: dict[str, Any]) -> None:
        H.emit(rec, self.files)
        self.records.append(rec)


def run_section(args: argparse.Namespace, what: str, run: Callable[[Section], None],
                tables: Sequence[Callable[..., None]]) -> int:  # fmt: skip
    """The main of a paired-section script: log what runs, ``run`` its cells into a Section
    (JSON lines to stdout and --out), then print each of ``tables(records[, args])``."""
    H.log(f"fastps {fastps.__version__}: {what}, modes {args.modes}, target {args.target_s} "
          f"s/cell, {args.repeats} rounds")  # fmt: skip
    s = Section(args, [args.out] if args.out else [])
    t0 = time.perf_counter()
    try:
        run(s)
    finally:
        if args.out:
            args.out.close()
    H.log(f"all cells in {time.perf_counter() - t0:.0f} s, {s.quiet.spent_s:.0f} s of it "
          "waiting for quiet")  # fmt: skip
    if s.records:
        tables[0](s.records)
        for table in tables[1:]:
            table(s.records, args)
    return 0
