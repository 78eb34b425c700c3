"""fit()'s injected communication delay (comm_delay) and training-set evaluation (eval_train)."""

import functools
import types

import numpy as np
import pytest
import torch

from fastps.train.fit import Straggler, fit

LOGREG = functools.partial(torch.nn.Linear, 8, 3)


def blobs(n=500, d=8, classes=3, seed=0, test_is_train=False):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d)).astype(np.float32) * 1.2
    y = rng.integers(0, classes, n)
    x = (centres[y] + rng.standard_normal((n, d))).astype(np.float32)
    cut = n * 4 // 5
    if test_is_train:
        return types.SimpleNamespace(x_train=x[:cut], y_train=y[:cut], x_test=x[:100],
                                     y_test=y[:100])  # fmt: skip
    return types.SimpleNamespace(x_train=x[:cut], y_train=y[:cut], x_test=x[cut:], y_test=y[cut:])


D = 0.01


def test_comm_delay_is_slept_before_every_push_and_pull():
    h = fit(LOGREG, blobs(), learners=2, backend="thread", lr=0.1, updates=20, batch_size=16,
            comm_delay=D)  # fmt: skip
    assert h.config["comm_delay"] == D
    for ln in h.learners:  # async: every update is one push and one pull
        assert ln["updates"] == 10
        assert ln["push_s"] >= 10 * D and ln["pull_s"] >= 10 * D
    plain = fit(LOGREG, blobs(), learners=2, backend="thread", lr=0.1, updates=20, batch_size=16)
    assert all(ln["push_s"] < 10 * D for ln in plain.learners)  # the delay is what made it long


def test_comm_delay_counts_each_hand_over_of_a_local_sgd_round():
    h = fit(LOGREG, blobs(), learners=2, backend="thread", variant="local-sgd", local_steps=4,
            lr=0.1, updates=3, batch_size=16, comm_delay=D)  # fmt: skip
    for ln in h.learners:
        assert ln["steps"] == 4 * ln["updates"]  # a round: 4 local steps, then one hand-over
        assert ln["push_s"] >= ln["updates"] * D
        assert ln["pull_s"] >= (ln["updates"] - 1) * D  # no pull after the last round's stop


def test_eval_train_evaluates_the_first_training_examples():
    ds = blobs(test_is_train=True)  # the test set is the first 100 training examples
    h = fit(LOGREG, ds, learners=2, backend="thread", lr=0.1, updates=40, batch_size=16,
            eval_every=10, eval_train=100)  # fmt: skip
    assert len(h.evals) >= 2 and h.evals[-1]["train_loss"] < h.evals[0]["train_loss"]
    for e in h.evals:
        assert e["train_loss"] == e["loss"] and e["train_accuracy"] == e["accuracy"]
    assert "train_loss" not in fit(LOGREG, ds, backend="thread", updates=4).evals[0]


def test_bad_injection_arguments_are_refused():
    with pytest.raises(ValueError, match=r"fit: comm_delay must be finite seconds >= 0 \(got -1"):
        fit(LOGREG, blobs(), comm_delay=-1.0)
    with pytest.raises(ValueError, match=r"fit: eval_train must be an integer >= 0 \(got 2.5\)"):
        fit(LOGREG, blobs(), eval_train=2.5)


def test_run_s_holds_every_part_of_a_learners_time():
    h = fit(LOGREG, blobs(), learners=2, backend="thread", lr=0.1, updates=40, batch_size=16,
            comm_delay=0.002)  # fmt: skip
    for ln in h.learners:  # the parts are disjoint intervals inside [start, end]
        parts = ln["compute_s"] + ln["push_s"] + ln["pull_s"] + ln["wait_s"] + ln["delay_s"]
        assert 20 * 2 * 0.002 <= parts <= ln["run_s"]
    assert h.evals[-1]["t_s"] >= h.started_s + max(ln["run_s"] for ln in h.learners)


def test_a_straggler_delay_cut_short_by_an_update_counts_only_the_time_slept():
    # k-sync, K = 1: every update of learner 0 cancels learner 1's 0.5 s delay.
    h = fit(LOGREG, blobs(), learners=2, backend="thread", variant="k-sync", k=1, lr=0.1,
            updates=30, batch_size=16, straggler=Straggler("slow", learner=1, delay=0.5))  # fmt: skip
    slow = h.learners[1]
    assert slow["delay_s"] <= slow["run_s"] < 0.5 * max(1, slow["steps"] + slow["cancelled"])
    for ln in h.learners:
        parts = ln["compute_s"] + ln["push_s"] + ln["pull_s"] + ln["wait_s"] + ln["delay_s"]
        assert parts <= ln["run_s"]
