"""The fastps command line: `fastps train`'s options, what it refuses, what it hands to fit(),
and short real runs."""

import json
import math
import os

import numpy as np
import pytest

from fastps import cli
from fastps.cli import main
from fastps.train import data as datasets
from fastps.train import fit as fit_module
from fastps.train.fit import History, Straggler


def train_parser():
    return cli._subparser(cli._parser(), "train")


# --- help ---------------------------------------------------------------------------------------


def test_help_mentions_every_option_and_each_has_help():
    t = train_parser()
    text = t.format_help()
    options = [(s, a) for a in t._actions for s in a.option_strings]
    assert len(options) > 30
    for opt, action in options:
        assert opt in text, opt
        assert action.help and action.help.strip(), f"{opt} has no help"
    # the options added with the straggler and the network latency of fit()
    assert {"--straggler", "--comm-delay"} <= {s for s, _ in options}
    helps = {s: a.help for s, a in options}
    assert "adasync" in helps["--k"]  # adasync takes K_0 from --k
    assert "adacomm: tau_0" in helps["--local-steps"]
    assert "local-sgd" in helps["--local-steps"] and "easgd" in helps["--local-steps"]
    # an option whose default is None says its fallback itself, not "(default: None)"
    assert "default: None" not in text


# --- what a variant needs and what it does not use ------------------------------------------


@pytest.mark.parametrize("variant, bound", [
    ("k-sync", "1..P"), ("k-async", "1..P"), ("k-batch-sync", "K >= 1"),
    ("k-batch-async", "K >= 1"), ("adasync", "K_0, 1..P"),
])  # fmt: skip
def test_a_k_variant_without_k_is_a_usage_error(capsys, variant, bound):
    with pytest.raises(SystemExit) as e:
        main(["train", "--variant", variant, "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fastps train")
    assert err.endswith(f"fastps train: error: --variant {variant} needs --k ({bound})\n")


K_USERS = "k-sync, k-batch-sync, k-async, k-batch-async, adasync"


@pytest.mark.parametrize("argv, msg", [
    (["--alpha", "0.5"], "--alpha is for --variant easgd; async does not use it"),
    (["--variant", "downpour", "--alpha", "0.5"],
     "--alpha is for --variant easgd; downpour does not use it"),
    # the default value, given explicitly, is refused too: argparse's default is None
    (["--n-fetch", "1"], "--n-fetch is for --variant downpour; async does not use it"),
    (["--variant", "easgd", "--n-push", "2"],
     "--n-push is for --variant downpour; easgd does not use it"),
    (["--variant", "k-sync", "--k", "2", "--interval-s", "2"],
     "--interval-s is for --variant adasync; k-sync does not use it"),
    (["--local-steps", "3"],
     "--local-steps is for --variant local-sgd, adacomm, easgd; async does not use it"),
    (["--variant", "downpour", "--local-steps", "3"],
     "--local-steps is for --variant local-sgd, adacomm, easgd; downpour does not use it"),
    (["--variant", "sync", "--k", "4"],
     f"--k is for --variant {K_USERS}; sync does not use it (it fixes K = P)"),
    (["--variant", "local-sgd", "--k", "4"],
     f"--k is for --variant {K_USERS}; local-sgd does not use it (it fixes K = P)"),
    (["--k", "1"], f"--k is for --variant {K_USERS}; async does not use it (it fixes K = 1)"),
    (["--servers", "3"], "--servers is for --backend ray (got --backend process)"),
    (["--address", "auto", "--backend", "thread"],
     "--address is for --backend ray (got --backend thread)"),
    (["--threads", "1", "--backend", "ray"],
     "--threads is for --backend process or thread (Ray actors get their CPUs from Ray)"),
    (["--epochs", "1", "--updates", "10"], "give --epochs or --updates, not both"),
    (["--time-budget-s", "5", "--evals", "3"], "--evals needs a run of known length"),
    (["--straggler", "slow:4:0.1"], "--straggler slow:4:...: learner 4 does not exist "
                                     "(learners 0..3)"),
])  # fmt: skip
def test_an_option_the_run_would_not_use_is_a_usage_error(capsys, argv, msg):
    with pytest.raises(SystemExit) as e:
        main(["train", "--no-progress", *argv])
    assert e.value.code == 2
    assert f"fastps train: error: {msg}" in capsys.readouterr().err


# --- the straggler and the network latency ------------------------------------------------


@pytest.mark.parametrize("text, want", [
    ("exp:0.01", Straggler("exp", mean=0.01)),
    ("shifted-exp:0.002:0.01", Straggler("shifted-exp", shift=0.002, mean=0.01)),
    ("slow:1:0.05", Straggler("slow", learner=1, delay=0.05)),
    ("fixed:0", Straggler("fixed", delay=0.0)),
])  # fmt: skip
def test_straggler_forms_parse_into_fit_stragglers(text, want):
    assert cli._straggler(text) == want


@pytest.mark.parametrize("argv, msg", [
    (["--straggler", "exp"], "expected one of exp:MEAN, "
                             "shifted-exp:SHIFT:MEAN, slow:LEARNER:DELAY, fixed:DELAY (got 'exp')"),
    (["--straggler", "pareto:1"], "expected one of exp:MEAN"),
    (["--straggler", "fixed:1:2"], "expected one of exp:MEAN"),
    (["--straggler", "exp:-1"], "exp: MEAN must be finite seconds >= 0 "
                                "(got '-1')"),
    (["--straggler", "shifted-exp:inf:1"], "shifted-exp: SHIFT must be finite seconds >= 0"),
    (["--straggler", "fixed:nan"], "fixed: DELAY must be finite seconds >= 0 (got 'nan')"),
    (["--straggler", "slow:-1:0.1"], "slow:LEARNER:DELAY: LEARNER must be a learner index >= 0 "
                                     "(got '-1')"),
    (["--comm-delay", "-0.5"], "expected finite seconds >= 0 (got '-0.5')"),
    (["--comm-delay", "inf"], "expected finite seconds >= 0 (got 'inf')"),
    (["--comm-delay", "soon"], "expected finite seconds >= 0"),
])  # fmt: skip
def test_bad_straggler_or_comm_delay_is_a_usage_error(capsys, argv, msg):
    with pytest.raises(SystemExit) as e:
        main(["train", "--no-progress", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"fastps train: error: argument {argv[0]}: " in err and msg in err


# --- what reaches fit() -------------------------------------------------------------------------


@pytest.fixture
def fake_fit(monkeypatch):
    """fit() replaced by a recorder: it reports progress as fit does and returns a History."""
    calls = []
    records = [{"updates": 3, "total": 10}, {"updates": 7, "total": 10}]

    def fake(model_fn, data, **kw):
        calls.append(kw)
        progress = kw["progress"] or (lambda rec: None)  # None: --no-progress
        for rec in records:
            progress(rec)
        ev = {"t_s": 1.0, "updates": 7, "loss": 0.5, "accuracy": 0.75, "staleness_mean": 0.0}
        progress(ev)
        ln = {"id": 0, "updates": 7, "compute_s": 1.0, "push_s": 0.5, "pull_s": 0.5,
              "wait_s": 0.0}  # fmt: skip
        return History(evals=[ev], learners=[ln], config={}, stats={
            "clock": 7, "dropped": 0, "cas_failures": 0})  # fmt: skip

    x, y = np.zeros((4, 1, 2, 2), np.float32), np.zeros(4, np.int64)
    tiny = datasets.Dataset("tiny", x, y, x, y, 2, (1, 2, 2))
    monkeypatch.setattr(fit_module, "fit", fake)
    monkeypatch.setattr(datasets, "load", lambda *a, **kw: tiny)
    fake.calls, fake.records = calls, records
    return fake


def test_fit_gets_epochs_and_only_the_options_given(fake_fit, capsys):
    assert main(["train", "--no-progress"]) == 0
    kw = fake_fit.calls[-1]
    assert kw["epochs"] == 5.0 and kw["updates"] is None  # fit counts the updates
    assert kw["evals"] is None  # fit's default: 10 evaluations a run
    for name in ("k", "local_steps", "alpha", "n_fetch", "n_push", "interval_s"):
        assert name not in kw  # fit fills in the variant's defaults
    assert kw["straggler"] is None and kw["comm_delay"] == 0.0
    assert "final test accuracy     0.7500" in capsys.readouterr().out

    argv = [
        "train",
        "--no-progress",
        "--variant",
        "adasync",
        "--k",
        "2",
        "--interval-s",
        "0.5",
        "--epochs",
        "0.5",
        "--straggler",
        "shifted-exp:0.001:0.002",
        "--comm-delay",
        "0.003",
    ]
    assert main(argv) == 0
    kw = fake_fit.calls[-1]
    assert (kw["k"], kw["interval_s"], kw["epochs"]) == (2, 0.5, 0.5)
    assert kw["straggler"] == Straggler("shifted-exp", shift=0.001, mean=0.002)
    assert kw["comm_delay"] == 0.003
    assert main(["train", "--no-progress", "--variant", "downpour", "--n-fetch", "3",
                 "--n-push", "2", "--updates", "40", "--evals", "4"]) == 0  # fmt: skip
    kw = fake_fit.calls[-1]
    assert (kw["n_fetch"], kw["n_push"], kw["updates"], kw["epochs"]) == (3, 2, 40, None)
    assert kw["evals"] == 4  # fit spreads them over the run's updates
    assert main(["train", "--no-progress", "--time-budget-s", "2"]) == 0
    kw = fake_fit.calls[-1]
    assert (kw["epochs"], kw["updates"], kw["time_budget_s"]) == (None, None, 2.0)
    assert "threads" not in kw  # fit's default: the cores shared out
    assert main(["train", "--no-progress", "--threads", "3", "--backend", "thread"]) == 0
    assert fake_fit.calls[-1]["threads"] == 3


def test_ctrl_c_ends_with_one_line_and_status_130(fake_fit, monkeypatch, capsys, tmp_path):
    def interrupted(model_fn, data, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "fit", interrupted)
    assert main(["train", "--no-progress"]) == 130
    assert capsys.readouterr().err == "fastps train: interrupted\n"
    ckpt = tmp_path / "run.ckpt"
    ckpt.write_bytes(b"")  # a checkpoint written before the interruption
    assert main(["train", "--no-progress", "--checkpoint", str(ckpt), "--checkpoint-every",
                 "100"]) == 130  # fmt: skip
    assert capsys.readouterr().err == (f"fastps train: interrupted; the last checkpoint is "
                                       f"{ckpt}: continue with --resume {ckpt}\n")  # fmt: skip


def test_the_progress_bar_takes_its_total_from_fit(fake_fit, capsys):
    assert main(["train", "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "7/10" in err and "acc=0.750" in err
    fake_fit.records[:] = [{"updates": 3, "total": None}, {"updates": 7, "total": None}]
    assert main(["train", "--time-budget-s", "1"]) == 0
    err = capsys.readouterr().err
    assert "7upd" in err and "/10" not in err


# --- runs and their errors ----------------------------------------------------------------------


def test_a_short_training_run_reports_and_writes_its_history(tmp_path, capsys):
    path = tmp_path / "h.jsonl"
    rc = main(["train", "--dataset", "digits", "--model", "logreg", "--learners", "2",
               "--updates", "300", "--backend", "thread", "--step-size", "tail", "--lr", "0.1",
               "--no-progress", "--json", str(path)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    acc = float(out.split("final test accuracy")[1].split()[0])
    assert acc > 0.8  # logistic regression on 8x8 digits
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["config"]["learners"] == 2 and lines[-1]["stats"]["clock"] == 300


def test_the_readme_job_on_fashion_mnist(tmp_path, capsys):
    """The README's main job, shortened: an MLP on Fashion-MNIST, learner processes, leashed."""
    if not datasets.FASHION_MNIST_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI must provide /usr/share/datasets/fashion-mnist")
        pytest.skip("sudo apt-get install dataset-fashion-mnist")
    path = tmp_path / "h.jsonl"
    rc = main(["train", "--dataset", "fashion-mnist", "--model", "mlp", "--learners", "2",
               "--epochs", "0.05", "--no-progress", "--json", str(path)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    cfg = lines[0]["config"]
    assert (cfg["learners"], cfg["variant"], cfg["mode"], cfg["backend"]) == (
        2,
        "async",
        "leashed",
        "process",
    )
    assert (cfg["epochs"], cfg["batch_size"], cfg["lr"]) == (0.05, 64, 0.05)
    # 0.05 epochs of async updates, one mini-batch of 64 each: ceil(0.05 * 60000 / 64)
    want = math.ceil(0.05 * 60000 / 64)
    assert want == 47 and cfg["updates"] == want and lines[-1]["stats"]["clock"] == want
    evals = [x["eval"] for x in lines if "eval" in x]
    assert evals[0]["updates"] == 0 and evals[-1]["updates"] == want
    assert evals[0]["accuracy"] < 0.2  # an untrained 10-class model
    assert evals[-1]["accuracy"] > max(0.15, evals[0]["accuracy"] + 0.05)  # it learned
    assert evals[-1]["loss"] < evals[0]["loss"]
    learners = [x["learner"] for x in lines if "learner" in x]
    assert sum(ln["updates"] for ln in learners) == want
    assert f"final test accuracy     {evals[-1]['accuracy']:.4f}" in out
    train_s = max(ln["run_s"] for ln in learners)  # the start event to the last learner's end
    assert f"updates                 {want}  ({want / train_s:.0f}/s over {train_s:.1f} s of " \
           "training; " in out  # fmt: skip
    assert f"history written to {path}" in out


@pytest.mark.parametrize("argv,msg", [
    (["--variant", "k-sync", "--k", "9"], "fastps train: fit: variant 'k-sync' needs k in [1, 4]"),
    (["--dataset", "idx"], "fastps train: load: 'idx' needs root"),
    (["--threads", "0"], "fastps train: fit: threads must be an integer >= 1 (got 0)"),
])  # fmt: skip
def test_errors_are_one_line_and_exit_2(capsys, argv, msg):
    assert main(["train", "--no-progress", "--updates", "10", *argv]) == 2
    assert msg in capsys.readouterr().err


def test_a_root_without_fashion_mnist_names_the_files_not_the_debian_package(tmp_path, capsys):
    assert main(["train", "--no-progress", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastps train: fashion-mnist: {tmp_path} lacks train-images-idx3-ubyte")
    assert "apt-get" not in err


def test_python_m_fastps_runs_the_command(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "fastps", "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: fastps ") and "train" in r.stdout and "simulate" in r.stdout
    r = subprocess.run([sys.executable, "-m", "fastps", "train", "--variant", "sync", "--k", "2"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.endswith("fastps train: error: --k is for --variant k-sync, k-batch-sync, "
                             "k-async, k-batch-async, adasync; sync does not use it (it fixes "
                             "K = P)\n")  # fmt: skip
