"""torch integration: ParamLayout, store_from, AsyncOptimizer."""

import copy
import multiprocessing as mp

import numpy as np
import pytest
import torch
from conftest import assert_same_parameters, run_threads, train_side_by_side

import fastps
import fastps.torch as ft
from fastps.layout import ParamLayout


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3)
    )


def test_layout_offsets_are_aligned_and_round_trip_a_state_dict():
    model = mlp()
    layout = ParamLayout.from_module(model)
    assert layout.names == [n for n, _ in model.named_parameters()]
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert [s.shape for s in layout.specs] == shapes
    assert all(s.offset % 16 == 0 for s in layout.specs)
    for a, b in zip(layout.specs, layout.specs[1:]):
        assert a.end <= b.offset < a.end + 16
    assert layout.size == layout.specs[-1].end
    flat = layout.flatten(model.state_dict())
    views = layout.unflatten(flat)
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(views[name], p.detach().numpy())
    padding = np.ones(layout.size, bool)
    for s in layout.specs:
        padding[s.offset : s.end] = False
    assert np.all(flat[padding] == 0)
    assert ParamLayout.from_json(layout.to_json()) == layout


def test_layout_errors():
    with pytest.raises(ValueError, match=r"the name 'a' appears twice"):
        ParamLayout.from_shapes([("a", (2,)), ("a", (3,))])
    layout = ParamLayout.from_shapes([("a", (2, 3)), ("b", (4,))])
    with pytest.raises(KeyError, match=r"no tensor named 'b'"):
        layout.flatten({"a": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"flatten: a has shape \(3, 2\), expected \(2, 3\)"):
        layout.flatten({"a": np.zeros((3, 2)), "b": np.zeros(4)})
    with pytest.raises(ValueError, match=r"no tensors"):
        ParamLayout.from_module(torch.nn.ReLU())


def test_store_from_holds_the_module():
    model = mlp()
    store = ft.store_from(model, mode="locked", lr=0.1)
    np.testing.assert_array_equal(
        store.read(), store.layout.flatten(dict(model.named_parameters()))
    )


@pytest.mark.parametrize("opt", [dict(), dict(momentum=0.9, weight_decay=0.01),
                                 dict(momentum=0.9, nesterov=True)])  # fmt: skip
def test_one_learner_matches_torch_sgd(opt):
    x, y = torch.randn(16, 7), torch.randint(0, 3, (16,))
    ref, ours = mlp(), mlp()
    sgd = torch.optim.SGD(ref.parameters(), lr=0.05, **opt)
    store = ft.store_from(ours, lr=0.05, **opt)
    aopt = ft.AsyncOptimizer(ours, store)
    train_side_by_side([(x, y)] * 5, (ref, sgd), (ours, aopt))
    assert_same_parameters(ref, ours)
    np.testing.assert_array_equal(store.read(), aopt.flat_params.numpy())


def test_parameters_and_gradients_live_in_the_flat_buffers():
    model = mlp()
    store = ft.store_from(model, lr=0.1)
    opt = ft.AsyncOptimizer(model, store)
    lo, hi = opt.flat_params.data_ptr(), opt.flat_params.data_ptr() + 4 * store.size
    assert all(lo <= p.data_ptr() < hi for p in model.parameters())
    torch.nn.functional.mse_loss(model(torch.randn(4, 7)), torch.zeros(4, 3)).backward()
    glo = opt.flat_grads.data_ptr()
    assert all(glo <= p.grad.data_ptr() < glo + 4 * store.size for p in model.parameters())
    assert float(opt.flat_grads.abs().sum()) > 0


def test_a_training_loop_that_sets_grads_to_none_still_pushes_them():
    x = torch.randn(8, 7)
    a, b = mlp(), mlp()
    sa, sb = ft.store_from(a, lr=0.1), ft.store_from(b, lr=0.1)
    oa, ob = ft.AsyncOptimizer(a, sa), ft.AsyncOptimizer(b, sb)
    for _ in range(3):
        oa.zero_grad()
        b.zero_grad(set_to_none=True)  # a loop written for torch optimizers
        for m in (a, b):
            m(x).square().sum().backward()
        oa.step()
        ob.step()
    np.testing.assert_array_equal(sa.read(), sb.read())


def test_learner_threads_share_one_store_exactly():
    model = torch.nn.Linear(64, 64)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    store = ft.store_from(model, lr=1.0, mode="leashed")
    steps = 200

    def learner():
        m = copy.deepcopy(model)
        opt = ft.AsyncOptimizer(m, store)
        for _ in range(steps):
            opt.zero_grad()
            for p in m.parameters():
                p.grad.fill_(-1.0)  # a known gradient: each step adds exactly 1
            opt.step()

    run_threads(learner, 3)
    views = store.layout.unflatten(store.read())
    assert np.all(views["weight"] == 3 * steps) and np.all(views["bias"] == 3 * steps)


def _child(store, steps):
    m = torch.nn.Linear(4, 2)
    opt = ft.AsyncOptimizer(m, store)
    for _ in range(steps):
        opt.zero_grad()
        for p in m.parameters():
            p.grad.fill_(1.0)
        opt.step()


def test_learner_processes_train_a_shared_store(shm_name):
    model = torch.nn.Linear(4, 2)
    with ft.store_from(model, lr=0.5, shared=shm_name) as store:
        ctx = mp.get_context("spawn")
        ps = [ctx.Process(target=_child, args=(store, 10)) for _ in range(2)]
        for p in ps:
            p.start()
        for p in ps:
            p.join(120)
            assert p.exitcode == 0
        before = store.layout.flatten(dict(model.named_parameters()))
        mask = np.zeros(store.size, bool)
        for s in store.layout.specs:
            mask[s.offset : s.end] = True
        np.testing.assert_allclose(store.read()[mask], before[mask] - 0.5 * 20, rtol=1e-6)


def test_wrong_store_for_the_model():
    store = fastps.Store(10)
    with pytest.raises(ValueError, match=r"the model needs 18 store elements, the store has 10"):
        ft.AsyncOptimizer(torch.nn.Linear(4, 2), store)
