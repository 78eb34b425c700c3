"""The fastps command line."""

import json
import subprocess
import sys

import pytest

from fastps.cli import main


def test_help_documents_every_option(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastps.cli", "train", "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0
    for opt in ("--dataset", "--model", "--learners", "--variant", "--mode", "--step-size",
                "--epochs", "--json", "--checkpoint", "--resume"):  # fmt: skip
        assert opt in r.stdout


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


@pytest.mark.parametrize("argv,msg", [
    (["--variant", "k-sync", "--k", "9"], "fastps train: fit: variant 'k-sync' needs k in [1, 4]"),
    (["--dataset", "idx"], "fastps train: load: 'idx' needs root"),
])  # fmt: skip
def test_errors_are_one_line_and_exit_2(capsys, argv, msg):
    assert main(["train", "--no-progress", "--updates", "10", *argv]) == 2
    assert msg in capsys.readouterr().err
