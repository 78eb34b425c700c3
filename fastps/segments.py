"""Shared-memory segments of stores: find and remove the ones crashed runs left behind.

A shared store lives in ``/dev/shm/fastps.<name>``; its creator unlinks the name when it closes
or exits (only the creating process: a forked child that inherited the Store never unlinks).
A creator that died leaves the segment; ``cleanup()`` removes such segments, and creating a
store under the same name reclaims it, both judging whether the creator still runs by the
native liveness check (process id and start time, so a reused process id does not pass for
the creator; a zombie counts as gone). ``check_name`` is the name rule, ``auto_name`` makes
the unique names of ``Store(shared=True)``.
"""

from __future__ import annotations

import os
import secrets

from fastps import _core
from fastps.buffers import type_name

SHM_DIR = "/dev/shm"
_SHM_PREFIX = "fastps."
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_EXPECTED = "expected only A-Z a-z 0-9 . _ -"


def auto_name() -> str:
    """A fresh name for ``Store(shared=True)``: ``auto-<pid>-<12 random hex digits>``."""
    return f"auto-{os.getpid()}-{secrets.token_hex(6)}"


def check_name(api: str, name: str) -> None:
    """Raise ValueError unless ``name`` is a valid shared-store name: 1 to 200 characters of
    A-Z a-z 0-9 . _ - (the native rule, checked here first so that a NUL, a character that is
    not ASCII or a name that is not valid UTF-8 is named plainly before anything is created)."""
    if not 1 <= len(name) <= 200:
        raise ValueError(f"{api}: shared name must have 1 to 200 characters (got {len(name)})")
    for i, c in enumerate(name):
        if c in _NAME_CHARS:
            continue
        if c == "\0":
            raise ValueError(
                f"{api}: shared name {name!r} has a NUL character at index {i}; {_EXPECTED}"
            )
        if "\udc80" <= c <= "\udcff":  # os.fsdecode's stand-in for an undecodable byte
            raise ValueError(
                f"{api}: shared name {name!r} is not valid UTF-8 (byte 0x{ord(c) - 0xDC00:02x} "
                f"at index {i}); {_EXPECTED}"
            )
        raise ValueError(f"{api}: shared name {name!r} has the character {c!r}; {_EXPECTED}")


def cleanup(name: str | None = None, *, force: bool = False) -> list[str]:
    """Remove shared stores left behind by crashed runs; returns the names removed.

    Without ``name``: every segment of this user named ``fastps.*`` whose creator process is
    gone (a zombie, killed but not yet reaped, counts as gone; other users' segments, non-store
    files and names fastps cannot make, such as bytes that are not UTF-8, are skipped and the
    scan goes on). With ``name``: that store
    only; it raises if the name is unsafe (ValueError), the segment belongs to another user
    (ValueError) or its creator is still running (RuntimeError, unless ``force``). Processes
    that still have a removed store attached keep using it; only the name goes.
    """
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"cleanup: name must be a string (got {type_name(name)})")
        check_name("cleanup", name)
        info = _core.Store.inspect(name)  # validates the owner
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
            check_name("cleanup", seg)  # a name fastps never makes, or not even UTF-8: skip it
            if os.stat(os.path.join(SHM_DIR, entry)).st_uid != uid:
                continue
            info = _core.Store.inspect(seg)
        except (ValueError, TypeError, RuntimeError, OSError):  # bad name, vanished, unreadable
            continue
        if info.is_store and not info.creator_alive:
            try:
                os.unlink(os.path.join(SHM_DIR, entry))
                removed.append(seg)
            except FileNotFoundError:  # another cleanup got there first
                pass
    return removed
