"""Output of benchmark cells: progress lines, the machine's description, JSON records, tables.

Part of the harness (bench/_harness.py re-exports every name here and states the output
contract). Needs only the standard library at import time; ``env`` asks fastps (its public
``fastps.probe`` and ``fastps.cuda_available``) when first called.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from _timing import Timing

_REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    """One line of progress on stderr (stdout is reserved for records and the table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- environment --------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _static_env() -> dict[str, Any]:
    return {"git_sha": _git_sha(), "cpu": _cpu_model(), "gpu": _gpu_name(), "cuda": _cuda(),
            "kernel_isa": _kernel_isa()}  # fmt: skip


def _kernel_isa() -> str | None:
    try:
        from fastps import probe
    except ImportError:
        return None
    return probe.kernel_isa()


def env(threads: int) -> dict[str, Any]:
    """{git_sha, cpu, gpu, threads, cuda, cores, kernel_isa} for a cell that ran with ``threads`` threads."""
    e = dict(_static_env())
    e["threads"] = threads
    e["cores"] = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    return e


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(_REPO), *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def _git_sha() -> str | None:
    try:
        sha = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
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
