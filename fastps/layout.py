"""ParamLayout: where each named tensor of a model lives in the store's flat float32 vector.

Each tensor starts on a 64-byte boundary (16 floats), so a tensor never shares a cache line with
its neighbour; the padding between tensors holds zeros and receives zero gradients.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

ALIGN_ELEMS = 16  # 64 bytes of float32


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    offset: int  # first element in the flat vector

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def end(self) -> int:
        return self.offset + self.numel


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of every tensor in the flat vector; ``size`` includes padding."""

    specs: tuple[ParamSpec, ...]
    size: int

    @classmethod
    def from_shapes(cls, shapes: Iterable[tuple[str, Iterable[int]]]) -> ParamLayout:
        specs, offset, seen = [], 0, set()
        for name, shape in shapes:
            if name in seen:
                raise ValueError(f"ParamLayout: the name {name!r} appears twice")
            seen.add(name)
            spec = ParamSpec(name, tuple(int(d) for d in shape), offset)
            specs.append(spec)
            offset = -(-spec.end // ALIGN_ELEMS) * ALIGN_ELEMS
        if not specs:
            raise ValueError("ParamLayout: no tensors (a model without parameters?)")
        return cls(tuple(specs), max(specs[-1].end, 1))

    @classmethod
    def from_module(cls, module: Any) -> ParamLayout:
        """The layout of ``module.named_parameters()`` (trainable or not), in that order."""
        return cls.from_shapes((n, p.shape) for n, p in module.named_parameters())

    def __getitem__(self, name: str) -> ParamSpec:
        for s in self.specs:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def flatten(self, tensors: Mapping[str, Any], out: np.ndarray | None = None) -> np.ndarray:
        """One float32 vector holding ``tensors`` (numpy arrays or torch tensors) at their
        offsets, zeros in the padding. Every name of the layout must be present with its shape."""
        if out is None:
            out = np.zeros(self.size, np.float32)
        elif out.shape != (self.size,) or out.dtype != np.float32:
            raise ValueError(f"flatten: out must be float32 of shape ({self.size},)")
        for s in self.specs:
            if s.name not in tensors:
                raise KeyError(f"flatten: no tensor named {s.name!r}")
            t = tensors[s.name]
            if hasattr(t, "detach"):
                t = t.detach().to("cpu", copy=False).float().numpy()
            t = np.asarray(t, np.float32)
            if tuple(t.shape) != s.shape:
                raise ValueError(
                    f"flatten: {s.name} has shape {tuple(t.shape)}, expected {s.shape}"
                )
            out[s.offset : s.end] = t.reshape(-1)
        return out

    def unflatten(self, flat: Any) -> dict[str, Any]:
        """Views of ``flat`` (numpy or torch) shaped like each tensor; no copies."""
        if len(flat) != self.size:
            raise ValueError(f"unflatten: flat has {len(flat)} elements, expected {self.size}")
        return {s.name: flat[s.offset : s.end].reshape(s.shape) for s in self.specs}

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "specs": [[s.name, list(s.shape), s.offset] for s in self.specs]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ParamLayout:
        specs = tuple(ParamSpec(n, tuple(shape), off) for n, shape, off in data["specs"])
        return cls(specs, int(data["size"]))
