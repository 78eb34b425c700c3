"""The variants: ONE table of who waits for whom, which options each takes, and the class that
knows each family's step (DESIGN.md, "Coordination").

fit(), ``fastps train`` and the simulator (fastps.sim) all read ``TABLE``: a variant's name
maps to a ``Variant`` (its step family, the options it takes, how it fixes or bounds K, what its
coordinator does). A family is one small class with the one method that differs,
``after_gradient``: what a learner does with each mini-batch gradient (push it, hand it to the
coordinator, take a local step, exchange models). The learner loop (fastps.train.learner) calls
it and never asks for a variant's name.

This module imports no torch: the CLI and the simulator read the table without loading it. The
families work on the learner's torch tensors through their methods only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

# The options only some variants use; fit() and `fastps train` refuse them for the others.
OPTIONS = ("k", "local_steps", "alpha", "n_fetch", "n_push", "interval_s")


class Exchange(Protocol):
    """What a family's step may do on a learner (fastps.train.learner.Exchange implements it):
    its AsyncOptimizer ``opt``, the run's learner settings ``config``, the losses so far, and
    the timed, delayed calls that cross the (emulated) network."""

    opt: Any
    config: Any
    losses: list[float]
    sent: int  # contributions so far: pushes, or hand-overs to the coordinator

    def push(self, grad: torch.Tensor) -> None: ...
    def pull(self, buf: torch.Tensor) -> None: ...
    def ask(self, loss: float) -> Any: ...
    def slot(self) -> torch.Tensor: ...
    def local_step(self) -> None: ...


class Step:
    """A family's learner side: ``after_gradient`` runs after every mini-batch gradient (in
    ``io.opt.flat_grads``, its loss appended to ``io.losses``, ``step`` counting them from 1)
    and returns False when the coordinator said stop."""

    def __init__(self, io: Exchange) -> None:
        self.io = io

    @staticmethod
    def batches_per_update(k: int, learners: int, local_steps: int, n_push: int) -> int:
        """Mini-batches that go into one store update (adacomm at tau_0, adasync at K_0)."""
        return k  # async 1, sync P, the K-variants K

    def after_gradient(self, step: int) -> bool:
        raise NotImplementedError


class AsyncStep(Step):
    """async: push the gradient, then pull the parameters."""

    def after_gradient(self, step: int) -> bool:
        io = self.io
        io.push(io.opt.flat_grads)
        io.sent += 1
        io.pull(io.opt.flat_params)
        return True


class CoordinatedStep(Step):
    """sync, the K-variants, adasync: hand the gradient to the coordinator, then do what it
    replies ("pull", "keep" or "stop")."""

    def after_gradient(self, step: int) -> bool:
        io = self.io
        io.slot().copy_(io.opt.flat_grads)
        reply = io.ask(io.losses[-1])
        io.sent += 1
        if reply == "stop":
            return False
        if reply == "pull":
            io.pull(io.opt.flat_params)
        return True


class AveragingStep(Step):
    """local-sgd, adacomm: tau local steps, then the coordinator averages the P models (the
    store's step w -= lr * g with g = (ref - x) / lr adds x - ref; averaged, the mean of the
    learners' models). adacomm's coordinator sends the next round's tau with every reply."""

    def __init__(self, io: Exchange) -> None:
        super().__init__(io)
        self.ref = io.opt.flat_params.clone()  # the model of the last exchange
        self.tau = io.config.local_steps
        self.since = 0  # local steps since the last exchange
        self.round_losses: list[float] = []

    @staticmethod
    def batches_per_update(k: int, learners: int, local_steps: int, n_push: int) -> int:
        return learners * local_steps  # every learner's round of tau local steps

    def after_gradient(self, step: int) -> bool:
        io = self.io
        io.local_step()
        self.since += 1
        self.round_losses.append(io.losses[-1])
        if self.since < self.tau:
            return True
        io.slot().copy_((self.ref - io.opt.flat_params) / io.config.lr)
        reply = io.ask(float(np.mean(self.round_losses)))
        self.since, self.round_losses = 0, []
        io.sent += 1
        if isinstance(reply, tuple):  # adacomm: ("pull", the next round's tau)
            reply, self.tau = reply
        if reply == "stop":
            return False
        io.pull(io.opt.flat_params)
        self.ref.copy_(io.opt.flat_params)
        return True


class ElasticStep(Step):
    """easgd: a local step; every local_steps steps the elastic exchange with the centre
    variable held in the store: x -= alpha (x - centre), centre += alpha (x - centre)."""

    def __init__(self, io: Exchange) -> None:
        super().__init__(io)
        self.centre = io.opt.flat_params.new_empty(io.opt.flat_params.shape)  # pulled

    @staticmethod
    def batches_per_update(k: int, learners: int, local_steps: int, n_push: int) -> int:
        return local_steps

    def after_gradient(self, step: int) -> bool:
        io, cfg = self.io, self.io.config
        io.local_step()
        if step % cfg.local_steps == 0:
            io.pull(self.centre)
            e = cfg.alpha * (io.opt.flat_params - self.centre)
            io.opt.flat_params.sub_(e)  # the elastic pull toward the centre...
            io.push(e / -cfg.lr)  # ...and the centre's toward x: centre += e
            io.sent += 1
        return True


class DownpourStep(Step):
    """downpour: a local step; push the gradient accrued since the last push every n_push
    steps, fetch the parameters every n_fetch steps."""

    def __init__(self, io: Exchange) -> None:
        super().__init__(io)
        grads = io.opt.flat_grads
        self.accrued = grads.new_zeros(grads.shape)  # gradients since the last push

    @staticmethod
    def batches_per_update(k: int, learners: int, local_steps: int, n_push: int) -> int:
        return n_push

    def after_gradient(self, step: int) -> bool:
        io, cfg = self.io, self.io.config
        self.accrued.add_(io.opt.flat_grads)
        io.local_step()
        if step % cfg.n_push == 0:
            io.push(self.accrued)
            self.accrued.zero_()
            io.sent += 1
        if step % cfg.n_fetch == 0:
            io.pull(io.opt.flat_params)
        return True


@dataclass(frozen=True)
class Variant:
    """One row of the table.

    ``k``: "1" or "P" (the variant fixes K), "1..P" or "any" (the option k is required, in
    that range). ``coordinated``: a coordinator thread makes the store updates (the learners
    hand it gradients or models); otherwise each learner pushes itself and has a quota.
    ``cancelling``: an update cancels the work in progress. ``drops_late``: a gradient computed
    on an older model than the current one is dropped. ``early_reply``: what a contributor whose
    gradient does not complete a batch is told at once ("pull", "keep"; None: it waits for the
    update). ``adapts``: "tau" (adacomm: local steps per round) or "k" (adasync: K per
    interval). ``local``: local SGD steps between exchanges (plain store step, no policy).
    ``spectrum``: the position on Dutta et al.'s sync-to-async spectrum in which the simulator
    lists it; None: the simulator does not model it.
    """

    name: str
    family: type[Step]
    options: tuple[str, ...] = ()
    k: str = "1"
    coordinated: bool = False
    cancelling: bool = False
    drops_late: bool = False
    early_reply: str | None = None
    adapts: str | None = None
    local: bool = False
    averaging: bool = False
    spectrum: int | None = None

    def fixed_k(self, learners: int) -> int | None:
        """K when the variant fixes it (async 1; sync and the averaging ones P), else None."""
        return {"1": 1, "P": learners}.get(self.k)

    def k_bound(self, learners: int) -> int | None:
        """The largest K allowed (P, or None for any K >= 1) when the option k is required."""
        return learners if self.k == "1..P" else None

    def takes(self, option: str) -> bool:
        return option in self.options


_K = ("k",)
TABLE: dict[str, Variant] = {v.name: v for v in (
    Variant("async", AsyncStep, spectrum=3),
    Variant("sync", CoordinatedStep, k="P", coordinated=True, drops_late=True, spectrum=0),
    Variant("k-sync", CoordinatedStep, _K, "1..P", coordinated=True, cancelling=True,
            drops_late=True, spectrum=1),
    Variant("k-batch-sync", CoordinatedStep, _K, "any", coordinated=True, cancelling=True,
            drops_late=True, early_reply="keep", spectrum=2),
    Variant("k-async", CoordinatedStep, _K, "1..P", coordinated=True, spectrum=4),
    Variant("k-batch-async", CoordinatedStep, _K, "any", coordinated=True, early_reply="pull",
            spectrum=5),
    Variant("adasync", CoordinatedStep, ("k", "interval_s"), "1..P", coordinated=True,
            cancelling=True, drops_late=True, adapts="k", spectrum=6),
    Variant("local-sgd", AveragingStep, ("local_steps",), "P", coordinated=True,
            drops_late=True, local=True, averaging=True),
    Variant("adacomm", AveragingStep, ("local_steps",), "P", coordinated=True, drops_late=True,
            adapts="tau", local=True, averaging=True),
    Variant("easgd", ElasticStep, ("local_steps", "alpha"), local=True),
    Variant("downpour", DownpourStep, ("n_fetch", "n_push"), local=True),
)}  # fmt: skip

VARIANTS = tuple(TABLE)
# Which variants take each option (fit's and the CLI's refusals read it).
VARIANT_OPTIONS: dict[str, tuple[str, ...]] = {
    opt: tuple(v.name for v in TABLE.values() if v.takes(opt)) for opt in OPTIONS
}
LOCAL = tuple(v.name for v in TABLE.values() if v.local)
AVERAGING = tuple(v.name for v in TABLE.values() if v.averaging)
CANCELLING = tuple(v.name for v in TABLE.values() if v.cancelling)
# The variants fastps.sim models, in the order of the spectrum from sync to async.
SIMULATED = tuple(sorted((v.name for v in TABLE.values() if v.spectrum is not None),
                         key=lambda n: TABLE[n].spectrum or 0))  # fmt: skip


def variant(name: str, api: str = "fit") -> Variant:
    """The table's row for ``name``; ValueError naming ``api`` for an unknown one."""
    row = TABLE.get(name)
    if row is None:
        raise ValueError(f"{api}: variant must be one of {', '.join(VARIANTS)} (got {name!r})")
    return row


__all__ = ["AVERAGING", "CANCELLING", "LOCAL", "OPTIONS", "SIMULATED", "TABLE", "VARIANTS",
           "VARIANT_OPTIONS", "AsyncStep", "AveragingStep", "CoordinatedStep", "DownpourStep",
           "ElasticStep", "Exchange", "Step", "Variant", "variant"]  # fmt: skip
