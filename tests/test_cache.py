"""Tests for distill_lib.cache and distill_lib.files: config keys, the on-disk cache, atomic writes, safe loads."""
from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch

from distill_lib.cache import DiskCache, atomic_save, canonical, check_finite_fields, config_key
from distill_lib.files import BadFileError, check_writable, load_torch, remove_stale_temporaries, sha256_file


@dataclass(frozen=True)
class Inner:
    depth: int = 3
    sizes: tuple = (1, 2)


@dataclass(frozen=True)
class Config:
    name: str = "digits"
    lr: float = 0.5
    flag: bool = True
    inner: Inner = field(default_factory=Inner)
    extra: dict = field(default_factory=lambda: {"b": 2, "a": None})


AS_DICT = {"name": "digits", "lr": 0.5, "flag": True, "inner": {"depth": 3, "sizes": [1, 2]},
           "extra": {"a": None, "b": 2}}


class Counter:
    """A compute function that counts its calls."""

    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


def files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------------------ keys

def test_config_key_is_stable_for_equal_configs():
    key = config_key(Config())
    assert len(key) == 24 and int(key, 16) >= 0
    assert config_key(Config()) == key
    assert config_key(AS_DICT) == key  # dataclass vs plain dict
    assert config_key(dict(reversed(list(AS_DICT.items())))) == key  # insertion order is irrelevant
    assert config_key({**AS_DICT, "inner": {"sizes": (1, 2), "depth": 3}}) == key  # tuple vs list, nested order


def test_config_key_is_the_documented_hash():
    """sha256 of the sorted, compact JSON: a key must not change between processes or Python versions."""
    text = '{"a":[1,2.5,"x"],"b":{"c":null,"d":true}}'
    assert config_key({"b": {"d": True, "c": None}, "a": (1, 2.5, "x")}) == hashlib.sha256(text.encode()).hexdigest()[:24]


@pytest.mark.parametrize("change", [
    {"name": "cifar10"}, {"lr": 0.25}, {"flag": False}, {"inner": Inner(depth=4)}, {"inner": Inner(sizes=(2, 1))},
    {"extra": {"a": None, "b": 3}}, {"extra": {"a": None}},
])
def test_config_key_differs_when_a_value_changes(change):
    assert config_key(Config(**change)) != config_key(Config())


def test_config_key_distinguishes_types_and_extra_keys():
    assert config_key({"a": 1}) != config_key({"a": "1"})
    assert config_key({"a": 1}) != config_key({"a": True})
    assert config_key({"a": 1}) != config_key({"a": 1, "b": None})


def test_canonical_rejects_what_it_cannot_key():
    assert canonical(Config()) == AS_DICT
    with pytest.raises(TypeError, match="cannot key a cache on a object"):
        config_key({"a": object()})
    with pytest.raises(TypeError):
        config_key(torch.zeros(2))


# ------------------------------------------------------------------------------------------------ DiskCache

def test_miss_then_hit(tmp_path):
    cache = DiskCache("things", tmp_path)
    compute = Counter({"w": torch.arange(4.0), "n": 3})
    first = cache.get_or_compute(Config(), compute)
    assert compute.calls == 1 and torch.equal(first["w"], torch.arange(4.0))
    assert files(tmp_path / "things") == [f"{config_key(Config())}.pt"]
    second = cache.get_or_compute(Config(), compute)
    assert compute.calls == 1  # a hit does not compute
    assert torch.equal(second["w"], torch.arange(4.0)) and second["n"] == 3
    # A fresh DiskCache object (another process) finds the same entry, also keyed by the equal dict.
    assert DiskCache("things", tmp_path).get_or_compute(AS_DICT, compute)["n"] == 3
    assert compute.calls == 1


def test_changed_config_is_a_miss(tmp_path):
    cache = DiskCache("things", tmp_path)
    compute = Counter(1.5)
    cache.get_or_compute(Config(), compute)
    assert cache.get_or_compute(Config(lr=0.1), compute) == 1.5
    assert compute.calls == 2
    assert len(files(tmp_path / "things")) == 2
    assert cache.get(Config(lr=0.2)) is None


def test_namespaces_do_not_collide(tmp_path):
    a, b = DiskCache("a", tmp_path), DiskCache("b", tmp_path)
    a.put(Config(), "from a")
    assert b.get(Config()) is None
    assert a.get(Config()) == "from a"


def test_default_root_is_distill_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "c"))
    cache = DiskCache("ns")
    cache.put({"k": 1}, [1, 2])
    assert cache.path({"k": 1}).parent == tmp_path / "c" / "ns"
    assert cache.path({"k": 1}).exists()


@pytest.mark.parametrize("content", [b"garbage bytes, not a torch file", b"", b"PK\x03\x04truncated zip"])
def test_corrupt_entry_is_recomputed_with_a_warning(tmp_path, content):
    cache = DiskCache("things", tmp_path)
    compute = Counter(torch.ones(3))
    cache.get_or_compute(Config(), compute)
    cache.path(Config()).write_bytes(content)
    with pytest.warns(UserWarning, match="unreadable"):
        value = cache.get_or_compute(Config(), compute)
    assert compute.calls == 2 and torch.equal(value, torch.ones(3))
    # The entry was rewritten: the next call is a silent hit.
    assert torch.equal(cache.get_or_compute(Config(), compute), torch.ones(3))
    assert compute.calls == 2


def test_entry_for_another_config_is_not_served(tmp_path):
    """A file at the right path but written for another config (a foreign or hand-copied entry) is a miss."""
    cache = DiskCache("things", tmp_path)
    atomic_save({"config": {"something": "else"}, "value": 7}, cache.path(Config()))
    compute = Counter(8)
    with pytest.warns(UserWarning, match="stored config differs"):
        assert cache.get_or_compute(Config(), compute) == 8
    assert compute.calls == 1


def test_entries_load_with_weights_only(tmp_path):
    cache = DiskCache("things", tmp_path)
    cache.put(Config(), {"t": torch.zeros(2)})
    entry = torch.load(cache.path(Config()), weights_only=True)
    assert entry["config"] == canonical(Config())


# ------------------------------------------------------------------------------------------------ atomic_save

def test_atomic_save_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "value.pt"
    atomic_save({"a": torch.arange(3)}, target)
    atomic_save({"a": torch.arange(5)}, target)  # overwrite
    assert files(target.parent) == ["value.pt"]
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.arange(5))


def test_failed_atomic_save_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "value.pt"
    atomic_save({"a": 1}, target)
    before = target.read_bytes()
    with pytest.raises(Exception):
        atomic_save({"a": lambda: 1}, target)  # cannot be pickled, fails half-way through writing
    assert files(tmp_path) == ["value.pt"]
    assert target.read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]


# ------------------------------------------------------------------------------------------------ files

def test_sha256_file_reads_in_chunks_and_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(10_000))
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path, chunk=1024) == expected == sha256_file(path)


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "ck.pt"
    dead = tmp_path / f".ck.pt.tmp{_dead_pid()}"
    alive = tmp_path / f".ck.pt.tmp{os.getppid()}"  # a live process that may still be writing
    other = tmp_path / f".other.pt.tmp{_dead_pid()}"  # another file's temporary: not this write's business
    for leftover in (dead, alive, other):
        leftover.write_bytes(b"")
    atomic_save({"a": 1}, target)
    assert files(tmp_path) == sorted([target.name, alive.name, other.name])
    assert remove_stale_temporaries(tmp_path / "other.pt") == [other]


def test_check_writable_fails_before_any_work_and_leaves_nothing(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(BadFileError, match="a_file is a file, not a folder"):
        check_writable(tmp_path / "a_file" / "sub" / "out.pt")
    with pytest.raises(BadFileError, match="is a folder"):
        check_writable(tmp_path)
    assert check_writable(tmp_path / "new" / "deeper" / "out.pt") == tmp_path / "new" / "deeper" / "out.pt"
    assert files(tmp_path) == ["a_file"]  # the folders made for the probe are gone again


def test_atomic_write_into_an_unwritable_place_is_a_bad_file_error(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(BadFileError, match="cannot be written"):
        atomic_save({"a": 1}, tmp_path / "a_file" / "out.pt")


@pytest.mark.parametrize("content, match", [
    (b"PK\x03\x04 a truncated zip", "is not a readable thing"),
    (b"not a torch file", "is not a thing: safe \\(weights-only\\) loading refused it \\(Unsupported operand"),
    (pickle.dumps({"config": print}), "is not a thing: safe \\(weights-only\\) loading refused it"),
])
def test_load_torch_turns_every_unreadable_file_into_a_bad_file_error(tmp_path, content, match):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(BadFileError, match=match) as info:
        load_torch(path, "thing")
    assert info.value.path == path and str(info.value).startswith(str(path))
    with pytest.raises(FileNotFoundError):
        load_torch(tmp_path / "missing.pt", "thing")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_check_finite_fields(value):
    check_finite_fields(Config())
    with pytest.raises(ValueError, match="lr must be a finite number"):
        check_finite_fields(Config(lr=value))
