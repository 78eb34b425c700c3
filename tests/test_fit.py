"""fit(): asynchronous learners (threads and processes) train through the store; errors
surface with their traceback; a killed training resumes from its checkpoint."""

import functools
import multiprocessing as mp
import os
import signal
import sys
import time
import types

import numpy as np
import pytest
import torch

from fastps.train.fit import fit


def blobs(n=2000, d=8, classes=3, seed=0):
    """Gaussian blobs that overlap: logistic regression reaches about 90%, not 100%."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d)).astype(np.float32) * 1.2
    y = rng.integers(0, classes, n)
    x = (centres[y] + rng.standard_normal((n, d))).astype(np.float32)
    cut = n * 4 // 5
    return types.SimpleNamespace(x_train=x[:cut], y_train=y[:cut], x_test=x[cut:], y_test=y[cut:])


LOGREG = functools.partial(torch.nn.Linear, 8, 3)


@pytest.mark.parametrize("mode", ["leashed", "locked", "hogwild"])
def test_thread_learners_train_logistic_regression(mode):
    h = fit(LOGREG, blobs(), learners=4, backend="thread", mode=mode, lr=0.1, updates=400,
            batch_size=32, eval_every=100)  # fmt: skip
    assert h.evals[0]["accuracy"] < 0.8 < h.final_accuracy
    assert sum(ln["updates"] for ln in h.learners) == 400
    assert h.stats["clock"] == 400 and h.evals[-1]["updates"] == 400
    assert h.evals[-1]["loss"] < h.evals[0]["loss"]
    assert all(ln["push_s"] > 0 and ln["pull_s"] > 0 and ln["compute_s"] > 0 for ln in h.learners)


def test_process_learners_train_and_the_history_saves(tmp_path):
    h = fit(LOGREG, blobs(), learners=2, lr=0.1, updates=300, batch_size=32)
    assert h.final_accuracy > 0.8
    assert h.stats["clock"] == 300 and h.stats["learners"] == 0
    h.save(tmp_path / "h.jsonl")
    lines = (tmp_path / "h.jsonl").read_text().splitlines()
    assert len(lines) == 1 + len(h.evals) + 2 + 1


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
    with pytest.raises(ValueError, match=r"fit: variant must be one of async \(got 'k-sync'\)"):
        fit(LOGREG, blobs(), variant="k-sync")
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
