"""Small reference models (torch) for training on the store, built with a seeded initialisation.

Each builder takes the data set's ``input_shape`` (C, H, W) and number of ``classes`` and returns
an ``nn.Sequential`` whose parameters depend only on ``seed``: the global torch RNG is neither
read nor advanced (the builder runs in a forked RNG).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

MODELS = ("lenet", "logreg", "mlp")

_M = TypeVar("_M", bound=nn.Module)


def _seeded(seed: int, make: Callable[[], _M]) -> _M:
    with torch.random.fork_rng(devices=[]):  # CPU RNG only; restored on exit
        torch.manual_seed(seed)
        return make()


def _check(api: str, input_shape: Sequence[int], classes: int) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"{api}: input_shape must be positive sizes (got {tuple(input_shape)})")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError(f"{api}: classes must be an int >= 2 (got {classes!r})")
    return shape


def mlp(
    input_shape: Sequence[int],
    classes: int,
    *,
    hidden: Sequence[int] = (128, 128, 128),
    seed: int = 0,
) -> nn.Sequential:
    """Flatten, then ``Linear + ReLU`` per hidden width, then a linear head: 784-128-128-128-10
    on MNIST-like inputs (134,794 parameters)."""
    shape = _check("mlp", input_shape, classes)
    widths = [math.prod(shape), *(int(h) for h in hidden)]

    def make() -> nn.Sequential:
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], classes))
        return nn.Sequential(*layers)

    return _seeded(seed, make)


def lenet5(input_shape: Sequence[int], classes: int, *, seed: int = 0) -> nn.Sequential:
    """LeNet-5 with ReLU and max pooling: conv 6@5x5, pool 2, conv 16@5x5, pool 2, fc 120, 84,
    ``classes``. A 28x28 input is padded by 2 in the first convolution (the usual MNIST recipe,
    so both 1x28x28 and 3x32x32 reach 16x5x5 = 400 features); other sizes are not padded."""
    shape = _check("lenet5", input_shape, classes)
    if len(shape) != 3:
        raise ValueError(f"lenet5: input_shape must be (C, H, W) (got {shape})")
    c, h, w = shape
    pad = 2 if (h, w) == (28, 28) else 0
    fh, fw = (((s + 2 * pad - 4) // 2 - 4) // 2 for s in (h, w))  # two (conv 5x5, pool 2)
    if fh < 1 or fw < 1:
        raise ValueError(f"lenet5: input {c}x{h}x{w} is too small (expected H, W >= 16)")

    def make() -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * fh * fw, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, classes),
        )  # fmt: skip

    return _seeded(seed, make)


def logistic(input_shape: Sequence[int], classes: int, *, seed: int = 0) -> nn.Sequential:
    """Multinomial logistic regression: flatten + one linear layer (train with cross-entropy)."""
    shape = _check("logistic", input_shape, classes)
    n = math.prod(shape)
    return _seeded(seed, lambda: nn.Sequential(nn.Flatten(), nn.Linear(n, classes)))


_BUILDERS: dict[str, Callable[..., nn.Sequential]] = {
    "lenet": lenet5,
    "logreg": logistic,
    "mlp": mlp,
}


def build(name: str, input_shape: Sequence[int], classes: int, *, seed: int = 0) -> nn.Sequential:
    """Model ``name`` (one of ``MODELS``) for inputs of ``input_shape`` and ``classes`` labels."""
    if name not in _BUILDERS:
        raise ValueError(f"build: unknown model {name!r} (expected one of: {', '.join(MODELS)})")
    return _BUILDERS[name](input_shape, classes, seed=seed)
