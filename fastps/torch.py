"""torch integration: a module's parameters in a Store, and an optimizer that trains through it.

An existing training loop switches to fastps by changing two lines::

    store = fastps.torch.store_from(model, lr=0.05, mode="leashed")   # once, in the parent
    opt = fastps.torch.AsyncOptimizer(model, store)                   # was: torch.optim.SGD(...)
    for x, y in data:                                                 # unchanged
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()                          # push the gradient, pull the new parameters

AsyncOptimizer re-homes the module's parameters and gradients into two flat buffers laid out
like the store (ParamLayout), so a step copies nothing in Python: push reads the gradient
buffer, pull writes the parameter buffer, both in native code without the GIL.
"""

from __future__ import annotations

from typing import Any

import torch

from fastps.layout import ParamLayout
from fastps.store import LearnerHandle, Store


def store_from(model: torch.nn.Module, **store_kwargs: Any) -> Store:
    """A Store initialised from ``model``'s parameters, laid out by ``ParamLayout.from_module``
    (available as ``store.layout``). Every Store argument passes through."""
    layout = ParamLayout.from_module(model)
    init = layout.flatten(dict(model.named_parameters()))
    store = Store(init=init, **store_kwargs)
    store.layout = layout
    return store


class AsyncOptimizer:
    """One learner's optimizer: ``step()`` pushes the module's gradients to the store and pulls
    the fresh parameters into the module; ``zero_grad()`` zeroes the gradients in place.

    The optimizer rule itself (lr, momentum, weight decay, staleness-dependent step size) runs
    in the store. Create one per learner (thread or process), after the module is on its
    device (CPU or one GPU); it pulls the store's parameters into the module at once.
    Only parameters travel: buffers (BatchNorm's running statistics) stay with each module
    (fastps.train.fit shares the latest learner's with its evaluations).
    """

    def __init__(self, model: torch.nn.Module, store: Store) -> None:
        layout = ParamLayout.from_module(model)
        if layout.size != store.size:
            raise ValueError(
                f"AsyncOptimizer: the model needs {layout.size} store elements, the store has "
                f"{store.size} (create it with fastps.torch.store_from(model))"
            )
        params = dict(model.named_parameters())
        devices = {p.device for p in params.values()}
        if len(devices) > 1:
            raise ValueError(
                f"AsyncOptimizer: the model's parameters are on {len(devices)} devices "
                f"({', '.join(sorted(map(str, devices)))}); expected one"
            )
        device = devices.pop() if devices else torch.device("cpu")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"AsyncOptimizer: parameters on {device}; expected cpu or cuda")
        self.model = model
        self.store = store
        self.layout = layout
        self.device = device
        self.handle: LearnerHandle = store.learner()
        # On a GPU the flat buffers live there too: push and pull then take the chunked,
        # pipelined CUDA path (fastps/transfer.py) with no per-parameter copies.
        self.flat_params = torch.zeros(layout.size, device=device)
        self.flat_grads = torch.zeros(layout.size, device=device)
        self._params = []
        for spec in layout.specs:
            p = params[spec.name]
            view = self.flat_params[spec.offset : spec.end].view(spec.shape)
            view.copy_(p.detach())
            p.data = view  # the module now reads its weights from the flat buffer
            gview = self.flat_grads[spec.offset : spec.end].view(spec.shape)
            if p.grad is not None:
                gview.copy_(p.grad)
            p.grad = gview  # backward accumulates into the flat buffer, in place
            self._params.append((p, gview))
        self.handle.pull(self.flat_params)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero every gradient in place (one memset); ``set_to_none`` is accepted and ignored,
        since the gradients must stay views of the flat buffer."""
        self.flat_grads.zero_()

    def gather_grads(self) -> None:
        """Make ``flat_grads`` hold the module's current gradients (``step`` does this first).

        A caller that ran ``model.zero_grad()`` (set_to_none) or replaced ``.grad`` broke the
        views into the flat buffer: such gradients are copied in and the view restored, at most
        one copy per tensor. For callers that push ``flat_grads`` themselves."""
        for p, gview in self._params:
            g = p.grad
            if g is None:
                gview.zero_()
            elif g.data_ptr() != gview.data_ptr():
                gview.copy_(g)
            else:
                continue
            p.grad = gview

    def step(self) -> int:
        """Push the gradients, then pull the parameters. Returns the shard updates dropped."""
        self.gather_grads()
        dropped = self.handle.push(self.flat_grads)
        self.handle.pull(self.flat_params)
        return dropped

    def pull(self) -> None:
        """Refresh the module's parameters from the store without pushing."""
        self.handle.pull(self.flat_params)

    def close(self) -> None:
        self.handle.close()
