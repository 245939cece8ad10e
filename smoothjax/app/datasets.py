"""Datasets for the command line: built-in sets, the standard on-disk formats, and a user's ``.npz``.

Every loader returns a :class:`Dataset` with ``x: [n, *input_shape]`` float32 and ``y: [n]``
int32 class indices in ``0 .. num_classes - 1``. Images are channel-last, ``[n, H, W, C]``
(Flax's convention), with pixels in [0, 1]: the noise level sigma of a certificate is in these
units, as in Cohen et al. (2019), whose pipelines apply ``ToTensor`` (pixels / 255) before the
noise.

Built-in names (``load_dataset(name, split)``):

``digits``
    scikit-learn's 8x8 handwritten digits (1797 images, 10 classes; ships with scikit-learn, the
    nearest relative of the second paper's 7x7 MNIST). Pixels are scaled from 0..16 to [0, 1];
    images have shape ``[8, 8, 1]`` (d = 64). The split is fixed: a permutation drawn with
    ``numpy.random.default_rng(0)``; the first 1437 images are ``train``, the last 360 ``test``.
``spirals``
    Two interleaved 2-D spirals (two classes), generated in code with a fixed seed: 1000 training
    and 400 test points in roughly [-1, 1]^2. A non-linearly-separable toy set in the spirit of the
    second paper's Figure 2 (the Swiss Roll).
``swissroll``
    The Swiss Roll of the second paper's Figure 2 in 2-D: points on one spiral arm
    ``t (cos t, sin t)``, the inner part of the roll one class and the outer part the other (the
    inner class is wrapped by the outer one on several sides). Same sizes as ``spirals``.

Standard on-disk formats (``NAME`` or ``NAME:DIR``; without ``DIR`` the folder is
``$SMOOTHJAX_DATA_DIR/NAME``, default ``~/.cache/smoothjax/datasets/NAME``). Nothing is downloaded
unless asked (``download=True``, the command line's ``--download``):

``cifar10``, ``cifar100``
    The "python version" batches of Krizhevsky's CIFAR: ``data_batch_1`` .. ``data_batch_5`` and
    ``test_batch`` (CIFAR-100: ``train`` and ``test``), pickles holding ``b"data"`` (uint8
    ``[N, 3072]``, each row the red, green and blue 32x32 planes) and ``b"labels"`` (CIFAR-100:
    ``b"fine_labels"``). ``DIR`` may be the ``cifar-10-batches-py`` folder or the one holding it.
    The pickles are read with an unpickler that builds only dicts, lists, bytes, numbers and
    NumPy arrays (``_reconstruct``, ``ndarray``, ``dtype``); anything else in the file is refused.
    Shape ``[32, 32, 3]``.
``mnist``
    LeCun's idx files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``).
    Shape ``[28, 28, 1]``. (Fashion-MNIST uses the same files.)
``imagenet`` / ``imagefolder`` (``DIR`` required)
    A class-folder tree ``DIR/<class>/<image>`` (or ``DIR/train/...`` and ``DIR/val/...``; the
    ``test`` split reads ``val`` when there is no ``test`` folder). Class indices are the sorted
    folder names, as torchvision's ``ImageFolder``. Each image is converted to RGB, its shorter
    side resized to 256 (bilinear) and the central 224x224 cropped, as Cohen et al.'s ImageNet
    pipeline (``Resize(256)``, ``CenterCrop(224)``, ``ToTensor()``). Images are decoded lazily
    (``x`` is an :class:`ImageFolderArray`), so only the certified inputs are read.

Pixels of these formats are divided by ``scale`` (default 255, so [0, 1]). ``smoothjax certify``
warns when the inputs are on another scale than the model expects (:func:`input_range_warning`,
e.g. 0..255 floats for a model of [0, 1] pixels). The decoders of the
files themselves (:func:`read_cifar_batch`, :func:`read_idx`, :class:`ImageFolderArray`) and
:class:`DatasetError` live in :mod:`smoothjax.app.dataset_readers` and are importable from here.

A directory path is recognised by its contents (CIFAR batches, idx files or class folders). A
path ending in ``.npz`` loads a user's file (:func:`load_npz`): arrays ``x`` (``[n,
*input_shape]``) and ``y`` (``[n]`` integer labels); both splits return the whole file unless it
also holds ``x_test`` / ``y_test``. Four-dimensional ``x`` is an image batch whose layout must be
clear (see :func:`resolve_layout`); integer pixels need an explicit ``scale``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Sequence

import numpy as np

from smoothjax.app.dataset_readers import DatasetError, ImageFolderArray, read_cifar_batch, read_idx

BUILTIN_DATASETS = ("digits", "spirals", "swissroll")
FILE_DATASETS = ("cifar10", "cifar100", "mnist", "imagenet", "imagefolder")
SPLITS = ("train", "test")
LAYOUTS = ("nhwc", "nchw")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_DIGITS_NUM_TEST = 360
_TOY_SIZES = {"train": 1000, "test": 400}
_CIFAR_FILES = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    "cifar100": {"train": ["train"], "test": ["test"]},
}
_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_CIFAR_LABEL_KEYS = {"cifar10": b"labels", "cifar100": b"fine_labels"}
_CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

#: Official sources for ``download=True`` (URL, MD5 of the file).
CIFAR10_URL = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
MNIST_URLS = ("https://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Arrays of one split: ``x [n, *input_shape]`` float32 (or a lazy :class:`ImageFolderArray`), ``y [n]`` int32."""

    name: str
    split: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    note: str = ""  # something the user should be told when this split is used (e.g. no test split)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])


# ------------------------------------------------------------------------------------------
# built-in sets
# ------------------------------------------------------------------------------------------


def load_digits(split: str = "test") -> Dataset:
    """scikit-learn's 8x8 digits, pixels in [0, 1], shape ``[n, 8, 8, 1]``, fixed split (see module doc)."""
    _check_split(split)
    from sklearn.datasets import load_digits as _sk_load_digits

    raw = _sk_load_digits()
    x = (raw.images / 16.0).astype(np.float32)[..., None]
    y = raw.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(y))
    cut = len(y) - _DIGITS_NUM_TEST
    idx = order[:cut] if split == "train" else order[cut:]
    return Dataset("digits", split, x[idx], y[idx], 10)


def make_spirals(num_points: int, *, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals in 2-D: ``(x [num_points, 2] float32, y [num_points] int32)``.

    Arm k (k = 0, 1) is ``t (cos(t + k pi), sin(t + k pi)) / (3 pi)`` for ``t`` uniform in
    ``[pi/2, 3 pi]``, plus isotropic Gaussian noise of std ``noise``.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=num_points)
    t = rng.uniform(0.5 * np.pi, 3.0 * np.pi, size=num_points)
    angle = t + np.pi * y
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) / (3.0 * np.pi)
    x = x + noise * rng.standard_normal(x.shape)
    return x.astype(np.float32), y.astype(np.int32)


def make_swiss_roll(num_points: int, *, noise: float = 0.04, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D Swiss Roll with an inner and an outer class: ``(x [num_points, 2] float32, y [num_points] int32)``.

    Points ``t (cos t, sin t) / (4.5 pi)`` with ``t`` uniform in ``[1.5 pi, 4.5 pi]`` (one and a half
    turns) plus Gaussian noise of std ``noise``; label 1 for the inner part of the roll
    (``t < 3 pi``), 0 for the outer part, so the inner class is wrapped by the outer one on several
    sides (as the blue class of the second paper's Figure 2).
    """
    rng = np.random.default_rng(seed)
    t = rng.uniform(1.5 * np.pi, 4.5 * np.pi, size=num_points)
    y = (t < 3.0 * np.pi).astype(np.int32)
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (4.5 * np.pi)
    x = x + noise * rng.standard_normal(x.shape)
    return x.astype(np.float32), y


def load_toy(name: str, split: str = "train") -> Dataset:
    """``spirals`` or ``swissroll`` (2-D, 2 classes); train and test use different fixed seeds."""
    _check_split(split)
    make = {"spirals": make_spirals, "swissroll": make_swiss_roll}[name]
    x, y = make(_TOY_SIZES[split], seed=0 if split == "train" else 1)
    return Dataset(name, split, x, y, 2)


# ------------------------------------------------------------------------------------------
# a user's .npz
# ------------------------------------------------------------------------------------------


def resolve_layout(shape: Sequence[int], layout: str | None, source: str = "x") -> str | None:
    """The layout (``"nhwc"`` or ``"nchw"``) of an array of ``shape``; None when it is not 4-D.

    Rule for a 4-D ``[n, a, b, c]`` array without an explicit ``layout``: a channel axis holds 1
    or 3 values (grey or RGB). If exactly one of ``a`` (channel-first) and ``c`` (channel-last)
    is 1 or 3, that is the layout; if both are (``[n, 3, 32, 3]``, ``[n, 1, 1, 1]``) or neither
    is (``[n, 8, 8, 4]``), the layout cannot be told and a :class:`DatasetError` asks for it.
    An explicit ``layout`` is used as given, but only for 4-D arrays.
    """
    shape = tuple(int(s) for s in shape)
    if layout is not None:
        layout = layout.lower()
        if layout not in LAYOUTS:
            raise DatasetError(f"unknown layout {layout!r}; use nhwc (channels last) or nchw (channels first).")
        if len(shape) != 4:
            raise DatasetError(f"layout {layout} applies to 4-D image arrays [n, ...], but {source} has shape "
                               f"{list(shape)}; drop --layout.")
        return layout
    if len(shape) != 4:
        return None
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first != last:
        return "nchw" if first else "nhwc"
    raise DatasetError(
        f"cannot tell the channel axis of {source} with shape {list(shape)} (channels first and last are both "
        f"{'possible' if first else 'unlikely'}); pass --layout nhwc if it is [n, height, width, channels] or "
        "--layout nchw if it is [n, channels, height, width]."
    )


def load_npz(path: str, split: str = "train", *, layout: str | None = None, scale: float | None = None) -> Dataset:
    """A user's ``.npz`` with arrays ``x [n, *input_shape]`` and ``y [n]`` (optionally ``x_test``, ``y_test``).

    Args:
      path: the file.
      split: ``train`` or ``test`` (``test`` reads ``x_test`` / ``y_test`` when present).
      layout: ``nhwc`` or ``nchw`` for 4-D ``x``; None infers it (:func:`resolve_layout`) and
        raises when it cannot be told. ``nchw`` arrays are transposed to ``[n, H, W, C]``.
      scale: divide ``x`` by this (e.g. 255 maps 0..255 pixels to [0, 1]). Required when ``x``
        holds integers (``uint8`` images), since sigma is in the units of ``x``.

    Raises :class:`DatasetError` (a ``ValueError``) with a sentence saying how to fix the file when
    it is missing, lacks a key, its arrays do not fit together, its layout is ambiguous, or its
    pixels are integers without a ``scale``.
    """
    _check_split(split)
    scale = _check_scale(scale)
    if not os.path.isfile(path):
        raise DatasetError(f"dataset file {path!r} not found; pass an existing .npz file with arrays 'x' and 'y'.")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001  (any unreadable file is a user error here)
        raise DatasetError(f"could not read {path!r} as a .npz file ({err}); "
                           "save it with numpy.savez(path, x=..., y=...).") from None
    with data:
        keys = set(data.files)
        x_key, y_key = ("x_test", "y_test") if split == "test" and {"x_test", "y_test"} <= keys else ("x", "y")
        missing = [k for k in (x_key, y_key) if k not in keys]
        if missing:
            raise DatasetError(
                f"{path!r} has no array {missing[0]!r} (found: {sorted(keys)}); "
                "save it with numpy.savez(path, x=inputs, y=labels)."
            )
        x = np.asarray(data[x_key])
        y = np.asarray(data[y_key])
    if x.ndim < 2:
        raise DatasetError(f"array 'x' in {path!r} has shape {x.shape}; it must be [num_examples, *input_shape], "
                           "e.g. [n, 64] or [n, 8, 8, 1].")
    if y.ndim != 1:
        raise DatasetError(f"array 'y' in {path!r} has shape {y.shape}; "
                           "it must be a 1-D array of integer labels [num_examples].")
    if x.shape[0] != y.shape[0]:
        raise DatasetError(
            f"arrays 'x' ({x.shape[0]} examples) and 'y' ({y.shape[0]} labels) in {path!r} differ in length; "
            "they must have one label per example."
        )
    if x.shape[0] == 0:
        raise DatasetError(f"{path!r} holds no examples.")
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise DatasetError(f"array 'x' in {path!r} must hold finite numbers.")
    if np.issubdtype(x.dtype, np.integer) and scale is None:
        raise DatasetError(
            f"array 'x' in {path!r} holds integers ({x.dtype}, values {x.min()}..{x.max()}); say how they map to the "
            "units sigma is measured in: --scale 255 divides by 255 (pixels 0..255 -> [0, 1]), --scale 1 keeps them."
        )
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.asarray(y, float) == np.round(np.asarray(y, float))):
        raise DatasetError(f"array 'y' in {path!r} must hold integer class labels 0, 1, ..., got dtype {y.dtype}.")
    y = y.astype(np.int64)
    if np.any(y < 0):
        raise DatasetError(f"array 'y' in {path!r} has negative labels; labels must be 0, 1, ..., num_classes - 1.")
    if resolve_layout(x.shape, layout, f"array 'x' in {path!r}") == "nchw":
        x = np.transpose(x, (0, 2, 3, 1))
    x = x.astype(np.float64) / scale if scale is not None else x
    note = ""
    if split == "test" and x_key == "x":
        note = (f"{os.path.basename(path)} has no x_test / y_test arrays: its 'test' split is the whole file, "
                "the same examples as 'train'")
    return Dataset(os.path.basename(path), split, np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int32),
                   int(y.max()) + 1, note)


# ------------------------------------------------------------------------------------------
# CIFAR python batches
# ------------------------------------------------------------------------------------------


def load_cifar(root: str, split: str = "test", *, name: str = "cifar10", scale: float | None = None,
               download: bool = False) -> Dataset:
    """CIFAR-10 / CIFAR-100 python batches from ``root`` (see module doc): ``x [N, 32, 32, 3]`` / ``scale``."""
    _check_split(split)
    scale = _check_scale(scale) or 255.0
    folder = _cifar_folder(root, name)
    if folder is None and download:
        if name != "cifar10":
            raise DatasetError("--download fetches cifar10 and mnist only; "
                               f"place the {name} python batches in {root!r}.")
        download_cifar10(root)
        folder = _cifar_folder(root, name)
    if folder is None:
        files = ", ".join(_CIFAR_FILES[name][split])
        raise DatasetError(f"{name} batches ({files}) not found in {root!r} or "
                           f"{os.path.join(root, _CIFAR_FOLDERS[name])!r}; "
                           f"pass --dataset {name}:DIR with the python-version folder"
                           + (", or add --download." if name == "cifar10" else "."))
    xs, ys = zip(*(read_cifar_batch(os.path.join(folder, f), _CIFAR_LABEL_KEYS[name])
                   for f in _CIFAR_FILES[name][split]))
    y = np.concatenate(ys)
    if y.size and (y.min() < 0 or y.max() >= _CIFAR_CLASSES[name]):
        raise DatasetError(f"labels in {folder!r} must lie in 0..{_CIFAR_CLASSES[name] - 1}.")
    x = (np.concatenate(xs).astype(np.float32) / np.float32(scale)).astype(np.float32)
    return Dataset(name, split, x, y.astype(np.int32), _CIFAR_CLASSES[name])


def _cifar_folder(root: str, name: str) -> str | None:
    first = _CIFAR_FILES[name]["test"][0]
    for folder in (root, os.path.join(root, _CIFAR_FOLDERS[name])):
        if os.path.isfile(os.path.join(folder, first)):
            return folder
    return None


# ------------------------------------------------------------------------------------------
# MNIST idx files
# ------------------------------------------------------------------------------------------


def load_mnist(root: str, split: str = "test", *, scale: float | None = None, download: bool = False) -> Dataset:
    """MNIST idx files from ``root`` (plain or ``.gz``): ``x [N, 28, 28, 1]`` / ``scale`` (default 255)."""
    _check_split(split)
    scale = _check_scale(scale) or 255.0
    paths = [_find_idx(root, stem) for stem in _MNIST_FILES[split]]
    if None in paths and download:
        download_mnist(root)
        paths = [_find_idx(root, stem) for stem in _MNIST_FILES[split]]
    if None in paths:
        missing = _MNIST_FILES[split][paths.index(None)]
        raise DatasetError(f"MNIST file {missing}[.gz] not found in {root!r}; "
                           "pass --dataset mnist:DIR with the idx files, or add --download.")
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(f"MNIST files in {root!r} do not fit together: images {list(images.shape)}, "
                           f"labels {list(labels.shape)}.")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"MNIST labels in {root!r} must lie in 0..9.")
    x = (images.astype(np.float32) / np.float32(scale))[..., None]
    return Dataset("mnist", split, x.astype(np.float32), labels.astype(np.int32), 10)


def _find_idx(root: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz", _dotted(stem), _dotted(stem) + ".gz"):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def _dotted(stem: str) -> str:
    """``train-images-idx3-ubyte`` -> ``train-images.idx3-ubyte`` (a common re-packaging)."""
    return re.sub(r"-(idx\d-ubyte)$", r".\1", stem)


# ------------------------------------------------------------------------------------------
# class-folder trees (ImageNet)
# ------------------------------------------------------------------------------------------


def load_image_folder(root: str, split: str = "test", *, resize: int = 256, crop: int = 224,
                      scale: float | None = None) -> Dataset:
    """A class-folder tree (see module doc) as a lazy dataset ``x [N, crop, crop, 3]``."""
    _check_split(split)
    scale = _check_scale(scale) or 255.0
    if not os.path.isdir(root):
        raise DatasetError(f"image folder {root!r} not found; "
                           "pass --dataset imagenet:DIR with DIR/<class>/<image> files.")
    base = root
    for candidate in (("train",) if split == "train" else ("val", "test")):
        if os.path.isdir(os.path.join(root, candidate)):
            base = os.path.join(root, candidate)
            break
    classes = sorted(e.name for e in os.scandir(base) if e.is_dir())
    files, labels = [], []
    for index, cls in enumerate(classes):
        for folder, _subdirs, names in sorted(os.walk(os.path.join(base, cls), followlinks=True)):
            for name in sorted(names):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(os.path.join(folder, name))
                    labels.append(index)
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {base!r}; "
                           "it must hold one folder per class.")
    x = ImageFolderArray(files, resize=resize, crop=crop, scale=scale)
    return Dataset(os.path.basename(os.path.normpath(root)), split, x, np.asarray(labels, np.int32), len(classes))


# ------------------------------------------------------------------------------------------
# downloads (explicit only)
# ------------------------------------------------------------------------------------------


def _fetch(url: str, target: str, md5: str) -> None:
    """Download ``url`` to ``target`` and check its MD5; nothing is left behind on failure."""
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(target)), suffix=".part")
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (fixed https URLs)
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise DatasetError(f"the download of {url} has MD5 {digest.hexdigest()}, expected {md5}; try again later.")
        os.replace(tmp, target)
    except OSError as err:
        raise DatasetError(f"could not download {url} ({err}); "
                           f"download it by hand into {os.path.dirname(target)!r}.") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def download_cifar10(root: str) -> str:
    """Fetch CIFAR-10's python version from its official page into ``root``; returns the batch folder.

    Needs internet access (not available to the test suite, so this function is untested there; the
    loading code is tested on files written in the exact format). The archive is checked against its
    published MD5 and only its regular files are extracted.
    """
    url, md5 = CIFAR10_URL
    archive = os.path.join(root, os.path.basename(url))
    if not os.path.isfile(archive):
        _fetch(url, archive, md5)
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and not os.path.isabs(m.name) and ".." not in m.name.split("/")]
        for member in members:
            source = tar.extractfile(member)
            target = os.path.join(root, *member.name.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
    return os.path.join(root, _CIFAR_FOLDERS["cifar10"])


def download_mnist(root: str) -> str:
    """Fetch the four gzipped MNIST idx files into ``root`` (LeCun's page, then the PyTorch mirror).

    Needs internet access (untested in the test suite, as :func:`download_cifar10`). Each file is
    checked against its published MD5.
    """
    for name, md5 in MNIST_MD5.items():
        target = os.path.join(root, name)
        if os.path.isfile(target):
            continue
        errors = []
        for base in MNIST_URLS:
            try:
                _fetch(base + name, target, md5)
                break
            except DatasetError as err:
                errors.append(str(err))
        else:
            raise DatasetError(errors[-1])
    return root


# ------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------


def default_data_dir(name: str) -> str:
    """``$SMOOTHJAX_DATA_DIR/name``, default ``~/.cache/smoothjax/datasets/name``."""
    base = (os.environ.get("SMOOTHJAX_DATA_DIR")
            or os.path.join(os.path.expanduser("~"), ".cache", "smoothjax", "datasets"))
    return os.path.join(base, name)


def detect_format(directory: str) -> str | None:
    """``cifar10``, ``cifar100``, ``mnist`` or ``imagefolder`` from a directory's contents (None if none fits)."""
    for name in ("cifar10", "cifar100"):
        if _cifar_folder(directory, name):
            return name
    if any(_find_idx(directory, stem) for pair in _MNIST_FILES.values() for stem in pair):
        return "mnist"
    if any(e.is_dir() for e in os.scandir(directory)):
        return "imagefolder"
    return None


def load_dataset(name: str, split: str = "train", *, layout: str | None = None, scale: float | None = None,
                 download: bool = False) -> Dataset:
    """A dataset by name: built-in, ``NAME[:DIR]`` of an on-disk format, a directory, or a ``.npz`` path.

    Args:
      name: ``digits`` | ``spirals`` | ``swissroll`` | ``cifar10[:DIR]`` | ``cifar100[:DIR]`` |
        ``mnist[:DIR]`` | ``imagenet:DIR`` (= ``imagefolder:DIR``) | a directory (format detected)
        | ``path/to/data.npz``. See the module doc.
      split: ``train`` or ``test``.
      layout: ``nhwc`` / ``nchw`` for a 4-D ``.npz`` array (an error for other datasets).
      scale: divisor for the pixels (required for integer ``.npz`` inputs; default 255 for the
        image formats; an error for the built-in sets).
      download: fetch CIFAR-10 or MNIST from the official source when absent (explicit only).
    """
    kind, sep, directory = name.partition(":")
    kind_lower = kind.lower()
    if sep and kind_lower in FILE_DATASETS and directory:
        root = directory
    elif kind_lower in FILE_DATASETS and not sep:
        root = default_data_dir(kind_lower)
    elif name.endswith(".npz"):
        _no_download(download, name)
        return load_npz(name, split, layout=layout, scale=scale)
    elif os.path.isdir(name):
        detected = detect_format(name)
        if detected is None:
            raise DatasetError(f"cannot tell the format of the directory {name!r}; it must hold CIFAR python batches, "
                               "MNIST idx files or one folder of images per class.")
        kind_lower, root = detected, name
    elif os.path.sep in name or (os.path.altsep and os.path.altsep in name):
        raise DatasetError(f"dataset {name!r} not found; pass an existing .npz file or directory.")
    elif name in BUILTIN_DATASETS:
        for flag, value in (("--layout", layout), ("--scale", scale)):
            if value is not None:
                raise DatasetError(f"{flag} does not apply to the built-in dataset {name!r}; drop it.")
        _no_download(download, name)
        return load_digits(split) if name == "digits" else load_toy(name, split)
    else:
        raise DatasetError(
            f"unknown dataset {name!r}; use one of {', '.join(BUILTIN_DATASETS)}, cifar10[:DIR], cifar100[:DIR], "
            "mnist[:DIR], imagenet:DIR, a directory or a path to a .npz file with arrays 'x' and 'y'."
        )
    if layout is not None:
        raise DatasetError("--layout applies to .npz arrays only; "
                           f"{kind_lower} images are read as [height, width, channels].")
    if kind_lower in ("cifar10", "cifar100"):
        return load_cifar(root, split, name=kind_lower, scale=scale, download=download)
    if kind_lower == "mnist":
        return load_mnist(root, split, scale=scale, download=download)
    if sep or os.path.isdir(root):
        _no_download(download, name)
        return load_image_folder(root, split, scale=scale)
    raise DatasetError(f"{kind_lower} needs its folder: "
                       f"pass --dataset {kind_lower}:DIR with DIR/<class>/<image> files.")


def match_input_shape(data: Dataset, expected: Sequence[int]) -> Dataset:
    """``data`` with inputs of shape ``expected``, reshaping only where no axis is reordered.

    Allowed: equal shapes; flat ``[d]`` to or from any shape with ``d`` entries; adding or dropping
    axes of length 1 (``[28, 28]`` <-> ``[28, 28, 1]``). Anything else (``[3, 32, 32]`` against
    ``[32, 32, 3]``) would scramble pixels and raises :class:`DatasetError`.
    """
    have, want = tuple(data.input_shape), tuple(int(s) for s in expected)
    if have == want:
        return data
    squeeze = lambda s: tuple(d for d in s if d != 1)  # noqa: E731
    reshapable = len(have) == 1 or len(want) == 1 or squeeze(have) == squeeze(want)
    if int(np.prod(have)) == int(np.prod(want)) and reshapable:
        x = np.asarray(data.x).reshape((len(data), *want))
        return Dataset(data.name, data.split, x, data.y, data.num_classes, data.note)
    raise DatasetError(
        f"inputs of {data.name!r} have shape {list(have)} but the model expects {list(want)}; "
        "for a .npz image array pass --layout nhwc or nchw, or use a dataset matching the model."
    )


#: The units of an image model's inputs unless its config says otherwise: pixels in [0, 1].
PIXEL_RANGE = (0.0, 1.0)


def expected_input_range(config: dict) -> tuple[tuple[float, float], str] | None:
    """``((low, high), where it comes from)``: the range of inputs a model expects, or None if unknown.

    In this order: the config's own ``input_range`` (a ``--model-fn`` factory's config may set it),
    the ``training.input_range`` that ``smoothjax train`` records (the training inputs' min and max),
    and, for image inputs (``input_shape`` of two or more axes) of a smoothjax or PyTorch checkpoint,
    :data:`PIXEL_RANGE` (the shipped model and the published architectures take [0, 1] pixels).
    Other models (flat inputs without a record, factories that do not say) are not checked.
    """
    for where, value in (("its config's input_range", config.get("input_range")),
                         ("recorded when it was trained", (config.get("training") or {}).get("input_range"))):
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return (float(value[0]), float(value[1])), where
    if (config.get("source") or {}).get("format") != "model-fn" and len(config.get("input_shape") or ()) >= 2:
        return PIXEL_RANGE, "the pixel convention of image models; the model records no range"
    return None


def input_range_warning(x: np.ndarray, config: dict, name: str) -> str | None:
    """One line saying that inputs ``x`` are on another scale than the model ``config`` expects, or None.

    The inputs are out of scale when they reach more than half the expected range's width beyond
    it (for [0, 1]: above 1.5 or below -0.5), as 0..255 pixels fed to a model of [0, 1] pixels do.
    Since sigma is in input units, such certificates would be meaningless; the line names the
    observed and expected ranges and the fix (``--scale``).
    """
    expected = expected_input_range(config)
    x = np.asarray(x)
    if expected is None or x.size == 0:
        return None
    (low, high), where = expected
    width = high - low
    observed = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(width) and width > 0) or (low - width / 2 <= observed[0] and observed[1] <= high + width / 2):
        return None
    return (f"the inputs of {name} lie in [{observed[0]:g}, {observed[1]:g}] but the model expects inputs in "
            f"[{low:g}, {high:g}] ({where}); sigma is in input units, so these certificates would be meaningless. "
            "Rescale the inputs: --scale S divides them by S (--scale 255 for 0..255 pixels), "
            "or save the data in the model's units.")


def _no_download(download: bool, name: str) -> None:
    if download:
        raise DatasetError(f"--download fetches cifar10 and mnist only, not {name!r}.")


def _check_scale(scale: float | None) -> float | None:
    if scale is None:
        return None
    if not np.isfinite(scale) or scale <= 0:
        raise DatasetError(f"--scale must be a number > 0 (e.g. 255 to map 0..255 pixels to [0, 1]), got {scale}.")
    return float(scale)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use 'train' or 'test'.")
