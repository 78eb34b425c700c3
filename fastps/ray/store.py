"""The RayStore: the store's ranges held by ``ShardServer`` actors, reached by learners
anywhere in a cluster.

``RayStore`` cuts the flat parameter vector into ``servers`` contiguous ranges (whole 64-byte
blocks, as equal as blocks allow: ``fastps.config.shard_ranges``, the split a Store makes of its
shards) and starts one ``ShardServer`` actor per range, placed by a Ray placement group (spread
across nodes by default). Its arguments are checked whole (``fastps.config.native_config``)
before any actor exists. It hands out learner handles, aggregates the servers' stats, and saves
and loads every range as one folder.
"""

from __future__ import annotations

import inspect
import json
import os
import time
import uuid
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fastps import checkpoint, config
from fastps.buffers import flat_out, init_array
from fastps.ray import session
from fastps.ray.handle import RayLearnerHandle, write_ranges
from fastps.ray.server import ShardServer
from fastps.step_size import StepSize

_STORE_ARGS = frozenset(inspect.signature(config.native_config).parameters) - {"size", "api"}
"""The Store arguments every server takes (``native_config`` checks them)."""


def _check_store_args(kwargs: dict[str, Any]) -> None:
    unknown = sorted(set(kwargs) - _STORE_ARGS)
    if unknown:
        raise TypeError(f"RayStore: unexpected keyword argument {unknown[0]!r}")


def server_ranges(size: int, servers: int) -> list[tuple[int, int]]:
    """[begin, end) of each server's range: whole 64-byte blocks, as equal as blocks allow
    (``fastps.config.shard_ranges``, the rule a Store uses for its shards)."""
    blocks = config.blocks(size)
    if not 1 <= servers <= blocks:
        raise ValueError(
            f"RayStore: servers must be in [1, {blocks}] for size {size} (one 64-byte block "
            f"at least per server), got {servers}"
        )
    return config.shard_ranges(size, servers)


class RayStore:
    """A parameter store whose ranges live in Ray actors (``ShardServer``), one per range.

    Args:
        size, init: as for ``fastps.Store``.
        servers: number of ShardServer actors (contiguous ranges of whole 64-byte blocks).
        shards_per_server: native shards inside each server (default: the Store default for
            the range, one per MiB, 1 to 16).
        mode, lr, step_size, momentum, nesterov, weight_decay, persistence, nan_guard,
            max_learners, staleness_bins: as for ``fastps.Store``, for every server. The
            step size is applied per server with that server's staleness counts: ``TailTau``'s
            warm-up and CDF count the shard updates of one server.
        checkpoint_dir: a folder every server can write (a shared file system on a cluster,
            or the local disk when restarts stay on the node): ``server-J.fpsck`` per server.
        checkpoint_every_s: period of each server's checkpoint (needs ``checkpoint_dir``).
        address: Ray to use when it is not initialised yet (see ``fastps.ray.init``); None
            starts a local instance on 127.0.0.1.
        name: the store's name among Ray's named actors (default: a fresh one).
        server_cpus: CPUs each server reserves (its placement-group bundle). 0 (the default)
            reserves the memory of its range instead and takes no CPU slot: servers mostly wait
            on the network, and the cluster keeps its CPUs for learners. A UserWarning says so
            when the servers' CPUs would be every CPU of the cluster.
        placement: the placement group's strategy: "SPREAD" (default: across nodes where
            possible), "STRICT_SPREAD", "PACK" or "STRICT_PACK".
        max_restarts: how often Ray restarts a dead server (-1: always).
        retry_timeout_s: how long a learner's call waits for a dead server to come back.
    """

    metadata: Any = None
    """What ``save(metadata=...)`` stored, for a store made by ``RayStore.load``."""

    def __init__(
        self,
        size: int | None = None,
        *,
        init: Any = None,
        servers: int = 2,
        shards_per_server: int | None = None,
        mode: str = "leashed",
        lr: float | None = None,
        step_size: Any = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        checkpoint_every_s: float | None = None,
        address: str | None = None,
        name: str | None = None,
        server_cpus: float = 0.0,
        placement: str = "SPREAD",
        max_restarts: int = -1,
        retry_timeout_s: float = 120.0,
        **store_kwargs: Any,
    ) -> None:
        self._owner = False
        init_arr = init_array("RayStore", init)
        if size is None:
            if init_arr is None:
                raise ValueError("RayStore: give size or init (got neither)")
            size = init_arr.size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"RayStore: size must be an integer >= 1 (got {size!r})")
        size = int(size)
        if init_arr is not None and init_arr.size != size:
            raise ValueError(f"RayStore: init has {init_arr.size} elements, expected size={size}")
        servers = config.check_int("RayStore", "servers", servers)
        ranges = server_ranges(size, servers)
        if "shards" in store_kwargs or "shared" in store_kwargs:
            raise ValueError("RayStore: use shards_per_server (shards and shared are per server)")
        if checkpoint_every_s is not None and checkpoint_dir is None:
            raise ValueError("RayStore: checkpoint_every_s needs checkpoint_dir")
        if checkpoint_every_s is not None and not (checkpoint_every_s > 0):
            raise ValueError(f"RayStore: checkpoint_every_s must be > 0 (got {checkpoint_every_s})")
        if not server_cpus >= 0:
            raise ValueError(f"RayStore: server_cpus must be >= 0 (got {server_cpus})")
        if placement not in ("SPREAD", "STRICT_SPREAD", "PACK", "STRICT_PACK"):
            raise ValueError(
                f"RayStore: placement must be SPREAD, STRICT_SPREAD, PACK or STRICT_PACK "
                f"(got {placement!r})"
            )
        _check_store_args(store_kwargs)
        kwargs = dict(store_kwargs, mode=mode, lr=lr, step_size=step_size)
        # Every argument is checked here, before any actor exists (nothing is created).
        cfg, self._policy = config.native_config(size, api="RayStore", **kwargs)
        bound = config.to_dict(cfg, self._policy)
        for b, e in ranges:
            blocks = config.blocks(e - b)
            if shards_per_server is not None and not 1 <= shards_per_server <= blocks:
                raise ValueError(
                    f"RayStore: shards_per_server must be in [1, {blocks}] for a range of "
                    f"{e - b} elements (got {shards_per_server})"
                )
        if shards_per_server is not None:
            kwargs["shards"] = shards_per_server
        ckdir = os.fspath(checkpoint_dir) if checkpoint_dir is not None else None
        if ckdir is not None:
            os.makedirs(ckdir, exist_ok=True)
        self._init_ray = session.init(address)
        self._closed = False
        self.name = name or f"rs-{uuid.uuid4().hex[:10]}"
        self._meta = {"name": self.name, "size": size, "ranges": ranges, "mode": mode,
                      "nan_guard": bound["nan_guard"], "lr": bound["lr"], "checkpoint_dir": ckdir,
                      "retry_timeout_s": float(retry_timeout_s)}  # fmt: skip
        _check_room(servers, server_cpus)
        self._pg = placement_group(_bundles(ranges, server_cpus), strategy=placement)
        self._owner = True
        try:
            _wait_placed(self._pg, servers, server_cpus, retry_timeout_s)
            self._start(init_arr, kwargs, ckdir, checkpoint_every_s, None, server_cpus,
                        max_restarts)  # fmt: skip
        except BaseException:
            self.close()
            raise

    def _start(self, init_arr: np.ndarray | None, kwargs: dict[str, Any], ckdir: str | None,
               every_s: float | None, load_dir: str | None, cpus: float,
               max_restarts: int) -> None:  # fmt: skip
        cls = ray.remote(ShardServer)
        actors: list[Any] = []
        # The constructor's arguments are small and inline, so Ray keeps them with the actor and
        # a restart cannot lose them (arguments in the object store could be). The initial
        # values come with start(); a server keeps them in its checkpoint, else in a file on
        # its node, for a restart.
        keep = self.name if init_arr is not None and ckdir is None else None
        for j, (b, e) in enumerate(self._meta["ranges"]):
            actors.append(cls.options(
                name=session.actor_name(self.name, j), num_cpus=cpus, max_restarts=max_restarts,
                max_task_retries=-1, max_concurrency=int(kwargs.get("max_learners", 16)) + 4,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._pg, placement_group_bundle_index=j),
            ).remote(
                j, b, e, kwargs, os.path.join(ckdir, f"server-{j}.fpsck") if ckdir else None,
                every_s, os.path.join(load_dir, f"server-{j}.fpsck") if load_dir else None, keep,
            ))  # fmt: skip
        session.register(self.name, actors)
        self._actors = actors
        ray.get([a.start.remote(None if init_arr is None else init_arr[b:e])
                 for a, (b, e) in zip(actors, self._meta["ranges"])])  # fmt: skip
        ray.get([a.ready.remote() for a in actors])

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs: Any) -> RayStore:
        """A new RayStore from ``save(path)``'s folder (same size and server count).
        ``kwargs``: RayStore's own arguments (checkpoint_dir, address, server_cpus, ...);
        a Python-callable step size must be given again as ``step_size`` (and only then: the
        other policies come with the checkpoint). Mode, lr and shards are the saved ones."""
        path = os.fspath(path)
        try:
            with open(os.path.join(path, "manifest.json")) as f:
                man = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"load: {path} is not a RayStore checkpoint ({e})") from None
        header, _, _ = checkpoint.read(os.path.join(path, "server-0.fpsck"))
        c = header["config"]
        policy = config.policy_from_header(c, kwargs.pop("step_size", None), "load", path)
        for k in ("servers", "size", "init", "shards_per_server"):
            if k in kwargs:
                raise ValueError(f"load: {k} comes from the checkpoint")
        self = cls.__new__(cls)
        self._owner = False
        self._closed = False
        ckdir = kwargs.pop("checkpoint_dir", None)
        every = kwargs.pop("checkpoint_every_s", None)
        cpus = kwargs.pop("server_cpus", 0.0)
        max_restarts = kwargs.pop("max_restarts", -1)
        retry = kwargs.pop("retry_timeout_s", 120.0)
        address = kwargs.pop("address", None)
        self.name = kwargs.pop("name", None) or f"rs-{uuid.uuid4().hex[:10]}"
        placement_strategy = kwargs.pop("placement", "SPREAD")
        _check_store_args(kwargs)
        kw = dict(config.store_kwargs(c), **kwargs)
        kw.update(mode=c["mode"], lr=c["lr"], step_size=policy)
        _, self._policy = config.native_config(man["size"], api="RayStore", **kw)
        kw["shards"] = c["shards"]
        self._init_ray = session.init(address)
        ckdir = os.fspath(ckdir) if ckdir is not None else None
        if ckdir is not None:
            os.makedirs(ckdir, exist_ok=True)
        self._meta = {"name": self.name, "size": man["size"],
                      "ranges": [tuple(r) for r in man["ranges"]], "mode": c["mode"],
                      "nan_guard": c["nan_guard"], "lr": c["lr"], "checkpoint_dir": ckdir,
                      "retry_timeout_s": float(retry)}  # fmt: skip
        _check_room(len(man["ranges"]), cpus)
        self._pg = placement_group(_bundles(self._meta["ranges"], cpus),
                                   strategy=placement_strategy)  # fmt: skip
        self._owner = True
        try:
            _wait_placed(self._pg, len(man["ranges"]), cpus, retry)
            self._start(None, kw, ckdir, every, path, cpus, max_restarts)
        except BaseException:
            self.close()
            raise
        self.metadata = man.get("metadata")
        return self

    # -- data ------------------------------------------------------------------------------

    def learner(self, name: str | None = None) -> RayLearnerHandle:
        """A learner handle. ``name`` makes it rejoinable: a handle opened later with the same
        name (a restarted learner actor) continues that learner's push sequence."""
        servers = self._servers("learner")
        if name is None:
            return RayLearnerHandle(self._meta, uuid.uuid4().hex[:12])
        lid = f"named:{name}"
        acked = self._gather(lambda j: servers[j].join.remote(lid), "learner")
        return RayLearnerHandle(self._meta, lid, acked)

    def _servers(self, api: str) -> list[Any]:
        if self._closed:
            raise session.closed_error(api, self.name)
        return session.actors(self.name, len(self._meta["ranges"]), api)

    def _gather(self, submit: Any, api: str) -> list[Any]:
        return session.gather(submit, self.servers, self._meta["retry_timeout_s"], self.name, api)

    def _all(self, method: str, *args: Any) -> list[Any]:
        servers = self._servers(method)
        return self._gather(lambda j: getattr(servers[j], method).remote(*args), method)

    def read(self, out: Any = None) -> Any:
        """A copy of the parameters (each range consistent as in the local store); written
        into ``out`` when given (float32, ``size`` elements: numpy, or torch on the CPU or a
        GPU), else a new numpy array."""
        parts = self._all("read")
        if out is None:
            return np.concatenate(parts)
        write_ranges(flat_out("read", out, self.size), self._meta["ranges"], parts)
        return out

    def checkpoint(self) -> list[int]:
        """Every server saves its range to ``checkpoint_dir`` now; per server, the pushes
        applied that the checkpoint holds."""
        if self._meta["checkpoint_dir"] is None:
            raise ValueError("checkpoint: this RayStore has no checkpoint_dir")
        return self._all("checkpoint")

    def save(self, path: str | os.PathLike[str], *, metadata: Any = None) -> None:
        """Write every server's range to the folder ``path`` (one atomic file per server,
        then ``manifest.json``); ``RayStore.load(path)`` continues from it. Each range is one
        instant of its server; ranges of different servers are saved one after another, not
        at one instant of the whole store (asynchronous SGD has no such instant)."""
        import json

        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        servers = self._servers("save")
        self._gather(lambda j: servers[j].checkpoint.remote(
            os.path.join(path, f"server-{j}.fpsck"), metadata), "save")  # fmt: skip
        man = {"size": self.size, "ranges": [list(r) for r in self._meta["ranges"]],
               "metadata": metadata, "saved_unix_s": time.time()}  # fmt: skip
        tmp = os.path.join(path, f".manifest.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "w") as f:
            json.dump(man, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(path, "manifest.json"))

    def stats(self) -> dict[str, Any]:
        """The servers' counters aggregated: ``clock`` and ``pushes`` are the smallest over
        servers (pushes every range has applied); shard_updates, dropped, cas_failures,
        slot_waits, lock_wait_s, bytes_applied, nonfinite_skipped and the staleness histogram
        are sums; ``versions`` lists every native shard in order; ``lost_updates`` sums the
        pushes the servers lost to restarts; ``servers`` has each server's own stats."""
        per = self._all("stats")
        agg: dict[str, Any] = {
            "mode": self.mode, "size": self.size, "servers": per,
            "shards": sum(s["shards"] for s in per),
            "clock": min(s["clock"] for s in per), "pushes": min(s["pushes"] for s in per),
            "learners": max(s["learners"] for s in per),
            "versions": [v for s in per for v in s["versions"]],
            "lost_updates": sum(s["lost_updates"] for s in per),
        }  # fmt: skip
        for k in ("shard_updates", "dropped", "cas_failures", "slot_waits", "lock_wait_s",
                  "bytes_applied", "nonfinite_skipped", "recovered", "torn_shards"):  # fmt: skip
            agg[k] = sum(s.get(k, 0) for s in per)
        agg["staleness_hist"] = [int(x) for x in np.sum([s["staleness_hist"] for s in per], 0)]
        if "step_hist" in per[0]:
            agg["step_hist"] = [s["step_hist"] for s in per]
        return agg

    # -- description -----------------------------------------------------------------------

    @property
    def size(self) -> int:
        return int(self._meta["size"])

    @property
    def servers(self) -> int:
        return len(self._meta["ranges"])

    @property
    def mode(self) -> str:
        return str(self._meta["mode"])

    @property
    def step_size(self) -> StepSize:
        """The step-size policy every server applies, bound to the store's lr."""
        return self._policy

    def server_ranges(self) -> list[tuple[int, int]]:
        """[begin, end) of each server's range."""
        return [tuple(r) for r in self._meta["ranges"]]  # type: ignore[misc]

    def server_actors(self) -> list[Any]:
        """The ShardServer actor handles (for ``ray.kill`` in fault drills, or placement)."""
        return list(self._servers("server_actors"))

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the servers (only in the process that created the store; an unpickled copy
        only stops itself). Idempotent, and never starts Ray: after ``ray.shutdown()``
        the servers are gone already. Every later call on the store or its handles, here or
        in any actor, raises RuntimeError("... RayStore 'NAME' is closed") at once."""
        self._closed = True
        if not self._owner:
            return
        self._owner = False
        session.forget(self.name)
        if not ray.is_initialized():  # ray.shutdown() took the servers and the group with it
            self._pg = None
            return
        actors = getattr(self, "_actors", [])
        for ref in [a.shutdown.remote() for a in actors]:
            try:
                ray.get(ref, timeout=10)
            except Exception:  # noqa: BLE001 -- a dead server has nothing left to close
                pass
        for a in actors:
            ray.kill(a, no_restart=True)
        if getattr(self, "_pg", None) is not None:
            remove_placement_group(self._pg)
            self._pg = None

    def __enter__(self) -> RayStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickles by name: an unpickled copy reaches the same servers and never stops them."""
        return (_attach, (self._meta, self._policy))

    def __repr__(self) -> str:
        return (f"fastps.ray.RayStore(size={self.size}, servers={self.servers}, "
                f"mode={self.mode!r}, name={self.name!r})")  # fmt: skip


def _bundles(ranges: Sequence[tuple[int, int]], cpus: float) -> list[dict[str, float]]:
    """One placement-group bundle per server: its CPUs, or with ``cpus=0`` the memory of its
    range (a bundle must reserve something; the server then takes no CPU slot)."""
    if cpus > 0:
        return [{"CPU": float(cpus)} for _ in ranges]
    return [{"memory": float(max(1 << 20, 4 * (e - b)))} for b, e in ranges]


def _check_room(servers: int, cpus: float) -> None:
    have = ray.cluster_resources().get("CPU", 0.0)
    if cpus > 0 and have < servers * cpus:
        raise ValueError(
            f"RayStore: {servers} servers with server_cpus={cpus:g} need {servers * cpus:g} "
            f"CPUs; the Ray cluster has {have:g} (lower server_cpus or add nodes)"
        )
    if cpus > 0 and have == servers * cpus:
        warnings.warn(
            f"RayStore: {servers} servers with server_cpus={cpus:g} take all {have:g} CPUs of "
            "the Ray cluster: an actor or task that needs a CPU (a learner) will not start "
            "until the store is closed (server_cpus=0 reserves none)",
            UserWarning,
            stacklevel=3,
        )


def _wait_placed(pg: Any, servers: int, cpus: float, timeout_s: float) -> None:
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise RuntimeError(
            f"RayStore: no room for {servers} servers with server_cpus={cpus:g} within "
            f"{timeout_s:g} s (other actors hold the CPUs?)"
        ) from None


def _attach(meta: dict[str, Any], policy: StepSize) -> RayStore:
    self = RayStore.__new__(RayStore)
    self._owner = False
    self._closed = False
    self._meta = meta
    self.name = meta["name"]
    self._policy = policy
    self._init_ray = False
    return self
