"""The pure logic of the results scripts (bench/_results.py) and of the docs/results.md generator
(bench/make_results.py), on synthetic histories and fixture JSON lines: no benchmark runs."""

import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _results as R  # noqa: E402
import make_results  # noqa: E402


def test_first_reach_interpolates_between_the_evaluations_around_the_target():
    loss = [(0.0, 0, 2.0), (1.0, 100, 1.0), (2.0, 200, 0.5)]
    assert R.first_reach(loss, 0.75, below=True) == (1.5, 150.0)  # halfway from 1.0 to 0.5
    assert R.first_reach(loss, 1.0, below=True) == (1.0, 100.0)  # exactly at an evaluation
    assert R.first_reach(loss, 2.5, below=True) == (0.0, 0)  # the first point already
    assert R.first_reach(loss, 0.1, below=True) is None
    acc = [(0.0, 0, 0.1), (1.0, 10, math.nan), (2.0, 20, 0.9)]  # a NaN point is skipped
    assert R.first_reach(acc, 0.5, below=False) == (1.0, 10.0)
    assert R.first_reach(acc, 0.95, below=False) is None


def test_spread_counts_the_runs_that_missed():
    s = R.spread([1.0, 2.0, 3.0, None])
    assert s == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3, "of": 4}
    assert R.fmt_spread(s) == "2.00 ± 1.00 (3/4)"
    assert R.fmt_spread(R.spread([None, None])) == "- (0/2)"
    assert R.fmt_spread(R.spread([0.25]), ".3f") == "0.250"
    assert R.fmt_spread(R.spread(x for x in (1.0, 3.0))) == "2.00 ± 1.41"


def test_gradient_staleness_of_k_variant_and_async_update_logs():
    log = [{"update": 3, "versions": [2, 1]}, {"t_s": 0.1, "staleness": 2.0},
           {"t_s": 0.2, "staleness": math.nan}]  # fmt: skip
    g = R.gradient_staleness(log)  # taus 0, 1 and 2
    assert g == {"mean": 1.0, "fresh_fraction": pytest.approx(1 / 3), "n": 3}
    assert R.gradient_staleness([]) == {"mean": None, "fresh_fraction": None, "n": 0}


def _record(bench, kind, params, **measured):
    return {"bench": bench, "kind": kind, "params": params, **measured,
            "command": f"python bench/{bench}.py", "time": "2026-01-01T00:00:00",
            "env": {"cpu": "Test CPU", "cores": 2, "gpu": None, "git_sha": "abc123"}}  # fmt: skip


def _mode_run(config, updates, wall_s, cas, loss):
    return _record("results_modes", "run",
                   {"learners": 4, "config": config, "seed": 1},
                   updates=updates, wall_s=wall_s, foreign_cpus=0.5,
                   stats={"cas_failures": cas, "dropped": 0, "slot_waits": 0, "lock_wait_s": 0.0},
                   evals=[{"t": 0.0, "updates": 0, "train_loss": 2.3, "accuracy": 0.1,
                           "staleness_mean": 0.0},
                          {"t": wall_s, "updates": updates, "train_loss": loss, "accuracy": 0.8,
                           "staleness_mean": 1.5}])  # fmt: skip


def test_make_results_writes_tables_computed_from_the_records(tmp_path):
    recs = [_mode_run("locked", 1000, 2.0, 0, 0.5), _mode_run("leashed", 1200, 1.5, 30, 0.4)]
    peers = [
        _record("bench_peers", "peer", {"peer": "fastps async", "learners": 2, "batch_size": 64,
                                        "batches": 100, "lr": 0.05, "target": 0.8},
                updates_per_s=1000.0, batches_per_s=1000.0, rtt_s=20e-6, bandwidth_Bps=5e10,
                time_to_target_s=2.0, foreign_cpus=0.0),
        _record("bench_peers", "peer", {"peer": "torch-hogwild"}, updates_per_s=500.0,
                batches_per_s=500.0, rtt_s=30e-6, bandwidth_Bps=3e10, time_to_target_s=3.0,
                foreign_cpus=0.0),
        _record("bench_peers", "error", {"peer": "ray-ps"},
                error="ModuleNotFoundError: No module named 'ray'"),
    ]  # fmt: skip
    for name, rs in (("results_modes", recs), ("bench_peers", peers)):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            f.write("# a comment line is skipped\n")
            for r in rs:
                f.write(json.dumps(r) + "\n")
    out = tmp_path / "results.md"
    assert make_results.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    # updates/s = updates / wall_s; CAS failures per update = 30 / 1200; one seed: no spread
    assert (
        "| 4 | locked | 500 | 0.0000 | 0.0000 | 0.0000 | 0.0 | 1.50 | 0.500 | 0.800 | 0.50 | 1 |"
        in text
    )
    assert (
        "| 4 | leashed | 800 | 0.0250 | 0.0000 | 0.0000 | 0.0 | 1.50 | 0.400 | 0.800 | 0.50 | 1 |"
        in text
    )
    # peers: ratios to fastps async (updates/s 0.50, round trip 1.50, time to accuracy 1.50)
    assert ("| torch-hogwild | fastps async | 500 | 0.50 | 500 | 0.50 | 30 | 1.50 | 30.00 | 3.00 "
            "| 1.50 | 0.00 |") in text  # fmt: skip
    assert "| ray-ps | - | could not run: ModuleNotFoundError: No module named 'ray' |" in text
    assert "Command: `python bench/results_modes.py`" in text
    assert "Machine: Test CPU, 2 cores, no GPU; commit abc123" in text
    assert "median of 0.50 and at most 0.50 of the CPUs" in text
    # a script without records says how to make them
    assert "Not measured yet: run `python bench/results_spectrum.py`" in text


def test_load_note_says_quiet_only_below_the_disturbance_threshold():
    quiet = [{"foreign_cpus": 0.02}, {"foreign_cpus": 0.1}]
    busy = [{"foreign_cpus": 0.02}, {"foreign_cpus": 1.2}, {"foreign_cpus": 0.5}]
    assert make_results.load_note(quiet) == (
        "The machine was quiet during the runs: other processes kept at most 0.10 of the CPUs busy."
    )
    assert make_results.load_note(busy).startswith(
        "Other processes kept a median of 0.50 and at most 1.20"
    )
    assert make_results.load_note([{"x": 1}]) is None


def _train_cell(impl, mode, momentum, ups, **measured):
    params = {"impl": impl, "mode": mode, "learners": 2, "dataset": "fashion-mnist",
              "model": "mlp", "updates": 3000, "batch_size": 64, "lr": 0.05,
              "momentum": momentum, "seed": 0, "eval_every": 150, "threads": 1,
              "eval_threads": 1, "target": 0.8}  # fmt: skip
    return _record("bench_train", "cell", params, updates_per_s=ups,
                   updates_per_s_p10=ups - 100, updates_per_s_p90=ups + 100,
                   reached=3, runs=[{}, {}, {}], quiet_below=0.25, **measured)  # fmt: skip


def _train_records():
    torch0 = _train_cell("torch-hogwild", None, 0.0, 1000.0, wall_updates_per_s=800.0,
                         time_to_target_s=2.5, updates_to_target=2000, final_accuracy=0.8123,
                         step_share=0.25, foreign_cpus=0.1)  # fmt: skip
    fast0 = _train_cell("fastps", "leashed", 0.0, 1500.0, wall_updates_per_s=1000.0,
                        ratio_torch=1.5, ratio_torch_wall=1.25, time_to_target_s=1.75,
                        updates_to_target=2100, final_accuracy=0.8201, push_pull_share=0.1,
                        foreign_cpus=0.3)  # fmt: skip
    torch5 = {**torch0, "params": {**torch0["params"], "momentum": 0.5}, "foreign_cpus": 0.0}
    stale5 = {**fast0, "params": {**fast0["params"], "momentum": 0.5}, "foreign_cpus": 0.0}
    fast5 = {**stale5, "updates_per_s": 1100.0, "ratio_torch": 1.1, "time_to_target_s": None,
             "updates_to_target": None, "reached": 1}  # fmt: skip
    return [torch0, fast0, torch5, stale5, fast5]  # fast5 is stale5 measured again


def test_bench_train_tables_one_table_and_summary_per_momentum(capsys):
    import bench_train

    ts = bench_train.tables(_train_records())
    assert [t.title.split(":")[0] for t in ts] == [
        "fashion-mnist, mlp, batch 64, lr 0.05, momentum 0, 3000 updates per run, median of 3 "
        "rounds", "Summary, momentum 0", "fashion-mnist, mlp, batch 64, lr 0.05, momentum 0.5, "
        "3000 updates per run, median of 3 rounds", "Summary, momentum 0.5"]  # fmt: skip
    assert ts[0].rows == [
        ["torch-hogwild", "-", "2", "1000", "900..1100", "800", "-", "-", "2.50", "2000", "3/3",
         "0.8123", "25%", "150", "0.10"],
        ["fastps", "leashed", "2", "1500", "1400..1600", "1000", "1.50", "1.25", "1.75", "2100",
         "3/3", "0.8201", "10%", "150", "0.30"]]  # fmt: skip
    assert ts[0].header[8:10] == ["t@0.8_s", "upd@0.8"]
    assert ts[1].header == ["mode", "/torch@P2", "/torch_wall@P2", ">=1.25x@P2"]
    assert ts[1].rows == [["leashed", "1.50", "1.25", "met"]]
    # 25% of Hogwild's time in opt.step(): a free step is at most 1 / 0.75 = 1.33x faster
    assert "at most 1.33x faster" in ts[1].notes[0]
    assert ts[1].notes[1].startswith("1 of 2 cells (worst round) ran while other processes kept")
    # the later record of a cell replaces the earlier one; no busy cell, no note
    assert ts[2].rows[1][3] == "1100" and ts[2].rows[1][8:11] == ["-", "-", "1/3"]
    assert ts[3].rows == [["leashed", "1.10", "1.25", "MISSED"]] and len(ts[3].notes) == 1
    # what the script prints is the same table
    ts[0].print()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# " + ts[0].title
    assert lines[4].split() == ["#", *ts[0].rows[1]]
    assert lines[5] == "# " + ts[0].notes[0]


def test_bench_train_tables_keep_runs_of_different_commands_apart():
    import bench_train

    first = _train_records()[:2]
    again = [{**r, "command": "python bench/bench_train.py --learners 2 --repeats 5",
              "updates_per_s": r["updates_per_s"] + 7} for r in first]  # fmt: skip
    ts = bench_train.tables(first + again)
    assert len(ts) == 4  # the same cells, two runs: not merged, the later not hiding the earlier
    assert [t.rows[0][3] for t in ts[0::2]] == ["1000", "1007"]
    assert ts[0].title.endswith("median of 3 rounds (`python bench/bench_train.py`)")
    assert ts[3].title.endswith("(`python bench/bench_train.py --learners 2 --repeats 5`)")
    assert "(`" not in bench_train.tables(first)[0].title  # one command: no name in the title


def test_make_results_renders_bench_train_per_momentum(tmp_path):
    with open(tmp_path / "bench_train.jsonl", "w") as f:
        for r in _train_records():
            f.write(json.dumps(r) + "\n")
    out = tmp_path / "results.md"
    assert make_results.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    section = text[text.index("## 8. Training against PyTorch's Hogwild") :]
    assert section.count("**fashion-mnist, mlp, batch 64") == 2
    assert ("| fastps | leashed | 2 | 1500 | 1400..1600 | 1000 | 1.50 | 1.25 | 1.75 | 2100 | 3/3 "
            "| 0.8201 | 10% | 150 | 0.30 |") in section  # fmt: skip
    assert "| leashed | 1.10 | 1.25 | MISSED |" in section
    assert "Command: `python bench/bench_train.py`" in section
    assert "median of 0.00 and at most 0.30 of the CPUs" in section
    assert "Not measured yet: run `python bench/results_spectrum.py`" in text
