"""Tests for distill_lib.data: the registry, loading (npz, digits, errors, caches) and per-class sampling.

Everything runs on scikit-learn's ``digits`` or on tiny generated uint8 arrays written to temporary .npz files; no
test reads or writes ./data or ~/.cache (DISTILL_DATA and DISTILL_CACHE point into tmp_path).
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from distill_lib import data as data_mod
from distill_lib.data import DATASETS, data_root, from_arrays, load_dataset
from distill_lib.files import BadFileError



@pytest.fixture
def env(tmp_path, monkeypatch):
    """Empty data and cache folders in tmp_path, and an empty in-process cache of loaded data sets."""
    root, cache = tmp_path / "data", tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("DISTILL_DATA", str(root))
    monkeypatch.setenv("DISTILL_CACHE", str(cache))
    monkeypatch.setattr(data_mod, "_LOADED", {})
    return root, cache


def make_arrays(n_train=30, n_test=10, shape=(3, 32, 32), num_classes=10, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": np.arange(n_train) % num_classes,
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": np.arange(n_test) % num_classes,
        "classes": np.array([f"class{i}" for i in range(num_classes)]),
    }


def write_npz(path: Path, arrays: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def rows(x: torch.Tensor) -> list[bytes]:
    return [r.numpy().tobytes() for r in x]


def pairs(x: torch.Tensor, y: torch.Tensor) -> Counter:
    return Counter(zip(rows(x), y.tolist()))


def listing(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


# ------------------------------------------------------------------------------------------------ registry

def test_registry_names_and_specs():
    assert set(DATASETS) == {"mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "tinyimagenet", "digits"}
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert spec.how_to_get
        if spec.mean is not None:
            assert len(spec.mean) == len(spec.std) == spec.channels
    assert (DATASETS["cifar100"].num_classes, DATASETS["tinyimagenet"].num_classes) == (100, 200)
    assert (DATASETS["digits"].channels, DATASETS["digits"].image_size) == (1, (16, 16))
    assert DATASETS["mnist"].image_size == (28, 28) and DATASETS["tinyimagenet"].image_size == (64, 64)


# ------------------------------------------------------------------------------------------------ digits

def test_digits_layout(digits):
    assert digits.name == "digits"
    for x, y in ((digits.x_train, digits.y_train), (digits.x_test, digits.y_test)):
        assert x.dtype == torch.uint8 and x.ndim == 4 and x.shape[1:] == (1, 16, 16)
        assert y.dtype == torch.long and len(y) == len(x)
        assert sorted(torch.unique(y).tolist()) == list(range(10))
    assert (digits.num_classes, digits.channels, digits.image_size) == (10, 1, (16, 16))
    assert len(digits.x_train) + len(digits.x_test) == 1797  # every sklearn digit, once
    assert int(digits.x_train.max()) > 200  # 0..16 rescaled to 0..255, not left at 0..16
    # About 20 % of each class is held out for testing.
    for c in range(10):
        n_test, n_train = int((digits.y_test == c).sum()), digits.class_count(c)
        assert abs(n_test / (n_test + n_train) - 0.2) < 0.01


def test_digits_train_and_test_are_disjoint(digits):
    train, test = set(rows(digits.x_train)), set(rows(digits.x_test))
    assert len(train) == len(digits.x_train) and len(test) == len(digits.x_test)  # no duplicate digits at all
    assert not train & test


def test_digits_stats_come_from_its_training_images(digits):
    pixels = digits.x_train.float() / 255
    assert digits.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-5)
    assert digits.std[0] == pytest.approx(pixels.std().item(), abs=1e-4)
    x, _ = digits.train_tensors()
    assert x.mean().item() == pytest.approx(0, abs=1e-4) and x.std().item() == pytest.approx(1, abs=1e-3)


def test_digits_load_is_deterministic(env, digits):
    again = load_dataset("digits")
    assert again is not digits  # loaded afresh (empty in-process cache), not the session copy
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_train, digits.y_train)
    assert torch.equal(again.x_test, digits.x_test) and torch.equal(again.y_test, digits.y_test)
    assert again.mean == digits.mean and again.std == digits.std
    assert load_dataset("digits") is again  # the in-process cache
    root, cache = env
    assert list(root.iterdir()) == [] and not cache.exists()  # digits writes nothing anywhere


# ------------------------------------------------------------------------------------------------ data root

def test_data_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILL_DATA", raising=False)
    assert data_root() == Path("data")
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root(str(tmp_path / "arg")) == tmp_path / "arg"


def test_load_dataset_follows_the_data_root(env, tmp_path, monkeypatch):
    env_root, _ = env
    arg_root = tmp_path / "arg"
    write_npz(env_root / "cifar10.npz", make_arrays(seed=1))
    write_npz(arg_root / "cifar10.npz", make_arrays(seed=2))
    from_env, from_arg = load_dataset("cifar10"), load_dataset("cifar10", root=arg_root)
    assert from_env.source == str(env_root / "cifar10.npz")
    assert from_arg.source == str(arg_root / "cifar10.npz")
    assert torch.equal(from_env.x_train, torch.from_numpy(make_arrays(seed=1)["x_train"]))
    assert torch.equal(from_arg.x_train, torch.from_numpy(make_arrays(seed=2)["x_train"]))
    # Neither argument nor environment: ./data
    monkeypatch.delenv("DISTILL_DATA")
    cwd = tmp_path / "cwd"
    write_npz(cwd / "data" / "cifar10.npz", make_arrays(seed=3))
    monkeypatch.chdir(cwd)
    from_cwd = load_dataset("cifar10")
    assert Path(from_cwd.source) == Path("data") / "cifar10.npz"
    assert torch.equal(from_cwd.x_test, torch.from_numpy(make_arrays(seed=3)["x_test"]))


# ------------------------------------------------------------------------------------------------ npz files

def test_generated_npz_loads_with_registry_stats(env):
    root, _ = env
    arrays = make_arrays()
    write_npz(root / "cifar10.npz", arrays)
    d = load_dataset("cifar10")
    assert torch.equal(d.x_train, torch.from_numpy(arrays["x_train"]))
    assert torch.equal(d.y_train, torch.from_numpy(arrays["y_train"]).long())
    assert torch.equal(d.x_test, torch.from_numpy(arrays["x_test"]))
    assert torch.equal(d.y_test, torch.from_numpy(arrays["y_test"]).long())
    assert d.classes == [f"class{i}" for i in range(10)]
    assert (d.channels, d.image_size, d.num_classes) == (3, (32, 32), 10)
    spec = DATASETS["cifar10"]
    assert d.mean == spec.mean and d.std == spec.std  # the registry's, not the random images' (~0.5 / ~0.29)
    x, y = d.test_tensors()
    expected = (torch.from_numpy(arrays["x_test"]).float() / 255 - torch.tensor(spec.mean).view(1, 3, 1, 1)) \
        / torch.tensor(spec.std).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6) and torch.equal(y, d.y_test)


def test_npz_without_registry_stats_computes_them(env):
    root, _ = env
    arrays = make_arrays(shape=(1, 16, 16), seed=4)
    write_npz(root / "digits.npz", arrays)  # an .npz in the data folder takes precedence over scikit-learn
    d = load_dataset("digits")
    assert d.source == str(root / "digits.npz") and len(d.x_train) == 30
    pixels = torch.from_numpy(arrays["x_train"]).float() / 255
    assert d.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-5)
    assert d.std[0] == pytest.approx(pixels.std().item(), abs=1e-4)


def test_unknown_dataset_name_is_rejected_even_with_a_file(env):
    root, _ = env
    write_npz(root / "my_set.npz", make_arrays())
    with pytest.raises(ValueError, match="unknown dataset 'my_set'"):
        load_dataset("my_set")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("CIFAR10")


@pytest.mark.parametrize("missing", ["y_test", "classes"])
def test_npz_missing_an_array(env, missing):
    root, _ = env
    arrays = make_arrays()
    del arrays[missing]
    write_npz(root / "cifar10.npz", arrays)
    with pytest.raises(ValueError, match=rf"lacks arrays \['{missing}'\]"):
        load_dataset("cifar10")


def test_npz_with_mismatched_lengths(env):
    root, _ = env
    arrays = make_arrays()
    arrays["y_train"] = arrays["y_train"][:-1]
    write_npz(root / "cifar10.npz", arrays)
    with pytest.raises(ValueError, match="x_train has 30 images but y_train has 29 labels"):
        load_dataset("cifar10")


@pytest.mark.parametrize("bad_label", [10, -1])
def test_npz_with_labels_out_of_range(env, bad_label):
    root, _ = env
    arrays = make_arrays()
    arrays["y_test"][3] = bad_label
    write_npz(root / "cifar10.npz", arrays)
    with pytest.raises(ValueError, match=r"y_test holds labels outside 0\.\.9"):
        load_dataset("cifar10")


def test_npz_with_non_uint8_images(env):
    root, _ = env
    arrays = make_arrays()
    arrays["x_train"] = arrays["x_train"].astype(np.float32) / 255
    write_npz(root / "cifar10.npz", arrays)
    with pytest.raises(ValueError, match="must be uint8"):
        load_dataset("cifar10")


def test_from_arrays_rejects_bad_shapes():
    arrays = make_arrays()
    with pytest.raises(ValueError, match=r"must have shape \(N, C, H, W\)"):
        from_arrays("cifar10", **{**arrays, "x_train": arrays["x_train"][:, 0]})
    with pytest.raises(ValueError, match="differ in shape"):
        from_arrays("cifar10", **{**arrays, "x_test": arrays["x_test"][:, :, :16]})


@pytest.mark.parametrize("damage, match", [
    ("truncated", "is not an .npz archive"),
    ("random bytes", "is not an .npz archive"),  # np.load alone would suggest allow_pickle=True here
    ("object array", "holds object \\(pickled\\) arrays, which are never loaded"),
    ("damaged member", "is a damaged .npz archive"),
])
def test_unreadable_npz_is_a_bad_file_error_naming_the_file(env, damage, match):
    root, cache = env
    npz = write_npz(root / "cifar10.npz", make_arrays())
    if damage == "truncated":
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    elif damage == "random bytes":
        npz.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "object array":
        np.savez(npz, **{**make_arrays(), "classes": np.array([{"a": 1}] * 10, dtype=object)})
    else:  # a valid zip whose compressed member is corrupt
        blob = bytearray(npz.read_bytes())
        blob[200:400] = bytes(200)
        npz.write_bytes(bytes(blob))
    with pytest.raises(BadFileError, match=match) as info:
        load_dataset("cifar10")
    assert info.value.path == npz and "allow_pickle" not in str(info.value)


# ------------------------------------------------------------------------------------------------ missing data

@pytest.mark.parametrize("name", ["cifar10", "tinyimagenet"])
def test_missing_data_offline_says_what_was_tried_and_how_to_fix_it(env, name):
    root, _ = env
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(name)
    message = str(info.value)
    assert str(root / f"{name}.npz") in message
    assert "$DISTILL_DATA" in message and "x_train, y_train, x_test, y_test, classes" in message
    assert DATASETS[name].how_to_get in message
    if name == "cifar10":
        assert f"{root / 'CIFAR10'} (torchvision files)" in message
        assert "download=True" in message
    else:  # no torchvision copy of tinyimagenet: no download to suggest
        assert "torchvision files" not in message and "load_dataset('tinyimagenet', download=True)" not in message
    assert not any(root.iterdir())  # looking wrote nothing


# ------------------------------------------------------------------------------------------------ caches on disk

def test_decoded_copy_goes_to_the_cache_never_next_to_the_data(env):
    root, cache = env
    write_npz(root / "cifar10.npz", make_arrays())
    before = listing(root)
    load_dataset("cifar10")
    assert listing(root) == before
    decoded = list((cache / "decoded").iterdir())
    assert len(decoded) == 1 and decoded[0].name.startswith("cifar10-") and decoded[0].suffix == ".npz"


def _record_npz_reads(monkeypatch) -> list:
    """Empty the in-process cache and record every .npz path decoded from now on (as a fresh process would)."""
    read = []
    real_members = data_mod._npz_members
    monkeypatch.setattr(data_mod, "_npz_members", lambda path: read.append(Path(path)) or real_members(path))
    monkeypatch.setattr(data_mod, "_LOADED", {})
    return read


def test_decoded_copy_is_reused_in_a_fresh_process_cache(env, monkeypatch):
    root, cache = env
    arrays = make_arrays()
    write_npz(root / "cifar10.npz", arrays)
    first = load_dataset("cifar10")
    (decoded,) = (cache / "decoded").iterdir()
    read = _record_npz_reads(monkeypatch)
    second = load_dataset("cifar10")
    assert second is not first
    assert read == [decoded]  # the source .npz was not decompressed again
    assert torch.equal(second.x_train, first.x_train) and torch.equal(second.y_test, first.y_test)
    assert second.classes == first.classes


def test_decoded_copy_follows_the_bytes_not_the_path_or_time_stamp(env, monkeypatch):
    """A fresh copy of the same file elsewhere, with a new mtime, is served from the first decoded copy."""
    root, cache = env
    write_npz(root / "cifar10.npz", make_arrays())
    first = load_dataset("cifar10")
    (decoded,) = (cache / "decoded").iterdir()
    other = root.parent / "copied_data"
    other.mkdir()
    copy = other / "cifar10.npz"
    copy.write_bytes((root / "cifar10.npz").read_bytes())
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))
    read = _record_npz_reads(monkeypatch)
    second = load_dataset("cifar10", root=other)
    assert read == [decoded] and list((cache / "decoded").iterdir()) == [decoded]
    assert torch.equal(second.x_train, first.x_train)


def test_changed_source_is_not_served_from_a_stale_decoded_copy(env):
    root, cache = env
    npz = write_npz(root / "cifar10.npz", make_arrays(seed=1))
    load_dataset("cifar10")
    write_npz(npz, make_arrays(n_train=20, seed=2))
    os.utime(npz, ns=(npz.stat().st_atime_ns, npz.stat().st_mtime_ns + 10**9))
    data_mod._LOADED.clear()
    d = load_dataset("cifar10")
    assert torch.equal(d.x_train, torch.from_numpy(make_arrays(n_train=20, seed=2)["x_train"]))


def _truncated_zip(path: Path) -> bytes:
    return path.read_bytes()[:100]


@pytest.mark.parametrize("corruption", ["garbage", "empty", "truncated", "missing_member"])
def test_corrupt_decoded_copy_is_replaced_with_a_warning(env, corruption):
    root, cache = env
    arrays = make_arrays()
    write_npz(root / "cifar10.npz", arrays)
    load_dataset("cifar10")
    (decoded,) = (cache / "decoded").iterdir()
    if corruption == "garbage":
        decoded.write_bytes(b"\x00\xffnot an npz file at all" * 10)
    elif corruption == "empty":
        decoded.write_bytes(b"")
    elif corruption == "truncated":
        decoded.write_bytes(_truncated_zip(decoded))
    else:
        np.savez(decoded, x_train=arrays["x_train"])
    data_mod._LOADED.clear()
    with pytest.warns(UserWarning, match="unreadable"):
        d = load_dataset("cifar10")
    assert torch.equal(d.x_train, torch.from_numpy(arrays["x_train"]))
    with np.load(decoded) as f:  # replaced by a good copy
        assert set(f.files) == set(data_mod.NPZ_KEYS)
        assert np.array_equal(f["x_test"], arrays["x_test"])
    assert sorted(p.name for p in (cache / "decoded").iterdir()) == [decoded.name]  # no temporaries left


def test_unwritable_cache_still_loads_with_a_warning(env, monkeypatch):
    """A cache path under a regular file cannot be created, even by root (chmod alone does not stop root)."""
    root, cache = env
    blocker = cache.parent / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DISTILL_CACHE", str(blocker / "cache"))
    arrays = make_arrays()
    write_npz(root / "cifar10.npz", arrays)
    before = listing(root)
    with pytest.warns(UserWarning, match="could not cache the decoded copy"):
        d = load_dataset("cifar10")
    assert torch.equal(d.x_train, torch.from_numpy(arrays["x_train"]))
    assert listing(root) == before
    assert blocker.read_text() == "not a folder"


def test_read_only_data_folder_and_cache(env, monkeypatch):
    root, cache = env
    if os.geteuid() == 0:
        pytest.skip("running as root: permission bits are not enforced (see test_unwritable_cache_...)")
    arrays = make_arrays()
    npz = write_npz(root / "cifar10.npz", arrays)
    cache.mkdir()
    npz.chmod(0o444)
    root.chmod(0o555)
    cache.chmod(0o555)
    try:
        before = listing(root)
        with pytest.warns(UserWarning, match="could not cache the decoded copy"):
            d = load_dataset("cifar10")
        assert torch.equal(d.x_test, torch.from_numpy(arrays["x_test"]))
        assert listing(root) == before and list(cache.iterdir()) == []
        # With a writable cache, a read-only data folder loads without any warning.
        cache.chmod(0o755)
        data_mod._LOADED.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_dataset("cifar10")
        assert listing(root) == before
    finally:
        root.chmod(0o755)
        cache.chmod(0o755)


# ------------------------------------------------------------------------------------------------ sampling

def _match_rows(sample: torch.Tensor, candidates: torch.Tensor) -> list[int]:
    """For each sampled image, the index of the candidate it equals (asserting there is exactly one)."""
    dist = (sample.flatten(1)[:, None, :] - candidates.flatten(1)[None]).abs().amax(-1)
    hits = dist < 1e-5
    assert bool((hits.sum(1) == 1).all()), "a sampled image is not exactly one of the candidates"
    return hits.float().argmax(1).tolist()


def test_sample_real(digits):
    c, n = 3, 7
    x = digits.sample_real(c, n, torch.Generator().manual_seed(0))
    assert x.shape == (n, 1, 16, 16) and x.dtype == torch.float32
    mean, std = digits.mean[0], digits.std[0]
    candidates = (digits.x_train.float() / 255 - mean) / std  # normalised by hand
    picked = _match_rows(x, candidates)
    assert len(set(picked)) == n  # no repeats
    assert all(int(digits.y_train[i]) == c for i in picked)
    # Deterministic per generator; another seed draws another set.
    assert torch.equal(x, digits.sample_real(c, n, torch.Generator().manual_seed(0)))
    assert not torch.equal(x, digits.sample_real(c, n, torch.Generator().manual_seed(1)))


def test_sample_real_whole_class_and_limits(digits):
    c = 8
    size = digits.class_count(c)
    x = digits.sample_real(c, size, torch.Generator().manual_seed(0))
    class_images = digits.normalize(digits.x_train[digits.y_train == c])
    assert sorted(_match_rows(x, class_images)) == list(range(size))  # a permutation of the whole class
    with pytest.raises(ValueError, match=f"cannot sample {size + 1} images of class {c}"):
        digits.sample_real(c, size + 1, torch.Generator())
    with pytest.raises(ValueError):
        digits.sample_real(c, 0, torch.Generator())


def test_normalize_and_denormalize_round_trip(digits):
    x = digits.x_train[:5]
    back = digits.denormalize(digits.normalize(x))
    assert torch.allclose(back, x.float() / 255, atol=1e-6)


def test_validation_split(digits):
    split = digits.validation_split(5, seed=0)
    for c in range(10):
        assert int((split.y_test == c).sum()) == 5
        assert split.class_count(c) == digits.class_count(c) - 5
    # A partition of the original training set: disjoint, nothing lost, labels kept with their images.
    assert not set(rows(split.x_train)) & set(rows(split.x_test))
    assert pairs(split.x_train, split.y_train) + pairs(split.x_test, split.y_test) == pairs(digits.x_train,
                                                                                            digits.y_train)
    assert not set(rows(split.x_test)) & set(rows(digits.x_test))  # the real test set is never used
    assert split.mean == digits.mean and split.std == digits.std
    again, other = digits.validation_split(5, seed=0), digits.validation_split(5, seed=1)
    assert torch.equal(again.x_test, split.x_test)
    assert not torch.equal(other.x_test, split.x_test)
    with pytest.raises(ValueError, match="leaves no training images"):
        digits.validation_split(min(digits.class_count(c) for c in range(10)))


def test_subset(digits):
    small = digits.subset(per_class=3, test_per_class=2, seed=0)
    for c in range(10):
        assert small.class_count(c) == 3 and int((small.y_test == c).sum()) == 2
    assert not pairs(small.x_train, small.y_train) - pairs(digits.x_train, digits.y_train)  # real, correctly labelled
    assert not pairs(small.x_test, small.y_test) - pairs(digits.x_test, digits.y_test)
    assert torch.equal(digits.subset(3, 2, seed=0).x_train, small.x_train)
    assert not torch.equal(digits.subset(3, 2, seed=1).x_train, small.x_train)
    train_only = digits.subset(per_class=4)
    assert len(train_only.x_train) == 40 and torch.equal(train_only.x_test, digits.x_test)
    assert small.mean == digits.mean and small.classes == digits.classes

