"""Write docs/results.md from the measured JSON lines in bench/results/ (no hand-typed figure).

For each results script (SCRIPTS, in order) it reads ``bench/results/<name>.jsonl``, asks the
script's own ``tables(records)`` for its tables (the same ones the script prints), and writes a
section with the script's question (its docstring's first paragraph), the command that made the
records, the machine they ran on (from the records' ``env``), how busy other processes kept it,
the plot ``bench/results/<name>.png`` and the tables. A script without records gets a line
saying so and the command that makes them.

    python bench/make_results.py                    # writes docs/results.md
    python bench/make_results.py --results DIR --out FILE
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _results as R

SCRIPTS = ("results_breakdown", "results_step_sizes", "results_modes", "results_projected",
           "results_spectrum", "results_local", "bench_peers", "bench_train")  # fmt: skip
TITLES = {
    "results_breakdown": "1. Where an epoch goes",
    "results_step_sizes": "2. Staleness-adaptive step sizes",
    "results_modes": "3. Consistency modes",
    "results_projected": "4. The projected learning rate",
    "results_spectrum": "5. The sync-async spectrum against the simulator",
    "results_local": "6. Local updates with a slow network",
    "bench_peers": "7. fastps against its peers",
    "bench_train": "8. Training against PyTorch's Hogwild",
}


def question(module: Any) -> str:
    """The first paragraph of a script's docstring, on one line."""
    doc = (module.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(line.strip() for line in doc.splitlines())


def machine(records: Sequence[dict[str, Any]]) -> str:
    env = records[0].get("env", {})
    times = sorted(r["time"] for r in records if r.get("time"))
    when = f"{times[0]} to {times[-1]}" if times else "unknown time"
    gpu = env.get("gpu") or "no GPU"
    sha = env.get("git_sha") or "unknown commit"
    parts = [f"{env.get('cpu') or 'unknown CPU'}, {env.get('cores')} cores, {gpu}",
             f"commit {sha[:12]}{' (uncommitted changes)' if sha.endswith('-dirty') else ''}",
             when]  # fmt: skip
    return "; ".join(parts)


QUIET_CPUS = 0.25  # the results scripts' own threshold for a disturbed run (bench/_results.py)


def load_note(records: Sequence[dict[str, Any]]) -> str | None:
    vals = [float(r["foreign_cpus"]) for r in records
            if isinstance(r.get("foreign_cpus"), (int, float))
            and not math.isnan(float(r["foreign_cpus"]))]  # fmt: skip
    if not vals:
        return None
    med, top = statistics.median(vals), max(vals)
    if top < QUIET_CPUS:
        return (f"The machine was quiet during the runs: other processes kept at most {top:.2f} "
                "of the CPUs busy.")  # fmt: skip
    return (f"Other processes kept a median of {med:.2f} and at most {top:.2f} of the CPUs "
            "busy during the runs (the machine is shared): timings are noisier than on a quiet "
            "machine.")  # fmt: skip


def section(name: str, records: list[dict[str, Any]], results_dir: Path, out: Path) -> str:
    module = importlib.import_module(name)
    lines = [f"## {TITLES.get(name, name)}", "", question(module), ""]
    script = f"bench/{name}.py"
    if not records:
        lines += [f"Not measured yet: run `python {script}`, then `python bench/make_results.py`.",
                  ""]  # fmt: skip
        return "\n".join(lines)
    commands = list(dict.fromkeys(r.get("command", f"python {script}") for r in records))
    lines += ["Command: " + ", ".join(f"`{c}`" for c in commands) + f" (method: `{script}`'s "
              "docstring).", "", f"Machine: {machine(records)}.", ""]  # fmt: skip
    note = load_note(records)
    if note:
        lines += [note, ""]
    png = results_dir / f"{name}.png"
    if png.exists():
        rel = os.path.relpath(png, out.parent)
        lines += [f"![{TITLES.get(name, name)}]({rel})", ""]
    for t in module.tables(records):
        lines += [t.markdown(), ""]
    return "\n".join(lines)


def render(results_dir: Path, out: Path) -> str:
    parts = [
        "# Results",
        "",
        "Every figure below is computed by `bench/make_results.py` from the JSON lines the "
        "scripts in `bench/` wrote to `bench/results/`; each section names the command that "
        "measured it and the machine it ran on. Re-run a script, then `python "
        "bench/make_results.py`, to refresh its section. Times are wall-clock seconds on a "
        "shared 2-core machine unless a section says otherwise: compare figures within a "
        "section, measured in the same run, rather than across sections. A run during which "
        "other processes kept a quarter of a CPU or more busy was made again after a wait for "
        "quiet while the script's time allowed (`Quiet` in bench/_results.py); every record "
        "keeps how busy the machine was (`foreign_cpus`) and its `attempts`.",
        "",
    ]
    for name in SCRIPTS:
        path = results_dir / f"{name}.jsonl"
        records = R.read_records(path) if path.exists() else []
        parts.append(section(name, records, results_dir, out))
    return "\n".join(parts).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=R.RESULTS_DIR, help="the JSON lines' folder")
    p.add_argument("--out", type=Path, default=R.REPO / "docs" / "results.md")
    a = p.parse_args(argv)
    text = render(a.results, a.out)
    a.out.write_text(text, encoding="utf-8")
    print(f"wrote {a.out} ({len(text.splitlines())} lines)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
