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

A shared 2-core box makes every number depend on what else runs. Each record carries
``foreign_cpus`` (CPUs other processes kept busy during the cell, from /proc/stat); a cell
measured while they kept --quiet-below or more busy is measured again (--retries) after waiting
for a quiet machine, within --max-wait per wait and --wait-budget per run (``Quiet``).

``env.git_sha`` ends in ``-dirty`` when the work tree had uncommitted changes, ``env.threads``
is the number of threads the cell ran with, and ``env.cores`` the CPUs the process may use.

The harness is this module and three it re-exports, so a script imports one name
(``import _harness as H``): bench/_timing.py (``measure``, ``plan``, ``measure_interleaved``,
``measure_parallel``, ``Timing``), bench/_quiet.py (``ForeignLoad``, ``Quiet``: when a cell
disturbed by other processes is measured again) and bench/_output.py (``log``, ``env``,
``record``, ``emit``, ``print_table``). Here: the argument types and the flags every
micro-benchmark shares (``add_cell_args``, ``resolve_cell_args``). Benchmarks use fastps's
public API only (``fastps.Store``, ``fastps.probe``), never ``fastps._core``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from _output import emit, env, log, print_table, record
from _quiet import ForeignLoad, Quiet, add_quiet_args, report_noisy, wait_quiet
from _timing import (
    ThreadTeam,
    Timing,
    measure,
    measure_interleaved,
    measure_parallel,
    paired,
    plan,
    quantiles,
    repeated,
)

SCRIPT_EXTRA = {"bench_peers": "peers", "bench_train": "train", "bench_ray": "ray",
                "make_results": "peers", "results_": "peers"}  # fmt: skip
"""The pip extra each script needs (by name or name prefix); the others need "bench"."""


def script_extra(script: str) -> str:
    """The extra that ``bench/SCRIPT.py`` needs (README: ``pip install ".[EXTRA]"``)."""
    name = os.path.splitext(os.path.basename(script))[0]
    for key, extra in SCRIPT_EXTRA.items():
        if name == key or (key.endswith("_") and name.startswith(key)):
            return extra
    return "bench"


def _hint_missing_extra(previous: object) -> object:
    """sys.excepthook: a script stopped by a module its extra installs says, in one line,
    which extra to install (fastps.extras) instead of a traceback."""

    def hook(kind: type[BaseException], exc: BaseException, tb: object) -> None:
        try:
            from fastps import extras
        except ModuleNotFoundError:  # fastps itself is missing: the traceback says so
            extras = None
        script = os.path.basename(sys.argv[0] or "bench")
        line = extras.hint(exc, script, script_extra(script)) if extras else None
        if line is None:
            previous(kind, exc, tb)  # type: ignore[operator]
        else:
            print(line, file=sys.stderr)

    return hook


sys.excepthook = _hint_missing_extra(sys.excepthook)

__all__ = [
    "SCRIPT_EXTRA",
    "ForeignLoad", "Quiet", "ThreadTeam", "Timing", "add_cell_args", "add_quiet_args", "emit",
    "env", "float_list", "int_list", "log", "measure", "measure_interleaved", "measure_parallel",
    "mode_list", "paired", "plan", "print_table", "quantiles", "record", "repeated",
    "report_noisy", "resolve_cell_args", "script_extra", "wait_quiet",
]  # fmt: skip


# -- argument types -------------------------------------------------------------------------------


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


def float_list(text: str) -> list[float]:
    """argparse type: "0,0.5" -> [0.0, 0.5]."""
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers (got {text!r})"
        ) from None
    if not vals:
        raise argparse.ArgumentTypeError(f"expected one number or more (got {text!r})")
    return vals


# -- the flags every micro-benchmark shares ------------------------------------------------------


def add_cell_args(p: argparse.ArgumentParser, *, quick_help: str, sizes: bool = True,
                  modes: Sequence[str] | None = None, retries: int = 2, max_wait: float = 30.0,
                  wait_budget: float = 300.0) -> None:  # fmt: skip
    """The flags of a script that times cells (bench_store, bench_policies, bench_guard): with
    ``sizes``, --min-log2, --max-log2 and --step; --modes (default ``modes``, else all);
    --repeats, --min-repeats, --warmup, --target-s; --quick (``quick_help``); the quiet flags
    (``add_quiet_args``); --out. ``resolve_cell_args`` fills in the defaults that --quick
    changes."""
    import fastps

    if sizes:
        p.add_argument("--min-log2", type=int, default=10, help="smallest size 2^k (default 10)")
        p.add_argument("--max-log2", type=int, default=26, help="largest size 2^k (default 26)")
        p.add_argument("--step", type=int, default=2, help="step of k between sizes (default 2)")
    default_modes = list(modes or fastps.MODES)
    p.add_argument("--modes", type=mode_list, default=default_modes,
                   help=f"default: {','.join(default_modes) if modes else 'all'}")  # fmt: skip
    p.add_argument("--repeats", type=int, default=None,
                   help="most timed repeats per cell (default 20; 5 with --quick); big sizes use "
                   "fewer, down to --min-repeats, to stay near --target-s")  # fmt: skip
    p.add_argument("--min-repeats", type=int, default=5, help="fewest timed repeats (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per cell (default 2)")
    p.add_argument("--target-s", type=float, default=None,
                   help="measured seconds per cell (default 0.3; 0.05 with --quick)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help=quick_help)
    add_quiet_args(p, retries=retries, max_wait=max_wait, wait_budget=wait_budget)
    p.add_argument("--out", type=argparse.FileType("w"), help="also write the JSON lines here")


def resolve_cell_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """The defaults --quick changes (--repeats, --target-s), --min-repeats capped by --repeats,
    and, where ``add_cell_args`` added the size flags, ``a.sizes``: 2^min_log2 .. 2^max_log2
    in steps of 2^step (left for the script to set under --quick)."""
    if hasattr(a, "min_log2") and not a.quick:
        if a.step < 1 or a.min_log2 < 0 or a.max_log2 < a.min_log2:
            p.error("need 0 <= --min-log2 <= --max-log2 and --step >= 1")
        a.sizes = [1 << k for k in range(a.min_log2, a.max_log2 + 1, a.step)]
    a.repeats = a.repeats or (5 if a.quick else 20)
    a.min_repeats = max(1, min(a.min_repeats, a.repeats))
    a.target_s = a.target_s or (0.05 if a.quick else 0.3)
