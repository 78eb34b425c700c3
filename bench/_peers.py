"""The peers of bench/bench_peers.py: parameter servers a user would pick instead of fastps, each
written after its project's own example, training the same MLP on the same Fashion-MNIST
mini-batches (learner r draws the batches fit()'s learner r draws: numpy generator seeded with
(seed, r)).

Each ``run_*`` function returns a :class:`PeerRun`: updates and mini-batches made, the wall time
from the start (every learner set up, data loaded) to the last update, parameter snapshots
taken during the run (evaluated afterwards by the caller, so evaluation never slows the peer
down), and the measured push+pull round-trip latencies of one call. A module of its own (not
the script) so spawned processes and Ray workers import the functions by name.
"""

from __future__ import annotations

import math
import os
import socket
import statistics
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DATASET = "fashion-mnist"


@dataclass
class PeerRun:
    updates: int  # model updates (a sync update averages P gradients)
    batches: int  # mini-batch gradients computed and used
    wall_s: float
    snapshots: list[tuple[float, int, list[np.ndarray]]]  # (t, updates, parameters)
    rtt_s: list[float] = field(default_factory=list)  # push+pull round trips of one call
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    learners: int
    batches: int  # mini-batches in all, shared by the learners
    lr: float
    batch_size: int
    seed: int
    snapshots: int  # parameter snapshots per run
    rtt_calls: int
    timeout_s: float


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_model(seed: int) -> Any:
    from fastps.train import models

    return models.build("mlp", (1, 28, 28), 10, seed=seed)


class Batches:
    """Learner ``rank``'s mini-batches, in fit()'s order."""

    def __init__(self, ds: Any, seed: int, rank: int, batch_size: int) -> None:
        self.ds, self.bs = ds, batch_size
        self.rng = np.random.default_rng([seed, rank])
        self.n = len(ds.x_train)
        self.nb = max(1, self.n // batch_size)
        self.order = self.rng.permutation(self.n)
        self.step = 0

    def next(self) -> tuple[Any, Any]:
        import torch

        j = self.step % self.nb
        if j == 0 and self.step:
            self.order = self.rng.permutation(self.n)
        idx = self.order[j * self.bs : (j + 1) * self.bs]
        self.step += 1
        return torch.from_numpy(self.ds.x_train[idx]), torch.from_numpy(self.ds.y_train[idx])


def _load() -> Any:
    from fastps.train import data

    return data.load(DATASET)


def _params(model: Any) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in model.parameters()]


def _quota(total: int, P: int) -> list[int]:
    return [total // P + (r < total % P) for r in range(P)]


def _collect(procs: list[Any], out: Any, cfg: Config, what: str) -> dict[str, Any]:
    """The result message of rank 0, or RuntimeError with the failing process's traceback."""
    import queue as queue_mod

    deadline = time.monotonic() + cfg.timeout_s
    try:
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: no result within {cfg.timeout_s} s")
            try:
                kind, msg = out.get(timeout=0.2)
            except queue_mod.Empty:
                dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                if dead:
                    raise RuntimeError(
                        f"{what}: a process died (exit code {dead[0].exitcode})"
                    ) from None
                continue
            if kind == "error":
                raise RuntimeError(f"{what}: {msg}")
            return msg
    finally:
        for p in procs:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)


# -- torch.distributed.rpc: PyTorch's batch-update parameter server --------------------------------


class BatchUpdateParameterServer:
    """PyTorch's tutorial server ("Implementing Batch RPC Processing Using Asynchronous
    Executions"): a lock guards the model; ``update_and_fetch_model`` adds a trainer's gradients,
    and every ``batch_update_size`` of them makes one optimizer step and answers the waiting
    trainers with the new model. batch_update_size = 1 is the lock-guarded asynchronous server;
    = P makes every update wait for all P trainers (synchronous)."""

    def __init__(self, cfg: Config, batch_update_size: int, snap_every: int) -> None:
        import torch

        self.model = build_model(cfg.seed)
        self.lock = threading.Lock()
        self.future_model: Any = torch.futures.Future()
        self.batch_update_size = batch_update_size
        self.curr_update_size = 0
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr)
        for p in self.model.parameters():
            p.grad = torch.zeros_like(p)
        self.updates = 0
        self.snap_every = snap_every
        self.snapshots: list[tuple[float, int, list[np.ndarray]]] = []
        self.t0 = math.nan

    def get_model(self) -> Any:
        return self.model

    @staticmethod
    def update_and_fetch_model(ps_rref: Any, grads: list[Any]) -> Any:
        self = ps_rref.local_value()
        with self.lock:
            self.curr_update_size += 1
            for p, g in zip(self.model.parameters(), grads):
                p.grad += g
            fut = self.future_model
            if self.curr_update_size >= self.batch_update_size:
                for p in self.model.parameters():
                    p.grad /= self.batch_update_size
                self.curr_update_size = 0
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=False)
                self.updates += 1
                if self.snap_every and self.updates % self.snap_every == 0:
                    self.snapshots.append((time.perf_counter() - self.t0, self.updates,
                                           _params(self.model)))  # fmt: skip
                fut.set_result(self.model)
                import torch

                self.future_model = torch.futures.Future()
        return fut


def _decorate() -> None:
    """rpc.functions.async_execution on the server's method (torch imported lazily)."""
    from torch.distributed import rpc

    f = BatchUpdateParameterServer.__dict__["update_and_fetch_model"].__func__
    if not getattr(f, "_wrapped_async_rpc_function", None):
        BatchUpdateParameterServer.update_and_fetch_model = staticmethod(  # type: ignore[method-assign]
            rpc.functions.async_execution(f)
        )


_TRAINER: dict[str, Any] = {}


def rpc_trainer(ps_rref: Any, steps: int) -> dict[str, Any]:
    """The tutorial's trainer loop: fetch the model, then compute and update_and_fetch."""
    import torch
    from torch.distributed import rpc

    b: Batches = _TRAINER["batches"]
    m = ps_rref.rpc_sync().get_model()
    lat = []
    for _ in range(steps):
        x, y = b.next()
        m.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        t = time.perf_counter()
        m = rpc.rpc_sync(ps_rref.owner(), BatchUpdateParameterServer.update_and_fetch_model,
                         args=(ps_rref, [p.grad for p in m.parameters()]))  # fmt: skip
        lat.append(time.perf_counter() - t)
    return {"call_s": statistics.median(lat) if lat else math.nan}


def rpc_probe(ps_rref: Any, calls: int) -> list[float]:
    """Round trips of update_and_fetch_model with zero gradients (one trainer alone)."""
    import torch
    from torch.distributed import rpc

    m = ps_rref.rpc_sync().get_model()
    zeros = [torch.zeros_like(p) for p in m.parameters()]
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        rpc.rpc_sync(ps_rref.owner(), BatchUpdateParameterServer.update_and_fetch_model,
                     args=(ps_rref, zeros))  # fmt: skip
        out.append(time.perf_counter() - t)
    return out


def _rpc_main(rank: int, cfg: Config, sync: bool, port: int, out: Any) -> None:
    try:
        import warnings

        import torch
        from torch.distributed import rpc

        warnings.filterwarnings("ignore", message="You are using a Backend")  # rpc's own use
        torch.set_num_threads(1)
        _decorate()
        P = cfg.learners
        if rank > 0:
            _TRAINER["batches"] = Batches(_load(), cfg.seed, rank - 1, cfg.batch_size)
        opts = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{port}",
                                               num_worker_threads=max(8, 2 * P))  # fmt: skip
        name = "ps" if rank == 0 else f"trainer{rank}"
        rpc.init_rpc(name, rank=rank, world_size=P + 1, rpc_backend_options=opts)
        if rank == 0:
            probe = rpc.RRef(BatchUpdateParameterServer(cfg, 1, 0))
            rtt = rpc.rpc_sync("trainer1", rpc_probe, args=(probe, cfg.rtt_calls))
            quota = _quota(cfg.batches, P)
            if sync:  # every update waits for all P: each trainer makes the same number
                quota = [cfg.batches // P] * P
            updates = sum(quota) // (P if sync else 1)
            ps = BatchUpdateParameterServer(cfg, P if sync else 1,
                                            max(1, updates // cfg.snapshots))  # fmt: skip
            ps_rref = rpc.RRef(ps)
            ps.t0 = t0 = time.perf_counter()
            futs = [rpc.rpc_async(f"trainer{r + 1}", rpc_trainer, args=(ps_rref, quota[r]))
                    for r in range(P)]  # fmt: skip
            calls = [f.wait() for f in futs]
            wall = time.perf_counter() - t0
            out.put(("done", {"updates": ps.updates, "batches": sum(quota), "wall_s": wall,
                              "snapshots": ps.snapshots, "rtt_s": rtt,
                              "train_call_s": [c["call_s"] for c in calls]}))  # fmt: skip
        rpc.shutdown()
    except BaseException:  # noqa: BLE001 -- reported to the parent
        out.put(("error", f"rank {rank}: {traceback.format_exc()}"))


def run_rpc(cfg: Config, *, sync: bool) -> PeerRun:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rpc_main, args=(r, cfg, sync, port, out), daemon=True)
             for r in range(cfg.learners + 1)]  # fmt: skip
    for p in procs:
        p.start()
    m = _collect(procs, out, cfg, "torch-rpc")
    return PeerRun(m["updates"], m["batches"], m["wall_s"], m["snapshots"], m["rtt_s"],
                   {"train_call_s": m["train_call_s"]})  # fmt: skip


# -- torch DDP over gloo (sync), PostLocalSGD (local SGD) ---------------------------------------


def _ddp_main(rank: int, cfg: Config, local_steps: int, port: int, out: Any) -> None:
    try:
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP

        torch.set_num_threads(1)
        P = cfg.learners
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=P)  # fmt: skip
        b = Batches(_load(), cfg.seed, rank, cfg.batch_size)
        model = build_model(cfg.seed)
        ddp = DDP(model)
        opt: Any = torch.optim.SGD(ddp.parameters(), lr=cfg.lr)
        if local_steps > 1:  # PostLocalSGD: no gradient allreduce; models averaged every tau
            from torch.distributed.algorithms.ddp_comm_hooks.post_localSGD_hook import (
                PostLocalSGDState,
                post_localSGD_hook,
            )
            from torch.distributed.algorithms.model_averaging.averagers import (
                PeriodicModelAverager,
            )
            from torch.distributed.optim import PostLocalSGDOptimizer

            state = PostLocalSGDState(process_group=None, subgroup=None, start_localSGD_iter=0,
                                      post_local_gradient_allreduce=False)  # fmt: skip
            ddp.register_comm_hook(state, post_localSGD_hook)
            opt = PostLocalSGDOptimizer(optim=opt, averager=PeriodicModelAverager(
                period=local_steps, warmup_steps=0))  # fmt: skip
        # Round trip: one allreduce of the whole parameter vector (push and pull in one call).
        flat = torch.zeros(sum(p.numel() for p in model.parameters()))
        rtt = []
        for _ in range(cfg.rtt_calls):
            dist.barrier()
            t = time.perf_counter()
            dist.all_reduce(flat)
            rtt.append(time.perf_counter() - t)
        steps = cfg.batches // P
        snap_every = max(1, steps // cfg.snapshots)
        if local_steps > 1:
            snap_every = max(local_steps, snap_every - snap_every % local_steps)
        snapshots = []
        dist.barrier()
        t0 = time.perf_counter()
        for s in range(steps):
            x, y = b.next()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
            if rank == 0 and (s + 1) % snap_every == 0:  # after an averaging step (local SGD)
                snapshots.append((time.perf_counter() - t0, s + 1, _params(model)))
        dist.barrier()
        wall = time.perf_counter() - t0
        if rank == 0:
            updates = steps if local_steps == 1 else steps // local_steps
            out.put(("done", {"updates": updates, "batches": steps * P, "wall_s": wall,
                              "snapshots": snapshots, "rtt_s": rtt}))  # fmt: skip
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 -- reported to the parent
        out.put(("error", f"rank {rank}: {traceback.format_exc()}"))


def run_ddp(cfg: Config, *, local_steps: int = 1) -> PeerRun:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_ddp_main, args=(r, cfg, local_steps, port, out), daemon=True)
             for r in range(cfg.learners)]  # fmt: skip
    for p in procs:
        p.start()
    m = _collect(procs, out, cfg, "torch-ddp")
    return PeerRun(m["updates"], m["batches"], m["wall_s"], m["snapshots"], m["rtt_s"])


# -- Ray: the actor parameter server of Ray's example --------------------------------------------


def run_ray(cfg: Config) -> PeerRun:
    """Ray's "Parameter Server" example, asynchronous version: a ParameterServer actor applies
    each gradient as it arrives (``apply_gradients``) and returns the weights; DataWorker
    actors compute a gradient on the weights they are handed; the driver pairs them with
    ray.wait. A local Ray instance on 127.0.0.1, no dashboard."""

    bench_dir = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join([bench_dir, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # Ray's workers start in the driver's directory and import from it: the repository root
    # would shadow the installed fastps with its sources (no compiled _core) there.
    cwd = os.getcwd()
    os.chdir(bench_dir)
    try:
        return _run_ray(cfg, path)
    finally:
        os.chdir(cwd)


def _run_ray(cfg: Config, path: str) -> PeerRun:
    import ray

    ray.init(num_cpus=cfg.learners + 1, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", object_store_memory=200 * 1024 * 1024,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
             configure_logging=False)  # fmt: skip
    try:
        PS = ray.remote(num_cpus=1)(RayParameterServer)
        Worker = ray.remote(num_cpus=1)(RayDataWorker)
        ps = PS.remote(cfg.seed, cfg.lr)
        workers = [Worker.remote(cfg.seed, r, cfg.batch_size) for r in range(cfg.learners)]
        ray.get([w.ready.remote() for w in workers] + [ps.ready.remote()])
        zeros = ray.get(workers[0].zero_gradients.remote())
        rtt = []
        for _ in range(cfg.rtt_calls):
            t = time.perf_counter()
            ray.get(ps.apply_gradients.remote(zeros))
            rtt.append(time.perf_counter() - t)
        snap_every = max(1, cfg.batches // cfg.snapshots)
        refs: list[tuple[float, int, Any]] = []
        t0 = time.perf_counter()
        current = ps.get_weights.remote()
        gradients = {w.compute_gradients.remote(current): w for w in workers}
        for i in range(cfg.batches):
            ready, _ = ray.wait(list(gradients))
            worker = gradients.pop(ready[0])
            current = ps.apply_gradients.remote(ready[0])
            if (i + 1) % snap_every == 0:
                refs.append((time.perf_counter() - t0, i + 1, current))
            if i + len(gradients) + 1 < cfg.batches:
                gradients[worker.compute_gradients.remote(current)] = worker
        ray.get(current)
        wall = time.perf_counter() - t0
        snapshots = [(t, u, ray.get(ref)) for t, u, ref in refs]
        return PeerRun(cfg.batches, cfg.batches, wall, snapshots, rtt)
    finally:
        ray.shutdown()


class RayParameterServer:
    def __init__(self, seed: int, lr: float) -> None:
        import torch

        torch.set_num_threads(1)
        self.model = build_model(seed)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)

    def ready(self) -> bool:
        return True

    def apply_gradients(self, *gradients: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        summed = [np.stack(g).sum(axis=0) for g in zip(*gradients)]
        self.optimizer.zero_grad()
        for p, g in zip(self.model.parameters(), summed):
            p.grad = torch.from_numpy(g)
        self.optimizer.step()
        return self.get_weights()

    def get_weights(self) -> list[np.ndarray]:
        return _params(self.model)


class RayDataWorker:
    def __init__(self, seed: int, rank: int, batch_size: int) -> None:
        import torch

        torch.set_num_threads(1)
        self.model = build_model(seed)
        self.batches = Batches(_load(), seed, rank, batch_size)

    def ready(self) -> bool:
        return True

    def zero_gradients(self) -> list[np.ndarray]:
        return [np.zeros(p.shape, np.float32) for p in self.model.parameters()]

    def compute_gradients(self, weights: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.no_grad():
            for p, w in zip(self.model.parameters(), weights):
                p.copy_(torch.from_numpy(np.array(w)))
        x, y = self.batches.next()
        self.model.zero_grad()
        torch.nn.functional.cross_entropy(self.model(x), y).backward()
        return [p.grad.numpy().copy() for p in self.model.parameters()]
