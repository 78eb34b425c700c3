"""The parameter store and learner handles: a Pythonic facade over fastps._core.

Everything that copies, applies or waits runs in C++ with the GIL released. This module only
normalises inputs (numpy arrays, torch CPU tensors, buffer-protocol and DLPack objects) and
checks arguments so that errors name what was wrong before anything changes.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import sys
from typing import Any

import numpy as np

from fastps import _core
from fastps import checkpoint as _ckpt
from fastps import step_size as _steps
from fastps import transfer as _transfer

MODES = ("locked", "hogwild", "leashed")
"""Consistency modes: lock per shard, no synchronisation (Hogwild!), Leashed-SGD."""

NAN_GUARDS = {
    "raise": _core.NanGuard.raise_,
    "skip": _core.NanGuard.skip,
    "off": _core.NanGuard.off,
}
"""What push does with a NaN or Inf in a gradient."""

_DEFAULT_SHARD_BYTES = 1 << 20  # one shard per MiB of parameters by default...
_DEFAULT_MAX_SHARDS = 16  # ...up to this many


def default_shards(size: int) -> int:
    """The shard count Store picks when none is given: one per MiB, between 1 and 16."""
    return max(1, min(_DEFAULT_MAX_SHARDS, size * 4 // _DEFAULT_SHARD_BYTES))


def _type_name(x: Any) -> str:
    t = type(x)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _check_cpu_tensor(api: str, arg: str, t: Any) -> None:
    if t.device.type != "cpu":
        raise ValueError(f"{api}: {arg} is on device {t.device}, expected a CPU tensor")
    if not t.is_contiguous():
        raise ValueError(f"{api}: {arg} is not contiguous (pass {arg}.contiguous())")


def _as_array(api: str, arg: str, x: Any) -> np.ndarray:
    """A zero-copy numpy view of a buffer-protocol or DLPack object."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (BufferError, TypeError, RuntimeError) as e:
            raise TypeError(
                f"{api}: cannot view {arg} ({_type_name(x)}) through DLPack: {e}"
            ) from e
    try:
        return np.asarray(memoryview(x))
    except TypeError:
        raise TypeError(
            f"{api}: {arg} must be a numpy array, a torch CPU tensor, or an object with the "
            f"buffer protocol or __dlpack__ (got {_type_name(x)})"
        ) from None


def _grad_view(grad: Any) -> tuple[np.ndarray, Any]:
    """(array, dtype override) for push: bfloat16 tensors travel as raw 16-bit views."""
    if _torch_tensor(grad):
        import torch

        _check_cpu_tensor("push", "grad", grad)
        t = grad.detach()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy(), _core.DType.bfloat16
        if t.dtype not in (torch.float32, torch.float16):
            raise TypeError(
                f"push: grad has dtype {t.dtype}, expected float32, float16 or bfloat16"
            )
        return t.numpy(), None
    return _as_array("push", "grad", grad), None


def _out_view(api: str, out: Any) -> np.ndarray:
    if _torch_tensor(out):
        import torch

        _check_cpu_tensor(api, "out", out)
        if out.dtype != torch.float32:
            raise TypeError(f"{api}: out has dtype {out.dtype}, expected float32")
        return out.detach().numpy()
    return _as_array(api, "out", out)


class LearnerHandle:
    """One learner's connection to a Store: pull parameters, push gradients.

    A handle remembers, per shard, the version its last pull read; a push measures staleness
    against it (tau = version at apply - version read). Use one handle per learner (thread or
    process); handles of one store may be used concurrently. Close it (or use ``with``) to free
    its place among the store's ``max_learners``.
    """

    __slots__ = ("_h", "_store", "_xfer")

    def __init__(self, handle: _core.Learner, store: Store) -> None:
        self._h = handle
        self._store = store
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
            if not _transfer.is_cuda(out):
                self._h.pull(_out_view("pull", out))
                return out
        return self._path().pull(out)

    def push(self, grad: Any) -> int:
        """Apply ``w -= eta(tau) * (grad + weight_decay * w)`` (with momentum when set).

        ``grad``: ``store.size`` contiguous elements of float32, float16 or bfloat16 (half
        precision is widened in the same pass), in host memory or a CUDA tensor. Nothing
        changes if the gradient is refused. Returns the number of shard updates not applied:
        dropped (leashed mode with persistence >= 0), or all of them when ``nan_guard="skip"``
        skipped the gradient. A CUDA gradient is copied D2H in chunks into pinned staging on
        this handle's copy stream (after the work queued on the caller's current stream), and
        the store applies chunk i while chunk i+1 is in flight; push returns when applied.
        """
        if self._xfer is None:  # the plain path: host memory (a numpy array can't be CUDA)
            if type(grad) is np.ndarray:
                return self._h.push(grad)
            if not _transfer.is_cuda(grad):
                arr, dtype = _grad_view(grad)
                return self._h.push(arr, dtype)
        return self._path().push(grad, self._store._s.config.nan_guard.name)

    def push_async(self, grad: Any) -> concurrent.futures.Future[int]:
        """``push`` on this handle's worker thread; returns a Future of its result.

        The caller may start its next forward pass at once, but must leave ``grad`` unchanged
        until the future is done. For a CUDA gradient the ready point is an event recorded on
        the caller's current stream now. The next push, pull or close of this handle waits for
        it first. A refused gradient's error is raised by ``future.result()``.
        """
        return self._path().push_async(grad, self._store._s.config.nan_guard.name)

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


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"Store: {name} must be a number (got {_type_name(value)})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Store: {name} must be finite (got {value})")
    return value


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"Store: {name} must be an integer (got {_type_name(value)})")
    return int(value)


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
        shared: put the whole store in the POSIX shared-memory segment with this name
            (created exclusively, mode 0600, unlinked on close) so other processes can
            ``Store.attach(name)``.
        max_learners: handles open at once; leashed mode reserves 2*max_learners+1 version
            slots per shard (pages are committed only when used).
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
        shared: str | None = None,
        max_learners: int = 16,
        staleness_bins: int = 64,
    ) -> None:
        init_arr = self._init_array(init)
        if size is None:
            if init_arr is None:
                raise ValueError("Store: give size or init (got neither)")
            size = init_arr.size
        size = _check_int("size", size)
        if size < 1:
            raise ValueError(f"Store: size must be at least 1 (got {size})")
        if init_arr is not None and init_arr.size != size:
            raise ValueError(f"Store: init has {init_arr.size} elements, expected size={size}")
        if not isinstance(mode, str):
            raise TypeError(f"Store: mode must be a string (got {_type_name(mode)})")
        if mode not in MODES:
            raise ValueError(f"Store: mode must be one of {', '.join(MODES)} (got {mode!r})")
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"Store: nesterov must be a bool (got {_type_name(nesterov)})")
        if shared is not None and not isinstance(shared, str):
            raise TypeError(
                f"Store: shared must be a string name or None (got {_type_name(shared)})"
            )
        if shared == "":  # the core reads "" as "private"
            raise ValueError("Store: shared name must have 1 to 200 characters (got 0)")
        cfg = _core.StoreConfig()
        cfg.size = size
        cfg.shards = default_shards(size) if shards is None else self._nonneg("shards", shards)
        cfg.mode = getattr(_core.Mode, mode)
        policy = _steps.as_policy(step_size)
        if lr is None:
            lr = policy.lr if policy.lr is not None else 0.01
        elif policy.lr is not None and float(np.float32(policy.lr)) != float(np.float32(lr)):
            raise ValueError(f"Store: lr={lr} disagrees with the step_size's lr={policy.lr}")
        cfg.lr = _check_number("lr", lr)
        if cfg.lr < 0:
            raise ValueError(f"Store: lr must be finite and >= 0 (got {lr})")
        cfg.momentum = _check_number("momentum", momentum)
        cfg.nesterov = bool(nesterov)
        cfg.weight_decay = _check_number("weight_decay", weight_decay)
        cfg.persistence = _check_int("persistence", persistence)
        if cfg.persistence < -1:
            raise ValueError(
                f"Store: persistence must be -1 (never drop) or >= 0 (got {persistence})"
            )
        cfg.max_learners = self._nonneg("max_learners", max_learners)
        cfg.staleness_bins = self._nonneg("staleness_bins", staleness_bins)
        if nan_guard not in NAN_GUARDS:
            raise ValueError(
                f"Store: nan_guard must be one of {', '.join(NAN_GUARDS)} (got {nan_guard!r})"
            )
        cfg.nan_guard = NAN_GUARDS[nan_guard]
        if cfg.max_learners < 1:
            raise ValueError(f"Store: max_learners must be in [1, 1024] (got {cfg.max_learners})")
        self.metadata: Any = None
        """What ``save(metadata=...)`` stored, for a store made by ``Store.load``."""
        self.layout: Any = None
        """The ParamLayout of the model in the store, when fastps.torch.store_from made it."""
        self._policy = policy.bind(cfg.lr, cfg.max_learners)
        self._policy._native(cfg.step)
        self._s = _core.Store.create(cfg, init_arr, "" if shared is None else shared)
        if isinstance(self._policy, _steps.Hook) and self._policy.fn is not None:
            self._s.set_step_hook(self._policy.fn)

    @staticmethod
    def _nonneg(name: str, value: Any) -> int:
        v = _check_int(name, value)
        if v < 0 or v >= 2**32:
            raise ValueError(f"Store: {name} must be a non-negative 32-bit integer (got {v})")
        return v

    @staticmethod
    def _init_array(init: Any) -> np.ndarray | None:
        if init is None:
            return None
        if _torch_tensor(init):
            init = init.detach().cpu().numpy()
        arr = np.asarray(init)
        if arr.ndim != 1:
            raise ValueError(f"Store: init must be 1-D (got shape {arr.shape})")
        if arr.dtype.kind not in "fiu" or arr.dtype.kind == "f" and arr.dtype.itemsize > 8:
            raise TypeError(f"Store: init has dtype {arr.dtype}, expected real numbers")
        return np.ascontiguousarray(arr, dtype=np.float32)

    @classmethod
    def attach(cls, name: str, *, step_size: Any = None) -> Store:
        """Attach to the shared store ``name`` created (by this user) in another process.

        The step-size policy comes with the store, except a Python callable, which lives in
        one process: pass the same callable as ``step_size`` here.
        """
        if not isinstance(name, str):
            raise TypeError(f"attach: name must be a string (got {_type_name(name)})")
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
        leashed modes). The file is written to a temporary name, fsynced and renamed into
        place, so a crash mid-save leaves the previous checkpoint intact. ``metadata``: any
        JSON-serialisable value, returned as ``store.metadata`` by ``Store.load``.
        """
        _ckpt.save(self, path, metadata)

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

        A truncated, corrupted (checksum), wrong-version file, or one whose layout disagrees
        with ``size`` / ``shards`` when given, raises ValueError before any store exists.
        ``mode``, ``shared``, ``max_learners`` and ``nan_guard`` may differ from the saved
        store; a Python-callable step size must be given again as ``step_size``.
        """
        header, params, momentum = _ckpt.read(path)
        c = header["config"]
        for name, want in (("size", size), ("shards", shards)):
            if want is not None and c[name] != want:
                raise ValueError(
                    f"load: {os.fspath(path)} has {name}={c[name]}, expected {want} (wrong layout)"
                )
        step = c["step"]
        if step["kind"] == "hook":
            if not callable(step_size):
                raise ValueError(
                    f"load: {os.fspath(path)} was saved with a Python step_size hook; pass it "
                    "again as step_size="
                )
            policy = step_size
        else:
            if step_size is not None:
                raise ValueError("load: step_size is only for checkpoints saved with a hook")
            sc = _core.StepConfig()
            sc.kind = getattr(_core.StepKind, step["kind"])
            for k in _ckpt._STEP_FIELDS:
                setattr(sc, k, step[k])
            policy = _steps.from_native(sc, c["lr"])
        store = cls(
            c["size"], shards=c["shards"], mode=mode or c["mode"], lr=c["lr"],
            step_size=policy, momentum=c["momentum"], nesterov=c["nesterov"],
            weight_decay=c["weight_decay"], persistence=c["persistence"],
            nan_guard=nan_guard or c["nan_guard"], shared=shared,
            max_learners=max_learners or c["max_learners"], staleness_bins=c["staleness_bins"],
        )  # fmt: skip
        try:
            if [list(r) for r in store.shard_ranges()] != header["shard_ranges"]:
                raise ValueError(
                    f"load: {os.fspath(path)} has shard ranges this build does not make"
                )
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
            self._s.read(_out_view("read", out))
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
        """The shared-memory name, or None for a private store."""
        return self._s.name or None

    @property
    def step_size(self) -> _steps.StepSize:
        """The step-size policy bound to this store's lr: ``store.step_size.eta(tau, hist)``
        is what the native path applies."""
        return self._policy

    @property
    def config(self) -> dict[str, Any]:
        c = self._s.config
        return {
            "size": c.size, "shards": c.shards, "mode": c.mode.name, "lr": c.lr,
            "momentum": c.momentum, "nesterov": c.nesterov, "weight_decay": c.weight_decay,
            "persistence": c.persistence, "nan_guard": c.nan_guard.name.rstrip("_"),
            "max_learners": c.max_learners,
            "staleness_bins": c.staleness_bins, "step_size": self._policy,
        }  # fmt: skip

    def shard_ranges(self) -> list[tuple[int, int]]:
        """[begin, end) element range of every shard."""
        return [self._s.shard_range(s) for s in range(self.shards)]

    # -- lifetime --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._s.closed

    def close(self) -> None:
        """Close this store object; the creator of a shared store also unlinks its name.

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
                "Store: a private store cannot be pickled; create it with shared='name' so "
                "other processes can attach to it"
            )
        return (Store.attach, (self.name,))

    def __repr__(self) -> str:
        where = f", shared={self.name!r}" if self.name else ""
        state = ", closed" if self.closed else ""
        return f"fastps.Store(size={self.size}, shards={self.shards}, mode={self.mode!r}{where}{state})"


SHM_DIR = "/dev/shm"
_SHM_PREFIX = "fastps."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


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
            raise TypeError(f"cleanup: name must be a string (got {_type_name(name)})")
        info = _core.Store.inspect(name)  # validates the name and the owner
        if not info.is_store and not force:
            raise RuntimeError(
                f"cleanup: '{name}' is not a fastps store; pass force=True to remove it"
            )
        if info.is_store and _pid_alive(info.creator_pid) and not force:
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
        if info.is_store and not _pid_alive(info.creator_pid):
            try:
                os.unlink(os.path.join(SHM_DIR, entry))
                removed.append(seg)
            except FileNotFoundError:  # another cleanup got there first
                pass
    return removed
