"""The projected learning rate against a large hand-picked one: how fast does each train with
P = 2 and 4 asynchronous learners?

Bhardwaj and Cong (2016) derive the rate eta = sqrt(D_f / (M K L sigma^2)) under which
asynchronous SGD provably speeds up linearly while P stays well under alpha = sqrt(K sigma^2 /
(M L D_f)). fastps.Projected.estimate measures D_f, sigma^2 and L with a few probe mini-batches
(docs/step_size.md); this script estimates them for the MLP on Fashion-MNIST at x1 = the seed's
initial weights (--probe-batches mini-batches of M = 64, 4 probe points, probe rate 0.01, K =
--updates), then trains with fastps.train.fit (async, leashed store, mini-batches of 64,
--updates updates) once at the projected rate (passed as ``step_size``) and once at the
hand-picked --lr, for P = 2 and 4 and each seed in --seeds.

Reported: the estimate (D_f, sigma^2, L, eta, alpha, P/alpha), and per rate and P the time and
updates to the training-loss target (--loss-target, on 2,000 training images; interpolated
between evaluations, ``_results.first_reach``), the final training loss and test accuracy.

    python bench/results_projected.py           # about 2 minutes on 2 cores
    python bench/results_projected.py --quick   # under a minute
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import _harness as H
import _results as R

NAME = "results_projected"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " ...")
    p.add_argument("--learners", type=H.int_list, default=None, help="P values (default 2,4)")
    p.add_argument("--seeds", type=H.int_list, default=None, help="seeds (default 1,2)")
    p.add_argument("--updates", type=int, default=None, help="K, updates per run (default 2000)")
    p.add_argument("--lr", type=float, default=0.2, help="the hand-picked rate (default 0.2)")
    p.add_argument("--probe-batches", type=int, default=16, help="probe mini-batches (default 16)")
    p.add_argument("--loss-target", type=float, default=0.7, help="training loss target")
    a = R.parse(p, NAME, argv)
    a.learners = a.learners or ([2] if a.quick else [2, 4])
    a.seeds = a.seeds or ([1] if a.quick else [1, 2])
    a.updates = a.updates or (1000 if a.quick else 2000)
    return a


def estimate(seed: int, updates: int, n_batches: int) -> Any:
    """fastps.Projected.estimate for the MLP at its initial weights (the seed's)."""
    import numpy as np
    import torch

    import fastps
    from fastps.layout import ParamLayout

    ds = R.load_subset(R.DATASET, 0)
    net = R.model_fn("mlp", seed)()
    layout = ParamLayout.from_module(net)
    x1 = layout.flatten(dict(net.named_parameters()))
    rng = np.random.default_rng([seed, 12345])
    batches = [rng.choice(len(ds.x_train), 64, replace=False) for _ in range(n_batches)]

    def loss_fn(x: np.ndarray, idx: np.ndarray) -> tuple[float, np.ndarray]:
        views = layout.unflatten(torch.from_numpy(x.astype(np.float32)))
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(views[name])
        net.zero_grad()
        xb, yb = torch.from_numpy(ds.x_train[idx]), torch.from_numpy(ds.y_train[idx])
        loss = torch.nn.functional.cross_entropy(net(xb), yb)
        loss.backward()
        grads = {name: p.grad for name, p in net.named_parameters()}
        return loss.item(), layout.flatten(grads).astype(np.float64)

    return fastps.Projected.estimate(loss_fn, x1, batches, updates, batch_size=64)


def tables(records: Sequence[dict[str, Any]]) -> list[R.Table]:
    est_rows = []
    for r in records:
        if r.get("kind") == "estimate":
            e = r["estimate"]
            est_rows.append([r["params"]["seed"], R.fmt(e["D_f"], ".3f"), R.fmt(e["sigma2"], ".3g"),
                             R.fmt(e["L"], ".3g"), e["M"], e["K"], R.fmt(e["eta"], ".4f"),
                             R.fmt(e["alpha"], ".3g"),
                             " / ".join(R.fmt(p / e["alpha"], ".2f") for p in (2, 4))])  # fmt: skip
    rows = []
    for (P, rate), runs in R.group(records, "learners", "rate").items():
        hits = [R.first_reach(R.curve(r, "train_loss"), r["params"]["loss_target"], below=True)
                for r in runs]  # fmt: skip
        rows.append([P, rate,
                     R.fmt_spread(R.spread(r["params"]["lr"] for r in runs), ".4f"),
                     R.fmt_spread(R.spread(h[0] if h else None for h in hits), ".2f"),
                     R.fmt_spread(R.spread(h[1] if h else None for h in hits), ".0f"),
                     R.fmt_spread(R.spread(r["evals"][-1]["train_loss"] for r in runs), ".3f"),
                     R.fmt_spread(R.spread(r["evals"][-1]["accuracy"] for r in runs), ".3f"),
                     R.fmt_spread(R.spread(r["evals"][-1]["staleness_mean"] for r in runs), ".2f"),
                     f"{runs[0]['params']['loss_target']:g}", len(runs)])  # fmt: skip
    return [
        R.Table("Projected.estimate for the MLP at its initial weights (one per seed)",
                ["seed", "D_f", "sigma^2", "L", "M", "K", "eta", "alpha", "P/alpha (P=2/4)"],
                est_rows),
        R.Table("Training at the projected rate and at the hand-picked one (mean ± std over "
                "seeds)",
                ["P", "rate", "lr", "t@loss_s", "upd@loss", "final loss", "final acc", "mean tau",
                 "loss target", "seeds"], rows,
                ["(n/of): only n of the seeds reached the target; t = seconds since the "
                 "learners began; loss on 2,000 training images, accuracy on 2,000 test images."]),
    ]  # fmt: skip


def plot(records: Sequence[dict[str, Any]]) -> Any:
    """The figure R.main saves beside the JSON lines."""
    plt = R.pyplot()
    runs = [r for r in records if r.get("kind") == "run"]
    ps = list(dict.fromkeys(r["params"]["learners"] for r in runs))
    fig, axes = plt.subplots(1, len(ps), figsize=(5 * len(ps), 3.6), squeeze=False)
    colors = {"projected": "tab:blue", "hand-picked": "tab:red"}
    for ax, P in zip(axes[0], ps):
        R.loss_panel(ax, [r for r in runs if r["params"]["learners"] == P],
                     series=lambda r: r["params"]["rate"], colors=colors,
                     label=lambda r: f"{r['params']['rate']} ({r['params']['lr']:.3g})",
                     x="updates", target=runs[0]["params"]["loss_target"], title=f"MLP, P = {P}",
                     lw=1)  # fmt: skip
    return fig


def run(a: argparse.Namespace, w: R.Writer) -> None:
    """The runs of this script's question, each recorded by ``w``."""
    import fastps

    for seed in a.seeds:
        est = estimate(seed, a.updates, a.probe_batches)
        w.emit({"seed": seed, "model": "mlp", "updates": a.updates,
                "probe_batches": a.probe_batches}, kind="estimate",
               estimate={"D_f": est.D_f, "sigma2": est.sigma2, "L": est.L, "M": est.M,
                         "K": est.K, "eta": est.lr, "alpha": est.alpha})  # fmt: skip
        H.log(f"seed {seed}: projected eta {est.lr:.4g} (D_f {est.D_f:.3g}, sigma^2 "
              f"{est.sigma2:.3g}, L {est.L:.3g}, alpha {est.alpha:.3g})")  # fmt: skip
        for P in a.learners:
            for rate, lr in (("projected", est.lr), ("hand-picked", a.lr)):
                params = {"model": "mlp", "learners": P, "rate": rate, "lr": lr, "seed": seed,
                          "batch_size": 64, "updates": a.updates, "loss_target": a.loss_target}  # fmt: skip
                step = est if rate == "projected" else fastps.Constant()
                rec = R.record_run(w, params, "mlp", seed=seed, learners=P, step_size=step, lr=lr,
                                   batch_size=64, updates=a.updates,
                                   eval_every=max(1, a.updates // 25),
                                   timeout_s=a.timeout)  # fmt: skip
                if rec is None:
                    continue
                hit = R.first_reach(R.curve(rec, "train_loss"), a.loss_target, below=True)
                H.log(f"P={P} seed {seed} {rate} lr {lr:.4g}: t@loss "
                      f"{R.fmt(hit[0] if hit else None, '.2f')} s, final loss "
                      f"{rec['evals'][-1]['train_loss']:.3f}")  # fmt: skip


main = R.main(NAME, parse_args, run, tables, plot)


if __name__ == "__main__":
    sys.exit(main())
