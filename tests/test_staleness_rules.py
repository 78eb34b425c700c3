"""Issue 14, "rules that silently do nothing": in sync, k-sync, k-batch-sync and adasync a
staleness-dependent step size is refused (fit and `fastps train`): the store would only ever see
tau = 0. In k-async and k-batch-async the coordinator backdates its push to the oldest gradient
of the update, so the store's policy and histogram see the gradients' true staleness."""

import functools
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import blobs

import fastps
from fastps.cli import main
from fastps.train.fit import fit
from fastps.train.options import check_staleness_policy
from fastps.train.variants import TABLE

LOGREG = functools.partial(torch.nn.Linear, 8, 3)  # the model of tests/test_fit.py
STALENESS_POLICIES = [
    fastps.Inverse(),
    fastps.Exponential(beta=0.5),
    fastps.TailTau(),
    fastps.StalenessDistance(c=1.0, eta_max=0.1),
    lambda tau, stats: 0.1 / (1 + tau),
]
SYNC_LIKE = ["sync", "k-sync", "k-batch-sync", "adasync"]
ASYNC_LIKE = ["k-async", "k-batch-async"]


@pytest.mark.parametrize("name", SYNC_LIKE)
@pytest.mark.parametrize("policy", STALENESS_POLICIES, ids=lambda p: type(p).__name__)
def test_a_staleness_policy_is_refused_where_staleness_is_0_by_construction(name, policy):
    with pytest.raises(ValueError, match=rf"fit: variant '{name}' .*staleness 0 by construction"):
        check_staleness_policy(TABLE[name], policy)


@pytest.mark.parametrize("name", ASYNC_LIKE)
def test_k_async_takes_staleness_policies_but_not_the_distance_rule(name):
    for policy in STALENESS_POLICIES:
        if isinstance(policy, fastps.StalenessDistance):
            with pytest.raises(ValueError, match=r"StalenessDistance needs that model"):
                check_staleness_policy(TABLE[name], policy)
        else:
            check_staleness_policy(TABLE[name], policy)  # the store sees the true tau


@pytest.mark.parametrize("policy", [None, fastps.Constant(), fastps.Constant(lr=0.5)])
def test_the_constant_step_is_what_coordinated_variants_take(policy):
    for row in TABLE.values():
        check_staleness_policy(row, policy)  # no error in any variant
    for policy in STALENESS_POLICIES:
        check_staleness_policy(TABLE["async"], policy)  # async: tau is real
        check_staleness_policy(TABLE["downpour"], policy)  # learners push themselves


def test_fit_refuses_before_any_learner_starts():
    with pytest.raises(ValueError, match=r"fit: variant 'k-async' .*StalenessDistance"):
        fit(LOGREG, blobs(), learners=3, variant="k-async", k=2, backend="thread",
            step_size=fastps.StalenessDistance(c=1.0, eta_max=0.1), updates=20)  # fmt: skip
    with pytest.raises(ValueError, match=r"fit: variant 'sync' applies only gradients"):
        fit(LOGREG, blobs(), learners=2, variant="sync", backend="thread",
            step_size=fastps.TailTau(), updates=20)  # fmt: skip


def test_fastps_train_says_it_as_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--variant", "k-sync", "--k", "2", "--step-size", "inverse"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert (
        "--step-size inverse: variant 'k-sync' applies only gradients computed on the current"
        in err
    )


@pytest.mark.parametrize("variant", ASYNC_LIKE)
def test_k_async_updates_reach_the_store_with_their_staleness(variant):
    """Before: the store's histogram stayed [60, 0, 0, ...] whatever the gradients' age. Now
    each update counts its oldest gradient's staleness, once per shard."""
    h = fit(LOGREG, blobs(), learners=3, variant=variant, k=2, backend="thread", lr=0.1,
            step_size=fastps.Inverse(), updates=60, batch_size=32, mode="locked")  # fmt: skip
    applied = Counter(u["tau_applied"] for u in h.updates)
    shards, hist = h.stats["shards"], h.stats["staleness_hist"]
    assert sum(hist) == len(h.updates) * shards == 60 * shards
    for tau, n in applied.items():
        assert hist[tau] == n * shards, (tau, hist[: max(applied) + 1], applied)
    assert sum(n for tau, n in applied.items() if tau > 0) > 0  # 3 learners, K=2: some stale


def test_backdate_moves_the_next_push_s_staleness_by_exactly_that():
    with fastps.Store(256, shards=2, mode="locked", lr=1.0, step_size=fastps.Inverse()) as st:
        a, b = st.learner(), st.learner()
        w = np.empty(256, np.float32)
        zero = np.zeros(256, np.float32)
        for _ in range(4):
            b.pull(w)
            b.push(zero)
        a.pull(w)  # a reads version 4 of each shard
        for _ in range(2):  # two updates by another writer: a's tau is now 2
            b.pull(w)
            b.push(zero)
        a.backdate(3)  # a's gradient was computed 3 updates before its pull: version 1
        assert [a.read_version(s) for s in range(2)] == [1, 1]
        before = st.read().copy()
        a.push(np.ones(256, np.float32))
        np.testing.assert_allclose(st.read(), before - 1 / (1 + 5), rtol=1e-6)  # Inverse
        assert st.stats()["staleness_hist"][5] == 2  # both shards at tau = 2 + 3


def test_backdate_refuses_and_changes_nothing():
    with fastps.Store(64, lr=1.0) as st:
        h = st.learner()
        with pytest.raises(ValueError, match=r"backdate: needs a pull first"):
            h.backdate(1)
        w = np.empty(64, np.float32)
        h.pull(w)
        with pytest.raises(
            ValueError, match=r"backdate: shard 0 was read at version 0, fewer than 1"
        ):
            h.backdate(1)
        with pytest.raises(ValueError, match=r"backdate: updates must be in \[0, 2\*\*63\)"):
            h.backdate(-1)
        with pytest.raises(TypeError, match=r"backdate: updates must be an integer"):
            h.backdate(1.5)
        h.push(np.zeros(64, np.float32))
        assert st.stats()["staleness_hist"][0] == 1  # the refused calls changed nothing
    with fastps.Store(64, step_size=fastps.StalenessDistance(c=1.0, eta_max=0.1)) as st:
        h = st.learner()
        h.pull(np.empty(64, np.float32))
        with pytest.raises(ValueError, match=r"backdate: the StalenessDistance step size needs"):
            h.backdate(1)
