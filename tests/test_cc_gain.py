"""benchmarks/cc_gain.py (what CC's gain depends on) end to end on digits, and the figure drawn from its table.

The script runs in a subprocess at the tiniest budget, into a temporary cache and results folder. Its table must be
what its columns claim: DM and +CM are the same cells in every row (no feature net), the gains are the differences of
the printed accuracies, a row's net accuracy is the stored test accuracy of its pool, and the control (DM matched in
the feature net) is a different set from DM's.
"""
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib
import pytest
import torch

from distill_lib import DistillConfig, course
from distill_lib.data import load_dataset
from distill_lib.featnet import pretrained, recipe

matplotlib.use("Agg")
REPO = Path(__file__).resolve().parents[1]


def percent(text: str) -> float:
    return float(text.split(" %")[0].split(" ± ")[0])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cc_gain")
    env = {**os.environ, "DISTILL_CACHE": str(tmp / "cache"), "DISTILL_RESULTS": str(tmp / "results"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    argv = ["--datasets", "digits", "--iterations", "5", "--batch-real", "16", "--eval-epochs", "20", "--models", "1",
            "--featnets", "default:1:1", "convnet:1:2", "--featnet-per-class", "20", "--threads", "1",
            "--figure", str(tmp / "cc_gain.png")]
    job = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cc_gain.py"), *argv], env=env,
                         capture_output=True, text=True, timeout=900)
    assert job.returncode == 0, job.stderr[-3000:]
    record = json.loads((tmp / "results" / "cc_gain.json").read_text(encoding="utf-8"))
    return tmp, job, record, env, argv


def test_a_table_of_some_columns_reads_the_same_cells_and_marks_the_rest(run):
    tmp, _, record, env, argv = run
    job = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cc_gain.py"), *argv, "--columns", "+CC",
                          "--figure", str(tmp / "some.png")], env=env, capture_output=True, text=True, timeout=900)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "[cell]" not in job.stderr  # every cell it needs was cached by the full run
    some = json.loads((tmp / "results" / "cc_gain.json").read_text(encoding="utf-8"))["tables"][0]
    full = record["tables"][0]
    col = {name: k for k, name in enumerate(full["columns"])}
    for mine, whole in zip(some["rows"], full["rows"]):
        for name in ("DM", "+CC", "CC gain", "net accuracy"):
            assert mine[col[name]] == whole[col[name]]
        for name in ("DM(featnet)", "+CM", "+CC+CM", "control gain", "CC+CM gain"):
            assert mine[col[name]] == "-"


def test_the_table_is_what_its_columns_claim(run, monkeypatch):
    tmp, job, record, *_ = run
    table, seconds = record["tables"]
    col = {name: k for k, name in enumerate(table["columns"])}
    rows = table["rows"]
    assert [(r[col["feature net"]], r[col["pool"]]) for r in rows] == [("default on 20/class, 1 ep", "1"),
                                                                       ("convnet, 1 ep", "2")]
    assert rows[0][col["DM"]] == rows[1][col["DM"]] and rows[0][col["+CM"]] == rows[1][col["+CM"]]
    for r in rows:
        dm = percent(r[col["DM"]])
        for gain, column in (("CC gain", "+CC"), ("control gain", "DM(featnet)"), ("CC+CM gain", "+CC+CM")):
            assert float(r[col[gain]]) == pytest.approx(percent(r[col[column]]) - dm, abs=0.011)
        assert r[col["lambda_CC"]] == "0.05"
    assert percent(rows[0][col["DM(featnet)"]]) != percent(rows[0][col["DM"]])  # the control is another set
    # the row's net accuracy: the pool's stored test accuracies (two convnet nets, seeds 0 and 1), read back here
    monkeypatch.setenv("DISTILL_CACHE", str(tmp / "cache"))
    data = load_dataset("digits")
    stored = [float(pretrained(data, recipe("convnet", epochs=1, seed=s))["accuracy"]) for s in (0, 1)]
    assert percent(rows[1][col["net accuracy"]]) == pytest.approx(100 * sum(stored) / 2, abs=0.006)
    assert [r[2] for r in seconds["rows"]][:2] == ["DM", "DM(featnet), default on 20/class, 1 ep, pool 1"]
    assert all(float(r[3]) > 0 for r in seconds["rows"])
    assert all(r[4].startswith("CPU, ") and r[4].endswith(" thread(s)") for r in seconds["rows"])  # where they ran
    assert record["protocol"].startswith("Budget: 5 iterations, batch_real 16") and "lambda_CC 0.05" in record["protocol"]
    assert (tmp / "cc_gain.png").stat().st_size > 10_000


def test_a_rows_net_accuracy_averages_every_net_its_seeds_draw(run, monkeypatch):
    """Seed s draws the nets s .. s + pool - 1: pool 1 over seeds 0 and 1 draws the same two nets as pool 2 over
    seed 0, so the two rows' net accuracy is the same mean, and a single seed of pool 1 is its one net's."""
    tmp, *_ = run
    monkeypatch.setenv("DISTILL_CACHE", str(tmp / "cache"))
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from cc_gain import pool_accuracy
    data = load_dataset("digits")
    stored = [float(pretrained(data, recipe("convnet", epochs=1, seed=s))["accuracy"]) for s in (0, 1)]
    net = DistillConfig(dataset="digits", featnet_recipe="convnet", featnet_epochs=1)
    assert pool_accuracy(net, seeds=range(1)) == pytest.approx(stored[0])
    assert pool_accuracy(net, seeds=range(1, 2)) == pytest.approx(stored[1])
    assert pool_accuracy(net, seeds=range(2)) == pytest.approx(sum(stored) / 2)
    assert pool_accuracy(replace(net, featnet_pool=2), seeds=range(2)) == pytest.approx(
        (sum(stored) + float(pretrained(data, recipe("convnet", epochs=1, seed=2))["accuracy"])) / 3)


def test_the_figure_plots_each_rows_gains_against_its_net_accuracy(run):
    record = run[2]
    table = record["tables"][0]
    figure = course.plot_cc_gain(table)
    col = {name: k for k, name in enumerate(table["columns"])}
    points = {tuple(map(float, xy)) for collection in figure.axes[0].collections for xy in collection.get_offsets()}
    want = {(percent(r[col["net accuracy"]]), float(r[col[gain]])) for r in table["rows"]
            for gain in ("CC gain", "control gain", "CC+CM gain")}
    assert len(figure.axes[0].collections) == 6  # +CC, control and +CC+CM for each of the two pool sizes
    torch.testing.assert_close(torch.tensor(sorted(points)), torch.tensor(sorted(want)))
    row = table["rows"][0]
    levels = sorted(line.get_ydata()[0] for line in figure.axes[0].lines)  # zero and CM's gain
    assert levels == pytest.approx(sorted([0.0, percent(row[col["+CM"]]) - percent(row[col["DM"]])]))


def test_the_figure_leaves_out_what_was_not_measured(run):
    table = json.loads(json.dumps(run[2]["tables"][0]))
    col = {name: k for k, name in enumerate(table["columns"])}
    for r in table["rows"]:
        for name in ("+CM", "+CC+CM", "CC+CM gain"):
            r[col[name]] = "-"
    ax = course.plot_cc_gain(table).axes[0]
    assert [line.get_ydata()[0] for line in ax.lines] == [0]  # no CM line
    assert len(ax.collections) == 4 and not any("+CC+CM" in c.get_label() for c in ax.collections)


def test_each_seeds_cm_gain_is_a_dashed_line_of_its_own(run):
    """Rows of two distillation seeds (runs joined in one figure) have two CM gains: both are drawn, one label."""
    table = json.loads(json.dumps(run[2]["tables"][0]))
    col = {name: k for k, name in enumerate(table["columns"])}
    other = list(table["rows"][0])
    other[col["DM"]], other[col["+CM"]] = "50.00 ± 0.10 %", "49.75 ± 0.20 %"  # a seed where CM loses 0.25
    table["rows"].append(other)
    ax = course.plot_cc_gain(table).axes[0]
    first = percent(table["rows"][0][col["+CM"]]) - percent(table["rows"][0][col["DM"]])
    assert sorted(line.get_ydata()[0] for line in ax.lines) == pytest.approx(sorted([0.0, first, -0.25]))
    legend = [label for label in ax.get_legend_handles_labels()[1] if label.startswith("+CM")]
    assert legend == [f"+CM (no feature net): {first:+.2f} / -0.25"]


def test_several_lambdas_are_chosen_on_validation_and_the_scan_is_a_table(run, monkeypatch):
    tmp, _, _, env, argv = run
    argv = [a for a in argv if a != "convnet:1:2"]  # one row: the default feature net
    job = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cc_gain.py"), *argv, "--columns", "+CC",
                          "--lambda-cc", "0.01", "0.3", "--validation", "10", "--val-epochs", "20",
                          "--figure", ""], env=env, capture_output=True, text=True, timeout=900)
    assert job.returncode == 0, job.stderr[-3000:]
    record = json.loads((tmp / "results" / "cc_gain.json").read_text(encoding="utf-8"))
    table, _, scan = record["tables"]
    assert scan["title"].startswith("Validation scan of lambda_CC")
    col = {name: k for k, name in enumerate(scan["columns"])}
    assert [r[col["lambda_CC"]] for r in scan["rows"]] == ["0.01", "0.3"]
    best = max(scan["rows"], key=lambda r: percent(r[col["validation accuracy"]]))
    assert [r[col["chosen"]] for r in scan["rows"]] == ["yes" if r is best else "" for r in scan["rows"]]
    assert table["rows"][0][table["columns"].index("lambda_CC")] == best[col["lambda_CC"]]
    assert "chosen per row from [0.01, 0.3] on 10 validation images" in record["protocol"]
    # the scan's net accuracy: the stored test accuracy of the net trained without the held-out images
    monkeypatch.setenv("DISTILL_CACHE", str(tmp / "cache"))
    spec = DistillConfig(dataset="digits", featnet_recipe="default", featnet_epochs=1,
                         featnet_per_class=20).featnet_spec()
    held_out = float(pretrained(load_dataset("digits").validation_split(10), spec)["accuracy"])
    assert [percent(r[col["net accuracy"]]) for r in scan["rows"]] == pytest.approx([100 * held_out] * 2, abs=0.006)


def test_a_row_kept_as_a_run_of_its_own_joins_the_others_in_the_figure(run, tmp_path):
    """--results-tag writes results/cc_gain.<TAG>.json beside the untagged run, which it leaves alone; the figure
    (and course.cc_gain_runs) take the rows of every run at the same budget, and leave a run at another out."""
    _, _, record, env, argv = run
    kept = tmp_path / "results"
    kept.mkdir()
    (kept / "cc_gain.json").write_text(json.dumps(record), encoding="utf-8")
    argv = [a for a in argv if a != "default:1:1"]  # one row, cached by the full run
    job = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cc_gain.py"), *argv, "--results-tag", "pool2",
                          "--results-dir", str(kept), "--figure", str(tmp_path / "joined.png")],
                         env=env, capture_output=True, text=True, timeout=900)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "[cell]" not in job.stderr
    assert json.loads((kept / "cc_gain.json").read_text(encoding="utf-8")) == record
    tagged = json.loads((kept / "cc_gain.pool2.json").read_text(encoding="utf-8"))
    assert "--results-tag pool2" in tagged["command"] and (kept / "cc_gain.pool2.md").exists()
    assert tagged["tables"][0]["rows"] == record["tables"][0]["rows"][1:]
    assert "(the rows of 2 run(s))" in job.stdout + job.stderr
    runs = course.measured_runs("cc_gain", kept)
    assert [run.source for run in runs] == ["`results/cc_gain.json`", "`results/cc_gain.pool2.json`"]
    joined = course.joined([run.tables[0] for run in runs])
    assert joined["rows"] == record["tables"][0]["rows"] + tagged["tables"][0]["rows"]
    assert [run.source for run in course.cc_gain_runs(kept)] == [run.source for run in runs]
    more_seeds = dict(tagged, protocol=re.sub(r"\d+ distillation seed", "9 distillation seed", tagged["protocol"]),
                      date="2999-01-01T00:00:00+00:00")  # a newer run at another budget
    assert more_seeds["protocol"] != tagged["protocol"]
    (kept / "cc_gain.seeds9.json").write_text(json.dumps(more_seeds), encoding="utf-8")
    assert [run.source for run in course.cc_gain_runs(kept)] == ["`results/cc_gain.seeds9.json`"]
    assert [run.source for run in course.cc_gain_runs(kept, like=kept / "cc_gain.json")] == [run.source for run in runs]
    with pytest.raises(ValueError, match="different columns"):
        course.joined([joined, {"columns": ["other"], "rows": []}])


def test_a_later_seed_is_a_run_of_its_own_that_joins_the_figure_as_its_own_points(run, tmp_path, monkeypatch):
    """--first-seed 1 measures distillation seed 1 alone (its own sets and feature nets, none of seed 0's cells):
    a second seed added later without redoing the first, kept beside it and drawn with it (same number of seeds)."""
    tmp, _, record, env, argv = run
    kept = tmp_path / "results"
    kept.mkdir()
    (kept / "cc_gain.json").write_text(json.dumps(record), encoding="utf-8")
    argv = [a for a in argv if a != "default:1:1"]  # one row: the pool of two one-epoch convnet nets
    job = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cc_gain.py"), *argv, "--columns", "+CC",
                          "--first-seed", "1", "--results-tag", "seed1", "--results-dir", str(kept),
                          "--figure", str(tmp_path / "joined.png")], env=env, capture_output=True, text=True,
                         timeout=900)
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.stderr.count("[cell]") == 2  # DM and +CC at seed 1, none of seed 0's cached cells
    later = json.loads((kept / "cc_gain.seed1.json").read_text(encoding="utf-8"))
    assert "; 1 distillation seed(s) from seed 1;" in later["protocol"]
    col = {name: k for k, name in enumerate(later["tables"][0]["columns"])}
    mine, first = later["tables"][0]["rows"][0], record["tables"][0]["rows"][1]
    assert mine[col["DM"]] != first[col["DM"]] and mine[col["+CC"]] != first[col["+CC"]]  # other sets
    # seed 1 with a pool of 2 draws the nets 1 and 2, each trained by this run and read back here
    monkeypatch.setenv("DISTILL_CACHE", env["DISTILL_CACHE"])
    data = load_dataset("digits")
    stored = [float(pretrained(data, recipe("convnet", epochs=1, seed=s))["accuracy"]) for s in (1, 2)]
    assert percent(mine[col["net accuracy"]]) == pytest.approx(100 * sum(stored) / 2, abs=0.006)
    assert "(the rows of 2 run(s))" in job.stdout + job.stderr
    assert [run.source for run in course.cc_gain_runs(kept)] == ["`results/cc_gain.json`",
                                                                 "`results/cc_gain.seed1.json`"]


def test_runs_whose_lambda_scans_differ_or_that_give_lambda_are_at_one_budget():
    line = ("Budget: 600 iterations; lambda_CC chosen per row from [0.0003, 0.001, 0.003, 0.01] on 500 validation "
            "images per class; lambda_CM 0.01; evaluation convnet, 1000 epochs")
    assert course.cc_gain_budget(line) == course.cc_gain_budget(line.replace("0.001, 0.003, 0.01", "0.001"))
    given = re.sub(r"lambda_CC chosen [^;]*;", "lambda_CC 0.0003;", line)
    assert given != line and course.cc_gain_budget(line) == course.cc_gain_budget(given)
    assert course.cc_gain_budget(line) != course.cc_gain_budget(line.replace("1000 epochs", "300 epochs"))
    assert course.cc_gain_budget(line) != course.cc_gain_budget(line.replace("lambda_CM 0.01", "lambda_CM 0.1"))
    seeds = line + "; 2 distillation seed(s); mean ± std over seeds x evaluation nets"
    later = seeds.replace("seed(s);", "seed(s) from seed 2;")
    assert later != seeds and course.cc_gain_budget(later) == course.cc_gain_budget(seeds)
    assert course.cc_gain_budget(seeds) != course.cc_gain_budget(seeds.replace("2 distillation", "1 distillation"))
