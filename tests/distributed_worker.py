"""What tests/test_distributed.py runs under ``torchrun``: library calls on tiny digits settings, results to files.

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed_worker.py OUT_DIR SCENARIO

Scenarios: ``main`` (DM+CC+CM, IDM+CC+CM, a partial run for 2 -> 1 resume, a 1 -> 2 resume of OUT_DIR/one_proc.pt, evaluation
spread over ranks, a sweep over a partly cached grid, bad input: more ranks than classes) and ``kill`` (rank 1
SIGKILLs itself at iteration 5 of a run checkpointed every 2 iterations) and ``teardown`` (an optimizer step, then
the exit-time teardown; each rank writes the names of the threads it still runs to ``threads_rank<r>.txt``). Only rank 0 writes result files; every
rank writes the error it raised on bad input (``error_<case>_rank<r>.txt``).
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

from distill_lib import distributed
from distill_lib.data import from_arrays, load_dataset
from distill_lib.distill import DistillConfig, Distiller
from distill_lib.evaluate import EvalProtocol, evaluate, random_subset
from distill_lib.idm import QueueSpec
from distill_lib.options import RunOptions
from distill_lib.runner import distill
from distill_lib.sweep import grid, sweep

torch.set_num_threads(1)
TINY = dict(dataset="digits", ipc=3, iterations=6, batch_real=8, net_width=8)
CPU = RunOptions(device="cpu")
EVERY_2 = RunOptions(device="cpu", checkpoint_every=2)  # a checkpoint every 2 iterations
FEATNET = dict(featnet_recipe="default", featnet_arch="convnet", featnet_epochs=1, featnet_per_class=20)
# IDM+CC+CM with a short queue that pushes, trains and is drawn from within 4 iterations.
IDM = dict(method="idm", cc=True, cm=True, queue=QueueSpec(length=3, push_interval=2, train_nets=1, train_steps=1,
                                                            batch=16))
TINY_EVAL = EvalProtocol(model="mlp", epochs=30, num_models=3, device="cpu")  # 3 distinct accuracies on digits


def tiny(**overrides) -> DistillConfig:
    return DistillConfig(**{**TINY, **overrides})


def bad_input(out: Path, case: str, call) -> None:
    """Run ``call``, which must raise ValueError on every rank; keep each rank's message."""
    try:
        call()
    except ValueError as err:
        (out / f"error_{case}_rank{distributed.rank()}.txt").write_text(str(err))
    else:
        raise AssertionError(f"{case}: no error")


def main_scenario(out: Path) -> None:
    digits = load_dataset("digits")
    one_class = from_arrays("digits", digits.x_train[digits.y_train == 0], digits.y_train[digits.y_train == 0],
                            digits.x_test[digits.y_test == 0], digits.y_test[digits.y_test == 0], ["0"])
    bad_input(out, "classes", lambda: distill(tiny(), one_class, options=CPU, progress=False))

    full = distill(tiny(iterations=4, cc=True, cm=True, **FEATNET), digits, options=CPU, progress=False)
    idm = distill(tiny(iterations=4, **IDM, **FEATNET), digits, options=CPU, progress=False)
    part = distill(tiny(iterations=3), digits, checkpoint=out / "two_procs.pt", options=EVERY_2, progress=False)
    resumed = distill(tiny(), digits, checkpoint=out / "one_proc.pt", resume=True, options=CPU, progress=False)
    accuracies = evaluate(random_subset(digits, 2), digits, TINY_EVAL).accuracies
    records = sweep(grid(tiny(iterations=2), seed=[0, 1, 2]), TINY_EVAL)
    # rank 0 alone, as one process: a collective inside must not wait for the other rank
    alone = distributed.from_main(lambda: distributed.all_gather_object(distributed.rank()))
    if distributed.is_main():
        (out / "from_main.json").write_text(json.dumps(alone))
        full.save(out / "dm_cc_cm.pt")
        idm.save(out / "idm_cc_cm.pt")
        part.save(out / "part.pt")
        resumed.save(out / "resumed_1_to_2.pt")
        (out / "eval.json").write_text(json.dumps({"accuracies": accuracies, "world": distributed.world_size()}))
        (out / "sweep.json").write_text(json.dumps([[r["seed"], r["accuracies"]] for r in records]))


def kill_scenario(out: Path) -> None:
    real_step = Distiller.step

    def step(self):
        if distributed.rank() == 1 and self.iteration == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self)

    Distiller.step = step
    distill(tiny(), load_dataset("digits"), checkpoint=out / "killed.pt", options=EVERY_2, progress=False)


def teardown_scenario(out: Path) -> None:
    distributed.setup("cpu")
    net = torch.nn.Linear(4, 2)
    net(torch.randn(3, 4)).sum().backward()
    torch.optim.SGD(net.parameters(), lr=0.1).step()  # the first optimizer step imports torch._dynamo
    distributed.all_gather_object(distributed.rank())
    distributed._teardown()  # what atexit runs at the end of every job
    tasks = Path("/proc/self/task")
    names = sorted((task / "comm").read_text().strip() for task in tasks.iterdir()) if tasks.exists() else ["?"]
    (out / f"threads_rank{os.environ['RANK']}.txt").write_text("\n".join(names))


if __name__ == "__main__":
    out_dir, scenario = Path(sys.argv[1]), sys.argv[2]
    {"main": main_scenario, "kill": kill_scenario, "teardown": teardown_scenario}[scenario](out_dir)
