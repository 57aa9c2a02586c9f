"""Scaling out with torch.distributed: the one place that knows about ranks, process groups and collectives.

A run launched by ``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) joins one process group
(gloo on CPU, NCCL on GPUs with one GPU per process; with more processes than GPUs the processes share the GPUs and
the group is gloo, which carries tensors through the CPU); anything else runs as a single process and every helper here is
then the identity, so library code calls them unconditionally.

What is split, and why it gives the single-process result:

* distillation: the DM/CC/CM (and IDM's) terms are sums over classes and SGD with momentum acts per pixel, so a rank
  that matches only its classes and updates only their synthetic images needs no gradient exchange. Every rank draws
  the same network, augmentation family and feature-net pick, and the per-class streams are keyed by (seed,
  iteration, class), never by which process visits a class. Per iteration only the loss terms are all-reduced (for
  the history); the images and their momentum are gathered when a checkpoint or the result is made. A new loss term
  (e.g. IDM's) shards the same way if it loops over ``Distiller.classes`` and is a *sum* over classes (not a mean
  over all synthetic images), with labels of those classes only. IDM's model queue is trained identically on every
  rank (same seeded streams, on the real data of all classes), so it needs no exchange either; that work is repeated
  on every rank. (On GPUs "identically" needs deterministic kernels; otherwise rounding lets the ranks' queues drift
  apart, and broadcasting rank 0's queue with :func:`broadcast_module` after each update would be the fix.)
* evaluation: model k of an EvalProtocol trains on rank ``k % world``; accuracies are gathered in model order.
* sweeps: uncached cells are dealt round-robin; each rank computes its cells alone (``local()``) into the shared
  DiskCache, and the results are gathered in cell order.

Sharding rule (:func:`shard_classes`): rank r holds the contiguous classes [r*C//W, (r+1)*C//W), so shard sizes
differ by at most one and concatenating the shards in rank order gives the class-major order. More ranks than
classes is an error (a rank without classes would only idle).
"""
from __future__ import annotations

import atexit
import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist

_LOCAL = 0  # depth of nested local() blocks


class PeerFailure(RuntimeError):
    """A collective failed: another process of the job died or hung (torchrun's failure summary names which)."""


@contextmanager
def _collective(what: str):
    try:
        yield
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PeerFailure(f"{what} across processes failed on rank {rank()} ({reason}): another process of this job "
                          f"probably died; torchrun's summary names it") from err


def launched() -> bool:
    """True when this process was started by torchrun (or any launcher that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def collective_timeout() -> timedelta:
    """How long a rank waits for the others at a collective: ``DISTILL_COLLECTIVE_TIMEOUT_MIN`` minutes, default
    24 hours. torch's 30-minute default is shorter than one sweep cell (a rank that finished its cells waits for
    the slowest), and a dead peer does not need the timeout: torchrun ends the whole job when a process dies."""
    minutes = os.environ.get("DISTILL_COLLECTIVE_TIMEOUT_MIN", str(24 * 60))
    try:
        value = float(minutes)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ValueError(f"DISTILL_COLLECTIVE_TIMEOUT_MIN must be a positive number of minutes, got {minutes!r}")
    return timedelta(minutes=value)


def setup(device: torch.device | str = "cpu") -> None:
    """Join the process group once, if launched: NCCL when ``device`` is CUDA, else gloo. Idempotent."""
    if not launched() or dist.is_initialized():
        return
    timeout = collective_timeout()
    # torch._dynamo, imported lazily by the first optimizer step, keeps references to a process group that exists
    # when it is imported: destroy_process_group then leaves the group and its gloo threads alive until interpreter
    # shutdown, where tearing them down aborts the process now and then ("terminate called without an active
    # exception", exit -6, after all work is done). Imported before the group exists, it holds none.
    import torch._dynamo  # noqa: F401
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(rank_device(torch.device("cuda")))
    dist.init_process_group(backend(device), timeout=timeout)
    atexit.register(_teardown)


def backend(device: torch.device | str) -> str:
    """The process group's backend: NCCL when every process on this machine has a GPU of its own, else gloo (on
    CPU, or when processes share a GPU: NCCL refuses two ranks on one device)."""
    if torch.device(device).type != "cuda":
        return "gloo"
    return "nccl" if _local_world() <= torch.cuda.device_count() else "gloo"


def _local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """True inside a process group of more than one rank, outside ``local()``."""
    return _LOCAL == 0 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes files and prints progress."""
    return rank() == 0


@contextmanager
def local():
    """Inside this block library calls run as one process (used for sweep cells, each computed by one rank)."""
    global _LOCAL
    _LOCAL += 1
    try:
        yield
    finally:
        _LOCAL -= 1


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: a CUDA device without an index becomes cuda:(LOCAL_RANK mod the GPUs) under torchrun, so
    each process has a GPU of its own or, with more processes than GPUs, several share one (a sweep's cells, whose
    small kernels leave a GPU idle between launches, then fill it together)."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % max(1, torch.cuda.device_count()))
    return device


def shard_classes(num_classes: int, rank_: int | None = None, world: int | None = None) -> list[int]:
    """The classes rank ``rank_`` of ``world`` holds: contiguous, sizes differing by at most one (see module doc)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if world > num_classes:
        raise ValueError(f"world size {world} exceeds the number of classes {num_classes}: distillation is sharded by "
                         f"class, so start at most {num_classes} processes (torchrun --nproc-per-node)")
    return list(range(rank_ * num_classes // world, (rank_ + 1) * num_classes // world))


# ------------------------------------------------------------------------------------------------------------
# Collectives (identity for a single process)

def check_same(values: dict, what: str = "config") -> None:
    """Raise ValueError on every rank unless all ranks passed equal ``values`` (a JSON-like dict), naming the fields."""
    if not active():
        return
    everyone = all_gather_object(_flatten(values))
    reference = everyone[0]
    problems = []
    for r, theirs in enumerate(everyone[1:], start=1):
        for key in sorted(set(reference) | set(theirs)):
            if reference.get(key) != theirs.get(key):
                problems.append(f"{key} (rank 0: {reference.get(key)!r}, rank {r}: {theirs.get(key)!r})")
    if problems:
        raise ValueError(f"ranks were started with different {what}s; differing fields: " + ", ".join(problems))


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sums over ranks (float64)."""
    if not active():
        return list(values)
    t = _carried(torch.tensor(values, dtype=torch.float64, device=device))
    with _collective("summing the loss terms"):
        dist.all_reduce(t)
    return t.tolist()


def _carried(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` where the process group's backend can carry it: as it is under NCCL, a CPU copy under gloo."""
    return tensor if dist.get_backend() == "nccl" else tensor.cpu()


def gather_classes(local: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Every rank's class-major rows (same rows per class on all ranks), concatenated in class order, on all ranks."""
    if not active():
        return local
    world = world_size()
    rows_per_class = len(local) // len(shard_classes(num_classes))
    counts = [len(shard_classes(num_classes, r, world)) * rows_per_class for r in range(world)]
    padded = _carried(torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=local.device))
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    with _collective("gathering the synthetic images"):
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, counts)]).to(local.device)


def all_gather_object(obj: Any) -> list:
    """``obj`` of every rank, in rank order (pickled; for small things)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    with _collective("gathering results"):
        dist.all_gather_object(out, obj)
    return out


def from_main(compute: Callable[[], Any]) -> Any:
    """``compute()`` run on rank 0 only, as one process (``local()``: the others are not there to join its
    collectives), its result sent to every rank (e.g. reading a checkpoint once, timing)."""
    if not active():
        return compute()
    box = [None]
    if is_main():
        with local():
            box = [compute()]
    with _collective("sending rank 0's data"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def main_first(compute: Callable[[], Any]) -> Any:
    """``compute()`` on rank 0, then on the others (which then find rank 0's disk-cache entries)."""
    if not active():
        return compute()
    result = compute() if is_main() else None
    with _collective("waiting for rank 0"):
        dist.barrier()
    return result if is_main() else compute()


def broadcast_module(module: torch.nn.Module) -> None:
    """Overwrite ``module``'s parameters and buffers with rank 0's, so every rank uses exactly rank 0's net."""
    if not active():
        return
    with _collective("sending rank 0's network"):
        for tensor in list(module.parameters()) + list(module.buffers()):
            wire = _carried(tensor.data)
            dist.broadcast(wire, src=0)
            tensor.data.copy_(wire)


def spread(count: int, compute: Callable[[int], Any], skip: dict[int, Any] | None = None) -> list:
    """``[compute(i) for i in range(count)]`` with item i computed alone (``local()``) on rank ``i' % world``, where
    i' is its position among the items not in ``skip`` (whose values are given); results in index order on all ranks.
    """
    skip = skip or {}
    todo = [i for i in range(count) if i not in skip]
    mine = todo[rank()::world_size()]
    with local():
        done = {i: compute(i) for i in mine}
    results = dict(skip)
    for part in all_gather_object(done):
        results.update(part)
    return [results[i] for i in range(count)]
