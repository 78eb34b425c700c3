"""Locked, hogwild or leashed? Updates per second, CAS failures and dropped updates, and the
training loss against wall-clock time of the three consistency modes.

Leashed-SGD's comparison (Baeckstroem et al. 2021), measured with fastps.train.fit: P = 2 and
4 async learners on Fashion-MNIST with the MLP, plain SGD at lr 0.05, mini-batches of 64,
--updates updates per run, seeds --seeds, for the store modes

* locked: a lock per shard (the MLP's 0.5 MB is one shard: one global lock);
* hogwild: no synchronisation;
* leashed: lock-free, a lost CAS re-applies the gradient until it is published
  (persistence -1);
* leashed-p0: leashed with persistence 0: a gradient whose first CAS fails is dropped.

Measured: updates/s = store updates / the run's wall time (longest learner's run_s); the
store's cas_failures, dropped, slot_waits and lock_wait_s, per update; the mean staleness; the
training loss on 2,000 training images and the test accuracy on 2,000 test images, evaluated
by fit() every --updates/25 updates, against seconds since the learners began.

    python bench/results_modes.py            # about 2 minutes on 2 cores
    python bench/results_modes.py --quick    # under a minute
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import _harness as H
import _results as R

NAME = "results_modes"
MODES = {"locked": ("locked", -1), "hogwild": ("hogwild", -1), "leashed": ("leashed", -1),
         "leashed-p0": ("leashed", 0)}  # fmt: skip
COLORS = {"locked": "tab:blue", "hogwild": "tab:orange", "leashed": "tab:green",
          "leashed-p0": "tab:red"}  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " ...")
    p.add_argument("--learners", type=H.int_list, default=None, help="P values (default 2,4)")
    p.add_argument("--seeds", type=H.int_list, default=None, help="seeds (default 1,2)")
    p.add_argument("--updates", type=int, default=None, help="updates per run (default 2000)")
    p.add_argument("--lr", type=float, default=0.05)
    a = R.parse(p, NAME, argv)
    a.learners = a.learners or ([4] if a.quick else [2, 4])
    a.seeds = a.seeds or ([1] if a.quick else [1, 2])
    a.updates = a.updates or (1000 if a.quick else 2000)
    return a


def tables(records: Sequence[dict[str, Any]]) -> list[R.Table]:
    rows = []
    for (P, config), runs in R.group(records, "learners", "config").items():

        def per_update(key: str, runs: list = runs) -> str:
            return R.fmt_spread(R.spread(float(r["stats"].get(key, 0.0)) / r["updates"]
                                         for r in runs), ".4f")  # fmt: skip

        rows.append([P, config,
                     R.fmt_spread(R.spread(r["updates"] / r["wall_s"] for r in runs), ".0f"),
                     per_update("cas_failures"), per_update("dropped"),
                     per_update("slot_waits"),
                     R.fmt_spread(R.spread(1e6 * float(r["stats"].get("lock_wait_s", 0.0)) /
                                           r["updates"] for r in runs), ".1f"),
                     R.fmt_spread(R.spread(r["evals"][-1]["staleness_mean"] for r in runs), ".2f"),
                     R.fmt_spread(R.spread(r["evals"][-1]["train_loss"] for r in runs), ".3f"),
                     R.fmt_spread(R.spread(r["evals"][-1]["accuracy"] for r in runs), ".3f"),
                     R.fmt_spread(R.spread(r["foreign_cpus"] for r in runs), ".2f"),
                     len(runs)])  # fmt: skip
    errors = [r for r in records if r.get("kind") == "error"]
    return [R.Table(
        "Consistency modes: throughput, contention and the model reached (mean ± std over seeds)",
        ["P", "mode", "updates/s", "CAS fail/upd", "dropped/upd", "slot waits/upd",
         "lock wait us/upd", "mean tau", "final loss", "final acc", "other cpus", "seeds"],
        rows,
        ["updates/s: store updates per wall second; lock wait: the store's lock_wait_s; "
         "other cpus: CPUs other processes kept busy during the run (2-core machine)."]
        + ([f"{len(errors)} run(s) failed: see the JSON lines"] if errors else []),
    )]  # fmt: skip


def plot(records: Sequence[dict[str, Any]]) -> Any:
    """The figure R.main saves beside the JSON lines."""
    plt = R.pyplot()
    runs = [r for r in records if r.get("kind") == "run"]
    ps = list(dict.fromkeys(r["params"]["learners"] for r in runs))
    fig, axes = plt.subplots(1, len(ps), figsize=(5 * len(ps), 3.6), squeeze=False)
    for ax, P in zip(axes[0], ps):
        R.loss_panel(ax, [r for r in runs if r["params"]["learners"] == P],
                     series=lambda r: r["params"]["config"], colors=COLORS,
                     title=f"MLP, P = {P}: loss against wall-clock time", lw=1, alpha=0.8)  # fmt: skip
    return fig


def run(a: argparse.Namespace, w: R.Writer) -> None:
    """The runs of this script's question, each recorded by ``w``."""
    for P in a.learners:
        for seed in a.seeds:
            for config, (mode, persistence) in MODES.items():
                params = {"model": "mlp", "learners": P, "config": config, "mode": mode,
                          "persistence": persistence, "seed": seed, "lr": a.lr,
                          "batch_size": 64, "updates": a.updates}  # fmt: skip
                rec = R.record_run(w, params, "mlp", seed=seed, learners=P, mode=mode, lr=a.lr,
                                   persistence=persistence, batch_size=64, updates=a.updates,
                                   eval_every=max(1, a.updates // 25),
                                   timeout_s=a.timeout)  # fmt: skip
                if rec is None:
                    continue
                st = rec["stats"]
                H.log(f"P={P} seed {seed} {config}: {rec['updates'] / rec['wall_s']:.0f} upd/s, "
                      f"cas failures {st.get('cas_failures')}, dropped {st.get('dropped')}, "
                      f"final loss {rec['evals'][-1]['train_loss']:.3f}, other cpus "
                      f"{rec['foreign_cpus']:.2f}")  # fmt: skip


main = R.main(NAME, parse_args, run, tables, plot)


if __name__ == "__main__":
    sys.exit(main())
