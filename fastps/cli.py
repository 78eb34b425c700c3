"""The ``fastps`` command: ``fastps train`` trains a model with asynchronous learners;
``fastps simulate`` simulates the runtime of the sync-to-async variants (fastps.sim)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

STEP_SIZES = ("constant", "inverse", "exponential", "tail", "distance")


def _policy(name: str, lr: float) -> Any:
    import fastps

    if name == "constant":
        return None  # the store's default; also what the local-update variants need
    if name == "distance":  # c chosen so that eta = lr at a distance of 1
        return fastps.StalenessDistance(c=lr, eta_max=lr)
    return {"constant": fastps.Constant, "inverse": fastps.Inverse,
            "exponential": fastps.Exponential, "tail": fastps.TailTau}[name]()  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastps", description="fastps: asynchronous SGD")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train",
        help="train a model with asynchronous learners through a fastps store",
        description="Train a model on an offline data set with P asynchronous learners (spawned "
        "processes) that push gradients to and pull parameters from one fastps store. Without "
        "options: an MLP on Fashion-MNIST, 4 learners, leashed mode, 5 epochs (well under a "
        "minute on 2 cores).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from fastps.train.data import NAMES
    from fastps.train.models import MODELS

    t.add_argument("--dataset", default="fashion-mnist", choices=NAMES, help="data set")
    t.add_argument("--root", default=None, help="directory of the files (idx, cifar10)")
    t.add_argument("--limit", type=int, default=None, help="use this many training examples")
    t.add_argument("--model", default="mlp", choices=MODELS, help="model")
    t.add_argument("--learners", type=int, default=4, help="asynchronous learners (P)")
    from fastps.train.fit import VARIANTS

    t.add_argument("--variant", default="async", choices=VARIANTS, help="who waits for whom")
    t.add_argument("--k", type=int, default=None,
                   help="gradients per update (k-sync, k-batch-sync, k-async, k-batch-async)")  # fmt: skip
    t.add_argument("--local-steps", type=int, default=None,
                   help="local steps between exchanges (local-sgd: 4, easgd: 1)")  # fmt: skip
    t.add_argument("--alpha", type=float, default=None, help="EASGD's elastic rate (2/(P+2))")
    t.add_argument("--n-fetch", type=int, default=1, help="downpour: steps between fetches")
    t.add_argument("--n-push", type=int, default=1, help="downpour: steps between pushes")
    t.add_argument(
        "--interval-s", type=float, default=1.0, help="adasync: seconds between K changes"
    )
    t.add_argument("--time-budget-s", type=float, default=None, help="stop after this many seconds")
    t.add_argument("--mode", default="leashed", choices=("leashed", "locked", "hogwild"),
                   help="the store's consistency mode")  # fmt: skip
    t.add_argument("--step-size", default="constant", choices=STEP_SIZES,
                   help="staleness-adaptive step size")  # fmt: skip
    t.add_argument("--lr", type=float, default=0.05, help="base step size eta0")
    t.add_argument("--momentum", type=float, default=0.0, help="server-side momentum")
    t.add_argument("--batch-size", type=int, default=64, help="mini-batch size")
    t.add_argument("--epochs", type=float, default=5.0, help="passes over the training set")
    t.add_argument("--updates", type=int, default=None, help="total pushes (overrides --epochs)")
    t.add_argument("--seed", type=int, default=0, help="seed of the model and the batches")
    t.add_argument("--backend", default="process", choices=("process", "thread", "ray"),
                   help="learners as spawned processes, threads, or Ray actors (docs/ray.md)")  # fmt: skip
    t.add_argument("--address", default=None,
                   help="ray: the cluster to join (default: a local instance on 127.0.0.1)")  # fmt: skip
    t.add_argument("--servers", type=int, default=2, help="ray: ShardServer actors")
    t.add_argument("--evals", type=int, default=10, help="test-set evaluations during the run")
    t.add_argument("--json", metavar="PATH", default=None, help="write the history here")
    t.add_argument("--checkpoint", metavar="PATH", default=None, help="checkpoint file")
    t.add_argument("--checkpoint-every", type=int, default=None, help="updates between saves")
    t.add_argument("--resume", metavar="PATH", default=None, help="resume from a checkpoint")
    t.add_argument("--devices", default=None, metavar="DEV[,DEV...]",
                   help="where learners compute, e.g. cuda:0,cuda:1 (learner r on the r-th, "
                   "cycling); default the CPU")  # fmt: skip
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _simulate_parser(sub)
    return p


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas (got {text!r})"
        ) from None


def _simulate_parser(sub: Any) -> None:
    from fastps.sim import COMM_KINDS, DELAYS, MODELS, VARIANTS

    s = sub.add_parser(
        "simulate",
        help="simulate the runtime of the sync-to-async variants (no training)",
        description="Event-driven simulation of P learners and a parameter server for one "
        "coordination variant (Dutta et al. 2018): time per update, staleness distribution, "
        "fresh gradients, cancelled and dropped work, next to the closed forms where they exist. "
        "Each gradient takes a compute time X (--delay, --mu) and then a communication time D "
        "(--comm-delay). Times are in units of the simulated clock (1/mu is the mean compute "
        "time). docs/simulate.md has the model and the formulas.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("--variant", default="async", choices=VARIANTS, help="who waits for whom")
    s.add_argument("--learners", type=int, default=8, help="learners (P)")
    s.add_argument("--k", type=int, default=None,
                   help="gradients per update (k-sync, k-async: 1..P; k-batch-*: any; adasync: "
                        "K0); sync and async fix it")  # fmt: skip
    s.add_argument("--delay", default="exp", choices=DELAYS,
                   help="compute time X: exp(mu), shift + exp(mu), Pareto with mean 1/mu, or "
                        "fixed 1/mu")  # fmt: skip
    s.add_argument("--mu", type=float, default=1.0, help="rate of X (mean 1/mu, plus --shift)")
    s.add_argument("--shift", type=float, default=None,
                   help="Delta of shifted-exp, X = Delta + exp(mu) (default 1)")  # fmt: skip
    s.add_argument("--alpha", type=float, default=3.0, help="Pareto shape (> 1; heavier below 2)")
    s.add_argument("--comm-delay", type=float, default=0.0,
                   help="mean communication time D per gradient (push and pull), after X")  # fmt: skip
    s.add_argument("--comm-kind", default="fixed", choices=COMM_KINDS, help="D fixed or exp")
    s.add_argument("--slowdown", type=_floats, default=None, metavar="S0,S1,...",
                   help="per-learner factors on X (one per learner), e.g. 1,1,1,4")  # fmt: skip
    s.add_argument("--updates", type=int, default=100_000, help="parameter-server updates")
    s.add_argument("--warmup", type=int, default=0,
                   help="first updates left out of the statistics")  # fmt: skip
    s.add_argument("--seed", type=int, default=0, help="seed of the random times")
    s.add_argument("--model", default="none", choices=MODELS,
                   help="quadratic: also run SGD on a noisy quadratic and report its error "
                        "against time (adasync needs it)")  # fmt: skip
    s.add_argument("--lr", type=float, default=0.1, help="quadratic: step size")
    s.add_argument("--dim", type=int, default=20, help="quadratic: dimensions")
    s.add_argument("--noise", type=float, default=4.0, help="quadratic: gradient noise variance")
    s.add_argument("--interval", type=float, default=10.0,
                   help="adasync: simulated time between changes of K")  # fmt: skip
    s.add_argument("--points", type=int, default=50,
                   help="quadratic: points of the error curve (log-spaced updates)")  # fmt: skip
    s.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def _summary(h: Any, wall_s: float) -> str:
    ev = h.evals[-1]
    st = h.stats
    lines = [
        "",
        f"{'final test accuracy':<24}{ev['accuracy']:.4f}",
        f"{'final test loss':<24}{ev['loss']:.4f}",
        f"{'updates':<24}{st['clock']}  ({st['clock'] / wall_s:.0f}/s over {wall_s:.1f} s)",
        f"{'mean staleness':<24}{h.coordinator.get('staleness_mean', ev['staleness_mean']):.2f}",
        f"{'dropped / CAS failures':<24}{st['dropped']} / {st['cas_failures']}",
        "",
        f"{'learner':>7} {'grads':>8} {'compute s':>10} {'push s':>8} {'pull s':>8} {'wait s':>8}"
        f" {'comm %':>7}",
    ]
    if h.coordinator:
        lines.insert(-2, f"{'late / cancelled':<24}{h.coordinator['dropped_late']} / "
                         f"{h.coordinator['cancelled']}")  # fmt: skip
    for ln in h.learners:
        total = ln["compute_s"] + ln["push_s"] + ln["pull_s"] + ln["wait_s"]
        comm = 100 * (ln["push_s"] + ln["pull_s"] + ln["wait_s"]) / total if total else 0.0
        lines.append(f"{ln['id']:>7} {ln['updates']:>8} {ln['compute_s']:>10.2f} "
                     f"{ln['push_s']:>8.2f} {ln['pull_s']:>8.2f} {ln['wait_s']:>8.2f} "
                     f"{comm:>6.1f}%")  # fmt: skip
    return "\n".join(lines)


def train(args: argparse.Namespace) -> int:
    from fastps.train import data as datasets
    from fastps.train import models
    from fastps.train.fit import fit

    load = functools.partial(datasets.load, args.dataset, root=args.root, limit=args.limit,
                             seed=args.seed)  # fmt: skip
    ds = load()
    model_fn = functools.partial(models.build, args.model, ds.input_shape, ds.classes,
                                 seed=args.seed)  # fmt: skip
    updates = args.updates
    if updates is None:
        updates = max(1, int(args.epochs * len(ds.x_train) / args.batch_size))
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=updates, unit="upd", dynamic_ncols=True, file=sys.stderr, mininterval=0.2)
    last = {"accuracy": float("nan"), "loss": float("nan"), "staleness_mean": 0.0}

    def progress(rec: dict[str, Any]) -> None:
        if bar is None:
            return
        if "accuracy" in rec:
            last.update(rec)
            bar.set_postfix(acc=f"{rec['accuracy']:.3f}", loss=f"{rec['loss']:.3f}",
                            tau=f"{rec['staleness_mean']:.2f}")  # fmt: skip
        elif rec["updates"] != bar.n:
            bar.update(rec["updates"] - bar.n)

    t0 = time.perf_counter()
    try:
        h = fit(model_fn, load if args.backend == "process" else ds, learners=args.learners,
                variant=args.variant, k=args.k, local_steps=args.local_steps, alpha=args.alpha,
                n_fetch=args.n_fetch, n_push=args.n_push, interval_s=args.interval_s,
                time_budget_s=args.time_budget_s, mode=args.mode, step_size=_policy(args.step_size, args.lr),
                lr=args.lr, momentum=args.momentum, batch_size=args.batch_size, updates=updates,
                seed=args.seed, backend=args.backend, eval_every=max(1, updates // args.evals),
                checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                resume_from=args.resume, progress=progress,
                devices=args.devices.split(",") if args.devices else None,
                **(dict(address=args.address, servers=args.servers) if args.backend == "ray"
                   else {}))  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    k = f" (k={args.k})" if args.k else ""
    print(f"fastps train: {args.model} on {args.dataset}, {args.learners} learners, "
          f"{args.variant}{k}, {args.mode}, step size {args.step_size}, lr {args.lr}")  # fmt: skip
    print(_summary(h, wall))
    if args.json:
        h.save(args.json)
        print(f"\nhistory written to {args.json}")
    return 0


def _sim_table(r: Any) -> str:
    c = r.config
    x = f"exp(mu={c['mu']:g})"
    if c["delay"] == "shifted-exp":
        x = f"{c['shift']:g} + {x}"
    elif c["delay"] == "pareto":
        x = f"Pareto(alpha={c['alpha']:g}, mean {1 / c['mu']:g})"
    elif c["delay"] == "fixed":
        x = f"fixed {1 / c['mu']:g}"
    if c["slowdown"]:
        x += f", slowdown {','.join(f'{v:g}' for v in c['slowdown'])}"
    d = f"D {c['comm_kind']} {c['comm_delay']:g}" if c["comm_delay"] else "no communication delay"
    warm = f" (after {c['warmup']} warm-up)" if c["warmup"] else ""
    lines = [f"fastps simulate: {r.variant}, P={r.learners}, K={r.k}, X ~ {x}, {d}, "
             f"{r.updates} updates{warm}, seed {c['seed']}", "",
             f"{'':<28}{'simulated':>12}{'closed form':>14}  formula"]  # fmt: skip

    def row(name: str, sim: float, pred: float | None, key: str) -> None:
        p = f"{pred:>14.4f}" if pred is not None else f"{'-':>14}"
        lines.append(f"{name:<28}{sim:>12.4f}{p}  {r.formulas.get(key, '')}".rstrip())

    row("time per update", r.mean_time_per_update, r.predicted_time_per_update, "time")
    row("mean staleness", r.mean_staleness, r.predicted_mean_staleness, "staleness")
    row("fresh fraction (tau = 0)", r.fresh_fraction, r.predicted_fresh_fraction, "fresh")
    if r.error_final is not None:
        row("error, mean of last half", r.error_tail, r.predicted_error_floor, "error_floor")
    lines += [
        "",
        f"{'simulated time':<28}{r.time:.4f}",
        f"{'gradients used':<28}{r.gradients}  (mean K {r.mean_k:.3f})",
        f"{'cancelled / dropped':<28}{r.cancelled} / {r.dropped}",
        f"{'learner time idle':<28}{100 * r.idle_fraction:.1f}%",
        f"{'learner time wasted':<28}{100 * r.wasted_fraction:.1f}%",
        f"{'max staleness':<28}{r.max_staleness}",
        "",
        f"{'staleness':>9} {'gradients':>10} {'share':>7}",
    ]
    hist = r.staleness_hist
    total = max(1, sum(hist))
    shown = hist[:16]
    for tau, n in enumerate(shown):
        lines.append(f"{tau:>9} {n:>10} {100 * n / total:>6.2f}%")
    if len(hist) > len(shown):
        rest = sum(hist[len(shown):])
        lines.append(f"{f'>= {len(shown)}':>9} {rest:>10} {100 * rest / total:>6.2f}%")
    if r.error_curve:
        lines += ["", f"{'time':>12} {'error F(w)':>12}"]
        every = max(1, len(r.error_curve) // 12)
        lines += [f"{t:>12.4g} {e:>12.4g}" for t, e in r.error_curve[::every]]
    return "\n".join(lines)


def simulate(args: argparse.Namespace) -> int:
    from fastps.sim import simulate as run

    r = run(args.variant, args.learners, args.k, delay=args.delay, mu=args.mu, shift=args.shift,
            alpha=args.alpha, comm_delay=args.comm_delay, comm_kind=args.comm_kind,
            slowdown=args.slowdown, updates=args.updates, warmup=args.warmup, seed=args.seed,
            model=args.model, lr=args.lr, dim=args.dim, noise=args.noise, interval=args.interval,
            points=args.points)  # fmt: skip
    print(json.dumps(r.to_dict()) if args.json else _sim_table(r))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return simulate(args) if args.command == "simulate" else train(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"fastps {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
