"""Tests for distill_lib.distributed: runs under torchrun (2 processes, gloo, CPU) give the single-process results.

Jobs are started with ``python -m torch.distributed.run`` (one thread per process, a free port, a timeout) on the
tiny digits settings: the CLI for DM, tests/distributed_worker.py for DM+CC+CM, resume across world sizes,
evaluation, the sweep and a killed rank, and two one-process "nodes" for configs that differ between ranks. Each is
compared with the same calls made here in one process. The sharding rule and the helpers' dealing are checked
without launching.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from distill_lib import distributed
from distill_lib.distill import RESUMABLE_FIELDS, Distiller
from distill_lib.evaluate import evaluate, random_subset
from distill_lib.cache import DiskCache
from distill_lib.runner import distill
from distill_lib.sweep import Cell, run_cell
from distill_lib.synthetic import SyntheticSet

sys.path.insert(0, str(Path(__file__).parent))
from distributed_worker import CPU, FEATNET, IDM, TINY_EVAL, tiny  # noqa: E402  (the worker's settings, not a copy)

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT = 120  # seconds per job: a hang fails the test instead of the suite
CLI_FLAGS = ["--dataset", "digits", "--ipc", "3", "--iterations", "6", "--batch-real", "8", "--net-width", "8",
             "--device", "cpu", "--no-progress"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(cache: Path, data: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DISTILL_CACHE": str(cache),
            "DISTILL_DATA": str(data)}


def torchrun(args: list, env: dict, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *map(str, args)]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)


def what_is_computed(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RESUMABLE_FIELDS}


def assert_same_run(got: SyntheticSet, want: SyntheticSet):
    torch.testing.assert_close(got.images, want.images, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.labels, want.labels) and what_is_computed(got.config) == what_is_computed(want.config)
    assert [r["iteration"] for r in got.history] == [r["iteration"] for r in want.history]
    for a, b in zip(got.history, want.history):
        for name in set(a) - {"seconds"}:
            assert a[name] == pytest.approx(b[name], rel=1e-5), name


# ---------------------------------------------------------------- without launching

@pytest.mark.parametrize("classes, world", [(10, 1), (10, 2), (10, 3), (10, 10), (7, 4), (100, 8)])
def test_shard_classes_partitions_contiguously_and_evenly(classes, world):
    shards = [distributed.shard_classes(classes, r, world) for r in range(world)]
    assert [c for shard in shards for c in shard] == list(range(classes))  # rank order = class order
    assert max(map(len, shards)) - min(map(len, shards)) <= 1 and min(map(len, shards)) >= 1


def test_more_ranks_than_classes_is_an_error():
    with pytest.raises(ValueError, match="world size 11 exceeds the number of classes 10"):
        distributed.shard_classes(10, 0, 11)


def test_single_process_helpers_are_the_identity():
    assert not distributed.active() and distributed.rank() == 0 and distributed.world_size() == 1
    x = torch.arange(12.0).reshape(6, 2)
    assert distributed.gather_classes(x, 3) is x
    assert distributed.all_reduce_sum([1.5, 2.0]) == [1.5, 2.0]
    assert distributed.from_main(lambda: 7) == 7 and distributed.all_gather_object("a") == ["a"]
    distributed.check_same({"config": {"a": 1}})
    assert distributed.shard_classes(10) == list(range(10))


def test_collective_timeout_outlasts_a_sweep_cell_and_rejects_bad_values(monkeypatch):
    monkeypatch.delenv("DISTILL_COLLECTIVE_TIMEOUT_MIN", raising=False)
    assert distributed.collective_timeout() == timedelta(hours=24)
    monkeypatch.setenv("DISTILL_COLLECTIVE_TIMEOUT_MIN", "90")
    assert distributed.collective_timeout() == timedelta(minutes=90)
    for bad in ("0", "-5", "soon"):
        monkeypatch.setenv("DISTILL_COLLECTIVE_TIMEOUT_MIN", bad)
        with pytest.raises(ValueError, match="DISTILL_COLLECTIVE_TIMEOUT_MIN"):
            distributed.collective_timeout()


@pytest.mark.parametrize("gpus, backend, index", [(4, "nccl", 3), (2, "gloo", 1), (1, "gloo", 0)])
def test_ranks_take_a_gpu_each_or_share_them_under_gloo(monkeypatch, gpus, backend, index):
    """Local rank 3 of 4 processes: with 4 GPUs its own (NCCL); with fewer, GPU 3 mod the GPUs, shared with another
    process, so the group is gloo (NCCL refuses two ranks on one device). On CPU always gloo."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    for name, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(name, value)
    assert distributed.rank_device(torch.device("cuda")) == torch.device("cuda", index)
    assert distributed.rank_device(torch.device("cuda", 0)) == torch.device("cuda", 0)  # a named device stays
    assert distributed.backend("cuda") == backend
    assert distributed.backend("cpu") == "gloo"


def test_spread_deals_round_robin_over_uncached_items_and_keeps_order(monkeypatch):
    """Rank 1 of 2 computes every other item not in ``skip``, alone; results come back in index order."""
    computed = []

    def compute(i):
        computed.append((i, distributed.active()))
        return f"item{i}"

    others = {0: "item0", 3: "item3", 5: "item5"}  # rank 0's share, as all_gather_object hands it to rank 1
    monkeypatch.setattr(distributed, "active", lambda: distributed._LOCAL == 0)
    monkeypatch.setattr(distributed, "rank", lambda: 0 if distributed._LOCAL else 1)
    monkeypatch.setattr(distributed, "world_size", lambda: 1 if distributed._LOCAL else 2)
    monkeypatch.setattr(distributed, "all_gather_object", lambda mine: [others, mine])
    results = distributed.spread(6, compute, skip={1: "cached1"})
    assert computed == [(2, False), (4, False)]  # uncached 0, 2, 3, 4, 5: rank 1 takes every other from the 2nd
    assert results == ["item0", "cached1", "item2", "item3", "item4", "item5"]


# ---------------------------------------------------------------- 2 processes against 1

@pytest.fixture(scope="module")
def single(tmp_path_factory, digits):
    """Folders shared with the jobs, and the one-process results they are compared with."""
    base = tmp_path_factory.mktemp("dist")
    dirs = {name: base / name for name in ("cache", "data", "out")}
    for d in dirs.values():
        d.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_CACHE", str(dirs["cache"]))
        run = Distiller(tiny(), digits, options=CPU, progress=False)
        for _ in range(6):
            run.step()
        distill(tiny(iterations=3), digits, checkpoint=dirs["out"] / "one_proc.pt", options=CPU,
                progress=False)  # for 1 -> 2
        cached_cell = Cell(tiny(iterations=2, seed=0), TINY_EVAL)
        cached = run_cell(cached_cell, verbose=False)  # the sweep job must reuse it
        dm_cc_cm = distill(tiny(iterations=4, cc=True, cm=True, **FEATNET), digits, options=CPU, progress=False)
        idm_cc_cm = distill(tiny(iterations=4, **IDM, **FEATNET), digits, options=CPU, progress=False)
    cached_file = DiskCache("sweep", dirs["cache"]).path(cached_cell.key())
    return dict(dirs, env=job_env(dirs["cache"], dirs["data"]), dm=run.result(), state=run.state_dict(),
                dm_cc_cm=dm_cc_cm, idm_cc_cm=idm_cc_cm, cached=cached, cached_file=cached_file, cached_mtime=cached_file.stat().st_mtime_ns)


@pytest.fixture(scope="module")
def main_job(single):
    job = torchrun([WORKER, single["out"], "main"], single["env"], single["out"])
    assert job.returncode == 0, job.stdout + job.stderr
    return job


def test_cli_distill_on_two_processes_equals_one(single):
    out, ckpt = single["out"] / "cli.pt", single["out"] / "cli.ckpt"
    job = torchrun(["-m", "distill_lib", "distill", *CLI_FLAGS, "--checkpoint-every", "2", "--checkpoint", ckpt,
                    "--out", out], single["env"], single["out"])
    assert job.returncode == 0, job.stdout + job.stderr
    assert job.stdout.count("saved ") == 1  # only rank 0 writes and prints
    assert_same_run(SyntheticSet.load(out), single["dm"])
    # the checkpoint holds the whole set and the whole momentum, as one process would
    state, want = torch.load(ckpt, weights_only=True), single["state"]
    assert state["iteration"] == 6 and what_is_computed(state["config"]) == what_is_computed(want["config"])
    torch.testing.assert_close(state["images"], want["images"], rtol=1e-5, atol=1e-5)
    momentum = [s["optimizer"]["state"][0]["momentum_buffer"] for s in (state, want)]
    assert momentum[1].abs().max() > 0
    torch.testing.assert_close(momentum[0], momentum[1].cpu(), rtol=1e-5, atol=1e-5 * momentum[1].abs().max().item())


def test_dm_cc_cm_on_two_processes_equals_one(single, main_job):
    got = SyntheticSet.load(single["out"] / "dm_cc_cm.pt")
    assert {"dm", "cc", "cm"} <= got.history[0].keys()
    assert_same_run(got, single["dm_cc_cm"])


def test_idm_cc_cm_on_two_processes_equals_one(single, main_job):
    """Every rank trains the same model queue (seeded, on all classes' real data), so no weights are exchanged."""
    got = SyntheticSet.load(single["out"] / "idm_cc_cm.pt")
    assert {"dm", "cc", "cm", "ce"} <= got.history[-1].keys() and got.factor == 2
    assert any(record["net_accuracy"] > 0 for record in got.history)  # the queue trained and weighted the CE term
    assert_same_run(got, single["idm_cc_cm"])


def test_checkpoint_of_two_processes_resumes_in_one(single, main_job, digits):
    ckpt = single["out"] / "two_procs.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["iteration"] == 3 and state["images"].shape == (30, 1, 16, 16)
    assert state["optimizer"]["state"][0]["momentum_buffer"].shape == (30, 1, 16, 16)
    resumed = distill(tiny(), digits, checkpoint=ckpt, resume=True, options=CPU, progress=False)
    assert_same_run(resumed, single["dm"])


def test_checkpoint_of_one_process_resumes_in_two(single, main_job):
    assert_same_run(SyntheticSet.load(single["out"] / "resumed_1_to_2.pt"), single["dm"])


def test_evaluation_models_spread_over_ranks_in_model_order(single, main_job, digits):
    got = json.loads((single["out"] / "eval.json").read_text())
    want = evaluate(random_subset(digits, 2), digits, TINY_EVAL).accuracies
    assert got["world"] == 2 and len(set(want)) == 3  # three different numbers: the order is checked
    assert tuple(got["accuracies"]) == want


def test_from_main_runs_its_work_on_rank_0_as_one_process(single, main_job):
    assert json.loads((single["out"] / "from_main.json").read_text()) == [0]


def test_sweep_cells_spread_and_cached_cell_not_rerun(single, main_job, monkeypatch, tmp_path):
    records = json.loads((single["out"] / "sweep.json").read_text())
    assert [seed for seed, _ in records] == [0, 1, 2]
    assert records[0][1] == list(single["cached"].accuracies)
    computed = re.findall(r"\[cell\] digits ipc3 DM (?:\([^)]*\) )*2 it seed(\d)", main_job.stdout + main_job.stderr)
    assert sorted(computed) == ["1", "2"]  # each uncached cell once; the cached one never
    assert single["cached_file"].stat().st_mtime_ns == single["cached_mtime"]
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "fresh"))  # recompute here, from nothing
    for seed, accuracies in records[1:]:
        assert list(run_cell(Cell(tiny(iterations=2, seed=seed), TINY_EVAL), verbose=False).accuracies) == accuracies


def test_more_ranks_than_classes_fails_on_every_rank(single, main_job):
    for r in range(2):
        message = (single["out"] / f"error_classes_rank{r}.txt").read_text()
        assert "world size 2 exceeds the number of classes 1" in message


def test_killed_rank_ends_the_job_and_the_last_checkpoint_resumes(single, digits):
    job = torchrun([WORKER, single["out"], "kill"], single["env"], single["out"])
    log = job.stdout + job.stderr
    assert job.returncode != 0
    assert "SIGKILL" in log and re.search(r"rank\s*:\s*1\b", log), log[-3000:]  # torchrun names the dead rank
    state = torch.load(single["out"] / "killed.pt", weights_only=True)
    assert state["iteration"] == 4  # checkpointed every 2; rank 1 died at iteration 5
    resumed = distill(tiny(), digits, checkpoint=single["out"] / "killed.pt", resume=True, options=CPU,
                      progress=False)
    assert_same_run(resumed, single["dm"])


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="lists threads through Linux's /proc")
def test_teardown_ends_the_gloo_threads_after_an_optimizer_step(tmp_path):
    """A group that outlives destroy_process_group is torn down at interpreter shutdown, which now and then aborts a
    finished job (exit -6). The first optimizer step imports torch._dynamo; imported after the group exists, it
    keeps the group (and its gloo_tcp_loop / pt_gloo_runloop threads) alive past the teardown."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    job = torchrun([WORKER, tmp_path, "teardown"], env, tmp_path)
    assert job.returncode == 0, job.stdout + job.stderr
    for rank in range(2):
        threads = (tmp_path / f"threads_rank{rank}.txt").read_text().split()
        assert not [name for name in threads if "gloo" in name], (rank, threads)


def test_ranks_with_different_configs_fail_naming_the_field(single):
    """Two one-process "nodes" (the multi-node command) whose command lines differ in --lr-img."""
    port = free_port()
    jobs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                              "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                              "-m", "distill_lib", "distill", *CLI_FLAGS, "--lr-img", lr,
                              "--out", str(single["out"] / f"node{node}.pt")],
                             env=single["env"], cwd=single["out"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
            for node, lr in ((0, "1.0"), (1, "0.5"))]
    logs = [job.communicate(timeout=TIMEOUT)[0] for job in jobs]
    for job, log in zip(jobs, logs):
        assert job.returncode != 0
        assert "error: ranks were started with different configs; differing fields: config.lr_img (rank 0: 1.0, " \
               "rank 1: 0.5)" in log, log[-3000:]
    assert not any((single["out"] / f"node{n}.pt").exists() for n in range(2))
