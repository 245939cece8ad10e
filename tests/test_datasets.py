"""Built-in datasets, the standard on-disk formats and user .npz loading.

Expected values come from scikit-learn / NumPy directly; the on-disk formats are tested on tiny
files written here byte for byte in each published format (CIFAR python pickles as Python 2
wrote them, idx headers, class-folder trees of PNG / JPEG images).
"""

import gzip
import io
import os
import pickle
import struct

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
    with pytest.raises(datasets.DatasetError, match="unknown dataset 'mnist2'"):
        datasets.load_dataset("mnist2")
    with pytest.raises(datasets.DatasetError, match="MNIST file train-images-idx3-ubyte.*not found.*--download"):
        datasets.load_dataset(f"mnist:{tmp_path}")
    with pytest.raises(datasets.DatasetError, match="unknown split"):
        datasets.load_dataset("digits", "validation")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(datasets.DatasetError, match="could not read"):
        datasets.load_dataset(str(tmp_path / "junk.npz"))


# --------------------------------------------------------------------------- CIFAR python batches


class _Python2Pickler(pickle._Pickler):
    """Protocol 2 with bytes written as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), as CIFAR's files are."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_str(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_str


def _python2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Python2Pickler(buf, protocol=2).dump(obj)
    # numpy 1.x (which wrote the published files) names the module numpy.core.multiarray
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _cifar_images(rng, count):
    return rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)


def _write_cifar_batch(path, images_hwc, labels, label_key=b"labels"):
    rows = images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), 3072)  # R plane, G plane, B plane
    batch = {b"batch_label": b"testing batch 1 of 1", label_key: [int(v) for v in labels], b"data": rows,
             b"filenames": [b"img_%d.png" % i for i in range(len(labels))]}
    path.write_bytes(_python2_pickle(batch))


def test_cifar10_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train_images, train_labels = [], []
    for i in range(1, 6):
        images, labels = _cifar_images(rng, 3), rng.integers(0, 10, 3)
        _write_cifar_batch(folder / f"data_batch_{i}", images, labels)
        train_images.append(images)
        train_labels.append(labels)
    test_images, test_labels = _cifar_images(rng, 4), np.array([0, 9, 3, 3])
    _write_cifar_batch(folder / "test_batch", test_images, test_labels)
    for spec in (f"cifar10:{tmp_path}", f"cifar10:{folder}", str(folder)):
        test = datasets.load_dataset(spec, "test")
        assert test.x.shape == (4, 32, 32, 3) and test.x.dtype == np.float32 and test.num_classes == 10
        np.testing.assert_array_equal(test.x, test_images.astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(test.y, test_labels)
    train = datasets.load_dataset(f"cifar10:{tmp_path}", "train")
    np.testing.assert_array_equal(train.x * 255, np.concatenate(train_images).astype(np.float32))
    np.testing.assert_array_equal(train.y, np.concatenate(train_labels))
    # pixel (row 0, col 1) of image 0 is the second byte of each colour plane
    rows = test_images.transpose(0, 3, 1, 2).reshape(4, 3072)
    assert [round(float(v) * 255) for v in test.x[0, 0, 1]] == [rows[0, 1], rows[0, 1025], rows[0, 2049]]
    assert float(datasets.load_dataset(str(folder), "test", scale=1.0).x.max()) > 1.0


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    images = _cifar_images(rng, 2)
    _write_cifar_batch(tmp_path / "test", images, [97, 5], label_key=b"fine_labels")
    _write_cifar_batch(tmp_path / "train", images, [1, 2], label_key=b"fine_labels")
    data = datasets.load_dataset(f"cifar100:{tmp_path}", "test")
    assert data.num_classes == 100 and list(data.y) == [97, 5]


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("payload, fragment", [
    (lambda: {b"data": _Payload(), b"labels": [0]}, "refusing to load posix.getcwd"),
    (lambda: [1, 2, 3], "needs keys b'data'"),
    (lambda: {b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, "uint8 [N, 3072]"),
], ids=["foreign-global", "not-a-dict", "wrong-shape"])
def test_cifar_refuses_foreign_pickles(tmp_path, payload, fragment):
    if fragment.startswith("refusing") and os.name != "posix":
        pytest.skip("module name of os.getcwd differs")
    (tmp_path / "test_batch").write_bytes(_python2_pickle(payload()))
    with pytest.raises(datasets.DatasetError) as info:
        datasets.load_dataset(f"cifar10:{tmp_path}", "test")
    assert fragment in str(info.value)


def test_cifar_missing_folder_says_where_and_how(tmp_path):
    with pytest.raises(datasets.DatasetError, match="test_batch.*not found.*--download"):
        datasets.load_dataset(f"cifar10:{tmp_path}", "test")


# --------------------------------------------------------------------------- MNIST idx files


def _idx_bytes(array: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    return bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.mark.parametrize("packing", ["gzip", "plain", "dotted"])
def test_mnist_idx_files(tmp_path, packing):
    rng = np.random.default_rng(2)
    arrays = {}
    for split, (images_name, labels_name) in (("train", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
                                              ("test", ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))):
        images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=5).astype(np.uint8)
        arrays[split] = (images, labels)
        for name, arr in ((images_name, images), (labels_name, labels)):
            if packing == "dotted":
                name = name.replace("-idx", ".idx")
            payload = _idx_bytes(arr)
            if packing == "gzip":
                (tmp_path / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (tmp_path / name).write_bytes(payload)
    for split in ("train", "test"):
        data = datasets.load_dataset(f"mnist:{tmp_path}", split)
        assert data.x.shape == (5, 28, 28, 1) and data.x.dtype == np.float32 and data.num_classes == 10
        np.testing.assert_array_equal(data.x[..., 0] * np.float32(255), arrays[split][0].astype(np.float32))
        np.testing.assert_array_equal(data.y, arrays[split][1])
    assert datasets.load_dataset(str(tmp_path), "test").name == "mnist"  # detected from the directory


def test_idx_header_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(datasets.DatasetError, match="bad magic"):
        datasets.read_idx(str(tmp_path / "bad"))
    (tmp_path / "short").write_bytes(_idx_bytes(np.zeros((3, 2, 2), np.uint8))[:-1])
    with pytest.raises(datasets.DatasetError, match="truncated"):
        datasets.read_idx(str(tmp_path / "short"))
    wide = np.arange(6, dtype=">i4").reshape(2, 3)
    (tmp_path / "wide").write_bytes(_idx_bytes(wide))
    np.testing.assert_array_equal(datasets.read_idx(str(tmp_path / "wide")), np.arange(6).reshape(2, 3))


# --------------------------------------------------------------------------- class-folder trees


def _save_image(path, pixels):
    from PIL import Image

    Image.fromarray(pixels).save(path)


def test_image_folder_resize_crop_and_class_order(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "imagenet"
    for cls in ("n02", "n01"):
        (root / "val" / cls).mkdir(parents=True)
    (root / "train" / "n01").mkdir(parents=True)
    # shorter side already 256: the resize keeps every pixel, so the crop is a plain slice
    tall = rng.integers(0, 256, size=(512, 256, 3), dtype=np.uint8)  # [height, width, 3]
    _save_image(root / "val" / "n01" / "a.png", tall)
    flat = np.full((100, 300, 3), (10, 200, 30), np.uint8)  # constant colour survives any resize
    _save_image(root / "val" / "n02" / "b.png", flat)
    _save_image(root / "val" / "n02" / "c.jpg", rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8))
    (root / "val" / "n02" / "notes.txt").write_text("not an image")
    _save_image(root / "train" / "n01" / "d.png", flat)
    data = datasets.load_dataset(f"imagenet:{root}", "test")
    assert data.num_classes == 2 and list(data.y) == [0, 1, 1]  # sorted folder names, as ImageFolder
    assert data.input_shape == (224, 224, 3) and len(data) == 3
    first = data.x[0]
    top, left = round((512 - 224) / 2), round((256 - 224) / 2)
    np.testing.assert_array_equal(first * np.float32(255), tall[top: top + 224, left: left + 224].astype(np.float32))
    np.testing.assert_allclose(data.x[1] * 255, np.broadcast_to(np.array([10, 200, 30], np.float32), (224, 224, 3)),
                               atol=1e-4)
    batch = data.x[np.array([2, 0])]
    assert batch.shape == (2, 224, 224, 3) and batch.dtype == np.float32 and 0 <= batch.min() and batch.max() <= 1
    np.testing.assert_array_equal(batch[1], first)
    assert len(datasets.load_dataset(f"imagefolder:{root}", "train")) == 1
    assert len(datasets.load_dataset(str(root / "val"), "test")) == 3  # a bare class-folder tree, detected


def test_image_folder_without_images(tmp_path):
    (tmp_path / "cls").mkdir()
    with pytest.raises(datasets.DatasetError, match="no images"):
        datasets.load_dataset(f"imagenet:{tmp_path}", "test")
    with pytest.raises(datasets.DatasetError, match="needs its folder"):
        datasets.load_dataset("imagenet", "test")


# --------------------------------------------------------------------------- .npz layout and pixel units


@pytest.mark.parametrize("shape, layout, expected", [
    ((5, 3, 32, 32), None, "nchw"),
    ((5, 32, 32, 3), None, "nhwc"),
    ((5, 1, 28, 28), None, "nchw"),
    ((5, 28, 28, 1), None, "nhwc"),
    ((5, 3, 32, 3), "nhwc", "nhwc"),
    ((5, 8, 8, 4), "nchw", "nchw"),
    ((5, 64), None, None),
    ((5, 28, 28), None, None),
], ids=["nchw", "nhwc", "grey-nchw", "grey-nhwc", "explicit-nhwc", "explicit-nchw", "flat", "3d"])
def test_layout_rule(shape, layout, expected):
    assert datasets.resolve_layout(shape, layout) == expected


@pytest.mark.parametrize("shape", [(5, 3, 32, 3), (5, 1, 1, 1), (5, 8, 8, 4)], ids=["both", "all-ones", "neither"])
def test_ambiguous_layout_is_an_error(tmp_path, shape):
    path = tmp_path / "images.npz"
    np.savez(path, x=np.zeros(shape, np.float32), y=np.zeros(shape[0], int))
    with pytest.raises(datasets.DatasetError, match="pass --layout nhwc .* or --layout nchw") as info:
        datasets.load_dataset(str(path))
    assert "\n" not in str(info.value)
    assert datasets.load_dataset(str(path), layout="nhwc").input_shape == shape[1:]


def test_nchw_npz_is_transposed_not_reshaped(tmp_path):
    rng = np.random.default_rng(4)
    nhwc = rng.random((6, 5, 7, 3)).astype(np.float32)
    path = tmp_path / "nchw.npz"
    np.savez(path, x=nhwc.transpose(0, 3, 1, 2), y=np.arange(6) % 2)
    data = datasets.load_dataset(str(path))
    np.testing.assert_array_equal(data.x, nhwc)
    np.testing.assert_array_equal(datasets.load_dataset(str(path), layout="nchw").x, nhwc)
    with pytest.raises(datasets.DatasetError, match="4-D image arrays"):
        np.savez(tmp_path / "flat.npz", x=np.zeros((3, 4)), y=np.zeros(3, int))
        datasets.load_dataset(str(tmp_path / "flat.npz"), layout="nhwc")


def test_integer_pixels_need_a_scale(tmp_path):
    path = tmp_path / "u8.npz"
    pixels = np.array([[[[0], [255]], [[128], [7]]]] * 3, np.uint8)  # [3, 2, 2, 1]
    np.savez(path, x=pixels, y=np.zeros(3, int))
    with pytest.raises(datasets.DatasetError, match="--scale 255") as info:
        datasets.load_dataset(str(path))
    assert "uint8" in str(info.value) and "0..255" in str(info.value)
    scaled = datasets.load_dataset(str(path), scale=255)
    np.testing.assert_allclose(scaled.x, pixels / 255.0, rtol=1e-7)
    assert float(datasets.load_dataset(str(path), scale=1).x.max()) == 255.0
    with pytest.raises(datasets.DatasetError, match="--scale must be a number > 0"):
        datasets.load_dataset(str(path), scale=0)


def test_options_that_do_not_apply_are_errors(tmp_path):
    with pytest.raises(datasets.DatasetError, match="--layout does not apply"):
        datasets.load_dataset("digits", layout="nhwc")
    with pytest.raises(datasets.DatasetError, match="--scale does not apply"):
        datasets.load_dataset("spirals", scale=255)
    with pytest.raises(datasets.DatasetError, match="--download fetches cifar10 and mnist only"):
        datasets.load_dataset("digits", download=True)
    with pytest.raises(datasets.DatasetError, match="--layout applies to .npz"):
        datasets.load_dataset(f"cifar10:{tmp_path}", layout="nchw")
    with pytest.raises(datasets.DatasetError, match="unknown layout"):
        datasets.resolve_layout((2, 3, 4, 4), "chw")


def test_match_input_shape_never_reorders_axes():
    def make(shape):
        return datasets.Dataset("d", "test", np.arange(2 * int(np.prod(shape)), dtype=np.float32).reshape(2, *shape),
                                np.zeros(2, np.int32), 1)

    assert datasets.match_input_shape(make((28, 28)), (28, 28, 1)).input_shape == (28, 28, 1)
    assert datasets.match_input_shape(make((64,)), (8, 8, 1)).input_shape == (8, 8, 1)
    assert datasets.match_input_shape(make((8, 8, 1)), (64,)).input_shape == (64,)
    with pytest.raises(datasets.DatasetError, match=r"shape \[3, 32, 32\] but the model expects \[32, 32, 3\]"):
        datasets.match_input_shape(make((3, 32, 32)), (32, 32, 3))
