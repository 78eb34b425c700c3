"""Shared code of the results scripts (bench/results_*.py) and of bench/make_results.py.

A results script answers one question of docs/results.md with fastps.train.fit runs. Each run
becomes one JSON line (``kind: "run"``) in ``bench/results/<name>.jsonl`` (and on stdout), with
the command that made it and the machine (``env``); then the script prints its tables ('#'
lines, see bench/_harness.py) and saves one PNG plot beside the JSON lines. bench/make_results.py
reads the JSON lines back and asks each script's ``tables(records)`` for the same tables, so
docs/results.md holds only figures computed from measured records.

Time origin: ``t`` of a run's evaluations is seconds since its learners began (after spawning
and loading data: ``History.started_s``), taken when fit() read the parameters it evaluated.
``wall_s`` is the longest learner's ``run_s``: from the start event to its end.

This module needs only the standard library at import time (make_results and the tests import
it without torch); ``run_fit`` and ``load_subset`` import fastps and torch when called.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import _harness as H

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO = BENCH_DIR.parent
DATASET = "fashion-mnist"
EPOCH_BATCHES = 60000 / 64  # Fashion-MNIST's mini-batches of 64 in one pass


# -- pure helpers (tested in tests/test_bench_results.py) -----------------------------------------


def first_reach(
    points: Sequence[tuple[float, float, float]], target: float, *, below: bool
) -> tuple[float, float] | None:
    """(t, updates) at which a curve of (t, updates, value) points first reaches ``target``.

    ``below=True``: the value falls to ``target`` or under (a loss); False: rises to it or over
    (an accuracy). Between the last point short of the target and the first that reaches it,
    t and updates are interpolated linearly in the value; a first point that already reaches it
    is returned as is. None when no point reaches the target.
    """

    def hit(v: float) -> bool:
        return v <= target if below else v >= target

    prev: tuple[float, float, float] | None = None
    for p in points:
        t, u, v = p
        if not math.isnan(v) and hit(v):
            if prev is None or prev[2] == v:
                return t, u
            f = (target - prev[2]) / (v - prev[2])
            return prev[0] + f * (t - prev[0]), prev[1] + f * (u - prev[1])
        if not math.isnan(v):
            prev = p
    return None


def spread(xs: Iterable[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of the values that are not None.

    ``n`` counts them and ``of`` all values (a None is a run that did not reach its target).
    """
    given = list(xs)
    vals = [float(x) for x in given if x is not None]
    n_all = len(given)
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "of": n_all}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "of": n_all,
    }


def fmt_spread(s: Mapping[str, Any], spec: str = ".2f") -> str:
    """'mean ± std (n/of)' with '-' for none reached; '(n/of)' only when some runs missed; the
    value alone for a single run."""
    if s["mean"] is None:
        return f"- (0/{s['of']})"
    if s["of"] == 1:
        return format(s["mean"], spec)
    text = f"{format(s['mean'], spec)} ± {format(s['std'], spec)}"
    return text if s["n"] == s["of"] else f"{text} ({s['n']}/{s['of']})"


def fmt(x: Any, spec: str = ".3g") -> str:
    """A table cell: '-' for None or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def curve(run: Mapping[str, Any], key: str) -> list[tuple[float, float, float]]:
    """(t, updates, value) of a run record's evaluations for ``key`` ("loss", "accuracy",
    "train_loss", "train_accuracy")."""
    return [(e["t"], e["updates"], e.get(key, math.nan)) for e in run["evals"]]


def group(records: Iterable[Mapping[str, Any]], *keys: str) -> dict[tuple, list[Mapping[str, Any]]]:
    """Run records grouped by the values of ``params[k]`` for k in ``keys`` (insertion order)."""
    out: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in records:
        if r.get("kind") == "run":
            out.setdefault(tuple(r["params"].get(k) for k in keys), []).append(r)
    return out


def gradient_staleness(updates: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean staleness and fresh fraction (tau = 0) of the gradients in fit()'s update log.

    A K-variant record averages gradients computed on model ``versions`` into update number
    ``update`` (1-based): each has tau = update - 1 - version. An async record is one push
    with its ``staleness`` (the mean over shards). {"mean", "fresh_fraction", "n"}; None
    figures for an empty log.
    """
    taus: list[float] = []
    for u in updates:
        if "versions" in u:
            taus += [u["update"] - 1 - v for v in u["versions"]]
        elif "staleness" in u and not math.isnan(u["staleness"]):
            taus.append(u["staleness"])
    if not taus:
        return {"mean": None, "fresh_fraction": None, "n": 0}
    return {"mean": statistics.fmean(taus), "fresh_fraction": sum(t == 0 for t in taus) / len(taus),
            "n": len(taus)}  # fmt: skip


@dataclass
class Table:
    """One table of a results script: printed as '#' lines, written as markdown."""

    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]  # fmt: skip
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + self.notes
        return "\n".join(lines)

    def print(self) -> None:
        H.print_table(self.header, self.rows, title=self.title)
        for n in self.notes:
            print(f"# {n}")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (lines starting with '#' skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(json.loads(line))
    return out


# -- running ------------------------------------------------------------------------------------


# When a run disturbed by other processes is made again (bench/_quiet.py): its repeated runs
# count against --wait-budget too, since a fit() run takes minutes. Set by parse().
QUIET = H.Quiet(charge_runs=True)


def load_subset(name: str = DATASET, n_test: int | None = None) -> Any:
    """A data set with its test set cut to the first ``n_test`` images (evaluations are cheaper;
    the learners train on the whole training set). Picklable through functools.partial, so a
    learner process loads it itself."""
    from fastps.train import data

    ds = data.load(name)
    if n_test is None or n_test >= len(ds.x_test):
        return ds
    return data.Dataset(ds.name, ds.x_train, ds.y_train, ds.x_test[:n_test], ds.y_test[:n_test],
                        ds.classes, ds.input_shape)  # fmt: skip


def model_fn(model: str, seed: int) -> Callable[[], Any]:
    """The picklable builder of Fashion-MNIST's ``model`` ("mlp", "lenet") with ``seed``."""
    import functools

    from fastps.train import models

    return functools.partial(models.build, model, (1, 28, 28), 10, seed=seed)


def run_fit(model: str, *, seed: int = 0, n_test: int = 2000, eval_train: int = 2000,
            retry: bool = True, **fit_kwargs: Any) -> dict[str, Any]:  # fmt: skip
    """One fit() run on Fashion-MNIST; its measurements as a plain dict (see module docstring).

    Returns {evals: [{t, updates, loss, accuracy, train_loss, train_accuracy, staleness_mean}],
    wall_s, updates, batches, learners (fit's per-learner splits), split (their sums),
    stats (the store's), coordinator, gradient_staleness, foreign_cpus, attempts, started_s}.

    A run during which other processes kept ``QUIET.below`` CPUs or more busy is made again
    after waiting for a quieter machine (see ``H.Quiet``; ``retry=False``: never); the last
    attempt is returned.
    """
    import functools

    import torch

    from fastps.train.fit import fit

    def once() -> Any:
        return fit(model_fn(model, seed), functools.partial(load_subset, DATASET, n_test),
                   seed=seed, eval_train=eval_train, **fit_kwargs)  # fmt: skip

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the parent evaluates: one core, as each learner has
    try:  # the learners are child processes: their CPU time is the run's own
        h, foreign, attempt = (QUIET if retry else H.Quiet()).measure(once, children=True)
    finally:
        torch.set_num_threads(threads)
    evals = [{"t": e["t_s"] - h.started_s, **{k: v for k, v in e.items() if k != "t_s"}}
             for e in h.evals]  # fmt: skip
    evals[0]["t"] = 0.0  # the evaluation of the initial model, before the start
    keys = ("compute_s", "push_s", "pull_s", "wait_s", "delay_s", "run_s")
    split = {k: sum(float(ln.get(k, 0.0)) for ln in h.learners) for k in keys}
    batches = sum(int(ln.get("steps", ln["updates"])) for ln in h.learners)
    return {
        "evals": evals,
        "wall_s": max(float(ln["run_s"]) for ln in h.learners),
        "updates": int(h.stats["clock"]),
        "batches": batches,
        "learners": h.learners,
        "split": split,
        "stats": {k: v for k, v in h.stats.items() if k not in ("staleness_hist", "step_hist")},
        "staleness_hist": h.stats.get("staleness_hist"),
        "coordinator": h.coordinator,
        "gradient_staleness": gradient_staleness(h.updates),
        "foreign_cpus": foreign,
        "attempts": attempt,
        "started_s": h.started_s,
    }


# -- script plumbing ------------------------------------------------------------------------------


def command() -> str:
    """The command that ran this script, as a user would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = script.relative_to(REPO)
    except ValueError:
        shown = script
    return " ".join(["python", str(shown), *map(shlex.quote, sys.argv[1:])])


def add_args(p: argparse.ArgumentParser, name: str) -> None:
    """--quick, --out, --plot and --timeout, the flags every results script has."""
    p.add_argument("--quick", action="store_true", help="a run of under a minute (development)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON lines (default bench/results/{name}.jsonl, "
                   f"--quick: /tmp/{name}.quick.jsonl)")  # fmt: skip
    p.add_argument("--plot", type=Path, default=None,
                   help="PNG plot (default: the --out path with .png)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=300.0, help="limit per fit() run (s)")
    H.add_quiet_args(p, retries=1, max_wait=15.0, wait_budget=60.0)


def default_out(a: argparse.Namespace, name: str) -> Path:
    """Where a script's JSON lines go without --out: bench/results/<name>.jsonl (the records
    of docs/results.md), or /tmp/<name>.quick.jsonl for a --quick run."""
    return Path(f"/tmp/{name}.quick.jsonl") if a.quick else RESULTS_DIR / f"{name}.jsonl"


def parse(p: argparse.ArgumentParser, name: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """``p``'s arguments with the common flags (``add_args``) added: default --out and --plot
    paths (the --out folder made), and ``QUIET`` set from the quiet flags."""
    global QUIET
    add_args(p, name)
    a = p.parse_args(argv)
    QUIET = H.Quiet.from_args(a, charge_runs=True)
    if a.out is None:
        a.out = default_out(a, name)
    if a.plot is None:
        a.plot = a.out.with_suffix(".png")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    return a


class Writer:
    """Emits a script's records: JSON lines on stdout and in the --out file, with bench, kind,
    command and env filled in."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.file: IO[str] = open(path, "w", encoding="utf-8")
        self.records: list[dict[str, Any]] = []
        self.command = command()

    def emit(self, params: Mapping[str, Any], threads: int = 1, kind: str = "run",
             **measured: Any) -> dict[str, Any]:  # fmt: skip
        rec = {"bench": self.name, "kind": kind, "params": dict(params), **measured,
               "command": self.command, "env": H.env(threads),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
        H.emit(rec, [self.file])
        self.records.append(rec)
        return rec

    def close(self) -> None:
        self.file.close()


def record_run(w: Writer, params: Mapping[str, Any], model: str,
               **fit_kwargs: Any) -> dict[str, Any] | None:  # fmt: skip
    """``run_fit(model, **fit_kwargs)`` recorded under ``params`` (one JSON line, the
    per-learner splits left out); a run that fit refuses or that fails is recorded as an error,
    and None is returned."""
    try:
        run = run_fit(model, **fit_kwargs)
    except (RuntimeError, ValueError) as e:
        error_record(w, params, e)
        return None
    run.pop("learners")
    return w.emit(params, threads=fit_kwargs["learners"], **run)


def error_record(w: Writer, params: Mapping[str, Any], e: BaseException) -> None:
    """A run that failed: logged and recorded (kind "error"), never silently dropped."""
    H.log(f"{w.name} {dict(params)}: failed: {e!r}")
    w.emit(params, kind="error", error=f"{type(e).__name__}: {e}"[:2000])


# -- plots ----------------------------------------------------------------------------------------


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_panel(ax: Any, runs: Sequence[Mapping[str, Any]], *, series: Callable[[Any], str],
               colors: Mapping[str, str] | None = None, label: Callable[[Any], str] | None = None,
               x: str = "t", target: float | None = None, title: str | None = None,
               **style: Any) -> None:  # fmt: skip
    """The training loss of each run on a log axis against seconds since the learners began
    (x="t") or updates (x="updates"): one colour and one legend entry per ``series(run)``
    (``label(run)`` for the entry's text), a dashed line at ``target``."""
    seen: set[str] = set()
    for r in runs:
        name = series(r)
        c = curve(r, "train_loss")
        ax.plot([t if x == "t" else u for t, u, _ in c], [v for _, _, v in c],
                color=colors[name] if colors else None,
                label=None if name in seen else (label(r) if label else name), **style)  # fmt: skip
        seen.add(name)
    if target is not None:
        ax.axhline(target, color="k", lw=0.5, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the learners began" if x == "t" else "updates")
    ax.set_ylabel("training loss")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)


def save_figure(fig: Any, path: Path) -> None:
    """A small PNG (dpi 80): the committed plots stay well under 200 KB."""
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    pyplot().close(fig)
    H.log(f"plot: {path} ({path.stat().st_size // 1024} KB)")


def finish(w: Writer, tables: Sequence[Table], plot: Callable[[], None] | None) -> None:
    """Close ``w``, print ``tables``, then ``plot()`` when given."""
    w.close()
    for t in tables:
        t.print()
    if plot is not None:
        plot()


def main(
    name: str,
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace, Writer], None],
    tables: Callable[[Sequence[dict[str, Any]]], Sequence[Table]],
    plot: Callable[[Sequence[dict[str, Any]]], Any] | None = None,
) -> Callable[[Sequence[str] | None], int]:
    """The ``main(argv)`` of a results script: ``parse_args(argv)``, ``run(a, w)`` (the runs,
    each recorded by the Writer ``w`` into --out), then the records' ``tables`` printed and
    the figure ``plot(records)`` returns saved to --plot. Each script keeps only what differs.
    """

    def script_main(argv: Sequence[str] | None = None) -> int:
        a = parse_args(argv)
        w = Writer(name, a.out)
        try:
            run(a, w)
        finally:
            w.close()
        draw = None if plot is None else (lambda: save_figure(plot(w.records), a.plot))
        finish(w, tables(w.records), draw)
        return 0

    return script_main
