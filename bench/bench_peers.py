"""fastps against what a user would pick instead: updates per second, push+pull round trip, and
time to accuracy of PyTorch's Hogwild pattern, a torch.distributed.rpc parameter server, a Ray
actor parameter server and synchronous DDP (with PostLocalSGD for local SGD), each as a ratio
to fastps, on the same model, data, batch and learner count, in one run.

Fashion-MNIST, the MLP (784-128-128-128-10), plain SGD at --lr, mini-batches of 64, P =
--learners learners (processes or actors, one torch thread each), --batches mini-batches in all
shared by the learners; learner r draws the mini-batches fit()'s learner r draws.

==========================  ==================================================================
peer                        what runs (compared with)
==========================  ==================================================================
fastps async                fit(variant="async", mode="leashed")                (the baseline)
fastps sync                 fit(variant="sync"): every update averages P gradients
fastps local-sgd            fit(variant="local-sgd", local_steps=4)
torch-hogwild               PyTorch's mnist_hogwild pattern: share_memory, an SGD optimizer
                            per process (bench_train.run_hogwild)          (vs fastps async)
torch-rpc async             PyTorch's batch-update parameter server (rpc tutorial), lock-guarded,
                            batch_update_size 1: each gradient applied as it comes; TensorPipe
                            on 127.0.0.1                                    (vs fastps async)
torch-rpc batch             the same server with batch_update_size P (sync)  (vs fastps sync)
ray-ps                      Ray's parameter-server example, asynchronous: a ParameterServer
                            actor, P DataWorker actors, ray.wait in the driver; a local Ray
                            instance, no dashboard                          (vs fastps async)
torch-ddp                   DistributedDataParallel over gloo on 127.0.0.1  (vs fastps sync)
torch-ddp postlocalsgd      DDP + PostLocalSGDOptimizer(PeriodicModelAverager(period 4)), no
                            gradient allreduce                         (vs fastps local-sgd)
==========================  ==================================================================

Measured per peer:

* updates/s: model updates / wall time from the start (all learners set up and their data
  loaded) to the last update; batches/s: mini-batch gradients used per second (a sync update
  uses P; a local-SGD "update" is an averaging round of 4 local steps per learner).
* round trip: the median time of one push + pull of the whole parameter vector (538 KB), with
  no computation, --rtt-calls calls: fastps ``handle.push(g); handle.pull(w)`` on a leashed
  store; Hogwild ``opt.step()`` on the shared model (it has no pull); rpc ``rpc_sync(
  update_and_fetch_model)`` from a trainer with zero gradients; Ray ``ray.get(ps.apply_gradients
  .remote(g))`` from the driver; DDP one ``all_reduce`` of the vector. Bandwidth = 2 x 538 KB /
  round trip.
* time to --target test accuracy (2,000 test images): fastps and Hogwild are evaluated by their
  parent during the run; the others save parameter snapshots about 20 times a run, evaluated
  after it (so their evaluations cost them nothing). Interpolated between evaluations.

A run during which other processes kept --quiet-below CPUs busy is made again after a wait for
quiet (--retries, within --wait-budget seconds for the whole script), for every peer alike.
A peer that cannot start (not installed, a port refused, a crash) is reported in its JSON line
(``error``) and in the table, not skipped. JSON lines go to bench/results/bench_peers.jsonl;
then a table; bench/make_results.py puts it in docs/results.md.

    pip install -c constraints.txt ".[peers]"
    python bench/bench_peers.py           # about 3 minutes on 2 cores
    python bench/bench_peers.py --quick   # about a minute
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import _harness as H
import _peers
import _results as R
import numpy as np

NAME = "bench_peers"
BASELINE = {"torch-hogwild": "fastps async", "torch-rpc async": "fastps async",
            "ray-ps": "fastps async", "torch-rpc batch": "fastps sync",
            "torch-ddp": "fastps sync", "torch-ddp postlocalsgd": "fastps local-sgd"}  # fmt: skip
PEERS = ("fastps async", "fastps sync", "fastps local-sgd", "torch-hogwild", "torch-rpc async",
         "torch-rpc batch", "ray-ps", "torch-ddp", "torch-ddp postlocalsgd")  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " ...")
    p.add_argument("--learners", type=int, default=2, help="P (default 2)")
    p.add_argument("--batches", type=int, default=None, help="mini-batches per run (default 3000)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, default=0.80, help="test accuracy (default 0.80)")
    p.add_argument("--rtt-calls", type=int, default=100, help="round trips timed (default 100)")
    p.add_argument("--peers", default=",".join(PEERS), help="which to run (default all)")
    a = R.parse(p, NAME, argv)
    a.batches = a.batches or (1500 if a.quick else 3000)
    a.peers = [x.strip() for x in a.peers.split(",") if x.strip()]
    bad = [x for x in a.peers if x not in PEERS]
    if bad:
        p.error(f"unknown peers {bad}; choose among {', '.join(PEERS)}")
    a.batch_size = 64
    return a


# -- the fastps side ------------------------------------------------------------------------------


def param_count() -> int:
    return sum(p.numel() for p in _peers.build_model(0).parameters())


def fastps_rtt(calls: int) -> list[float]:
    import fastps

    n = param_count()
    with fastps.Store(init=np.zeros(n, np.float32), mode="leashed", lr=0.05) as store:
        h = store.learner()
        g, w = np.zeros(n, np.float32), np.empty(n, np.float32)
        for _ in range(10):
            h.push(g)
            h.pull(w)
        out = []
        for _ in range(calls):
            t = time.perf_counter()
            h.push(g)
            h.pull(w)
            out.append(time.perf_counter() - t)
        h.close()
    return out


def hogwild_rtt(calls: int) -> list[float]:
    import torch

    model = _peers.build_model(0)
    model.share_memory()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for _ in range(10):
        opt.step()
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        opt.step()
        out.append(time.perf_counter() - t)
    return out


def run_fastps(a: argparse.Namespace, variant: str) -> dict[str, Any]:
    P = a.learners
    kw: dict[str, Any] = {"variant": variant}
    updates = a.batches
    if variant == "sync":
        updates = a.batches // P
    elif variant == "local-sgd":
        kw["local_steps"] = 4
        updates = a.batches // (4 * P)
    run = R.run_fit("mlp", seed=a.seed, eval_train=0, retry=False, learners=P, lr=a.lr,
                    batch_size=a.batch_size, updates=updates,
                    eval_every=max(1, updates // 20), timeout_s=a.timeout, **kw)  # fmt: skip
    return {"updates": run["updates"], "batches": run["batches"], "wall_s": run["wall_s"],
            "evals": [(e["t"], e["updates"], e["accuracy"]) for e in run["evals"]],
            "rtt_s": fastps_rtt(a.rtt_calls), "foreign_cpus": run["foreign_cpus"]}  # fmt: skip


def run_hogwild(a: argparse.Namespace, ds: Any) -> dict[str, Any]:
    import bench_train

    ns = argparse.Namespace(seed=a.seed, lr=a.lr, batch_size=a.batch_size, timeout=a.timeout)
    load = H.ForeignLoad(children=True)
    with load:
        r = bench_train.run_hogwild(ns, ds, a.learners, a.batches, max(1, a.batches // 20))
    return {"updates": r.updates, "batches": r.updates, "wall_s": r.wall_s,
            "evals": [(t, u, acc) for t, u, _loss, acc in r.evals],
            "rtt_s": hogwild_rtt(a.rtt_calls), "foreign_cpus": load.cores}  # fmt: skip


def evaluate_snapshots(run: _peers.PeerRun, ds: Any, seed: int) -> list[tuple[float, int, float]]:
    """Test accuracy of the initial model (``seed``'s) and of each snapshot on ``ds``'s test set,
    as fit() evaluates."""
    import torch

    model = _peers.build_model(0)
    x, y = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
    init = [p.detach().numpy().copy() for p in _peers.build_model(seed).parameters()]
    out = []
    for t, u, params in [(0.0, 0, init), *run.snapshots]:
        with torch.no_grad():
            for p, v in zip(model.parameters(), params):
                p.copy_(torch.from_numpy(np.array(v)))
            acc = float((model(x).argmax(1) == y).float().mean())
        out.append((t, u, acc))
    return out


def run_peer(a: argparse.Namespace, ds: Any, fn: Callable[[], _peers.PeerRun]) -> dict[str, Any]:
    load = H.ForeignLoad(children=True)
    with load:
        r = fn()
    return {"updates": r.updates, "batches": r.batches, "wall_s": r.wall_s,
            "evals": evaluate_snapshots(r, ds, a.seed), "rtt_s": r.rtt_s, "foreign_cpus": load.cores,
            **r.extra}  # fmt: skip


# -- records and the table --------------------------------------------------------------------------


def summarize(m: dict[str, Any], target: float, nbytes: int) -> dict[str, Any]:
    hit = R.first_reach(m["evals"], target, below=False)
    p10, med, p90 = H.quantiles(m["rtt_s"]) if m["rtt_s"] else (math.nan,) * 3
    return {"updates_per_s": m["updates"] / m["wall_s"], "batches_per_s": m["batches"] / m["wall_s"],
            "rtt_s": med, "rtt_p10_s": p10, "rtt_p90_s": p90,
            "bandwidth_Bps": 2 * nbytes / med if med > 0 else math.nan,
            "time_to_target_s": hit[0] if hit else None,
            "updates_to_target": hit[1] if hit else None,
            "final_accuracy": m["evals"][-1][2] if m["evals"] else None}  # fmt: skip


def _ratio(x: float | None, y: float | None) -> float | None:
    if x is None or y is None or not y or math.isnan(x) or math.isnan(y):
        return None
    return x / y


def tables(records: Sequence[dict[str, Any]]) -> list[R.Table]:
    by = {r["params"]["peer"]: r for r in records if r.get("kind") in ("peer", "error")}
    rows = []
    for name, r in by.items():
        if r["kind"] == "error":
            rows.append([name, "-", "could not run: " + r["error"].splitlines()[-1][:60],
                         *["-"] * 9])  # fmt: skip
            continue
        base_name = BASELINE.get(name, name)
        base = by.get(base_name)
        base = base if base is not None and base["kind"] == "peer" else None

        def ratio(key: str, r: dict = r, base: dict | None = base) -> str:
            return R.fmt(_ratio(r[key], base[key] if base else None), ".2f")

        rows.append([name, base_name if base_name != name else "-",
                     R.fmt(r["updates_per_s"], ".0f"), ratio("updates_per_s"),
                     R.fmt(r["batches_per_s"], ".0f"), ratio("batches_per_s"),
                     R.fmt(1e6 * r["rtt_s"], ".0f"), ratio("rtt_s"),
                     R.fmt(r["bandwidth_Bps"] / 1e9, ".2f"),
                     R.fmt(r["time_to_target_s"], ".2f"), ratio("time_to_target_s"),
                     R.fmt(r.get("foreign_cpus"), ".2f")])  # fmt: skip
    p0 = next((r["params"] for r in records if r.get("kind") in ("peer", "error")), None)
    title = "Peers against fastps"
    if p0 is not None:
        title += (f" (MLP, Fashion-MNIST, P = {p0['learners']}, batch {p0['batch_size']}, "
                  f"{p0['batches']} mini-batches, lr {p0['lr']:g}, target accuracy "
                  f"{p0['target']:g})")  # fmt: skip
    return [R.Table(
        title,
        ["peer", "compared with", "updates/s", "ratio", "batches/s", "ratio", "round trip us",
         "ratio", "GB/s per call", "t@acc_s", "ratio", "other cpus"],
        rows,
        ["ratio = peer / the fastps configuration it is compared with (updates/s, batches/s: "
         "above 1 is faster than fastps; round trip and t@acc: above 1 is slower); round trip: "
         "one push + pull of the whole parameter vector with no computation; GB/s = 2 x the "
         "vector's bytes / round trip; other cpus: CPUs other processes kept busy during the "
         "run."],
    )]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    a = parse_args(argv)
    torch.set_num_threads(1)
    ds = R.load_subset(R.DATASET, 2000)
    nbytes = 4 * param_count()
    cfg = _peers.Config(learners=a.learners, batches=a.batches, lr=a.lr, batch_size=a.batch_size,
                        seed=a.seed, snapshots=20, rtt_calls=a.rtt_calls, timeout_s=a.timeout)  # fmt: skip
    impls: dict[str, Callable[[], dict[str, Any]]] = {
        "fastps async": lambda: run_fastps(a, "async"),
        "fastps sync": lambda: run_fastps(a, "sync"),
        "fastps local-sgd": lambda: run_fastps(a, "local-sgd"),
        "torch-hogwild": lambda: run_hogwild(a, ds),
        "torch-rpc async": lambda: run_peer(a, ds, functools.partial(_peers.run_rpc, cfg,
                                                                     sync=False)),
        "torch-rpc batch": lambda: run_peer(a, ds, functools.partial(_peers.run_rpc, cfg,
                                                                     sync=True)),
        "ray-ps": lambda: run_peer(a, ds, functools.partial(_peers.run_ray, cfg)),
        "torch-ddp": lambda: run_peer(a, ds, functools.partial(_peers.run_ddp, cfg)),
        "torch-ddp postlocalsgd": lambda: run_peer(a, ds, functools.partial(
            _peers.run_ddp, cfg, local_steps=4)),
    }  # fmt: skip
    w = R.Writer(NAME, a.out)
    for name in a.peers:
        params = {"peer": name, "learners": a.learners, "batches": a.batches, "lr": a.lr,
                  "batch_size": a.batch_size, "seed": a.seed, "target": a.target,
                  "rtt_calls": a.rtt_calls, "param_bytes": nbytes}  # fmt: skip
        t0 = time.perf_counter()
        try:
            attempt = 0
            while True:  # every peer gets the same treatment when the machine was busy
                attempt += 1
                t_run = time.monotonic()
                m = impls[name]()
                if not R.QUIET.again(m["foreign_cpus"], attempt, time.monotonic() - t_run):
                    break
        except Exception as e:  # noqa: BLE001 -- a peer that cannot start is reported, not skipped
            R.error_record(w, params, e)
            continue
        m["attempts"] = attempt
        s = summarize(m, a.target, nbytes)
        w.emit(params, threads=a.learners, kind="peer", **s,
               evals=[[round(t, 4), u, round(acc, 4)] for t, u, acc in m["evals"]],
               **{k: v for k, v in m.items() if k not in ("evals", "rtt_s")},
               rtt_samples=len(m["rtt_s"]))  # fmt: skip
        H.log(
            f"{name}: {s['updates_per_s']:.0f} updates/s, {s['batches_per_s']:.0f} batches/s, "
            f"round trip {1e6 * s['rtt_s']:.0f} us, t@{a.target:g} "
            f"{R.fmt(s['time_to_target_s'], '.2f')} s, final acc "
            f"{R.fmt(s['final_accuracy'], '.3f')}, {time.perf_counter() - t0:.0f} s"
        )
    R.finish(w, tables(w.records), None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
