"""The ``fastps`` command: ``fastps train`` trains a model with asynchronous learners;
``fastps simulate`` simulates the runtime of the sync-to-async variants (fastps.sim)."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from fastps import extras

STEP_SIZES = ("constant", "inverse", "exponential", "tail", "distance")


def _policy(name: str, lr: float) -> Any:
    import fastps

    if name == "constant":
        return None  # the store's default; also what the local-update variants need
    if name == "distance":  # c chosen so that eta = lr at a distance of 1
        return fastps.StalenessDistance(c=lr, eta_max=lr)
    return {"constant": fastps.Constant, "inverse": fastps.Inverse,
            "exponential": fastps.Exponential, "tail": fastps.TailTau}[name]()  # fmt: skip


RAY_ONLY = ("address", "servers")
_EXTRA = {"train": "train", "simulate": None}
"""The pip extra each command needs beyond numpy (fastps.extras names it when one is missing)."""
STRAGGLER_FORMS = ("exp:MEAN", "shifted-exp:SHIFT:MEAN", "slow:LEARNER:DELAY", "fixed:DELAY")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only where the default is a value: an option whose default is None
    says in its help what it falls back to."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action, argparse._StoreTrueAction):
            return action.help
        return super()._get_help_string(action)


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not 0.0 <= v < math.inf:
        raise argparse.ArgumentTypeError(f"expected finite seconds >= 0 (got {text!r})")
    return v


def _straggler(text: str) -> Any:
    """``exp:MEAN``, ``shifted-exp:SHIFT:MEAN``, ``slow:LEARNER:DELAY`` or ``fixed:DELAY``
    (seconds) as a fastps.train.options.Straggler."""
    from fastps.train.options import Straggler

    kind, _, rest = text.partition(":")
    fields = {"exp": ("mean",), "shifted-exp": ("shift", "mean"), "slow": ("learner", "delay"),
              "fixed": ("delay",)}.get(kind)  # fmt: skip
    values = rest.split(":") if rest else []
    if fields is None or len(values) != len(fields):
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(STRAGGLER_FORMS)} (got {text!r})"
        )
    kw: dict[str, Any] = {}
    for name, value in zip(fields, values):
        if name == "learner":
            if not value.isdigit():
                raise argparse.ArgumentTypeError(
                    f"slow:LEARNER:DELAY: LEARNER must be a learner index >= 0 (got {value!r})"
                )
            kw[name] = int(value)
        else:
            try:
                kw[name] = _seconds(value)
            except argparse.ArgumentTypeError:
                raise argparse.ArgumentTypeError(
                    f"{kind}: {name.upper()} must be finite seconds >= 0 (got {value!r})"
                ) from None
    return Straggler(kind, **kw)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastps", description="fastps: asynchronous SGD")
    sub = p.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _simulate_parser(sub)
    return p


def _train_parser(sub: Any) -> argparse.ArgumentParser:
    t: argparse.ArgumentParser = sub.add_parser(
        "train",
        help="train a model with asynchronous learners through a fastps store",
        description="Train a model on an offline data set with P asynchronous learner processes "
        "that push gradients to and pull parameters from one fastps store. Without options: an "
        "MLP on Fashion-MNIST, 4 learners, leashed mode, 5 epochs (well under a minute on 2 "
        "cores). An option that the chosen --variant does not use is refused.",
        formatter_class=_HelpFormatter,
    )
    from fastps.train.data import FASHION_MNIST_DIR, NAMES
    from fastps.train.models import MODELS

    t.add_argument("--dataset", default="fashion-mnist", choices=NAMES, help="data set")
    t.add_argument("--root", default=None, metavar="DIR",
                   help="directory of the files: idx (MNIST-format IDX files) and cifar10 "
                   f"(python batches) need it; fashion-mnist reads {FASHION_MNIST_DIR} "
                   "without it")  # fmt: skip
    t.add_argument("--limit", type=int, default=None,
                   help="use this many training examples (default: all)")  # fmt: skip
    t.add_argument("--model", default="mlp", choices=MODELS, help="model")
    t.add_argument("--learners", type=int, default=4, help="asynchronous learners (P)")
    from fastps.train.options import BACKENDS
    from fastps.train.variants import VARIANTS

    t.add_argument("--variant", default="async", choices=VARIANTS, help="who waits for whom")
    t.add_argument("--k", type=int, default=None,
                   help="gradients per update: k-sync, k-async: 1..P; k-batch-sync, "
                   "k-batch-async: any K >= 1; adasync: K_0, the initial K, 1..P (required by "
                   "these; the other variants fix K: async 1, sync P)")  # fmt: skip
    t.add_argument("--local-steps", type=int, default=None,
                   help="local SGD steps: local-sgd: steps per averaging round (default: 4); "
                   "adacomm: tau_0, the first round's steps and the most a round takes "
                   "(default: 4); easgd: steps between elastic exchanges (default: 1)")  # fmt: skip
    t.add_argument("--alpha", type=float, default=None,
                   help="easgd: the elastic rate, in [0, 1] (default: 2/(P+2))")  # fmt: skip
    t.add_argument("--n-fetch", type=int, default=None,
                   help="downpour: steps between fetches of the parameters (default: 1)")  # fmt: skip
    t.add_argument("--n-push", type=int, default=None,
                   help="downpour: steps between pushes of the accrued gradient (default: 1)")  # fmt: skip
    t.add_argument("--interval-s", type=float, default=None,
                   help="adasync: seconds between changes of K (default: 1)")  # fmt: skip
    t.add_argument("--straggler", type=_straggler, default=None, metavar="KIND:ARGS",
                   help="an injected delay in seconds before each mini-batch: exp:MEAN (X ~ "
                   "Exp(MEAN) for every learner), shifted-exp:SHIFT:MEAN (SHIFT + Exp(MEAN)), "
                   "slow:LEARNER:DELAY (learner LEARNER only), fixed:DELAY (every learner) "
                   "(default: none)")  # fmt: skip
    t.add_argument("--comm-delay", type=_seconds, default=0.0, metavar="SECONDS",
                   help="an emulated network latency, slept before every push, pull and "
                   "hand-over to the coordinator")  # fmt: skip
    t.add_argument("--time-budget-s", type=float, default=None,
                   help="stop after this many seconds of training (alone, without --epochs or "
                   "--updates: the budget is the only limit)")  # fmt: skip
    t.add_argument("--mode", default="leashed", choices=("leashed", "locked", "hogwild"),
                   help="the store's consistency mode")  # fmt: skip
    t.add_argument("--step-size", default="constant", choices=STEP_SIZES,
                   help="staleness-adaptive step size")  # fmt: skip
    t.add_argument("--lr", type=float, default=0.05, help="base step size eta0")
    t.add_argument("--momentum", type=float, default=0.0, help="server-side momentum")
    t.add_argument("--batch-size", type=int, default=64, help="mini-batch size")
    t.add_argument("--epochs", type=float, default=None,
                   help="passes over the training set, counted in the mini-batches that go "
                   "into updates (a sync update with P learners uses P of them) (default: 5; "
                   "none with only --time-budget-s)")  # fmt: skip
    t.add_argument("--updates", type=int, default=None,
                   help="store updates in all, instead of --epochs")  # fmt: skip
    t.add_argument("--seed", type=int, default=0, help="seed of the model and the batches")
    t.add_argument("--backend", default="process", choices=BACKENDS,
                   help="learners as processes, threads, or Ray actors (docs/ray.md)")  # fmt: skip
    t.add_argument("--address", default=None,
                   help="ray: the cluster to join (default: a local instance on 127.0.0.1)")  # fmt: skip
    t.add_argument("--servers", type=int, default=None,
                   help="ray: ShardServer actors (default: 2)")  # fmt: skip
    t.add_argument("--evals", type=int, default=None,
                   help="test-set evaluations during the run (default: 10; every 200 updates "
                   "with only --time-budget-s)")  # fmt: skip
    t.add_argument("--json", metavar="PATH", default=None, help="write the history here")
    t.add_argument("--checkpoint", metavar="PATH", default=None, help="checkpoint file")
    t.add_argument("--checkpoint-every", type=int, default=None,
                   help="updates between saves (needs --checkpoint; default: only at the "
                   "end)")  # fmt: skip
    t.add_argument("--resume", metavar="PATH", default=None, help="resume from a checkpoint")
    t.add_argument("--devices", default=None, metavar="DEV[,DEV...]",
                   help="where learners compute, e.g. cuda:0,cuda:1 (learner r on the r-th, "
                   "cycling; default: the CPU)")  # fmt: skip
    t.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads per learner (default: the cores // --learners, at least "
                   "1; not with --backend ray)")  # fmt: skip
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    return t


def _check_train_args(t: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (t.error: usage, message, exit 2) what the chosen variant or backend would not use
    and what a variant needs but was not given; then fill in the defaults. Ranges that depend on
    the run (K against P, ...) are fit()'s to check."""
    # The options only some variants use (the variant table, fastps.train.variants) are
    # refused for the others before anything is loaded; None in argparse tells "given" from
    # "default".
    from fastps.train.variants import TABLE, VARIANT_OPTIONS

    v = args.variant
    row = TABLE[v]
    for dest, users in VARIANT_OPTIONS.items():
        if getattr(args, dest) is not None and not row.takes(dest):
            opt = "--" + dest.replace("_", "-")
            why = f" (it fixes K = {row.k})" if dest == "k" else ""
            t.error(f"{opt} is for --variant {', '.join(users)}; {v} does not use it{why}")
    if args.step_size != "constant" and row.coordinated and not row.local:
        from fastps.train.options import check_staleness_policy

        try:  # the store would only see tau = 0 (fit's rule, said as a usage error)
            check_staleness_policy(row, _policy(args.step_size, args.lr))
        except ValueError as e:
            t.error(f"--step-size {args.step_size}: {str(e).removeprefix('fit: ')}")
    if row.takes("k") and args.k is None:
        rng = "K >= 1" if row.k == "any" else "1..P"
        t.error(f"--variant {v} needs --k ({'K_0, ' if row.adapts == 'k' else ''}{rng})")
    for dest in RAY_ONLY:
        if getattr(args, dest) is not None and args.backend != "ray":
            t.error(f"--{dest} is for --backend ray (got --backend {args.backend})")
    if args.threads is not None and args.backend == "ray":
        t.error("--threads is for --backend process or thread (Ray actors get their CPUs "
                "from Ray)")  # fmt: skip
    if args.servers is None:
        args.servers = 2
    if args.epochs is not None and args.updates is not None:
        t.error("give --epochs or --updates, not both")
    if args.epochs is None and args.updates is None and args.time_budget_s is None:
        args.epochs = 5.0
    if args.evals is not None:
        if args.evals < 1:
            t.error(f"--evals must be >= 1 (got {args.evals})")
        if args.epochs is None and args.updates is None:
            t.error("--evals needs a run of known length (--epochs or --updates); with only "
                    "--time-budget-s the run evaluates every 200 updates")  # fmt: skip
    s = args.straggler
    if s is not None and s.kind == "slow" and s.learner >= args.learners:
        t.error(f"--straggler slow:{s.learner}:...: learner {s.learner} does not exist "
                f"(learners 0..{args.learners - 1})")  # fmt: skip


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
    s.add_argument("--local-steps", type=int, default=None, metavar="TAU",
                   help="local-sgd: local steps per averaging round (default 4)")  # fmt: skip
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


def _rate(h: Any, wall_s: float) -> str:
    """Updates per second while the learners trained (the start event to the last learner's
    end; a resumed run's earlier updates left out), and the whole command's time, which adds
    spawning, loading the data and evaluating."""
    made = h.stats["clock"] - h.config.get("resumed_at", 0)
    train_s = max((ln.get("run_s", 0.0) for ln in h.learners), default=0.0)
    if train_s <= 0:
        return f"({made / wall_s:.0f}/s over {wall_s:.1f} s)"
    return (f"({made / train_s:.0f}/s over {train_s:.1f} s of training; {wall_s:.1f} s in all, "
            "with start-up and evaluations)")  # fmt: skip


def _summary(h: Any, wall_s: float) -> str:
    ev = h.evals[-1]
    st = h.stats
    lines = [
        "",
        f"{'final test accuracy':<24}{ev['accuracy']:.4f}",
        f"{'final test loss':<24}{ev['loss']:.4f}",
        f"{'updates':<24}{st['clock']}  {_rate(h, wall_s)}",
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
    from fastps.train.variants import VARIANT_OPTIONS

    load = functools.partial(datasets.load, args.dataset, root=args.root, limit=args.limit,
                             seed=args.seed)  # fmt: skip
    ds = load()
    model_fn = functools.partial(models.build, args.model, ds.input_shape, ds.classes,
                                 seed=args.seed)  # fmt: skip
    bar = None
    if not args.no_progress:
        from fastps.progress import ProgressBar

        bar = ProgressBar()

    # Only what was given goes to fit (None: the variant's default, filled in by fit).
    given = {dest: getattr(args, dest) for dest in VARIANT_OPTIONS
             if getattr(args, dest) is not None}  # fmt: skip
    t0 = time.perf_counter()
    try:
        h = fit(model_fn, load if args.backend == "process" else ds, learners=args.learners,
                variant=args.variant, straggler=args.straggler, comm_delay=args.comm_delay,
                time_budget_s=args.time_budget_s, mode=args.mode, step_size=_policy(args.step_size, args.lr),
                lr=args.lr, momentum=args.momentum, batch_size=args.batch_size,
                epochs=args.epochs, updates=args.updates, seed=args.seed, backend=args.backend,
                evals=args.evals,
                checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                resume_from=args.resume, progress=bar,
                devices=args.devices.split(",") if args.devices else None,
                **given, **({"threads": args.threads} if args.threads is not None else {}),
                **(dict(address=args.address, servers=args.servers) if args.backend == "ray"
                   else {}))  # fmt: skip
    except KeyboardInterrupt:  # Ctrl-C: fit has stopped its learners; no traceback
        h = None
    finally:
        if bar is not None:
            bar.close()
    if h is None:
        msg = "fastps train: interrupted"
        if args.checkpoint and os.path.exists(args.checkpoint):
            msg += (f"; the last checkpoint is {args.checkpoint}: continue with --resume "
                    f"{args.checkpoint}")  # fmt: skip
        print(msg, file=sys.stderr)
        return 130
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
    steps = f", tau={r.local_steps}" if r.local_steps is not None else ""
    lines = [f"fastps simulate: {r.variant}, P={r.learners}, K={r.k}{steps}, X ~ {x}, {d}, "
             f"{r.updates} updates{warm}, seed {c['seed']}", "",
             f"{'':<28}{'simulated':>12}{'closed form':>14}  formula"]  # fmt: skip

    def row(name: str, sim: float, pred: float | None, key: str) -> None:
        p = f"{pred:>14.4f}" if pred is not None else f"{'-':>14}"
        lines.append(f"{name:<28}{sim:>12.4f}{p}  {r.formulas.get(key, '')}".rstrip())

    if r.local_steps is not None:
        row("time per local step", r.mean_time_per_local_step, r.predicted_time_per_local_step,
            "step")  # fmt: skip
        row("time per round", r.mean_time_per_update, r.predicted_time_per_update, "time")
        row("speedup over sync", r.speedup, r.predicted_speedup, "speedup")
    else:
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
        rest = sum(hist[len(shown) :])
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
            points=args.points, local_steps=args.local_steps)  # fmt: skip
    print(json.dumps(r.to_dict()) if args.json else _sim_table(r))
    return 0


def _subparser(p: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    raise KeyError(name)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run(argv)
    except ModuleNotFoundError as e:  # `pip install .` without the command's extra
        args = sys.argv[1:] if argv is None else list(argv)
        command = next((a for a in args if a in _EXTRA), None)
        who = f"fastps {command}" if command else "fastps"
        line = extras.hint(e, who, _EXTRA.get(command or "train"))
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2


def _run(argv: Sequence[str] | None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.command == "train":
        _check_train_args(_subparser(p, "train"), args)
    try:
        return simulate(args) if args.command == "simulate" else train(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"fastps {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
