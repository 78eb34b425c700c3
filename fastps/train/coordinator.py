"""The coordinator: a thread of the parent that turns the learners' gradients (or models) into
store updates for every coordinated variant (DESIGN.md, "Coordination"). What it does differs
by the variant's row of the table (fastps.train.variants): whether it drops late gradients,
what it replies before a batch is full, whether it adapts tau or K."""

from __future__ import annotations

import math
import queue as queue_mod
import threading
import time
from typing import Any

import numpy as np

from fastps.train.variants import Variant


class Coordinator:
    """Turns the learners' gradients into store updates for the K-variants (a parent thread).

    Each message is (rank, version the gradient was computed on, loss); the gradient itself is
    in the learner's slot, which the learner does not touch until it has a reply.
    - sync, k-sync: a round takes the first K gradients computed on the current model; those K
      learners wait for the update; a gradient from an older model arrives late and is dropped.
    - k-batch-sync: K gradients from any learners on the current model; a contributor keeps
      computing on the same model until the update; older gradients are dropped.
    - k-async: K gradients from K distinct learners, whatever their model; those K wait.
    - k-batch-async: K gradients from any learners; nobody waits, everyone pulls what is current.
    """

    def __init__(self, variant: Variant, k: int, learners: int, store: Any, slots: np.ndarray,
                 inbox: Any, replies: list[Any], target: float, version: Any, *,
                 tau0: int = 1, interval_s: float = 1.0, deadline: float = math.inf,
                 target_batches: float = math.inf) -> None:  # fmt: skip
        self.variant, self.k, self.P = variant, k, learners  # variant: its row of the table
        self.handle = store.learner()
        self.scratch = np.empty(store.size, np.float32)
        self.grad_sum = np.zeros(store.size, np.float32)
        self.slots, self.inbox, self.replies = slots, inbox, replies
        self.target = target  # absolute update count (inf: no cap)
        self.target_batches = target_batches  # mini-batches in updates of this run (inf: none)
        self.batches = 0
        self.updates = store.stats()["clock"]  # the coordinator is the only writer
        self.version = version
        self.version.value = self.updates
        # (rank, version, loss, staleness) of the gradients summed in grad_sum
        self.batch: list[tuple[int, int, float, int]] = []
        self.waiting: list[int] = []
        self.dropped = 0
        self.after_end = 0
        self.tau_sum = self.tau_n = 0  # staleness of every gradient taken (read by evaluate)
        self.log: list[dict[str, Any]] = []
        self.stopped: set[int] = set()
        self.error: BaseException | None = None
        self.t0 = time.perf_counter()
        self.quit = threading.Event()
        self.deadline = deadline  # perf_counter time after which no update is made
        # AdaComm / AdaSync: F_0, the losses of the current round or interval, tau and K now.
        self.tau0, self.tau = tau0, tau0
        self.k0 = k
        self.f0: float | None = None
        self.round_losses: list[float] = []
        self.interval_s = interval_s
        self.next_adapt = self.t0 + interval_s  # re-armed when the learners start
        self.adaptations: list[tuple[float, int]] = []  # adasync: (t_s, K after it)

    def done(self) -> bool:
        return (self.updates >= self.target or self.batches >= self.target_batches
                or time.perf_counter() >= self.deadline)  # fmt: skip

    def staleness_mean(self) -> float:
        """Mean staleness of the gradients taken so far (the store's histogram counts each
        update's oldest gradient: ``tau_applied`` in the log)."""
        n = self.tau_n
        return self.tau_sum / n if n else 0.0

    def reply(self, rank: int, what: str) -> None:
        if self.done():
            what = "stop"
        if what == "stop":
            self.stopped.add(rank)
        self.replies[rank].put(
            (what, self.tau) if self.variant.adapts == "tau" and what != "stop" else what
        )

    def adapt(self) -> None:
        """AdaComm: tau = ceil(sqrt(F_l / F_0) * tau_0) in [1, tau_0] after every round.
        AdaSync: K = min(P, ceil(K_0 * sqrt(F_0 / F_l))) every interval_s seconds."""
        if not self.round_losses:
            return
        f = float(np.mean(self.round_losses))
        self.round_losses = []
        if self.f0 is None:
            self.f0 = f
            return
        ratio = f / self.f0 if self.f0 > 0 else 1.0
        if self.variant.adapts == "tau":
            self.tau = max(1, min(self.tau0, math.ceil(math.sqrt(ratio) * self.tau0)))
        else:
            self.k = max(
                1, min(self.P, math.ceil(self.k0 * math.sqrt(1 / ratio if ratio > 0 else 1)))
            )

    def apply(self) -> None:
        # The coordinator is the store's only writer and every update bumps every shard once,
        # so a gradient computed tau updates ago was read tau versions before this pull. The
        # update counts the oldest gradient's staleness (0 in the variants that drop late
        # gradients): the store's step-size policy and histogram see it (LearnerHandle.backdate).
        tau = max(b[3] for b in self.batch)
        self.handle.pull(self.scratch)
        if tau:
            self.handle.backdate(tau)
        self.handle.push(self.grad_sum / np.float32(len(self.batch)))
        self.updates += 1
        self.version.value = self.updates  # learners of the cancelling variants watch it
        # adacomm: every contribution is a round of tau local steps (tau adapts after it)
        self.batches += len(self.batch) * (self.tau if self.variant.averaging else 1)
        contributors = {b[0] for b in self.batch}
        # The work in progress of every other learner is cancelled (k-sync, k-batch-sync) or
        # kept (k-async, k-batch-async); sync has none.
        self.log.append({"update": self.updates, "t_s": time.perf_counter() - self.t0,
                         "k": len(self.batch), "learners": [b[0] for b in self.batch],
                         "versions": [b[1] for b in self.batch],
                         "loss": float(np.mean([b[2] for b in self.batch])),
                         "staleness": float(np.mean([b[3] for b in self.batch])),
                         "tau_applied": tau,
                         "in_progress": self.P - len(contributors), "tau": self.tau})  # fmt: skip
        if self.variant.adapts == "tau":
            self.adapt()
        self.grad_sum.fill(0.0)
        self.batch = []
        waiting, self.waiting = self.waiting, []
        for r in waiting:
            self.reply(r, "pull")

    def on_gradient(self, rank: int, version: int, loss: float = math.nan) -> None:
        v = self.variant
        if v.drops_late and version < self.updates:
            self.dropped += 1  # overtaken after the learner last looked: a late gradient
            self.reply(rank, "pull")
            return
        tau = self.updates - version
        self.tau_sum += tau
        self.tau_n += 1
        self.grad_sum += self.slots[rank]
        self.batch.append((rank, version, loss, tau))
        full = len(self.batch) >= self.k  # >=: AdaSync may have lowered K meanwhile
        # The sender that completes a batch is answered after the update (apply() replies
        # to the waiting), so its pull sees the new model; the others are answered now.
        if v.early_reply is not None and not full:
            self.reply(rank, v.early_reply)
        else:
            self.waiting.append(rank)
        if full:
            self.apply()

    def run(self) -> None:
        try:
            while len(self.stopped) < self.P and not self.quit.is_set():
                try:
                    rank, version, loss = self.inbox.get(timeout=0.05)
                except queue_mod.Empty:
                    continue
                if self.variant.adapts:
                    self.round_losses.append(loss)
                    now = time.perf_counter()
                    if self.variant.adapts == "k" and now >= self.next_adapt:
                        self.adapt()
                        self.adaptations.append((now - self.t0, self.k))
                        while self.next_adapt <= now:  # intervals without a gradient are skipped
                            self.next_adapt += self.interval_s
                if self.done():
                    if self.variant.cancelling and version < self.updates:
                        self.dropped += 1  # a late gradient of the last update
                    else:
                        self.after_end += 1  # computed while the last update was made
                    self.reply(rank, "stop")
                    for r in self.waiting:
                        self.reply(r, "stop")
                    self.waiting = []
                else:
                    self.on_gradient(rank, version, loss)
        except BaseException as e:
            self.error = e
        finally:
            self.handle.close()

    def summary(self) -> dict[str, Any]:
        return {"updates": self.updates, "dropped_late": self.dropped, "after_end": self.after_end,
                "staleness_mean": self.staleness_mean(), "gradients": self.tau_n,
                "batches": self.batches,
                **({"adaptations": self.adaptations} if self.variant.adapts == "k" else {})}  # fmt: skip


__all__ = ["Coordinator"]
