"""What does the NaN guard (``nan_guard="raise"``, the default) cost per push, in every mode?

Records ``bench: "store_guard"``: what ``nan_guard="raise"`` (the default: push first reads
the whole gradient once to refuse NaN/Inf, before any shard changes) costs per push. For every
mode (--modes) and n in 2^10, 2^16, 2^20, 2^22, 2^24 (within --min-log2 and --max-log2;
--quick: 2^10, 2^16, 2^20), 1 learner, --guard-shards (4) shards, two stores, one with
``nan_guard="off"`` and one with ``"raise"``, are pushed in alternation in the same rounds.
Each record (one per guard setting) carries ``time_ratio`` (push time / the "off" store's push
time, median of per-round ratios, with ``time_ratio_p10``/``_p90``) and ``extra_us_per_push``
(median per-round time difference); the "raise" record adds ``guard_gb_per_s`` (4 B/element
over the extra time: the bandwidth of the guard's read pass) and ``guard_refuses_nan`` (after
timing, a push of a gradient holding one NaN raised ValueError).

Noisy cells are measured again, and records, tables and progress go where every script
sends them: bench/_harness.py says how. Run it as a script so the installed fastps is imported:

    python bench/bench_guard.py --quick
    python bench/bench_guard.py --out bench/out/guard.jsonl
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from typing import Any

import _harness as H
import _store_cells as C
import numpy as np

import fastps

GUARD_BENCH = "store_guard"
GUARD_SIZES = (1 << 10, 1 << 16, 1 << 20, 1 << 22, 1 << 24)
GUARD_QUICK_SIZES = C.QUICK_SIZES


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_store_args(p, quick_help="sizes 2^10, 2^16, 2^20, few repeats")
    p.add_argument("--guard-shards", type=int, default=4, help="shards (default 4)")
    a = p.parse_args(argv)
    H.resolve_cell_args(p, a)
    if a.quick:
        a.guard_sizes = list(GUARD_QUICK_SIZES)
    else:
        lo, hi = 1 << a.min_log2, 1 << a.max_log2
        a.guard_sizes = [n for n in GUARD_SIZES if lo <= n <= hi]
    if a.guard_shards < 1:
        p.error("need --guard-shards >= 1")
    return a


def run_guard(s: C.Section) -> None:
    """Push with nan_guard="off" vs "raise", every mode and guard size."""
    s.run("guard", s.a.guard_sizes, s.a.guard_shards, guard_cell)


def guard_cell(s: C.Section, mode: str, n: int, S: int, g: np.ndarray, out: np.ndarray) -> None:
    a = s.a
    stores = {
        guard: fastps.Store(
            size=n, shards=S, mode=mode, lr=C.LR, max_learners=a.max_learners, nan_guard=guard
        )
        for guard in (C.GUARD_OFF, C.GUARD_ON)
    }
    handles: dict[str, Any] = {}
    try:
        handles.update((guard, st.learner()) for guard, st in stores.items())
        for h in handles.values():
            h.pull(out)
        pushes = {guard: functools.partial(h.push, g) for guard, h in handles.items()}
        timings, foreign, attempt = s.quiet.measure(
            lambda: s.interleaved(pushes, a.warmup, C.GUARD_OFF), what="guard cell"
        )
        refuses = refuses_nan(handles[C.GUARD_ON], g)
        if not refuses:
            H.log(f"guard n={C.pow2(n)} mode={mode}: nan_guard='raise' accepted a NaN gradient")
        ref = timings[C.GUARD_OFF]
        for guard, t in timings.items():
            params = {
                "impl": "fastps",
                "op": "push",
                "n": n,
                "threads": 1,
                "mode": mode,
                "shards": S,
                "lr": C.LR,
                "max_learners": a.max_learners,
                "nan_guard": guard,
            }
            rec = H.record(GUARD_BENCH, params, t, items_per_call=n, threads=1)
            rec.update(C.rate_fields(rec, t, C.PUSH_BYTES))
            rec.update(C.paired_fields(t, ref, "extra_us_per_push"))
            if guard == C.GUARD_ON:
                # 4 B/element read once more, over the extra time (None when it is not positive)
                extra = rec["extra_us_per_push"]
                rec["guard_gb_per_s"] = n * 4 / (extra * 1e3) if extra > 0 else None
                rec["guard_refuses_nan"] = refuses
            rec["foreign_cpus"] = foreign
            rec["attempts"] = attempt
            rec["stats"] = C.stats_brief(stores[guard].stats())
            s.emit(rec)
    finally:
        for h in handles.values():
            h.close()
        for st in stores.values():
            st.close()


def refuses_nan(h: Any, g: np.ndarray) -> bool:
    """Whether a push of ``g`` with its last element set to NaN raises ValueError (the guard
    checks before any shard changes, so the store is left as it was); ``g`` is restored."""
    last = g[-1]
    g[-1] = np.nan
    try:
        h.push(g)
    except ValueError:
        return True
    finally:
        g[-1] = last
    return False


def print_guard_table(records: Sequence[dict[str, Any]]) -> None:
    fmt = C.fmt
    by_cell: dict[tuple[str, int, int], dict[str, dict[str, Any]]] = {}
    for rec in records:
        p = rec["params"]
        by_cell.setdefault((p["mode"], p["n"], p["shards"]), {})[p["nan_guard"]] = rec
    rows = []
    for (mode, n, S), cell in by_cell.items():
        off, on = cell.get(C.GUARD_OFF), cell.get(C.GUARD_ON)
        if off is None or on is None:
            continue
        rows.append(
            [mode, C.pow2(n), S, fmt(off["us_per_call"], ".4g"), fmt(on["us_per_call"], ".4g"),
             fmt(on["time_ratio"], ".3f"),
             f"{fmt(on['time_ratio_p10'], '.3f')}..{fmt(on['time_ratio_p90'], '.3f')}",
             fmt(on["extra_us_per_push"], ".3g"),
             f"{fmt(on['extra_us_p10'], '.3g')}..{fmt(on['extra_us_p90'], '.3g')}",
             fmt(on.get("guard_gb_per_s"), ".2f"), fmt(off["gb_per_s"], ".2f"),
             fmt(100 * max(off["spread"], on["spread"]), ".0f") + "%",
             fmt(on["foreign_cpus"], ".2f"), "yes" if on.get("guard_refuses_nan") else "NO"]
        )  # fmt: skip
    header = ("mode", "n", "S", "off_us", "raise_us", "raise/off", "p10..p90", "extra_us",
              "p10..p90", "guard_GB/s", "off_push_GB/s", "spread", "other_cpus",
              "NaN_refused")  # fmt: skip
    H.print_table(
        header,
        rows,
        title=(
            'NaN guard, 1 learner: push with nan_guard="off" vs "raise" (the default), timed in '
            "alternation in the same rounds; raise/off = median of per-round time ratios "
            "(p10..p90 of rounds); extra_us = median per-round extra time per push; guard_GB/s "
            "= 4 B/elem over extra_us (the guard's read pass); spread = the larger of the two "
            "cells' (p90-p10)/median; NaN_refused = a gradient holding one NaN raised ValueError"
        ),
    )


def print_guard_summary(records: Sequence[dict[str, Any]], args: argparse.Namespace) -> None:
    fmt = C.fmt
    on = {
        (r["params"]["mode"], r["params"]["n"]): r
        for r in records
        if r["params"]["nan_guard"] == C.GUARD_ON
    }
    sizes = [n for n in args.guard_sizes if any(n == k[1] for k in on)]
    if not sizes:
        return
    header = ["mode"]
    for n in sizes:
        header += [f"raise/off@{C.pow2(n)}", f"+us@{C.pow2(n)}"]
    header.append(f"guard_GB/s@{C.pow2(sizes[-1])}")
    rows = []
    for mode in args.modes:
        row: list[Any] = [mode]
        for n in sizes:
            rec = on.get((mode, n))
            row += [
                fmt(None if rec is None else rec["time_ratio"], ".3f"),
                fmt(None if rec is None else rec["extra_us_per_push"], ".3g"),
            ]
        big = on.get((mode, sizes[-1]))
        rows.append([*row, fmt(None if big is None else big.get("guard_gb_per_s"), ".2f")])
    H.print_table(
        header,
        rows,
        title=(
            f"guard summary, {args.guard_shards} shards, 1 learner: raise/off = push time with "
            'nan_guard="raise" over "off" (median of per-round ratios); +us = extra us per push; '
            "guard_GB/s = the guard pass's read bandwidth at the largest size"
        ),
    )
    H.report_noisy(records, args.quiet_below, "guard records")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return C.run_section(
        args,
        f"guard sizes {[C.pow2(n) for n in args.guard_sizes]}, {args.guard_shards} shards",
        run_guard,
        [print_guard_table, print_guard_summary],
    )


if __name__ == "__main__":
    sys.exit(main())
