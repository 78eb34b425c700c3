"""Local updates against a slow network: the training loss against wall-clock time of local SGD
with several tau, EASGD and AdaComm when every exchange costs an injected delay.

Wang and Joshi's setting (Cooperative SGD, AdaComm), measured with fastps.train.fit: P = 4
learners on Fashion-MNIST with the MLP, mini-batches of 64, local rate --lr, and an injected
communication delay ``comm_delay`` = --delay seconds before every push, pull and hand-over to
the coordinator (so an async update costs 2 D more and a local-sgd round 2 D per tau local
steps). Every run lasts --budget seconds (``time_budget_s``):

* async: every gradient pushed and the model pulled (the baseline that talks the most);
* local-sgd, tau in --taus: models averaged every tau local steps (tau = 1 is synchronous SGD);
* easgd: asynchronous EASGD, an elastic exchange with the centre every 4 local steps,
  alpha = 2 / (P + 2);
* adacomm: local-sgd whose tau starts at max(--taus) and shrinks as sqrt(F / F_0).

Measured: the training loss on 2,000 training images and the test accuracy on 2,000 test
images, evaluated by fit() about 20 times a run, against seconds since the learners began; the
time and local steps to the loss target (--loss-target), the loss at the end of the budget,
and the share of learner time spent in push, pull and wait.

    python bench/results_local.py           # about 3 minutes on 2 cores
    python bench/results_local.py --quick   # under a minute
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import _harness as H
import _results as R

NAME = "results_local"
STEP_S = 0.002  # rough seconds of one MLP step per learner at P = 4 on 2 cores (eval spacing)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " ...")
    p.add_argument("--learners", type=int, default=4, help="P (default 4)")
    p.add_argument("--taus", type=H.int_list, default=None, help="local-sgd tau (default 1,4,16)")
    p.add_argument("--delay", type=float, default=0.01,
                   help="comm_delay, seconds per push/pull/hand-over (default 0.01)")  # fmt: skip
    p.add_argument("--budget", type=float, default=None, help="seconds per run (default 12)")
    p.add_argument("--lr", type=float, default=0.05, help="local step size (default 0.05)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--loss-target", type=float, default=0.6, help="training loss target")
    a = R.parse(p, NAME, argv)
    a.taus = a.taus or ([1, 8] if a.quick else [1, 4, 16])
    a.budget = a.budget or (3.5 if a.quick else 12.0)
    return a


def configs(a: argparse.Namespace) -> list[tuple[str, dict[str, Any], float]]:
    """(name, fit arguments, expected exchanges per second) of each run."""
    P, D = a.learners, a.delay
    out: list[tuple[str, dict[str, Any], float]] = [
        ("async", {"variant": "async"}, P / (2 * D + STEP_S))
    ]
    for tau in a.taus:
        out.append((f"local-sgd tau={tau}", {"variant": "local-sgd", "local_steps": tau},
                    1 / (2 * D + tau * STEP_S * 2)))  # fmt: skip
    out.append(("easgd tau=4", {"variant": "easgd", "local_steps": 4}, P / (2 * D + 4 * STEP_S)))
    t0 = max(a.taus)
    out.append((f"adacomm tau0={t0}", {"variant": "adacomm", "local_steps": t0},
                1 / (2 * D + t0 * STEP_S)))  # fmt: skip
    return out


def tables(records: Sequence[dict[str, Any]]) -> list[R.Table]:
    rows = []
    for rec in records:
        p = rec["params"]
        if rec.get("kind") == "error":
            rows.append([p["config"], "failed: " + rec["error"][:60], *[""] * 7])
            continue
        if rec.get("kind") != "run":
            continue
        hit = R.first_reach(R.curve(rec, "train_loss"), p["loss_target"], below=True)
        s = rec["split"]
        busy = sum(s[k] for k in ("compute_s", "push_s", "pull_s", "wait_s"))
        comm = (s["push_s"] + s["pull_s"] + s["wait_s"]) / busy if busy else float("nan")
        steps_per_s = rec["batches"] / rec["wall_s"]
        rows.append([p["config"], R.fmt(hit[0] if hit else None, ".2f"),
                     R.fmt(hit[0] * steps_per_s if hit else None, ".0f"),
                     R.fmt(rec["evals"][-1]["train_loss"], ".3f"),
                     R.fmt(rec["evals"][-1]["accuracy"], ".3f"), rec["updates"], rec["batches"],
                     R.fmt(100 * comm, ".0f"), R.fmt(rec["foreign_cpus"], ".2f")])  # fmt: skip
    r0 = next((r for r in records if r.get("kind") == "run"), None)
    title = "Local updates with an injected communication delay"
    if r0 is not None:
        q = r0["params"]
        title += (f" (P = {q['learners']}, comm_delay {1000 * q['comm_delay']:g} ms, "
                  f"{q['budget_s']:g} s per run, loss target {q['loss_target']:g})")  # fmt: skip
    return [R.Table(
        title,
        ["variant", "t@loss_s", "steps@loss", "loss at end", "acc at end", "exchanges",
         "local steps", "comm %", "other cpus"],
        rows,
        ["t@loss: seconds since the learners began until the training loss (2,000 training "
         "images) reached the target, interpolated between evaluations; steps@loss: local steps "
         "of all learners by then (at the run's mean rate); exchanges: store updates (async, "
         "easgd: pushes; local-sgd, adacomm: averaging rounds); comm %: push + pull + wait "
         "share of learner time (the injected delay is in push and pull)."],
    )]  # fmt: skip


def plot(records: Sequence[dict[str, Any]]) -> Any:
    """The figure R.main saves beside the JSON lines."""
    plt = R.pyplot()
    runs = [r for r in records if r.get("kind") == "run"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    q = runs[0]["params"] if runs else None
    R.loss_panel(ax, runs, series=lambda r: r["params"]["config"],
                 target=q["loss_target"] if q else None,
                 title=f"MLP, P = {q['learners']}, comm_delay {1000 * q['comm_delay']:g} ms"
                 if q else None, lw=1.2, marker=".", ms=3)  # fmt: skip
    return fig


def run(a: argparse.Namespace, w: R.Writer) -> None:
    """The runs of this script's question, each recorded by ``w``."""
    P = a.learners
    for config, kw, rate in configs(a):
        eval_every = max(1, round(rate * a.budget / 20))
        params = {"model": "mlp", "learners": P, "config": config, **kw, "lr": a.lr,
                  "batch_size": 64, "comm_delay": a.delay, "budget_s": a.budget, "seed": a.seed,
                  "loss_target": a.loss_target, "eval_every": eval_every}  # fmt: skip
        rec = R.record_run(w, params, "mlp", seed=a.seed, learners=P, lr=a.lr, batch_size=64,
                           updates=10**7, time_budget_s=a.budget, comm_delay=a.delay,
                           eval_every=eval_every, timeout_s=a.timeout, **kw)  # fmt: skip
        if rec is None:
            continue
        H.log(
            f"{config}: {rec['updates']} exchanges, {rec['batches']} local steps, "
            f"{len(rec['evals'])} evaluations, final loss "
            f"{rec['evals'][-1]['train_loss']:.3f}, other cpus {rec['foreign_cpus']:.2f}"
        )


main = R.main(NAME, parse_args, run, tables, plot)


if __name__ == "__main__":
    sys.exit(main())
