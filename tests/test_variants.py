"""fastps.train.variants: the one table of variants that fit(), `fastps train` and the simulator
read; fastps.train.options: fit()'s checks and the run's budget; the backends' table."""

import math

import pytest

from fastps.train.backends import ProcessBackend, ThreadBackend, backend_class
from fastps.train.options import Budget, Options
from fastps.train.variants import (
    AVERAGING,
    CANCELLING,
    LOCAL,
    SIMULATED,
    TABLE,
    VARIANT_OPTIONS,
    VARIANTS,
    AsyncStep,
    AveragingStep,
    CoordinatedStep,
    DownpourStep,
    ElasticStep,
    variant,
)

FIT_DEFAULTS = dict(learners=4, variant="async", k=None, straggler=None, local_steps=None,
                    alpha=None, n_fetch=None, n_push=None, interval_s=None, time_budget_s=None,
                    comm_delay=0.0, eval_train=0, mode="leashed", step_size=None, lr=0.05,
                    momentum=0.0, batch_size=64, epochs=None, updates=None, seed=0,
                    backend="process", address=None, eval_every=None, evals=None,
                    checkpoint_every=None, checkpoint=None, resume_from=None, timeout_s=3600.0,
                    progress=None, devices=None, threads=None)  # fmt: skip


def check(**kw):
    return Options.check({}, **{**FIT_DEFAULTS, **kw})


def test_the_table_names_every_variant_once_with_its_family_and_options():
    assert VARIANTS == ("async", "sync", "k-sync", "k-batch-sync", "k-async", "k-batch-async",
                        "adasync", "local-sgd", "adacomm", "easgd", "downpour")  # fmt: skip
    families = {name: row.family for name, row in TABLE.items()}
    assert families == {"async": AsyncStep, "sync": CoordinatedStep, "k-sync": CoordinatedStep,
                        "k-batch-sync": CoordinatedStep, "k-async": CoordinatedStep,
                        "k-batch-async": CoordinatedStep, "adasync": CoordinatedStep,
                        "local-sgd": AveragingStep, "adacomm": AveragingStep,
                        "easgd": ElasticStep, "downpour": DownpourStep}  # fmt: skip
    assert VARIANT_OPTIONS == {
        "k": ("k-sync", "k-batch-sync", "k-async", "k-batch-async", "adasync"),
        "local_steps": ("local-sgd", "adacomm", "easgd"),
        "alpha": ("easgd",),
        "n_fetch": ("downpour",),
        "n_push": ("downpour",),
        "interval_s": ("adasync",),
    }
    assert LOCAL == ("local-sgd", "adacomm", "easgd", "downpour")
    assert AVERAGING == ("local-sgd", "adacomm")
    assert CANCELLING == ("k-sync", "k-batch-sync", "adasync")
    assert SIMULATED == ("sync", "k-sync", "k-batch-sync", "async", "k-async", "k-batch-async",
                         "adasync")  # fmt: skip
    coordinated = {n for n, row in TABLE.items() if row.coordinated}
    assert coordinated == set(VARIANTS) - {"async", "easgd", "downpour"}


def test_k_is_fixed_or_bounded_by_the_row():
    p = 6
    fixed = {n: TABLE[n].fixed_k(p) for n in VARIANTS}
    assert fixed == {"async": 1, "sync": 6, "k-sync": None, "k-batch-sync": None,
                     "k-async": None, "k-batch-async": None, "adasync": None, "local-sgd": 6,
                     "adacomm": 6, "easgd": 1, "downpour": 1}  # fmt: skip
    assert [TABLE[n].k_bound(p) for n in VARIANT_OPTIONS["k"]] == [6, None, 6, None, 6]
    with pytest.raises(
        ValueError, match=r"fit: variant must be one of async, sync, .* \(got 'x'\)"
    ):
        variant("x")


def test_fit_refuses_each_option_its_variant_does_not_take_and_fills_defaults():
    for name, users in VARIANT_OPTIONS.items():
        if name == "k":
            continue
        for v in VARIANTS:
            if v in users:
                continue
            with pytest.raises(ValueError, match=rf"fit: {name} is for variant .*'{v}' does not"):
                check(variant=v, k=2 if TABLE[v].takes("k") else None, **{name: 1})
    o = check(variant="local-sgd")
    assert (o.k, o.local_steps, o.n_fetch, o.n_push, o.interval_s) == (4, 4, 1, 1, 1.0)
    assert check(variant="easgd").alpha == pytest.approx(2 / 6)
    assert check(variant="k-batch-async", k=40).k == 40
    with pytest.raises(ValueError, match=r"fit: variant 'k-async' needs k in \[1, 4\] \(got k=5\)"):
        check(variant="k-async", k=5)


def test_the_budget_counts_each_familys_mini_batches_per_update():
    def per(**kw):
        return Budget.of(check(epochs=1.0, batch_size=10, **kw), n_train=1000)

    assert per(variant="async") == Budget(100, None, 1)
    assert per(variant="sync") == Budget(25, None, 4)
    assert per(variant="local-sgd", local_steps=5) == Budget(5, None, 20)
    assert per(variant="adacomm", local_steps=5) == Budget(5, 100, 20)
    assert per(variant="easgd", local_steps=3) == Budget(34, None, 3)
    assert per(variant="downpour", n_push=7) == Budget(15, None, 7)
    b = per(variant="adasync", k=2)
    assert b == Budget(50, 100, 2) and b.targets(10) == (math.inf, 80)
    assert Budget(10, None, 1).quota(4, 3) == [2, 2, 2, 1]


def test_backend_names_map_to_their_classes():
    assert backend_class("process") is ProcessBackend
    assert backend_class("thread") is ThreadBackend
    pytest.importorskip("ray")
    from fastps.train.backends.ray_actors import RayBackend

    assert backend_class("ray") is RayBackend
    with pytest.raises(ValueError, match="fit: threads is for the process and thread backends"):
        RayBackend.check(check(backend="ray", threads=2))
