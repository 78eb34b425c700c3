"""A store's configuration: from keyword arguments to the native StoreConfig, and to and from
the dicts that ``Store.config``, checkpoints and ``fastps.ray`` use.

This module is the one place where a configuration is mapped: arguments are type-checked here
(Python types are the facade's business) and range-checked by the native core
(``StoreConfig.validate``), the rule that ``Store`` creation applies too. An integer the native
field cannot hold at all (``persistence=2**31``) is refused here, by ``check_int``, with the
message that states the core's range (``INT_ARGS``). A checkpoint header's configuration is
range-checked by the same rules (``check_header``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastps import _core
from fastps import step_size as _steps
from fastps.buffers import type_name

MODES = ("locked", "hogwild", "leashed")
"""Consistency modes: lock per shard, no synchronisation (Hogwild!), Leashed-SGD."""

NAN_GUARDS = {
    "raise": _core.NanGuard.raise_,
    "skip": _core.NanGuard.skip,
    "off": _core.NanGuard.off,
}
"""What push does with a NaN or Inf in a gradient."""

STEP_FIELDS = ("beta", "a", "warmup", "refresh", "c", "eta_max")
"""The parameters of a native step-size policy (``_core.StepConfig``), as checkpoints keep them."""

_DEFAULT_SHARD_BYTES = 1 << 20  # one shard per MiB of parameters by default...
_DEFAULT_MAX_SHARDS = 16  # ...up to this many


def default_shards(size: int) -> int:
    """The shard count Store picks when none is given: one per MiB, between 1 and 16."""
    return max(1, min(_DEFAULT_MAX_SHARDS, size * 4 // _DEFAULT_SHARD_BYTES))


def check_number(api: str, name: str, value: Any) -> float:
    """``value`` as a float; TypeError unless a real number, ValueError unless finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{api}: {name} must be a number (got {type_name(value)})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{api}: {name} must be finite (got {value})")
    return value


INT_ARGS = {
    "size": (-(2**63), 2**63 - 1, "{api}: size must be in [1, 2^40] (got {got})"),
    "shards": (0, 2**32 - 1, "{api}: shards must be in [1, {blocks}] for size {size} (one 64-byte "
               "block at least per shard), got {got}"),
    "persistence": (-(2**31), 2**31 - 1,
                    "{api}: persistence must be -1 (never drop) or in [0, 2^31-1] (got {got})"),
    "max_learners": (0, 2**32 - 1, "{api}: max_learners must be in [1, 1024] (got {got})"),
    "staleness_bins": (0, 2**32 - 1, "{api}: staleness_bins must be in [1, 65536] (got {got})"),
    "updates": (0, 2**63 - 1, "{api}: updates must be in [0, 2**63) (got {got})"),
}  # fmt: skip
"""Store's integer arguments (and a handle's ``backdate(updates)``): [lowest, highest] the native field can hold (the binding reads a
C ``long long`` for size, ``int32`` for persistence, ``uint32`` for the rest), and the message
for a value outside it, which states the core's rule (``StoreConfig.validate`` checks the rule
for the values inside; tests/test_errors.py checks that both say the same range)."""


def check_int(api: str, name: str, value: Any, **context: Any) -> int:
    """``value`` as an int; TypeError unless an integer (bool is not one). For the arguments
    in ``INT_ARGS``, ValueError naming the argument and its range when the native field cannot
    hold ``value`` (``context``: the other values the message names, e.g. ``size``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{api}: {name} must be an integer (got {type_name(value)})")
    value = int(value)
    if name in INT_ARGS:
        low, high, message = INT_ARGS[name]
        if not low <= value <= high:
            raise ValueError(message.format(api=api, got=value, **context))
    return value


def _fill(size: Any, shards: Any, mode: str, lr: Any, policy: _steps.StepSize, momentum: Any,
          nesterov: Any, weight_decay: Any, persistence: Any, nan_guard: str, max_learners: Any,
          staleness_bins: Any, api: str) -> Any:  # fmt: skip
    cfg = _core.StoreConfig()
    # Integer fields narrow natively (ValueError naming the field when out of range).
    cfg.size = check_int(api, "size", size)
    if shards is None:
        cfg.shards = default_shards(cfg.size)
    else:
        cfg.shards = check_int(api, "shards", shards, size=cfg.size, blocks=blocks(cfg.size))
    cfg.persistence = check_int(api, "persistence", persistence)
    cfg.max_learners = check_int(api, "max_learners", max_learners)
    cfg.staleness_bins = check_int(api, "staleness_bins", staleness_bins)
    cfg.mode = getattr(_core.Mode, mode)
    if lr is None:
        lr = policy.lr if policy.lr is not None else 0.01
    else:
        lr = check_number(api, "lr", lr)
        with np.errstate(over="ignore"):  # a huge lr: the core says it is not finite in float32
            if policy.lr is not None and np.float32(policy.lr) != np.float32(lr):
                raise ValueError(f"{api}: lr={lr} disagrees with the step_size's lr={policy.lr}")
    cfg.lr = check_number(api, "lr", lr)
    cfg.momentum = check_number(api, "momentum", momentum)
    cfg.nesterov = bool(nesterov)
    cfg.weight_decay = check_number(api, "weight_decay", weight_decay)
    cfg.nan_guard = NAN_GUARDS[nan_guard]
    return cfg


def native_config(
    size: Any,
    *,
    shards: Any = None,
    mode: Any = "leashed",
    lr: Any = None,
    step_size: Any = None,
    momentum: Any = 0.0,
    nesterov: Any = False,
    weight_decay: Any = 0.0,
    persistence: Any = -1,
    nan_guard: Any = "raise",
    max_learners: Any = 16,
    staleness_bins: Any = 64,
    api: str = "Store",
) -> tuple[Any, _steps.StepSize]:
    """(``_core.StoreConfig``, bound step-size policy) from Store's keyword arguments, checked.

    Raises TypeError or ValueError naming the argument; nothing is created.
    """
    if not isinstance(mode, str):
        raise TypeError(f"{api}: mode must be a string (got {type_name(mode)})")
    if mode not in MODES:
        raise ValueError(f"{api}: mode must be one of {', '.join(MODES)} (got {mode!r})")
    if not isinstance(nesterov, (bool, np.bool_)):
        raise TypeError(f"{api}: nesterov must be a bool (got {type_name(nesterov)})")
    if not isinstance(nan_guard, str) or nan_guard not in NAN_GUARDS:
        raise ValueError(
            f"{api}: nan_guard must be one of {', '.join(NAN_GUARDS)} (got {nan_guard!r})"
        )
    policy = _steps.as_policy(step_size)
    try:
        cfg = _fill(size, shards, mode, lr, policy, momentum, nesterov, weight_decay,
                    persistence, nan_guard, max_learners, staleness_bins, api)  # fmt: skip
        cfg.validate()  # every range, once, in the core (the rule Store creation applies)
    except ValueError as e:  # the core speaks as "Store"; say who was called
        if api == "Store" or not str(e).startswith("Store: "):
            raise
        raise ValueError(f"{api}: {str(e).removeprefix('Store: ')}") from None
    policy = policy.bind(cfg.lr, cfg.max_learners)
    policy.fill_native(cfg.step)
    return cfg, policy


def nan_guard_name(cfg: Any) -> str:
    """``"raise"``, ``"skip"`` or ``"off"`` for a ``_core.StoreConfig``."""
    return next(k for k, v in NAN_GUARDS.items() if v == cfg.nan_guard)


def _common(cfg: Any) -> dict[str, Any]:
    return {
        "size": cfg.size, "shards": cfg.shards, "mode": cfg.mode.name, "lr": cfg.lr,
        "momentum": cfg.momentum, "nesterov": cfg.nesterov, "weight_decay": cfg.weight_decay,
        "persistence": cfg.persistence, "nan_guard": nan_guard_name(cfg),
        "max_learners": cfg.max_learners, "staleness_bins": cfg.staleness_bins,
    }  # fmt: skip


def to_dict(cfg: Any, policy: _steps.StepSize) -> dict[str, Any]:
    """``Store.config``: every argument of the store, the step size as its bound policy."""
    return {**_common(cfg), "step_size": policy}


def to_header(cfg: Any) -> dict[str, Any]:
    """The JSON form checkpoints keep: the step size as its native kind and parameters."""
    step = {"kind": cfg.step.kind.name, **{k: getattr(cfg.step, k) for k in STEP_FIELDS}}
    return {**_common(cfg), "step": step}


def policy_from_header(c: dict[str, Any], step_size: Any, api: str, where: str) -> Any:
    """The step size of the configuration ``c`` (``to_header``'s form): the saved native
    policy, or ``step_size`` (a callable) where the checkpoint was saved with a Python hook."""
    step = c["step"]
    if step["kind"] == "hook":
        if not callable(step_size):
            raise ValueError(
                f"{api}: {where} was saved with a Python step_size hook; pass it again as "
                "step_size="
            )
        return step_size
    if step_size is not None:
        raise ValueError(f"{api}: step_size is only for checkpoints saved with a hook")
    sc = _core.StepConfig()
    sc.kind = getattr(_core.StepKind, step["kind"])
    for k in STEP_FIELDS:
        setattr(sc, k, step[k])
    return _steps.from_native(sc, c["lr"])


def check_header(c: dict[str, Any], where: str) -> None:
    """Range-check the configuration ``c`` of a checkpoint header (``to_header``'s form, its
    types already checked) by the rules a Store applies, before anything is built: ValueError
    ``"<where>: header field 'config' is refused: <the rule>"``."""
    try:
        if c["step"]["kind"] == "hook":  # the callable comes with Store.load, not the file
            policy = _steps.Hook(lr=c["lr"])
        else:
            policy = policy_from_header(c, None, "load", where)
        native_config(c["size"], shards=c["shards"], step_size=policy, api="load",
                      **store_kwargs(c))  # fmt: skip
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{where}: header field 'config' is refused: {str(e).removeprefix('load: ')}"
        ) from None


def store_kwargs(c: dict[str, Any]) -> dict[str, Any]:
    """Store's keyword arguments for the configuration ``c`` (``to_header``'s form), less
    ``size``, ``shards`` and the step size."""
    keys = ("mode", "lr", "momentum", "nesterov", "weight_decay", "persistence", "nan_guard",
            "max_learners", "staleness_bins")  # fmt: skip
    return {k: c[k] for k in keys}


BLOCK_ELEMS = 16
"""Elements per 64-byte block, the unit of every split (the core's kAlignElems)."""


def blocks(size: int) -> int:
    """How many 64-byte blocks ``size`` elements take: the most parts ``shard_ranges`` makes."""
    return -(-size // BLOCK_ELEMS)


def shard_ranges(size: int, parts: int) -> list[tuple[int, int]]:
    """[begin, end) of each of ``parts`` contiguous ranges of ``size`` elements: whole 64-byte
    blocks (16 elements), as equal as blocks allow: the split a Store makes of its shards and
    a RayStore of its servers (the native rule). ValueError unless 1 <= parts <= the number of
    blocks."""
    return [tuple(r) for r in _core.shard_ranges(size, parts)]  # type: ignore[misc]
