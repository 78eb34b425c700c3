"""Checkpoints of a Store: one self-checking file, written atomically.

Layout of a version-1 file (little endian)::

    b"FASTPSCK" | u32 format version | u32 0 | u64 header length | header (JSON, UTF-8)
    | parameters (float32) | momentum (float32, when the store has momentum) | u32 CRC-32

The CRC covers every byte before it. The header holds the configuration (mode, optimizer,
step-size policy, shard ranges), the counters (clock, pushes, per-shard versions and staleness
histograms, TAIL-tau state) and the caller's metadata. A save writes a temporary file
``.NAME.HOST.PID.XXXX.tmp`` in the same folder, fsyncs it, renames it over ``path`` and fsyncs
the folder, so a crash at any point leaves either the old checkpoint or the new one, never a
mix; the next save to ``path`` removes the temporaries of writers on this host that died.

A read checks the bytes (length, CRC), then the whole header against ``SCHEMA`` (every key,
type and range, and the lengths the configuration implies) before anything is built: a file
whose checksum is right but whose header is not what a save writes raises ValueError too.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import socket
import stat
import struct
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fastps import _core
from fastps import config as _config

MAGIC = b"FASTPSCK"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIIQ")  # magic, version, reserved, header length
_CRC = struct.Struct("<I")


MAX_DEPTH = 100
"""The deepest nesting a header may have: its metadata nests at most 99 levels (checked on save
and on load). Python's JSON parser raises RecursionError somewhere past 900 levels."""

U64 = 2**64 - 1
_STEP_KINDS = tuple(_core.StepKind.__members__)


# -- saving ------------------------------------------------------------------------------------


def save(native: Any, path: str | os.PathLike[str], metadata: Any = None) -> None:
    """Write the native store ``native`` (a ``_core.Store``) to ``path`` atomically (see the
    module docstring)."""
    path = Path(path)
    if _depth(metadata, MAX_DEPTH - 1) > MAX_DEPTH - 1:
        raise ValueError(f"save: metadata nests deeper than {MAX_DEPTH - 1} levels")
    _check_target(path)
    c = native.config
    params = np.empty(c.size, np.float32)
    momentum = np.empty(c.size, np.float32) if c.momentum else None
    counters = native.save(params, momentum)
    header = {
        "config": _config.to_header(c),
        "shard_ranges": [list(native.shard_range(s)) for s in range(c.shards)],
        "counters": {
            "clock": counters.clock, "pushes": counters.pushes,
            "nonfinite_skipped": counters.nonfinite_skipped, "versions": counters.versions,
            "hist": counters.hist, "step_updates": counters.step_updates,
            "cdf_ready": counters.cdf_ready, "cdf": counters.cdf, "cdf_hist": counters.cdf_hist,
        },
        "arrays": ["params"] + (["momentum"] if momentum is not None else []),
        "metadata": metadata,
        "saved_unix_s": time.time(),
    }  # fmt: skip
    try:
        head = json.dumps(header, allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise TypeError(f"save: metadata must be JSON-serialisable ({e})") from None
    parts: list[Any] = [_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(head)), head, params.data]
    if momentum is not None:
        parts.append(momentum.data)
    folder = path.parent
    remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}.", suffix=".tmp",
                                   dir=folder)  # fmt: skip
    except OSError as e:
        raise _path_error(e, f"save: cannot write checkpoint '{path}'", folder) from e
    try:
        with os.fdopen(fd, "wb") as f:
            crc = 0
            for part in parts:
                f.write(part)
                crc = zlib.crc32(part, crc)
            f.write(_CRC.pack(crc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _path_error(e, f"save: cannot write checkpoint '{path}'", folder) from e
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def _check_target(path: Path) -> None:
    """Refuse a path that cannot be written, before the store is copied: the OSError subclass
    a write would raise, with a message that says what and where (chained from the OS's error
    where there is one)."""
    where = f"save: cannot write checkpoint '{path}'"
    folder = path.parent
    try:
        is_dir = stat.S_ISDIR(os.stat(folder).st_mode)
    except OSError as e:
        if e.errno == errno.ENOTDIR:  # name the component that is a file
            folder = next((up for up in folder.parents if os.path.isfile(up)), folder)
        raise _path_error(e, where, folder) from e
    if not is_dir:
        raise _new(NotADirectoryError, errno.ENOTDIR, f"{where}: '{folder}' is not a folder")
    if os.path.isdir(path):
        raise _new(IsADirectoryError, errno.EISDIR, f"{where}: it is a folder")


def _new(cls: type[OSError], code: int, message: str) -> OSError:
    e = cls(message)  # str(e) is the message alone; errno as the OS would have set it
    e.errno = code
    return e


def _path_error(e: OSError, where: str, folder: Path) -> OSError:
    """``e`` again (the same OSError subclass, errno kept) with a message saying what and
    where; the caller chains it ``from e``."""
    reasons = {
        errno.ENOENT: f"folder '{folder}' does not exist",
        errno.EACCES: f"no permission to write in folder '{folder}'",
        errno.EPERM: f"no permission to write in folder '{folder}'",
        errno.ENOTDIR: f"'{folder}' is not a folder",
        errno.EISDIR: "it is a folder",
    }
    reason = reasons.get(e.errno or 0, e.strerror or str(e))
    return _new(type(e), e.errno or 0, f"{where}: {reason}")


def _tmp_prefix(path: Path) -> str:
    """``.NAME.HOST.``: a save's temporary is ``.NAME.HOST.PID.XXXX.tmp``."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
    return f".{path.name}.{host}."


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[str]:
    """Remove the temporaries that saves to ``path`` from this host left when their process
    died (killed mid-save); returns their names. A temporary of a live process (another
    writer, or this process) is left alone, and so are other paths' and other hosts'."""
    path = Path(path)
    prefix = _tmp_prefix(path)
    pattern = re.compile(r"(\d+)\.[A-Za-z0-9_]+\.tmp")
    removed: list[str] = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed  # the write that follows says what is wrong with the folder
    for name in names:
        m = pattern.fullmatch(name[len(prefix) :]) if name.startswith(prefix) else None
        if m and _writer_dead(int(m.group(1))):
            try:
                os.unlink(path.parent / name)
                removed.append(name)
            except FileNotFoundError:  # another save got there first
                pass
    return removed


def _writer_dead(pid: int) -> bool:
    """The process ``pid`` has exited or is a zombie: the native registry's liveness rule
    (``_core.process_alive``), by pid alone since a temporary records no start time."""
    return not _core.process_alive(pid)


# -- reading -----------------------------------------------------------------------------------


def read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """(header, params, momentum) of a checkpoint, checked: OSError subclasses (saying what
    and where) when the file cannot be read, ValueError when it is not sound."""
    name = os.fspath(path)
    data = _read_bytes(name)
    where = f"load: {name}"
    if len(data) < _PREFIX.size:
        raise ValueError(f"{where} is truncated ({len(data)} bytes)")
    magic, version, _, head_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"{where} is not a fastps checkpoint")
    if version != FORMAT_VERSION:
        raise ValueError(f"{where} has format version {version}, expected {FORMAT_VERSION}")
    head_end = _PREFIX.size + head_len
    header: Any
    try:
        header = json.loads(data[_PREFIX.size : head_end])
    except RecursionError:
        header = _TOO_DEEP
    except ValueError:  # not JSON, not UTF-8
        header = None
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if len(data) < head_end + _CRC.size or zlib.crc32(memoryview(data)[: -_CRC.size]) != crc:
        _damaged(where, data, head_end, header)  # cut or changed: raises
    # The bytes are those a writer wrote; now the header must be what save writes.
    ckpt = f"load: checkpoint '{name}'"
    if header is _TOO_DEEP:
        raise ValueError(f"{ckpt}: header nests deeper than Python's JSON parser allows")
    if header is None:
        raise ValueError(f"{ckpt}: header is not JSON text")
    check_header(header, ckpt)
    n, arrays = header["config"]["size"], header["arrays"]
    expected = head_end + 4 * n * len(arrays) + _CRC.size
    if len(data) != expected:
        raise ValueError(
            f"{ckpt}: header field 'config.size' says {len(arrays)} arrays of {n} elements "
            f"({expected} bytes in all), the file has {len(data)} bytes"
        )
    views = {
        a: np.frombuffer(data, np.float32, n, head_end + 4 * n * i) for i, a in enumerate(arrays)
    }
    return header, views["params"], views.get("momentum")


_TOO_DEEP = object()


def _read_bytes(name: str) -> bytes:
    try:
        return Path(name).read_bytes()
    except FileNotFoundError as e:
        raise _new(
            FileNotFoundError, errno.ENOENT, f"load: checkpoint '{name}' does not exist"
        ) from e
    except IsADirectoryError as e:
        raise _new(IsADirectoryError, errno.EISDIR, f"load: checkpoint '{name}' is a folder") from e
    except PermissionError as e:
        raise _new(
            PermissionError,
            e.errno or errno.EACCES,
            f"load: cannot read checkpoint '{name}': permission denied",
        ) from e
    except OSError as e:
        raise _new(type(e), e.errno or 0,
                   f"load: cannot read checkpoint '{name}': {e.strerror or e}") from e  # fmt: skip


def _damaged(where: str, data: bytes, head_end: int, header: Any) -> None:
    """Raise: the file is truncated or corrupted (its length or CRC is not what it says)."""
    try:
        expected = head_end + 4 * int(header["config"]["size"]) * len(header["arrays"]) + 4
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        short = len(data) < head_end + _CRC.size
        raise ValueError(
            f"{where} is {'truncated' if short else 'corrupted'} (unreadable header)"
        ) from None
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "corrupted"
        raise ValueError(f"{where} is {what} ({len(data)} bytes, expected {expected})")
    raise ValueError(f"{where} is corrupted (checksum mismatch)")


def _depth(value: Any, limit: int) -> int:
    """How deep lists and dicts nest in ``value`` (a scalar is 0), counted up to ``limit + 1``
    without recursion (a cycle is deeper than any limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, tuple, dict)):
            deepest = max(deepest, d)
            if d > limit:
                return d
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v)
                         if isinstance(c, (list, tuple, dict)))  # fmt: skip
    return deepest


# -- the header's schema -----------------------------------------------------------------------

# A field's rule: ("int", lowest, highest) (None: the core's range, checked with the
# configuration), ("num", finite), ("bool",), ("str", choices), ("obj", fields),
# ("list", item rule, length: a key of the lengths the configuration implies), ("any",).
_U64 = ("int", 0, U64)
_CONFIG_INT = ("int", None, None)
_FINITE = ("num", True)
SCHEMA: dict[str, Any] = {
    "config": ("obj", {
        "size": _CONFIG_INT, "shards": _CONFIG_INT, "mode": ("str", _config.MODES),
        "lr": ("num", False), "momentum": ("num", False), "nesterov": ("bool",),
        "weight_decay": ("num", False), "persistence": _CONFIG_INT,
        "nan_guard": ("str", tuple(_config.NAN_GUARDS)), "max_learners": _CONFIG_INT,
        "staleness_bins": _CONFIG_INT,
        "step": ("obj", {"kind": ("str", _STEP_KINDS), "beta": _FINITE, "a": _FINITE,
                         "warmup": _U64, "refresh": _U64, "c": _FINITE, "eta_max": _FINITE}),
    }),
    "shard_ranges": ("list", ("list", ("int", 0, U64), "pair"), "shards"),
    "counters": ("obj", {
        "clock": _U64, "pushes": _U64, "nonfinite_skipped": _U64,
        "versions": ("list", _U64, "shards"), "hist": ("list", _U64, "hist"),
        "step_updates": _U64, "cdf_ready": ("int", 0, 1),
        "cdf": ("list", ("num", False), "bins"), "cdf_hist": ("list", _U64, "bins"),
    }),
    "arrays": ("list", ("str", ("params", "momentum")), None),
    "metadata": ("any",),
    "saved_unix_s": _FINITE,
}  # fmt: skip
"""Every field of a version-1 header, its type and range. Keys not named here are ignored (a
later version may add some); the configuration's ranges are the Store's (``config.check_header``);
the lengths follow from it (``shards`` entries per shard, ``hist`` = shards x (staleness_bins + 1),
``bins`` = staleness_bins + 1)."""


def check_header(header: Any, where: str) -> None:
    """ValueError ``"<where>: header field 'config.shards' must be an integer (got str)"`` (or
    the like) unless ``header`` is what a version-1 save writes: every field of ``SCHEMA``, the
    configuration in the Store's ranges, the lengths it implies, the shard split it makes, a
    TAIL-tau table in [0, 1] and non-decreasing, and the arrays its momentum needs."""
    if not isinstance(header, dict):
        raise ValueError(f"{where}: header must be a JSON object (got {type(header).__name__})")
    config = {"config": SCHEMA["config"]}
    _check(header, ("obj", config), "", where, {})
    c = header["config"]
    _config.check_header(c, where)
    S, bins = c["shards"], c["staleness_bins"] + 1
    lengths = {"shards": S, "hist": S * bins, "bins": bins, "pair": 2}
    _check(header, ("obj", {k: v for k, v in SCHEMA.items() if k != "config"}), "", where, lengths)

    def fail(field: str, what: str) -> None:
        raise ValueError(f"{where}: header field '{field}' {what}")

    split = [list(r) for r in _config.shard_ranges(c["size"], S)]
    if header["shard_ranges"] != split:
        fail("shard_ranges", f"must be {split} (the split of size {c['size']} into {S} shards), "
                             f"got {header['shard_ranges']}")  # fmt: skip
    cdf = header["counters"]["cdf"]
    table = np.array(cdf, np.float64)
    if not np.all((table >= 0.0) & (table <= 1.0)):  # NaN fails both
        i = int(np.flatnonzero(~((table >= 0.0) & (table <= 1.0)))[0])
        fail(f"counters.cdf[{i}]", f"must be finite, in [0, 1] (got {cdf[i]})")
    if np.any(np.diff(table) < 0):
        i = int(np.flatnonzero(np.diff(table) < 0)[0]) + 1
        fail("counters.cdf", f"must be non-decreasing ({cdf[i - 1]} at {i - 1}, "
                             f"{cdf[i]} at {i})")  # fmt: skip
    if _depth(header["metadata"], MAX_DEPTH - 1) > MAX_DEPTH - 1:
        fail("metadata", f"nests deeper than {MAX_DEPTH - 1} levels")
    arrays = ["params"] + (["momentum"] if np.float32(c["momentum"]) else [])
    if header["arrays"] != arrays:
        mu = np.float32(c["momentum"])
        fail("arrays", f"must be {arrays} for momentum {mu!s} (got {header['arrays']})")


_WHAT = {"int": "an integer", "num": "a number", "bool": "a bool", "str": "a string",
         "obj": "an object", "list": "a list"}  # fmt: skip


def _check(v: Any, rule: tuple[Any, ...], field: str, where: str, lengths: dict[str, int]) -> None:
    kind = rule[0]
    if kind == "any":
        return
    ok = {
        "int": isinstance(v, int) and not isinstance(v, bool),
        "num": isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": isinstance(v, bool),
        "str": isinstance(v, str),
        "obj": isinstance(v, dict),
        "list": isinstance(v, list),
    }[kind]
    if not ok:
        raise ValueError(
            f"{where}: header field '{field}' must be {_WHAT[kind]} (got {type(v).__name__})"
        )
    if kind == "int" and rule[1] is not None and not rule[1] <= v <= rule[2]:
        high = "2^64-1" if rule[2] == U64 else rule[2]
        raise ValueError(
            f"{where}: header field '{field}' must be in [{rule[1]}, {high}] (got {v})"
        )
    elif kind == "num" and rule[1] and not math.isfinite(v):
        raise ValueError(f"{where}: header field '{field}' must be finite (got {v})")
    elif kind == "str" and v not in rule[1]:
        raise ValueError(
            f"{where}: header field '{field}' must be one of {', '.join(rule[1])} (got {v!r})"
        )
    elif kind == "obj":
        for key, sub in rule[1].items():
            name = f"{field}.{key}" if field else key
            if key not in v:
                raise ValueError(f"{where}: header field '{name}' is missing")
            _check(v[key], sub, name, where, lengths)
    elif kind == "list":
        if rule[2] is not None and len(v) != lengths[rule[2]]:
            raise ValueError(
                f"{where}: header field '{field}' must have {lengths[rule[2]]} entries "
                f"(got {len(v)})"
            )
        item, types = rule[1], set(map(type, v))
        if item[0] == "int" and types <= {int}:  # the common cases at C speed
            if not v or item[1] is None or item[1] <= min(v) and max(v) <= item[2]:
                return
        if item == ("num", False) and types <= {int, float}:
            return
        for i, x in enumerate(v):
            _check(x, rule[1], f"{field}[{i}]", where, lengths)


def counters_from(header: dict[str, Any]) -> Any:
    """The ``_core.Counters`` a checked checkpoint header holds (for ``_core.Store`` restore)."""
    c = _core.Counters()
    for k in SCHEMA["counters"][1]:
        setattr(c, k, header["counters"][k])
    return c
