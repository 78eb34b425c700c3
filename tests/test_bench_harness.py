"""The shared logic of the benchmarks (bench/_harness.py and the modules it re-exports,
bench/_store_cells.py, bench/_results.py's common main): when a disturbed measurement is made
again, the paired-timing fields, the shared flags. No benchmark runs; nothing waits."""

import argparse
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _harness as H  # noqa: E402
import _quiet  # noqa: E402
import _results as R  # noqa: E402
import _store_cells as C  # noqa: E402


@pytest.fixture
def no_waiting(monkeypatch):
    waits = []
    monkeypatch.setattr(_quiet, "wait_quiet", lambda below, max_wait_s: waits.append(max_wait_s))
    return waits


def test_quiet_retries_within_the_budget_of_waits(no_waiting):
    q = H.Quiet(below=0.25, retries=2, max_wait_s=5.0, budget_s=10.0)
    assert not q.again(0.1, 1)  # a quiet machine: no second attempt
    assert q.again(1.0, 1) and q.again(1.0, 2)  # disturbed: again, twice
    assert not q.again(1.0, 3)  # retries spent
    assert no_waiting == [5.0, 5.0]
    assert not H.Quiet().again(2.0, 1)  # the default never measures again
    spent = H.Quiet(below=0.25, retries=5, max_wait_s=5.0, budget_s=0.0)
    assert not spent.again(1.0, 1) and not spent.wait()


def test_quiet_charging_runs_keeps_room_for_one_more_run(no_waiting):
    q = H.Quiet(below=0.25, retries=3, max_wait_s=60.0, budget_s=10.0, charge_runs=True)
    assert q.again(1.0, 1, run_s=4.0)  # 10 s left > 4 s: wait at most 10 - 4
    assert no_waiting == [6.0]
    assert q.again(1.0, 2, run_s=4.0)  # the repeated run is charged: 10 - 4 left, 6 - 4 = 2
    assert no_waiting == pytest.approx([6.0, 2.0], abs=0.1)
    assert q.spent_s == pytest.approx(4.0, abs=0.1)
    assert not q.again(1.0, 3, run_s=4.0)  # 8 s charged: 2 s left, no room for a 4 s run


def test_quiet_measure_repeats_a_disturbed_body(monkeypatch, no_waiting):
    loads = iter([1.5, 0.1])

    class FakeLoad:
        def __init__(self, *, children=False):
            self.cores = next(loads)

        def __enter__(self):
            return None

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(_quiet, "ForeignLoad", FakeLoad)
    calls = []
    q = H.Quiet(below=0.25, retries=2, max_wait_s=1.0, budget_s=10.0)
    result, cores, attempts = q.measure(lambda: calls.append(1) or len(calls))
    assert (result, cores, attempts) == (2, 0.1, 2)


def test_paired_fields_are_medians_of_per_round_figures():
    t = H.Timing((2e-6, 4e-6, 6e-6), batch=1)
    ref = H.Timing((1e-6, 2e-6, 2e-6), batch=1)
    f = C.paired_fields(t, ref, "extra_us_per_shard_update", per=2)
    assert f["time_ratio"] == pytest.approx(2.0)  # ratios 2, 2, 3
    assert f["time_ratio_p90"] == pytest.approx(2.8)
    assert f["extra_us_per_shard_update"] == pytest.approx(1.0)  # (2-1, 4-2, 6-2) us / 2
    assert list(f)[3:] == ["extra_us_per_shard_update", "extra_us_p10", "extra_us_p90"]
    rec = {"items_per_s": 1e9}
    assert C.rate_fields(rec, t, 12)["gb_per_s"] == pytest.approx(12.0)
    assert C.pow2(1 << 20) == "2^20" and C.pow2(1000) == "1000"
    assert C.aligned(100, 1.0).ctypes.data % 64 == 0


def test_shared_cell_flags_and_quick_defaults():
    p = argparse.ArgumentParser()
    C.add_store_args(p, quick_help="quick")
    a = p.parse_args(["--min-log2", "10", "--max-log2", "14", "--modes", "locked"])
    H.resolve_cell_args(p, a)
    assert a.sizes == [1 << 10, 1 << 12, 1 << 14]
    assert (a.repeats, a.min_repeats, a.target_s, a.modes) == (20, 5, 0.3, ["locked"])
    q = p.parse_args(["--quick", "--repeats", "3"])
    H.resolve_cell_args(p, q)
    assert (q.repeats, q.min_repeats, q.target_s, q.max_learners) == (3, 3, 0.05, 16)
    with pytest.raises(SystemExit):
        H.resolve_cell_args(p, p.parse_args(["--min-log2", "12", "--max-log2", "10"]))
    with pytest.raises(argparse.ArgumentTypeError, match="modes must be among"):
        H.mode_list("locked,bogus")
    assert H.float_list("0,0.5") == [0.0, 0.5]


def test_results_main_runs_writes_records_and_prints_tables(tmp_path, capsys):
    def parse_args(argv):
        p = argparse.ArgumentParser()
        p.add_argument("--n", type=int, default=2)
        return R.parse(p, "results_fake", argv)

    def run(a, w):
        for i in range(a.n):
            w.emit({"i": i}, wall_s=1.0 + i)

    def tables(records):
        return [R.Table("fake", ["i", "wall_s"], [[r["params"]["i"], r["wall_s"]]
                                                   for r in records])]  # fmt: skip

    main = R.main("results_fake", parse_args, run, tables)
    out = tmp_path / "fake.jsonl"
    assert main(["--out", str(out), "--n", "3"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["params"]["i"] for r in recs] == [0, 1, 2]
    assert {r["bench"] for r in recs} == {"results_fake"} and recs[0]["kind"] == "run"
    printed = capsys.readouterr().out.splitlines()
    assert "# fake" in printed and printed[-1].split() == ["#", "2", "3"]
