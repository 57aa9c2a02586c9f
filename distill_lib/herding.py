"""Herding: choosing real images whose embedded mean tracks their class's (Welling 2009; iCaRL's exemplars).

Two users: continual learning's herding memories (:mod:`distill_lib.continual`) and DM's ``init="herding"`` warm
start (:class:`distill_lib.distill.Distiller`), whose chosen images already match their class mean in a random
ConvNet's embedding, the quantity DM matches.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of ``m`` rows of ``features`` (N, D) chosen by herding (Welling 2009, as in iCaRL), in pick order.

    Step k picks, among the rows not yet picked, the one whose addition brings the mean of the picked rows closest
    (Euclidean) to the mean of all rows; ties go to the lowest index.
    """
    if not 0 < m <= len(features):
        raise ValueError(f"cannot herd {m} of {len(features)} samples")
    target, total = features.mean(0), torch.zeros_like(features[0])
    taken = torch.zeros(len(features), dtype=torch.bool)
    picks = []
    for k in range(1, m + 1):
        dist = (target - (total + features) / k).pow(2).sum(1).masked_fill(taken, float("inf"))
        i = int(dist.argmin())
        picks.append(i)
        taken[i] = True
        total = total + features[i]
    return torch.tensor(picks)


@torch.no_grad()
def embed_all(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net.embed`` of ``x`` in eval mode, on the CPU; the net's train/eval flags and memory format are restored.

    On a CPU in channels_last batches of 32, as :func:`train.predict` (activations stay in cache); elsewhere batches
    of 256.
    """
    device = next(net.parameters(), torch.empty(0)).device
    on_cpu = device.type == "cpu"
    memory_format = torch.channels_last if on_cpu else torch.contiguous_format
    modes = [m.training for m in net.modules()]
    net.eval().to(memory_format=memory_format)
    try:
        return torch.cat([net.embed(part.to(device).contiguous(memory_format=memory_format)).float().cpu()
                          for part in x.split(32 if on_cpu else 256)])
    finally:
        net.to(memory_format=torch.contiguous_format)
        for m, mode in zip(net.modules(), modes):
            m.training = mode
