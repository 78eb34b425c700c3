"""Step-size policies: formulas against hand-computed values, TAIL-tau's properties, and the
native path against each policy's eta() on scripted interleavings with known staleness."""

import collections
import math
import threading

import numpy as np
import pytest
from conftest import MODES, pull_push, run_threads
from hypothesis import given, settings
from hypothesis import strategies as st

import fastps
from fastps.step_size import (
    Constant,
    Exponential,
    Inverse,
    Projected,
    StalenessDistance,
    TailTau,
    fleet_beta,
    mid_cdf,
)

# -- formulas --------------------------------------------------------------------------------


def test_constant_and_inverse_by_hand():
    c, inv = Constant(lr=0.5), Inverse(lr=0.5)
    assert [c.eta(t) for t in (0, 1, 200)] == [0.5, 0.5, 0.5]
    assert [inv.eta(t) for t in (0, 1, 3, 7)] == [0.5, 0.25, 0.125, 0.0625]
    assert inv.eta(200) == float(np.float32(0.5 / 201))  # beyond any histogram cap


def test_exponential_by_hand_and_fleet_beta():
    e = Exponential(beta=math.log(2), lr=1.0)
    assert [e.eta(t) for t in (0, 1, 2, 10)] == [1.0, 0.5, 0.25, float(np.float32(2.0**-10))]
    assert fleet_beta(3) == pytest.approx(0.5 * math.log(3), rel=1e-15)  # t = 4
    assert fleet_beta(4) == pytest.approx(0.4 * math.log(3), rel=1e-15)  # t = 5, floor(5/2) = 2
    bound = Exponential().bind(lr=0.1, learners=3)
    assert bound.beta == fleet_beta(3)
    assert Exponential(learners=7).bind(0.1, learners=3).beta == fleet_beta(7)


def test_tail_tau_by_hand():
    # Two-point distribution tau in {0, 1}, 2 samples each: F(0) = 1/4, F(1) = 3/4.
    hist = [2, 2]
    t = TailTau(a=1.0, lr=1.0)
    assert mid_cdf(hist, 0) == 0.25 and mid_cdf(hist, 1) == 0.75
    assert [t.eta(0, hist), t.eta(1, hist), t.eta(9, hist)] == [1.5, 0.5, 0.5]  # 9: overflow bin
    assert TailTau(a=0.5, lr=2.0).eta(0, hist) == 2.5
    assert t.eta(5) == 1.0  # no histogram yet: scale 1
    assert TailTau().bind(0.1, learners=4).warmup == 60


def test_staleness_distance_by_hand():
    d = StalenessDistance(c=2.0, eta_max=1.0)
    assert d.eta(3, dist2=4.0) == 0.5
    assert d.eta(3, dist2=1.0) == 1.0  # capped
    assert d.eta(0, dist2=0.0) == 1.0  # no distance: eta_max


def geometric(p, n):
    return [round(1e6 * p * (1 - p) ** k) for k in range(n)]


@pytest.mark.parametrize(
    "hist",
    [geometric(0.3, 40), geometric(0.05, 64) + [9000], [0, 0, 1000, 0], [5, 0, 0, 7], [1], [3, 0]],
    ids=["geometric", "geometric-overflow", "point-mass", "two-point", "single", "zero-bin"],
)
@pytest.mark.parametrize("a", [0.0, 0.3, 1.0])
def test_tail_tau_mean_scale_is_one(hist, a):
    t = TailTau(a=a, lr=1.0)
    total = sum(hist)
    mean = sum(h * t.scale(tau, hist) for tau, h in enumerate(hist)) / total
    assert abs(mean - 1.0) < 1e-12
    scales = [t.scale(tau, hist) for tau in range(len(hist) + 3)]
    assert all(x >= y for x, y in zip(scales, scales[1:]))  # non-increasing in tau
    assert all(1 - a <= x <= 1 + a for x in scales)


@settings(max_examples=200, deadline=None)
@given(hist=st.lists(st.integers(0, 10**6), min_size=1, max_size=80).filter(any),
       a=st.floats(0.0, 1.0))  # fmt: skip
def test_tail_tau_properties_on_random_histograms(hist, a):
    t = TailTau(a=a, lr=1.0)
    mean = sum(h * t.scale(tau, hist) for tau, h in enumerate(hist)) / sum(hist)
    assert abs(mean - 1.0) < 1e-12
    scales = [t.scale(tau, hist) for tau in range(len(hist) + 1)]
    assert all(x >= y for x, y in zip(scales, scales[1:]))
    assert all(1 - a - 1e-15 <= x <= 1 + a + 1e-15 for x in scales)


# -- native path == eta() --------------------------------------------------------------------


def stale_script(store, taus, rng):
    """For each tau: `reader` pulls, `other` makes tau fresh pushes, `reader` pushes. Checks the
    reader's push changed every shard by exactly eta(tau) * g (bitwise, float32)."""
    n = store.size
    reader, other = store.learner(), store.learner()
    buf = np.empty(n, np.float32)
    policy = store.step_size
    for tau in taus:
        reader.pull(buf)
        read = buf.copy()
        for _ in range(tau):
            other.pull(buf)
            other.push(rng.integers(-3, 4, n).astype(np.float32))
        g = rng.integers(-3, 4, n).astype(np.float32)
        before = store.read()
        st = store.stats()
        assert st["versions"] == [reader.read_version(s) + tau for s in range(store.shards)]
        reader.push(g)
        after = store.read()
        for b, e in store.shard_ranges():
            if isinstance(policy, StalenessDistance):
                d2 = float(np.sum((before[b:e].astype(np.float64) - read[b:e]) ** 2))
                eta = policy.eta(tau, dist2=d2)
            else:
                eta = policy.eta(tau, st.get("step_hist"))
            np.testing.assert_array_equal(after[b:e], before[b:e] - np.float32(eta) * g[b:e])


POLICIES = [
    Constant(),
    Inverse(),
    Exponential(beta=0.3),
    Exponential(),
    StalenessDistance(c=50.0, eta_max=1.0),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: repr(p))
def test_native_step_equals_eta_on_a_scripted_interleaving(mode, policy):
    rng = np.random.default_rng(3)
    init = rng.integers(-5, 5, 500).astype(np.float32)
    with fastps.Store(init=init, shards=3, mode=mode, lr=0.25, step_size=policy,
                      max_learners=3) as store:  # fmt: skip
        stale_script(store, [0, 1, 2, 5, 0, 3], rng)
        assert store.stats()["staleness_hist"][5] == 3


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("refresh", [None, 6])
def test_tail_tau_native_equals_eta_through_warmup_and_refresh(mode, refresh):
    rng = np.random.default_rng(4)
    # One shard: each push is one shard update, so the CDF changes only between pushes.
    with fastps.Store(init=np.zeros(64, np.float32), shards=1, mode=mode, lr=0.5,
                      step_size=TailTau(a=0.8, warmup=5, refresh=refresh)) as store:  # fmt: skip
        stale_script(store, [0, 2, 1, 0, 3, 1, 2, 4, 0, 1, 5, 2], rng)
        st = store.stats()
        total = sum(st["staleness_hist"])
        if refresh is None:
            assert st["step_builds"] == 1 and sum(st["step_hist"]) == 5
        else:
            assert st["step_builds"] == 1 + (total - 5) // refresh
            assert sum(st["step_hist"]) == 5 + (st["step_builds"] - 1) * refresh


def test_tail_tau_stats_before_warmup():
    with fastps.Store(16, step_size=TailTau(warmup=100)) as store:
        store.learner().push(np.ones(16, np.float32))
        assert store.stats()["step_hist"] is None and store.stats()["step_builds"] == 0


def test_staleness_distance_needs_a_pull_and_keeps_slots_bounded():
    with fastps.Store(256, shards=2, mode="leashed", max_learners=2,
                      step_size=StalenessDistance(c=1.0, eta_max=0.1)) as store:  # fmt: skip
        a, b = store.learner(), store.learner()
        with pytest.raises(
            RuntimeError, match=r"push: the StalenessDistance step size needs a pull"
        ):
            a.push(np.ones(256, np.float32))
        buf = np.empty(256, np.float32)
        for _ in range(20):
            a.pull(buf)
            b.pull(buf)
            a.push(np.ones(256, np.float32))
            b.push(np.ones(256, np.float32))
        st = store.stats()
        assert st["slot_waits"] == 0 and st["slots_touched"] <= 3 * 2 + 1
        # Each handle keeps what it read pinned: at most published + 2 read versions per shard.
        assert st["slots_in_use"] <= 2 * 3
        a.close()
        b.close()
        assert store.stats()["slots_in_use"] == 2  # closing releases the pins


# -- Python hooks ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["locked", "leashed"])
def test_hook_sees_the_right_tau_under_concurrent_pushes(mode):
    calls = []
    lock = threading.Lock()

    def hook(tau, stats):
        with lock:
            calls.append((tau, stats["version"] - stats["version_read"], stats["shard"]))
        return 1.0

    n, threads, pushes = 1 << 15, 4, 200
    with fastps.Store(n, shards=2, mode=mode, step_size=hook, lr=1.0) as store:
        run_threads(pull_push, threads, args=lambda i: (store, pushes))
        st = store.stats()
        final = store.read()
    assert all(tau == dv for tau, dv, _ in calls)
    np.testing.assert_array_equal(final, np.full(n, threads * pushes, np.float32))
    seen = collections.Counter(min(tau, 64) for tau, _, _ in calls)
    hist = st["staleness_hist"]
    if mode == "locked":  # exactly one call per shard update
        assert len(calls) == threads * pushes * 2
        assert [seen.get(t, 0) for t in range(65)] == hist
    else:  # one call per attempt; a retried update is asked again with its larger tau
        assert len(calls) == threads * pushes * 2 + st["cas_failures"]
    assert max(t for t, _, _ in calls) > 0  # the learners really overlapped


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "ret,exc,msg",
    [
        (ValueError("boom"), ValueError, r"boom"),
        (float("nan"), ValueError, r"push: the step_size hook returned nan for tau=0 at shard 1"),
        (-1.0, ValueError, r"push: the step_size hook returned -1 .*expected a finite number >= 0"),
        ("x", TypeError, r"push: the step_size hook returned str, expected a float"),
    ],
)
def test_a_failing_hook_leaves_its_shard_unchanged(mode, ret, exc, msg):
    def hook(tau, stats):
        if stats["shard"] != 1:
            return 0.5
        if isinstance(ret, Exception):
            raise ret
        return ret

    with fastps.Store(init=np.zeros(48, np.float32), shards=3, mode=mode,
                      step_size=hook) as store:  # fmt: skip
        h = store.learner()  # id 0: shards in the order 0, 1, 2
        with pytest.raises(exc, match=msg) as info:
            h.push(np.ones(48, np.float32))
        after = store.read()
        np.testing.assert_array_equal(after[:16], -0.5)  # shard 0 was applied
        np.testing.assert_array_equal(after[16:], 0.0)  # shards 1 and 2 were not
        if isinstance(ret, Exception):
            assert "1 shard(s) of this push had been applied" in str(info.value.__notes__)
        st = store.stats()
        assert st["versions"] == [1, 0, 0]
        if mode == "leashed":
            assert st["slots_in_use"] == 3  # the claimed slot and the pin were given back
        h.pull(np.empty(48, np.float32))  # and no lock was left held


def test_hook_in_an_attached_store_must_be_given_again(shm_name):
    def hook(tau, stats):
        return 0.25

    with fastps.Store(8, shared=shm_name, step_size=hook) as store:
        other = fastps.Store.attach(shm_name)
        with pytest.raises(RuntimeError, match=r"none is set in this process"):
            other.learner().push(np.ones(8, np.float32))
        np.testing.assert_array_equal(store.read(), 0.0)
        again = fastps.Store.attach(shm_name, step_size=hook)
        again.learner().push(np.ones(8, np.float32))
        np.testing.assert_array_equal(store.read(), -0.25)
        assert isinstance(again.step_size, fastps.step_size.Hook)


def test_attached_store_gets_the_bound_policy(shm_name):
    with fastps.Store(8, shared=shm_name, lr=0.5, step_size=TailTau(a=0.5, warmup=7)) as store:
        other = fastps.Store.attach(shm_name)
        assert other.step_size == store.step_size == TailTau(a=0.5, warmup=7, lr=0.5)
        with pytest.raises(ValueError, match=r"attach: step_size is only for a store whose step"):
            fastps.Store.attach(shm_name, step_size=Inverse())


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,exc,msg",
    [
        (
            lambda: Constant(lr=-0.1),
            ValueError,
            r"Constant: lr must be finite and >= 0 \(got -0.1\)",
        ),
        (
            lambda: Inverse(lr=float("nan")),
            ValueError,
            r"Inverse: lr must be finite and >= 0 \(got nan\)",
        ),
        (
            lambda: Exponential(beta=-1.0),
            ValueError,
            r"Exponential: beta must be finite and >= 0 \(got -1\)",
        ),
        (lambda: Exponential(beta=float("nan")), ValueError, r"Exponential: beta must be finite"),
        (lambda: TailTau(a=1.5), ValueError, r"TailTau: a must be in \[0, 1\] \(got 1.5\)"),
        (lambda: TailTau(a=-0.1), ValueError, r"TailTau: a must be in \[0, 1\] \(got -0.1\)"),
        (lambda: TailTau(warmup=0), ValueError, r"TailTau: warmup must be an integer >= 1 or None"),
        (
            lambda: StalenessDistance(c=-1.0, eta_max=1.0),
            ValueError,
            r"StalenessDistance: c must be finite and >= 0",
        ),
        (
            lambda: StalenessDistance(c=1.0, eta_max=float("inf")),
            ValueError,
            r"StalenessDistance: eta_max must be finite",
        ),
        (
            lambda: StalenessDistance(c="1", eta_max=1.0),
            TypeError,
            r"StalenessDistance: c must be a number \(got str\)",
        ),
        (
            lambda: fastps.Store(8, step_size=3),
            TypeError,
            r"Store: step_size must be a fastps.step_size policy or a callable",
        ),
        (
            lambda: fastps.Store(8, lr=-1.0, step_size=Inverse()),
            ValueError,
            r"Store: lr must be finite and >= 0",
        ),
        (
            lambda: fastps.Store(8, lr=0.1, step_size=Constant(lr=0.2)),
            ValueError,
            r"Store: lr=0.1 disagrees with the step_size's lr=0.2",
        ),
        (lambda: Inverse().eta(1), ValueError, r"Inverse.eta: the policy has no lr yet"),
    ],
)
def test_bad_policy_arguments(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


# -- projected learning rate -----------------------------------------------------------------


def test_projected_rate_on_a_quadratic_matches_the_closed_form():
    """f_z(x) = 0.5 ||x - c_z||^2: the gradient's variance is mean ||c_z - c||^2 at every x,
    L = 1, and D_f = f(x1); the projected rate is sqrt(D_f / (M K L sigma^2))."""
    rng = np.random.default_rng(5)
    centres = [rng.standard_normal(10) for _ in range(8)]
    x1 = rng.standard_normal(10) * 3

    def loss_fn(x, c):
        return 0.5 * float(np.sum((x - c) ** 2)), x - c

    est = Projected.estimate(loss_fn, x1, centres, updates=1000, batch_size=32)
    cbar = np.mean(centres, axis=0)
    sigma2 = float(np.mean([np.sum((c - cbar) ** 2) for c in centres]))
    D_f = float(np.mean([0.5 * np.sum((x1 - c) ** 2) for c in centres]))
    assert est.sigma2 == pytest.approx(sigma2, rel=1e-12)
    assert est.D_f == pytest.approx(D_f, rel=1e-12)
    assert est.L == pytest.approx(1.0, rel=1e-9)
    assert est.lr == pytest.approx(math.sqrt(D_f / (32 * 1000 * sigma2)), rel=1e-9)
    assert est.alpha == pytest.approx(math.sqrt(1000 * sigma2 / (32 * D_f)), rel=1e-9)
    assert est.p_over_alpha(4) == pytest.approx(4 / est.alpha)
    with fastps.Store(10, step_size=est) as store:  # carries its own lr
        assert store.config["lr"] == float(np.float32(est.lr))
        assert isinstance(store.step_size, Constant)


def test_projected_refuses_degenerate_probes():
    with pytest.raises(ValueError, match=r"Projected.estimate: needs at least 2 batches"):
        Projected.estimate(lambda x, b: (1.0, x), np.ones(3), [1], updates=10)
    with pytest.raises(ValueError, match=r"needs D_f, sigma\^2 and L > 0"):
        Projected.estimate(
            lambda x, b: (1.0, np.zeros(3)), np.ones(3), [1, 2], updates=10, batch_size=1
        )
    with pytest.raises(ValueError, match=r"Projected.estimate: pass batch_size"):
        Projected.estimate(lambda x, b: (1.0, x), np.ones(3), [1, 2], updates=10)
