"""Built-in datasets and user .npz loading (expected values from scikit-learn / NumPy directly)."""

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits

from smoothjax.app import datasets


def test_digits_split_is_fixed_disjoint_and_scaled():
    train = datasets.load_dataset("digits", "train")
    test = datasets.load_dataset("digits", "test")
    assert train.x.shape == (1437, 8, 8, 1) and test.x.shape == (360, 8, 8, 1)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int32
    assert train.num_classes == test.num_classes == 10
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    # every sklearn image appears exactly once across the two splits, pixels divided by 16
    raw = sk_load_digits()
    ours = np.concatenate([train.x, test.x]).reshape(-1, 64) * 16.0
    ours_sorted = ours[np.lexsort(ours.T)]
    ref_sorted = raw.data[np.lexsort(raw.data.T)]
    np.testing.assert_allclose(ours_sorted, ref_sorted, atol=1e-5)
    assert np.bincount(test.y, minlength=10).min() >= 20  # every class is in the test split
    # fixed: a second load gives the same arrays
    np.testing.assert_array_equal(datasets.load_dataset("digits", "test").x, test.x)


@pytest.mark.parametrize("name", ["spirals", "swissroll"])
def test_toy_sets_are_2d_balanced_and_deterministic(name):
    train = datasets.load_dataset(name, "train")
    test = datasets.load_dataset(name, "test")
    assert train.x.shape == (1000, 2) and test.x.shape == (400, 2)
    assert set(np.unique(train.y)) == {0, 1}
    assert 0.3 < train.y.mean() < 0.7
    assert np.all(np.abs(train.x) < 1.5)
    np.testing.assert_array_equal(datasets.load_dataset(name, "train").x, train.x)
    assert not np.array_equal(train.x[:400], test.x)  # train and test use different seeds


def test_spiral_arms_are_point_symmetric():
    # arm 1 is arm 0 rotated by pi: with no noise, x -> -x maps one class onto the other's curve
    x, y = datasets.make_spirals(2000, noise=0.0, seed=3)
    radius = np.linalg.norm(x, axis=1)
    angle = np.arctan2(x[:, 1], x[:, 0])
    t = radius * 3 * np.pi  # t recovered from the radius
    expected = np.mod(t + np.pi * y + np.pi, 2 * np.pi) - np.pi
    np.testing.assert_allclose(np.cos(angle - expected), 1.0, atol=1e-6)


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 5)).astype(np.float64)
    y = rng.integers(0, 3, size=20)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    data = datasets.load_dataset(str(path), "train")
    assert data.x.shape == (20, 5) and data.x.dtype == np.float32
    np.testing.assert_allclose(data.x, x.astype(np.float32))
    np.testing.assert_array_equal(data.y, y)
    assert data.num_classes == int(y.max()) + 1


def test_npz_test_split_keys(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 2)), y=np.zeros(4, int), x_test=np.ones((3, 2)), y_test=np.ones(3, int))
    assert len(datasets.load_npz(str(path), "train")) == 4
    assert len(datasets.load_npz(str(path), "test")) == 3


@pytest.mark.parametrize(
    "arrays, fragment",
    [
        ({"x": np.zeros((4, 2))}, "no array 'y'"),
        ({"inputs": np.zeros((4, 2)), "y": np.zeros(4, int)}, "no array 'x'"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(5, int)}, "differ in length"),
        ({"x": np.zeros(4), "y": np.zeros(4, int)}, "must be [num_examples"),
        ({"x": np.zeros((4, 2)), "y": np.zeros((4, 1), int)}, "1-D array"),
        ({"x": np.zeros((4, 2)), "y": np.array([0.5, 1, 0, 1])}, "integer class labels"),
        ({"x": np.full((4, 2), np.nan), "y": np.zeros(4, int)}, "finite"),
        ({"x": np.zeros((4, 2)), "y": -np.ones(4, int)}, "negative labels"),
    ],
    ids=["no-y", "no-x", "length-mismatch", "x-1d", "y-2d", "y-float", "x-nan", "y-negative"],
)
def test_npz_errors_say_what_is_wrong(tmp_path, arrays, fragment):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(datasets.DatasetError, match=None) as info:
        datasets.load_dataset(str(path))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_and_unknown_names(tmp_path):
    with pytest.raises(datasets.DatasetError, match="not found"):
        datasets.load_dataset(str(tmp_path / "missing.npz"))
    with pytest.raises(datasets.DatasetError, match="unknown dataset 'mnist'"):
        datasets.load_dataset("mnist")
    with pytest.raises(datasets.DatasetError, match="unknown split"):
        datasets.load_dataset("digits", "validation")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(datasets.DatasetError, match="could not read"):
        datasets.load_dataset(str(tmp_path / "junk.npz"))
