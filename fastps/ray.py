"""Many hosts: the store's ranges held by Ray actors, reached by learners anywhere in a cluster.

``RayStore`` cuts the flat parameter vector into ``servers`` contiguous ranges (whole 64-byte
blocks, as equal as blocks allow) and starts one ``ShardServer`` actor per range, placed by a
Ray placement group (spread across nodes by default). Each server owns a native ``fastps.Store``
for its range, with the mode, step size and optimizer of the whole store, so staleness and step
sizes are computed per server exactly as a local store computes them. A learner handle pulls
every range in parallel and pushes each range of a gradient (a zero-copy slice) to its server
in parallel. Ray does placement, transport, failure detection and restarts; nothing here opens
a socket.

Fault tolerance (docs/ray.md):

1. Servers are restartable actors. With ``checkpoint_dir`` each server saves its range there
   (``Store.save``: atomic, checksummed) every ``checkpoint_every_s`` seconds, while pushes wait
   for the few milliseconds a save takes, so a checkpoint is one instant of the server.
2. Every push carries the learner's id and sequence number; the checkpoint records, per learner,
   the last sequence number applied. A restarted server loads its latest checkpoint.
3. Learners retry a call whose server died (Ray resubmits it; the handle retries too, for
   ``retry_timeout_s``). A retried push already in the checkpoint is not applied twice.
4. Each call also carries how many pushes the server acknowledged to this learner. A restarted
   server that finds a learner's acknowledged count above its own record has lost those pushes:
   it adds the difference to ``stats()["lost_updates"]`` once. Lost updates are counted, not
   hidden or replayed.

Security: ``init()`` starts a local Ray instance that listens on 127.0.0.1 only, without the
dashboard and without usage statistics; a cluster is reached with ``address=`` (docs/ray.md).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from fastps import _core
from fastps import step_size as _steps
from fastps.store import Store, _as_array, _torch_tensor, _type_name

try:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
except ImportError as _e:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "fastps.ray needs Ray, an optional dependency: pip install 'fastps[ray]' "
        "(or pip install 'ray>=2.60,<3')"
    ) from _e

_ALIGN = 16  # elements per 64-byte block: server ranges start on block boundaries
_RETRYABLE = (ray.exceptions.RayActorError,)  # died, restarting, or unreachable for now


# -- the Ray session ------------------------------------------------------------------------------


def init(address: str | None = None, *, num_cpus: int | None = None, **kwargs: Any) -> bool:
    """Connect to Ray once per process; returns True when this call started or joined it.

    ``address=None`` starts a local instance that listens on 127.0.0.1 only (no dashboard,
    no usage statistics). ``address="auto"`` joins the cluster started on this machine with
    ``ray start``; ``"ray://host:10001"`` goes through a Ray Client server; a ``host:port``
    joins the cluster whose head listens there. Does nothing when Ray is already initialised.
    Other keyword arguments pass to ``ray.init``.
    """
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with _neutral_cwd():
        _connect(address, num_cpus, kwargs)
    return True


def _connect(address: str | None, num_cpus: int | None, kwargs: dict[str, Any]) -> None:
    if address is None:
        # Ray advertises the host's first routable address unless its cluster mode is off (the
        # switch it has for machines that are never part of a cluster); then every process of
        # the instance (GCS, raylet, workers, object manager) binds to 127.0.0.1. The variable
        # is inherited by the processes Ray starts; the constant covers an already imported ray.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 log_to_driver=kwargs.pop("log_to_driver", False), **kwargs)  # fmt: skip
    else:
        ray.init(address=address, **kwargs)


@contextlib.contextmanager
def _neutral_cwd() -> Iterator[None]:
    """Ray puts the driver's working directory first on every worker's sys.path. From a fastps
    source checkout (where fastps/ lacks the compiled extension) that would shadow the
    installed package in the workers, so ray.init runs from the package's parent instead."""
    import fastps

    cwd = os.getcwd()
    here = os.path.dirname(os.path.dirname(os.path.abspath(fastps.__file__)))
    shadowed = os.path.isdir(os.path.join(cwd, "fastps")) and os.path.realpath(cwd) != (
        os.path.realpath(here))  # fmt: skip
    if shadowed:
        os.chdir(here)
    try:
        yield
    finally:
        if shadowed:
            os.chdir(cwd)


_init_ray = init  # RayStore's own ``init`` argument hides the function


def _reconstructed() -> bool:
    """Whether the calling actor is a restart (Ray's own check uses a deprecated accessor)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def server_ranges(size: int, servers: int) -> list[tuple[int, int]]:
    """[begin, end) of each server's range: whole 64-byte blocks, as equal as blocks allow
    (the rule a Store uses for its shards)."""
    blocks = -(-size // _ALIGN)
    if not 1 <= servers <= blocks:
        raise ValueError(
            f"RayStore: servers must be in [1, {blocks}] for size {size} (one 64-byte block "
            f"at least per server), got {servers}"
        )
    return [
        (blocks * j // servers * _ALIGN, min(blocks * (j + 1) // servers * _ALIGN, size))
        for j in range(servers)
    ]


# -- the server actor ---------------------------------------------------------------------------


class ShardServer:
    """One Ray actor: a native Store for elements [begin, end) of the RayStore's vector.

    Calls from many learners run in parallel threads (the native store releases the GIL), so
    the store's consistency mode governs concurrent pushes exactly as on one host. A gate makes
    a checkpoint wait for the pushes in flight and holds new ones back while it saves.
    """

    def __init__(self, index: int, begin: int, end: int, init: list[Any],
                 store_kwargs: dict[str, Any], checkpoint_path: str | None,
                 checkpoint_every_s: float | None, load_path: str | None = None) -> None:  # fmt: skip
        self.index, self.begin, self.end = index, begin, end
        self.token = uuid.uuid4().hex[:12]  # this incarnation of the server
        self._kwargs = store_kwargs
        self._ckpt = checkpoint_path
        self._cv = threading.Condition()
        self._saving = False
        self._inflight = 0
        self._handles: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._fresh: set[str] = set()  # learners whose read versions belong to this incarnation
        self._last: dict[str, int] = {}  # learner id -> last push sequence number applied
        self._lost = 0
        self._checkpoints = 0
        self._checkpoint_clock: int | None = None
        self.reconstructed = _reconstructed()
        self.restored_clock: int | None = None
        source = load_path
        if self.reconstructed and checkpoint_path and os.path.exists(checkpoint_path):
            source = checkpoint_path
        if source is not None:
            self._store = self._load(source)
            self.restored_clock = self._store.stats()["clock"]
        else:
            ref = init[0]  # [ObjectRef] or [None]
            self._store = Store(end - begin, init=None if ref is None else ray.get(ref),
                                **store_kwargs)  # fmt: skip
        self._applied = self._store.stats()["pushes"]
        if checkpoint_path and not self.reconstructed:
            self.checkpoint()  # replaces any older file: a restart never loads another run
        self._stop = threading.Event()
        if checkpoint_path and checkpoint_every_s:
            threading.Thread(target=self._every, args=(checkpoint_every_s,), daemon=True,
                             name=f"fastps-checkpoint-{index}").start()  # fmt: skip

    def _load(self, path: str) -> Store:
        store = Store.load(path, max_learners=self._kwargs.get("max_learners"),
                           step_size=_hook_fn(self._kwargs.get("step_size")))  # fmt: skip
        meta = store.metadata or {}
        if meta.get("range") != [self.begin, self.end]:
            store.close()
            raise ValueError(
                f"ShardServer: {path} holds range {meta.get('range')}, expected "
                f"{[self.begin, self.end]}"
            )
        self._last = {str(k): int(v) for k, v in meta.get("last", {}).items()}
        self._lost = int(meta.get("lost", 0))
        return store

    def _every(self, period: float) -> None:
        while not self._stop.wait(period):
            try:
                self.checkpoint()
            except Exception:  # noqa: BLE001 -- a failed save keeps the previous file; retry
                pass

    # -- the gate: pushes and pulls run together; a checkpoint runs alone ----------------------

    def _enter(self) -> None:
        with self._cv:
            while self._saving:
                self._cv.wait()
            self._inflight += 1

    def _leave(self) -> None:
        with self._cv:
            self._inflight -= 1
            if self._inflight == 0:
                self._cv.notify_all()

    def _account(self, lid: str, acked: int) -> None:
        """A learner acknowledged more pushes than this server has applied: they were lost
        with a previous incarnation (applied after its last checkpoint). Count them once."""
        last = self._last.get(lid, 0)
        if acked > last:
            self._lost += acked - last
            self._last[lid] = acked

    def _lock(self, lid: str) -> threading.Lock:
        """One learner's calls run one at a time here: a call resubmitted while the first is
        still running (Ray's retry and the handle's) must not pass the duplicate check twice."""
        with self._cv:
            lock = self._locks.get(lid)
            if lock is None:
                lock = self._locks[lid] = threading.Lock()
            return lock

    def _handle(self, lid: str) -> Any:
        h = self._handles.get(lid)
        if h is None:
            h = self._handles[lid] = self._store.learner()
        return h

    # -- calls ------------------------------------------------------------------------------

    def ready(self) -> tuple[str, int]:
        """(incarnation token, process id): returns once the server is up."""
        return self.token, os.getpid()

    def join(self, lid: str) -> int:
        """The last push sequence number applied for learner ``lid`` (0 for a new one)."""
        return self._last.get(lid, 0)

    def pull(self, lid: str, acked: int) -> tuple[str, np.ndarray, list[int]]:
        """(token, this range's parameters, the version of each native shard read)."""
        with self._lock(lid):
            return self._pull(lid, acked)

    def _pull(self, lid: str, acked: int) -> tuple[str, np.ndarray, list[int]]:
        out = np.empty(self.end - self.begin, np.float32)
        self._enter()
        try:
            self._account(lid, acked)
            h = self._handle(lid)
            h.pull(out)
            self._fresh.add(lid)
            versions = [h.read_version(s) for s in range(self._store.shards)]
        finally:
            self._leave()
        return self.token, out, versions

    def push(self, lid: str, seq: int, read_token: str | None, grad: np.ndarray | None,
             dtype: str) -> tuple[str, int, int, list[int]]:  # fmt: skip
        """Apply push number ``seq`` of learner ``lid``; (token, shard updates not applied,
        this server's applied-push count, the versions it created per shard (0: none)).
        ``grad=None``: a push the learner skipped (NaN)."""
        with self._lock(lid):
            return self._push(lid, seq, read_token, grad, dtype)

    def _push(self, lid: str, seq: int, read_token: str | None, grad: np.ndarray | None,
              dtype: str) -> tuple[str, int, int, list[int]]:  # fmt: skip
        self._enter()
        try:
            self._account(lid, seq - 1)
            if seq <= self._last.get(lid, 0):  # a retry of a push the checkpoint already holds
                return self.token, 0, self._applied, [0] * self._store.shards
            h = self._handle(lid)
            if read_token is not None and read_token != self.token and lid not in self._fresh:
                # The learner read from an incarnation that is gone: its versions mean nothing
                # here. Read this one's (the retried gradient counts staleness 0).
                h.pull(np.empty(self.end - self.begin, np.float32))
                self._fresh.add(lid)
            if grad is None:
                dropped = self._store.shards
            elif dtype == "bfloat16":
                dropped = h._h.push(grad, _core.DType.bfloat16)
            else:
                dropped = h._h.push(grad)
            self._last[lid] = seq
            self._applied += 1
            return self.token, dropped, self._applied, list(h._h.last_push_versions)
        finally:
            self._leave()

    def push_pull(self, lid: str, seq: int, read_token: str | None, grad: np.ndarray | None,
                  dtype: str) -> tuple[str, int, int, list[int], np.ndarray, list[int]]:  # fmt: skip
        """push, then pull, in one call: (token, not applied, applied count, versions created,
        params, versions read)."""
        with self._lock(lid):
            token, dropped, applied, pushed = self._push(lid, seq, read_token, grad, dtype)
            _, out, versions = self._pull(lid, seq)
        return token, dropped, applied, pushed, out, versions

    def close_learner(self, lid: str) -> None:
        with self._lock(lid):
            h = self._handles.pop(lid, None)
            self._fresh.discard(lid)
            if h is not None:
                h.close()

    def read(self) -> np.ndarray:
        return self._store.read()

    def checkpoint(self, path: str | None = None, metadata: Any = None) -> int:
        """Save this server's range to ``path`` (default: its checkpoint file) at one instant;
        returns the applied-push count saved."""
        path = path or self._ckpt
        if path is None:
            raise ValueError("checkpoint: this RayStore has no checkpoint_dir (pass a path)")
        with self._cv:
            while self._saving:
                self._cv.wait()
            self._saving = True
            while self._inflight:
                self._cv.wait()
        try:
            meta = {"range": [self.begin, self.end], "server": self.index,
                    "last": dict(self._last), "lost": self._lost, "user": metadata}  # fmt: skip
            self._store.save(path, metadata=meta)
            applied = self._applied
            if path == self._ckpt:
                self._checkpoints += 1
                self._checkpoint_clock = applied
        finally:
            with self._cv:
                self._saving = False
                self._cv.notify_all()
        return applied

    def stats(self) -> dict[str, Any]:
        s = self._store.stats()
        s.update(server=self.index, range=[self.begin, self.end], token=self.token,
                 pid=os.getpid(), applied=self._applied, lost_updates=self._lost,
                 reconstructed=self.reconstructed, restored_clock=self.restored_clock,
                 checkpoints=self._checkpoints, checkpoint_pushes=self._checkpoint_clock)  # fmt: skip
        return s

    def shutdown(self) -> None:
        self._stop.set()
        for h in self._handles.values():
            h.close()
        self._handles.clear()
        self._store.close()


# -- the client side ----------------------------------------------------------------------------

_ACTORS: dict[str, list[Any]] = {}  # RayStore name -> server actor handles, per process
_ACTORS_LOCK = threading.Lock()


def _actors(name: str, servers: int) -> list[Any]:
    with _ACTORS_LOCK:
        found = _ACTORS.get(name)
        if found is None:
            found = _ACTORS[name] = [ray.get_actor(_actor_name(name, j)) for j in range(servers)]
        return found


def _actor_name(store: str, j: int) -> str:
    return f"fastps/{store}/server{j}"


class RayLearnerHandle:
    """One learner's connection to a RayStore: ``pull(out)``, ``push(grad)``, like
    ``fastps.LearnerHandle``. Passed to a Ray task or actor it pickles by name (the store's
    name, this learner's id and its sequence numbers), never by value; use each handle in one
    place at a time, one handle per learner.
    """

    def __init__(self, meta: dict[str, Any], lid: str, acked: Sequence[int] | None = None,
                 tokens: Sequence[str | None] | None = None) -> None:  # fmt: skip
        self._meta = meta
        self._lid = lid
        n = len(meta["ranges"])
        self._acked = list(acked) if acked is not None else [0] * n  # pushes acked per server
        self._tokens: list[str | None] = list(tokens) if tokens is not None else [None] * n
        self._last_acks: list[tuple[str, int]] = []
        self._versions: list[int] = []
        self._pushed: list[int] = []  # versions the last push created, per native shard
        self._closed = False

    @property
    def id(self) -> str:
        """This learner's id on every server (``store.learner(name=...)`` fixes it)."""
        return self._lid

    @property
    def pushes(self) -> int:
        """Pushes acknowledged by every server (retried ones counted once)."""
        return min(self._acked)

    def _servers(self) -> list[Any]:
        if self._closed:
            raise RuntimeError("RayLearnerHandle: the handle is closed")
        return _actors(self._meta["name"], len(self._meta["ranges"]))

    def _gather(self, submit: Callable[[int], Any]) -> list[Any]:
        return _gather(submit, len(self._meta["ranges"]), self._meta["retry_timeout_s"])

    def pull(self, out: Any) -> Any:
        """Fetch every range in parallel into ``out`` (float32, ``store.size`` elements: numpy,
        or torch on the CPU or a GPU); returns ``out``. Records each range's versions."""
        servers = self._servers()
        target = _pull_target(out, self._meta["size"])
        replies = self._gather(lambda j: servers[j].pull.remote(self._lid, self._acked[j]))
        self._took(target, replies)
        return out

    def _took(self, target: tuple[np.ndarray | None, Any], replies: list[Any]) -> None:
        """Write pulled ranges (the last three fields of each reply) and note what was read."""
        dest, tensor = target
        self._versions = [v for r in replies for v in r[-1]]
        for j, ((b, e), r) in enumerate(zip(self._meta["ranges"], replies)):
            token, arr = r[0], r[-2]
            self._tokens[j] = token
            if dest is not None:
                dest[b:e] = arr
            else:
                import torch

                src = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
                tensor[b:e].copy_(src)

    def push(self, grad: Any) -> int:
        """Send each range of ``grad`` to its server in parallel; every server applies
        ``w -= eta(tau) * (g + weight_decay * w)`` to its range as a local store would.

        ``grad``: ``store.size`` contiguous elements, float32, float16 or bfloat16 (numpy, or
        torch on the CPU or a GPU). It is checked whole before anything is sent, so a refused
        gradient changes no server. Returns the shard updates not applied (see
        ``LearnerHandle.push``).
        """
        return self._send("push", grad, None)

    def push_pull(self, grad: Any, out: Any) -> int:
        """``push(grad)`` then ``pull(out)`` in one call to each server instead of two (the
        pull sees this push applied). Returns the shard updates not applied."""
        return self._send("push_pull", grad, _pull_target(out, self._meta["size"]))

    def _send(self, method: str, grad: Any, target: tuple[np.ndarray | None, Any] | None) -> int:
        servers = self._servers()
        arr, dtype, finite = _push_source(grad, self._meta["size"], self._meta["nan_guard"])
        payload: np.ndarray | None = arr
        if not finite:
            if self._meta["nan_guard"] == "raise":
                raise ValueError("push: grad holds NaN or Inf (nan_guard='raise'); nothing applied")
            payload = None  # "skip": every server counts the push, none applies it
        ranges = self._meta["ranges"]
        seqs = [a + 1 for a in self._acked]
        replies = self._gather(
            lambda j: getattr(servers[j], method).remote(
                self._lid, seqs[j], self._tokens[j],
                None if payload is None else payload[ranges[j][0] : ranges[j][1]], dtype,
            )
        )  # fmt: skip
        self._acked = seqs
        self._last_acks = [(r[0], r[2]) for r in replies]
        self._pushed = [v for r in replies for v in r[3]]
        if target is not None:
            self._took(target, replies)
        return sum(r[1] for r in replies)

    def read_version(self, shard: int) -> int:
        """Version of native shard ``shard`` (numbered across servers, in order) read by the
        last pull (0 before the first pull)."""
        if not self._versions:
            return 0
        if not 0 <= shard < len(self._versions):
            raise ValueError(f"read_version: shard {shard} out of range [0, {len(self._versions)})")
        return self._versions[shard]

    def last_push_versions(self) -> list[int]:
        """Per native shard (numbered across servers), the version the last push created (0
        where it was dropped or skipped), as ``LearnerHandle.last_push_versions``."""
        return list(self._pushed)

    def last_acks(self) -> list[tuple[str, int]]:
        """Per server, (incarnation token, that server's applied-push count) of the reply to
        the last push: which incarnation of each server acknowledged it, for audits."""
        return list(self._last_acks)

    def close(self) -> None:
        """Give back this learner's place on every server. Later calls raise RuntimeError."""
        if self._closed:
            return
        servers = self._servers()
        self._gather(lambda j: servers[j].close_learner.remote(self._lid))
        self._closed = True

    def __enter__(self) -> RayLearnerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (RayLearnerHandle, (self._meta, self._lid, self._acked, self._tokens))

    def __repr__(self) -> str:
        return f"fastps.ray.RayLearnerHandle(store={self._meta['name']!r}, id={self._lid!r})"


def _gather(submit: Callable[[int], Any], n: int, timeout_s: float) -> list[Any]:
    """Submit one call per server, wait for all; resubmit a call whose server died until it
    answers (a restarted server) or ``timeout_s`` passes."""
    refs = {j: submit(j) for j in range(n)}
    try:
        return list(ray.get([refs[j] for j in range(n)]))  # the common case: one wait for all
    except _RETRYABLE:
        pass
    out: list[Any] = [None] * n
    deadline = time.monotonic() + timeout_s
    while refs:
        for j in list(refs):
            try:
                out[j] = ray.get(refs[j])
                del refs[j]
            except _RETRYABLE as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"RayStore: server {j} did not answer within retry_timeout_s="
                        f"{timeout_s:g} ({type(e).__name__})"
                    ) from e
                time.sleep(0.05)
                refs[j] = submit(j)
    return out


def _pull_target(out: Any, size: int) -> tuple[np.ndarray | None, Any]:
    """(numpy view to write, None) or (None, torch tensor on a GPU)."""
    if _torch_tensor(out):
        import torch

        if out.dtype != torch.float32:
            raise TypeError(f"pull: out has dtype {out.dtype}, expected float32")
        if not out.is_contiguous():
            raise ValueError("pull: out is not contiguous (pass out.contiguous())")
        if out.numel() != size:
            raise ValueError(f"pull: out has {out.numel()} elements, expected {size}")
        if out.device.type == "cpu":
            return out.detach().numpy().reshape(-1), None
        return None, out.detach().view(-1)
    arr = _as_array("pull", "out", out)
    if arr.dtype != np.float32:
        raise TypeError(f"pull: out has dtype {arr.dtype}, expected float32")
    if arr.size != size:
        raise ValueError(f"pull: out has {arr.size} elements, expected {size}")
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError("pull: out must be C-contiguous and writeable")
    return arr.reshape(-1), None


def _push_source(grad: Any, size: int, nan_guard: str) -> tuple[np.ndarray, str, bool]:
    """(flat numpy view, dtype name, all finite) of a gradient, checked like Store.push."""
    dtype = "native"
    if _torch_tensor(grad):
        import torch

        t = grad.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if not t.is_contiguous():
            raise ValueError("push: grad is not contiguous (pass grad.contiguous())")
        if t.dtype == torch.bfloat16:
            arr = t.view(torch.int16).numpy()
            dtype = "bfloat16"
            check = t.float() if nan_guard != "off" else None
        elif t.dtype in (torch.float32, torch.float16):
            arr = t.numpy()
            check = None
        else:
            raise TypeError(f"push: grad has dtype {t.dtype}, expected float32, float16 or bfloat16")
        finite = True
        if check is not None:
            finite = bool(torch.isfinite(check).all())
            check = None
    else:
        arr = _as_array("push", "grad", grad)
        if arr.dtype not in (np.float32, np.float16):
            raise TypeError(f"push: grad has dtype {arr.dtype}, expected float32 or float16")
        finite = True
    if not arr.flags.c_contiguous:
        raise ValueError("push: grad is not contiguous")
    if arr.size != size:
        raise ValueError(f"push: grad has {arr.size} elements, expected {size}")
    arr = arr.reshape(-1)
    if dtype != "bfloat16" and nan_guard != "off":
        finite = bool(np.isfinite(arr).all())
    return arr, dtype, finite


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
        server_cpus: CPUs each server reserves (its placement-group bundle); 0 reserves the
            memory of its range instead and takes no CPU slot (servers mostly wait on the
            network; a small cluster then keeps its CPUs for learners).
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
        server_cpus: float = 1.0,
        placement: str = "SPREAD",
        max_restarts: int = -1,
        retry_timeout_s: float = 120.0,
        **store_kwargs: Any,
    ) -> None:
        self._owner = False
        init_arr = Store._init_array(init)
        if size is None:
            if init_arr is None:
                raise ValueError("RayStore: give size or init (got neither)")
            size = init_arr.size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"RayStore: size must be an integer >= 1 (got {size!r})")
        size = int(size)
        if init_arr is not None and init_arr.size != size:
            raise ValueError(f"RayStore: init has {init_arr.size} elements, expected size={size}")
        if isinstance(servers, bool) or not isinstance(servers, int):
            raise TypeError(f"RayStore: servers must be an integer (got {_type_name(servers)})")
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
        kwargs = dict(store_kwargs, mode=mode, lr=lr, step_size=step_size)
        # Every argument is checked here, on a one-block store, before any actor exists.
        probe = Store(_ALIGN, **kwargs)
        self._policy = probe.step_size
        lr_bound, nan_guard = probe.config["lr"], probe.config["nan_guard"]
        probe.close()
        for b, e in ranges:
            blocks = -(-(e - b) // _ALIGN)
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
        self._init_ray = _init_ray(address)
        self.name = name or f"rs-{uuid.uuid4().hex[:10]}"
        self._meta = {"name": self.name, "size": size, "ranges": ranges, "mode": mode,
                      "nan_guard": nan_guard, "lr": lr_bound, "checkpoint_dir": ckdir,
                      "retry_timeout_s": float(retry_timeout_s)}  # fmt: skip
        self._kwargs = kwargs
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
        # Each range goes to the object store once and reaches its server as a nested ref, which
        # this object keeps alive: a restarted server is built from the same arguments.
        self._init_refs = [None if init_arr is None else ray.put(init_arr[b:e])
                           for b, e in self._meta["ranges"]]  # fmt: skip
        for j, (b, e) in enumerate(self._meta["ranges"]):
            actors.append(cls.options(
                name=_actor_name(self.name, j), num_cpus=cpus, max_restarts=max_restarts,
                max_task_retries=-1, max_concurrency=int(kwargs.get("max_learners", 16)) + 4,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._pg, placement_group_bundle_index=j),
            ).remote(
                j, b, e, [self._init_refs[j]], kwargs,
                os.path.join(ckdir, f"server-{j}.fpsck") if ckdir else None, every_s,
                os.path.join(load_dir, f"server-{j}.fpsck") if load_dir else None,
            ))  # fmt: skip
        with _ACTORS_LOCK:
            _ACTORS[self.name] = actors
        self._actors = actors
        ray.get([a.ready.remote() for a in actors])

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs: Any) -> RayStore:
        """A new RayStore from ``save(path)``'s folder (same size and server count).
        ``kwargs``: RayStore's own arguments (checkpoint_dir, address, server_cpus, ...);
        a Python-callable step size must be given again as ``step_size``."""
        import json

        path = os.fspath(path)
        try:
            with open(os.path.join(path, "manifest.json")) as f:
                man = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"load: {path} is not a RayStore checkpoint ({e})") from None
        from fastps import checkpoint as _ckpt

        header, _, _ = _ckpt.read(os.path.join(path, "server-0.fpsck"))
        c = header["config"]
        store_kw = {k: c[k] for k in ("momentum", "nesterov", "weight_decay", "persistence",
                                      "nan_guard", "max_learners", "staleness_bins")}  # fmt: skip
        step = c["step"]
        sc = _core.StepConfig()
        sc.kind = getattr(_core.StepKind, step["kind"])
        for k in _ckpt._STEP_FIELDS:
            setattr(sc, k, step[k])
        policy = kwargs.pop("step_size", None) if step["kind"] == "hook" else _steps.from_native(
            sc, c["lr"])  # fmt: skip
        for k in ("servers", "size", "init", "shards_per_server"):
            if k in kwargs:
                raise ValueError(f"load: {k} comes from the checkpoint")
        self = cls.__new__(cls)
        self._owner = False
        ckdir = kwargs.pop("checkpoint_dir", None)
        every = kwargs.pop("checkpoint_every_s", None)
        cpus = kwargs.pop("server_cpus", 1.0)
        max_restarts = kwargs.pop("max_restarts", -1)
        retry = kwargs.pop("retry_timeout_s", 120.0)
        self._init_ray = _init_ray(kwargs.pop("address", None))
        self.name = kwargs.pop("name", None) or f"rs-{uuid.uuid4().hex[:10]}"
        placement_strategy = kwargs.pop("placement", "SPREAD")
        store_kw.update(kwargs)
        kw = dict(store_kw, mode=c["mode"], lr=c["lr"], step_size=policy, shards=c["shards"])
        probe = Store(_ALIGN, **{k: v for k, v in kw.items() if k != "shards"})
        self._policy = probe.step_size
        probe.close()
        ckdir = os.fspath(ckdir) if ckdir is not None else None
        if ckdir is not None:
            os.makedirs(ckdir, exist_ok=True)
        self._meta = {"name": self.name, "size": man["size"], "ranges": [tuple(r) for r in man["ranges"]],
                      "mode": c["mode"], "nan_guard": c["nan_guard"], "lr": c["lr"],
                      "checkpoint_dir": ckdir, "retry_timeout_s": float(retry)}  # fmt: skip
        self._kwargs = kw
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
        if name is None:
            return RayLearnerHandle(self._meta, uuid.uuid4().hex[:12])
        lid = f"named:{name}"
        servers = self._servers()
        acked = _gather(lambda j: servers[j].join.remote(lid), len(servers),
                        self._meta["retry_timeout_s"])  # fmt: skip
        return RayLearnerHandle(self._meta, lid, acked)

    def _servers(self) -> list[Any]:
        return _actors(self.name, len(self._meta["ranges"]))

    def _all(self, method: str, *args: Any) -> list[Any]:
        servers = self._servers()
        return _gather(lambda j: getattr(servers[j], method).remote(*args), len(servers),
                       self._meta["retry_timeout_s"])  # fmt: skip

    def read(self, out: Any = None) -> Any:
        """A copy of the parameters (each range consistent as in the local store)."""
        parts = self._all("read")
        if out is None:
            return np.concatenate(parts)
        dest, tensor = _pull_target(out, self.size)
        for (b, e), arr in zip(self._meta["ranges"], parts):
            if dest is not None:
                dest[b:e] = arr
            else:
                import torch

                tensor[b:e].copy_(torch.from_numpy(arr.copy()))
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
        servers = self._servers()
        _gather(lambda j: servers[j].checkpoint.remote(
            os.path.join(path, f"server-{j}.fpsck"), metadata), len(servers),
            self._meta["retry_timeout_s"])  # fmt: skip
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
    def step_size(self) -> _steps.StepSize:
        """The step-size policy every server applies, bound to the store's lr."""
        return self._policy

    def server_ranges(self) -> list[tuple[int, int]]:
        """[begin, end) of each server's range."""
        return [tuple(r) for r in self._meta["ranges"]]  # type: ignore[misc]

    def server_actors(self) -> list[Any]:
        """The ShardServer actor handles (for ``ray.kill`` in fault drills, or placement)."""
        return list(self._servers())

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the servers (only in the process that created the store). Idempotent."""
        if not self._owner:
            return
        self._owner = False
        for a in getattr(self, "_actors", []):
            try:
                ray.get(a.shutdown.remote(), timeout=10)
            except Exception:  # noqa: BLE001 -- a dead server has nothing left to close
                pass
            ray.kill(a, no_restart=True)
        with _ACTORS_LOCK:
            _ACTORS.pop(getattr(self, "name", ""), None)
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


def _wait_placed(pg: Any, servers: int, cpus: float, timeout_s: float) -> None:
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise RuntimeError(
            f"RayStore: no room for {servers} servers with server_cpus={cpus:g} within "
            f"{timeout_s:g} s (other actors hold the CPUs?)"
        ) from None


def _attach(meta: dict[str, Any], policy: _steps.StepSize) -> RayStore:
    self = RayStore.__new__(RayStore)
    self._owner = False
    self._meta = meta
    self.name = meta["name"]
    self._policy = policy
    self._init_ray = False
    return self


def _hook_fn(step_size: Any) -> Callable[..., float] | None:
    """The Python callable of a hook step size (Store.load wants it again), else None."""
    if isinstance(step_size, _steps.Hook):
        return step_size.fn
    if callable(step_size) and not isinstance(step_size, _steps.StepSize):
        return step_size  # type: ignore[no-any-return]
    return None


__all__ = ["RayLearnerHandle", "RayStore", "ShardServer", "init", "server_ranges"]
