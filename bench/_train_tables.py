"""The tables of bench/bench_train.py's records: printed by the script, and put in
docs/results.md by bench/make_results.py (so this module needs only the standard library).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import _results as R

TORCH = "torch-hogwild"  # the baseline's impl name in the records (bench/_train_runs.py)
TARGET_RATIO, TARGET_AT = 1.25, 2  # fastps >= 1.25x torch-hogwild's updates/s at P = 2


CELL_PARAMS = ("impl", "mode", "learners", "eval_every", "threads")  # vary within one table


def tables(records: Sequence[dict[str, Any]]) -> list[R.Table]:
    """A table and a summary per run (command) and configuration (the params other than
    CELL_PARAMS, so one per --momentum), in the order of the records; a later record of the
    same cell in the same command replaces an earlier one. Several commands in one file (runs
    kept side by side to show how much they differ) name theirs in the titles."""
    configs: dict[tuple, dict[tuple, dict[str, Any]]] = {}
    for r in records:
        p = r.get("params", {})
        if r.get("kind", "cell") != "cell" or "impl" not in p:
            continue
        key = (r.get("command"), *sorted((k, v) for k, v in p.items() if k not in CELL_PARAMS))
        configs.setdefault(key, {})[(p["impl"], p["mode"], p["learners"])] = r
    several = len({key[0] for key in configs}) > 1
    out: list[R.Table] = []
    for key, cells in configs.items():
        recs = list(cells.values())
        run = f" (`{key[0]}`)" if several else ""
        out += [cell_table(recs, run), summary_table(recs, run)]
    return out


def _config(p: dict[str, Any]) -> str:
    return (f"{p['dataset']}, {p['model']}, batch {p['batch_size']}, lr {p['lr']:g}, "
            f"momentum {p['momentum']:g}, {p['updates']} updates per run")  # fmt: skip


def cell_table(recs: Sequence[dict[str, Any]], run: str = "") -> R.Table:
    """Every (implementation, mode, P) of one configuration; ``run`` ends the title."""
    p0 = recs[0]["params"]
    target = p0["target"]
    rows = []
    for rec in recs:
        p = rec["params"]
        share = rec.get("step_share", rec.get("push_pull_share"))
        rows.append(
            [p["impl"], p["mode"] or "-", str(p["learners"]), R.fmt(rec["updates_per_s"], ".0f"),
             f"{R.fmt(rec['updates_per_s_p10'], '.0f')}..{R.fmt(rec['updates_per_s_p90'], '.0f')}",
             R.fmt(rec["wall_updates_per_s"], ".0f"), R.fmt(rec.get("ratio_torch"), ".2f"),
             R.fmt(rec.get("ratio_torch_wall"), ".2f"), R.fmt(rec["time_to_target_s"], ".2f"),
             R.fmt(rec["updates_to_target"], ".0f"), f"{rec['reached']}/{len(rec['runs'])}",
             R.fmt(rec["final_accuracy"], ".4f"),
             "-" if share is None else R.fmt(100 * share, ".0f") + "%", str(p["eval_every"]),
             R.fmt(rec["foreign_cpus"], ".2f")]
        )  # fmt: skip
    header = ["impl", "mode", "P", "upd/s", "p10..p90", "wall_upd/s", "/torch", "/torch_wall",
              f"t@{target:g}_s", f"upd@{target:g}", "reached", "final_acc", "sync%",
              "eval_every", "other_cpus"]  # fmt: skip
    rounds = max(len(r["runs"]) for r in recs)
    return R.Table(
        f"{_config(p0)}, median of {rounds} round{'s' if rounds != 1 else ''}{run}",
        header,
        rows,
        [
            "upd/s = updates / longest learner time in steps (p10..p90 over rounds); wall_upd/s = "
            "updates / (start event .. last learner done); /torch = fastps over "
            f"{TORCH} at the same P; t@ = seconds from the start event to the first evaluation "
            "at the target test accuracy, upd@ its update count (- = not reached in most "
            "rounds); reached = rounds that reached it; sync% = share of learner time in "
            "opt.step() (torch) or push+pull (fastps); other_cpus = CPUs other processes kept "
            "busy, worst round."
        ],
    )  # fmt: skip


def summary_table(recs: Sequence[dict[str, Any]], run: str = "") -> R.Table:
    """fastps's ratios to torch-hogwild per mode and P, and the issue's target, for one
    configuration; ``run`` ends the title."""
    ps = sorted({r["params"]["learners"] for r in recs})
    modes = list(dict.fromkeys(r["params"]["mode"] for r in recs
                               if r["params"]["impl"] == "fastps"))  # fmt: skip
    rows = []
    for mode in modes:
        cells = {r["params"]["learners"]: r for r in recs
                 if r["params"]["impl"] == "fastps" and r["params"]["mode"] == mode}  # fmt: skip
        at = cells.get(TARGET_AT, {}).get("ratio_torch")
        verdict = "n/a" if at is None else "met" if at >= TARGET_RATIO else "MISSED"
        rows.append([mode, *(R.fmt(cells.get(P, {}).get("ratio_torch"), ".2f") for P in ps),
                     R.fmt(cells.get(TARGET_AT, {}).get("ratio_torch_wall"), ".2f"),
                     verdict])  # fmt: skip
    notes = []
    hog = next((r for r in recs if r["params"]["impl"] == TORCH
                and r["params"]["learners"] == TARGET_AT), None)  # fmt: skip
    if hog is not None and hog["step_share"] < 1:
        share = hog["step_share"]
        notes.append(
            f"{TORCH}'s opt.step() took {100 * share:.0f}% of its learner time at "
            f"P = {TARGET_AT}: a step that cost nothing would by itself make it at most "
            f"{1 / (1 - share):.2f}x faster (a ratio above that comes from faster compute: "
            "fastps learners read private parameters, Hogwild's read memory others write)."
        )
    threshold = recs[0].get("quiet_below", 0.25)
    noisy = [r for r in recs if r["foreign_cpus"] >= threshold]
    if noisy:
        notes.append(f"{len(noisy)} of {len(recs)} cells (worst round) ran while other "
                     f"processes kept >= {threshold:g} CPUs busy (after retries): see "
                     "other_cpus.")  # fmt: skip
    return R.Table(
        f"Summary, momentum {recs[0]['params']['momentum']:g}: fastps updates/s over {TORCH}'s "
        f"at the same P (learner time); target >= {TARGET_RATIO}x at P = {TARGET_AT}, "
        f"reported, not asserted{run}",
        ["mode", *(f"/torch@P{P}" for P in ps), f"/torch_wall@P{TARGET_AT}",
         f">={TARGET_RATIO}x@P{TARGET_AT}"],
        rows,
        notes,
    )  # fmt: skip
