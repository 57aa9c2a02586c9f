"""How a distillation runs, apart from what it computes: device, compilation, chunking, checkpoint cadence.

None of these settings changes the result beyond float rounding, so none of them enters a cache key or the check
that a checkpoint belongs to the config resuming it (:meth:`distill_lib.distill.DistillConfig.identity` holds only
what is computed). Its own module because both the distiller (device, compile, real_chunk) and the runner
(checkpoint_every, :mod:`distill_lib.runner`) read it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .train import resolve_device, use_compile


@dataclass(frozen=True)
class RunOptions:
    """Where and how a run executes; the same config gives the same synthetic set (to rounding) under any of them."""

    device: str = "auto"  # "auto": CUDA when available, else the CPU
    compile: str = "auto"  # torch.compile DM's net: "on", "off", or "auto" (CPU, enough work: see COMPILE_MIN_WORK)
    real_chunk: int = 32  # >0: push the real batch through the net in chunks of this many images (cache-friendly)
    checkpoint_every: int = 0  # >0: write the checkpoint every this many iterations (it needs a checkpoint path)

    def __post_init__(self):
        for name in ("real_chunk", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        use_compile(self.compile, torch.device("cpu"), False)  # validates the mode
        resolve_device(self.device)
