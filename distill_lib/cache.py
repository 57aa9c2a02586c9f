"""One on-disk cache keyed by a hash of a full configuration.

Used for pretrained feature nets, sweep cells and continual-learning memories: anything expensive that is a pure
function of a config. Values are saved with ``torch.save`` (tensors, numbers, strings, lists, dicts) and read back
with ``weights_only=True``. Writes are atomic (:func:`distill_lib.files.atomic_save`); an unreadable entry is
recomputed with a warning, never a crash.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable


from .data import cache_root
from .files import atomic_save, load_torch


def canonical(config: Any) -> Any:
    """A JSON-ready form of a config: dataclasses become dicts, tuples lists, keys sorted when dumped."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: canonical(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {str(k): canonical(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [canonical(v) for v in config]
    if isinstance(config, (str, int, float, bool)) or config is None:
        return config
    raise TypeError(f"cannot key a cache on a {type(config).__name__}: {config!r}")


def check_finite_fields(config: Any) -> None:
    """Refuse a dataclass config with a NaN or infinite float field: it would run to a meaningless result."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value}")


def config_key(config: Any) -> str:
    """sha256 of the canonical JSON of ``config`` (first 24 hex digits)."""
    text = json.dumps(canonical(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class DiskCache:
    """Files ``<root>/<namespace>/<key>.pt`` holding ``{"config": ..., "value": ...}``."""

    def __init__(self, namespace: str, root: str | os.PathLike | None = None):
        self.dir = Path(root or cache_root()) / namespace

    def path(self, config: Any) -> Path:
        return self.dir / f"{config_key(config)}.pt"

    def get(self, config: Any) -> Any | None:
        """The cached value, or None on a miss or an unreadable entry (which is then removed with a warning)."""
        path = self.path(config)
        if not path.exists():
            return None
        try:
            entry = load_torch(path, "cache entry")
            if entry["config"] != canonical(config):
                raise ValueError("stored config differs from the requested one")
            return entry["value"]
        except Exception as err:  # any unreadable entry: corrupt, truncated, foreign
            warnings.warn(f"cache entry {path} is unreadable ({err}); recomputing it")
            path.unlink(missing_ok=True)
            return None

    def put(self, config: Any, value: Any) -> None:
        atomic_save({"config": canonical(config), "value": value}, self.path(config))

    def get_or_compute(self, config: Any, compute: Callable[[], Any]) -> Any:
        value = self.get(config)
        if value is None:
            value = compute()
            self.put(config, value)
        return value
