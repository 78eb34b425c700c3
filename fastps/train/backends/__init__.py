"""Where a fit() run's learners live: one class per backend behind one interface
(fastps.train.backends.base.Backend). ``backend_class(name)`` maps fit()'s ``backend``
argument to its class; the Ray backend is imported only when asked for."""

from __future__ import annotations

from fastps.train.backends.base import Backend, Channels
from fastps.train.backends.local import ProcessBackend, ThreadBackend


def backend_class(name: str) -> type[Backend]:
    """The Backend class for ``name`` ("process", "thread" or "ray", fastps.train.options.BACKENDS)."""
    if name == "ray":
        from fastps.train.backends.ray_actors import RayBackend

        return RayBackend
    return {"process": ProcessBackend, "thread": ThreadBackend}[name]


__all__ = ["Backend", "Channels", "ProcessBackend", "ThreadBackend", "backend_class"]
