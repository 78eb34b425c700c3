"""The backend interface: how learners start, how they talk to the coordinator and the parent,
how the store reaches them.

A run (fastps.train.run.execute) knows no backend: it calls these hooks in order, as Ray
Train's run loop calls a Backend's (on_start, on_training_start, on_shutdown) and Lightning's
Trainer its Strategy's:

1. ``on_start()``: before anything (join or start a cluster).
2. ``create_store(layout, init)``: a new store holding ``init``, or the one ``resume_from``
   names; ``adjust(config)`` then sets what the backend decides of the learners' settings.
3. ``share_buffers(flat)``, ``channels(store, config)``: where learners write their buffers,
   and the queues, events and gradient slots of the run (a ``Channels``).
4. ``create_learners(...)`` (set up, not running), ``start_learners()``; while the run
   lasts ``check_alive(finished)`` raises when one died.
5. ``on_error(channels)`` when the run fails; always ``stop_learners()`` then, after the store
   is closed, ``on_shutdown()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastps.layout import ParamLayout
from fastps.train.learner import LearnerConfig, Link
from fastps.train.options import Options


@dataclass
class Channels:
    """A run's channels. Learners report on ``out`` and wait for ``start``; ``stop`` ends
    their quota early (time budget). Coordinated variants: ``links[r]`` is learner r's side,
    and ``slots`` (P rows, one gradient each), ``inbox``, ``replies`` and ``version`` the
    coordinator's."""

    out: Any
    start: Any
    stop: Any
    links: list[Link | None]
    slots: np.ndarray | None = None
    inbox: Any = None
    replies: list[Any] = field(default_factory=list)
    version: Any = None


class Backend:
    """One way to run a fit()'s learners; subclasses answer the hooks (see the module)."""

    name = ""

    def __init__(self, opts: Options) -> None:
        self.opts = opts

    @classmethod
    def check(cls, opts: Options) -> None:
        """ValueError for an option this backend cannot honour (called by fit())."""

    def on_start(self) -> None:
        """Before the run: nothing by default."""

    def create_store(self, layout: ParamLayout, init: np.ndarray) -> Any:
        raise NotImplementedError

    def adjust(self, config: LearnerConfig) -> None:
        """Set the backend's part of the learners' settings (threads, devices, ...)."""

    def config(self, store: Any, config: LearnerConfig) -> dict[str, Any]:
        """The backend's entries of History.config."""
        return {}

    def share_buffers(self, flat: np.ndarray) -> tuple[np.ndarray | None, Any]:
        """(the parent's view, the learners' spec) of the model's floating-point buffers,
        initially ``flat``; (None, None) where learners keep their own."""
        return None, None

    def payload(self, data: Any, ds: Any) -> Any:
        """What learners load their data from: ``data`` as given, or the loaded ``ds``."""
        return ds

    def channels(self, store: Any, config: LearnerConfig) -> Channels:
        raise NotImplementedError

    def create_learners(self, store: Any, model_fn: Callable[[], Any], payload: Any,
                        config: LearnerConfig, channels: Channels) -> None:  # fmt: skip
        raise NotImplementedError

    def start_learners(self) -> None:
        raise NotImplementedError

    def check_alive(self, finished: dict[int, Any]) -> None:
        """RuntimeError when a learner not in ``finished`` died; nothing by default."""

    def on_error(self, channels: Channels | None) -> None:
        """The run failed: release learners that wait; nothing by default."""

    def stop_learners(self) -> None:
        """End the learners (killed, or joined after on_error released them)."""

    def on_shutdown(self) -> None:
        """After the store is closed: free what the backend made."""


__all__ = ["Backend", "Channels"]
