"""Data sets: digits split, toy sets, user .npz loading, hashing."""

import numpy as np
import pytest

from iia_jax.data import (DIGITS_NUM_TEST, DIGITS_NUM_TRAIN, TOY_DATASETS, checkerboard, data_hash,
                          digits, load_npz, toy)


def test_digits_split_sizes_range_and_disjoint():
    train, test, full = digits("train"), digits("test"), digits("all")
    assert train.images.shape == (DIGITS_NUM_TRAIN, 8, 8, 1) == (1497, 8, 8, 1)
    assert test.images.shape == (DIGITS_NUM_TEST, 8, 8, 1) == (300, 8, 8, 1)
    assert full.images.shape == (1797, 8, 8, 1)
    for d in (train, test):
        assert d.images.dtype == np.float32 and d.labels.dtype == np.int32
        assert d.images.min() == -1.0 and d.images.max() == 1.0
        assert set(np.unique(d.labels)) == set(range(10))
    # Together the splits are exactly the full set (as multisets of rows).
    rows = lambda a: sorted(map(bytes, a.reshape(len(a), -1)))  # noqa: E731
    assert rows(np.concatenate([train.images, test.images])) == rows(full.images)


def test_digits_split_is_deterministic_and_copies():
    a, b = digits("train"), digits("train")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    a.images[0] = 5.0  # callers get their own copy
    assert digits("train").images.max() == 1.0
    # Pinned fingerprints: the split and scaling never change silently (the shipped
    # weights record the train hash).
    assert data_hash(b.images) == "sha256:83c8972f28377c39f1636bad1e8a0bc2137cc7b705976967bd8c9080d63d16b8"
    assert data_hash(digits("test").images) == (
        "sha256:c55d9072fa7b237e05b314f89e44aeb7ed43f839858dbd05ef60662dcbb6b593"
    )
    with pytest.raises(ValueError, match="split"):
        digits("validation")


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_sets_deterministic_shapes(name):
    x = toy(name, 1000, seed=3)
    assert x.shape == (1000, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x, toy(name, 1000, seed=3))
    assert not np.array_equal(x, toy(name, 1000, seed=4))
    assert np.all(np.isfinite(x)) and 0.3 < x.std() < 3.0


def test_checkerboard_on_black_cells():
    x = checkerboard(2000, cells=4)
    i, j = np.floor((x + 2.0) / 1.0).astype(int).T
    assert np.all((i + j) % 2 == 0)
    with pytest.raises(ValueError, match="unknown toy"):
        toy("spiral", 10)


def test_load_npz_file_and_folder(tmp_path):
    u8 = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=u8)
    x = load_npz(tmp_path / "a.npz")
    assert x.shape == (5, 4, 4, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, u8 / 127.5 - 1, atol=1e-6)
    # Float in [-1, 1], grey-scale [N, H, W] gets a channel axis; custom key.
    folder = tmp_path / "folder"
    folder.mkdir()
    np.savez(folder / "0.npz", x=np.zeros((2, 4, 4), np.float32))
    np.savez(folder / "1.npz", x=np.ones((3, 4, 4), np.float32))
    y = load_npz(folder, key="x")
    assert y.shape == (5, 4, 4, 1)
    np.testing.assert_array_equal(y[:2], 0.0)
    np.testing.assert_array_equal(y[2:], 1.0)


def test_load_npz_errors_name_path_and_expectation(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, pixels=np.zeros((2, 4, 4, 1), np.float32))
    with pytest.raises(KeyError, match=r"bad\.npz.*'images'.*pixels"):
        load_npz(p)
    np.savez(p, images=np.zeros((2, 16), np.float32))
    with pytest.raises(ValueError, match=r"bad\.npz.*\[N, H, W, C\]"):
        load_npz(p)
    np.savez(p, images=np.full((2, 4, 4, 1), 255.0, np.float32))
    with pytest.raises(ValueError, match=r"bad\.npz.*\[-1, 1\]"):
        load_npz(p)
    np.savez(p, images=np.zeros((2, 4, 4, 1), np.int64))
    with pytest.raises(ValueError, match="dtype int64"):
        load_npz(p)
    np.savez(p, images=np.full((2, 4, 4, 1), np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        load_npz(p)
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"garbage\.npz.*cannot read"):
        load_npz(tmp_path / "garbage.npz")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_npz(tmp_path / "missing.npz")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no .npz"):
        load_npz(empty)


def test_data_hash():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert data_hash(a) == data_hash(a.copy()) == data_hash(np.asfortranarray(a))
    assert data_hash(a) != data_hash(a.reshape(4, 3))
    assert data_hash(a) != data_hash(a.astype(np.float64))
    b = a.copy()
    b[1, 1] += 1
    assert data_hash(a) != data_hash(b)
