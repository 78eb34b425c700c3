"""Checkpoints of a Store: one self-checking file, written atomically.

Layout of a version-1 file (little endian)::

    b"FASTPSCK" | u32 format version | u32 0 | u64 header length | header (JSON, UTF-8)
    | parameters (float32) | momentum (float32, when the store has momentum) | u32 CRC-32

The CRC covers every byte before it. The header holds the configuration (mode, optimizer,
step-size policy, shard ranges), the counters (clock, pushes, per-shard versions and staleness
histograms, TAIL-tau state) and the caller's metadata. A save writes a temporary file in the same
folder, fsyncs it, renames it over ``path`` and fsyncs the folder, so a crash at any point leaves
either the old checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
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


def save(native: Any, path: str | os.PathLike[str], metadata: Any = None) -> None:
    """Write the native store ``native`` (a ``_core.Store``) to ``path`` atomically (see the
    module docstring)."""
    path = Path(path)
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
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
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """(header, params, momentum) of a checkpoint, checked; ValueError if it is not sound."""
    data = Path(path).read_bytes()
    where = f"load: {os.fspath(path)}"
    if len(data) < _PREFIX.size:
        raise ValueError(f"{where} is truncated ({len(data)} bytes)")
    magic, version, _, head_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"{where} is not a fastps checkpoint")
    if version != FORMAT_VERSION:
        raise ValueError(f"{where} has format version {version}, expected {FORMAT_VERSION}")
    head_end = _PREFIX.size + head_len
    try:
        header = json.loads(data[_PREFIX.size : head_end])
        n = int(header["config"]["size"])
        expected = head_end + 4 * n * len(header["arrays"]) + _CRC.size
    except (ValueError, KeyError, TypeError):  # cut inside the header, or a damaged one
        short = len(data) < head_end + _CRC.size
        raise ValueError(
            f"{where} is {'truncated' if short else 'corrupted'} (unreadable header)"
        ) from None
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "corrupted"
        raise ValueError(f"{where} is {what} ({len(data)} bytes, expected {expected})")
    (crc,) = _CRC.unpack_from(data, expected - _CRC.size)
    if zlib.crc32(memoryview(data)[: expected - _CRC.size]) != crc:
        raise ValueError(f"{where} is corrupted (checksum mismatch)")
    arrays = {
        name: np.frombuffer(data, np.float32, n, head_end + 4 * n * i)
        for i, name in enumerate(header["arrays"])
    }
    return header, arrays["params"], arrays.get("momentum")


def counters_from(header: dict[str, Any]) -> Any:
    """The ``_core.Counters`` a checkpoint header holds (for ``_core.Store`` restore)."""
    c = _core.Counters()
    for k, v in header["counters"].items():
        setattr(c, k, v)
    return c
