"""How fast are push+apply and pull through fastps.Store compared with the machine's own
baselines, per mode, shard count and learner-thread count?

For every size n = 2^min_log2 .. 2^max_log2 and learner-thread count T, one run measures:

* baselines (the machine, not fastps):
  - probes, native loops with the GIL released (fastps.probe): ``probe.axpy(w, g, s)``
    (w += s*g in place: two streams, the memory shape of a locked or hogwild push),
    ``probe.triad(a, b, c, s)`` (a = b + s*c: three streams, the shape of a leashed push, which
    writes a new version), both 12 B/element nominal, and ``probe.copy(dst, src)`` (8 B/element,
    the shape of a pull). With T > 1, T Python threads each run the probe on their own full-size
    buffers at the same time.
  - torch: ``w.add_(g, alpha=-lr)`` (12 B/element) and ``w.copy_(src)`` (8 B/element) with
    ``torch.set_num_threads(T)``: one call split over T intra-op threads. OpenMP's default
    wait policy lets the pool fall asleep between calls, and where waking a thread is slow
    (a VM: ~30 us per wake-up) torch's 2-thread add_ fell to 1/10 of its 1-thread speed. So
    unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set, the script sets GOMP_SPINCOUNT (--omp-spin)
    before importing torch: the pool spins for about a millisecond between back-to-back calls,
    then sleeps, so it does not steal a core from the fastps cells that follow. The records'
    ``params.omp`` says what was in effect.
* fastps, per mode and shard count (a shard needs at least 16 elements; larger counts are
  skipped), every store made with ``nan_guard="off"`` (``params.nan_guard``): torch's add_ and
  the probes check nothing, and the guard's extra read pass over the gradient is measured on
  its own by bench/bench_guard.py. ``h.push(g)`` (read w, read g, write w: 12 B/element) and
  ``h.pull(out)`` (8 B).
  With T > 1, each of T Python threads has its own handle and pushes (pulls) the full-size
  vector; throughput is the bytes moved by all threads over the wall time of the round.

Each record carries ``gb_per_s`` (1e9 B/s, nominal bytes above), ``us_per_call`` (wall time of
one call, or of one round with T > 1) and, for fastps, GB/s ratios to the baselines at the same
n and T: push records ``ratio_torch`` (vs add_), ``ratio_axpy`` and ``ratio_triad``; pull
records ``ratio_torch`` (vs copy_) and ``ratio_copy``. ``ratio_probe`` is the ratio to the probe
of the same memory shape, named in ``probe_op``: axpy for a locked or hogwild push, triad for a
leashed push, copy for a pull. Targets, reported and never asserted: push at n >= 2^22 at least
0.9x torch add_; push and pull at most 2 us at n = 2^10.

The cost of each step-size policy (records ``"store_policy"``) and of the NaN guard
(``"store_guard"``) are other questions, with scripts of their own: bench/bench_policies.py and
bench/bench_guard.py (this script accepts their old --no-policies and --no-guard flags and
ignores them).

Noisy cells are measured again, and records, tables and progress go where every script
sends them: bench/_harness.py says how. Run it as a script so the installed fastps is imported:

    python bench/bench_store.py --quick
    python bench/bench_store.py --out bench/out/store.jsonl
    python bench/bench_store.py --modes leashed,locked,hogwild --threads 1 --shards 1,4 \
        --min-log2 10 --max-log2 24 --out /tmp/store.jsonl    # before/after a change
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

import _harness as H
import _store_cells as C
import numpy as np

import fastps
from fastps import probe

BENCH = "store"
TARGET_PUSH_RATIO, TARGET_PUSH_FROM = 0.9, 1 << 22
TARGET_US, TARGET_US_AT = 2.0, 1 << 10
OMP_SPIN = "1000000"
OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " ...")
    C.add_store_args(p, quick_help="sizes 2^10, 2^16, 2^20, few repeats")
    p.add_argument("--threads", type=H.int_list, default=[1, 2], help="learner threads (1,2)")
    p.add_argument("--shards", type=H.int_list, default=[1, 4, 16], help="shard counts (1,4,16)")
    p.add_argument("--no-torch", action="store_true", help="skip the torch baseline")
    p.add_argument("--shared-too", action="store_true",
                   help="also measure every store cell with Store(shared=True) (impl fastps-shm)")  # fmt: skip
    p.add_argument(
        "--omp-spin",
        default=OMP_SPIN,
        help=f"GOMP_SPINCOUNT set before importing torch unless OMP_WAIT_POLICY or "
        f"GOMP_SPINCOUNT is already set; 'keep' leaves OpenMP's defaults "
        f"(default {OMP_SPIN}, see the module docstring)",
    )
    for old, now in (("policies", "bench_policies.py"), ("guard", "bench_guard.py")):
        p.add_argument(f"--no-{old}", action="store_true",
                       help=f"ignored: the {old} section is bench/{now} now")  # fmt: skip
    a = p.parse_args(argv)
    H.resolve_cell_args(p, a)
    if a.quick:
        a.sizes = list(C.QUICK_SIZES)
    return a


class Runner:
    """Measures cells and emits their records; remembers them for the table."""

    def __init__(self, args: argparse.Namespace, files: Sequence[IO[str]]) -> None:
        self.a = args
        self.files = files
        self.quiet = H.Quiet.from_args(args)
        self.records: list[dict[str, Any]] = []

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
        """Time ``fns`` (again after a quiet wait when other processes disturbed them), emit
        the record (``after()`` adds fields once timing is done)."""
        t, foreign, attempts = self.quiet.measure(lambda: self._time_once(fns), what="cell")
        items = n * len(fns)  # every thread of a team moves the full vector
        params = {
            "impl": impl,
            "op": op,
            "n": n,
            "threads": threads,
            "mode": mode,
            "shards": shards,
            "lr": C.LR,
        }
        if impl.startswith("fastps"):
            params["shared"] = impl == "fastps-shm"
            params["max_learners"] = self.a.max_learners
            params["nan_guard"] = C.GUARD_OFF
        if impl == "torch":
            params["omp"] = {v: os.environ.get(v) for v in OMP_VARS}
        rec = H.record(BENCH, params, t, items_per_call=items, threads=threads)
        rec.update(C.rate_fields(rec, t, bytes_per_item))
        rec["foreign_cpus"] = foreign
        rec["attempts"] = attempts
        if base is not None:
            # base: GB/s of the baselines at this n and T, keyed by op ("torch" = torch's op)
            rec["ratio_torch"] = C.ratio(rec["gb_per_s"], base.get("torch"))
            probes = ("axpy", "triad") if op == "push" else ("copy",)
            for pr in probes:
                rec[f"ratio_{pr}"] = C.ratio(rec["gb_per_s"], base.get(pr))
            matched = "copy" if op != "push" else "triad" if mode == "leashed" else "axpy"
            rec["probe_op"] = matched
            rec["ratio_probe"] = rec[f"ratio_{matched}"]
        if after is not None:
            rec.update(after())
        H.emit(rec, self.files)
        self.records.append(rec)
        return rec


def run_size(r: Runner, n: int, torch: Any) -> None:
    a = r.a
    tmax = max(a.threads)
    rng = np.random.default_rng(n)
    g_vals = (rng.standard_normal(min(n, 1 << 16), dtype=np.float32) * 1e-3).astype(np.float32)
    reps = -(-n // g_vals.size)
    grads = [C.aligned(n, np.tile(g_vals, reps)[:n]) for _ in range(tmax)]
    outs = [C.aligned(n) for _ in range(tmax)]
    ws = [C.aligned(n, 1.0) for _ in range(tmax)]
    shard_counts = [s for s in a.shards if n // s >= C.MIN_SHARD_ELEMS]
    skipped = sorted(set(a.shards) - set(shard_counts))
    if skipped:
        H.log(
            f"n={C.pow2(n)}: skipping shards {skipped} (fewer than {C.MIN_SHARD_ELEMS} elements each)"
        )

    for T in a.threads:
        r.quiet.wait()
        t0 = time.perf_counter()
        push_base: dict[str, float] = {}
        pull_base: dict[str, float] = {}
        ids = range(T)
        rec = r.cell(
            "probe",
            "triad",
            n,
            T,
            [functools.partial(probe.triad, outs[i], ws[i], grads[i], -C.LR) for i in ids],
            C.PUSH_BYTES,
        )
        push_base["triad"] = rec["gb_per_s"]
        rec = r.cell(
            "probe",
            "axpy",
            n,
            T,
            [functools.partial(probe.axpy, ws[i], grads[i], -C.LR) for i in ids],
            C.PUSH_BYTES,
        )
        push_base["axpy"] = rec["gb_per_s"]
        rec = r.cell(
            "probe",
            "copy",
            n,
            T,
            [functools.partial(probe.copy, outs[i], ws[i]) for i in ids],
            C.PULL_BYTES,
        )
        pull_base["copy"] = rec["gb_per_s"]
        if torch is not None:
            torch.set_num_threads(T)
            tw, tg, to = (torch.from_numpy(x) for x in (ws[0], grads[0], outs[0]))
            rec = r.cell(
                "torch", "add_", n, T, [functools.partial(tw.add_, tg, alpha=-C.LR)], C.PUSH_BYTES
            )
            push_base["torch"] = rec["gb_per_s"]
            rec = r.cell("torch", "copy_", n, T, [functools.partial(to.copy_, tw)], C.PULL_BYTES)
            pull_base["torch"] = rec["gb_per_s"]

        kinds = ("fastps", "fastps-shm") if a.shared_too else ("fastps",)
        for mode, S, impl in itertools.product(a.modes, shard_counts, kinds):
            with fastps.Store(
                size=n,
                shards=S,
                mode=mode,
                lr=C.LR,
                max_learners=a.max_learners,
                nan_guard=C.GUARD_OFF,  # like add_ and the probes: no NaN/Inf check
                shared=impl == "fastps-shm",
            ) as store:
                hs = [store.learner() for _ in ids]
                for i, h in enumerate(hs):
                    h.pull(outs[i])
                r.cell(
                    impl,
                    "push",
                    n,
                    T,
                    [functools.partial(h.push, g) for h, g in zip(hs, grads)],
                    C.PUSH_BYTES,
                    mode,
                    S,
                    push_base,
                    after=lambda: {"stats": C.stats_brief(store.stats())},
                )
                r.cell(
                    impl,
                    "pull",
                    n,
                    T,
                    [functools.partial(h.pull, o) for h, o in zip(hs, outs)],
                    C.PULL_BYTES,
                    mode,
                    S,
                    pull_base,
                )
                for h in hs:
                    h.close()
        H.log(f"n={C.pow2(n)} threads={T}: done in {time.perf_counter() - t0:.1f} s")


# -- report -------------------------------------------------------------------------------------


def _pair_rows(records: Sequence[dict[str, Any]]) -> list[tuple[tuple, dict[str, Any]]]:
    """Records grouped per table row (n, T, impl, mode, S): {"push": rec, "pull": rec}.

    The probes take two rows: "triad/copy" (three streams, and the pull's copy) and "axpy"."""
    side = {"triad": "push", "axpy": "push", "add_": "push", "push": "push"}
    label = {"triad": "triad/copy", "copy": "triad/copy", "axpy": "axpy"}
    rows: dict[tuple, dict[str, Any]] = {}
    for rec in records:
        p = rec["params"]
        impl = label[p["op"]] if p["impl"] == "probe" else p["impl"]
        key = (p["n"], p["threads"], impl, p["mode"] or "-", p["shards"] or "-")
        rows.setdefault(key, {})[side.get(p["op"], "pull")] = rec
    return list(rows.items())


def _guard_note(args: argparse.Namespace) -> str:
    """What the tables' titles say about the NaN guard."""
    return "store cells: nan_guard=off (guard cost: bench/bench_guard.py)"


def print_table(records: Sequence[dict[str, Any]], args: argparse.Namespace) -> None:
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
        "/axpy",
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
        row = [C.pow2(n), T, impl, mode, S]
        for side, probes in (("push", ("axpy", "triad")), ("pull", ("copy",))):
            rec = cell.get(side)
            if rec is None:
                row += ["-"] * (4 + len(probes))
                continue
            row += [
                C.fmt(rec["gb_per_s"], ".2f"),
                C.fmt(rec["us_per_call"], ".3g"),
                C.fmt(100 * rec["spread"], ".0f") + "%",
                C.fmt(rec.get("ratio_torch"), ".2f"),
                *(C.fmt(rec.get(f"ratio_{pr}"), ".2f") for pr in probes),
            ]
        other = [r["foreign_cpus"] for r in cell.values() if not math.isnan(r["foreign_cpus"])]
        row.append(C.fmt(max(other), ".2f") if other else "-")
        st = cell["push"].get("stats", {}) if "push" in cell else {}
        notes = [f"{k}={st[k]}" for k in ("dropped", "cas_failures", "slot_waits") if st.get(k)]
        if st.get("lock_wait_s"):
            notes.append(f"lock_wait={st['lock_wait_s']:.2g}s")
        rows.append([*row, " ".join(notes) or "-"])
    H.print_table(
        header,
        rows,
        title=(
            f"{_guard_note(args)}. "
            "push = push+apply (12 B/elem), pull (8 B/elem); us = one call (T > 1: one round of "
            "T concurrent calls); spread = (p90-p10)/median; /add_ /axpy /triad /copy_ /copy = "
            "fastps GB/s over the baseline's at the same n and T (axpy: in place, the shape of a "
            "locked/hogwild push; triad: out of place, the shape of a leashed push); other_cpus "
            "= CPUs other processes kept busy meanwhile"
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

    def ratio(mode: str, T: int, key: str = "ratio_torch") -> tuple[float | None, str]:
        big = pick(mode, "push", T, lambda n: n >= TARGET_PUSH_FROM)
        xs = [r[key] for r in big if r.get(key) is not None]
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
        (ax1, ax_span), (tr1, tr_span) = ratio(mode, 1, "ratio_axpy"), ratio(mode, 1, "ratio_triad")
        (push1, push_s), (pull1, pull_s) = us(mode, "push"), us(mode, "pull")
        ok_ratio = None if r1 is None else r1 >= TARGET_PUSH_RATIO
        ok_us = None if push1 is None or pull1 is None else max(push1, pull1) <= TARGET_US
        rows.append(
            [mode, C.fmt(r1, ".2f"), span1, C.fmt(ax1, ".2f"), ax_span, C.fmt(tr1, ".2f"), tr_span,
             C.fmt(r2, ".2f"), C.fmt(push1, ".2f"), C.fmt(push_s, ".2f"), C.fmt(pull1, ".2f"),
             C.fmt(pull_s, ".2f"), verdict[ok_ratio], verdict[ok_us]]
        )  # fmt: skip
    smax = max(args.shards)
    H.print_table(
        (
            f"mode push/add_@T1 range push/axpy@T1 range push/triad@T1 range push/add_@T2 "
            f"push_us@S1 push_us@S{smax} pull_us@S1 "
            f"pull_us@S{smax} >={TARGET_PUSH_RATIO}x_add_ <={TARGET_US:g}us"
        ).split(),
        rows,
        title=(
            f"summary ({_guard_note(args)}): push/add_, push/axpy, push/triad = median fastps/baseline GB/s over "
            f"n >= {C.pow2(TARGET_PUSH_FROM)} and all shard counts (range: min..max); the matched "
            "probe is axpy for locked/hogwild, triad for leashed; us = one call at "
            f"n = {C.pow2(TARGET_US_AT)}, 1 thread; targets judged at T=1 (ratio vs add_) and "
            "S=1 (us); reported, not asserted"
        ),
    )
    H.report_noisy(records, args.quiet_below, "cells")


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
    if args.no_policies or args.no_guard:
        H.log("--no-policies and --no-guard are ignored: bench_policies.py and bench_guard.py "
              "measure those now")  # fmt: skip
    H.log(
        f"fastps {fastps.__version__}: sizes {[C.pow2(n) for n in args.sizes]}, modes "
        f"{args.modes}, threads {args.threads}, shards {args.shards}, target "
        f"{args.target_s} s/cell, repeats {args.min_repeats}..{args.repeats}, store cells "
        f"nan_guard={C.GUARD_OFF}"
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
    H.log(f"all cells in {time.perf_counter() - t0:.0f} s, {r.quiet.spent_s:.0f} s of it "
          "waiting for quiet")  # fmt: skip
    if r.records:
        print_table(r.records, args)
        print_summary(r.records, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
