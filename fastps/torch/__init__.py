"""torch integration: a module's parameters in a store, and an optimizer that trains through it.

An existing training loop switches to fastps by changing two lines::

    store = fastps.torch.store_from(model, lr=0.05, mode="leashed")   # once, in the parent
    opt = fastps.torch.AsyncOptimizer(model, store)                   # was: torch.optim.SGD(...)
    for x, y in data:                                                 # unchanged
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()                          # push the gradient, pull the new parameters

``store_from`` shares the store by default (``shared=True``: a generated name), so the store
and the model can be passed to spawned learner processes as PyTorch's Hogwild example passes
its model. When learner processes close their optimizers (or exit), the parent's model
(``model.share_memory()``) holds the store's final parameters, in every mode.

Rooms: ``stores.py`` (store_from, the store's settings, the checks of a model against a
store), ``mirror.py`` (writing the store back into a shared model, the creator's liveness),
``optimizer.py`` (AsyncOptimizer, a ``torch.optim.Optimizer``).
"""

from fastps import extras

extras.require("torch", "fastps.torch")  # the optional dependency: one line naming its extra

from fastps.layout import ParamLayout  # noqa: E402
from fastps.torch.optimizer import AsyncOptimizer  # noqa: E402
from fastps.torch.stores import store_from  # noqa: E402

__all__ = ["AsyncOptimizer", "ParamLayout", "store_from"]
