"""What does a push + pull round trip through a RayStore cost, next to Ray's own parameter-server
pattern and to a bare Ray actor call moving the same bytes?

Every cell runs P learner actors on one host (a local Ray instance on 127.0.0.1) that each make
--calls round trips on a float32 vector of N elements, all at once; a cell's time is the wall
time of that round / --calls: the time in which every learner made one round trip.

Implementations (all in the same run, interleaved round by round, order rotated):

* ``fastps-S``: a ``fastps.ray.RayStore`` with S ShardServer actors (leashed, lr 0.01); a round
  trip is ``handle.pull(w)`` then ``handle.push(g)``: 2 calls to each server, in parallel.
  ``fastps-S-cC``: the same with ``server_cpus=C`` (each server reserves C CPUs; the plain name
  is the default, 0): ``--server-cpus 0,1`` puts both in one run.
* ``fastps-S-pp``: the same store, a learner of its own, ``handle.push_pull(g, w)``: one call to
  each server that pushes and returns the range (what ray-ps's single call does).
* ``ray-ps``: Ray's parameter-server example pattern: one actor holds the model as a numpy
  array; ``apply_gradients(g)`` does ``w -= lr * g`` and returns the new weights, so a round trip
  is one call (``ray.get(ps.apply_gradients.remote(g))``). As in the example the actor runs one
  call at a time.
* ``bare``: the transport alone: an actor method that takes the gradient and returns a stored
  array of N floats, with no arithmetic (the least a round trip moving the same bytes costs).

Reported per (N, P, implementation): round-trip time (median, p10, p90 over --repeats),
``updates_per_s`` (P / round-trip time), ``bandwidth_gb_s`` (8 N bytes moved per learner per
round trip, both ways, times P, over the round-trip time), ``ratio_bare`` (round-trip time over
bare's, per round, median and p10/p90: the overhead fastps adds over one bare Ray actor call)
and ``ratio_ray_ps`` (the same against ray-ps). ``idle_other_cpus``: CPUs other processes kept
busy in 0.5 s sampled just before the cell while the bench's actors idled (Ray's processes are
not this process's children, so load during a cell cannot be attributed). Benchmarks report;
they never assert.

    python bench/bench_ray.py --quick
    python bench/bench_ray.py --sizes 65536,1048576 --learners 1,2 --out /tmp/bench_ray.jsonl
    python bench/bench_ray.py --quick --servers 2 --server-cpus 0,1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

import _harness as H
import numpy as np

import fastps
import fastps.ray as fray

LR = 0.01


def _ray() -> Any:
    import ray

    return ray


class ParameterServer:
    """Ray's parameter-server example: the model in one actor, numpy weights."""

    def __init__(self, size: int) -> None:
        self.w = np.zeros(size, np.float32)

    def apply_gradients(self, g: np.ndarray) -> np.ndarray:
        self.w -= np.float32(LR) * g
        return self.w


class Bare:
    """The transport alone: takes a gradient, returns a stored array."""

    def __init__(self, size: int) -> None:
        self.w = np.zeros(size, np.float32)

    def echo(self, g: np.ndarray) -> np.ndarray:
        return self.w


class Learner:
    """A bench learner actor: ``loop(calls)`` round trips against one implementation."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.targets: dict[str, Any] = {}
        self.resize(1)

    def resize(self, size: int) -> None:
        self.g = self.rng.standard_normal(size).astype(np.float32)
        self.w = np.empty(size, np.float32)

    def add(self, name: str, target: Any) -> None:
        self.targets[name] = target

    def loop(self, name: str, calls: int) -> float:
        ray = _ray()
        t = self.targets[name]
        t0 = time.perf_counter()
        if name == "ray-ps":
            for _ in range(calls):
                self.w[:] = ray.get(t.apply_gradients.remote(self.g))
        elif name == "bare":
            for _ in range(calls):
                self.w[:] = ray.get(t.echo.remote(self.g))
        elif name.endswith("-pp"):
            for _ in range(calls):
                t.push_pull(self.g, self.w)
        else:
            for _ in range(calls):
                t.pull(self.w)
                t.push(self.g)
        return time.perf_counter() - t0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=H.int_list, default=[1 << 14, 1 << 18, 1 << 21],
                   help="vector lengths N in float32 elements (default 16384,262144,2097152)")  # fmt: skip
    p.add_argument("--learners", type=H.int_list, default=[1, 2], help="P values (default 1,2)")
    p.add_argument("--servers", type=H.int_list, default=[1, 2],
                   help="ShardServer counts S for fastps (default 1,2)")  # fmt: skip
    p.add_argument("--server-cpus", type=lambda v: [float(x) for x in v.split(",")], default=[0.0],
                   help="server_cpus values for fastps, each a store of its own (default 0)")  # fmt: skip
    p.add_argument("--calls", type=int, default=0,
                   help="round trips per learner per repeat (default: about 0.3 s worth)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="small sizes, 3 repeats (about a minute)")
    p.add_argument("--out", type=argparse.FileType("w"), help="also write the JSON lines here")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.repeats = [1 << 14, 1 << 18], 3
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    ray = _ray()
    cores = H.env(1)["cores"] or 1
    pmax = max(a.learners)
    # Logical CPUs: one per learner actor, plus what the servers reserve (none by default); the
    # machine's cores are shared by all of them.
    reserved = sum(s * c for s in a.servers for c in a.server_cpus)
    fray.init(num_cpus=int(max(cores, pmax) + reserved + 0.999))
    files: list[IO[str]] = [a.out] if a.out else []
    H.log(f"fastps {fastps.__version__}, ray {ray.__version__}: N {a.sizes}, P {a.learners}, "
          f"S {a.servers}, {a.repeats} repeats, {cores} cores")  # fmt: skip
    learners = [ray.remote(Learner).options(num_cpus=1).remote(r) for r in range(pmax)]
    records: list[dict[str, Any]] = []
    try:
        for n in a.sizes:
            records += bench_size(a, n, learners, files)
    finally:
        for actor in learners:
            ray.kill(actor)
        if a.out:
            a.out.close()
    print_table(records)
    return 0


def bench_size(a: argparse.Namespace, n: int, learners: list[Any],
               files: list[IO[str]]) -> list[dict[str, Any]]:  # fmt: skip
    ray = _ray()
    ps = ray.remote(ParameterServer).options(num_cpus=0).remote(n)
    bare = ray.remote(Bare).options(num_cpus=0).remote(n)
    stores = {f"fastps-{s}" + (f"-c{c:g}" if c else ""): fray.RayStore(
                  init=np.zeros(n, np.float32), servers=s, lr=LR, server_cpus=c,
                  max_learners=2 * max(a.learners) + 1)
              for s in a.servers for c in a.server_cpus}  # fmt: skip
    out = []
    try:
        for actor in learners:  # each learner's view of every implementation, at size n
            ray.get(actor.resize.remote(n))
            ray.get(actor.add.remote("ray-ps", ps))
            ray.get(actor.add.remote("bare", bare))
            for name, st in stores.items():  # a handle for each: one place per handle
                ray.get(actor.add.remote(name, st.learner()))
                ray.get(actor.add.remote(name + "-pp", st.learner()))
        ray.get([lr.loop.remote(name, 3) for lr in learners for name in ("bare", "ray-ps")])
        for P in a.learners:
            team = learners[:P]
            calls = a.calls or _calls_for(team, n)

            def cell(name: str, team: list[Any] = team, calls: int = calls) -> Callable[[], None]:
                return lambda: ray.get([lr.loop.remote(name, calls) for lr in team]) and None

            names = ["bare", "ray-ps", *stores, *(f"{nm}-pp" for nm in stores)]
            # The learners and servers are Ray's processes, not children of this one, so load
            # during a cell cannot be told apart from them: sample the machine while they idle.
            idle = H.wait_quiet(0.25, 10.0)
            t = H.measure_interleaved({nm: cell(nm) for nm in names}, warmup=1,
                                      repeats=a.repeats)  # fmt: skip
            per = {nm: H.Timing(tuple(x / calls for x in t[nm].samples), calls) for nm in names}
            for nm in names:
                ratio_bare = H.paired(per[nm], per["bare"], lambda x, y: x / y)
                ratio_ps = H.paired(per[nm], per["ray-ps"], lambda x, y: x / y)
                rec = H.record("ray", {"impl": nm, "n": n, "learners": P,
                                       "servers": int(nm.split("-")[1]) if nm.startswith("fastps") else 1,
                                       "server_cpus": _cpus(nm),
                                       "calls": "push_pull" if nm.endswith("-pp") else (
                                           "pull+push" if nm.startswith("fastps") else "one")},
                               per[nm], items_per_call=P, threads=P,
                               bandwidth_gb_s=8 * n * P / per[nm].median_s / 1e9,
                               ratio_bare=statistics.median(ratio_bare),
                               ratio_bare_p10=H.quantiles(ratio_bare)[0],
                               ratio_bare_p90=H.quantiles(ratio_bare)[2],
                               ratio_ray_ps=statistics.median(ratio_ps),
                               idle_other_cpus=idle)  # fmt: skip
                H.emit(rec, files)
                out.append(rec)
                H.log(f"N={n} P={P} {nm}: {per[nm].median_s * 1e3:.2f} ms/round trip, "
                      f"x{rec['ratio_bare']:.2f} bare, x{rec['ratio_ray_ps']:.2f} ray-ps")  # fmt: skip
    finally:
        for st in stores.values():
            st.close()
        ray.kill(ps)
        ray.kill(bare)
    return out


def _cpus(name: str) -> float:
    """The server_cpus of a fastps implementation's name (``fastps-S[-cC][-pp]``), else 0."""
    part = [p for p in name.split("-")[2:] if p.startswith("c")]
    return float(part[0][1:]) if part else 0.0


def _calls_for(team: list[Any], n: int, target_s: float = 0.3) -> int:
    """Round trips per repeat so that bare's round lasts about ``target_s``."""
    ray = _ray()
    t = max(ray.get([lr.loop.remote("bare", 5) for lr in team])) / 5
    return max(3, min(2000, int(target_s / max(t, 1e-6))))


def print_table(records: list[dict[str, Any]]) -> None:
    rows = [[r["params"]["n"], r["params"]["learners"], r["params"]["impl"],
             r["median_s"] * 1e3, r["p10_s"] * 1e3, r["p90_s"] * 1e3, r["items_per_s"],
             r["bandwidth_gb_s"], r["ratio_bare"], r["ratio_ray_ps"], r["idle_other_cpus"]]
            for r in records]  # fmt: skip
    H.print_table(["N", "P", "impl", "rt_ms", "p10_ms", "p90_ms", "updates/s", "GB/s", "x_bare",
                   "x_ray_ps", "idle_cpus"], rows,
                  title="round trip (pull + push) per learner; x_bare, x_ray_ps: time ratios")  # fmt: skip
    print(
        "# idle_cpus: CPUs other processes kept busy just before the cell, while the bench's "
        "actors idled"
    )


if __name__ == "__main__":
    sys.exit(main())
