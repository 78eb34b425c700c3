"""AsyncOptimizer: a ``torch.optim.Optimizer`` whose step pushes to a store and pulls from it.

AsyncOptimizer re-homes the module's parameters and gradients into two flat buffers laid out
like the store (ParamLayout), so a step copies nothing in Python: push reads the gradient
buffer, pull writes the parameter buffer, both in native code without the GIL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from fastps.layout import ParamLayout
from fastps.torch import mirror, stores


def _named_params(model: Any) -> tuple[torch.nn.Module | None, dict[str, torch.Tensor]]:
    """(module or None, named parameters) of a module or an iterable of tensors."""
    if isinstance(model, torch.nn.Module):
        return model, dict(model.named_parameters())
    if isinstance(model, torch.Tensor) or not isinstance(model, Iterable):
        raise TypeError(
            f"AsyncOptimizer: the first argument must be the model (a torch.nn.Module) or its "
            f"parameters (got {type(model).__name__})"
        )
    params = list(model)
    for p in params:
        if isinstance(p, dict):
            raise TypeError(
                "AsyncOptimizer: parameter groups are not supported (every parameter takes the "
                "store's update); pass the model or model.parameters()"
            )
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"AsyncOptimizer: parameters must be tensors (got {type(p).__name__})")
    return None, {str(i): p for i, p in enumerate(params)}


def _check_store(store: Any) -> None:
    if not callable(getattr(store, "learner", None)) or not isinstance(
        getattr(store, "size", None), int
    ):
        raise TypeError(
            f"AsyncOptimizer: store must be a fastps.Store or fastps.ray.RayStore (got "
            f"{type(store).__name__}); make one with fastps.torch.store_from(model)"
        )


class AsyncOptimizer(torch.optim.Optimizer):
    """One learner's optimizer: ``step()`` pushes the module's gradients to the store and pulls
    the fresh parameters into the module; ``zero_grad()`` zeroes the gradients in place.

    ``model``: the module (or ``model.parameters()``, in the module's order); ``store``: a
    ``fastps.Store`` or ``fastps.ray.RayStore`` made by ``store_from(model)``.

    The update rule (momentum, weight decay, staleness-dependent step size) runs in the store,
    shared by every learner: its momentum buffer is one for all learners, not one per process.
    ``param_groups[0]`` shows the store's ``lr``, ``momentum``, ``weight_decay`` and
    ``nesterov``. Setting ``lr`` (by hand or with a ``torch.optim.lr_scheduler``) scales this
    learner's gradients by ``lr / store lr`` before each push (its weight-decay term too, from
    the parameters it pulled): a step of exactly that ``lr`` without momentum, and the
    gradient's share of the store's momentum scaled with momentum. Other learners keep theirs.
    ``momentum``, ``weight_decay`` and ``nesterov`` are the store's, fixed when it is created:
    giving or loading other values raises ValueError. ``state_dict()`` holds the groups only
    (the store's state is saved with ``store.save``).

    Create one per learner (thread or process), after the module is on its device (CPU or one
    GPU); it pulls the store's parameters into the module at once. When it closes (``close()``,
    collection, process exit), a model whose tensors are shared (``model.share_memory()``, or
    CUDA) receives the store's parameters, so the parent of learner processes finds the trained
    model in its own module after ``join``. Only parameters travel: buffers (BatchNorm's running
    statistics) stay with each module. A learner whose store's creator process has exited
    raises RuntimeError at its next step or pull.
    """

    def __init__(self, model: Any, store: Any, lr: float | None = None, *,
                 momentum: float | None = None, weight_decay: float | None = None,
                 nesterov: bool | None = None) -> None:  # fmt: skip
        module, params = _named_params(model)
        _check_store(store)
        stores.check_float32("AsyncOptimizer", params)
        layout = ParamLayout.from_shapes((n, p.shape) for n, p in params.items())
        if module is not None:
            stores.check_against_store(module, layout, store)
        if layout.size != store.size:
            raise ValueError(
                f"AsyncOptimizer: the model needs {layout.size} store elements, the store has "
                f"{store.size} (create it with fastps.torch.store_from(model))"
            )
        devices = {p.device for p in params.values()}
        if len(devices) > 1:
            raise ValueError(
                f"AsyncOptimizer: the model's parameters are on {len(devices)} devices "
                f"({', '.join(sorted(map(str, devices)))}); expected one"
            )
        device = devices.pop() if devices else torch.device("cpu")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"AsyncOptimizer: parameters on {device}; expected cpu or cuda")
        known = stores.settings(store)
        given = {"momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov}
        defaults = {"lr": known["lr"] if lr is None else lr}
        for key, value in given.items():
            _check_setting(key, value, known[key])
            defaults[key] = known[key] if value is None else value
        if lr is not None and not (isinstance(lr, (int, float)) and lr >= 0):
            raise ValueError(f"AsyncOptimizer: lr must be a number >= 0 (got {lr!r})")
        super().__init__(list(params.values()), defaults)
        self.model = module
        self.store = store
        self.layout = layout
        self.device = device
        self._known = known
        self._scratch: torch.Tensor | None = None
        self.handle: Any = store.learner()
        # On a GPU the flat buffers live there too: push and pull then take the chunked,
        # pipelined CUDA path (fastps/transfer.py) with no per-parameter copies.
        self.flat_params = torch.zeros(layout.size, device=device)
        self.flat_grads = torch.zeros(layout.size, device=device)
        originals = mirror.shared_originals(list(params.values()))
        self._params: list[tuple[torch.Tensor, torch.Tensor]] = []
        pairs = []
        for spec, orig in zip(layout.specs, originals):
            p = params[spec.name]
            view = self.flat_params[spec.offset : spec.end].view(spec.shape)
            view.copy_(p.detach())
            p.data = view  # the module now reads its weights from the flat buffer
            gview = self.flat_grads[spec.offset : spec.end].view(spec.shape)
            if p.grad is not None:
                gview.copy_(p.grad)
            p.grad = gview  # backward accumulates into the flat buffer, in place
            self._params.append((p, gview))
            if orig is not None:
                pairs.append((orig, view))
        self._ids = [id(p) for p, _ in self._params]
        self._ptrs = [p.data_ptr() for p, _ in self._params]
        self._finisher = mirror.Finisher(store, self.handle, self.flat_params, pairs)
        self._finalize = mirror.register(self, self._finisher)
        self._liveness = mirror.Liveness(store, stores.creator_pid(module, store))
        self.handle.pull(self.flat_params)

    # -- torch.optim.Optimizer -----------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero every gradient in place (one memset). The gradients stay zeroed views of the
        flat buffer with ``set_to_none`` too (the push reads them there): a parameter that
        backward does not reach pushes zeros, to which the store still applies weight decay
        and momentum."""
        self.flat_grads.zero_()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Push the gradients, then pull the parameters. With ``closure`` (re-evaluates the
        model and returns the loss) its loss is returned, else None; the shard updates the
        push dropped are ``last_dropped``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._liveness.check()
        self.gather_grads()
        self.last_dropped = self.handle.push(self._scaled_grads())
        self.handle.pull(self.flat_params)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the groups' ``lr`` (what a scheduler set); ``momentum``, ``weight_decay`` and
        ``nesterov`` must be the store's (ValueError before anything changes)."""
        groups = state_dict.get("param_groups", []) if isinstance(state_dict, dict) else []
        for g in groups:
            for key in ("momentum", "weight_decay", "nesterov"):
                _check_setting(key, g.get(key), self._known[key])
        super().load_state_dict(state_dict)

    # -- fastps ----------------------------------------------------------------------------

    def gather_grads(self) -> None:
        """Make ``flat_grads`` hold the module's current gradients (``step`` does this first).

        A caller that ran ``model.zero_grad()`` (set_to_none) or replaced ``.grad`` broke the
        views into the flat buffer: such gradients are copied in and the view restored, at most
        one copy per tensor. A parameter re-homed since (``model.double()``, ``.data = ...``)
        or a layer replaced raises RuntimeError: the store would never train it. For callers
        that push ``flat_grads`` themselves."""
        self._check_model()
        for i, (p, gview) in enumerate(self._params):
            if p.dtype != torch.float32 or p.data_ptr() != self._ptrs[i]:
                self._rehomed(i, p)
            g = p.grad
            if g is None:
                gview.zero_()
            elif g.data_ptr() != gview.data_ptr():
                gview.copy_(g)
            else:
                continue
            p.grad = gview

    def pull(self) -> None:
        """Refresh the module's parameters from the store without pushing."""
        self._liveness.check()
        self.handle.pull(self.flat_params)

    def close(self) -> None:
        """Write the store's parameters into a shared model (see the class), then close the
        handle. Idempotent."""
        self._finalize()

    def _scaled_grads(self) -> torch.Tensor:
        lr, store_lr = self.param_groups[0]["lr"], self._known["lr"]
        group = self.param_groups[0]
        for key in ("momentum", "weight_decay", "nesterov"):
            _check_setting(key, group[key], self._known[key])
        if lr is None or store_lr is None or lr == store_lr:
            return self.flat_grads
        if store_lr == 0:
            raise ValueError(f"AsyncOptimizer: lr {lr} cannot scale a store whose lr is 0")
        s = lr / store_lr
        if self._scratch is None:
            self._scratch = torch.empty_like(self.flat_grads)
        torch.mul(self.flat_grads, s, out=self._scratch)
        wd = self._known["weight_decay"] or 0.0
        if wd:  # the store adds wd * w at its lr: push (s - 1) * wd * w so the sum is s-scaled
            self._scratch.add_(self.flat_params, alpha=(s - 1.0) * wd)
        return self._scratch

    def _rehomed(self, i: int, p: torch.Tensor) -> None:
        """Raise for parameter ``i``, which is no longer the float32 view built into the buffer."""
        name = self.layout.specs[i].name
        if p.dtype != torch.float32:
            raise RuntimeError(
                f"AsyncOptimizer: parameter {name!r} became {p.dtype} after the optimizer was "
                "built; the store trains float32 (keep the model float32)"
            )
        raise RuntimeError(
            f"AsyncOptimizer: parameter {name!r} no longer lives in the optimizer's buffer "
            "(moved, or its .data replaced); build the optimizer after changing the model"
        )

    def _check_model(self) -> None:
        if self.model is not None and [id(p) for p in self.model.parameters()] != self._ids:
            raise RuntimeError(
                "AsyncOptimizer: the model's parameters changed after the optimizer was built "
                "(a replaced layer would never be trained); build the store and the optimizer "
                "after changing the model"
            )


def _check_setting(key: str, value: Any, known: Any) -> None:
    if value is None or known is None:
        return
    if (
        (bool(value) != bool(known))
        if key == "nesterov"
        else np.float32(value) != np.float32(known)
    ):
        raise ValueError(
            f"AsyncOptimizer: {key}={value!r}, but {key} lives in the store ({known!r}), shared "
            "by every learner and fixed when the store is created"
        )
