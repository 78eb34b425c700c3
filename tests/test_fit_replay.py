"""fit()'s coordination variants replayed: the test recomputes a run step by step from the seed
(each learner's mini-batches, the local steps, the exchanges through the store) with plain
torch / numpy and compares the store's final parameters with the replay. A variant whose rule
were wrong (a sum for an average, a missing fetch, another elastic rate, no momentum) ends
somewhere else."""

import functools
import itertools

import numpy as np
import pytest
import torch
from conftest import blobs

import fastps
from fastps.layout import ParamLayout
from fastps.train.fit import fit
from fastps.train.models import build

D, CLASSES, BS, SEED = 8, 3, 16, 5
# A seeded model: the store starts from it whatever the global torch RNG holds.
MODEL = functools.partial(build, "logreg", (D,), CLASSES, seed=3)
F32 = np.float32


@functools.cache
def _data(n=200):
    return blobs(n=n, d=D, classes=CLASSES, seed=1)  # n * 4 // 5 training examples


def _layout():
    return ParamLayout.from_module(MODEL())


def _init():
    m = MODEL()
    return _layout().flatten(dict(m.named_parameters()))


def _batches(rank, n, seed=SEED):
    """Learner ``rank``'s mini-batch indices, in fit's order: a permutation of the training set
    from default_rng([seed, rank]), cut into n // BS batches, then a new permutation."""
    rng = np.random.default_rng([seed, rank])
    nb = max(1, n // BS)
    order = rng.permutation(n)
    step = 0
    while True:
        j = step % nb
        if j == 0 and step:
            order = rng.permutation(n)
        yield order[j * BS : (j + 1) * BS]
        step += 1


def _grad(w, idx, ds):
    """The flat gradient of the mean cross-entropy at flat parameters ``w`` on batch ``idx``."""
    lay = _layout()
    (ws, bs) = lay.specs  # "1.weight", "1.bias" (index 0 is the Flatten)
    weight = torch.tensor(w[ws.offset : ws.end].reshape(ws.shape), requires_grad=True)
    bias = torch.tensor(w[bs.offset : bs.end], requires_grad=True)
    x = torch.from_numpy(ds.x_train[idx])
    y = torch.from_numpy(ds.y_train[idx])
    torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, weight, bias), y).backward()
    g = np.zeros(lay.size, F32)
    g[ws.offset : ws.end] = weight.grad.numpy().reshape(-1)
    g[bs.offset : bs.end] = bias.grad.numpy()
    return g


def _final(tmp_path, **kw):
    """(History, the store's parameters at the end of the run) of fit(MODEL, ...) on threads."""
    path = tmp_path / "end.ckpt"
    h = fit(MODEL, _data(), backend="thread", batch_size=BS, seed=SEED, checkpoint=path, **kw)
    with fastps.Store.load(path) as saved:
        return h, saved.read()


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.abs(want - _init()).max() > 1e-2  # the replayed run moved: the check has teeth


@pytest.mark.parametrize("learners", [1, 2])
def test_local_sgd_store_is_the_average_of_the_learners_round_models(tmp_path, learners):
    lr, tau, rounds = 0.2, 3, 6  # 18 local steps: past the 10 batches of an epoch
    h, got = _final(tmp_path, learners=learners, variant="local-sgd", local_steps=tau, lr=lr,
                    updates=rounds)  # fmt: skip
    ds, lr32 = _data(), F32(lr)
    streams = [_batches(r, len(ds.x_train)) for r in range(learners)]
    w = _init()
    for _ in range(rounds):
        deltas = []
        for r in range(learners):  # each learner starts its round from the last average
            x = w.copy()
            for _ in range(tau):
                x = x - lr32 * _grad(x, next(streams[r]), ds)
            deltas.append((w - x) / lr32)  # what it hands over; the store's step adds x - w
        w = w - lr32 * (sum(deltas) / F32(learners))
    _close(got, w)
    assert h.stats["clock"] == rounds
    assert all(ln["steps"] == tau * rounds for ln in h.learners)
    if learners == 2:  # the two learners' models really differ: a sum would land elsewhere
        assert np.abs(deltas[0] - deltas[1]).max() > 1e-2


def test_sync_two_learners_average_their_gradients_on_the_same_model(tmp_path):
    lr, updates = 0.2, 12
    h, got = _final(tmp_path, learners=2, variant="sync", lr=lr, updates=updates)
    ds, lr32 = _data(), F32(lr)
    streams = [_batches(r, len(ds.x_train)) for r in range(2)]
    w = _init()
    for _ in range(updates):
        gs = [_grad(w, next(s), ds) for s in streams]
        w = w - lr32 * ((gs[0] + gs[1]) / F32(2))
    _close(got, w)
    assert [u["versions"] for u in h.updates] == [[u, u] for u in range(updates)]


def test_downpour_follows_the_push_and_fetch_schedule(tmp_path):
    lr, n_push, n_fetch, pushes = 0.2, 2, 3, 7  # 14 local steps: past an epoch
    h, got = _final(tmp_path, learners=1, variant="downpour", n_push=n_push, n_fetch=n_fetch,
                    lr=lr, updates=pushes)  # fmt: skip
    ds, lr32 = _data(), F32(lr)
    batches = _batches(0, len(ds.x_train))
    w = _init()  # the store
    x = w.copy()  # the learner's local model
    acc = np.zeros_like(w)
    step = 0
    while step < n_push * pushes:
        g = _grad(x, next(batches), ds)
        acc += g
        x = x - lr32 * g  # a local step
        step += 1
        if step % n_push == 0:  # the gradient accrued since the last push
            w = w - lr32 * acc
            acc[:] = 0
        if step % n_fetch == 0:  # fetch: the local steps since the last push are dropped
            x = w.copy()
    _close(got, w)
    assert h.stats["clock"] == pushes and h.learners[0]["steps"] == n_push * pushes


def test_easgd_moves_centre_and_learner_toward_each_other_by_alpha(tmp_path):
    lr, tau, exchanges = 0.2, 2, 8
    h, got = _final(tmp_path, learners=1, variant="easgd", local_steps=tau, lr=lr,
                    updates=exchanges)  # fmt: skip
    alpha = F32(2 / (1 + 2))  # the default elastic rate 2 / (P + 2)
    ds, lr32 = _data(), F32(lr)
    batches = _batches(0, len(ds.x_train))
    centre = _init()
    x = centre.copy()
    for _ in range(exchanges):
        for _ in range(tau):
            x = x - lr32 * _grad(x, next(batches), ds)
        e = alpha * (x - centre)
        x = x - e  # the learner is pulled toward the centre...
        centre = centre + e  # ...and the centre toward the learner
    _close(got, centre)
    assert h.config["alpha"] == 2 / 3
    assert h.stats["clock"] == exchanges and h.learners[0]["steps"] == tau * exchanges


def test_async_momentum_is_torch_sgd_momentum(tmp_path):
    lr, mu, updates = 0.1, 0.9, 15
    h, got = _final(tmp_path, learners=1, variant="async", lr=lr, momentum=mu, updates=updates)
    ds = _data()
    model = MODEL()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mu, dampening=0.0)
    for idx in itertools.islice(_batches(0, len(ds.x_train)), updates):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(torch.from_numpy(ds.x_train[idx])), torch.from_numpy(ds.y_train[idx])
        )
        loss.backward()
        opt.step()
    want = _layout().flatten(dict(model.named_parameters()))
    _close(got, want)
    assert h.stats["clock"] == updates
    # The same batches without momentum end far from there: the momentum really acted.
    w = _init()
    for idx in itertools.islice(_batches(0, len(ds.x_train)), updates):
        w = w - F32(lr) * _grad(w, idx, ds)
    assert np.abs(w - want).max() > 1e-2


@pytest.mark.parametrize("variant, k", [("k-sync", 1), ("sync", 2)])
def test_k_sync_uses_k_fresh_gradients_and_accounts_for_every_one_handed_over(variant, k):
    # comm_delay opens a window between a learner's last look at the version and the hand-over,
    # so k-sync sees late gradients (computed on an overtaken model) that it must drop.
    updates = 40
    h = fit(MODEL, _data(), learners=2, variant=variant, k=k, backend="thread", lr=0.2,
            batch_size=BS, seed=SEED, updates=updates, comm_delay=0.001)  # fmt: skip
    assert [u["update"] for u in h.updates] == list(range(1, updates + 1))
    for u in h.updates:
        assert u["k"] == k and len(set(u["learners"])) == k  # K distinct learners...
        assert u["versions"] == [u["update"] - 1] * k  # ...each on the model of the last update
    c = h.coordinator
    sent = sum(ln["updates"] for ln in h.learners)
    assert sent == k * updates + c["dropped_late"] + c["after_end"]
    assert c["gradients"] == k * updates  # staleness is logged for the applied ones only
    assert h.stats["clock"] == updates
    if variant == "sync":
        assert c["dropped_late"] == 0 and c["after_end"] == 0
    else:  # the drop path really ran (about one gradient in two arrives late here)
        assert c["dropped_late"] > 0
