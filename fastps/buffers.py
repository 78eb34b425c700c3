"""User buffers to native ones: the one place that turns an array argument into memory.

Every entry point that takes a caller's array (``Store``, ``LearnerHandle``, the transfer path,
``fastps.ray``) goes through these functions, so a numpy array, a torch CPU or CUDA tensor, a
buffer-protocol or DLPack object is accepted, refused or described the same way everywhere,
with the same messages (``"<api>: <arg> ..."``). Nothing here copies data except where a
function says so; torch is never imported here unless the caller already imported it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastps import _core

DTYPES = {
    "float32": _core.DType.float32,
    "float16": _core.DType.float16,
    "bfloat16": _core.DType.bfloat16,
}
"""Element types a gradient may have (``push`` widens half precision in the same pass)."""


def type_name(x: Any) -> str:
    """``int`` for builtins, ``module.Class`` for anything else (for error messages)."""
    t = type(x)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def loaded_torch() -> Any:
    """The torch module where the caller has imported it, else None. The facade never imports
    torch itself: it meets torch only in the tensors a caller passes (so torch is loaded)."""
    return sys.modules.get("torch")


def is_torch(x: Any) -> bool:
    """True for a torch.Tensor (without importing torch)."""
    torch = loaded_torch()
    return torch is not None and isinstance(x, torch.Tensor)


def is_cuda(x: Any) -> bool:
    """True for a torch.Tensor in GPU memory."""
    return is_torch(x) and x.is_cuda


def _check_cpu_tensor(api: str, arg: str, t: Any) -> None:
    if t.device.type != "cpu":
        raise ValueError(f"{api}: {arg} is on device {t.device}, expected a CPU tensor")
    if not t.is_contiguous():
        raise ValueError(f"{api}: {arg} is not contiguous (pass {arg}.contiguous())")


def host_array(api: str, arg: str, x: Any) -> np.ndarray:
    """A zero-copy numpy view of a buffer-protocol or DLPack object."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (BufferError, TypeError, RuntimeError) as e:
            raise TypeError(f"{api}: cannot view {arg} ({type_name(x)}) through DLPack: {e}") from e
    try:
        return np.asarray(memoryview(x))
    except TypeError:
        raise TypeError(
            f"{api}: {arg} must be a numpy array, a torch CPU tensor, or an object with the "
            f"buffer protocol or __dlpack__ (got {type_name(x)})"
        ) from None


_FLATTEN = (
    "flatten a model's parameters with torch.nn.utils.parameters_to_vector(model.parameters()), "
    "or build the store with fastps.torch.store_from(model)"
)


def init_array(api: str, init: Any) -> np.ndarray | None:
    """Initial parameters as a contiguous float32 copy: any 1-D array-like of real numbers
    (numpy, torch on any device, lists); None stays None."""
    if init is None:
        return None
    if isinstance(init, Mapping):  # a state dict: named tensors, not one vector
        raise ValueError(
            f"{api}: init must be a flat 1-D vector (got a {type_name(init)}: a state dict? "
            f"{_FLATTEN})"
        )
    if is_torch(init):
        init = init.detach().cpu().numpy()
    arr = np.asarray(init)
    if arr.ndim != 1:
        hint = "pass init.ravel()" if arr.ndim > 1 else f"a {type_name(init)}: {_FLATTEN}"
        raise ValueError(f"{api}: init must be a flat 1-D vector (got shape {arr.shape}; {hint})")
    if arr.dtype.kind not in "fiu" or arr.dtype.kind == "f" and arr.dtype.itemsize > 8:
        raise TypeError(f"{api}: init has dtype {arr.dtype}, expected real numbers")
    return np.ascontiguousarray(arr, dtype=np.float32)


def grad_view(api: str, grad: Any, dtype: str | None = None) -> tuple[np.ndarray, Any]:
    """(host array, native dtype or None) of a gradient in host memory, zero-copy.

    bfloat16 has no numpy dtype: a torch bfloat16 tensor travels as its raw 16-bit view, and a
    16-bit integer numpy array is taken as bfloat16 bits when ``dtype="bfloat16"``. None lets
    the native call read the dtype of the array (float32 or float16; bfloat16 as said).
    """
    if dtype is not None and dtype != "bfloat16":
        raise ValueError(f"{api}: dtype must be None or 'bfloat16' (got {dtype!r})")
    if is_torch(grad):
        torch = loaded_torch()

        _check_cpu_tensor(api, "grad", grad)
        t = grad.detach()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy(), _core.DType.bfloat16
        if t.dtype not in (torch.float32, torch.float16) or dtype is not None:
            raise TypeError(
                f"{api}: grad has dtype {t.dtype}, expected float32, float16 or bfloat16"
            )
        return t.numpy(), None
    arr = host_array(api, "grad", grad)
    if dtype == "bfloat16":
        if arr.dtype not in (np.int16, np.uint16):
            raise TypeError(
                f"{api}: dtype='bfloat16' needs the bits as an int16 or uint16 array "
                f"(got {arr.dtype})"
            )
        return arr.view(np.uint16), _core.DType.bfloat16
    return arr, None


def out_view(api: str, out: Any) -> np.ndarray:
    """A writeable float32 host view of ``out`` (numpy array, torch CPU tensor, buffer)."""
    if is_torch(out):
        torch = loaded_torch()

        _check_cpu_tensor(api, "out", out)
        if out.dtype != torch.float32:
            raise TypeError(f"{api}: out has dtype {out.dtype}, expected float32")
        return out.detach().numpy()
    return host_array(api, "out", out)


def flat_out(api: str, out: Any, size: int) -> tuple[np.ndarray | None, Any]:
    """(flat float32 host view to write, None), or (None, flat CUDA tensor) for a GPU ``out``;
    checked for dtype, contiguity and ``size`` elements (for callers that fill ``out`` from
    several sources, as a Ray handle does)."""
    if is_torch(out):
        torch = loaded_torch()

        if out.dtype != torch.float32:
            raise TypeError(f"{api}: out has dtype {out.dtype}, expected float32")
        if not out.is_contiguous():
            raise ValueError(f"{api}: out is not contiguous (pass out.contiguous())")
        if out.numel() != size:
            raise ValueError(f"{api}: out has {out.numel()} elements, expected {size}")
        if out.device.type == "cpu":
            return out.detach().numpy().reshape(-1), None
        return None, out.detach().view(-1)
    arr = host_array(api, "out", out)
    if arr.dtype != np.float32:
        raise TypeError(f"{api}: out has dtype {arr.dtype}, expected float32")
    if arr.size != size:
        raise ValueError(f"{api}: out has {arr.size} elements, expected {size}")
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError(f"{api}: out must be C-contiguous and writeable")
    return arr.reshape(-1), None


def flat_grad(api: str, grad: Any, size: int, nan_guard: str) -> tuple[np.ndarray, str, bool]:
    """(flat host view, dtype name, all finite) of a gradient of ``size`` elements, checked as
    ``LearnerHandle.push`` checks it; a CUDA tensor is copied to the host (the one copy here).
    The dtype name is "float32", "float16" or "bfloat16" (then the view holds the raw bits).
    ``all finite`` is True without looking when ``nan_guard`` is "off"."""
    if is_torch(grad):
        torch = loaded_torch()

        t = grad.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if not t.is_contiguous():
            raise ValueError(f"{api}: grad is not contiguous (pass grad.contiguous())")
        if t.dtype == torch.bfloat16:
            arr, name = t.view(torch.int16).numpy(), "bfloat16"
            finite = nan_guard == "off" or bool(torch.isfinite(t).all())
        elif t.dtype in (torch.float32, torch.float16):
            arr, name = t.numpy(), str(t.dtype).removeprefix("torch.")
            finite = True
        else:
            raise TypeError(
                f"{api}: grad has dtype {t.dtype}, expected float32, float16 or bfloat16"
            )
    else:
        arr = host_array(api, "grad", grad)
        if arr.dtype not in (np.float32, np.float16):
            raise TypeError(
                f"{api}: grad has dtype {arr.dtype}, expected float32, float16 or bfloat16 "
                "(bfloat16 as a torch tensor)"
            )
        name, finite = arr.dtype.name, True
    if not arr.flags.c_contiguous:
        raise ValueError(f"{api}: grad is not contiguous")
    if arr.size != size:
        raise ValueError(f"{api}: grad has {arr.size} elements, expected {size}")
    arr = arr.reshape(-1)
    if name != "bfloat16" and nan_guard != "off":
        finite = bool(np.isfinite(arr).all())
    return arr, name, finite


@dataclass
class Buffer:
    """A tensor or array seen as raw memory: address, element dtype, length, and the owner."""

    ptr: int
    dtype: Any  # _core.DType
    n: int
    owner: Any
    device: int  # -1 for host memory
    name: str  # "float32", "float16" or "bfloat16"


def describe(api: str, arg: str, x: Any, *, writeable: bool) -> Buffer:
    """``x`` (host or CUDA, float32/float16/bfloat16, contiguous) as a Buffer."""
    if is_torch(x):
        torch = loaded_torch()

        if not x.is_contiguous():
            raise ValueError(f"{api}: {arg} is not contiguous (pass {arg}.contiguous())")
        name = str(x.dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise TypeError(
                f"{api}: {arg} has dtype {x.dtype}, expected float32, float16 or bfloat16"
            )
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{api}: {arg} is on device {x.device}, expected cpu or cuda")
        device = x.device.index if x.is_cuda else -1
        if device is None:
            device = torch.cuda.current_device()
        return Buffer(x.data_ptr(), DTYPES[name], x.numel(), x, device, name)
    a = host_array(api, arg, x)
    if not a.flags.c_contiguous:
        raise ValueError(f"{api}: {arg} is not C-contiguous (pass np.ascontiguousarray({arg}))")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{api}: {arg} is read-only, expected a writeable array")
    name = a.dtype.name
    if name not in DTYPES or a.dtype.byteorder == ">":
        raise TypeError(f"{api}: {arg} has dtype {a.dtype}, expected float32, float16 or bfloat16")
    return Buffer(a.ctypes.data, DTYPES[name], a.size, a, -1, name)
