"""The results files the benchmarks write (benchmarks/common.py: write_results), and the README's headline table
against the measured source it is copied from."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import common  # noqa: E402  (benchmarks/common.py, found through the line above)

TABLE = ["### Test accuracy", "", "| dataset | IPC | DM | IDM |", "|---|---|---|---|",
         "| digits | 1 | 50.00 ± 1.00 % | 60.00 ± 2.00 % |", "| digits | 10 | 80.00 ± 0.50 % | 85.00 ± 0.25 % |"]


@pytest.fixture
def recorded():
    """Record stdout as a benchmark does (common.setup) and put pytest's stdout back afterwards. A function, called
    in the test body: pytest swaps sys.stdout between a fixture's setup and the test."""
    previous = []

    def record() -> None:
        previous.append(sys.stdout)
        common.record_output()
    yield record
    if previous:
        sys.stdout = previous[0]


def git_head() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def test_printed_tables_round_trip_through_the_json_with_command_date_and_commit(recorded, tmp_path):
    recorded()
    print("Budget: 2 iterations.\n")
    print("  a progress line")
    print("\n".join(TABLE))
    print("\n## Seconds\n\n| dataset | s/it |\n|---|---|\n| digits | 0.25 |")
    path = common.write_results("demo", argparse.Namespace(results_dir=tmp_path), "Budget: 2 iterations.",
                                argv=["--datasets", "digits", "--label", "two words"])
    assert path == tmp_path / "demo.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["tables"] == [
        {"title": "Test accuracy", "columns": ["dataset", "IPC", "DM", "IDM"],
         "rows": [["digits", "1", "50.00 ± 1.00 %", "60.00 ± 2.00 %"], ["digits", "10", "80.00 ± 0.50 %",
                                                                        "85.00 ± 0.25 %"]]},
        {"title": "Seconds", "columns": ["dataset", "s/it"], "rows": [["digits", "0.25"]]}]
    assert record["protocol"] == "Budget: 2 iterations."
    assert record["notes"] == ["a progress line"]  # the protocol line is not repeated there
    assert record["command"].endswith("python benchmarks/demo.py --datasets digits --label 'two words'")
    measured = datetime.fromisoformat(record["date"])
    assert abs((datetime.now(timezone.utc) - measured).total_seconds()) < 600
    assert record["commit"] == git_head()
    assert record["dirty"] in ((True, False) if record["commit"] else (None,))
    assert record["environment"]["processes"] == 1


def test_the_rendered_markdown_carries_the_tables_as_printed_and_the_provenance(recorded, tmp_path):
    recorded()
    print("\n".join(TABLE))
    path = common.write_results("demo", argparse.Namespace(results_dir=tmp_path), "Budget: none.", argv=[])
    record = json.loads(path.read_text(encoding="utf-8"))
    md = path.with_suffix(".md").read_text(encoding="utf-8")
    assert md == common.render(record)
    assert "\n".join(TABLE[2:]) in md  # header, separator and rows exactly as the benchmark printed them
    assert "\n## Test accuracy\n" in md
    assert f"Command: `{record['command']}`" in md
    assert record["date"] in md and "Budget: none." in md
    if record["commit"]:
        assert record["commit"][:12] in md
        assert ("(uncommitted changes)" in md) == record["dirty"]


def test_without_a_protocol_the_lines_before_the_first_table_stand_for_it(recorded, tmp_path):
    recorded()
    print("torch x, 2 threads\npeak 100 GFLOP/s\n\n## Distillation\n")
    print("\n".join(TABLE[2:]))
    record = json.loads(common.write_results("demo", argparse.Namespace(results_dir=tmp_path), argv=[]).read_text())
    assert record["protocol"] == "torch x, 2 threads peak 100 GFLOP/s"
    assert record["tables"][0]["title"] == "Distillation"


def test_the_command_names_torchrun_and_the_thread_variable_when_they_were_used(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert common.command("idm", ["--threads", "1"]) == \
        "OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/idm.py --threads 1"
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert common.command("idm", []) == "python benchmarks/idm.py"


def test_a_benchmark_writes_its_results_end_to_end_on_digits(tmp_path):
    """dm_accuracy.py at the tiniest budget on the embedded digits, into a temporary cache and results folder."""
    env = {**os.environ, "DISTILL_CACHE": str(tmp_path / "cache"), "DISTILL_RESULTS": str(tmp_path / "results"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    argv = ["--datasets", "digits", "--ipcs", "1", "--iterations", "2", "--eval-epochs", "1", "--models", "1",
            "--threads", "1"]
    job = subprocess.run([sys.executable, str(REPO / "benchmarks" / "dm_accuracy.py"), *argv], env=env,
                         capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]
    record = json.loads((tmp_path / "results" / "dm_accuracy.json").read_text(encoding="utf-8"))
    [table] = record["tables"]
    assert table["columns"] == ["dataset", "IPC", "lr_img", "random subset", "DM", "DM - random"]
    [row] = table["rows"]
    assert row[:3] == ["digits", "1", "1"]
    printed_row = next(line for line in job.stdout.splitlines() if line.startswith("| digits"))
    assert printed_row == "| " + " | ".join(row) + " |"
    assert record["command"] == "OMP_NUM_THREADS=1 python benchmarks/dm_accuracy.py " + " ".join(argv)
    assert record["protocol"].startswith("Budget: DM 2 iterations")
    assert (tmp_path / "results" / "dm_accuracy.md").read_text(encoding="utf-8").count(printed_row) == 1
