"""A user's first hour: a command whose pip extra is missing says which extra in one line; the
extras' table agrees with pyproject.toml; torch is a range in the metadata and pinned only by
the constraints file the README and CI use; the progress bar's clock starts with training."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastps import extras
from fastps.cli import main
from fastps.progress import ProgressBar
from fastps.train import data as datasets
from fastps.train import fit as fit_module
from fastps.train.fit import History

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (the package supports 3.10)
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def run_blocked(blocked: str, code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which importing ``blocked`` fails as it does when
    the package is not installed (ModuleNotFoundError naming it)."""
    prelude = f"import sys; sys.modules[{blocked!r}] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                          text=True, timeout=120, cwd=cwd or "/")  # fmt: skip


# --- missing extras -----------------------------------------------------------------------------


def test_fastps_train_without_tqdm_names_the_train_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # what `pip install .` leaves out
    assert main(["train", "--epochs", "0.01"]) == 2
    err = capsys.readouterr().err
    assert err == ("fastps train: needs the module 'tqdm', which is not installed: "
                   'pip install "fastps[train]"\n')  # fmt: skip


def test_fastps_train_without_torch_is_one_line_not_a_traceback():
    r = run_blocked("torch", "from fastps.cli import main; sys.exit(main(['train']))")
    assert r.returncode == 2, r.stderr
    assert r.stderr == ("fastps train: needs the module 'torch', which is not installed: "
                        'pip install "fastps[train]"\n')  # fmt: skip


@pytest.mark.parametrize(("package", "module", "extra"), [
    ("fastps.ray", "ray", "ray"),
    ("fastps.torch", "torch", "torch"),
])  # fmt: skip
def test_an_adapter_without_its_dependency_names_its_extra(package, module, extra):
    r = run_blocked(module, f"import {package}")
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last == (f"ModuleNotFoundError: {package}: needs the module {module!r}, which is not "
                    f'installed: pip install "fastps[{extra}]"')  # fmt: skip


def test_a_bug_of_fastps_itself_is_not_dressed_as_a_missing_extra():
    assert extras.hint(ModuleNotFoundError("x", name="fastps._gone"), "who") is None
    assert extras.hint(ModuleNotFoundError("x", name="numpyy"), "who") is None  # a typo
    assert extras.hint(ValueError("tqdm"), "who") is None
    # a module of another extra than the command's: the extra that has it
    assert extras.install_hint("ray", "train") == 'pip install "fastps[ray]"'
    assert extras.install_hint("torch", "bench") == 'pip install "fastps[bench]"'
    assert extras.install_hint("torch") == 'pip install "fastps[torch]"'


@pytest.mark.parametrize(("script", "blocked", "extra"), [
    ("bench_train.py", "torch", "train"),
    ("bench_store.py", "matplotlib", "bench"),
    ("results_modes.py", "torch", "peers"),
])  # fmt: skip
def test_a_benchmark_without_its_extra_says_which(script, blocked, extra):
    code = (f"import runpy; sys.path.insert(0, {str(ROOT / 'bench')!r}); "
            f"sys.argv = [{str(ROOT / 'bench' / script)!r}]; import _harness; "
            f"import {blocked}")  # fmt: skip
    r = run_blocked(blocked, code)
    assert r.returncode == 1
    assert r.stderr == (f"{script}: needs the module {blocked!r}, which is not installed: "
                        f'pip install "fastps[{extra}]"\n')  # fmt: skip


def _modules_of(requirements: list[str]) -> set[str]:
    dist_to_module = {"scikit-learn": "sklearn", "nvidia-ml-py": "pynvml"}
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in requirements}
    return {dist_to_module.get(n, n) for n in names} & set(extras.EXTRA_OF)


def test_the_extras_table_agrees_with_pyproject():
    declared = PYPROJECT["project"]["optional-dependencies"]
    for extra, modules in extras.COVERS.items():
        assert _modules_of(declared[extra]) == modules, extra
    for module, extra in extras.EXTRA_OF.items():
        assert module in _modules_of(declared[extra]), (module, extra)


# --- torch: a range in the metadata, the exact wheel in constraints.txt --------------------------


def test_torch_is_a_range_in_the_metadata_and_pinned_by_the_constraints_file():
    for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items():
        for r in reqs:
            if r.startswith("torch"):
                assert "==" not in r and ">=" in r, (extra, r)
    pins = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^torch==\d+\.\d+\.\d+$", pins, re.M)
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    # the README's two commands and CI install with the constraints
    assert 'pip install -c constraints.txt ".[train]"' in readme
    assert 'pip install -c constraints.txt ".[test]" && pytest -q' in readme
    assert 'pip install -c constraints.txt ".[test]" && pytest -q' in ci


# --- the progress bar ---------------------------------------------------------------------------


def test_the_progress_bar_clock_starts_with_the_learners():
    bar = ProgressBar(file=io.StringIO())
    bar({"updates": 0, "total": 1000, "started": False})
    assert bar.bar.desc == "starting learners" and bar.bar.total is None
    bar.bar.start_t -= 300  # five minutes of start-up (processes, imports, data)
    bar({"updates": 0, "total": 1000, "started": False})
    assert bar.bar.format_dict["elapsed"] >= 300
    bar({"updates": 10, "total": 1000, "started": True})
    d = bar.bar.format_dict
    assert d["elapsed"] < 60 and d["total"] == 1000 and d["n"] == 10
    assert bar.bar.desc == "training"
    bar.close()


def test_a_resumed_run_counts_its_rate_from_the_checkpoint():
    bar = ProgressBar(file=io.StringIO())
    bar({"updates": 500, "total": 1000, "started": True})
    assert (bar.bar.n, bar.bar.initial) == (500, 500)  # 500 came from the checkpoint
    bar({"updates": 600, "total": 1000, "started": True})
    assert bar.bar.n == 600
    bar.close()


def test_fastps_train_shows_start_up_as_its_own_phase(monkeypatch, capsys):
    def fake(model_fn, data, **kw):
        kw["progress"]({"updates": 0, "total": 10, "started": False})
        time.sleep(1.2)  # learners starting
        kw["progress"]({"updates": 3, "total": 10, "started": True})
        kw["progress"]({"updates": 10, "total": 10, "started": True})
        ev = {"t_s": 1.0, "updates": 10, "loss": 0.5, "accuracy": 0.75, "staleness_mean": 0.0}
        ln = {"id": 0, "updates": 10, "compute_s": 1.0, "push_s": 0.5, "pull_s": 0.5,
              "wait_s": 0.0}  # fmt: skip
        return History(evals=[ev], learners=[ln], config={},
                       stats={"clock": 10, "dropped": 0, "cas_failures": 0})  # fmt: skip

    x, y = np.zeros((4, 1, 2, 2), np.float32), np.zeros(4, np.int64)
    tiny = datasets.Dataset("tiny", x, y, x, y, 2, (1, 2, 2))
    monkeypatch.setattr(fit_module, "fit", fake)
    monkeypatch.setattr(datasets, "load", lambda *a, **kw: tiny)
    assert main(["train", "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "starting learners" in err
    final = err.rstrip().split("\r")[-1]
    assert final.startswith("training") and "10/10 [00:00<00:00" in final, final
