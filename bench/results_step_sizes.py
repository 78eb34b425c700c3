"""Do staleness-adaptive step sizes reach a target sooner? Time and updates to a fixed training
loss and test accuracy for Constant, Inverse, Exponential and TailTau, P = 2 and 4 learners,
Fashion-MNIST with the MLP and LeNet, several seeds: mean and spread.

ASAP.SGD's comparison (Baeckstroem et al. 2022 report TAIL-tau faster on average), measured
with fastps.train.fit: async learners on a leashed store, plain SGD with base rate --lr
(eta0 of every policy), mini-batches of 64, --updates updates per run, for each seed in
--seeds (the seed sets the model's initial weights and every learner's batch order, and is the
same for all policies: runs are paired). The store is created with max_learners = P + 1, so
Exponential's beta is FLeet's for t = P + 2 and TailTau warms up for 15 (P + 1) shard updates.

Every --eval-every updates fit() evaluates the store's parameters on 2,000 test images and on
the first 2,000 training images. Time (seconds since the learners began) and updates to the
target are interpolated linearly between the last evaluation short of it and the first that
reached it (``_results.first_reach``); a run that never reaches it counts as missed (shown as
n/of). Targets (--loss-target, --acc-target, per model) are set so a Constant run reaches them
in about half of its updates.

    python bench/results_step_sizes.py           # about 5 minutes on 2 cores
    python bench/results_step_sizes.py --quick   # under a minute: MLP, P = 2, 1 seed
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import _harness as H
import _results as R

NAME = "results_step_sizes"
POLICIES = ("Constant", "Inverse", "Exponential", "TailTau")
DEFAULTS = {  # model: updates per run, loss target, accuracy target
    "mlp": (2000, 0.55, 0.80),
    "lenet": (1000, 0.75, 0.72),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " ...")
    p.add_argument("--models", default=None, help="models (default mlp,lenet; --quick: mlp)")
    p.add_argument("--learners", type=H.int_list, default=None, help="P values (default 2,4)")
    p.add_argument("--seeds", type=H.int_list, default=None,
                   help="seeds (default 1,2,3 for the MLP; LeNet takes the first two)")  # fmt: skip
    p.add_argument("--lr", type=float, default=0.1, help="eta0 of every policy (default 0.1)")
    p.add_argument("--updates", type=int, default=None, help="updates per run (per-model default)")
    p.add_argument("--loss-target", type=float, default=None, help="training loss target")
    p.add_argument("--acc-target", type=float, default=None, help="test accuracy target")
    a = R.parse(p, NAME, argv)
    a.models = (a.models or ("mlp" if a.quick else "mlp,lenet")).split(",")
    a.learners = a.learners or ([2] if a.quick else [2, 4])
    a.seeds = a.seeds or ([1] if a.quick else [1, 2, 3])
    return a


def policy(name: str) -> Any:
    import fastps

    return getattr(fastps, name)()


def reach(rec: dict[str, Any]) -> dict[str, tuple[float, float] | None]:
    p = rec["params"]
    return {"loss": R.first_reach(R.curve(rec, "train_loss"), p["loss_target"], below=True),
            "acc": R.first_reach(R.curve(rec, "accuracy"), p["acc_target"], below=False)}  # fmt: skip


def tables(records: Sequence[dict[str, Any]]) -> list[R.Table]:
    rows = []
    cells = R.group(records, "model", "learners", "policy")
    for (model, P, pol), runs in cells.items():
        hits = [reach(r) for r in runs]
        p = runs[0]["params"]

        def col(key: str, i: int, spec: str, hits: list = hits) -> str:
            return R.fmt_spread(R.spread(h[key][i] if h[key] else None for h in hits), spec)

        rows.append([model, P, pol,
                     col("loss", 0, ".2f"), col("loss", 1, ".0f"),
                     col("acc", 0, ".2f"), col("acc", 1, ".0f"),
                     R.fmt_spread(R.spread(r["evals"][-1]["train_loss"] for r in runs), ".3f"),
                     R.fmt_spread(R.spread(r["evals"][-1]["accuracy"] for r in runs), ".3f"),
                     R.fmt_spread(R.spread(r["evals"][-1]["staleness_mean"] for r in runs), ".2f"),
                     f"{p['loss_target']:g} / {p['acc_target']:g}", len(runs)])  # fmt: skip
    errors = [r for r in records if r.get("kind") == "error"]
    notes = [f"{len(errors)} run(s) failed: see the JSON lines"] if errors else []
    return [R.Table(
        "Time and updates to the training-loss and test-accuracy targets, mean ± std over seeds",
        ["model", "P", "step size", "t@loss_s", "upd@loss", "t@acc_s", "upd@acc", "final loss",
         "final acc", "mean tau", "targets loss/acc", "seeds"],
        rows,
        ["(n/of): only n of the seeds reached the target; t = seconds since the learners began; "
         "loss = mean training loss on 2,000 training images; acc = accuracy on 2,000 test "
         "images; mean tau = the store's mean staleness."] + notes,
    )]  # fmt: skip


def plot(records: Sequence[dict[str, Any]]) -> Any:
    """The figure R.main saves beside the JSON lines."""
    plt = R.pyplot()
    runs = [r for r in records if r.get("kind") == "run"]
    panels = list(dict.fromkeys((r["params"]["model"], r["params"]["learners"]) for r in runs))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    colors = dict(zip(POLICIES, ("tab:gray", "tab:blue", "tab:green", "tab:red")))
    for ax, (m, P) in zip(axes[0], panels):
        mine = [r for r in runs if (r["params"]["model"], r["params"]["learners"]) == (m, P)]
        R.loss_panel(ax, mine, series=lambda r: r["params"]["policy"], colors=colors,
                     target=mine[-1]["params"]["loss_target"], title=f"{m}, P = {P}",
                     alpha=0.7, lw=1)  # fmt: skip
    return fig


def run(a: argparse.Namespace, w: R.Writer) -> None:
    """The runs of this script's question, each recorded by ``w``."""
    for model in a.models:
        upd, lt, at = DEFAULTS[model]
        updates = a.updates or (upd // 2 if a.quick else upd)
        seeds = a.seeds if model == "mlp" else a.seeds[:2]
        for P in a.learners:
            for seed in seeds:
                for pol in POLICIES:
                    params = {"model": model, "learners": P, "policy": pol, "seed": seed,
                              "lr": a.lr, "batch_size": 64, "updates": updates, "mode": "leashed",
                              "loss_target": a.loss_target or lt, "acc_target": a.acc_target or at}  # fmt: skip
                    rec = R.record_run(w, params, model, seed=seed, learners=P,
                                       step_size=policy(pol), lr=a.lr, batch_size=64,
                                       updates=updates,
                                       eval_every=max(1, updates // 25),
                                       timeout_s=a.timeout)  # fmt: skip
                    if rec is None:
                        continue
                    h = reach(rec)
                    H.log(f"{model} P={P} seed {seed} {pol}: t@loss "
                          f"{R.fmt(h['loss'][0] if h['loss'] else None, '.2f')} s, t@acc "
                          f"{R.fmt(h['acc'][0] if h['acc'] else None, '.2f')} s, final loss "
                          f"{rec['evals'][-1]['train_loss']:.3f}, tau "
                          f"{rec['evals'][-1]['staleness_mean']:.2f}, other cpus "
                          f"{rec['foreign_cpus']:.2f}")  # fmt: skip


main = R.main(NAME, parse_args, run, tables, plot)


if __name__ == "__main__":
    sys.exit(main())
