"""The transfer path of a learner handle: push from and pull into GPU memory, chunked and
pipelined on copy streams (the algorithm is at the top of csrc/include/fastps/transfer.h).

``handle.push(grad)`` and ``handle.pull(out)`` take this path by themselves when given a CUDA
tensor; ``handle.configure_transfer(engine="cpu", ...)`` sends host arrays through the very same
pipeline on the CPU copy engine (a worker thread), which is how the pipeline is tested on
machines without a GPU. This module only normalises tensors into (address, dtype, length) and
keeps them alive; chunking, ordering and the applies run in C++ without the GIL.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastps import _core
from fastps.buffers import DTYPES, Buffer, describe, is_cuda, loaded_torch

ENGINES = ("auto", "cuda", "cpu")
"""Copy engines: ``auto`` (CUDA for CUDA tensors, the plain path for host memory), ``cuda``,
``cpu`` (host memory through the pipeline on a copy thread: for tests and experiments)."""

TRANSFER_DTYPES = (None, "float16", "bfloat16")


@dataclass(frozen=True)
class TransferOptions:
    """How a handle moves data that is not in host memory (see ``configure_transfer``)."""

    engine: str = "auto"
    chunk_bytes: int = 4 << 20
    ring: int = 2
    transfer_dtype: str | None = None
    copy_delay_us: int = 0
    record: bool = False

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(
                f"configure_transfer: engine must be one of {ENGINES} (got {self.engine!r})"
            )
        for name in ("chunk_bytes", "ring", "copy_delay_us"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"configure_transfer: {name} must be an integer (got {v!r})")
        if self.chunk_bytes < 64 or self.chunk_bytes % 64:
            raise ValueError(
                "configure_transfer: chunk_bytes must be a positive multiple of 64 "
                f"(got {self.chunk_bytes})"
            )
        if not 1 <= self.ring <= 64:
            raise ValueError(f"configure_transfer: ring must be 1..64 buffers (got {self.ring})")
        if not 0 <= self.copy_delay_us <= 10_000_000:
            raise ValueError(
                f"configure_transfer: copy_delay_us must be 0..1e7 (got {self.copy_delay_us})"
            )
        if self.transfer_dtype not in TRANSFER_DTYPES:
            raise ValueError(
                f"configure_transfer: transfer_dtype must be one of {TRANSFER_DTYPES} "
                f"(got {self.transfer_dtype!r})"
            )
        if self.copy_delay_us and self.engine != "cpu":
            raise ValueError("configure_transfer: copy_delay_us is for the 'cpu' engine only")


def _stream(device: int) -> int:
    return int(loaded_torch().cuda.current_stream(device).cuda_stream)


class TransferPath:
    """The transfer state of one learner handle: its options, its native pipelines (one per
    engine and device, made on first use), and the worker of ``push_async``."""

    def __init__(self, handle: Any, options: TransferOptions) -> None:
        self._handle = handle  # _core.Learner
        self.options = options
        self._native: dict[tuple[str, int], Any] = {}
        self._last: Any = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: concurrent.futures.Future[int] | None = None

    def wants(self, x: Any) -> bool:
        """True when ``x`` must travel through a pipeline rather than the plain host path."""
        return self.options.engine == "cpu" or is_cuda(x)

    def _pipeline(self, b: Buffer, api: str) -> Any:
        o = self.options
        if b.device >= 0:
            if o.engine == "cpu":
                raise ValueError(
                    f"{api}: a CUDA tensor needs the 'cuda' or 'auto' engine, this handle is "
                    "configured with engine='cpu'"
                )
            key = ("cuda", b.device)
        else:
            key = ("cpu", -1)
        t = self._native.get(key)
        if t is None:
            t = _core.Transfer(
                self._handle,
                key[0],
                max(key[1], 0),
                o.chunk_bytes,
                o.ring,
                o.copy_delay_us,
                o.record,
            )
            self._native[key] = t
        self._last = t
        return t

    def wait_pending(self) -> None:
        """Wait for a ``push_async`` still running (its exception is the future's)."""
        if self._pending is not None:
            concurrent.futures.wait([self._pending])
            self._pending = None

    def _narrowed(self, b: Buffer, api: str) -> Buffer:
        """The gradient in transfer_dtype (one conversion on its own device), when asked."""
        td = self.options.transfer_dtype
        if td is None or b.name != "float32":
            return b
        if b.device >= 0:
            torch = loaded_torch()

            return describe(api, "grad", b.owner.to(getattr(torch, td)), writeable=False)
        src = np.asarray(b.owner, np.float32).reshape(-1)  # contiguous: a view
        bits = np.empty(src.size, np.uint16)
        _core.narrow(bits, src, DTYPES[td])  # the conversion the pull path uses
        return Buffer(bits.ctypes.data, DTYPES[td], bits.size, bits, -1, td)

    def _check_finite(self, b: Buffer, nan_guard: str) -> int | None:
        """CUDA gradients are checked here (the native check reads host memory only)."""
        if nan_guard == "off" or b.device < 0:
            return None
        torch = loaded_torch()

        finite = torch.isfinite(b.owner)
        if bool(finite.all()):
            return None
        index = int((~finite).nonzero()[0, 0])
        return int(self._handle.refuse_nonfinite(index))

    def push(self, grad: Any, nan_guard: str) -> int:
        self.wait_pending()
        b = self._narrowed(describe("push", "grad", grad, writeable=False), "push")
        refused = self._check_finite(b, nan_guard)
        if refused is not None:
            return refused
        t = self._pipeline(b, "push")
        stream = _stream(b.device) if b.device >= 0 else None
        return int(t.push(b.ptr, b.dtype, b.n, stream))

    def push_async(self, grad: Any, nan_guard: str) -> concurrent.futures.Future[int]:
        self.wait_pending()
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, "fastps-push")
        try:
            b = self._narrowed(describe("push", "grad", grad, writeable=False), "push")
            refused = self._check_finite(b, nan_guard)
            t = self._pipeline(b, "push")
        except Exception as e:  # every refusal comes out of the future, as native ones do
            failed: concurrent.futures.Future[int] = concurrent.futures.Future()
            failed.set_exception(e)
            return failed
        event = None
        if refused is None and b.device >= 0:
            torch = loaded_torch()

            # Recorded now, on the caller's stream: the gradient as of this call. The worker
            # waits on this event only (not on later work the caller queues).
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(b.device))

        def run() -> int:
            if refused is not None:
                return refused
            if event is not None:
                event.synchronize()
            return int(t.push(b.ptr, b.dtype, b.n, None))

        self._pending = self._executor.submit(run)
        return self._pending

    def pull(self, out: Any) -> Any:
        self.wait_pending()
        b = describe("pull", "out", out, writeable=True)
        td = self.options.transfer_dtype
        if td is not None and b.name == "float32":
            tmp = self._half_like(b, td)
            self.pull(tmp)
            self._widen_into(out, tmp, b)
            return out
        t = self._pipeline(b, "pull")
        t.pull(b.ptr, b.dtype, b.n, _stream(b.device) if b.device >= 0 else 0)
        return out

    @staticmethod
    def _half_like(b: Buffer, td: str) -> Any:
        if td == "float16" and b.device < 0:
            return np.empty(b.n, np.float16)
        torch = loaded_torch()
        if torch is None:
            raise TypeError("pull: transfer_dtype='bfloat16' into host memory needs torch")

        device = b.owner.device if b.device >= 0 else "cpu"
        return torch.empty(b.n, dtype=getattr(torch, td), device=device)

    @staticmethod
    def _widen_into(out: Any, tmp: Any, b: Buffer) -> None:
        if b.device >= 0:
            out.copy_(tmp.view(out.shape))  # on the caller's stream, ordered after the copies
            return
        src = tmp.astype(np.float32) if isinstance(tmp, np.ndarray) else tmp.float().numpy()
        if isinstance(b.owner, np.ndarray):
            b.owner.reshape(-1)[:] = src
        else:  # a torch CPU tensor
            torch = loaded_torch()

            b.owner.view(-1).copy_(torch.from_numpy(src))

    def timeline(self) -> list[tuple[str, int, int, int, int]]:
        if self._last is None:
            return []
        return [tuple(e) for e in self._last.timeline()]  # type: ignore[misc]

    def close(self) -> None:
        self.wait_pending()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._native.clear()
