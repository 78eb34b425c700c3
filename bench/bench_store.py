"""How fast are push+apply and pull through fastps.Store compared with the machine's own
baselines, per mode, shard count and learner-thread count?

For every size n = 2^min_log2 .. 2^max_log2 and learner-thread count T, one run measures:

* baselines (the machine, not fastps):
  - probes, native loops with the GIL released: ``fastps._core.probe_axpy(w, g, s)``
    (w += s*g in place: two streams, the memory shape of a locked or hogwild push),
    ``probe_triad(a, b, c, s)`` (a = b + s*c: three streams, the shape of a leashed push, which
    writes a new version), both 12 B/element nominal, and ``probe_copy(dst, src)`` (8 B/element,
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
  its own in the guard section below. ``h.push(g)`` (read w, read g, write w: 12 B/element) and ``h.pull(out)`` (8 B).
  With T > 1, each of T Python threads has its own handle and pushes (pulls) the full-size
  vector; throughput is the bytes moved by all threads over the wall time of the round.

Each record carries ``gb_per_s`` (1e9 B/s, nominal bytes above), ``us_per_call`` (wall time of
one call, or of one round with T > 1) and, for fastps, GB/s ratios to the baselines at the same
n and T: push records ``ratio_torch`` (vs add_), ``ratio_axpy`` and ``ratio_triad``; pull
records ``ratio_torch`` (vs copy_) and ``ratio_copy``. ``ratio_probe`` is the ratio to the probe
of the same memory shape, named in ``probe_op``: axpy for a locked or hogwild push, triad for a
leashed push, copy for a pull. Targets, reported and never asserted: push at n >= 2^22 at least
0.9x torch add_; push and pull at most 2 us at n = 2^10.

Step-size policies (``bench: "store_policy"``; --no-policies skips them): push cost of each
policy relative to Constant, at n = --policy-n (2^20) and 2^10, --policy-shards shards, one
learner, every mode. Each store is ``fastps.Store(size=n, shards=S, mode=mode, lr=1e-3,
step_size=POLICY)`` for Constant, Inverse, Exponential(beta=0.1), TailTau(warmup=10) (its table
is built during the untimed warmup pushes), StalenessDistance(c=1, eta_max=1e-3) and a Python
hook ``lambda tau, stats: 1e-3``, plus a second Constant store as an A/A control (its ratio is
the noise floor). The policies are timed in alternation, batch by batch, with the order rotated
each round, so ``time_ratio`` (push time / Constant's push time) is the median of per-round
ratios. StalenessDistance's pull is timed too against Constant's pull (non-leashed modes copy a
snapshot at pull). ``extra_us_per_shard_update`` = median per-round (time - Constant's time) /
shards: for the hook, the cost of one Python call per shard update. The issue's target,
reported and never asserted: native policies (Constant, Inverse, Exponential, TailTau) within
5% of Constant at n = 2^20. These stores keep the default ``nan_guard="raise"`` (recorded
in ``params.nan_guard``): it costs every policy the same, so it only dilutes the ratios.

NaN guard (``bench: "store_guard"``; --no-guard skips it): what ``nan_guard="raise"`` (the
default: push first reads the whole gradient once to refuse NaN/Inf, before any shard changes)
costs per push. For every mode and n in 2^10, 2^16, 2^20, 2^22, 2^24 (within --min-log2 and
--max-log2; --quick: 2^10, 2^16, 2^20), 1 learner, --guard-shards (4) shards, two stores, one
with ``nan_guard="off"`` and one with ``"raise"``, are pushed in alternation in the same
rounds, as the policies are. Each record (one per guard setting) carries ``time_ratio`` (push
time / the "off" store's push time, median of per-round ratios, with ``time_ratio_p10``/``_p90``)
and ``extra_us_per_push`` (median per-round time difference); the "raise" record adds
``guard_gb_per_s`` (4 B/element over the extra time: the bandwidth of the guard's read pass) and
``guard_refuses_nan`` (after timing, a push of a gradient holding one NaN raised ValueError).

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
from collections.abc import Callable, Mapping, Sequence
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
POLICY_BENCH = "store_policy"
GUARD_BENCH = "store_guard"
GUARD_SIZES = (1 << 10, 1 << 16, 1 << 20, 1 << 22, 1 << 24)
GUARD_QUICK_SIZES = QUICK_SIZES
GUARD_OFF, GUARD_ON = "off", "raise"
POLICY_SMALL_N = 1 << 10
POLICY_TARGET = 0.05  # native policies within 5% of Constant at --policy-n
TAIL_WARMUP = 10  # TailTau(warmup=...): shard updates before its table is built
HOOK_LR = 1e-3


# (name, factory): every policy gets its own store; "Constant#2" is the A/A control
POLICIES: tuple[tuple[str, Callable[[], Any]], ...] = (
    ("Constant", lambda: fastps.Constant()),
    ("Constant#2", lambda: fastps.Constant()),
    ("Inverse", lambda: fastps.Inverse()),
    ("Exponential", lambda: fastps.Exponential(beta=0.1)),
    ("TailTau", lambda: fastps.TailTau(warmup=TAIL_WARMUP)),
    ("StalenessDistance", lambda: fastps.StalenessDistance(c=1.0, eta_max=1e-3)),
    ("hook", lambda: lambda tau, stats: HOOK_LR),
)
NATIVE = ("Constant", "Inverse", "Exponential", "TailTau")
PULL_POLICIES = ("Constant", "StalenessDistance")
OMP_SPIN = "1000000"
OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " ...")
    p.add_argument("--min-log2", type=int, default=10, help="smallest size 2^k (default 10)")
    p.add_argument("--max-log2", type=int, default=26, help="largest size 2^k (default 26)")
    p.add_argument("--step", type=int, default=2, help="step of k between sizes (default 2)")
    p.add_argument("--modes", type=H.mode_list, default=list(fastps.MODES), help="default: all")
    p.add_argument("--threads", type=H.int_list, default=[1, 2], help="learner threads (1,2)")
    p.add_argument("--shards", type=H.int_list, default=[1, 4, 16], help="shard counts (1,4,16)")
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
    H.add_quiet_args(p, retries=2, max_wait=30.0, wait_budget=300.0)
    p.add_argument("--no-torch", action="store_true", help="skip the torch baseline")
    p.add_argument(
        "--omp-spin",
        default=OMP_SPIN,
        help=f"GOMP_SPINCOUNT set before importing torch unless OMP_WAIT_POLICY or "
        f"GOMP_SPINCOUNT is already set; 'keep' leaves OpenMP's defaults "
        f"(default {OMP_SPIN}, see the module docstring)",
    )
    p.add_argument("--no-policies", action="store_true", help="skip the step-size policy section")
    p.add_argument(
        "--policy-n",
        type=int,
        default=1 << 20,
        help="size of the policy section (default 2^20; 2^10 is measured too)",
    )
    p.add_argument(
        "--policy-shards", type=int, default=4, help="shards in the policy section (default 4)"
    )
    p.add_argument("--no-guard", action="store_true", help="skip the NaN-guard section")
    p.add_argument(
        "--guard-shards", type=int, default=4, help="shards in the guard section (default 4)"
    )
    p.add_argument(
        "--no-store",
        action="store_true",
        help="skip the baselines and store cells (policies and guard only)",
    )
    p.add_argument("--out", type=argparse.FileType("w"), help="also write the JSON lines here")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes = list(QUICK_SIZES)
        a.guard_sizes = list(GUARD_QUICK_SIZES)
    else:
        if a.step < 1 or a.min_log2 < 0 or a.max_log2 < a.min_log2:
            p.error("need 0 <= --min-log2 <= --max-log2 and --step >= 1")
        a.sizes = [1 << k for k in range(a.min_log2, a.max_log2 + 1, a.step)]
        lo, hi = 1 << a.min_log2, 1 << a.max_log2
        a.guard_sizes = [n for n in GUARD_SIZES if lo <= n <= hi]
    a.repeats = a.repeats or (5 if a.quick else 20)
    a.min_repeats = max(1, min(a.min_repeats, a.repeats))
    a.target_s = a.target_s or (0.05 if a.quick else 0.3)
    if a.policy_n < 1 or a.policy_shards < 1:
        p.error("need --policy-n >= 1 and --policy-shards >= 1")
    if a.guard_shards < 1:
        p.error("need --guard-shards >= 1")
    a.policy_sizes = sorted({a.policy_n, POLICY_SMALL_N}, reverse=True)
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
        self.policy_records: list[dict[str, Any]] = []
        self.guard_records: list[dict[str, Any]] = []
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

    def time_rounds(self, what: str, body: Callable[[], Any]) -> tuple[Any, float, int]:
        """(body(), foreign CPUs, attempts): ``body`` (interleaved timings) run again after a
        quiet wait (--retries) when other processes kept --quiet-below CPUs or more busy."""
        a = self.a
        attempt = 1
        while True:
            load = H.ForeignLoad()
            with load:
                result = body()
            if not load.cores >= a.quiet_below or attempt > a.retries or not self.wait_quiet():
                return result, load.cores, attempt
            H.log(f"other processes kept {load.cores:.2f} CPUs busy during the {what}; again")
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
            params["nan_guard"] = GUARD_OFF
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
            # base: GB/s of the baselines at this n and T, keyed by op ("torch" = torch's op)
            rec["ratio_torch"] = _ratio(rec["gb_per_s"], base.get("torch"))
            probes = ("axpy", "triad") if op == "push" else ("copy",)
            for probe in probes:
                rec[f"ratio_{probe}"] = _ratio(rec["gb_per_s"], base.get(probe))
            matched = "copy" if op != "push" else "triad" if mode == "leashed" else "axpy"
            rec["probe_op"] = matched
            rec["ratio_probe"] = rec[f"ratio_{matched}"]
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
        push_base["triad"] = rec["gb_per_s"]
        rec = r.cell(
            "probe",
            "axpy",
            n,
            T,
            [functools.partial(_core.probe_axpy, ws[i], grads[i], -LR) for i in ids],
            PUSH_BYTES,
        )
        push_base["axpy"] = rec["gb_per_s"]
        rec = r.cell(
            "probe",
            "copy",
            n,
            T,
            [functools.partial(_core.probe_copy, outs[i], ws[i]) for i in ids],
            PULL_BYTES,
        )
        pull_base["copy"] = rec["gb_per_s"]
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
                    size=n,
                    shards=S,
                    mode=mode,
                    lr=LR,
                    max_learners=a.max_learners,
                    nan_guard=GUARD_OFF,  # like add_ and the probes: no NaN/Inf check
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
    keys = ("pushes", "shard_updates", "dropped", "cas_failures", "slot_waits", "lock_wait_s",
            "step_builds")  # fmt: skip
    return {k: st[k] for k in keys if k in st}


# -- step-size policies -------------------------------------------------------------------------


def run_policies(r: Runner) -> None:
    """The policy section: every mode at each of --policy-n and 2^10 (see the module docstring)."""
    _run_section(r, "policies", r.a.policy_sizes, r.a.policy_shards, _policy_cell)


def _run_section(r: Runner, label: str, sizes: Sequence[int], S: int, cell: Any) -> None:
    """Every mode at every size of a paired section, with one gradient and out buffer a size."""
    for n in sizes:
        if n // S < MIN_SHARD_ELEMS:
            H.log(f"{label}: skipping n={_pow2(n)} (fewer than {MIN_SHARD_ELEMS} elements/shard)")
            continue
        rng = np.random.default_rng(n)
        g = _aligned(n, rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3))
        out = _aligned(n)
        for mode in r.a.modes:
            t0 = time.perf_counter()
            r.wait_quiet()
            cell(r, mode, n, S, g, out)
            H.log(f"{label} n={_pow2(n)} mode={mode}: done in {time.perf_counter() - t0:.1f} s")


def _policy_cell(r: Runner, mode: str, n: int, S: int, g: np.ndarray, out: np.ndarray) -> None:
    a = r.a
    # untimed pushes per store before timing: enough for TailTau's table (warmup shard updates)
    warmup = max(a.warmup, -(-TAIL_WARMUP // S) + 1)
    stores = {
        name: fastps.Store(
            size=n,
            shards=S,
            mode=mode,
            lr=LR,
            step_size=make(),
            max_learners=a.max_learners,
            nan_guard=GUARD_ON,  # the default, named so the records can say it
        )
        for name, make in POLICIES
    }
    try:
        handles = {name: st.learner() for name, st in stores.items()}
        for h in handles.values():
            h.pull(out)  # a read version for StalenessDistance (and the same start for all)
        pushes = {name: functools.partial(h.push, g) for name, h in handles.items()}
        pulls = {name: functools.partial(handles[name].pull, out) for name in PULL_POLICIES}
        timings, foreign, attempt = r.time_rounds(
            "policies",
            lambda: {
                "push": _interleaved(a, pushes, warmup, "Constant"),
                "pull": _interleaved(a, pulls, a.warmup, "Constant"),
            },
        )
        stats = {name: _stats_brief(st.stats()) for name, st in stores.items()}
        if not stats["TailTau"].get("step_builds"):
            H.log(f"policies n={_pow2(n)} mode={mode}: TailTau built no table (step_builds=0)")
        for op, ts in timings.items():
            ref = ts["Constant"]
            bytes_per_item = PUSH_BYTES if op == "push" else PULL_BYTES
            for name, t in ts.items():
                ratio = H.quantiles(H.paired(t, ref, lambda x, y: x / y))
                extra = H.quantiles(H.paired(t, ref, lambda x, y: (x - y) * 1e6 / S))
                params = {
                    "impl": "fastps",
                    "op": op,
                    "n": n,
                    "threads": 1,
                    "mode": mode,
                    "shards": S,
                    "lr": LR,
                    "policy": name,
                    "step_size": repr(stores[name].step_size)
                    if name != "hook"
                    else f"lambda tau, stats: {HOOK_LR:g}",
                    "max_learners": a.max_learners,
                    "nan_guard": GUARD_ON,
                }
                rec = H.record(POLICY_BENCH, params, t, items_per_call=n, threads=1)
                rec["bytes_per_item"] = bytes_per_item
                rec["gb_per_s"] = rec["items_per_s"] * bytes_per_item / 1e9
                rec["us_per_call"] = t.median_s * 1e6
                rec["spread"] = t.spread
                rec["time_ratio"] = ratio[1]  # time / Constant's time, median of the rounds
                rec["time_ratio_p10"], rec["time_ratio_p90"] = ratio[0], ratio[2]
                rec["extra_us_per_shard_update"] = extra[1]
                rec["extra_us_p10"], rec["extra_us_p90"] = extra[0], extra[2]
                rec["foreign_cpus"] = foreign
                rec["attempts"] = attempt
                rec["stats"] = stats[name]
                H.emit(rec, r.files)
                r.policy_records.append(rec)
    finally:
        for st in stores.values():
            st.close()


def _interleaved(
    a: argparse.Namespace, fns: Mapping[str, Callable[[], object]], warmup: int, ref: str
) -> dict[str, H.Timing]:
    """``fns`` timed in alternation, --repeats rounds, about --target-s of timing each; the batch
    is planned on ``fns[ref]``, so every callable runs the same number of calls per round."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    batch, _ = H.plan(fns[ref], target_s=a.target_s, max_repeats=a.repeats, min_repeats=a.repeats)
    return H.measure_interleaved(fns, warmup=0, repeats=a.repeats, batch=batch)


# -- NaN guard ----------------------------------------------------------------------------------


def run_guard(r: Runner) -> None:
    """The guard section: push with nan_guard="off" vs "raise", every mode and guard size."""
    _run_section(r, "guard", r.a.guard_sizes, r.a.guard_shards, _guard_cell)


def _guard_cell(r: Runner, mode: str, n: int, S: int, g: np.ndarray, out: np.ndarray) -> None:
    a = r.a
    stores = {
        guard: fastps.Store(
            size=n, shards=S, mode=mode, lr=LR, max_learners=a.max_learners, nan_guard=guard
        )
        for guard in (GUARD_OFF, GUARD_ON)
    }
    handles: dict[str, Any] = {}
    try:
        handles.update((guard, st.learner()) for guard, st in stores.items())
        for h in handles.values():
            h.pull(out)
        pushes = {guard: functools.partial(h.push, g) for guard, h in handles.items()}
        timings, foreign, attempt = r.time_rounds(
            "guard cell", lambda: _interleaved(a, pushes, a.warmup, GUARD_OFF)
        )
        refuses = _refuses_nan(handles[GUARD_ON], g)
        if not refuses:
            H.log(f"guard n={_pow2(n)} mode={mode}: nan_guard='raise' accepted a NaN gradient")
        ref = timings[GUARD_OFF]
        for guard, t in timings.items():
            ratio = H.quantiles(H.paired(t, ref, lambda x, y: x / y))
            extra = H.quantiles(H.paired(t, ref, lambda x, y: (x - y) * 1e6))
            params = {
                "impl": "fastps",
                "op": "push",
                "n": n,
                "threads": 1,
                "mode": mode,
                "shards": S,
                "lr": LR,
                "max_learners": a.max_learners,
                "nan_guard": guard,
            }
            rec = H.record(GUARD_BENCH, params, t, items_per_call=n, threads=1)
            rec["bytes_per_item"] = PUSH_BYTES
            rec["gb_per_s"] = rec["items_per_s"] * PUSH_BYTES / 1e9
            rec["us_per_call"] = t.median_s * 1e6
            rec["spread"] = t.spread
            rec["time_ratio"] = ratio[1]  # push time / the "off" store's, median of the rounds
            rec["time_ratio_p10"], rec["time_ratio_p90"] = ratio[0], ratio[2]
            rec["extra_us_per_push"] = extra[1]
            rec["extra_us_p10"], rec["extra_us_p90"] = extra[0], extra[2]
            if guard == GUARD_ON:
                # 4 B/element read once more, over the extra time (None when it is not positive)
                rec["guard_gb_per_s"] = n * 4 / (extra[1] * 1e3) if extra[1] > 0 else None
                rec["guard_refuses_nan"] = refuses
            rec["foreign_cpus"] = foreign
            rec["attempts"] = attempt
            rec["stats"] = _stats_brief(stores[guard].stats())
            H.emit(rec, r.files)
            r.guard_records.append(rec)
    finally:
        for h in handles.values():
            h.close()
        for st in stores.values():
            st.close()


def _refuses_nan(h: Any, g: np.ndarray) -> bool:
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


# -- report -------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


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
    """What the store cells' titles say about the NaN guard."""
    if args.no_guard or not args.guard_sizes:
        return "store cells: nan_guard=off (guard cost not measured in this run)"
    return "store cells: nan_guard=off; guard cost below"


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
        row = [_pow2(n), T, impl, mode, S]
        for side, probes in (("push", ("axpy", "triad")), ("pull", ("copy",))):
            rec = cell.get(side)
            if rec is None:
                row += ["-"] * (4 + len(probes))
                continue
            row += [
                _fmt(rec["gb_per_s"], ".2f"),
                _fmt(rec["us_per_call"], ".3g"),
                _fmt(100 * rec["spread"], ".0f") + "%",
                _fmt(rec.get("ratio_torch"), ".2f"),
                *(_fmt(rec.get(f"ratio_{pr}"), ".2f") for pr in probes),
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
            [mode, _fmt(r1, ".2f"), span1, _fmt(ax1, ".2f"), ax_span, _fmt(tr1, ".2f"), tr_span,
             _fmt(r2, ".2f"), _fmt(push1, ".2f"), _fmt(push_s, ".2f"), _fmt(pull1, ".2f"),
             _fmt(pull_s, ".2f"), verdict[ok_ratio], verdict[ok_us]]
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
            f"n >= {_pow2(TARGET_PUSH_FROM)} and all shard counts (range: min..max); the matched "
            "probe is axpy for locked/hogwild, triad for leashed; us = one call at "
            f"n = {_pow2(TARGET_US_AT)}, 1 thread; targets judged at T=1 (ratio vs add_) and "
            "S=1 (us); reported, not asserted"
        ),
    )
    H.report_noisy(records, args.quiet_below, "cells")


def print_policy_table(records: Sequence[dict[str, Any]]) -> None:
    rows = []
    for rec in records:
        p = rec["params"]
        st = rec["stats"]
        notes = [f"step_builds={st['step_builds']}"] if "step_builds" in st else []
        notes += [f"{k}={st[k]}" for k in ("dropped", "slot_waits") if st.get(k)]
        rows.append(
            [p["mode"], _pow2(p["n"]), p["shards"], p["policy"], p["op"],
             _fmt(rec["us_per_call"], ".4g"), _fmt(100 * rec["spread"], ".0f") + "%",
             _fmt(rec["time_ratio"], ".3f"),
             f"{_fmt(rec['time_ratio_p10'], '.3f')}..{_fmt(rec['time_ratio_p90'], '.3f')}",
             _fmt(rec["extra_us_per_shard_update"], ".3f"), _fmt(rec["foreign_cpus"], ".2f"),
             " ".join(notes) or "-"]
        )  # fmt: skip
    header = ("mode", "n", "S", "policy", "op", "us", "spread", "/Constant", "p10..p90",
              "extra_us/upd", "other_cpus", "stats")  # fmt: skip
    H.print_table(
        header,
        rows,
        title=(
            "step-size policies, 1 learner: us = one call; /Constant = time over Constant's "
            "time in the same round (median of rounds, p10..p90 of rounds); extra_us/upd = "
            "(time - Constant's) / shards, in us per shard update; Constant#2 is a second "
            "Constant store (A/A control: the noise floor)"
        ),
    )


def print_policy_summary(records: Sequence[dict[str, Any]], args: argparse.Namespace) -> None:
    def get(mode: str, n: int, policy: str, op: str = "push") -> dict[str, Any] | None:
        for rec in records:
            p = rec["params"]
            if (p["mode"], p["n"], p["policy"], p["op"]) == (mode, n, policy, op):
                return rec
        return None

    sizes = [n for n in args.policy_sizes if any(r["params"]["n"] == n for r in records)]
    header = ["mode"]
    for n in sizes:
        k = _pow2(n)
        header += [f"native|r-1|@{k}", f"A/A|r-1|@{k}", f"SD_push@{k}", f"SD_pull@{k}"]
        header += [f"hook@{k}", f"hook_us/upd@{k}"]
    header.append(f"native<={100 * POLICY_TARGET:g}%@{_pow2(args.policy_n)}")
    verdict = {None: "n/a", True: "met", False: "MISSED"}
    rows = []
    for mode in args.modes:
        row: list[Any] = [mode]
        ok = None
        for n in sizes:
            native = [rec for p in NATIVE if (rec := get(mode, n, p)) is not None]
            worst = max(native, key=lambda rec: abs(rec["time_ratio"] - 1), default=None)
            dev = None if worst is None else abs(worst["time_ratio"] - 1)
            aa, sd, sd_pull, hook = (
                get(mode, n, "Constant#2"),
                get(mode, n, "StalenessDistance"),
                get(mode, n, "StalenessDistance", "pull"),
                get(mode, n, "hook"),
            )
            row += [
                "-" if worst is None else f"{dev:.3f} ({worst['params']['policy']})",
                _fmt(None if aa is None else abs(aa["time_ratio"] - 1), ".3f"),
                _fmt(None if sd is None else sd["time_ratio"], ".3f"),
                _fmt(None if sd_pull is None else sd_pull["time_ratio"], ".3f"),
                _fmt(None if hook is None else hook["time_ratio"], ".3f"),
                _fmt(None if hook is None else hook["extra_us_per_shard_update"], ".3f"),
            ]
            if n == args.policy_n and dev is not None:
                ok = dev <= POLICY_TARGET
        rows.append([*row, verdict[ok]])
    H.print_table(
        header,
        rows,
        title=(
            f"policy summary, {args.policy_shards} shards, 1 learner: native|r-1| = largest "
            "|push time / Constant's - 1| over Constant, Inverse, Exponential, TailTau (which "
            "one); A/A = the same for a second Constant store (noise floor); SD_push, SD_pull, "
            "hook = time / Constant's (StalenessDistance's extra pass; its pull copies a snapshot "
            "outside leashed mode); hook_us/upd = the hook's extra us per shard update; target "
            "reported, not asserted"
        ),
    )
    H.report_noisy(records, args.quiet_below, "policy records")


def print_guard_table(records: Sequence[dict[str, Any]]) -> None:
    by_cell: dict[tuple[str, int, int], dict[str, dict[str, Any]]] = {}
    for rec in records:
        p = rec["params"]
        by_cell.setdefault((p["mode"], p["n"], p["shards"]), {})[p["nan_guard"]] = rec
    rows = []
    for (mode, n, S), cell in by_cell.items():
        off, on = cell.get(GUARD_OFF), cell.get(GUARD_ON)
        if off is None or on is None:
            continue
        rows.append(
            [mode, _pow2(n), S, _fmt(off["us_per_call"], ".4g"), _fmt(on["us_per_call"], ".4g"),
             _fmt(on["time_ratio"], ".3f"),
             f"{_fmt(on['time_ratio_p10'], '.3f')}..{_fmt(on['time_ratio_p90'], '.3f')}",
             _fmt(on["extra_us_per_push"], ".3g"),
             f"{_fmt(on['extra_us_p10'], '.3g')}..{_fmt(on['extra_us_p90'], '.3g')}",
             _fmt(on.get("guard_gb_per_s"), ".2f"), _fmt(off["gb_per_s"], ".2f"),
             _fmt(100 * max(off["spread"], on["spread"]), ".0f") + "%",
             _fmt(on["foreign_cpus"], ".2f"), "yes" if on.get("guard_refuses_nan") else "NO"]
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
    on = {
        (r["params"]["mode"], r["params"]["n"]): r
        for r in records
        if r["params"]["nan_guard"] == GUARD_ON
    }
    sizes = [n for n in args.guard_sizes if any(n == k[1] for k in on)]
    if not sizes:
        return
    header = ["mode"]
    for n in sizes:
        header += [f"raise/off@{_pow2(n)}", f"+us@{_pow2(n)}"]
    header.append(f"guard_GB/s@{_pow2(sizes[-1])}")
    rows = []
    for mode in args.modes:
        row: list[Any] = [mode]
        for n in sizes:
            rec = on.get((mode, n))
            row += [
                _fmt(None if rec is None else rec["time_ratio"], ".3f"),
                _fmt(None if rec is None else rec["extra_us_per_push"], ".3g"),
            ]
        big = on.get((mode, sizes[-1]))
        rows.append([*row, _fmt(None if big is None else big.get("guard_gb_per_s"), ".2f")])
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
        f"{args.target_s} s/cell, repeats {args.min_repeats}..{args.repeats}, store cells "
        f"nan_guard={GUARD_OFF}, guard sizes "
        f"{'skipped' if args.no_guard else [_pow2(n) for n in args.guard_sizes]}"
    )
    r = Runner(args, files)
    t0 = time.perf_counter()
    try:
        if not args.no_store:
            for n in args.sizes:
                run_size(r, n, torch)
        if not args.no_policies:
            run_policies(r)
        if not args.no_guard:
            run_guard(r)
    finally:
        if torch is not None:
            torch.set_num_threads(torch_threads)
        if args.out:
            args.out.close()
    H.log(
        f"all cells in {time.perf_counter() - t0:.0f} s, {r.waited_s:.0f} s of it waiting for quiet"
    )
    if r.records:
        print_table(r.records, args)
        print_summary(r.records, args)
    if r.policy_records:
        print_policy_table(r.policy_records)
        print_policy_summary(r.policy_records, args)
    if r.guard_records:
        print_guard_table(r.guard_records)
        print_guard_summary(r.guard_records, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
