"""benchmarks/batched_eval.py: its batched trainer against train_classifier (same seeds), and a whole run.

The trainer must end where training the nets one by one ends, or the benchmark would time two different
computations; the run must write the table it printed, with a time for every path.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill_lib.models import get_model
from distill_lib.seeding import generator
from distill_lib.train import TrainSpec, predict, train_classifier

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import batched_eval  # noqa: E402  (benchmarks/batched_eval.py, found through the line above)


def _small_convnets():
    """Three small ConvNets for digits, each with its own initial weights."""
    nets = [get_model("convnet", 1, 10, (16, 16), width=8, depth=2) for _ in range(3)]
    for k, net in enumerate(nets):
        net.reset_parameters(generator(k, 99))
    return nets


def _trained_one_by_one_and_together(digits, spec, batched_generators=(0, 1, 2)):
    """Three small ConvNets trained by train_classifier one after another, and the same three (same inits) trained by
    train_classifiers_together with the generators of models ``batched_generators`` (model k's own by default)."""
    x, y = digits.normalize(digits.x_train[:20]), digits.y_train[:20]
    alone, together = _small_convnets(), _small_convnets()
    alone_losses = [train_classifier(net, x, y, spec, torch.Generator().manual_seed(10 + k))
                    for k, net in enumerate(alone)]
    together_losses = batched_eval.train_classifiers_together(
        together, x, y, spec, [torch.Generator().manual_seed(10 + k) for k in batched_generators])
    return alone, alone_losses, together, together_losses


# one batch per epoch (the set fits), and 8 + 8 + 4 images per epoch; DSA on, lr decayed after epoch 2 of 4, a weight
# decay large enough that leaving it out would show
@pytest.mark.parametrize("batch_size", [256, 8])
def test_training_together_equals_training_one_by_one(digits, batch_size):
    spec = TrainSpec(epochs=4, lr=0.05, weight_decay=0.01, batch_size=batch_size)
    alone, alone_losses, together, together_losses = _trained_one_by_one_and_together(digits, spec)
    x_test = digits.normalize(digits.x_test[:200])
    for k, (a, b) in enumerate(zip(alone, together)):
        assert together_losses[k] == pytest.approx(alone_losses[k], rel=1e-4)
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
        assert (predict(a, x_test) != predict(b, x_test)).sum() <= 1


def test_training_together_follows_each_models_own_generator(digits):
    """The comparison above can fail: with models 0 and 1 trained on each other's streams, neither ends as alone."""
    alone, _, together, _ = _trained_one_by_one_and_together(digits, TrainSpec(epochs=4, lr=0.05),
                                                             batched_generators=(1, 0, 2))
    for k in range(3):
        gap = max((p - q).abs().max().item() for p, q in zip(alone[k].parameters(), together[k].parameters()))
        assert (gap > 1e-3) == (k < 2)


def test_training_together_refuses_models_with_buffers():
    nets = [get_model("convnet_bn", 1, 10, (16, 16), width=8, depth=2) for _ in range(2)]
    with pytest.raises(ValueError, match="buffers"):
        batched_eval.train_classifiers_together(nets, torch.zeros(4, 1, 16, 16), torch.zeros(4, dtype=torch.long),
                                                TrainSpec(epochs=1), [torch.Generator(), torch.Generator()])


def _run(tmp_path, argv: list[str], name: str) -> dict:
    """benchmarks/batched_eval.py run with ``argv`` in a subprocess (temporary cache and results); its record."""
    env = {**os.environ, "DISTILL_CACHE": str(tmp_path / "cache"), "DISTILL_RESULTS": str(tmp_path / "results"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    job = subprocess.run([sys.executable, str(REPO / "benchmarks" / "batched_eval.py"), *argv], env=env,
                         capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]
    return json.loads((tmp_path / "results" / f"{name}.json").read_text(encoding="utf-8"))


def test_a_tiny_run_writes_its_table(tmp_path):
    argv = ["--ipcs", "1", "--epochs", "2", "--reps", "2", "--models", "2", "--threads", "1"]
    record = _run(tmp_path, argv, "batched_eval")
    assert record["benchmark"] == "batched_eval" and record["command"].endswith(" ".join(argv))
    assert "2 default ConvNets" in record["protocol"] and "2 epochs" in record["protocol"]
    [table] = record["tables"]
    assert table["title"].startswith("Sequential vs batched training: cifar10")
    assert table["columns"] == ["IPC", "epochs", "sequential s", "batched s", "sequential / batched"]
    [(ipc, epochs, sequential, batched, ratio)] = table["rows"]
    assert (ipc, epochs) == ("1", "2")
    # two reps: median (min-max)
    seconds = [float(part) for cell in (sequential, batched) for part in cell.replace("(", "").replace(")", "")
               .replace("-", " ").split()]
    assert len(seconds) == 6 and all(s > 0 for s in seconds)
    # the median of the per-rep ratios lies between the extreme ratios the two columns allow (up to the rounding)
    (_, seq_min, seq_max), (_, bat_min, bat_max) = seconds[:3], seconds[3:]
    assert seq_min / bat_max - 0.01 <= float(ratio) <= seq_max / bat_min + 0.01
    assert (tmp_path / "results" / "batched_eval.md").read_text(encoding="utf-8").count("| 1 | 2 |") == 1


def test_a_tiny_profile_lists_the_costliest_ops_then_all(tmp_path):
    record = _run(tmp_path, ["--ipcs", "1", "--epochs", "1", "--models", "1", "--threads", "1", "--profile", "4"],
                  "batched_eval_profile")
    [table] = record["tables"]
    assert table["columns"] == ["op (IPC 1, 1 epochs)", "sequential self s", "batched self s",
                                "batched - sequential s"]
    *ops, total = table["rows"]
    assert len(ops) == 4 and total[0] == "all ops"
    assert any("convolution" in op for op, *_ in ops)  # the ConvNet's costliest kernels on either path
    for op, sequential, batched, difference in ops + [total]:
        assert float(difference) == pytest.approx(float(batched) - float(sequential), abs=2e-3)
    for column in (1, 2):  # every op's seconds are part of all ops'
        assert all(0 <= float(row[column]) <= float(total[column]) for row in ops) and float(total[column]) > 0
    costliest = [max(float(row[1]), float(row[2])) for row in ops]
    assert costliest == sorted(costliest, reverse=True) and costliest[0] > 0
