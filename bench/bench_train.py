"""How many updates per second, and how soon a target test accuracy, does fit() reach with P
learner processes, compared with PyTorch's Hogwild pattern on the same model and batches?

Fashion-MNIST, the "mlp" model (784-128-128-128-10), SGD with lr 0.05 and each --momentum
(default 0; PyTorch's mnist_hogwild example uses 0.5; "0,0.5" measures both, one after the
other), mini-batches of 64, --updates updates in all, shared equally by the P learners, for
every P in --learners:

* fastps: ``fit(model_fn, load, learners=P, variant="async", mode=MODE, lr, momentum,
  batch_size, updates, eval_every, backend="process")`` for every mode in --modes. The momentum
  buffer lives in the store, one for all learners.
* torch-hogwild, written here after PyTorch's ``mnist_hogwild`` example: the same model,
  ``model.share_memory()``, P processes from ``torch.multiprocessing`` (spawn), each with
  ``torch.set_num_threads(learner_threads(P))`` (fit()'s default: the cores shared out, at
  least 1), its own ``torch.optim.SGD(model.parameters(), lr, momentum)``
  (so one momentum buffer per process, as in the example), the data set
  loaded from disk and the same shuffled mini-batches as fit()'s learner of the same rank (numpy
  generator seeded with (seed, rank)). Each process stores its step count in its own slot of a
  shared int64 array after every step (a plain store, well under a microsecond), so the parent
  can evaluate at the same update counts as fit().

Both sides load the data and build the model in every learner, then wait at a start event, so
process start-up and data loading are outside every measurement below.

Measured per run:

* ``updates_per_s`` (the headline): all updates / the longest learner's *learner time*, the time
  the learner spent inside its steps. fastps: ``compute_s + push_s + pull_s + wait_s + delay_s``
  of ``History.learners`` (zero_grad, forward, backward; gradient gather and push; pull).
  torch-hogwild: the same span of its loop (zero_grad, forward, backward, ``opt.step()``). Both
  leave out picking the mini-batch (numpy indexing), which is the same code on both sides.
* ``wall_updates_per_s``: all updates / wall time from the start event to the last learner's
  end. torch-hogwild: the workers' clock (CLOCK_MONOTONIC, shared by the processes). fastps:
  the longest ``run_s`` of ``History.learners`` (each learner's time from the start event to
  its end).
* time to --target test accuracy: the parent evaluates the shared parameters on the whole test
  set every ``eval_every`` updates (both sides: fit() does it itself; here the parent polls the
  step counts every 50 ms, as fit() polls its store). ``eval_every`` is the same for every
  implementation at a given P: --eval-period seconds' worth of updates at the warmup's rate
  times min(P, cores). ``time_to_target_s`` is the time from the start event to the first
  evaluation that reached the target, stamped when it read the parameters (as fit() stamps
  its evaluations); so it is quantised by the evaluation interval. ``updates_to_target``: the update count of that
  evaluation. ``final_accuracy``: after all learners finished. The evaluations run in the parent
  with --eval-threads torch threads (default 1, so they do not oversubscribe a small machine).

Warmup: one untimed run of each implementation at P = 1 (page cache, imports; it also gives the
rate that sets ``eval_every``, the same for every momentum). Then, for each momentum in turn,
--repeats rounds, each running every (P, implementation) once, the order of implementations
rotated by one per round; a record holds the median over rounds and p10/p90. ``ratio_torch`` =
fastps's median ``updates_per_s`` over torch-hogwild's at the same P and momentum
(``ratio_torch_wall`` for wall_updates_per_s); ``ratio_torch_p10``/``_p90`` come from the
per-round ratios. The issue's target, reported and never asserted: ratio_torch >= 1.25 at
P = 2.

A run during which other processes kept --quiet-below CPUs or more busy (``foreign_cpus``, from
/proc/stat, the run's own child processes counted as its own) is run again after waiting for a
quiet machine, at most --retries times and within --wait-budget seconds for the whole run.

Output: JSON lines (bench/_results.py's Writer: with the command and the machine), one per
(momentum, implementation, mode, P), kind "cell", on stdout and in --out (default
bench/results/bench_train.jsonl, --quick: /tmp/bench_train.quick.jsonl; written once all runs
are done); then, per momentum, a '#'-prefixed table and summary (``tables``, which
bench/make_results.py also puts in docs/results.md); progress on stderr. See bench/_harness.py.
Run it as a script so the installed fastps is imported:

    python bench/bench_train.py --quick
    python bench/bench_train.py --momentum 0,0.5    # the records of docs/results.md
    python bench/bench_train.py --out /tmp/bench_train.jsonl
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _harness as H
import _results as R
from _train_runs import DATASET, MODEL, TORCH, Run, run_fastps, run_hogwild
from _train_tables import tables

# torch and fastps are imported where they are used: bench/make_results.py imports this module
# for ``tables`` alone (bench/_train_tables.py).

NAME = "bench_train"
__all__ = ["main", "tables"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " ...")
    p.add_argument("--learners", type=H.int_list, default=None, help="P values (default 1,2,4)")
    p.add_argument(
        "--modes",
        type=H.mode_list,
        default=["leashed", "locked"],
        help="fastps modes (default leashed,locked)",
    )
    p.add_argument("--updates", type=int, default=None, help="updates per run (default 3000)")
    p.add_argument("--repeats", type=int, default=None, help="rounds (default 3)")
    p.add_argument("--batch-size", type=int, default=64, help="mini-batch (default 64)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD step size (default 0.05)")
    p.add_argument(
        "--momentum",
        type=H.float_list,
        default=[0.0],
        help="SGD momentum on both sides, one or more, e.g. 0,0.5 (default 0; PyTorch's "
        "mnist_hogwild uses 0.5)",
    )
    p.add_argument("--seed", type=int, default=0, help="model and batch seed (default 0)")
    p.add_argument("--target", type=float, default=0.80, help="test accuracy (default 0.80)")
    p.add_argument(
        "--eval-period",
        type=float,
        default=0.25,
        help="seconds between evaluations, turned into eval_every (default 0.25)",
    )
    p.add_argument(
        "--eval-threads",
        type=int,
        default=1,
        help="torch threads of the evaluating parent (default 1)",
    )
    p.add_argument(
        "--warmup-updates",
        type=int,
        default=500,
        help="updates of the warmup run per implementation (default 500)",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the torch-hogwild baseline")
    p.add_argument("--quick", action="store_true", help="P = 1,2, 1000 updates, 1 round")
    H.add_quiet_args(p, retries=1, max_wait=20.0, wait_budget=60.0)
    p.add_argument("--timeout", type=float, default=300.0, help="limit per run (default 300 s)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON lines (default bench/results/{NAME}.jsonl, --quick: /tmp/{NAME}.quick.jsonl)",
    )
    a = p.parse_args(argv)
    a.learners = a.learners or ([1, 2] if a.quick else [1, 2, 4])
    a.updates = a.updates or (1000 if a.quick else 3000)
    a.repeats = a.repeats or (1 if a.quick else 3)
    if min(a.updates, a.repeats, a.batch_size, a.eval_threads, a.warmup_updates) < 1:
        p.error("need --updates, --repeats, --batch-size, --eval-threads, --warmup-updates >= 1")
    if a.updates < max(a.learners):
        p.error("need --updates >= the largest P")
    bad_momentum = any(not 0 <= m < 1 for m in a.momentum)
    if not 0.0 < a.target <= 1.0 or a.eval_period <= 0 or a.lr <= 0 or bad_momentum:
        p.error("need 0 < --target <= 1, --eval-period > 0, --lr > 0, 0 <= --momentum < 1")
    if len(set(a.momentum)) < len(a.momentum):
        p.error(f"--momentum names a value twice: {a.momentum}")
    if a.out is None:
        a.out = R.default_out(a, NAME)
    return a


# -- driver ---------------------------------------------------------------------------------------


class Runner:
    def __init__(self, a: argparse.Namespace, ds: Any) -> None:
        self.a, self.ds = a, ds
        self.quiet = H.Quiet.from_args(a)

    def once(
        self, impl: str, mode: str | None, P: int, updates: int, eval_every: int, momentum: float
    ) -> Run:
        if impl == TORCH:
            return run_hogwild(self.a, self.ds, P, updates, eval_every, momentum)
        return run_fastps(self.a, self.ds, P, updates, eval_every, mode or "leashed", momentum)

    def run(
        self, impl: str, mode: str | None, P: int, updates: int, eval_every: int, momentum: float
    ) -> Run:
        """A run, again after a quiet wait when other processes kept the machine busy (the
        run's own learner processes counted as its own)."""
        r, foreign, attempts = self.quiet.measure(
            lambda: self.once(impl, mode, P, updates, eval_every, momentum), children=True
        )
        r.foreign_cpus, r.attempts = foreign, attempts
        return r


def _median_or_none(xs: Sequence[float | None]) -> float | None:
    """Median where None counts as infinity (not reached); None when the median is."""
    vals = [math.inf if x is None else x for x in xs]
    if not vals:
        return None
    m = statistics.median(vals)
    return None if math.isinf(m) else m


def make_record(
    a: argparse.Namespace,
    impl: str,
    mode: str | None,
    P: int,
    momentum: float,
    eval_every: int,
    runs: list[Run],
) -> dict[str, Any]:
    """A cell's record: its ``params`` and measurements (the Writer adds bench, kind, command,
    env and time)."""
    from fastps.train.fit import learner_threads

    ups = [r.updates_per_s for r in runs]
    timing = H.Timing(tuple(1.0 / u for u in ups), batch=a.updates)
    params = {
        "impl": impl,
        "mode": mode,
        "learners": P,
        "dataset": DATASET,
        "model": MODEL,
        "updates": a.updates,
        "batch_size": a.batch_size,
        "lr": a.lr,
        "momentum": momentum,
        "seed": a.seed,
        "eval_every": eval_every,
        "threads": learner_threads(P),
        "eval_threads": a.eval_threads,
        "target": a.target,
    }
    rec = H.record(NAME, params, timing, items_per_call=1, threads=P)
    del rec["bench"], rec["env"]  # R.Writer.emit adds both
    p10, med, p90 = H.quantiles(ups)
    walls = [w for r in runs if (w := r.wall_updates_per_s) is not None]
    hits = [r.reached(a.target) for r in runs]
    rec.update(
        updates_per_s=med,
        updates_per_s_p10=p10,
        updates_per_s_p90=p90,
        wall_updates_per_s=statistics.median(walls) if walls else None,
        time_to_target_s=_median_or_none([h[0] if h else None for h in hits]),
        updates_to_target=_median_or_none([h[1] if h else None for h in hits]),
        reached=sum(h is not None for h in hits),
        final_accuracy=statistics.median(r.final_accuracy for r in runs),
        foreign_cpus=max(r.foreign_cpus for r in runs),
        quiet_below=a.quiet_below,
        runs=[
            {
                "updates": r.updates,
                "updates_per_s": r.updates_per_s,
                "wall_updates_per_s": r.wall_updates_per_s,
                "learner_s": r.learner_s,
                "wall_s": r.wall_s,
                "time_to_target_s": h[0] if h else None,
                "updates_to_target": h[1] if h else None,
                "final_accuracy": r.final_accuracy,
                "evals": [[round(t, 4), u, round(acc, 4)] for t, u, _l, acc in r.evals],
                "split_s": r.split,
                "foreign_cpus": r.foreign_cpus,
                "attempts": r.attempts,
                **r.extra,
            }
            for r, h in zip(runs, hits)
        ],
    )
    if impl == TORCH:
        rec["step_share"] = statistics.median(r.extra["step_share"] for r in runs)
    else:
        rec["push_pull_share"] = statistics.median(r.extra["push_pull_share"] for r in runs)
    return rec


def add_ratios(records: list[dict[str, Any]], runs: dict[tuple, list[Run]]) -> None:
    """fastps over torch-hogwild at the same P, for the records of one momentum."""
    base = {r["params"]["learners"]: r for r in records if r["params"]["impl"] == TORCH}
    for rec in records:
        P = rec["params"]["learners"]
        tb = base.get(P)
        if rec["params"]["impl"] == TORCH or tb is None:
            continue
        rec["ratio_torch"] = rec["updates_per_s"] / tb["updates_per_s"]
        w, tw = rec["wall_updates_per_s"], tb["wall_updates_per_s"]
        rec["ratio_torch_wall"] = w / tw if w and tw else None
        mine = runs[("fastps", rec["params"]["mode"], P)]
        theirs = runs[(TORCH, None, P)]
        paired = [x.updates_per_s / y.updates_per_s for x, y in zip(mine, theirs)]
        rec["ratio_torch_p10"], _, rec["ratio_torch_p90"] = H.quantiles(paired)


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    import fastps
    from fastps.train import data

    a = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(a.eval_threads)  # fit() evaluates in this process too
    ds = data.load(DATASET)
    cores = H.env(1)["cores"] or 1
    impls: list[tuple[str, str | None]] = [] if a.no_torch else [(TORCH, None)]
    impls += [("fastps", m) for m in a.modes]
    H.log(
        f"fastps {fastps.__version__}: P {a.learners}, modes {a.modes}, momentum {a.momentum}, "
        f"{a.updates} updates, {a.repeats} rounds, target {a.target}, {cores} cores"
    )
    r = Runner(a, ds)
    t_all = time.perf_counter()
    records: list[dict[str, Any]] = []
    try:
        rates = []
        for impl, mode in impls[:2]:  # torch-hogwild and the first fastps mode
            w = r.once(impl, mode, 1, a.warmup_updates, a.warmup_updates, a.momentum[0])
            rates.append(w.wall_updates_per_s or w.updates_per_s)
            H.log(f"warmup {impl} {mode or ''}: {w.updates_per_s:.0f} updates/s")
        rate1 = statistics.median(rates)
        eval_every = {P: max(1, round(a.eval_period * rate1 * min(P, cores))) for P in a.learners}
        for momentum in a.momentum:
            runs: dict[tuple, list[Run]] = {}
            for k in range(a.repeats):
                for P in a.learners:
                    shift = k % len(impls)
                    for impl, mode in impls[shift:] + impls[:shift]:
                        t0 = time.perf_counter()
                        what = f"momentum {momentum:g} round {k} {impl} {mode or ''} P={P}"
                        try:
                            run = r.run(impl, mode, P, a.updates, eval_every[P], momentum)
                        except (RuntimeError, ValueError, TypeError) as e:
                            H.log(f"{what}: failed: {e}")
                            continue
                        runs.setdefault((impl, mode, P), []).append(run)
                        hit = run.reached(a.target)
                        H.log(
                            f"{what}: {run.updates_per_s:.0f} upd/s "
                            f"(wall {R.fmt(run.wall_updates_per_s, '.0f')}), "
                            f"t@{a.target:g} {R.fmt(hit[0] if hit else None, '.2f')} s, final "
                            f"{run.final_accuracy:.4f}, other cpus {run.foreign_cpus:.2f}, "
                            f"{time.perf_counter() - t0:.1f} s"
                        )
            block = [
                make_record(a, impl, mode, P, momentum, eval_every[P], runs[(impl, mode, P)])
                for P in a.learners
                for impl, mode in impls
                if (impl, mode, P) in runs
            ]
            add_ratios(block, runs)
            records += block
    finally:
        torch.set_num_threads(threads)
    H.log(f"all runs in {time.perf_counter() - t_all:.0f} s, {r.quiet.spent_s:.0f} s of it waiting")
    if not records:
        H.log(f"no run succeeded: {a.out} left as it was")
        return 1
    a.out.parent.mkdir(parents=True, exist_ok=True)
    writer = R.Writer(NAME, a.out)  # opened now: a failed run leaves the last records in place
    for rec in records:
        p = rec.pop("params")
        writer.emit(p, threads=p["learners"], kind="cell", **rec)
    R.finish(writer, tables(writer.records), None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
