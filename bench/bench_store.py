"""How fast are push+apply and pull through fastps.Store compared with the machine's own
baselines, per mode, shard count and learner-thread count?

For every size n = 2^min_log2 .. 2^max_log2 and learner-thread count T, one run measures:

* baselines (the machine, not fastps):
  - probe: ``fastps._core.probe_triad(a, b, c, s)`` (a = b + s*c, 12 B/element) and
    ``probe_copy(dst, src)`` (8 B/element), native loops with the GIL released. With T > 1,
    T Python threads each run the probe on their own full-size buffers at the same time.
  - torch: ``w.add_(g, alpha=-lr)`` (12 B/element) and ``w.copy_(src)`` (8 B/element) with
    ``torch.set_num_threads(T)``: one call split over T intra-op threads. OpenMP's default
    wait policy lets the pool fall asleep between calls, and where waking a thread is slow
    (a VM: ~30 us per wake-up) torch's 2-thread add_ fell to 1/10 of its 1-thread speed. So
    unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set, the script sets GOMP_SPINCOUNT (--omp-spin)
    before importing torch: the pool spins for about a millisecond between back-to-back calls,
    then sleeps, so it does not steal a core from the fastps cells that follow. The records'
    ``params.omp`` says what was in effect.
* fastps, per mode and shard count (a shard needs at least 16 elements; larger counts are
  skipped): ``h.push(g)`` (read w, read g, write w: 12 B/element) and ``h.pull(out)`` (8 B).
  With T > 1, each of T Python threads has its own handle and pushes (pulls) the full-size
  vector; throughput is the bytes moved by all threads over the wall time of the round.

Each record carries ``gb_per_s`` (1e9 B/s, nominal bytes above), ``us_per_call`` (wall time of
one call, or of one round with T > 1) and, for fastps, ``ratio_torch`` (push vs add_, pull vs
copy_) and ``ratio_probe`` (push vs triad, pull vs copy). Targets, reported and never
asserted: push at n >= 2^22 at least 0.9x torch add_; push and pull at most 2 us at n = 2^10.

A shared 2-core box makes every number depend on what else runs. Each record carries
``foreign_cpus`` (CPUs other processes kept busy during the cell, from /proc/stat); a cell
measured while they kept --quiet-below or more busy is measured again (--retries) after waiting
for a quiet machine, within --max-wait per wait and --wait-budget per run.

Output: JSON lines on stdout (and --out), then a '#'-prefixed table and summary; progress on
stderr. See bench/_harness.py. Run it as a script so the installed fastps is imported:

    python bench/bench_store.py --quick
    python bench/bench_store.py --out bench/out/store.jsonl
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

import _harness as H
import numpy as np

import fastps
from fastps import _core

BENCH = "store"
LR = 1e-3
PUSH_BYTES = 12  # read w, read g, write w (float32)
PULL_BYTES = 8  # read w, write out
MIN_SHARD_ELEMS = 16
QUICK_SIZES = (1 << 10, 1 << 16, 1 << 20)
TARGET_PUSH_RATIO, TARGET_PUSH_FROM = 0.9, 1 << 22
TARGET_US, TARGET_US_AT = 2.0, 1 << 10
OMP_SPIN = "1000000"
OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers (got {text!r})"
        ) from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers (got {text!r})")
    return vals


def _mode_list(text: str) -> list[str]:
    vals = [x.strip() for x in text.split(",") if x.strip()]
    bad = [m for m in vals if m not in fastps.MODES]
    if not vals or bad:
        raise argparse.ArgumentTypeError(
            f"modes must be among {', '.join(fastps.MODES)} (got {text!r})"
        )
    return vals


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " ...")
    p.add_argument("--min-log2", type=int, default=10, help="smallest size 2^k (default 10)")
    p.add_argument("--max-log2", type=int, default=26, help="largest size 2^k (default 26)")
    p.add_argument("--step", type=int, default=2, help="step of k between sizes (default 2)")
    p.add_argument("--modes", type=_mode_list, default=list(fastps.MODES), help="default: all")
    p.add_argument("--threads", type=_int_list, default=[1, 2], help="learner threads (1,2)")
    p.add_argument("--shards", type=_int_list, default=[1, 4, 16], help="shard counts (1,4,16)")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="most timed repeats per cell (default 20; 5 with --quick); big sizes "
        "use fewer, down to --min-repeats, to stay near --target-s",
    )
    p.add_argument("--min-repeats", type=int, default=5, help="fewest timed repeats (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per cell (default 2)")
    p.add_argument(
        "--target-s",
        type=float,
        default=None,
        help="measured seconds per cell (default 0.3; 0.05 with --quick)",
    )
    p.add_argument(
        "--max-learners",
        type=int,
        default=16,
        help="Store max_learners (leashed: 2*max_learners+1 slots; default 16)",
    )
    p.add_argument("--quick", action="store_true", help="sizes 2^10, 2^16, 2^20, few repeats")
    p.add_argument(
        "--quiet-below",
        type=float,
        default=0.25,
        help="CPUs other processes may keep busy during a cell before it is measured again "
        "(default 0.25; recorded as foreign_cpus)",
    )
    p.add_argument("--retries", type=int, default=2, help="re-measurements per cell (default 2)")
    p.add_argument(
        "--max-wait", type=float, default=30.0, help="most seconds per wait for quiet (default 30)"
    )
    p.add_argument(
        "--wait-budget",
        type=float,
        default=300.0,
        help="most seconds of waiting for quiet in the whole run (default 300)",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the torch baseline")
    p.add_argument(
        "--omp-spin",
        default=OMP_SPIN,
        help=f"GOMP_SPINCOUNT set before importing torch unless OMP_WAIT_POLICY or "
        f"GOMP_SPINCOUNT is already set; 'keep' leaves OpenMP's defaults "
        f"(default {OMP_SPIN}, see the module docstring)",
    )
    p.add_argument("--out", type=argparse.FileType("w"), help="also write the JSON lines here")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes = list(QUICK_SIZES)
    else:
        if a.step < 1 or a.min_log2 < 0 or a.max_log2 < a.min_log2:
            p.error("need 0 <= --min-log2 <= --max-log2 and --step >= 1")
        a.sizes = [1 << k for k in range(a.min_log2, a.max_log2 + 1, a.step)]
    a.repeats = a.repeats or (5 if a.quick else 20)
    a.min_repeats = max(1, min(a.min_repeats, a.repeats))
    a.target_s = a.target_s or (0.05 if a.quick else 0.3)
    return a


def _aligned(n: int, fill: float | np.ndarray = 0.0) -> np.ndarray:
    """A 64-byte-aligned float32 array (like torch's and fastps's own buffers), pages touched."""
    raw = np.empty(n + 16, np.float32)
    off = (-raw.ctypes.data % 64) // 4
    a = raw[off : off + n]
    a[...] = fill
    return a


def _pow2(n: int) -> str:
    k = n.bit_length() - 1
    return f"2^{k}" if n == 1 << k else str(n)


class Runner:
    """Measures cells and emits their records; remembers them for the table."""

    def __init__(self, args: argparse.Namespace, files: Sequence[IO[str]]) -> None:
        self.a = args
        self.files = files
        self.records: list[dict[str, Any]] = []
        self.waited_s = 0.0
        self.budget_spent_logged = False

    def time_cell(self, fns: Sequence[Callable[[], object]]) -> tuple[H.Timing, float, int]:
        """(timing, foreign CPUs, attempts): measured again after a quiet wait (--retries) when
        other processes kept --quiet-below CPUs or more busy meanwhile."""
        a = self.a
        attempt = 1
        while True:
            load = H.ForeignLoad()
            with load:
                t = self._time_once(fns)
            if not load.cores >= a.quiet_below or attempt > a.retries or not self.wait_quiet():
                return t, load.cores, attempt
            H.log(f"other processes kept {load.cores:.2f} CPUs busy during the cell; again")
            attempt += 1

    def wait_quiet(self) -> bool:
        """Wait for a quiet machine out of --wait-budget; False once the budget is spent."""
        left = self.a.wait_budget - self.waited_s
        if left <= 0:
            if not self.budget_spent_logged:
                H.log("--wait-budget spent: measuring on, with foreign_cpus in the records")
                self.budget_spent_logged = True
            return False
        t0 = time.monotonic()
        H.wait_quiet(self.a.quiet_below, min(self.a.max_wait, left))
        self.waited_s += time.monotonic() - t0
        return True

    def _time_once(self, fns: Sequence[Callable[[], object]]) -> H.Timing:
        """One call per fn; one fn runs in the main thread, several run at once in a team."""
        a = self.a
        for _ in range(a.warmup):
            for f in fns:
                f()
        batch, repeats = H.plan(
            fns[0],
            target_s=a.target_s / len(fns),
            max_repeats=a.repeats,
            min_repeats=a.min_repeats,
        )
        if len(fns) == 1:
            return H.measure(fns[0], warmup=0, repeats=repeats, batch=batch)
        return H.measure_parallel(fns, calls=batch, warmup=1, repeats=repeats)

    def cell(
        self,
        impl: str,
        op: str,
        n: int,
        threads: int,
        fns: Sequence[Callable[[], object]],
        bytes_per_item: int,
        mode: str | None = None,
        shards: int | None = None,
        base: dict[str, float] | None = None,
        after: Callable[[], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Time ``fns``, emit the record (``after()`` adds fields once timing is done)."""
        t, foreign, attempts = self.time_cell(fns)
        items = n * len(fns)  # every thread of a team moves the full vector
        params = {
            "impl": impl,
            "op": op,
            "n": n,
            "threads": threads,
            "mode": mode,
            "shards": shards,
            "lr": LR,
        }
        if impl == "fastps":
            params["max_learners"] = self.a.max_learners
        if impl == "torch":
            params["omp"] = {v: os.environ.get(v) for v in OMP_VARS}
        rec = H.record(BENCH, params, t, items_per_call=items, threads=threads)
        rec["bytes_per_item"] = bytes_per_item
        rec["gb_per_s"] = rec["items_per_s"] * bytes_per_item / 1e9
        rec["us_per_call"] = t.median_s * 1e6
        rec["spread"] = t.spread
        rec["foreign_cpus"] = foreign
        rec["attempts"] = attempts
        if base is not None:
            rec["ratio_torch"] = _ratio(rec["gb_per_s"], base.get("torch"))
            rec["ratio_probe"] = _ratio(rec["gb_per_s"], base.get("probe"))
        if after is not None:
            rec.update(after())
        H.emit(rec, self.files)
        self.records.append(rec)
        return rec


def _ratio(x: float, y: float | None) -> float | None:
    return x / y if y else None


def run_size(r: Runner, n: int, torch: Any) -> None:
    a = r.a
    tmax = max(a.threads)
    rng = np.random.default_rng(n)
    g_vals = (rng.standard_normal(min(n, 1 << 16), dtype=np.float32) * 1e-3).astype(np.float32)
    reps = -(-n // g_vals.size)
    grads = [_aligned(n, np.tile(g_vals, reps)[:n]) for _ in range(tmax)]
    outs = [_aligned(n) for _ in range(tmax)]
    ws = [_aligned(n, 1.0) for _ in range(tmax)]
    shard_counts = [s for s in a.shards if n // s >= MIN_SHARD_ELEMS]
    skipped = sorted(set(a.shards) - set(shard_counts))
    if skipped:
        H.log(
            f"n={_pow2(n)}: skipping shards {skipped} (fewer than {MIN_SHARD_ELEMS} elements each)"
        )

    for T in a.threads:
        r.wait_quiet()
        t0 = time.perf_counter()
        push_base: dict[str, float] = {}
        pull_base: dict[str, float] = {}
        ids = range(T)
        rec = r.cell(
            "probe",
            "triad",
            n,
            T,
            [functools.partial(_core.probe_triad, outs[i], ws[i], grads[i], -LR) for i in ids],
            PUSH_BYTES,
        )
        push_base["probe"] = rec["gb_per_s"]
        rec = r.cell(
            "probe",
            "copy",
            n,
            T,
            [functools.partial(_core.probe_copy, outs[i], ws[i]) for i in ids],
            PULL_BYTES,
        )
        pull_base["probe"] = rec["gb_per_s"]
        if torch is not None:
            torch.set_num_threads(T)
            tw, tg, to = (torch.from_numpy(x) for x in (ws[0], grads[0], outs[0]))
            rec = r.cell(
                "torch", "add_", n, T, [functools.partial(tw.add_, tg, alpha=-LR)], PUSH_BYTES
            )
            push_base["torch"] = rec["gb_per_s"]
            rec = r.cell("torch", "copy_", n, T, [functools.partial(to.copy_, tw)], PULL_BYTES)
            pull_base["torch"] = rec["gb_per_s"]

        for mode in a.modes:
            for S in shard_counts:
                with fastps.Store(
                    size=n, shards=S, mode=mode, lr=LR, max_learners=a.max_learners
                ) as store:
                    hs = [store.learner() for _ in ids]
                    for i, h in enumerate(hs):
                        h.pull(outs[i])
                    r.cell(
                        "fastps",
                        "push",
                        n,
                        T,
                        [functools.partial(h.push, g) for h, g in zip(hs, grads)],
                        PUSH_BYTES,
                        mode,
                        S,
                        push_base,
                        after=lambda: {"stats": _stats_brief(store.stats())},
                    )
                    r.cell(
                        "fastps",
                        "pull",
                        n,
                        T,
                        [functools.partial(h.pull, o) for h, o in zip(hs, outs)],
                        PULL_BYTES,
                        mode,
                        S,
                        pull_base,
                    )
                    for h in hs:
                        h.close()
        H.log(f"n={_pow2(n)} threads={T}: done in {time.perf_counter() - t0:.1f} s")


def _stats_brief(st: dict[str, Any]) -> dict[str, Any]:
    keys = ("pushes", "dropped", "cas_failures", "slot_waits", "lock_wait_s")
    return {k: st[k] for k in keys if k in st}


# -- report -------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _pair_rows(records: Sequence[dict[str, Any]]) -> list[tuple[tuple, dict[str, Any]]]:
    """Records grouped per table row (n, T, impl, mode, S): {"push": rec, "pull": rec}."""
    side = {"triad": "push", "add_": "push", "push": "push"}
    rows: dict[tuple, dict[str, Any]] = {}
    for rec in records:
        p = rec["params"]
        key = (p["n"], p["threads"], p["impl"], p["mode"] or "-", p["shards"] or "-")
        rows.setdefault(key, {})[side.get(p["op"], "pull")] = rec
    return list(rows.items())


def print_table(records: Sequence[dict[str, Any]]) -> None:
    header = [
        "n",
        "thr",
        "impl",
        "mode",
        "S",
        "push_GB/s",
        "push_us",
        "spread",
        "/add_",
        "/triad",
        "pull_GB/s",
        "pull_us",
        "spread",
        "/copy_",
        "/copy",
        "other_cpus",
        "stats",
    ]
    rows = []
    for (n, T, impl, mode, S), cell in _pair_rows(records):
        row = [_pow2(n), T, impl, mode, S]
        for rec in (cell.get("push"), cell.get("pull")):
            if rec is None:
                row += ["-"] * 5
                continue
            row += [
                _fmt(rec["gb_per_s"], ".2f"),
                _fmt(rec["us_per_call"], ".3g"),
                _fmt(100 * rec["spread"], ".0f") + "%",
                _fmt(rec.get("ratio_torch"), ".2f"),
                _fmt(rec.get("ratio_probe"), ".2f"),
            ]
        other = [r["foreign_cpus"] for r in cell.values() if not math.isnan(r["foreign_cpus"])]
        row.append(_fmt(max(other), ".2f") if other else "-")
        st = cell["push"].get("stats", {}) if "push" in cell else {}
        notes = [f"{k}={st[k]}" for k in ("dropped", "cas_failures", "slot_waits") if st.get(k)]
        if st.get("lock_wait_s"):
            notes.append(f"lock_wait={st['lock_wait_s']:.2g}s")
        rows.append([*row, " ".join(notes) or "-"])
    H.print_table(
        header,
        rows,
        title=(
            "push = push+apply (12 B/elem), pull (8 B/elem); us = one call (T > 1: one round of "
            "T concurrent calls); spread = (p90-p10)/median; /add_ /triad /copy_ /copy = fastps "
            "GB/s over the baseline's at the same n and T; other_cpus = CPUs other processes "
            "kept busy meanwhile"
        ),
    )


def print_summary(records: Sequence[dict[str, Any]], args: argparse.Namespace) -> None:
    fast = [r for r in records if r["params"]["impl"] == "fastps"]

    def pick(mode: str, op: str, T: int, keep: Callable[[int], bool]) -> list[dict[str, Any]]:
        return [
            r
            for r in fast
            if (r["params"]["mode"], r["params"]["op"], r["params"]["threads"]) == (mode, op, T)
            and keep(r["params"]["n"])
        ]

    def ratio(mode: str, T: int) -> tuple[float | None, str]:
        big = pick(mode, "push", T, lambda n: n >= TARGET_PUSH_FROM)
        xs = [r["ratio_torch"] for r in big if r.get("ratio_torch") is not None]
        if not xs:
            return None, "-"
        return statistics.median(xs), f"{min(xs):.2f}..{max(xs):.2f}"

    def us(mode: str, op: str) -> tuple[float | None, float | None]:
        rs = sorted(
            pick(mode, op, 1, lambda n: n == TARGET_US_AT), key=lambda r: r["params"]["shards"]
        )
        return (rs[0]["us_per_call"], rs[-1]["us_per_call"]) if rs else (None, None)

    verdict = {None: "n/a", True: "met", False: "MISSED"}
    rows = []
    for mode in args.modes:
        (r1, span1), (r2, _) = ratio(mode, 1), ratio(mode, 2)
        (push1, push_s), (pull1, pull_s) = us(mode, "push"), us(mode, "pull")
        ok_ratio = None if r1 is None else r1 >= TARGET_PUSH_RATIO
        ok_us = None if push1 is None or pull1 is None else max(push1, pull1) <= TARGET_US
        rows.append(
            [mode, _fmt(r1, ".2f"), span1, _fmt(r2, ".2f"), _fmt(push1, ".2f"),
             _fmt(push_s, ".2f"), _fmt(pull1, ".2f"), _fmt(pull_s, ".2f"),
             verdict[ok_ratio], verdict[ok_us]]
        )  # fmt: skip
    smax = max(args.shards)
    H.print_table(
        (
            f"mode push/add_@T1 range push/add_@T2 push_us@S1 push_us@S{smax} pull_us@S1 "
            f"pull_us@S{smax} >={TARGET_PUSH_RATIO}x_add_ <={TARGET_US:g}us"
        ).split(),
        rows,
        title=(
            f"summary: push/add_ = median fastps/torch GB/s over n >= {_pow2(TARGET_PUSH_FROM)} "
            f"and all shard counts (range: min..max); us = one call at n = {_pow2(TARGET_US_AT)}, "
            "1 thread; targets judged at T=1 (ratio) and S=1 (us); reported, not asserted"
        ),
    )
    noisy = [r for r in records if r["foreign_cpus"] >= args.quiet_below]
    if noisy:
        print(
            f"# {len(noisy)} of {len(records)} cells ran while other processes kept "
            f">= {args.quiet_below} CPUs busy (after retries): see other_cpus"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch = None
    if not args.no_torch:
        if args.omp_spin != "keep" and not any(v in os.environ for v in OMP_VARS):
            os.environ["GOMP_SPINCOUNT"] = args.omp_spin
        try:
            import torch
        except ImportError:
            H.log("torch is not installed: no torch baseline (ratio_torch = null)")
    torch_threads = torch.get_num_threads() if torch is not None else None
    files = [args.out] if args.out else []
    H.log(
        f"fastps {fastps.__version__}: sizes {[_pow2(n) for n in args.sizes]}, modes "
        f"{args.modes}, threads {args.threads}, shards {args.shards}, target "
        f"{args.target_s} s/cell, repeats {args.min_repeats}..{args.repeats}"
    )
    r = Runner(args, files)
    t0 = time.perf_counter()
    try:
        for n in args.sizes:
            run_size(r, n, torch)
    finally:
        if torch is not None:
            torch.set_num_threads(torch_threads)
        if args.out:
            args.out.close()
    H.log(
        f"all cells in {time.perf_counter() - t0:.0f} s, {r.waited_s:.0f} s of it waiting for quiet"
    )
    print_table(r.records)
    print_summary(r.records, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
