"""Real data sets: one registry, one in-memory layout, per-class sampling.

A loaded :class:`RealData` keeps images as uint8 tensors (N, C, H, W) and normalises only what is sampled, so a
distillation loop draws class batches without materialising the data set again. Data comes from, in order:
``<root>/<name>.npz`` (how the offline copies here and users' own data arrive), torchvision's files under the root,
torchvision's download (only with ``download=True``), or scikit-learn for the embedded ``digits`` set.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import seeding
from .files import BadFileError, atomic_write, first_line, sha256_file

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test", "classes")


@dataclass(frozen=True)
class DatasetSpec:
    """What the library knows about a named data set before loading it."""

    name: str
    channels: int
    image_size: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...] | None  # None: computed from the training images
    std: tuple[float, ...] | None
    torchvision_name: str | None
    how_to_get: str


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("mnist", 1, (28, 28), 10, (0.1307,), (0.3081,), "MNIST",
                    "torchvision.datasets.MNIST(root, download=True)"),
        DatasetSpec("fashion_mnist", 1, (28, 28), 10, (0.2860,), (0.3530,), "FashionMNIST",
                    "torchvision.datasets.FashionMNIST(root, download=True)"),
        DatasetSpec("cifar10", 3, (32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), "CIFAR10",
                    "torchvision.datasets.CIFAR10(root, download=True)"),
        DatasetSpec("cifar100", 3, (32, 32), 100, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR100",
                    "torchvision.datasets.CIFAR100(root, download=True)"),
        DatasetSpec("svhn", 3, (32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "SVHN",
                    "torchvision.datasets.SVHN(root, split=..., download=True)"),
        DatasetSpec("tinyimagenet", 3, (64, 64), 200, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), None,
                    "convert http://cs231n.stanford.edu/tiny-imagenet-200.zip into <root>/tinyimagenet.npz"),
        DatasetSpec("digits", 1, (16, 16), 10, None, None, None,
                    "ships with scikit-learn (sklearn.datasets.load_digits); nothing to download"),
    ]
}


@dataclass(eq=False)
class RealData:
    """A labelled image data set held as uint8 (N, C, H, W) tensors plus what is needed to normalise them."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""
    _class_indices: list[torch.Tensor] = field(default_factory=list, repr=False)

    def __post_init__(self):
        _check_arrays(self.name, self.x_train, self.y_train, self.x_test, self.y_test, self.classes)
        self._class_indices = [torch.nonzero(self.y_train == c).flatten() for c in range(self.num_classes)]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.x_train.shape[-2:])

    def class_count(self, c: int) -> int:
        return len(self._class_indices[c])

    def class_indices(self, c: int) -> torch.Tensor:
        return self._class_indices[c]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0..255 float) images -> float32 normalised with this set's mean/std."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float images -> values in [0, 1] (clipped), for display."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def sample_real(self, c: int, n: int, generator: torch.Generator, device="cpu") -> torch.Tensor:
        """``n`` distinct normalised training images of class ``c`` (float32, on ``device``)."""
        idx = self._class_indices[c]
        if not 0 < n <= len(idx):
            raise ValueError(f"cannot sample {n} images of class {c}: it has {len(idx)} training images")
        pick = idx[torch.randperm(len(idx), generator=generator)[:n]]
        return self.normalize(self.x_train[pick].to(device))

    def train_tensors(self, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalize(self.x_train.to(device)), self.y_train.to(device)

    def test_tensors(self, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalize(self.x_test.to(device)), self.y_test.to(device)

    def subset(self, per_class: int | None = None, test_per_class: int | None = None, seed: int = 0) -> "RealData":
        """A smaller copy with at most ``per_class`` train and ``test_per_class`` test images per class (seeded)."""
        return RealData(self.name, *_take_per_class(self.x_train, self.y_train, per_class, seed, 0),
                        *_take_per_class(self.x_test, self.y_test, test_per_class, seed, 1),
                        list(self.classes), self.mean, self.std, self.source + f" (subset seed {seed})")

    def validation_split(self, per_class: int, seed: int = 0) -> "RealData":
        """Carve ``per_class`` training images per class out as the *test* set of a new RealData.

        Hyper-parameters are chosen on this split; the real test set is never looked at while tuning.
        """
        g = seeding.generator(seed, seeding.SPLIT)
        val, train = [], []
        for c in range(self.num_classes):
            idx = self._class_indices[c]
            if per_class >= len(idx):
                raise ValueError(f"validation split of {per_class} per class leaves no training images of class {c}")
            perm = idx[torch.randperm(len(idx), generator=g)]
            val.append(perm[:per_class])
            train.append(perm[per_class:])
        val, train = torch.cat(val).sort().values, torch.cat(train).sort().values
        return RealData(self.name, self.x_train[train], self.y_train[train], self.x_train[val], self.y_train[val],
                        list(self.classes), self.mean, self.std, self.source + f" (validation split seed {seed})")


def _take_per_class(x, y, per_class, seed, stream):
    if per_class is None:
        return x, y
    g = seeding.generator(seed, seeding.SUBSET, stream)
    keep = [torch.nonzero(y == c).flatten() for c in torch.unique(y).tolist()]
    keep = torch.cat([k[torch.randperm(len(k), generator=g)[:per_class]] for k in keep]).sort().values
    return x[keep], y[keep]


def _check_arrays(name, x_train, y_train, x_test, y_test, classes):
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim != 4:
            raise ValueError(f"{name}: x_{split} must have shape (N, C, H, W), got {tuple(x.shape)}")
        if len(x) != len(y):
            raise ValueError(f"{name}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise ValueError(f"{name}: y_{split} holds labels outside 0..{len(classes) - 1}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"{name}: train images {tuple(x_train.shape[1:])} and test images "
                         f"{tuple(x_test.shape[1:])} differ in shape")


# ----------------------------------------------------------------------------------------------------------------
# Loading

def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: the explicit argument, else $DISTILL_DATA, else ./data."""
    return Path(root or os.environ.get("DISTILL_DATA") or "data")


def cache_root() -> Path:
    """Where decoded copies and other caches live: $DISTILL_CACHE, else ~/.cache/distill_lib."""
    return Path(os.environ.get("DISTILL_CACHE") or Path.home() / ".cache" / "distill_lib")


_LOADED: dict[tuple, RealData] = {}


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool = False) -> RealData:
    """Load a registered data set (cached in memory per process; treat the tensors as read-only)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    spec, root = DATASETS[name], data_root(root)
    key = (name, str(root.resolve()), download)
    if key not in _LOADED:
        _LOADED[key] = _load_uncached(spec, root, download)
    return _LOADED[key]


def _load_uncached(spec: DatasetSpec, root: Path, download: bool) -> RealData:
    npz = root / f"{spec.name}.npz"
    if npz.exists():
        return from_arrays(spec.name, **_read_npz(npz), source=str(npz))
    if spec.name == "digits":
        return _load_digits()
    tried = [str(npz)]
    if spec.torchvision_name is not None:
        tv_root = root / spec.torchvision_name
        tried.append(f"{tv_root} (torchvision files)")
        try:
            return _load_torchvision(spec, tv_root, download)
        except (RuntimeError, OSError) as err:  # torchvision says "Dataset not found" or the download failed
            reason = first_line(err).split(". You can use download=True")[0]  # the CLI's flag is --download
            tried[-1] += f": {reason}"
    raise DatasetNotFoundError(spec, tried)


class DatasetNotFoundError(FileNotFoundError):
    """A data set found in none of the places tried; the message says how to provide it.

    :meth:`advice` words the fix for a given front end: the library's arguments by default, the command line's flags
    when the CLI asks.
    """

    def __init__(self, spec: DatasetSpec, tried: list[str]):
        self.spec, self.tried = spec, tried
        super().__init__(self.advice("argument root=", f"load_dataset({spec.name!r}, download=True)"))

    def advice(self, root_option: str, download_option: str) -> str:
        spec = self.spec
        return (f"dataset {spec.name!r} not found. Tried:\n  " + "\n  ".join(self.tried) +
                f"\nProvide it by one of:\n  - putting {spec.name}.npz (arrays {', '.join(NPZ_KEYS)}; x as uint8 "
                f"(N, C, H, W)) in the data folder ({root_option}, else $DISTILL_DATA, else ./data)"
                + (f"\n  - {download_option} with internet access" if spec.torchvision_name else "")
                + f"\n  - {spec.how_to_get}")


def from_arrays(name: str, x_train, y_train, x_test, y_test, classes, source: str = "") -> RealData:
    """Build a RealData from numpy/torch arrays (uint8 images, integer labels); mean/std from the registry or data."""
    x_train, x_test = (torch.as_tensor(np.asarray(a)) for a in (x_train, x_test))
    if x_train.dtype != torch.uint8 or x_test.dtype != torch.uint8:
        raise ValueError(f"{name}: images must be uint8 0..255, got {x_train.dtype} / {x_test.dtype}")
    y_train, y_test = (torch.as_tensor(np.asarray(a)).long() for a in (y_train, y_test))
    classes = [str(c) for c in np.asarray(classes).tolist()]
    _check_arrays(name, x_train, y_train, x_test, y_test, classes)
    spec = DATASETS.get(name)
    if spec is not None and spec.mean is not None and len(spec.mean) == x_train.shape[1]:
        mean, std = spec.mean, spec.std
    else:
        pixels = x_train.float().div(255).transpose(0, 1).reshape(x_train.shape[1], -1)
        mean, std = tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).clamp_min(1e-3).tolist())
    return RealData(name, x_train, y_train, x_test, y_test, classes, mean, std, source)


def _read_npz(path: Path) -> dict:
    """Read an .npz once, keeping a decoded uncompressed copy in the cache folder (never next to the data).

    The copy is keyed by the file's bytes, not its path or time stamp: a data folder that is copied afresh (new
    mtimes, as on a machine that mounts it per session) hashes in well under a second and reuses the copy instead
    of decoding again (~10 s for CIFAR-10) and leaving a stale copy behind.
    """
    tag = sha256_file(path)[:16]
    decoded = cache_root() / "decoded" / f"{path.stem}-{tag}.npz"
    if decoded.exists():
        try:
            return _npz_members(decoded)
        except BadFileError:  # corrupt, truncated, empty or incomplete
            warnings.warn(f"decoded cache {decoded} unreadable; decoding {path} again")
    arrays = _npz_members(path)
    try:
        atomic_write(decoded, lambda f: np.savez(f, **arrays))
    except BadFileError as err:  # a read-only cache is only slower, never fatal
        warnings.warn(f"could not cache the decoded copy of {path} in {decoded.parent}: {err.problem}")
    return arrays


def _npz_members(path: Path) -> dict:
    """The arrays of an .npz data file; anything unreadable is a :class:`BadFileError` (never a pickle load)."""
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and suggest allow_pickle=True
        raise BadFileError(path, "is not an .npz archive (not a complete zip file: truncated, or another format)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise BadFileError(path, f"lacks arrays {missing}; an .npz data set needs {', '.join(NPZ_KEYS)}")
            return {k: f[k] for k in NPZ_KEYS}
    except BadFileError:
        raise
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise BadFileError(path, f"is a damaged .npz archive ({first_line(err)})") from None
        raise BadFileError(path, "holds object (pickled) arrays, which are never loaded: they could run code; "
                                 "store plain numeric arrays") from None
    except Exception as err:  # a damaged member (zlib, CRC, EOF), a bad header
        raise BadFileError(path, f"is a damaged .npz archive ({type(err).__name__}: {first_line(err)})") from None


def _load_torchvision(spec: DatasetSpec, root: Path, download: bool) -> RealData:
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.torchvision_name)
    if spec.name == "svhn":
        train, test = (cls(str(root), split=s, download=download) for s in ("train", "test"))
        xs = [np.asarray(d.data) for d in (train, test)]
        ys = [np.asarray(d.labels) for d in (train, test)]
        classes = [str(i) for i in range(10)]
    else:
        train, test = (cls(str(root), train=t, download=download) for t in (True, False))
        xs = [_to_nchw(np.asarray(d.data)) for d in (train, test)]
        ys = [np.asarray(d.targets) for d in (train, test)]
        classes = list(train.classes)
    return from_arrays(spec.name, xs[0], ys[0], xs[1], ys[1], classes, source=f"torchvision {root}")


def _to_nchw(x: np.ndarray) -> np.ndarray:
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


def _load_digits(test_fraction: float = 0.2) -> RealData:
    """scikit-learn's 8x8 digits, upsampled to 16x16 so that a depth-3 ConvNet ends on a 2x2 map; seeded split."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] * (255.0 / 16.0)
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).round().clamp(0, 255).to(torch.uint8)
    y = torch.tensor(bunch.target)
    g = seeding.generator(0, seeding.SPLIT)
    test = torch.zeros(len(y), dtype=torch.bool)
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        test[idx[torch.randperm(len(idx), generator=g)[: round(len(idx) * test_fraction)]]] = True
    return from_arrays("digits", x[~test], y[~test], x[test], y[test], [str(i) for i in range(10)],
                       source="sklearn.datasets.load_digits (8x8 upsampled to 16x16)")
