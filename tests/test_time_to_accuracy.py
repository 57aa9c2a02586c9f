"""benchmarks/time_to_accuracy.py: its setting syntax, its time-to-target rule, and a whole run on digits.

The run (a subprocess at the tiniest budget, temporary cache and results) must keep its promises: every curve's
seconds are its snapshots times the seconds per iteration of the timing table, the reference loop's curve is the
authors' accuracies at the reference's seconds, the chosen setting is the best on validation within the budget, and
the time to target is the first snapshot at or above it.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill_lib.evaluate import EvalResult

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import time_to_accuracy as tta  # noqa: E402  (benchmarks/time_to_accuracy.py, found through the line above)


def test_settings_parse_to_typed_config_fields():
    assert tta.parse_setting("authors") == ("authors", {})
    assert tta.parse_setting("fast:batch_real=64,lr_img=4,lr_half_life=200,cm=true") == (
        "fast", {"batch_real": 64, "lr_img": 4.0, "lr_half_life": 200, "cm": True})
    assert tta.parse_setting("r:featnet_recipe=convnet") == ("r", {"featnet_recipe": "convnet"})
    for bad in ("x:batch_real", "x:bogus=1", "x:iterations=5", "x:batch_real=6.5", ":lr_img=2", "x:cm=maybe"):
        with pytest.raises(argparse.ArgumentTypeError):
            tta.parse_setting(bad)


def test_time_to_target_is_the_first_snapshot_at_or_above_it():
    results = [EvalResult((0.40,)), EvalResult((0.50, 0.48)), EvalResult((0.47,)), EvalResult((0.52,))]
    pace = tta.Pace(start=5.0, per_iteration=2.0)
    assert tta.time_to(48.9, [10, 20, 30, 40], pace, results) == (45.0, "45 s (20 iterations)")
    assert tta.time_to(51.0, [10, 20, 30, 40], pace, results) == (85.0, "85 s (40 iterations)")
    assert tta.time_to(60.0, [10, 20, 30, 40], pace, results) == (None, "not reached (best 52.00 % at 85 s)")


def test_stage_one_evaluates_only_the_snapshots_reached_within_the_budget():
    pace = tta.Pace(start=30.0, per_iteration=2.0)
    assert tta.within(230.0, [50, 100, 200], pace) == [50, 100]  # 100 iterations end at exactly 230 s
    assert tta.within(229.0, [50, 100, 200], pace) == [50]
    assert tta.within(100.0, [50, 100, 200], pace) == []


def test_a_run_on_digits_keeps_its_promises(tmp_path):
    env = {**os.environ, "DISTILL_CACHE": str(tmp_path / "cache"), "DISTILL_RESULTS": str(tmp_path / "results"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    argv = ["--datasets", "digits", "--snapshots", "2", "1", "--batch-real", "32", "--eval-epochs", "10", "--models",
            "1", "--validation", "20", "--setting", "authors", "--setting", "small:batch_real=16",
            "--setting", "decay:lr_img=4,lr_half_life=1,init=herding", "--time-iterations", "1", "--target", "50",
            "--budget", "1e9", "--threads", "1", "--figure", str(tmp_path / "t.png")]
    job = subprocess.run([sys.executable, str(REPO / "benchmarks" / "time_to_accuracy.py"), *argv], env=env,
                         capture_output=True, text=True, timeout=900)
    assert job.returncode == 0, job.stderr[-3000:]
    record = json.loads((tmp_path / "results" / "time_to_accuracy.json").read_text(encoding="utf-8"))
    timing, validation, test, reached = record["tables"]
    pace = {row[0]: tta.Pace(float(row[1]), float(row[2])) for row in timing["rows"]}
    assert set(pace) == {"reference loop (authors)", "authors", "small", "decay"}
    assert pace["reference loop (authors)"].start == pace["authors"].start

    def curve(table, name):
        return [(int(r[1]), float(r[2]), float(r[3].split(" %")[0].split(" ± ")[0])) for r in table["rows"]
                if r[0] == name]
    for table in (validation, test):
        for name in {r[0] for r in table["rows"]}:
            points = curve(table, name)
            assert [n for n, _, _ in points] == [1, 2]  # snapshots sorted
            # the table rounds seconds to 0.5, start to 0.05 and seconds per iteration to 0.0005
            assert all(abs(s - pace[name].at(n)) <= 0.5 + 0.05 + 0.0005 * n + 1e-9 for n, s, _ in points)
    best = max(("authors", "small", "decay"), key=lambda n: max(a for *_, a in curve(validation, n)))
    assert f"Chosen on validation (best within 1e+09 s): {best}" in job.stdout
    assert {r[0] for r in test["rows"]} == {"authors", best, "reference loop (authors)"}
    assert [a for *_, a in curve(test, "reference loop (authors)")] == [a for *_, a in curve(test, "authors")]
    assert all(r[1].endswith("iterations)") == (max(a for *_, a in curve(test, r[0])) >= 50) for r in reached["rows"])
    assert (tmp_path / "t.png").stat().st_size > 10_000
