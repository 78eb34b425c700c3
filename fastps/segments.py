"""Shared-memory segments of stores: find and remove the ones crashed runs left behind.

A shared store lives in ``/dev/shm/fastps.<name>``; its creator unlinks the name when it closes.
A creator that died leaves the segment; ``cleanup()`` removes such segments, judging whether
the creator still runs by the native liveness check (process id and start time, so a reused
process id does not pass for the creator).
"""

from __future__ import annotations

import os

from fastps import _core
from fastps.buffers import type_name

SHM_DIR = "/dev/shm"
_SHM_PREFIX = "fastps."


def cleanup(name: str | None = None, *, force: bool = False) -> list[str]:
    """Remove shared stores left behind by crashed runs; returns the names removed.

    Without ``name``: every segment of this user named ``fastps.*`` whose creator process is
    gone (other users' segments and non-store files are left alone). With ``name``: that store
    only; it raises if the name is unsafe (ValueError), the segment belongs to another user
    (ValueError) or its creator is still running (RuntimeError, unless ``force``). Processes
    that still have a removed store attached keep using it; only the name goes.
    """
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"cleanup: name must be a string (got {type_name(name)})")
        info = _core.Store.inspect(name)  # validates the name and the owner
        if not info.is_store and not force:
            raise RuntimeError(
                f"cleanup: '{name}' is not a fastps store; pass force=True to remove it"
            )
        if info.is_store and info.creator_alive and not force:
            raise RuntimeError(
                f"cleanup: store '{name}' is still open in its creator (pid {info.creator_pid}); "
                "close it there, or pass force=True"
            )
        os.unlink(os.path.join(SHM_DIR, _SHM_PREFIX + name))
        return [name]
    removed: list[str] = []
    uid = os.geteuid()
    try:
        entries = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.startswith(_SHM_PREFIX):
            continue
        seg = entry[len(_SHM_PREFIX) :]
        try:
            if os.stat(os.path.join(SHM_DIR, entry)).st_uid != uid:
                continue
            info = _core.Store.inspect(seg)
        except (ValueError, RuntimeError, OSError):  # unsafe name, vanished, unreadable
            continue
        if info.is_store and not info.creator_alive:
            try:
                os.unlink(os.path.join(SHM_DIR, entry))
                removed.append(seg)
            except FileNotFoundError:  # another cleanup got there first
                pass
    return removed
