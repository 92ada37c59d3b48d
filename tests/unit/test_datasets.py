"""Array files, built-in datasets, dispatch by path, and the labeled / held-out splits."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from selfsup.config import DataConfig
from selfsup.data.arrays import array_layout, gather_rows, stratified_split
from selfsup.data.datasets import open_dataset
from selfsup.data.splits import from_config, split_holdout, split_labeled
from selfsup.types import ConfigError, DataError

RNG = np.random.default_rng(0)
SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents
               if (p / "shared" / "data" / "mnist" / "mnist.npz").is_file()), None)
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared data folder not found")


def write_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


# ------------------------------------------------------------------ array files


def test_npz_nhwc_with_labels_and_class_names(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    y = np.arange(10) % 3
    ds = open_dataset(write_npz(tmp_path / "a.npz", x=x, y=y, class_names=np.array(["a", "b", "c"])))
    assert (len(ds), ds.channels, ds.image_size, ds.dtype) == (10, 3, (12, 12), torch.uint8)
    assert ds.class_names == ["a", "b", "c"] and ds.labels.tolist() == y.tolist()
    assert ds.in_memory and ds.split is None
    img, label, idx = ds[4]
    assert torch.equal(img, torch.from_numpy(x[4].transpose(2, 0, 1).copy())) and label == 1
    xb, yb = ds.get_batch(torch.tensor([4, 0]))
    assert torch.equal(xb[0], img) and yb.tolist() == [1, 0]


def test_npz_nchw_and_npy_nhw(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    ds = open_dataset(write_npz(tmp_path / "c.npz", images=x, labels=np.zeros(6, dtype=np.int32)))
    assert ds.channels == 3 and torch.equal(ds[2][0], torch.from_numpy(x[2]))
    grey = RNG.integers(0, 256, (7, 9, 9), dtype=np.uint8)
    np.save(tmp_path / "g.npy", grey)
    dg = open_dataset(str(tmp_path / "g.npy"))
    assert dg.channels == 1 and not dg.has_labels and dg.num_classes is None
    assert torch.equal(dg[3][0][0], torch.from_numpy(grey[3]))


def test_array_layout_rule() -> None:
    assert array_layout((5, 28, 28)) == "NHW"
    assert array_layout((5, 3, 32, 32)) == "NCHW" and array_layout((5, 32, 32, 3)) == "NHWC"
    assert array_layout((5, 13, 64, 64)) == "NCHW" and array_layout((5, 64, 64, 13)) == "NHWC"
    assert array_layout((5, 4, 40, 50)) == "NCHW" and array_layout((5, 40, 50, 4)) == "NHWC"


@pytest.mark.parametrize("dtype,expected", [(np.uint16, torch.uint16), (np.float64, torch.float32),
                                            (np.float16, torch.float32), (np.int16, torch.float32)])
def test_dtypes(tmp_path: Path, dtype: type, expected: torch.dtype) -> None:
    x = (RNG.random((4, 8, 8, 2)) * 1000).astype(dtype)
    ds = open_dataset(write_npz(tmp_path / "d.npz", x=x))
    assert ds.dtype == expected
    assert torch.allclose(ds[1][0].float(), torch.from_numpy(x[1].transpose(2, 0, 1).astype(np.float32)))


def test_train_test_keys_and_splits(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "s.npz", x_train=np.zeros((5, 8, 8, 1), np.uint8),
                     y_train=np.arange(5), x_test=np.ones((3, 8, 8, 1), np.uint8),
                     y_test=np.arange(3))
    tr, te, al = (open_dataset(path, split=s) for s in ("train", "test", "all"))
    assert (len(tr), len(te), len(al)) == (5, 3, 8)
    assert tr.split == "train" and te.source.endswith("(test)") and tr.source != te.source
    assert al.labels.tolist() == [0, 1, 2, 3, 4, 0, 1, 2] and int(al[6][0].max()) == 1
    flat = write_npz(tmp_path / "flat.npz", x=np.zeros((4, 8, 8), np.uint8))
    assert len(open_dataset(flat, split="test")) == 4  # no splits: all images for any split


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.zeros((4, 16))}, r"bad\.npz' key 'x'.*shape \(4, 16\).*expected images"),
    ({"x": np.zeros((4, 8, 8)), "y": np.zeros(3, np.int64)}, r"key 'y'.*shape \(3,\).*\[4\]"),
    ({"x": np.zeros((4, 8, 8)), "y": np.array([0, 0.5, 1, 2])}, r"key 'y'.*non-integer"),
    ({"x": np.zeros((4, 8, 8)), "y": np.array([0, -3, 1, 2])}, r"key 'y'.*>= 0"),
    ({"x": np.full((2, 8, 8), np.nan, np.float32)}, r"key 'x'.*NaN"),
    ({"a": np.zeros((2, 8, 8)), "b": np.zeros(2)}, r"found keys a, b; expected 'x'"),
    ({"x_train": np.zeros((2, 8, 8))}, r"no key 'x_test'"),
    ({"x": np.zeros((2, 8, 8)), "y": np.array([0, 3]), "class_names": np.array(["a", "b"])},
     r"label 3 is out of range"),
])
def test_bad_arrays_raise(tmp_path: Path, arrays: dict, match: str) -> None:
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match):
        open_dataset(path, split="test" if "x_train" in arrays else "train")


def test_dispatch_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="built-ins: .*cifar10.*digits.*eurosat_ms.*mnist"):
        open_dataset("no_such_dataset")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(DataError, match=r"t\.txt' is a file but not an \.npz/\.npy"):
        open_dataset(str(tmp_path / "t.txt"))
    (tmp_path / "one.png").write_bytes(b"")
    with pytest.raises(DataError, match="single image"):
        open_dataset(str(tmp_path / "one.png"))
    with pytest.raises(ConfigError, match="data.split"):
        open_dataset("digits", split="val")
    with pytest.raises(ConfigError, match="data.limit"):
        open_dataset("digits", limit=0)


# ------------------------------------------------------------------ built-ins


def test_digits_splits_disjoint_stratified_and_exact() -> None:
    d = load_digits()
    tr, te, al = (open_dataset("digits", split=s) for s in ("train", "test", "all"))
    assert (len(tr), len(te), len(al)) == (1438, 359, 1797)
    assert (al.channels, al.image_size, al.dtype) == (1, (8, 8), torch.uint8)
    expected = np.round(d.images * 255 / 16).astype(np.uint8)
    assert np.array_equal(al.get_batch(torch.arange(1797))[0][:, 0].numpy(), expected)
    key = {hashlib.sha1(img.tobytes() + bytes([lab])).hexdigest()
           for img, lab in zip(expected, d.target)}
    assert len(key) > 1700  # near-unique rows, so a shared image means a shared sample
    h_tr = {hashlib.sha1(x[0].numpy().tobytes() + bytes([y])).hexdigest()
            for x, y in zip(*tr.get_batch(torch.arange(len(tr))))}
    h_te = {hashlib.sha1(x[0].numpy().tobytes() + bytes([y])).hexdigest()
            for x, y in zip(*te.get_batch(torch.arange(len(te))))}
    assert not h_tr & h_te
    for c in range(10):  # each class split 80/20 (within rounding)
        n_c = int((d.target == c).sum())
        assert abs(int((te.labels == c).sum()) - 0.2 * n_c) <= 1
    assert torch.equal(open_dataset("digits").labels, tr.labels)  # fixed seed


def test_in_memory_resize_and_limit() -> None:
    ds = open_dataset("digits", image_size=16, limit=50)
    assert len(ds) == 50 and ds.image_size == (16, 16) and ds.dtype == torch.uint8


@needs_shared
def test_mnist_from_shared_data() -> None:
    tr, te = open_dataset("mnist"), open_dataset("mnist", split="test")
    assert (len(tr), len(te), tr.channels, tr.image_size) == (60000, 10000, 1, (28, 28))
    assert tr.class_names == [str(i) for i in range(10)] and tr.dtype == torch.uint8


@needs_shared
def test_eurosat_split_stratified_and_uint16() -> None:
    tr, te = open_dataset("eurosat_ms"), open_dataset("eurosat_ms", split="test")
    assert (len(tr), len(te), tr.channels, tr.dtype) == (160, 40, 13, torch.uint16)
    assert torch.bincount(te.labels, minlength=10).tolist() == [4] * 10
    assert len(set(tr.labels[:10].tolist())) > 3  # shuffled, so `limit` keeps many classes
    h = [{hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in d.get_batch(torch.arange(len(d)))[0]}
         for d in (tr, te)]
    assert not h[0] & h[1] and len(h[0]) == 160


def test_shared_data_env_var(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "mnist").mkdir()
    np.savez(tmp_path / "mnist" / "mnist.npz", x_train=np.full((3, 28, 28, 1), 7, np.uint8),
             y_train=np.arange(3), x_test=np.zeros((2, 28, 28, 1), np.uint8), y_test=np.arange(2))
    monkeypatch.setenv("SELFSUP_SHARED_DATA", str(tmp_path))
    ds = open_dataset("mnist")
    assert len(ds) == 3 and int(ds[0][0][0, 0, 0]) == 7
    monkeypatch.setenv("SELFSUP_SHARED_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="cifar10.*SELFSUP_SHARED_DATA"):
        open_dataset("cifar10")


# ------------------------------------------------------------------ subsets and splits


def test_subset_shares_storage_and_nests() -> None:
    ds = open_dataset("digits", split="all")
    sub = ds.subset([10, 20, 30, 40]).subset(torch.tensor([3, 1]))
    assert torch.equal(sub.get_batch(torch.tensor([0, 1]))[0], ds.get_batch(torch.tensor([40, 20]))[0])
    assert sub.labels.tolist() == ds.labels[[40, 20]].tolist()
    assert sub.to("cpu").get_batch(torch.tensor([1]))[0].shape == (1, 1, 8, 8)
    with pytest.raises(IndexError):
        ds.subset([len(ds)])


@pytest.mark.parametrize("dtype,shape", [(torch.uint8, (7, 3, 4, 4)), (torch.uint16, (7, 1, 2, 3)),
                                         (torch.uint8, (7, 1, 3, 3)), (torch.float32, (7, 2, 5, 5))])
def test_gather_rows_matches_indexing(dtype: torch.dtype, shape: tuple) -> None:
    images = torch.randint(0, 250, shape).to(dtype)
    rows = torch.tensor([6, 0, 3, 3])
    for src in (images, images[1:]):  # also a storage offset that may break word alignment
        out = gather_rows(src, rows[:3].clamp_max(len(src) - 1))
        assert out.dtype == dtype and torch.equal(out, src[rows[:3].clamp_max(len(src) - 1)])


def test_stratified_split_partitions() -> None:
    labels = torch.tensor([0] * 10 + [1] * 20 + [-1] * 10)
    a, b = stratified_split(labels, 0.3, seed=1)
    assert sorted(torch.cat([a, b]).tolist()) == list(range(40))
    assert [int((labels[a] == c).sum()) for c in (0, 1, -1)] == [3, 6, 3]
    # min_rest keeps members of every group in the second part, even when fraction takes all
    labels = torch.tensor([0, 0, 0, 1])
    a, b = stratified_split(labels, 1.0, seed=1, min_rest=1)
    assert labels[a].tolist() == [0, 0] and sorted(labels[b].tolist()) == [0, 1]


def test_labeled_fraction_stratified_seeded() -> None:
    ds = open_dataset("digits")
    part = split_labeled(ds, 0.1, seed=0)
    kept = part.labels >= 0
    assert torch.equal(part.labels[kept], ds.labels[kept])
    for c in range(10):
        n_c = int((ds.labels == c).sum())
        assert abs(int((part.labels == c).sum()) - 0.1 * n_c) <= 1
    assert torch.equal(split_labeled(ds, 0.1, seed=0).labels, part.labels)
    assert not torch.equal(split_labeled(ds, 0.1, seed=1).labels, part.labels)
    tiny = split_labeled(ds, 0.001, seed=0)
    assert torch.bincount(tiny.labels[tiny.labels >= 0]).tolist() == [1] * 10


def test_from_config_val_and_labeled_fraction() -> None:
    cfg = DataConfig(path="digits", val_fraction=0.25, labeled_fraction=0.5, seed=3)
    train, val = from_config(cfg)
    assert val is not None and len(train) + len(val) == 1438
    assert bool((val.labels >= 0).all())
    labeled = int((train.labels >= 0).sum())
    assert abs(labeled - len(train) / 2) <= 10
    t2, v2 = from_config(cfg)
    assert torch.equal(t2.labels, train.labels) and torch.equal(v2.labels, val.labels)
    all_x = open_dataset("digits").get_batch(torch.arange(1438))[0].flatten(1)
    tv = torch.cat([train.get_batch(torch.arange(len(train)))[0].flatten(1),
                    val.get_batch(torch.arange(len(val)))[0].flatten(1)])
    assert sorted(map(bytes, tv.numpy())) == sorted(map(bytes, all_x.numpy()))  # a partition
    plain, none = from_config(DataConfig(path="digits"))
    assert none is None and len(plain) == 1438 and bool((plain.labels >= 0).all())


@pytest.mark.parametrize("kw,match", [({"val_fraction": 1.0}, "data.val_fraction"),
                                      ({"val_fraction": -0.1}, "data.val_fraction"),
                                      ({"labeled_fraction": 0.0}, "data.labeled_fraction"),
                                      ({"labeled_fraction": 1.5}, "data.labeled_fraction"),
                                      ({"num_workers": -1}, "data.num_workers")])
def test_from_config_validates(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_config(DataConfig(path="digits", **kw))


def test_val_fraction_needs_labels(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "u.npz", x=np.zeros((10, 8, 8), np.uint8))
    with pytest.raises(DataError, match="no labels"):
        from_config(DataConfig(path=path, val_fraction=0.2))
    ds = open_dataset(path)
    rest, held = split_holdout(ds, 0.2, seed=0)  # unlabeled data: a plain random hold-out
    assert (len(rest), len(held)) == (8, 2)
