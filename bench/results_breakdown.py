"""Where does an epoch go? Pull, compute, push (= apply), wait and the rest of a learner's time,
for P = 1, 2, 4 learners on Fashion-MNIST with the MLP and LeNet, per consistency mode.

Bhardwaj and Cong's breakdown of epoch time, measured with fastps.train.fit: for each model, P
and configuration (async with the leashed, locked and hogwild store, and sync through the
coordinator with the leashed store) one run of --batches mini-batches of 64 in all (default
2 epochs for the MLP, 0.5 for LeNet), plain SGD at lr 0.05, seed 0. From fit()'s per-learner
time split, averaged over the learners and scaled to one epoch (60,000 / 64 mini-batches):

* pull: ``pull_s`` (copying the parameters out of the store);
* compute: ``compute_s`` (zero_grad, forward, backward);
* push: ``push_s``; in fastps the learner applies its own gradient in place, so the push *is*
  the apply (one fused pass per shard; the locked mode's lock waits and the leashed mode's CAS
  retries are inside it too, and the store's ``lock_wait_s`` is shown apart);
* wait: ``wait_s``, time waiting for the coordinator (sync);
* other: the learner's ``run_s`` (start event to its end) minus the above: picking the
  mini-batch, gathering the gradient into the flat vector, and time the learner was not
  scheduled (P = 4 learners share 2 cores here).

The bars stack to the mean learner's run time; epoch_s is the longest learner's (the run's wall
time) scaled to one epoch. Evaluations happen only before and after the run, on 2,000 test images.

    python bench/results_breakdown.py            # about 3 minutes on 2 cores
    python bench/results_breakdown.py --quick    # under a minute
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import _harness as H
import _results as R

NAME = "results_breakdown"
CONFIGS = (("async", "leashed"), ("async", "locked"), ("async", "hogwild"), ("sync", "leashed"))
PARTS = ("pull", "compute", "push", "wait", "other")
COLORS = {"pull": "tab:blue", "compute": "tab:gray", "push": "tab:orange", "wait": "tab:red",
          "other": "tab:olive"}  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " ...")
    p.add_argument("--models", default="mlp,lenet", help="models (default mlp,lenet)")
    p.add_argument("--learners", type=H.int_list, default=None, help="P values (default 1,2,4)")
    p.add_argument("--batches", default=None,
                   help="mini-batches per run, per model: mlp=1876,lenet=469")  # fmt: skip
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    a = R.parse(p, NAME, argv)
    a.models = [m for m in a.models.split(",") if m]
    a.learners = a.learners or ([1, 2] if a.quick else [1, 2, 4])
    default = {"mlp": 938, "lenet": 188} if a.quick else {"mlp": 1876, "lenet": 469}
    if a.batches:
        default.update({k: int(v) for k, v in (kv.split("=") for kv in a.batches.split(","))})
    a.batches = default
    return a


def breakdown(rec: dict[str, Any]) -> dict[str, float]:
    """Seconds per epoch of each part, per learner (the mean over learners), and the epoch."""
    P = rec["params"]["learners"]
    scale = R.EPOCH_BATCHES / rec["batches"]
    s = rec["split"]
    parts = {"pull": s["pull_s"], "compute": s["compute_s"], "push": s["push_s"],
             "wait": s["wait_s"] + s["delay_s"]}  # fmt: skip
    out = {k: v / P * scale for k, v in parts.items()}
    out["epoch"] = rec["wall_s"] * scale
    out["other"] = max(0.0, s["run_s"] / P * scale - sum(out[k] for k in parts))
    out["lock_wait"] = float(rec["stats"].get("lock_wait_s", 0.0)) / P * scale
    return out


def label(p: dict[str, Any]) -> str:
    return p["mode"] if p["variant"] == "async" else f"{p['variant']}/{p['mode']}"


def tables(records: Sequence[dict[str, Any]]) -> list[R.Table]:
    rows = []
    for rec in records:
        if rec.get("kind") == "error":
            p = rec["params"]
            rows.append([p["model"], p["learners"], label(p), "failed", *[""] * 9])
            continue
        if rec.get("kind") != "run":
            continue
        p, b = rec["params"], breakdown(rec)
        comm = (b["pull"] + b["push"]) / b["epoch"] if b["epoch"] > 0 else float("nan")
        rows.append([p["model"], p["learners"], label(p), R.fmt(b["epoch"], ".2f"),
                     *(R.fmt(b[k], ".3f") for k in PARTS), R.fmt(b["lock_wait"], ".3f"),
                     R.fmt(100 * comm, ".1f"),
                     R.fmt(rec["updates"] / rec["wall_s"], ".0f"),
                     R.fmt(rec.get("foreign_cpus"), ".2f")])  # fmt: skip
    return [R.Table(
        "Epoch time and its parts per learner (seconds per epoch of 60,000 images, batch 64)",
        ["model", "P", "variant/mode", "epoch_s", *(f"{k}_s" for k in PARTS), "lock_wait_s",
         "pull+push %", "updates/s", "other cpus"],
        rows,
        ["push includes the apply (fastps applies in place) and, in locked mode, the lock waits "
         "(lock_wait_s, shown apart); other = a learner's run time - the measured parts (batch "
         "picking, gradient gather, time not scheduled); updates/s: store updates per wall second "
         "(sync: one update per P gradients); other cpus: CPUs other processes kept busy during "
         "the run (after at most one repeat)."],
    )]  # fmt: skip


def plot(records: Sequence[dict[str, Any]]) -> Any:
    """The figure R.main saves beside the JSON lines."""
    plt = R.pyplot()
    runs = [r for r in records if r.get("kind") == "run"]
    models = list(dict.fromkeys(r["params"]["model"] for r in runs))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        mine = [r for r in runs if r["params"]["model"] == m]
        names = [f"P{r['params']['learners']}\n{label(r['params'])}" for r in mine]
        bottom = [0.0] * len(mine)
        for part in PARTS:
            vals = [breakdown(r)[part] for r in mine]
            ax.bar(range(len(mine)), vals, bottom=bottom, color=COLORS[part], label=part)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xticks(range(len(mine)), names, fontsize=6, rotation=90)
        ax.set_ylabel("seconds per epoch, per learner")
        ax.set_title(f"{m}: epoch time by part")
    axes[0][0].legend(fontsize=7)
    return fig


def run(a: argparse.Namespace, w: R.Writer) -> None:
    """The runs of this script's question, each recorded by ``w``."""
    for model in a.models:
        for P in a.learners:
            for variant, mode in CONFIGS:
                batches = a.batches[model]
                updates = max(1, batches // P) if variant == "sync" else batches
                params = {"model": model, "learners": P, "variant": variant, "mode": mode,
                          "lr": a.lr, "batch_size": 64, "updates": updates, "seed": a.seed}  # fmt: skip
                rec = R.record_run(w, params, model, seed=a.seed, eval_train=0, learners=P,
                                   variant=variant, mode=mode, lr=a.lr, batch_size=64,
                                   updates=updates, eval_every=updates,
                                   timeout_s=a.timeout)  # fmt: skip
                if rec is None:
                    continue
                b = breakdown(rec)
                H.log(f"{model} P={P} {variant}/{mode}: epoch {b['epoch']:.2f} s, compute "
                      f"{b['compute']:.2f}, push {b['push']:.3f}, pull {b['pull']:.3f}, "
                      f"other cpus {rec['foreign_cpus']:.2f}")  # fmt: skip


main = R.main(NAME, parse_args, run, tables, plot)


if __name__ == "__main__":
    sys.exit(main())
