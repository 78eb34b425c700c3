"""The parameter store and learner handles: a Pythonic facade over fastps._core.

Everything that copies, applies or waits runs in C++ with the GIL released. This module only
normalises inputs (numpy arrays, torch CPU tensors, buffer-protocol and DLPack objects) and
checks arguments so that errors name what was wrong before anything changes.
"""

from __future__ import annotations

import concurrent.futures
import os
import warnings
import weakref
from typing import Any

import numpy as np

from fastps import _core
from fastps import checkpoint as _ckpt
from fastps import config as _config
from fastps import step_size as _steps
from fastps import transfer as _transfer
from fastps.buffers import grad_view, init_array, is_cuda, out_view, type_name
from fastps.config import MODES, NAN_GUARDS, default_shards
from fastps.segments import auto_name, check_name, cleanup

__all__ = ["MODES", "NAN_GUARDS", "LearnerHandle", "Store", "cleanup", "default_shards"]


class LearnerHandle:
    """One learner's connection to a Store: pull parameters, push gradients.

    A handle remembers, per shard, the version its last pull read; a push measures staleness
    against it (tau = version at apply - version read). Use one handle per learner (thread or
    process); handles of one store may be used concurrently. Close it (or use ``with``) to free
    its place among the store's ``max_learners``.
    """

    __slots__ = ("_guard", "_h", "_store", "_xfer")

    def __init__(self, handle: _core.Learner, store: Store) -> None:
        self._h = handle
        self._store = store
        self._guard = _config.nan_guard_name(store._s.config)  # fixed for the store's life
        self._xfer: _transfer.TransferPath | None = None

    def pull(self, out: Any) -> Any:
        """Copy the parameters into ``out`` (contiguous, ``store.size`` elements).

        ``out`` is a float32 numpy array or torch tensor (or any writeable buffer / DLPack
        object), CPU or CUDA; it is written in place and returned. Blocks only on shard locks
        (locked mode). A CUDA tensor (float32, or float16/bfloat16, narrowed on the CPU) is
        filled by chunked H2D copies straight from store memory on this handle's copy stream;
        the call returns when they are complete, and the caller's current stream is ordered
        after them (no device-wide synchronisation).
        """
        if self._xfer is None:  # the plain path: host memory (a numpy array can't be CUDA)
            if type(out) is np.ndarray:
                self._h.pull(out)
                return out
            if not is_cuda(out):
                self._h.pull(out_view("pull", out))
                return out
        return self._path().pull(out)

    def push(self, grad: Any, *, dtype: str | None = None) -> int:
        """Apply ``w -= eta(tau) * (grad + weight_decay * w)`` (with momentum when set).

        ``grad``: ``store.size`` contiguous elements of float32, float16 or bfloat16 (half
        precision is widened in the same pass), in host memory or a CUDA tensor. Nothing
        changes if the gradient is refused. Returns the number of shard updates not applied:
        dropped (leashed mode with persistence >= 0), or all of them when ``nan_guard="skip"``
        skipped the gradient. A CUDA gradient is copied D2H in chunks into pinned staging on
        this handle's copy stream (after the work queued on the caller's current stream), and
        the store applies chunk i while chunk i+1 is in flight; push returns when applied.
        ``dtype="bfloat16"``: ``grad`` is a host array of 16-bit integers holding bfloat16 bits
        (numpy has no bfloat16; a torch bfloat16 tensor needs no ``dtype``).
        """
        if self._xfer is None or dtype is not None:  # the plain path: host memory
            if type(grad) is np.ndarray and dtype is None:
                return self._h.push(grad)
            if not is_cuda(grad):
                arr, native = grad_view("push", grad, dtype)
                return self._h.push(arr, native)
        return self._path().push(grad, self._guard)

    def push_async(self, grad: Any) -> concurrent.futures.Future[int]:
        """``push`` on this handle's worker thread; returns a Future of its result.

        The caller may start its next forward pass at once, but must leave ``grad`` unchanged
        until the future is done. For a CUDA gradient the ready point is an event recorded on
        the caller's current stream now. The next push, pull or close of this handle waits for
        it first. A refused gradient's error is raised by ``future.result()``.
        """
        return self._path().push_async(grad, self._guard)

    def configure_transfer(
        self,
        *,
        engine: str = "auto",
        chunk_bytes: int = 4 << 20,
        ring: int = 2,
        transfer_dtype: str | None = None,
        copy_delay_us: int = 0,
        record: bool = False,
    ) -> None:
        """Set how this handle moves data that is not in host memory.

        Args:
            engine: ``"auto"`` (CUDA tensors through the CUDA engine, host memory directly),
                ``"cuda"``, or ``"cpu"``: host arrays through the same chunked pipeline on a
                copy thread (to test or study the pipeline without a GPU).
            chunk_bytes: bytes per chunk (a multiple of 64; default 4 MiB).
            ring: staging buffers for push (>= 1; 2 double-buffers: one applied, one in flight).
            transfer_dtype: ``"float16"`` or ``"bfloat16"`` to halve the bytes moved: float32
                gradients are narrowed on their device before the copy, and float32 pulls are
                narrowed on the CPU and widened on the device.
            copy_delay_us: ``"cpu"`` engine only: a delay added to every chunk copy.
            record: keep a timeline of the last push (``transfer_timeline()``).
        """
        opts = _transfer.TransferOptions(
            engine, chunk_bytes, ring, transfer_dtype, copy_delay_us, record
        )
        if self._xfer is not None:
            self._xfer.close()
        self._xfer = _transfer.TransferPath(self._h, opts)

    def transfer_timeline(self) -> list[tuple[str, int, int, int, int]]:
        """The last pipelined push: ``(kind, chunk, buffer, start_ns, end_ns)`` per copy
        (CPU engine) and per apply, when configured with ``record=True``."""
        return [] if self._xfer is None else self._xfer.timeline()

    def _path(self) -> _transfer.TransferPath:
        if self._xfer is None:
            self._xfer = _transfer.TransferPath(self._h, _transfer.TransferOptions())
        return self._xfer

    def read_version(self, shard: int) -> int:
        """Version of ``shard`` read by the last pull (0 before the first pull)."""
        return self._h.read_version(shard)

    def backdate(self, updates: int) -> None:
        """Count the next push's staleness from ``updates`` versions before the last pull.

        For a writer that applies gradients computed elsewhere on older models (fit's
        coordinator in k-async and k-batch-async): every shard's read version goes back by
        ``updates``, so the push's tau, its step size and the staleness histogram count the
        gradient's true age. Needs a pull first; refused with StalenessDistance (it needs the
        older model itself) and beyond a shard's version 0 (ValueError, nothing changed).
        """
        self._h.backdate(_config.check_int("backdate", "updates", updates))

    def last_push_versions(self) -> list[int]:
        """Per shard, the version the last push created (0 where it was dropped or skipped)."""
        return self._h.last_push_versions

    @property
    def id(self) -> int:
        """Handle number within the store (learners start their passes at shard id % S)."""
        return self._h.id

    def close(self) -> None:
        """Give back this handle's learner slot (after a pending ``push_async``). Later calls
        raise RuntimeError."""
        if self._xfer is not None:
            self._xfer.close()
        self._h.close()

    def __enter__(self) -> LearnerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store:
    """A flat float32 parameter vector cut into shards, updated by learners asynchronously.

    Args:
        size: number of parameters (may be omitted when ``init`` is given).
        init: initial values, any 1-D array-like of real numbers (converted to float32);
            zeros when omitted.
        shards: number of contiguous, 64-byte-aligned shards (the unit of locking, versioning
            and publication). Default: one per MiB of parameters, 1 to 16.
        mode: ``"leashed"`` (Leashed-SGD: consistent and lock-free), ``"locked"`` (a lock per
            shard; ``shards=1`` is the single global lock of lock-based AsyncSGD) or
            ``"hogwild"`` (no synchronisation: torn reads and lost updates are intended).
        lr: step size eta0; default 0.01, or the lr a bound policy carries
            (``Projected.estimate`` returns one).
        step_size: eta(tau) per shard update: a policy from ``fastps.step_size`` (Constant,
            Inverse, Exponential, TailTau, StalenessDistance) or a callable
            ``(tau, stats) -> eta``. Default Constant. ``store.step_size`` is the bound copy.
        momentum, nesterov: server-side momentum (kept per shard; in
            leashed mode inside each published version). weight_decay: L2 term lambda*w.
        persistence: leashed mode: failed publication attempts tolerated before a gradient's
            shard update is dropped and counted; -1 retries forever.
        nan_guard: a gradient holding NaN or Inf is refused with ValueError (``"raise"``),
            skipped and counted in ``stats()["nonfinite_skipped"]`` (``"skip"``), or not
            checked (``"off"``: saves one read pass over the gradient). Checked before any
            shard changes.
        shared: put the whole store in a POSIX shared-memory segment so other processes can
            ``Store.attach(store.name)`` (or receive the pickled store): ``True`` for a unique
            generated name (``auto-<pid>-<hex>``), or a name (1 to 200 of A-Z a-z 0-9 . _ -).
            The segment is created exclusively, mode 0600, and unlinked when the creating
            process closes the store, drops it, or exits (a SIGKILLed creator leaves it for
            ``fastps.cleanup()`` or for reclaiming). A name that exists is reclaimed, with a
            warning, when its creator and its learner processes are all gone; a live one is
            refused (RuntimeError naming the creator's pid). ``None`` or ``False``: private.
        max_learners: handles open at once; leashed mode keeps 2*max_learners+5 version
            slots per shard (3*max_learners+5 with StalenessDistance), each a copy of the
            shard and its momentum: a shared store reserves them all in /dev/shm at creation;
            a private one commits a slot's pages when first used (``slots_touched``).
        staleness_bins: exact staleness counts for tau < staleness_bins, plus one overflow bin.
    """

    def __init__(
        self,
        size: int | None = None,
        *,
        init: Any = None,
        shards: int | None = None,
        mode: str = "leashed",
        lr: float | None = None,
        step_size: Any = None,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        persistence: int = -1,
        nan_guard: str = "raise",
        shared: str | bool | None = None,
        max_learners: int = 16,
        staleness_bins: int = 64,
    ) -> None:
        if shared is True:
            shared = auto_name()
        elif shared is None or shared is False:
            shared = ""  # the core reads "" as "private"
        elif isinstance(shared, str):
            check_name("Store", shared)
        else:
            raise TypeError(
                f"Store: shared must be a string name, True or None (got {type_name(shared)})"
            )
        init_arr = init_array("Store", init)
        if size is None:
            if init_arr is None:
                raise ValueError("Store: give size or init (got neither)")
            size = init_arr.size
        cfg, self._policy = _config.native_config(
            size, shards=shards, mode=mode, lr=lr, step_size=step_size, momentum=momentum,
            nesterov=nesterov, weight_decay=weight_decay, persistence=persistence,
            nan_guard=nan_guard, max_learners=max_learners, staleness_bins=staleness_bins,
        )  # fmt: skip
        if init_arr is not None and init_arr.size != cfg.size:
            raise ValueError(f"Store: init has {init_arr.size} elements, expected size={size}")
        self.metadata: Any = None
        """What ``save(metadata=...)`` stored, for a store made by ``Store.load``."""
        self.layout: Any = None
        """The ParamLayout of the model in the store, when fastps.torch.store_from made it."""
        self._s = _core.Store.create(cfg, init_arr, shared)
        if shared:
            # Closes (so unlinks) when this object is collected or the interpreter exits.
            weakref.finalize(self, self._s.close)
            if self._s.reclaimed_pid:
                warnings.warn(
                    f"Store: reclaimed stale shared segment '{shared}' "
                    f"(creator pid {self._s.reclaimed_pid} is gone)",
                    UserWarning,
                    stacklevel=2,
                )
        if isinstance(self._policy, _steps.Hook) and self._policy.fn is not None:
            self._s.set_step_hook(self._policy.fn)

    @classmethod
    def attach(cls, name: str, *, step_size: Any = None) -> Store:
        """Attach to the shared store ``name`` created (by this user) in another process.

        The step-size policy comes with the store, except a Python callable, which lives in
        one process: pass the same callable as ``step_size`` here.
        """
        if not isinstance(name, str):
            raise TypeError(f"attach: name must be a string (got {type_name(name)})")
        check_name("attach", name)
        self = cls.__new__(cls)
        self.metadata = None
        self.layout = None
        self._s = _core.Store.attach(name)
        cfg = self._s.config
        self._policy = _steps.from_native(cfg.step, cfg.lr)
        if step_size is not None:
            if cfg.step.kind != _core.StepKind.hook or not callable(step_size):
                raise ValueError(
                    "attach: step_size is only for a store whose step size is a Python callable; "
                    "other policies come with the store"
                )
            self._policy = _steps.Hook(fn=step_size, lr=cfg.lr)
            self._s.set_step_hook(step_size)
        return self

    # -- checkpoints -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, metadata: Any = None) -> None:
        """Write parameters, momentum, clock, versions and staleness histograms to ``path``.

        Safe while learners keep pushing: each shard is copied at one instant (locked and
        leashed modes). The file is written to a temporary name (``.NAME.HOST.PID.XXXX.tmp``),
        fsynced and renamed into place, so a crash mid-save leaves the previous checkpoint
        intact; the next save to ``path`` removes the temporaries of writers that died.
        ``metadata``: any JSON-serialisable value nesting at most 99 levels, returned as
        ``store.metadata`` by ``Store.load``. A folder that does not exist or cannot be
        written raises FileNotFoundError, PermissionError, NotADirectoryError or
        IsADirectoryError (``path`` is a folder) saying which, before anything is written.
        """
        _ckpt.save(self._s, path, metadata)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        size: int | None = None,
        shards: int | None = None,
        mode: str | None = None,
        shared: str | None = None,
        step_size: Any = None,
        max_learners: int | None = None,
        nan_guard: str | None = None,
    ) -> Store:
        """A new store holding the checkpoint at ``path``.

        The whole file is checked before any store exists: a truncated, corrupted (checksum),
        wrong-version file, a header that is not what a save writes (a missing key, a wrong
        type, a value out of range, a TAIL-tau table that is not finite), or a layout that
        disagrees with ``size`` / ``shards`` when given raises ValueError; a missing file, a
        folder or a file without read permission raises FileNotFoundError, IsADirectoryError
        or PermissionError saying which. ``mode``, ``shared``, ``max_learners`` and
        ``nan_guard`` may differ from the saved store (checked as ``Store(...)`` checks them);
        a Python-callable step size must be given again as ``step_size``.
        """
        header, params, momentum = _ckpt.read(path)
        c = header["config"]
        for name, want in (("size", size), ("shards", shards)):
            if want is not None and c[name] != want:
                raise ValueError(
                    f"load: {os.fspath(path)} has {name}={c[name]}, expected {want} (wrong layout)"
                )
        policy = _config.policy_from_header(c, step_size, "load", os.fspath(path))
        kwargs = _config.store_kwargs(c)
        for name, value in (("mode", mode), ("nan_guard", nan_guard),
                            ("max_learners", max_learners)):  # fmt: skip
            if value is not None:  # "" and 0 are checked (and refused) as Store checks them
                kwargs[name] = value
        store = cls(c["size"], shards=c["shards"], step_size=policy, shared=shared, **kwargs)
        try:
            store._s.load(params, momentum, _ckpt.counters_from(header))
        except BaseException:
            store.close()
            raise
        store.metadata = header["metadata"]
        return store

    # -- data ------------------------------------------------------------------------------

    def learner(self) -> LearnerHandle:
        """Open a learner handle (RuntimeError once ``max_learners`` are open)."""
        return LearnerHandle(self._s.learner(), self)

    def recover(self) -> int:
        """Recover what handles of dead processes held; returns how many handles.

        A learner process killed mid-push or mid-pull leaves its registration, and in leashed
        mode its pinned and half-written versions, behind. They are reclaimed here (lock-free,
        safe while other learners run), and also automatically by ``attach``, by ``learner()``
        when no place is free, and by a writer that finds no free version slot. Locked mode's
        shard locks are robust mutexes: a lock held by a dead process is taken over at once;
        ``stats()["torn_shards"]`` counts such takeovers, whose update may be partial.
        """
        return self._s.recover()

    def read(self, out: Any = None) -> Any:
        """A copy of the parameters (consistent per shard in locked and leashed modes).

        Writes into ``out`` when given (like ``LearnerHandle.pull``, without recording
        versions), else returns a new float32 numpy array.
        """
        if out is None:
            out = np.empty(self.size, np.float32)
            self._s.read(out)
        elif type(out) is np.ndarray:
            self._s.read(out)
        else:
            self._s.read(out_view("read", out))
        return out

    def stats(self) -> dict[str, Any]:
        """Counters: clock (pushes applied to every shard), pushes (accepted), shard_updates,
        dropped, cas_failures, slot_waits, lock_wait_s, bytes_applied (gradient bytes),
        learners (open handles), staleness_hist (exact bins then overflow), versions (per
        shard), mode, shards, size."""
        return self._s.stats()

    # -- description -----------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._s.config.size

    @property
    def shards(self) -> int:
        return self._s.config.shards

    @property
    def mode(self) -> str:
        return self._s.config.mode.name

    @property
    def name(self) -> str | None:
        """The shared-memory name (generated for ``shared=True``), or None for a private store."""
        return self._s.name or None

    def creator_alive(self) -> bool:
        """True while the process that created this store runs (its pid and start time; a
        zombie counts as gone); always True for a private store. Cheap (a ``kill(pid, 0)`` and
        one read of ``/proc/<pid>/stat``): a learner process may ask every few hundred ms and
        stop when its store's creator has died. RuntimeError once this object is closed."""
        return self._s.creator_alive()

    @property
    def step_size(self) -> _steps.StepSize:
        """The step-size policy bound to this store's lr: ``store.step_size.eta(tau, hist)``
        is what the native path applies."""
        return self._policy

    @property
    def config(self) -> dict[str, Any]:
        """Every argument of the store (``step_size`` as the bound policy)."""
        return _config.to_dict(self._s.config, self._policy)

    def shard_ranges(self) -> list[tuple[int, int]]:
        """[begin, end) element range of every shard."""
        return [self._s.shard_range(s) for s in range(self.shards)]

    # -- lifetime --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._s.closed

    def close(self) -> None:
        """Close this store object; the creator of a shared store also unlinks its name (only
        in the creating process: a child made by ``os.fork()`` that closes its copy does not).

        Handles opened from it raise RuntimeError afterwards. Idempotent.
        """
        self._s.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """A shared store pickles by name: unpickling attaches (e.g. in a spawned process)."""
        if self.name is None:
            raise TypeError(
                "Store: a private store cannot be pickled; create it with shared=True (or "
                "shared='name') so other processes can attach to it"
            )
        return (Store.attach, (self.name,))

    def __repr__(self) -> str:
        where = f", shared={self.name!r}" if self.name else ""
        state = ", closed" if self.closed else ""
        return f"fastps.Store(size={self.size}, shards={self.shards}, mode={self.mode!r}{where}{state})"
