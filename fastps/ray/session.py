"""The Ray session and the calls to a RayStore's servers: connecting once per process, the
servers' actor names, and one call per server with retries while a server restarts.

Security: ``init()`` starts a local Ray instance that listens on 127.0.0.1 only, without the
dashboard and without usage statistics; a cluster is reached with ``address=`` (docs/ray.md).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import ray

RETRYABLE = (ray.exceptions.RayActorError,)
"""Errors of a call whose server died, is restarting, or is unreachable for now."""


# -- connecting ----------------------------------------------------------------------------------


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


# -- the servers of a store, by name -------------------------------------------------------------

_ACTORS: dict[str, list[Any]] = {}  # RayStore name -> server actor handles, per process
_CLOSED: set[str] = set()  # RayStores closed by this process
_ACTORS_LOCK = threading.Lock()


def actor_name(store: str, j: int) -> str:
    """The Ray actor name of server ``j`` of the RayStore named ``store``."""
    return f"fastps/{store}/server{j}"


class StoreClosed(RuntimeError):
    """A call to a RayStore that was closed (a RuntimeError: callers need not know this class)."""


def closed_error(api: str, store: str, why: str = "") -> StoreClosed:
    """The one message of a call to a closed RayStore (``why``: how this process knows)."""
    return StoreClosed(f"{api}: RayStore {store!r} is closed{why}")


def actors(store: str, servers: int, api: str) -> list[Any]:
    """The server actor handles of the RayStore named ``store`` (looked up once per process).
    RuntimeError at once when the store is closed (here, or its servers are gone)."""
    with _ACTORS_LOCK:
        if store in _CLOSED:
            raise closed_error(api, store)
        found = _ACTORS.get(store)
        if found is None:
            try:
                found = [ray.get_actor(actor_name(store, j)) for j in range(servers)]
            except ValueError:  # Ray's "Failed to look up actor": no such server any more
                raise closed_error(api, store, " (its servers are gone)") from None
            _ACTORS[store] = found
        return found


def register(store: str, handles: list[Any]) -> None:
    """Remember the server actors this process started for the RayStore named ``store`` (a
    name that an earlier, closed store had is open again)."""
    with _ACTORS_LOCK:
        _ACTORS[store] = handles
        _CLOSED.discard(store)


def forget(store: str) -> None:
    """The RayStore named ``store`` was closed by this process: its calls here fail at once."""
    with _ACTORS_LOCK:
        _ACTORS.pop(store, None)
        _CLOSED.add(store)


def _gone(store: str, j: int) -> bool:
    """Whether server ``j`` is gone for good: a restarting actor keeps its name; a dead one
    (closed, killed with no_restart, or out of restarts) has released it."""
    try:
        ray.get_actor(actor_name(store, j))
    except ValueError:
        return True
    return False


def gather(submit: Callable[[int], Any], n: int, timeout_s: float, store: str,
           api: str) -> list[Any]:  # fmt: skip
    """Submit one call per server, wait for all; resubmit a call whose server died until it
    answers (a restarted server) or ``timeout_s`` passes (then RuntimeError). A server that is
    gone for good (the store was closed) fails the call at once, with RuntimeError."""
    refs = {j: submit(j) for j in range(n)}
    try:
        return list(_get([refs[j] for j in range(n)]))  # the common case: one wait for all
    except RETRYABLE:
        pass
    out: list[Any] = [None] * n
    deadline = time.monotonic() + timeout_s
    while refs:
        for j in list(refs):
            try:
                out[j] = _get(refs[j])
                del refs[j]
            except RETRYABLE as e:
                if _gone(store, j):
                    raise closed_error(api, store, f" (its server {j} is gone for good)") from e
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{api}: RayStore {store!r}: server {j} did not answer within "
                        f"retry_timeout_s={timeout_s:g} ({type(e).__name__})"
                    ) from e
                time.sleep(0.05)
                refs[j] = submit(j)
    return out


def _get(refs: Any) -> Any:
    """``ray.get``, with a server's own ValueError, TypeError or RuntimeError raised as it is
    (its message, without Ray's remote traceback around it)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, (ValueError, TypeError, RuntimeError)):
            raise e.cause from None
        raise
