"""benchmarks/fast_eval.py end to end on digits: the agreement table is computed from the per-set table it prints.

A subprocess at the tiniest budget (temporary cache and results): Spearman's correlation and the offsets of each
candidate are recomputed here from the per-set accuracies, and the reference agrees with itself exactly.
"""
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]


def test_the_agreement_table_follows_from_the_per_set_table(tmp_path):
    env = {**os.environ, "DISTILL_CACHE": str(tmp_path / "cache"), "DISTILL_RESULTS": str(tmp_path / "results"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    argv = ["--datasets", "digits", "--ipcs", "1", "5", "--seeds", "2", "--methods", "random", "DM", "DM+CM",
            "--iterations", "2", "--batch-real", "16", "--eval-epochs", "6", "--candidate", "e2:epochs=2",
            "--threads", "1"]
    job = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fast_eval.py"), *argv], env=env,
                         capture_output=True, text=True, timeout=900)
    assert job.returncode == 0, job.stderr[-3000:]
    record = json.loads((tmp_path / "results" / "fast_eval.json").read_text(encoding="utf-8"))
    sets, agreement = record["tables"]
    assert len(sets["rows"]) == 2 * 2 + 2 * 3  # IPC 1: random, DM; IPC 5: also DM+CM; 2 seeds each
    assert not any(r[1] == "1" and r[2] == "DM+CM" for r in sets["rows"])
    ref = [float(r[4].split(" %")[0]) for r in sets["rows"]]
    fast = [float(r[5].split(" %")[0]) for r in sets["rows"]]
    rows = {r[0]: r for r in agreement["rows"]}
    assert rows["reference"][1] == "1.000" and rows["reference"][3] == "+0.00 ± 0.00"
    assert float(rows["e2"][1]) == round(float(spearmanr(ref, fast).statistic), 3)
    offsets = [f - r for f, r in zip(fast, ref)]
    mean, spread = rows["e2"][3].split(" ± ")
    assert abs(float(mean) - statistics.fmean(offsets)) <= 0.006
    assert abs(float(spread) - statistics.pstdev(offsets)) <= 0.006
    assert float(rows["e2"][6]) > 0 and float(rows["reference"][6]) == 1  # seconds recorded by every cell
