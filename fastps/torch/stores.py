"""store_from: a store (local, shared by default, or on Ray) laid out for a torch module; the
store's optimizer settings as torch sees them; the checks of a model against its store."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fastps.layout import ParamLayout
from fastps.store import Store

BACKENDS = ("local", "ray")
SETTINGS = ("lr", "momentum", "weight_decay", "nesterov")

# Learner places a store_from store gets in locked and hogwild modes unless told: an unused
# place is one registration entry (bytes; the segment stays at the parameters' size, measured).
# Leashed mode keeps the Store default: each place adds two version slots per shard, and a
# shared segment is allocated whole ((2 * max_learners + 5) copies of the parameters).
MANY_LEARNERS = 1024

# Set on a module given to store_from (pickled with it into learner processes): the store it
# was copied into, so AsyncOptimizer can tell "changed after store_from" from "another model".
SOURCE_ATTR = "_fastps_store_source"


def store_from(
    model: torch.nn.Module, *, backend: str = "local", shared: Any = True, **store_kwargs: Any
) -> Any:
    """A store initialised from ``model``'s parameters, laid out by ``ParamLayout.from_module``
    (available as ``store.layout``).

    ``backend="local"``: a ``fastps.Store``; ``shared=True`` (the default) puts it in shared
    memory under a generated name, removed when this process closes it or exits, so the store
    pickles into spawned learner processes; ``shared="name"`` names it, ``shared=None`` keeps
    it private to this process. In locked and hogwild modes ``max_learners`` defaults to
    1024 (an unused place costs bytes); leashed keeps the Store default (16), since each
    place there reserves version slots (see the README).
    ``backend="ray"``: a ``fastps.ray.RayStore`` (``shared`` does not apply). Every other
    argument passes through to the store.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"store_from: model must be a torch.nn.Module (got {type(model).__name__})")
    if backend not in BACKENDS:
        raise ValueError(f"store_from: backend must be one of {BACKENDS} (got {backend!r})")
    params = dict(model.named_parameters())
    check_float32("store_from", params)
    layout = ParamLayout.from_module(model)
    init = layout.flatten(params)
    if backend == "ray":
        if shared is not True:
            raise ValueError(
                "store_from: shared is for backend='local' (a RayStore lives in actors)"
            )
        from fastps.ray import RayStore

        store: Any = RayStore(init=init, **store_kwargs)
        store.optimizer_settings = {
            "lr": store.step_size.lr,
            "momentum": float(store_kwargs.get("momentum", 0.0)),
            "weight_decay": float(store_kwargs.get("weight_decay", 0.0)),
            "nesterov": bool(store_kwargs.get("nesterov", False)),
        }
    else:
        if store_kwargs.get("mode", "leashed") != "leashed":
            store_kwargs.setdefault("max_learners", MANY_LEARNERS)
        store = Store(init=init, shared=shared, **store_kwargs)
    store.layout = layout
    object.__setattr__(model, SOURCE_ATTR, (store_key(store), digest(init), os.getpid()))
    return store


def digest(flat: np.ndarray) -> str:
    return hashlib.blake2b(flat.tobytes(), digest_size=16).hexdigest()


def store_key(store: Any) -> str:
    """What identifies a store across processes: its shared name, else this object."""
    name = getattr(store, "name", None)
    return name if isinstance(name, str) else f"object-{id(store)}"


def creator_pid(model: torch.nn.Module | None, store: Any) -> int | None:
    """The pid of the process that made ``store`` from ``model``, where it is known."""
    source = getattr(model, SOURCE_ATTR, None)
    if isinstance(source, tuple) and source[0] == store_key(store):
        return int(source[2])
    pid = getattr(store, "creator_pid", None)
    return pid if isinstance(pid, int) else None


def settings(store: Any) -> dict[str, Any]:
    """The store's lr, momentum, weight_decay and nesterov (None where the store does not say:
    a duck-typed store)."""
    if isinstance(store, Store):
        known: Any = store.config
    else:
        known = getattr(store, "optimizer_settings", None)
        if not isinstance(known, Mapping):
            known = {"lr": getattr(getattr(store, "step_size", None), "lr", None)}
    out = {k: known.get(k) for k in SETTINGS}
    for k in ("lr", "momentum", "weight_decay"):  # the store keeps float32: show 0.9, not 0.8999...
        if out[k] is not None:
            out[k] = float(str(np.float32(out[k])))
    return out


def check_float32(api: str, params: Mapping[str, torch.Tensor]) -> None:
    for name, p in params.items():
        if p.dtype != torch.float32:
            raise TypeError(
                f"{api}: parameter {name!r} is {p.dtype}; the store trains float32 parameters "
                "(call model.float() before store_from and AsyncOptimizer)"
            )


def check_against_store(model: torch.nn.Module, layout: ParamLayout, store: Any) -> None:
    """Refuse a model that no longer matches the store it was copied into: another layout, or
    (while nothing was pushed yet) other values, e.g. a load_state_dict or a replaced layer
    after store_from, which building the optimizer would silently overwrite."""
    known = getattr(store, "layout", None)
    if isinstance(known, ParamLayout) and known != layout:
        diff = next((f"{a.name} {a.shape}" for a, b in zip(layout.specs, known.specs) if a != b),
                    f"{len(layout.specs)} tensors, the store's has {len(known.specs)}")  # fmt: skip
        raise ValueError(
            f"AsyncOptimizer: the model's layout differs from the store's (at {diff}); was a "
            "layer replaced after store_from? Call store_from on the model as it is trained"
        )
    source = getattr(model, SOURCE_ATTR, None)
    if not isinstance(source, tuple) or source[0] != store_key(store):
        return  # another model (e.g. each learner builds its own): it takes the store's values
    if digest(layout.flatten(dict(model.named_parameters()))) == source[1]:
        return
    # The model is no longer what store_from copied. Once the store has been trained that is
    # expected (a closing learner writes the store back into a shared model); before, it means
    # the change would be lost when the optimizer pulls the store's values.
    if store.stats()["pushes"] == 0:
        raise ValueError(
            "AsyncOptimizer: the model's parameters changed after store_from (a load_state_dict "
            "or a replaced layer?); the store holds the values it was made from, and building "
            "the optimizer would overwrite the change. Call store_from after changing the model"
        )
