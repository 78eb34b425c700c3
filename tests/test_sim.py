"""The runtime simulator (fastps.sim): closed forms of Dutta et al. 2018 at 10^5 updates, exact
sequences on scripted times, agreement with a plain event loop, the quadratic model, errors, CLI."""

import heapq
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from fastps.cli import main
from fastps.sim import Delay, Quadratic, harmonic, simulate
from fastps.sim.delays import Cycles, erlang_max
from fastps.sim.traces import k_async

P = 8
N = 100_000


def H(n):
    return sum(1.0 / i for i in range(1, n + 1))


# -- closed forms (research/sync-async-spectrum.md 2.2), within 2% at 10^5 updates ---------------


@pytest.mark.parametrize("variant,k,delay,expected", [
    ("sync", None, "exp", H(P)),
    ("k-sync", 2, "exp", H(P) - H(P - 2)),
    ("k-sync", 4, "exp", H(P) - H(P - 4)),
    ("k-sync", 4, "shifted-exp", 1 + H(P) - H(P - 4)),
    ("async", None, "exp", 1 / P),
    ("async", None, "shifted-exp", 2 / P),
    ("k-batch-async", 2, "exp", 2 / P),  # K E[X] / P
    ("k-batch-async", 4, "shifted-exp", 4 * 2 / P),
    ("k-batch-sync", 2, "exp", 2 / P),  # a Poisson stream of rate P mu
    ("k-async", 2, "exp", H(P) - H(P - 2)),  # memoryless: as K-sync
    ("k-async", 4, "exp", H(P) - H(P - 4)),
])  # fmt: skip
def test_time_per_update_matches_the_closed_form(variant, k, delay, expected):
    r = simulate(variant, P, k, delay=delay, updates=N, seed=1)
    assert r.predicted_time_per_update == pytest.approx(expected, rel=1e-12)
    assert r.mean_time_per_update == pytest.approx(expected, rel=0.02)


def test_pareto_order_statistics():
    # Pareto(x_m, a): E[X_{k:n}] = x_m n!/(n-k)! Gamma(n-k+1-1/a)/Gamma(n+1-1/a); mean 1/mu.
    d = Delay("pareto", mu=1.0, alpha=3.0)
    assert d.order_stat(1, 1) == pytest.approx(1.0, rel=1e-12)
    xs = d.sample(np.random.default_rng(0), (200_000, 4))
    assert np.sort(xs, axis=1).mean(0) == pytest.approx([d.order_stat(i, 4) for i in range(1, 5)],
                                                        rel=0.02)  # fmt: skip
    r = simulate("k-sync", P, 6, delay="pareto", alpha=3.0, updates=N)
    assert r.mean_time_per_update == pytest.approx(d.order_stat(6, P), rel=0.02)


def test_sync_over_async_is_p_h_p():
    ratio = (simulate("sync", P, updates=N).mean_time_per_update
             / simulate("async", P, updates=N, seed=1).mean_time_per_update)  # fmt: skip
    assert ratio == pytest.approx(P * H(P), rel=0.02)  # 21.74 for P = 8


@pytest.mark.parametrize("variant,k,delay,expected", [
    ("async", None, "exp", P - 1),
    ("k-async", 2, "exp", P / 2 - 1),  # P/K - 1, any distribution
    ("k-async", 4, "exp", P / 4 - 1),
    ("k-async", 2, "shifted-exp", P / 2 - 1),
    ("k-async", 2, "pareto", P / 2 - 1),
    ("k-batch-async", 2, "exp", (P - 1) / 2),  # (P - 1)/K, any distribution
    ("k-batch-async", 4, "exp", (P - 1) / 4),
    ("k-batch-async", 8, "shifted-exp", (P - 1) / 8),
    ("k-batch-async", 16, "exp", (P - 1) / 16),  # K > P: gradients from any learners
])  # fmt: skip
def test_mean_staleness_matches_the_closed_form(variant, k, delay, expected):
    r = simulate(variant, P, k, delay=delay, updates=N, seed=2)
    assert r.predicted_mean_staleness == pytest.approx(expected, rel=1e-12)
    assert r.mean_staleness == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_k_async_staleness_is_geometric_under_exponential_times(k):
    # P(tau = s) = (K/P)(1 - K/P)^s: the fresh fraction is K/P
    r = simulate("k-async" if k > 1 else "async", P, k, updates=N, seed=3)
    q = k / P
    assert r.predicted_fresh_fraction == pytest.approx(q, rel=1e-12)
    assert r.fresh_fraction == pytest.approx(q, rel=0.03)
    share = np.array(r.staleness_hist[:4]) / r.gradients
    assert share == pytest.approx([q * (1 - q) ** s for s in range(4)], abs=0.005)


def test_the_sync_variants_are_fresh_and_say_what_they_threw_away():
    for variant, k in (("sync", None), ("k-sync", 3), ("k-batch-sync", 3)):
        r = simulate(variant, P, k, updates=10_000)
        assert r.mean_staleness == 0 and r.fresh_fraction == 1 and r.staleness_hist == [r.gradients]
        assert r.gradients == r.k * 10_000
    # K-sync: the P - K unfinished are cancelled at every update; K-batch-sync: all but the sender
    assert simulate("k-sync", P, 3, updates=1000).cancelled == (P - 3) * 1000
    assert simulate("k-batch-sync", P, 3, updates=1000).cancelled == (P - 1) * 1000
    assert simulate("sync", P, updates=1000).cancelled == 0


def test_the_research_notes_shifted_exponential_values():
    # sync-async-spectrum.md 8.1, X = 1 + exp(1), P = 8: K-async beats K-sync (new-longer-than-used)
    ks = simulate("k-sync", P, 2, delay="shifted-exp", updates=N).mean_time_per_update
    ka = simulate("k-async", P, 2, delay="shifted-exp", updates=N).mean_time_per_update
    assert ks == pytest.approx(1.268, rel=0.02) and ka == pytest.approx(0.534, rel=0.02)


# -- exact sequences on scripted times ------------------------------------------------------------


def test_async_with_equal_fixed_times_is_p_minus_1_stale_after_the_first_round():
    r = simulate("async", 4, delay="fixed", updates=12)
    assert r.staleness.tolist() == [0, 1, 2, 3] + [3] * 8
    assert r.update_times.tolist() == [1.0] * 4 + [2.0] * 4 + [3.0] * 4
    assert r.learner.tolist() == [0, 1, 2, 3] * 3


def test_k_async_with_equal_fixed_times():
    r = simulate("k-async", 4, 2, delay="fixed", updates=8)
    assert r.staleness.tolist() == [0, 0] + [1] * 14  # P/K - 1 = 1 from the second update
    assert r.update_times.tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]
    assert r.idle_fraction == 0  # the second pair arrives as the first update is made


def test_k_batch_async_with_equal_fixed_times():
    # learners 0, 1, 2, 3 arrive together; 0 and 2 pull before the update their batch makes,
    # 1 and 3 (the K-th gradients) after it: staleness 2, 1, 2, 1 in steady state, mean (P-1)/K
    r = simulate("k-batch-async", 4, 2, delay="fixed", updates=8)
    assert r.staleness.tolist() == [0, 0, 1, 1] + [2, 1] * 6
    assert r.update_times.tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]


def test_k_sync_with_slow_learners():
    # learners take 1, 2, 3, 4: each round lasts 2; learner 0 idles 1; learners 2, 3 are cancelled
    r = simulate("k-sync", 4, 2, delay="fixed", slowdown=[1, 2, 3, 4], updates=5)
    assert r.update_times.tolist() == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert r.learner.tolist() == [0, 1] * 5
    assert (r.cancelled, r.dropped) == (10, 0)
    assert r.idle_fraction == 1 / 8 and r.wasted_fraction == 4 / 8


def test_k_sync_drops_a_gradient_in_flight_and_cancels_one_still_computing():
    # X = 1, 1.5, s; D = 1 after X: the update comes at 2.5
    still = simulate("k-sync", 3, 2, delay="fixed", slowdown=[1, 1.5, 3], comm_delay=1, updates=5)
    flight = simulate("k-sync", 3, 2, delay="fixed", slowdown=[1, 1.5, 2], comm_delay=1, updates=5)
    assert still.update_times.tolist() == [2.5, 5.0, 7.5, 10.0, 12.5]
    assert flight.update_times.tolist() == still.update_times.tolist()
    assert (still.cancelled, still.dropped) == (5, 0)
    assert (flight.cancelled, flight.dropped) == (0, 5)


def test_k_batch_sync_counts_the_same_learner_several_times():
    # learner 0 arrives at 1, 2, 3; learner 1 at 3, just after: K = 3 are all learner 0's, and
    # learner 1's gradient of the same instant is late (dropped)
    r = simulate("k-batch-sync", 2, 3, delay="fixed", slowdown=[1, 3], updates=4)
    assert r.update_times.tolist() == [3.0, 6.0, 9.0, 12.0]
    assert r.learner.tolist() == [0] * 12 and r.gradients_per_learner == [12, 0]
    assert (r.cancelled, r.dropped) == (0, 4)
    assert r.predicted_time_per_update is None  # unequal learners: no closed form


def test_a_scripted_table_repeats_per_learner():
    # learner 0 takes 1, 3, 1, 3, ... (arrives at 1, 4, 5, 8, 9); learner 1 takes 2 (2, 4, 6, 8)
    r = simulate("async", 2, times=[[1, 3], [2, 2]], updates=8)
    assert r.update_times.tolist() == [1, 2, 4, 4, 5, 6, 8, 8]
    assert r.learner.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert r.staleness.tolist() == [0, 1, 1, 1, 1, 1, 1, 1]


def test_the_same_seed_gives_every_variant_the_same_learner_times():
    # k-async with K = P is sync, and with K = 1 async, update for update
    a = simulate("k-async", 5, 5, updates=3000, seed=4)
    b = simulate("sync", 5, updates=3000, seed=4)
    np.testing.assert_array_equal(a.update_times, b.update_times)
    assert a.mean_staleness == 0
    cyc = Cycles(5, np.random.default_rng([4, 0]), Delay(), None, np.ones(5), None)
    heap = k_async(cyc, 5, 1, 3000)  # the heap path, which simulate uses for K >= 2
    r = simulate("async", 5, updates=3000, seed=4)  # merged renewal processes
    np.testing.assert_array_equal(heap.times, r.update_times)
    np.testing.assert_array_equal(heap.staleness, r.staleness)
    np.testing.assert_array_equal(heap.learner, r.learner)
    assert simulate("async", 5, updates=3000, seed=5).update_times[-1] != r.update_times[-1]


# -- agreement with a plain event loop ------------------------------------------------------------


def reference(variant, p, k, x, d, n):
    """The note's PS handlers as one event loop: learner l's c-th computation takes x[l, c % M]
    then d[l, c % M] (k-batch-sync: round r's i-th computation is column r*K + i)."""
    m = x.shape[1]
    version, events, batch = 0, [], []
    token, count, inround = [0] * p, [0] * p, [0] * p
    st = [None] * p  # (start time, version read, end of compute)
    out = {"times": [], "stal": [], "who": [], "cancelled": 0, "dropped": 0, "idle": 0.0,
           "wasted": 0.0}  # fmt: skip
    sync_family = variant in ("sync", "k-sync", "k-batch-sync")

    def start(r, t):
        if variant == "k-batch-sync":
            c = version * k + inround[r]
            inround[r] += 1
        else:
            c = count[r]
            count[r] += 1
        xx, dd = x[r, c % m], d[r, c % m]
        st[r] = (t, version, t + xx)
        token[r] += 1
        heapq.heappush(events, (t + (xx + dd), r, token[r]))

    for r in range(p):
        start(r, 0.0)
    while len(out["times"]) < n:
        t, r, tok = heapq.heappop(events)
        if tok != token[r]:
            continue  # cancelled work
        t0, v, _ = st[r]
        assert not sync_family or v == version
        batch.append((r, v, t))
        if variant in ("k-batch-sync", "async", "k-batch-async") and len(batch) < k:
            start(r, t)  # keep computing (on the same model / on what the PS holds now)
        if len(batch) < k:
            continue
        out["times"].append(t)
        out["stal"] += [version - vv for _, vv, _ in batch]
        out["who"] += [rr for rr, _, _ in batch]
        if variant in ("sync", "k-sync", "k-async"):
            out["idle"] += sum(t - ta for _, _, ta in batch)
        version += 1
        if sync_family:
            waiting = {rr for rr, _, _ in batch} if variant != "k-batch-sync" else set()
            for q in range(p):
                if q in waiting or (variant == "k-batch-sync" and q == r):
                    continue
                out["dropped" if st[q][2] <= t else "cancelled"] += 1
                out["wasted"] += t - st[q][0]
            inround = [0] * p
            for q in range(p):
                start(q, t)
        elif variant == "k-async":
            for rr, _, _ in batch:
                start(rr, t)
        else:
            start(r, t)  # the K-th gradient's sender pulls the new model
        batch = []
    return out


@pytest.mark.parametrize("variant,p,k", [
    ("sync", 4, 4), ("k-sync", 5, 2), ("k-batch-sync", 4, 3), ("k-batch-sync", 3, 7),
    ("async", 4, 1), ("k-async", 5, 2), ("k-async", 4, 3), ("k-batch-async", 4, 3),
    ("k-batch-async", 3, 5),
])  # fmt: skip
@pytest.mark.parametrize("integers", [True, False])
def test_every_variant_agrees_with_a_plain_event_loop(variant, p, k, integers):
    # integer times: many simultaneous arrivals (learner order); float times: none
    rng = np.random.default_rng([p, k, integers])
    n, m = 300, 97
    x = rng.integers(1, 6, (p, m)).astype(float) if integers else rng.exponential(1.0, (p, m))
    comm = 1.0 if integers else 0.25
    ref = reference(variant, p, k, x, np.full((p, m), comm), n)
    r = simulate(variant, p, None if variant in ("sync", "async") else k, times=x,
                 comm_delay=comm, updates=n)  # fmt: skip
    np.testing.assert_allclose(r.update_times, ref["times"], rtol=1e-12)
    assert r.staleness.tolist() == ref["stal"]
    assert r.learner.tolist() == ref["who"]
    assert (r.cancelled, r.dropped) == (ref["cancelled"], ref["dropped"])
    total = p * r.update_times[-1]
    assert r.idle_fraction == pytest.approx(ref["idle"] / total, rel=1e-9, abs=1e-12)
    assert r.wasted_fraction == pytest.approx(ref["wasted"] / total, rel=1e-9, abs=1e-12)


# -- warm-up, the quadratic model, AdaSync -------------------------------------------------------


def test_warmup_updates_are_left_out_of_the_statistics():
    full = simulate("k-async", 6, 2, delay="shifted-exp", updates=2000, seed=7)
    r = simulate("k-async", 6, 2, delay="shifted-exp", updates=2000, warmup=500, seed=7)
    np.testing.assert_array_equal(r.update_times, full.update_times)
    assert r.updates == 1500 and r.gradients == 3000
    t = full.update_times
    assert r.mean_time_per_update == pytest.approx((t[-1] - t[499]) / 1500, rel=1e-12)
    assert r.staleness_hist == np.bincount(full.staleness[1000:]).tolist()


def test_without_noise_the_quadratic_follows_its_recursion_exactly():
    q = Quadratic()
    lam = q.lam
    r = simulate("sync", 4, updates=30, model="quadratic", noise=0.0)
    w = np.full(q.dim, q.w0) * (1 - q.lr * lam)[None, :] ** np.arange(31)[:, None]
    np.testing.assert_allclose(r.error, 0.5 * (w * w) @ lam, rtol=1e-12)
    # async, P = 2, fixed times: staleness 0, 1, 1, ...: w_{j+1} = w_j - lr lam w_{j-1}
    r = simulate("async", 2, delay="fixed", updates=30, model="quadratic", noise=0.0)
    assert r.staleness.tolist() == [0] + [1] * 29
    ws = [np.full(q.dim, q.w0)]
    ws.append(ws[0] - q.lr * lam * ws[0])
    for j in range(1, 30):
        ws.append(ws[j] - q.lr * lam * ws[j - 1])
    np.testing.assert_allclose(r.error, [0.5 * (w * w) @ lam for w in ws], rtol=1e-12)


@pytest.mark.parametrize("variant,k", [("k-sync", 1), ("k-sync", 4), ("k-batch-sync", 2)])
def test_the_error_floor_of_fresh_gradients_matches_the_stationary_variance(variant, k):
    # w_i <- (1 - lr lam_i) w_i - lr xi: E[F] = 1/2 sum lr v/(2 - lr lam_i), v = noise/(dim K)
    r = simulate(variant, P, k, updates=40_000, model="quadratic", seed=8)
    assert r.predicted_error_floor == pytest.approx(Quadratic().floor(k), rel=1e-12)
    assert r.error_tail == pytest.approx(r.predicted_error_floor, rel=0.05)
    assert r.error_curve[0] == [0.0, 99.0] and r.error_curve[-1][0] == r.time


def test_stale_gradients_decay_faster_in_time_but_plateau_higher():
    # the note's headline (8.2): async is ahead early, sync ends lower
    s = simulate("sync", P, updates=4000, model="quadratic", seed=9)
    a = simulate("async", P, updates=4000 * P, model="quadratic", seed=9)

    def at(r, t):
        return r.error[np.searchsorted(r.update_times, t)]

    assert at(a, 5.0) < at(s, 5.0) / 10
    assert s.error_tail < a.error_tail / 5


def test_adasync_sets_k_from_the_loss_at_each_interval():
    # round time = K with these learners; K is re-set before the first round starting at or
    # after 4, 8, ...: K = min(P, ceil(K0 sqrt(F_0 / F)))
    r = simulate("adasync", 4, 1, delay="fixed", slowdown=[1, 2, 3, 4], updates=60,
                 model="quadratic", interval=4.0, noise=0.0, lr=0.01)  # fmt: skip
    starts = np.concatenate([[0.0], r.update_times[:-1]])
    f0, k, nxt = r.error[0], 1, 4.0
    for j in range(60):
        if starts[j] >= nxt:
            k = min(4, math.ceil(math.sqrt(f0 / r.error[j])))
            while nxt <= starts[j]:
                nxt += 4.0
        assert r.update_k[j] == k, j
    assert r.update_k[0] == 1 and r.update_k[-1] > 1
    np.testing.assert_array_equal(np.diff(starts[1:]), r.update_k[1:-1].astype(float))


def test_adasync_with_a_fixed_k_is_k_sync():
    a = simulate("adasync", 6, 3, updates=2000, model="quadratic", interval=1e18, seed=10)
    b = simulate("k-sync", 6, 3, updates=2000, model="quadratic", seed=10)
    np.testing.assert_array_equal(a.update_times, b.update_times)
    assert (a.cancelled, a.dropped) == (b.cancelled, b.dropped)
    np.testing.assert_array_equal(a.learner, b.learner)
    np.testing.assert_allclose(a.error, b.error, rtol=1e-9)


# -- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,msg", [
    (dict(variant="elastic"), r"simulate: variant must be one of sync, .* \(got 'elastic'\)"),
    (dict(learners=0), r"learners must be an integer >= 1 \(got 0\)"),
    (dict(variant="k-sync", k=9), r"variant 'k-sync' needs k in \[1, 8\] \(got k=9\)"),
    (dict(variant="k-async", k=None), r"variant 'k-async' needs k in \[1, 8\] \(got k=None\)"),
    (dict(variant="k-batch-async", k=0), r"'k-batch-async' needs k in \[1, any\] \(got k=0\)"),
    (dict(variant="sync", k=2), r"variant 'sync' fixes k = 8 \(got k=2\)"),
    (dict(delay="gamma"), r"delay must be one of exp, shifted-exp, pareto, fixed"),
    (dict(mu=0.0), r"mu must be > 0 \(got 0.0\)"),
    (dict(shift=0.5), r"shift applies to delay='shifted-exp' only \(got delay='exp', shift=0.5\)"),
    (dict(delay="pareto", alpha=1.0), r"pareto needs alpha > 1 for a finite mean \(got 1.0\)"),
    (dict(comm_delay=-1.0), r"comm_delay must be >= 0 \(got -1.0\)"),
    (dict(comm_kind="lognormal"), r"comm_kind must be fixed or exp \(got 'lognormal'\)"),
    (dict(slowdown=[1, 2]), r"slowdown has 2 entries, expected 8 \(one per learner\)"),
    (dict(slowdown=[1] * 7 + [0]), r"slowdown entries must be > 0"),
    (dict(times=np.ones((3, 2))), r"times must have one row per learner: shape \(8, M\) \(got "
                                  r"\(3, 2\)\)"),
    (dict(times=np.zeros((8, 2))), r"times entries must be > 0"),
    (dict(updates=0), r"updates must be an integer >= 1 \(got 0\)"),
    (dict(warmup=10, updates=10), r"warmup must be an integer in \[0, updates\) \(got 10 with "
                                  r"updates=10\)"),
    (dict(variant="adasync", k=1), r"adasync sets K from the loss: it needs model='quadratic'"),
    (dict(model="logistic"), r"model must be none or quadratic \(got 'logistic'\)"),
])  # fmt: skip
def test_bad_arguments_are_refused_with_a_clear_message(kwargs, msg):
    args = {"variant": "async", "learners": P, "k": None, "updates": 100, **kwargs}
    with pytest.raises(ValueError, match=msg):
        simulate(args.pop("variant"), args.pop("learners"), args.pop("k"), **args)


def test_harmonic():
    assert harmonic(0) == 0 and harmonic(1) == 1 and harmonic(4) == pytest.approx(25 / 12)


# -- the command line -------------------------------------------------------------------------


def test_the_cli_prints_one_json_object(capsys):
    rc = main(["simulate", "--variant", "k-async", "--learners", "8", "--k", "2", "--delay", "exp",
               "--mu", "1", "--updates", "100000", "--seed", "0", "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and len(out.strip().splitlines()) == 1
    r = json.loads(out)
    assert r["mean_time_per_update"] == pytest.approx(H(8) - H(6), rel=0.02)
    assert r["predicted_time_per_update"] == pytest.approx(H(8) - H(6), rel=1e-12)
    assert r["mean_staleness"] == pytest.approx(3.0, rel=0.02)
    assert r["fresh_fraction"] == pytest.approx(0.25, rel=0.03)
    assert sum(r["staleness_hist"]) == r["gradients"] == 200_000
    direct = simulate("k-async", 8, 2, updates=100_000, seed=0)
    assert r["mean_staleness"] == direct.mean_staleness  # the same run as the Python API


def test_the_cli_table_and_the_error_curve(capsys):
    assert main(["simulate", "--variant", "k-sync", "--k", "4", "--updates", "2000", "--model",
                 "quadratic", "--comm-delay", "0.5", "--comm-kind", "exp"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "time per update" in out and "staleness" in out and "error F(w)" in out
    assert "D exp 0.5" in out


def test_the_cli_refuses_bad_arguments_in_one_line(capsys):
    assert main(["simulate", "--variant", "k-sync", "--k", "9"]) == 2
    assert capsys.readouterr().err.strip() == (
        "fastps simulate: simulate: variant 'k-sync' needs k in [1, 8] (got k=9)"
    )


def test_simulate_help_documents_every_option(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastps.cli", "simulate", "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0
    for opt in ("--variant", "--learners", "--k", "--delay", "--mu", "--shift", "--alpha",
                "--comm-delay", "--comm-kind", "--slowdown", "--updates", "--warmup", "--seed",
                "--model", "--lr", "--dim", "--noise", "--interval", "--points",
                "--local-steps", "--json"):  # fmt: skip
        assert opt in r.stdout


# -- local-sgd: periodic averaging (research/sync-async-spectrum.md 3.3) --------------------------


def exact_mean_max(m, tau):
    """E[max of m means of tau exp(1) draws], exactly: the mean Ybar = S/tau with S ~ Erlang(tau, 1)
    and 1 - F_S(u)^m = sum_j C(m, j) (-1)^(j+1) e^(-j u) P(u)^j, P(u) = sum_(n<tau) u^n/n!, so
    E[max S] = sum_j C(m, j) (-1)^(j+1) sum_n [u^n]P^j n!/j^(n+1) (rational arithmetic)."""
    from fractions import Fraction

    base = [Fraction(1, math.factorial(n)) for n in range(tau)]
    total, power = Fraction(0), [Fraction(1)]
    for j in range(1, m + 1):
        nxt = [Fraction(0)] * (len(power) + tau - 1)
        for a, ca in enumerate(power):
            for b, cb in enumerate(base):
                nxt[a + b] += ca * cb
        power = nxt
        integral = sum(c * math.factorial(n) / Fraction(j) ** (n + 1) for n, c in enumerate(power))
        total += (-1) ** (j + 1) * math.comb(m, j) * integral
    return float(total / tau)


@pytest.mark.parametrize("m,tau", [(1, 1), (1, 7), (4, 1), (8, 1), (2, 2), (4, 10), (8, 10),
                                   (3, 25), (16, 4)])  # fmt: skip
def test_the_erlang_mean_of_the_slowest_learner_matches_the_exact_sum(m, tau):
    # numpy quadrature of the Erlang CDF (the simulator has no scipy) against rational arithmetic;
    # tau = 1 is H_m (the max of m exponentials), m = 1 the mean, 1
    assert erlang_max(m, tau) / tau == pytest.approx(exact_mean_max(m, tau), rel=1e-9)
    d = Delay("exp", mu=2.0)
    assert d.mean_max(m, tau) == pytest.approx(exact_mean_max(m, tau) / 2.0, rel=1e-9)
    if tau == 1:  # the order statistic itself: H_m / mu
        assert d.mean_max(m, 1) == harmonic(m) / 2.0 and erlang_max(m, 1) == pytest.approx(H(m))
    assert Delay("shifted-exp", 2.0, 1.5).mean_max(m, tau) == pytest.approx(
        1.5 + exact_mean_max(m, tau) / 2.0, rel=1e-9)  # fmt: skip
    assert Delay("fixed", 2.0).mean_max(m, tau) == 0.5
    pareto = Delay("pareto", 2.0)
    assert pareto.mean_max(m, tau) == (pareto.order_stat(m, m) if tau == 1 else None)


@pytest.mark.parametrize("delay,m,tau,d,kind", [
    ("exp", 4, 10, 0.5, "fixed"),  # the notes' m = 4, E[Y] = 1, tau = 10
    ("exp", 4, 10, 4.0, "fixed"),
    ("exp", 8, 10, 0.0, "fixed"),
    ("exp", 2, 3, 1.0, "exp"),
    ("exp", 16, 2, 2.0, "exp"),
    ("shifted-exp", 4, 10, 0.5, "fixed"),
    ("shifted-exp", 8, 5, 2.0, "exp"),
    ("fixed", 4, 10, 4.0, "fixed"),
    ("fixed", 3, 7, 1.0, "exp"),
])  # fmt: skip
def test_local_sgd_time_per_local_step_matches_the_closed_form(delay, m, tau, d, kind):
    # a round = max_l sum of tau step times + D: per local step E[Ybar_(m:m)] + E[D]/tau
    r = simulate("local-sgd", m, delay=delay, local_steps=tau, comm_delay=d, comm_kind=kind,
                 updates=20_000, seed=11)  # fmt: skip
    ybar = {"exp": exact_mean_max(m, tau), "shifted-exp": 1 + exact_mean_max(m, tau),
            "fixed": 1.0}[delay]  # fmt: skip
    assert r.predicted_time_per_local_step == pytest.approx(ybar + d / tau, rel=1e-9)
    assert r.predicted_time_per_update == pytest.approx(tau * ybar + d, rel=1e-9)
    assert r.mean_time_per_local_step == pytest.approx(ybar + d / tau, rel=0.03)
    assert r.mean_time_per_update == pytest.approx(tau * r.mean_time_per_local_step, rel=1e-12)
    assert (r.k, r.local_steps, r.updates, r.gradients) == (m, tau, 20_000, 20_000 * m)
    assert r.mean_staleness == 0 and r.cancelled == r.dropped == 0
    y1 = {"exp": H(m), "shifted-exp": 1 + H(m), "fixed": 1.0}[delay]  # E[Y_(m:m)]
    assert r.predicted_speedup == pytest.approx((y1 + d) / (ybar + d / tau), rel=1e-9)
    assert r.speedup == pytest.approx(r.predicted_speedup, rel=0.03)
    if delay == "fixed" and kind == "fixed":  # constant Y and D: (1 + a)/(1 + a/tau), a = D/Y
        assert r.speedup == pytest.approx((1 + d) / (1 + d / tau), rel=1e-12)


@pytest.mark.parametrize("d,speedup", [(0.5, 1.86), (4.0, 3.50)])
def test_local_sgd_reproduces_the_notes_speedups_over_sync(d, speedup):
    # sync-async-spectrum.md 3.3: m = 4, E[Y] = 1, tau = 10
    r = simulate("local-sgd", 4, local_steps=10, comm_delay=d, updates=20_000, seed=12)
    assert r.predicted_speedup == pytest.approx(speedup, abs=0.005)  # the notes' two digits
    assert r.speedup == pytest.approx(speedup, rel=0.03)
    s = simulate("sync", 4, comm_delay=d, updates=200_000, seed=12)  # the same step times
    assert r.sync_time_per_step == pytest.approx(s.mean_time_per_update, rel=1e-12)


@pytest.mark.parametrize("d", [0.0, 0.5])
def test_local_sgd_with_one_local_step_is_sync_update_for_update(d):
    # the same seed gives the same step times: tau = 1 makes the same rounds as sync
    a = simulate("local-sgd", 5, local_steps=1, comm_delay=d, updates=3000, seed=13)
    b = simulate("sync", 5, comm_delay=d, updates=3000, seed=13)
    np.testing.assert_array_equal(a.update_times, b.update_times)
    assert a.speedup == 1.0 and a.predicted_speedup == pytest.approx(1.0, rel=1e-12)
    assert a.predicted_time_per_update == b.predicted_time_per_update


def test_local_sgd_waits_for_the_slowest_learner_not_the_mean():
    # m = 8 exponential learners, tau = 10: E[max Ybar] = 1.4918..., the mean learner takes 1
    r = simulate("local-sgd", 8, local_steps=10, updates=20_000, seed=14)
    assert r.predicted_time_per_local_step == pytest.approx(exact_mean_max(8, 10), rel=1e-9)
    assert r.predicted_time_per_local_step > 1.4
    assert r.mean_time_per_local_step == pytest.approx(r.predicted_time_per_local_step, rel=0.03)
    # scripted: learner 0 takes 1, 3, 1, 3, ...; learner 1 takes 2; learner 2 takes 1; tau = 3,
    # D = 0.5: round sums (5, 6, 3) then (7, 6, 3): rounds of 6.5 and 7.5 (the sums of the
    # per-step maxima, 7 and 8, would give 7.5 and 8.5); idle: (1 + 0 + 3) + (0 + 1 + 4) a pair
    r = simulate("local-sgd", 3, times=[[1, 3], [2, 2], [1, 1]], local_steps=3, comm_delay=0.5,
                 updates=4)  # fmt: skip
    assert r.update_times.tolist() == [6.5, 14.0, 20.5, 28.0]
    assert r.idle_fraction == pytest.approx((4 + 5) * 2 / (3 * 28.0), rel=1e-12)
    assert r.predicted_time_per_local_step is None and r.predicted_speedup is None
    assert r.sync_time_per_step == pytest.approx((3 * 2.5 + 3 * 3.5) / 6, rel=1e-12)


def test_local_sgd_with_pareto_steps_has_no_closed_form_and_says_so():
    r = simulate("local-sgd", 4, delay="pareto", local_steps=5, updates=2000)
    assert r.predicted_time_per_local_step is None and r.predicted_speedup is None
    assert r.formulas["time"] == "none for pareto step times (E[Ybar_(m:m)] has no closed form)"


@pytest.mark.parametrize("kwargs,msg", [
    (dict(variant="sync", local_steps=4), r"local_steps applies to local-sgd only \(got "
                                          r"variant='sync', local_steps=4\)"),
    (dict(variant="local-sgd", local_steps=0), r"local_steps must be an integer in \[1, 1000000\] "
                                               r"\(got 0\)"),
    (dict(variant="local-sgd", local_steps=2.5), r"local_steps must be an integer in \[1, "
                                                 r"1000000\] \(got 2.5\)"),
    (dict(variant="local-sgd", local_steps=10**6 + 1), r"local_steps must be an integer in "
                                                       r"\[1, 1000000\] \(got 1000001\)"),
    (dict(variant="local-sgd", k=2), r"variant 'local-sgd' fixes k = 8 \(got k=2\)"),
    (dict(variant="local-sgd", model="quadratic"), r"local-sgd has no model: on the simulator's "
                                                   r"quadratic"),
])  # fmt: skip
def test_local_sgd_bad_arguments_are_refused(kwargs, msg):
    args = {"learners": P, "k": None, "updates": 100, **kwargs}
    with pytest.raises(ValueError, match=msg):
        simulate(args.pop("variant"), args.pop("learners"), args.pop("k"), **args)


def test_local_sgd_defaults_to_fits_four_local_steps_and_lists_after_the_spectrum():
    from fastps.sim import VARIANTS
    from fastps.train.variants import SIMULATED

    assert simulate("local-sgd", 4, updates=10).local_steps == 4
    assert simulate("sync", 4, updates=10).local_steps is None
    assert VARIANTS == (*SIMULATED, "local-sgd")  # the spectrum's order, then periodic averaging


def test_the_cli_simulates_local_sgd(capsys):
    argv = ["simulate", "--variant", "local-sgd", "--learners", "4", "--local-steps", "10",
            "--comm-delay", "4", "--updates", "20000", "--seed", "12"]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    direct = simulate("local-sgd", 4, local_steps=10, comm_delay=4.0, updates=20_000, seed=12)
    assert r["mean_time_per_local_step"] == direct.mean_time_per_local_step
    assert r["speedup"] == direct.speedup and r["local_steps"] == 10
    assert r["predicted_speedup"] == pytest.approx(3.50, abs=0.005)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "local-sgd, P=4, K=4, tau=10" in out
    for row in ("time per local step", "time per round", "speedup over sync"):
        assert row in out
    assert "E[Ybar_(m:m)] + E[D]/tau" in out
    assert main(["simulate", "--variant", "sync", "--local-steps", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "fastps simulate: simulate: local_steps applies to local-sgd only (got variant='sync', "
        "local_steps=2)"
    )
