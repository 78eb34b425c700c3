"""fit(): asynchronous learners (threads and processes) train through the store; errors
surface with their traceback; a killed training resumes from its checkpoint."""

import functools
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time

import pytest
import torch
from conftest import blobs

from fastps.train.fit import Straggler, fit

LOGREG = functools.partial(torch.nn.Linear, 8, 3)


@pytest.mark.parametrize("mode", ["leashed", "locked", "hogwild"])
def test_thread_learners_train_logistic_regression(mode):
    h = fit(LOGREG, blobs(), learners=4, backend="thread", mode=mode, lr=0.1, updates=400,
            batch_size=32, eval_every=100)  # fmt: skip
    assert h.evals[0]["accuracy"] < 0.8 < h.final_accuracy
    assert sum(ln["updates"] for ln in h.learners) == 400
    assert h.stats["clock"] == 400
    counts = [e["updates"] for e in h.evals]
    assert counts == sorted(set(counts)) and counts[-1] == 400  # one evaluation per count
    assert h.evals[-1]["loss"] < h.evals[0]["loss"]
    assert all(ln["push_s"] > 0 and ln["pull_s"] > 0 and ln["compute_s"] > 0 for ln in h.learners)


def test_the_final_evaluation_replaces_one_at_the_same_update_count():
    import numpy as np

    from fastps import Store
    from fastps.torch import ParamLayout
    from fastps.train.history import History
    from fastps.train.run import reporters

    model = LOGREG()
    layout = ParamLayout.from_module(model)
    h = History()
    with Store(init=np.zeros(layout.size, np.float32), lr=0.1) as store:
        evaluate, _ = reporters(store, model, layout, blobs(), h, {}, t_start=0.0, eval_train=0,
                                checkpoint=None, progress=None)  # fmt: skip
        evaluate()  # at 0 during the run
        evaluate(final=True)  # the run ended there: replaced, not repeated
        assert [e["updates"] for e in h.evals] == [0]
        store.learner().push(np.arange(layout.size, dtype=np.float32))
        evaluate(final=True)  # a later count: appended
        assert [e["updates"] for e in h.evals] == [0, 1]
        assert h.evals[1]["loss"] != h.evals[0]["loss"]


def test_process_learners_train_and_the_history_saves(tmp_path):
    h = fit(LOGREG, blobs(), learners=2, lr=0.1, updates=300, batch_size=32)
    assert h.final_accuracy > 0.8
    assert h.stats["clock"] == 300 and h.stats["learners"] == 0
    assert 0 < h.started_s < h.evals[-1]["t_s"]  # spawning and loading come before training
    h.save(tmp_path / "h.jsonl")
    lines = (tmp_path / "h.jsonl").read_text().splitlines()
    assert len(lines) == 1 + len(h.evals) + 2 + 300 + 1  # config, evals, learners, updates, stats


def _bad_model():
    if mp.current_process().name != "MainProcess":
        raise ZeroDivisionError("the learner's model exploded")
    return torch.nn.Linear(8, 3)


def test_a_failing_learner_is_reported_with_its_traceback():
    t0 = time.perf_counter()
    with pytest.raises(
        RuntimeError,
        match=r"(?s)learner \d failed:.*ZeroDivisionError: the learner's model exploded",
    ):
        fit(_bad_model, blobs(), learners=2, updates=100)
    assert time.perf_counter() - t0 < 60


def test_unknown_variant_and_bad_arguments():
    with pytest.raises(
        ValueError, match=r"fit: variant must be one of async, sync, .* \(got 'elastic'\)"
    ):
        fit(LOGREG, blobs(), variant="elastic")
    with pytest.raises(ValueError, match=r"checkpoint_every needs checkpoint=PATH"):
        fit(LOGREG, blobs(), checkpoint_every=10)


def _train_until_killed(path):
    fit(LOGREG, blobs(), learners=2, backend="thread", lr=0.1, updates=100000, batch_size=32,
        checkpoint_every=100, checkpoint=path)  # fmt: skip


def test_a_killed_training_resumes_from_its_checkpoint(tmp_path):
    path = str(tmp_path / "run.ckpt")
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_train_until_killed, args=(path,))
    p.start()
    deadline = time.time() + 60
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    assert os.path.exists(path)
    import fastps

    with fastps.Store.load(path) as saved:
        done = saved.stats()["clock"]
    assert 100 <= done < 100000
    target = done + 300
    resumed = fit(LOGREG, blobs(), learners=2, backend="thread", lr=0.1, updates=target,
                  batch_size=32, resume_from=path)  # fmt: skip
    assert resumed.config["resumed_at"] == done
    assert resumed.stats["clock"] == target
    assert sum(ln["updates"] for ln in resumed.learners) == 300
    fresh = fit(
        LOGREG, blobs(), learners=2, backend="thread", lr=0.1, updates=target, batch_size=32
    )
    assert resumed.evals[0]["accuracy"] > 0.8  # it starts where the killed run was
    assert abs(resumed.final_accuracy - fresh.final_accuracy) < 0.03
    print(f"killed at {done} updates; resumed to {target}: accuracy {resumed.final_accuracy:.3f} "
          f"vs uninterrupted {fresh.final_accuracy:.3f}", file=sys.stderr)  # fmt: skip


def _descendants(pid):
    """Every live process under ``pid`` (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _touch_when_training(path, rec):
    if rec.get("updates", 0) > 0 and not os.path.exists(path):
        open(path, "w").close()


def _train_long(variant, marker):
    fit(LOGREG, blobs(), learners=2, variant=variant, lr=0.1, updates=10**7, batch_size=32,
        progress=functools.partial(_touch_when_training, marker))  # fmt: skip


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("variant", ["sync", "async"])
def test_learner_processes_of_a_killed_run_stop_and_remove_its_store(tmp_path, variant):
    # sync learners wait for the coordinator's reply, async ones for nothing: both must notice
    marker = str(tmp_path / "training")
    p = mp.get_context("spawn").Process(target=_train_long, args=(variant, marker))
    p.start()
    deadline = time.time() + 120
    while not os.path.exists(marker) and p.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    assert os.path.exists(marker), "the run never started training"
    learners = _descendants(p.pid)
    segment = [e for e in os.listdir("/dev/shm") if e.startswith(f"fastps.fit-{p.pid}-")]
    assert len(learners) >= 2 and len(segment) == 1
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    deadline = time.time() + 20
    while time.time() < deadline and (any(map(_alive, learners))
                                      or os.path.exists(f"/dev/shm/{segment[0]}")):  # fmt: skip
        time.sleep(0.1)
    assert not [q for q in learners if _alive(q)], "learners outlived the killed run"
    assert not os.path.exists(f"/dev/shm/{segment[0]}"), "the store's name was left behind"


# -- the sync-to-async spectrum ----------------------------------------------------------------

P = 4


def spectrum(variant, k=None, straggler=None, updates=120, learners=P, lr=0.2):
    return fit(LOGREG, blobs(), learners=learners, variant=variant, k=k, backend="thread",
               lr=lr, updates=updates, batch_size=32,
               straggler=straggler or Straggler("exp", mean=0.002))  # fmt: skip


def test_sync_waits_for_every_learner_on_the_current_model():
    h = spectrum("sync")
    assert len(h.updates) == 120 and h.stats["clock"] == 120
    for u in h.updates:
        assert sorted(u["learners"]) == list(range(P))  # all P, once each
        assert set(u["versions"]) == {u["update"] - 1}  # all on the model of the last update
    assert h.coordinator["dropped_late"] == 0 and h.coordinator["cancelled"] == 0
    assert [ln["updates"] for ln in h.learners] == [120] * P
    assert h.final_accuracy > 0.85


@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_sync_drops_exactly_the_late_gradients_of_each_update(k):
    h = spectrum("k-sync", k=k)
    for u in h.updates:
        assert len(set(u["learners"])) == k == u["k"]  # the first K, distinct
        assert set(u["versions"]) == {u["update"] - 1}
    # At each update the other P - K learners were mid-computation: their work is dropped.
    assert all(u["in_progress"] == P - k for u in h.updates)
    # Every gradient a learner sent was used by exactly one update or dropped as late; work
    # overtaken before it was sent was cancelled by the learner and never sent.
    sent = sum(ln["updates"] for ln in h.learners)
    c = h.coordinator
    assert sent == k * 120 + c["dropped_late"] + c["after_end"] and c["after_end"] <= P
    assert c["cancelled"] > 0  # overtaken work was really abandoned mid-way
    assert h.final_accuracy > 0.85


def test_k_batch_sync_keeps_the_model_until_the_update():
    # Learner 0 is slow: the K = 3 gradients of an update come mostly from the other two,
    # several from the same learner, all computed on the model of the last update.
    h = spectrum(
        "k-batch-sync", k=3, learners=3, straggler=Straggler("slow", learner=0, delay=0.01)
    )
    repeats = 0
    for u in h.updates:
        assert u["k"] == 3 and set(u["versions"]) == {u["update"] - 1}
        repeats += len(u["learners"]) > len(set(u["learners"]))
    assert repeats > len(h.updates) // 2
    assert h.final_accuracy > 0.85


def test_k_async_updates_after_k_distinct_learners_with_staleness_p_over_k_minus_1():
    h = spectrum("k-async", k=2, updates=300)
    for u in h.updates:
        assert len(set(u["learners"])) == 2
    assert h.coordinator["dropped_late"] == 0 and h.coordinator["cancelled"] == 0
    assert abs(h.coordinator["staleness_mean"] - (P / 2 - 1)) < 0.25
    assert h.final_accuracy > 0.85


def test_k_batch_async_never_idles_and_has_staleness_p_minus_1_over_k():
    h = spectrum("k-batch-async", k=2, updates=300)
    assert all(u["k"] == 2 for u in h.updates)
    assert abs(h.coordinator["staleness_mean"] - (P - 1) / 2) < 0.3
    busy = sum(ln["compute_s"] + ln["delay_s"] for ln in h.learners)
    waited = sum(ln["wait_s"] for ln in h.learners)
    assert waited < 0.25 * busy  # a reply is an acknowledgement, not a wait for the update
    assert h.final_accuracy > 0.85


def test_k_must_fit_the_variant():
    with pytest.raises(ValueError, match=r"variant 'k-sync' needs k in \[1, 4\] \(got k=5\)"):
        spectrum("k-sync", k=5)
    with pytest.raises(ValueError, match=r"variant 'sync' fixes k \(got k=2\)"):
        spectrum("sync", k=2)
    with pytest.raises(
        ValueError, match=r"Straggler: kind must be exp, shifted-exp, slow or fixed"
    ):
        Straggler("weird")


def _digits_logreg():
    from fastps.train.models import build

    return build("logreg", (1, 8, 8), 10, seed=0)


@pytest.mark.parametrize(
    "kw",
    [
        dict(variant="async", mode="leashed", step_size=None),
        dict(variant="async", mode="leashed", step_size="tail"),
        dict(variant="sync", mode="leashed", step_size=None),
    ],
    ids=["async-leashed", "async-leashed-tailtau", "sync"],
)
def test_four_learners_converge_like_one_on_digits(kw):
    pytest.importorskip("sklearn")
    import fastps
    from fastps.train.data import load

    ds = load("digits")
    common = dict(backend="thread", lr=0.1, updates=1500, batch_size=32, seed=1)
    one = fit(_digits_logreg, ds, learners=1, mode="locked", **common)
    policy = fastps.TailTau(warmup=60) if kw["step_size"] == "tail" else None
    four = fit(_digits_logreg, ds, learners=4, variant=kw["variant"], mode=kw["mode"],
               step_size=policy, **common)  # fmt: skip
    l1, l4 = one.evals[-1]["loss"], four.evals[-1]["loss"]
    assert l1 < 0.5 * one.evals[0]["loss"]  # the baseline itself learned
    assert abs(l4 - l1) < 0.1 + 0.15 * l1, (l1, l4)
    print(f"{kw}: test loss {l4:.3f} with 4 learners vs {l1:.3f} with one", file=sys.stderr)


# -- local updates -----------------------------------------------------------------------------


def test_local_sgd_averages_every_tau_local_steps():
    h = fit(LOGREG, blobs(), learners=P, variant="local-sgd", local_steps=4, backend="thread",
            lr=0.1, updates=60, batch_size=32)  # fmt: skip
    for u in h.updates:  # every exchange averages all P models, all from the last average
        assert sorted(u["learners"]) == list(range(P)) and set(u["versions"]) == {u["update"] - 1}
    assert all(ln["updates"] == 60 and ln["steps"] == 4 * 60 for ln in h.learners)
    assert h.final_accuracy > 0.85


def test_easgd_with_alpha_zero_leaves_the_centre_unchanged():
    h = fit(LOGREG, blobs(), learners=P, variant="easgd", alpha=0.0, backend="thread", lr=0.1,
            updates=100, batch_size=32)  # fmt: skip
    assert h.stats["clock"] == 100  # the learners did exchange...
    assert h.evals[-1]["loss"] == h.evals[0]["loss"]  # ...but the centre never moved
    assert all(ln["loss_last"] < 0.6 * ln["loss_first"] for ln in h.learners)  # they learned


def test_easgd_pulls_the_centre_to_the_learners():
    h = fit(LOGREG, blobs(), learners=P, variant="easgd", backend="thread", lr=0.1,
            updates=100, batch_size=32)  # fmt: skip
    assert h.config["alpha"] == 2 / (P + 2)
    assert h.final_accuracy > 0.85


def test_downpour_fetches_every_n_fetch_and_pushes_accrued_gradients_every_n_push():
    h = fit(LOGREG, blobs(), learners=P, variant="downpour", n_fetch=2, n_push=3,
            backend="thread", lr=0.1, updates=100, batch_size=32)  # fmt: skip
    assert h.stats["clock"] == 100 == sum(ln["updates"] for ln in h.learners)
    assert all(ln["steps"] == 3 * ln["updates"] for ln in h.learners)
    assert h.final_accuracy > 0.85


def test_local_variants_refuse_a_server_optimizer():
    with pytest.raises(ValueError, match=r"fit: easgd exchanges models through the store's plain"):
        fit(LOGREG, blobs(), variant="easgd", momentum=0.9)


def test_adacomm_shrinks_tau_as_the_loss_falls():
    h = fit(LOGREG, blobs(), learners=P, variant="adacomm", local_steps=8, backend="thread",
            lr=0.1, updates=40, batch_size=32)  # fmt: skip
    taus = [u["tau"] for u in h.updates]
    assert taus[0] == 8 and all(1 <= t <= 8 for t in taus) and taus[-1] < 8
    for u in h.updates:
        assert sorted(u["learners"]) == list(range(P))
    # Each round every learner took exactly that round's tau local steps.
    assert all(ln["steps"] == sum(taus) for ln in h.learners)
    assert h.final_accuracy > 0.85


def test_adasync_grows_k_as_the_loss_falls():
    h = fit(LOGREG, blobs(), learners=P, variant="adasync", k=1, interval_s=0.05,
            backend="thread", lr=0.1, updates=300, batch_size=32,
            straggler=Straggler("exp", mean=0.002))  # fmt: skip
    ks = [u["k"] for u in h.updates]
    assert ks[0] == 1 and max(ks) > 1 and all(1 <= k <= P for k in ks)
    for u in h.updates:  # K-sync rules with the K of the moment
        assert len(set(u["learners"])) == u["k"] and set(u["versions"]) == {u["update"] - 1}
    assert h.final_accuracy > 0.85


@pytest.mark.parametrize("variant", ["async", "easgd", "k-async"])
def test_a_time_budget_ends_the_run(variant):
    t0 = time.perf_counter()
    h = fit(LOGREG, blobs(), learners=P, variant=variant, k=2 if variant == "k-async" else None,
            backend="thread", lr=0.1, updates=10**6, batch_size=32, time_budget_s=0.5)  # fmt: skip
    assert time.perf_counter() - t0 < 5
    assert 0 < h.stats["clock"] < 10**6
    assert h.final_accuracy > 0.85


def test_async_history_logs_every_push_with_its_loss_and_staleness():
    h = fit(LOGREG, blobs(), learners=2, backend="thread", lr=0.2, updates=60, batch_size=32)
    assert [u["update"] for u in h.updates] == list(range(1, 61))
    assert sorted(u["t_s"] for u in h.updates) == [u["t_s"] for u in h.updates]
    counts = [sum(u["learners"] == [r] for u in h.updates) for r in range(2)]
    assert counts == [ln["updates"] for ln in h.learners] == [30, 30]
    # Staleness per push, from the versions the push created and the versions its pull read:
    # the mean over the log equals the store's own histogram mean (one shard here).
    from fastps.train.fit import mean_staleness

    logged = sum(u["staleness"] for u in h.updates) / len(h.updates)
    assert logged == pytest.approx(mean_staleness(h.stats["staleness_hist"]))
    assert all(math.isfinite(u["loss"]) and u["k"] == 1 for u in h.updates)
    assert "pushes" not in h.learners[0]


def test_devices_are_checked_and_cpu_learners_run_there():
    h = fit(LOGREG, blobs(), learners=2, backend="thread", lr=0.2, updates=20, batch_size=32,
            devices=["cpu"])  # fmt: skip
    assert [ln["device"] for ln in h.learners] == ["cpu", "cpu"]
    assert h.config["devices"] == ["cpu"]
    with pytest.raises(ValueError, match="fit: devices: 'tpu' is not a torch device"):
        fit(LOGREG, blobs(), learners=2, backend="thread", updates=4, devices=["tpu"])
    with pytest.raises(ValueError, match="fit: devices must be a non-empty list"):
        fit(LOGREG, blobs(), learners=2, backend="thread", updates=4, devices="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fit: devices: 'cuda:0' needs a CUDA GPU"):
            fit(LOGREG, blobs(), learners=2, backend="thread", updates=4, devices=["cuda:0"])


# -- how long a run trains: epochs are passes over the data, whatever the variant ----------------

# blobs(): 1600 training examples, so one epoch in mini-batches of 32 is 50 of them.
EPOCH = 50


@pytest.mark.parametrize(
    "variant, kw, per_update",
    [
        ("async", {}, 1),
        ("sync", {}, P),  # every update averages P gradients
        ("k-async", {"k": 2}, 2),
        ("local-sgd", {"local_steps": 5}, 5 * P),  # a round: tau local steps on each learner
        ("easgd", {"local_steps": 2}, 2),  # a learner's exchange after tau local steps
        ("downpour", {"n_push": 5}, 5),  # one push carries n_push steps' gradients
    ],
)
def test_epochs_count_passes_over_the_data_in_every_variant(variant, kw, per_update):
    h = fit(LOGREG, blobs(), learners=P, variant=variant, backend="thread", lr=0.1,
            batch_size=32, epochs=2, evals=3, **kw)  # fmt: skip
    updates = math.ceil(2 * EPOCH / per_update)
    assert h.stats["clock"] == h.config["updates"] == updates
    assert h.config["eval_every"] == max(1, updates // 3)  # evals spread over the run's updates
    if variant in ("async", "easgd", "downpour"):  # mini-batches that went into pushes
        assert sum(ln["steps"] for ln in h.learners) == updates * per_update
    else:
        assert h.coordinator["batches"] == updates * per_update


def test_adacomm_counts_the_mini_batches_of_its_shrinking_rounds():
    h = fit(LOGREG, blobs(), learners=P, variant="adacomm", local_steps=8, backend="thread",
            lr=0.1, batch_size=32, epochs=4)  # fmt: skip
    used = [len(u["learners"]) * u["tau"] for u in h.updates]
    assert h.coordinator["batches"] == sum(used)
    assert sum(used[:-1]) < 4 * EPOCH <= sum(used)  # the last round completes the epochs
    assert h.config["batches"] == 4 * EPOCH and min(u["tau"] for u in h.updates) < 8


def test_a_time_budget_alone_is_not_capped_at_an_epoch():
    t0 = time.perf_counter()
    h = fit(LOGREG, blobs(), learners=P, backend="thread", lr=0.1, batch_size=800,
            time_budget_s=0.5)  # one epoch would be 2 updates  # fmt: skip
    assert time.perf_counter() - t0 < 5
    assert h.stats["clock"] > 2 and h.config["updates"] is None


def test_run_length_and_variant_options_are_refused_where_they_do_not_apply():
    with pytest.raises(ValueError, match=r"fit: give epochs or updates, not both"):
        fit(LOGREG, blobs(), epochs=1, updates=10)
    with pytest.raises(ValueError, match=r"fit: epochs must be a number > 0 \(got 0\)"):
        fit(LOGREG, blobs(), epochs=0)
    with pytest.raises(ValueError, match=r"fit: updates must be an integer >= 1 \(got 0\)"):
        fit(LOGREG, blobs(), updates=0)
    with pytest.raises(ValueError, match=r"fit: evals must be an integer >= 1 \(got 0\)"):
        fit(LOGREG, blobs(), evals=0)
    with pytest.raises(ValueError, match=r"fit: learners must be an integer >= 1 \(got True\)"):
        fit(LOGREG, blobs(), learners=True)
    with pytest.raises(ValueError, match=r"fit: eval_train must be an integer >= 0 \(got -1\)"):
        fit(LOGREG, blobs(), eval_train=-1)
    with pytest.raises(ValueError, match=r"fit: give eval_every or evals, not both"):
        fit(LOGREG, blobs(), evals=2, eval_every=5)
    with pytest.raises(ValueError, match=r"fit: evals needs a run of known length"):
        fit(LOGREG, blobs(), evals=2, time_budget_s=1.0)
    for variant, kw, name in [("async", {"alpha": 0.5}, "alpha"),
                              ("sync", {"n_fetch": 2}, "n_fetch"),
                              ("easgd", {"n_push": 2}, "n_push"),
                              ("k-async", {"k": 2, "local_steps": 3}, "local_steps"),
                              ("k-sync", {"k": 2, "interval_s": 0.5}, "interval_s")]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"fit: {name} is for variant .*'{variant}' does"):
            fit(LOGREG, blobs(), variant=variant, **kw)


# -- what a coordinated run reports ----------------------------------------------------------------


def test_coordinated_updates_log_their_loss_and_staleness():
    h = fit(LOGREG, blobs(), learners=P, variant="k-async", k=1, backend="thread", lr=0.1,
            updates=80, batch_size=32)  # fmt: skip
    for u in h.updates:  # K = 1: the one gradient's staleness, from the model it started on
        assert u["staleness"] == u["update"] - 1 - u["versions"][0]
        assert math.isfinite(u["loss"]) and u["loss"] > 0
    taus = [u["staleness"] for u in h.updates]
    assert max(taus) >= 1  # four learners on one model: some gradients are stale
    # The evaluations report the coordinator's staleness (the store's own is always 0 here).
    assert h.evals[-1]["staleness_mean"] == pytest.approx(sum(taus) / len(taus))
    assert h.evals[-1]["staleness_mean"] == h.coordinator["staleness_mean"]
    assert h.updates[0]["t_s"] > h.started_s  # on the evaluations' clock


def _slow_model():
    time.sleep(0.5)  # a learner's set-up (data, model) before the start
    return LOGREG()


def test_adasync_adapts_every_interval_from_the_learners_start():
    h = fit(_slow_model, blobs(), learners=P, variant="adasync", k=1, interval_s=0.1,
            backend="thread", lr=0.1, updates=150, batch_size=32,
            straggler=Straggler("fixed", delay=0.002))  # fmt: skip
    times = [t for t, _k in h.coordinator["adaptations"]]
    assert len(times) >= 2
    # At most one adaptation per interval, counted from the learners' start (not from the
    # first gradients after a 0.5 s set-up, which would adapt on every gradient at first).
    slots = [math.floor((t - h.started_s) / 0.1 + 1e-6) for t in times]
    assert slots[0] >= 1 and all(a < b for a, b in zip(slots, slots[1:]))


def _fail_in_learner_one():
    if threading.current_thread().name.endswith("learner-1"):
        raise ZeroDivisionError("learner 1's model exploded")
    return LOGREG()


@pytest.mark.parametrize("variant", ["async", "k-sync"])
def test_a_failing_thread_learner_ends_the_run_at_once_and_leaves_no_thread(variant):
    before = set(threading.enumerate())
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"(?s)learner 1 failed:.*ZeroDivisionError"):
        fit(_fail_in_learner_one, blobs(), learners=3, variant=variant,
            k=2 if variant == "k-sync" else None, backend="thread", updates=100)  # fmt: skip
    assert time.perf_counter() - t0 < 5
    left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []


def _bn_logreg():
    torch.manual_seed(0)
    # momentum=None: the running statistics are the plain average over the batches seen.
    return torch.nn.Sequential(torch.nn.BatchNorm1d(8, momentum=None), torch.nn.Linear(8, 3))


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_evaluations_use_the_learners_batchnorm_statistics(backend, tmp_path):
    import numpy as np

    from fastps import Store
    from fastps.layout import ParamLayout

    ds = blobs()
    h = fit(_bn_logreg, ds, learners=1, backend=backend, lr=0.1, epochs=1, batch_size=32,
            checkpoint=tmp_path / "ck")  # fmt: skip
    # One epoch of 50 batches of 32 is one permutation of the 1600 examples: the running
    # mean is the data's mean, the running variance the mean of the batches' variances.
    order = np.random.default_rng([0, 0]).permutation(1600)
    batches = [ds.x_train[order[j * 32 : (j + 1) * 32]] for j in range(50)]
    model = _bn_logreg()
    store = Store.load(tmp_path / "ck")
    params = torch.from_numpy(store.read())
    store.close()
    with torch.no_grad():
        views = ParamLayout.from_module(model).unflatten(params)
        for name, p in model.named_parameters():
            p.copy_(views[name])
        bn = model[0]
        bn.running_mean.copy_(torch.from_numpy(np.mean([b.mean(0) for b in batches], 0)))
        bn.running_var.copy_(torch.from_numpy(np.mean([b.var(0, ddof=1) for b in batches], 0)))
        model.eval()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(ds.x_test)),
                                                 torch.from_numpy(ds.y_test))  # fmt: skip
    assert h.evals[-1]["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert h.evals[-1]["loss"] != pytest.approx(h.evals[0]["loss"], rel=1e-2)


def test_learners_share_the_cores_out_in_torch_threads(monkeypatch):
    from fastps.train import fit as fit_module

    monkeypatch.setattr(fit_module.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert [fit_module.learner_threads(p) for p in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    h = fit(LOGREG, blobs(), learners=2, lr=0.1, updates=20, batch_size=32, threads=1)
    assert [ln["threads"] for ln in h.learners] == [1, 1] and h.config["threads"] == 1
    with pytest.raises(ValueError, match=r"fit: threads must be an integer >= 1 \(got 0\)"):
        fit(LOGREG, blobs(), threads=0)
