"""Issue 14, "rules that silently do nothing": a staleness-dependent step size in a coordinated
variant is refused (fit and `fastps train`), because the store would only ever see tau = 0."""

import pytest
from conftest import blobs

import fastps
from fastps.cli import main
from fastps.train.fit import fit
from fastps.train.options import check_staleness_policy
from fastps.train.variants import TABLE

LOGREG = "logreg"
STALENESS_POLICIES = [
    fastps.Inverse(),
    fastps.Exponential(beta=0.5),
    fastps.TailTau(),
    fastps.StalenessDistance(c=1.0, eta_max=0.1),
    lambda tau, stats: 0.1 / (1 + tau),
]
SYNC_LIKE = ["sync", "k-sync", "k-batch-sync", "adasync"]
ASYNC_LIKE = ["k-async", "k-batch-async"]


@pytest.mark.parametrize("name", SYNC_LIKE + ASYNC_LIKE)
@pytest.mark.parametrize("policy", STALENESS_POLICIES, ids=lambda p: type(p).__name__)
def test_a_staleness_policy_is_refused_where_the_store_sees_tau_0(name, policy):
    why = "staleness 0 by construction" if name in SYNC_LIKE else "does not reach the store"
    with pytest.raises(ValueError, match=rf"fit: variant '{name}' .*{why}"):
        check_staleness_policy(TABLE[name], policy)


@pytest.mark.parametrize("policy", [None, fastps.Constant(), fastps.Constant(lr=0.5)])
def test_the_constant_step_is_what_coordinated_variants_take(policy):
    for row in TABLE.values():
        check_staleness_policy(row, policy)  # no error in any variant
    for policy in STALENESS_POLICIES:
        check_staleness_policy(TABLE["async"], policy)  # async: tau is real
        check_staleness_policy(TABLE["downpour"], policy)  # learners push themselves


def test_fit_refuses_before_any_learner_starts():
    with pytest.raises(ValueError, match=r"fit: variant 'k-async' averages stale gradients"):
        fit(LOGREG, blobs(), learners=3, variant="k-async", k=2, backend="thread",
            step_size=fastps.Inverse(), updates=20)  # fmt: skip
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
