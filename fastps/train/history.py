"""What a fit() run measured (History) and the helpers that fill it from the learners' and
the coordinator's records."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass
class History:
    """What a fit() run measured: evaluation points, per-learner time splits, the config."""

    # t_s, updates, loss, accuracy: t_s and updates when the evaluated parameters were read
    evals: list[dict[str, Any]] = field(default_factory=list)
    learners: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # the store's, at the end
    coordinator: dict[str, Any] = field(default_factory=dict)  # K-variants: dropped, staleness
    # One per store update: the coordinator's (K-variants) or, for async, easgd and downpour,
    # each learner's pushes merged in time order (t_s, learner, loss, staleness).
    updates: list[dict[str, Any]] = field(default_factory=list)
    # Seconds from fit()'s start (the t_s origin) to the moment the learners began, after
    # loading their data: t_s - started_s is training time.
    started_s: float = 0.0

    @property
    def final_accuracy(self) -> float:
        return self.evals[-1]["accuracy"] if self.evals else float("nan")

    def save(self, path: str | os.PathLike[str]) -> None:
        """JSON lines: the config, then one line per evaluation and per learner, then stats."""
        with open(path, "w") as f:
            f.write(json.dumps({"config": self.config, "started_s": self.started_s}) + "\n")
            for e in self.evals:
                f.write(json.dumps({"eval": e}) + "\n")
            for ln in self.learners:
                f.write(json.dumps({"learner": ln}) + "\n")
            for u in self.updates:
                f.write(json.dumps({"update": u}) + "\n")
            if self.coordinator:
                f.write(json.dumps({"coordinator": self.coordinator}) + "\n")
            f.write(json.dumps({"stats": self.stats}) + "\n")


def mean_staleness(hist: list[int]) -> float:
    """Mean tau of a staleness histogram (the overflow bin counted at its lower edge)."""
    total = sum(hist)
    return sum(t * c for t, c in enumerate(hist)) / total if total else 0.0


def merge_pushes(learners: list[dict[str, Any]], t0: float) -> list[dict[str, Any]]:
    """The uncoordinated learners' pushes as one time-ordered update log (and out of the
    per-learner records, where they would be repeated). Learners stamp pushes with the wall
    clock (comparable across hosts, unlike perf_counter); t0 is fit's start on that clock."""
    rows = [(t, ln["id"], loss, tau) for ln in learners for t, loss, tau in ln.pop("pushes", [])]
    rows.sort()
    return [{"update": i + 1, "t_s": t - t0, "k": 1, "learners": [r], "loss": loss,
             "staleness": tau} for i, (t, r, loss, tau) in enumerate(rows)]  # fmt: skip


__all__ = ["History", "mean_staleness", "merge_pushes"]
