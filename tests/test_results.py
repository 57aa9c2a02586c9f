"""The results files the benchmarks write (benchmarks/common.py: write_results), and the README's headline table
against the measured source it is copied from."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from distill_lib import EvalProtocol, course

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


# ------------------------------------------------------------------------------------------------------------
# The README's headline table is copied from a measurement: results/idm.json once benchmarks/idm.py has written it,
# until then the DM/IDM table of docs/results.md. These tests keep the copy equal to its source.

NUMBER = re.compile(r"(-?\d+\.\d+) ± (\d+\.\d+)")


def headline(readme: str) -> dict:
    """The README's headline table: the first table under the heading "Headline result"."""
    [table, *_] = [t for t in common.parse_tables(readme)[0] if t["title"] == "Headline result"]
    return table


def mismatches(readme: str, source_tables: list[dict]) -> list[str]:
    """Where the README's headline table differs from the first source table that has all of its columns: every
    (dataset, IPC) row of the source must be there, with the same mean ± std in every column."""
    table = headline(readme)
    columns = table["columns"]
    [source, *_] = [t for t in source_tables if set(columns) <= set(t["columns"])] or [None]
    if source is None:
        return [f"no source table has the columns {columns}"]

    def by_row(t: dict) -> dict:
        index = [t["columns"].index(c) for c in columns]
        return {tuple(row[i] for i in index[:2]): [NUMBER.search(row[i]) for i in index[2:]] for row in t["rows"]}

    mine, theirs, problems = by_row(table), by_row(source), []
    if set(mine) != set(theirs):
        problems.append(f"rows differ: README {sorted(mine)}, source {sorted(theirs)}")
    for key in set(mine) & set(theirs):
        for column, a, b in zip(columns[2:], mine[key], theirs[key]):
            if a is None or b is None or a.groups() != b.groups():
                problems.append(f"{key} {column}: README {a and a.group()}, source {b and b.group()}")
    return problems


def source_tables(root: Path = REPO) -> tuple[str, list[dict]]:
    """Where the headline comes from and its tables: the idm benchmark's measured answer, as the notebooks read it
    (results/idm.json if a run wrote it, else its section of docs/results.md)."""
    answer = course.measured("idm", repo=root)
    return answer.source, answer.tables


def test_the_readme_headline_numbers_equal_their_measured_source():
    where, tables = source_tables()
    assert not mismatches((REPO / "README.md").read_text(encoding="utf-8"), tables), where


@pytest.mark.parametrize("change", [
    ("47.73 ± 0.46", "47.74 ± 0.46"),  # one mean
    ("70.92 ± 0.96 | 75.54", "70.92 ± 0.69 | 75.54"),  # one std
    ("| cifar10 | 10 | 32.12", "| cifar100 | 10 | 32.12"),  # a row that the source does not have
])
def test_the_headline_check_fails_when_a_number_or_row_differs(change):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    old, new = change
    assert readme.count(old) == 1
    assert mismatches(readme.replace(old, new), source_tables()[1])


@pytest.mark.parametrize("edit", [None, ("47.73 ± 0.46 %", "47.70 ± 0.46 %")])
def test_once_idm_json_exists_the_headline_is_checked_against_it(recorded, tmp_path, edit):
    """A results/idm.json as benchmarks/idm.py writes it (its table printed, then write_results) takes over from
    docs/results.md: equal numbers pass, a differing one fails."""
    docs = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    [idm_table, *_] = [t for t in common.parse_tables(docs)[0] if "IDM+CC+CM" in t["columns"]]
    lines = ["| " + " | ".join(idm_table["columns"]) + " |", "|" + "---|" * len(idm_table["columns"])]
    lines += ["| " + " | ".join(row) + " |" for row in idm_table["rows"]]
    text = "\n".join(["### Test accuracy", "", *lines])
    if edit:
        assert text.count(edit[0]) == 1
        text = text.replace(*edit)
    recorded()
    print(text)
    common.write_results("idm", argparse.Namespace(results_dir=tmp_path / "results"), "Budget: as docs.", argv=[])
    where, tables = source_tables(tmp_path)
    assert where.endswith("idm.json`")
    found = mismatches((REPO / "README.md").read_text(encoding="utf-8"), tables)
    assert bool(found) == bool(edit), found


def test_validation_cells_default_to_the_checked_fast_protocol_and_never_exceed_the_test_one():
    p = argparse.ArgumentParser()
    common.validation_flags(p)
    test_protocol = EvalProtocol(epochs=1000, num_models=3)
    chosen = common.validation_protocol(p.parse_args([]), test_protocol)
    assert (chosen.epochs, chosen.num_models) == (common.VALIDATION_EPOCHS, 1) == (300, 1)
    assert chosen.lr == test_protocol.lr and chosen.seed == test_protocol.seed  # only epochs and nets differ
    assert common.validation_protocol(p.parse_args([]), replace(test_protocol, epochs=20)).epochs == 20
    assert common.validation_protocol(p.parse_args(["--val-epochs", "50"]), test_protocol).epochs == 50
