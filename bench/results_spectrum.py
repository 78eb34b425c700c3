"""The sync-to-async spectrum with stragglers: the training loss against wall-clock time of sync,
K-sync, K-batch-sync, async, K-async, K-batch-async and AdaSync, next to the runtime
simulator's prediction for the same delays.

Dutta et al.'s error-runtime trade-off, measured with fastps.train.fit: P = --learners (4)
learners on Fashion-MNIST with the MLP, mini-batches of 64, lr 0.05, K = --k (2) for the
K-variants (AdaSync starts at K_0 = 1 and re-sets K every second), each learner sleeping an
injected straggler delay ~ exp(mean --straggler) before every mini-batch
(``Straggler("exp", mean)``), for --budget seconds per run (``time_budget_s``).

Measured per variant: the training loss on 2,000 training images against seconds since the
learners began (fit() evaluates about 20 times a run); the mean time per store update (the
run's wall time / updates); the gradients' mean staleness and fresh fraction (from fit()'s
update log: tau = the update a gradient went into - 1 - the model version it was computed on).

Predicted: fastps.sim.simulate for the same variant, P and K, with the compute time of a
mini-batch X = c + exp(mean --straggler) (delay "shifted-exp"), where c is the mean measured
compute-and-overhead time per mini-batch of the async run (its learner time outside the
injected delay, push and pull, per step), and a fixed communication delay D = its mean push +
pull time per step; 20,000 simulated updates. AdaSync is simulated with its K following a
noisy quadratic's error (the simulator's model), so only its runtime is comparable.

    python bench/results_spectrum.py           # about 3 minutes on 2 cores
    python bench/results_spectrum.py --quick   # under a minute
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import _harness as H
import _results as R

NAME = "results_spectrum"
VARIANTS = ("sync", "k-sync", "k-batch-sync", "async", "k-async", "k-batch-async", "adasync")
QUICK = ("sync", "k-sync", "async", "k-batch-async")
GUESS_C, GUESS_D = 0.0015, 0.0003  # compute and push+pull seconds per step, for eval spacing


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " ...")
    p.add_argument("--learners", type=int, default=4, help="P (default 4)")
    p.add_argument("--k", type=int, default=2, help="K of the K-variants (default 2)")
    p.add_argument("--straggler", type=float, default=0.02,
                   help="mean of the exponential delay per mini-batch, seconds (default 0.02)")  # fmt: skip
    p.add_argument("--budget", type=float, default=None, help="seconds per run (default 15)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sim-updates", type=int, default=20000, help="simulated updates")
    a = R.parse(p, NAME, argv)
    a.variants = QUICK if a.quick else VARIANTS
    a.budget = a.budget or (3.0 if a.quick else 15.0)
    return a


def k_of(variant: str, P: int, k: int) -> int:
    return {"sync": P, "async": 1, "adasync": 1}.get(variant, k)


def predict(variant: str, P: int, k: int, straggler: float, c: float, d: float,
            updates: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """The simulator's figures for one variant (X = c + exp(mean straggler), D = d)."""
    from fastps.sim import simulate

    r = simulate(variant, P, None if variant in ("sync", "async") else k_of(variant, P, k),
                 delay="shifted-exp", mu=1.0 / straggler, shift=c, comm_delay=d,
                 updates=updates, seed=seed, interval=1.0,
                 model="quadratic" if variant == "adasync" else "none")  # fmt: skip
    return {"mean_time_per_update": r.mean_time_per_update,
            "predicted_time_per_update": r.predicted_time_per_update,
            "mean_staleness": r.mean_staleness, "fresh_fraction": r.fresh_fraction,
            "mean_k": r.mean_k, "shift": c, "comm_delay": d, "mu": 1.0 / straggler,
            "updates": updates}  # fmt: skip


def tables(records: Sequence[dict[str, Any]]) -> list[R.Table]:
    rows = []
    sims = {r["params"]["variant"]: r["sim"] for r in records if r.get("kind") == "sim"}
    for rec in records:
        p = rec["params"]
        if rec.get("kind") == "error":
            rows.append([p["variant"], p["k"], "failed", *[""] * 9])
            continue
        if rec.get("kind") != "run":
            continue
        t_upd = rec["wall_s"] / rec["updates"] if rec["updates"] else float("nan")
        sim = sims.get(p["variant"], {})
        ts = sim.get("mean_time_per_update")
        g = rec["gradient_staleness"]
        rows.append([p["variant"], p["k"], R.fmt(1000 * t_upd, ".2f"),
                     R.fmt(1000 * ts if ts else None, ".2f"),
                     R.fmt(t_upd / ts if ts else None, ".2f"),
                     R.fmt(g["mean"], ".2f"), R.fmt(sim.get("mean_staleness"), ".2f"),
                     R.fmt(g["fresh_fraction"], ".2f"), R.fmt(sim.get("fresh_fraction"), ".2f"),
                     rec["updates"], R.fmt(rec["evals"][-1]["train_loss"], ".3f"),
                     R.fmt(rec.get("foreign_cpus"), ".2f")])  # fmt: skip
    first = next((r for r in records if r.get("kind") == "sim"), None)
    notes = []
    if first is not None:
        s, q = first["sim"], first["params"]
        notes.append(
            f"Simulated with X = {1000 * s['shift']:.2f} ms + exp(mean {1000 / s['mu']:g} ms), "
            f"D = {1000 * s['comm_delay']:.3f} ms (c and D measured in the async run), "
            f"{s['updates']} updates, P = {q['learners']}. AdaSync's simulated K follows a "
            "quadratic's error, not this model's loss."
        )
    return [R.Table(
        "The sync-async spectrum with exponential stragglers: measured against simulated",
        ["variant", "K", "ms/update", "sim ms/update", "measured/sim", "mean tau", "sim tau",
         "fresh", "sim fresh", "updates", "loss at end", "other cpus"],
        rows,
        notes + ["loss: training loss on 2,000 training images at the end of the time budget; "
                 "fresh: fraction of gradients with staleness 0."],
    )]  # fmt: skip


def plot(records: Sequence[dict[str, Any]]) -> Any:
    """The figure R.main saves beside the JSON lines."""
    plt = R.pyplot()
    runs = [r for r in records if r.get("kind") == "run"]
    sims = {r["params"]["variant"]: r["sim"] for r in records if r.get("kind") == "sim"}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    R.loss_panel(
        ax,
        runs,
        series=lambda r: f"{r['params']['variant']} (K={r['params']['k']})",
        title="loss against wall-clock time (measured)",
        lw=1.2,
        marker=".",
        ms=3,
    )
    names = [r["params"]["variant"] for r in runs]
    meas = [1000 * r["wall_s"] / max(1, r["updates"]) for r in runs]
    sim = [1000 * sims.get(n, {}).get("mean_time_per_update", float("nan")) for n in names]
    xs = range(len(names))
    bx.bar([x - 0.2 for x in xs], meas, width=0.4, label="measured (fit)")
    bx.bar([x + 0.2 for x in xs], sim, width=0.4, label="simulated (fastps.sim)")
    bx.set_xticks(list(xs), names, rotation=30, fontsize=7)
    bx.set_ylabel("ms per store update")
    bx.set_title("time per update: measured and predicted")
    bx.legend(fontsize=7)
    return fig


def run(a: argparse.Namespace, w: R.Writer) -> None:
    """The runs of this script's question, each recorded by ``w``."""
    from fastps.train.fit import Straggler

    P = a.learners
    order = ["async"] + [v for v in a.variants if v != "async"]  # async first: it gives c and D
    measured: dict[str, float] = {}
    for variant in order:
        k = k_of(variant, P, a.k)
        guess = predict(variant, P, a.k, a.straggler, GUESS_C, GUESS_D, 2000, a.seed)
        eval_every = max(1, round(a.budget / guess["mean_time_per_update"] / 20))
        params = {"model": "mlp", "learners": P, "variant": variant, "k": k, "lr": a.lr,
                  "batch_size": 64, "straggler_mean": a.straggler, "budget_s": a.budget,
                  "seed": a.seed, "eval_every": eval_every}  # fmt: skip
        rec = R.record_run(w, params, "mlp", seed=a.seed, learners=P, variant=variant,
                           k=None if variant in ("sync", "async") else k, lr=a.lr,
                           batch_size=64, updates=10**7, time_budget_s=a.budget,
                           straggler=Straggler("exp", mean=a.straggler),
                           eval_every=eval_every, timeout_s=a.timeout)  # fmt: skip
        if rec is None:
            continue
        if variant == "async":
            s, steps = rec["split"], max(1, rec["batches"])
            comm = s["push_s"] + s["pull_s"]
            measured["d"] = comm / steps
            measured["c"] = max(0.0, s["run_s"] - s["delay_s"] - comm - s["wait_s"]) / steps
        g = rec["gradient_staleness"]
        H.log(f"{variant} K={k}: {rec['updates']} updates, "
              f"{1000 * rec['wall_s'] / max(1, rec['updates']):.2f} ms/update, mean tau "
              f"{R.fmt(g['mean'], '.2f')}, final loss {rec['evals'][-1]['train_loss']:.3f}, "
              f"other cpus {rec['foreign_cpus']:.2f}")  # fmt: skip
    c, d = measured.get("c", GUESS_C), measured.get("d", GUESS_D)
    for variant in order:
        sim = predict(variant, P, a.k, a.straggler, c, d, a.sim_updates, a.seed)
        w.emit({"variant": variant, "learners": P, "k": k_of(variant, P, a.k)}, kind="sim",
               sim=sim)  # fmt: skip


main = R.main(NAME, parse_args, run, tables, plot)


if __name__ == "__main__":
    sys.exit(main())
