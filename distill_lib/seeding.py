"""Deterministic random streams derived from (seed, purpose, iteration, class, ...).

Every random draw in the library comes from a ``torch.Generator`` built here, never from the global RNG or the
clock. Deriving each stream from a tuple of integers (rather than from the order in which code happens to visit
classes) makes a run reproducible, resumable at any iteration, and shardable across processes by class.
"""
from __future__ import annotations

import numpy as np
import torch

# Purposes: one integer per kind of randomness, so that streams never collide.
NET_INIT = 1
AUGMENT = 2
REAL_BATCH = 3
SYN_INIT = 4
EVAL_MODEL = 5
SUBSET = 6
FEATNET = 7
SPLIT = 8
RANDOM_SUBSET = 9
FEATNET_DRAW = 10
HERDING_INIT = 11  # the random ConvNet in whose embedding init="herding" chooses the starting images


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key (numpy's SeedSequence hashing).

    The number of keys is hashed too: SeedSequence pads short entropy with zeros, so on its own it maps (a, b) and
    (a, b, 0) to the same state, and e.g. a per-iteration stream would equal that iteration's class-0 stream.
    """
    state = np.random.SeedSequence([len(keys), *(int(k) for k in keys)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``derive_seed(*keys)``."""
    return torch.Generator().manual_seed(derive_seed(*keys))

# Continual learning (distill_lib.continual): the class order, herding's random feature net, each task's learner.
CLASS_ORDER = 21
HERDING = 22
CONTINUAL = 23

# IDM's model queue (distill_lib.idm): each new net's initialisation (by its serial number), the net drawn for
# matching at an iteration, and which nets are trained at an iteration and on which real batches.
QUEUE_NET_INIT = 31
QUEUE_SAMPLE = 32
QUEUE_TRAIN = 33
# Analysis and widgets (distill_lib.analysis, distill_lib.widgets): the real images shown next to a synthetic set and
# the random ConvNet whose features are pictured.
ANALYSIS_REAL = 41
ANALYSIS_NET = 42
