"""AsyncOptimizer as a torch.optim.Optimizer (param_groups, schedulers, state dicts, argument
errors) and a model that changed after store_from or after the optimizer was built."""

import numpy as np
import pytest
import torch
from conftest import assert_same_parameters

import fastps
import fastps.torch as ft


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def batches(n=6):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 7, generator=g), torch.randint(0, 3, (16,), generator=g))
            for _ in range(n)]  # fmt: skip


def run(model, opt, sched=None):
    for x, y in batches():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()


def test_it_is_an_optimizer_whose_groups_are_the_stores_settings():
    model = mlp()
    store = ft.store_from(model, lr=0.05, momentum=0.9, weight_decay=0.01, shared=None)
    opt = ft.AsyncOptimizer(model, store)
    assert isinstance(opt, torch.optim.Optimizer)
    (group,) = opt.param_groups
    assert {k: group[k] for k in ("lr", "momentum", "weight_decay", "nesterov")} == {
        "lr": pytest.approx(0.05), "momentum": pytest.approx(0.9),
        "weight_decay": pytest.approx(0.01), "nesterov": False}  # fmt: skip
    assert group["params"] == list(model.parameters())
    sd = opt.state_dict()
    assert sd["state"] == {} and sd["param_groups"][0]["params"] == [0, 1, 2, 3]


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_a_step_lr_scheduler_trains_like_torch_sgd_with_it(wd):
    ref, ours = mlp(), mlp()
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, weight_decay=wd)
    store = ft.store_from(ours, lr=0.1, weight_decay=wd, mode="locked", shared=None)
    opt = ft.AsyncOptimizer(ours, store)
    run(ref, sgd, torch.optim.lr_scheduler.StepLR(sgd, 1, gamma=0.5))
    run(ours, opt, torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**6)
    assert_same_parameters(ref, ours, rtol=1e-5, atol=1e-6)
    # the scheduler scales this learner's pushes; the store's own lr is unchanged
    assert store.config["lr"] == pytest.approx(0.1)


def test_state_dict_round_trip_carries_lr_and_refuses_other_momentum():
    model = mlp()
    store = ft.store_from(model, lr=0.05, momentum=0.9, shared=None)
    opt = ft.AsyncOptimizer(model, store)
    opt.param_groups[0]["lr"] = 0.01
    sd = opt.state_dict()
    other = ft.AsyncOptimizer(mlp(), ft.store_from(mlp(), lr=0.05, momentum=0.9, shared=None))
    other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.01
    sd["param_groups"][0]["momentum"] = 0.5
    with pytest.raises(ValueError, match=r"momentum=0.5, but momentum lives in the store \(0.9"):
        other.load_state_dict(sd)
    assert other.param_groups[0]["momentum"] == pytest.approx(0.9)  # nothing changed


def test_constructor_arguments():
    model = mlp()
    store = ft.store_from(model, lr=0.05, momentum=0.9, shared=None)
    opt = ft.AsyncOptimizer(model, store, lr=0.02)
    assert opt.param_groups[0]["lr"] == 0.02
    with pytest.raises(ValueError, match=r"momentum=0.5, but momentum lives in the store"):
        ft.AsyncOptimizer(mlp(), store, momentum=0.5)
    with pytest.raises(
        TypeError,
        match=r"store must be a fastps.Store or fastps.ray.RayStore "
        r"\(got NoneType\); make one with fastps.torch.store_from",
    ):
        ft.AsyncOptimizer(mlp(), None)
    with pytest.raises(TypeError, match=r"the first argument must be the model .* \(got int\)"):
        ft.AsyncOptimizer(3, store)
    with pytest.raises(TypeError, match=r"parameter groups are not supported"):
        ft.AsyncOptimizer([{"params": list(model.parameters())}], store)


def test_model_parameters_work_as_the_first_argument():
    a, b = mlp(), mlp()
    sa = ft.store_from(a, lr=0.1, shared=None)
    sb = ft.store_from(b, lr=0.1, shared=None)
    run(a, ft.AsyncOptimizer(a, sa))
    run(b, ft.AsyncOptimizer(b.parameters(), sb))
    np.testing.assert_array_equal(sa.read(), sb.read())


def test_load_state_dict_after_store_from_is_refused():
    model = mlp()
    store = ft.store_from(model, lr=0.1, shared=None)
    trained = mlp()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    model.load_state_dict(trained.state_dict())
    with pytest.raises(ValueError, match=r"the model's parameters changed after store_from"):
        ft.AsyncOptimizer(model, store)
    np.testing.assert_array_equal(model[0].weight.detach(), trained[0].weight.detach())


def test_a_layer_replaced_after_store_from_is_refused():
    model = mlp()
    store = ft.store_from(model, lr=0.1, shared=None)
    model[2] = torch.nn.Linear(5, 3)  # same shapes, other values
    with pytest.raises(ValueError, match=r"changed after store_from"):
        ft.AsyncOptimizer(model, store)
    model[2].weight = torch.nn.Parameter(torch.zeros(5, 3))  # another layout, the same size
    with pytest.raises(
        ValueError, match=r"the model's layout differs from the store's \(at 2.weight \(5, 3\)"
    ):
        ft.AsyncOptimizer(model, store)


def test_a_layer_replaced_after_the_optimizer_is_refused_at_the_next_step():
    model = mlp()
    opt = ft.AsyncOptimizer(model, ft.store_from(model, lr=0.1, shared=None))
    model[2] = torch.nn.Linear(5, 3)
    model(torch.randn(4, 7)).sum().backward()
    with pytest.raises(RuntimeError, match=r"the model's parameters changed after the optimizer"):
        opt.step()


def test_double_is_refused_before_and_after_the_optimizer():
    model = mlp()
    store = ft.store_from(model, lr=0.1, shared=None)
    opt = ft.AsyncOptimizer(model, store)
    model.double()
    with pytest.raises(RuntimeError, match=r"parameter '0.weight' became torch.float64"):
        opt.step()
    with pytest.raises(TypeError, match=r"parameter '0.weight' is torch.float64; the store trains"):
        ft.AsyncOptimizer(model, store)
    with pytest.raises(TypeError, match=r"store_from: parameter '0.weight' is torch.float64"):
        ft.store_from(model)


def test_the_creator_check_raises_at_most_every_quarter_second(monkeypatch):
    model = mlp()
    store = ft.store_from(model, lr=0.1)
    try:
        opt = ft.AsyncOptimizer(model, store)
        calls = []
        monkeypatch.setattr(store, "creator_alive", lambda: calls.append(1) or False)
        opt._liveness.alive = store.creator_alive
        opt._liveness.next_check = 0.0
        with pytest.raises(
            RuntimeError, match=r"the store's creator process \(pid \d+\) has exited"
        ):
            opt.step()
        before = store.stats()["pushes"]
        for _ in range(50):
            opt.step()  # within 0.25 s of the last check: not asked again
        assert len(calls) == 1 and store.stats()["pushes"] == before + 50
    finally:
        store.close()


def test_a_store_is_required_to_be_made_for_the_model():
    with pytest.raises(ValueError, match=r"the model needs 18 store elements, the store has 10"):
        ft.AsyncOptimizer(torch.nn.Linear(4, 2), fastps.Store(10))
