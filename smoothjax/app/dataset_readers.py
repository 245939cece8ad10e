"""Decoders of the standard dataset files: a CIFAR python batch, an idx file, images.

Each reader turns one file (or, for :class:`ImageFolderArray`, a list of image files) into NumPy
arrays; it knows nothing of splits, folders, pixel units of a certificate or downloads, which
:mod:`smoothjax.app.datasets` handles. Problems with a file raise :class:`DatasetError`, a
``ValueError`` whose message says how to fix it (also importable as
``smoothjax.app.datasets.DatasetError``).

The CIFAR pickles are read with an unpickler that builds only dicts, lists, bytes, numbers and
NumPy arrays (``_reconstruct``, ``ndarray``, ``dtype``); anything else in the file is refused.
"""

from __future__ import annotations

import gzip
import importlib
import pickle
from collections.abc import Sequence

import numpy as np

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetError(ValueError):
    """A user-facing problem with a dataset (missing file, wrong keys, shapes or pixel units)."""


# ------------------------------------------------------------------------------------------
# CIFAR python batches
# ------------------------------------------------------------------------------------------


def _numpy_attr(modules: Sequence[str], name: str):
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(name)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only containers, bytes, numbers and NumPy arrays; any other global is refused."""

    _RECONSTRUCT = ("_reconstruct", ("numpy._core.multiarray", "numpy.core.multiarray"))
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): ("ndarray", ("numpy",)),
        ("numpy", "dtype"): ("dtype", ("numpy",)),
    }

    def find_class(self, module, name):
        entry = self._ALLOWED.get((module, name))
        if entry is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays and lists")
        return _numpy_attr(entry[1], entry[0])


def read_cifar_batch(path: str, label_key: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch: ``(x [N, 32, 32, 3] uint8, y [N] int64)``; raises :class:`DatasetError`."""
    try:
        with open(path, "rb") as fh:
            batch = _ArrayUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, ImportError, AttributeError, IndexError,
            KeyError) as err:
        raise DatasetError(f"{path!r} is not a CIFAR python batch ({err}); "
                           "use the 'python version' from the CIFAR page.") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetError(f"{path!r} is not a CIFAR python batch: it needs keys b'data' and {label_key!r} "
                           f"(found {keys}).")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise DatasetError(f"{path!r}: b'data' must be uint8 [N, 3072] with one label each "
                           f"(got {data.dtype} {list(data.shape)}, {labels.size} labels).")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are the R, G, B 32x32 planes
    return np.ascontiguousarray(x), labels.astype(np.int64)


# ------------------------------------------------------------------------------------------
# idx files (MNIST)
# ------------------------------------------------------------------------------------------


def read_idx(path: str) -> np.ndarray:
    """An idx file (LeCun's MNIST format, gzipped when the name ends in ``.gz``) as a NumPy array.

    Header: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D
    float32, 0x0E float64), the number of dimensions, then each dimension as a big-endian uint32.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"could not read {path!r} ({err}).") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path!r} is not an idx file (bad magic number); use the MNIST files as published.")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(np.int64) if len(raw) >= 4 + 4 * ndim else None
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    start = 4 + 4 * ndim
    if dims is None or len(raw) - start != int(np.prod(dims)) * dtype.itemsize:
        raise DatasetError(f"{path!r} is truncated or its header does not match its size.")
    return np.frombuffer(raw, dtype, offset=start).reshape(tuple(dims)).astype(dtype.newbyteorder("="))


# ------------------------------------------------------------------------------------------
# images (ImageNet)
# ------------------------------------------------------------------------------------------


class ImageFolderArray:
    """A lazy ``[n, crop, crop, 3]`` float32 array of images, decoded when indexed.

    ``arr[i]``, ``arr[a:b]``, ``arr[[i, j]]`` and boolean masks return NumPy arrays;
    ``numpy.asarray(arr)`` decodes every image. Each image: RGB, shorter side resized to
    ``resize`` (bilinear; the longer side ``int(resize * long / short)``), central ``crop`` x
    ``crop`` cut (top-left corner at ``round((size - crop) / 2)``), divided by ``scale``.
    """

    def __init__(self, files: Sequence[str], *, resize: int = 256, crop: int = 224, scale: float = 255.0):
        if crop > resize:
            raise DatasetError(f"the crop ({crop}) must not exceed the resize ({resize}).")
        self.files = list(files)
        self.resize, self.crop, self.scale = int(resize), int(crop), float(scale)
        self.dtype = np.dtype(np.float32)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.crop, self.crop, 3)

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self._load(self.files[int(index)])
        ids = np.arange(len(self.files))[index]
        if not np.size(ids):
            return np.zeros((0, *self.shape[1:]), np.float32)
        return np.stack([self._load(self.files[i]) for i in np.atleast_1d(ids)])

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(len(self.files))]
        return out if dtype is None else out.astype(dtype)

    def reshape(self, *shape):
        return np.asarray(self).reshape(*shape)

    def _load(self, path: str) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                w, h = img.size
                short, long = (w, h) if w <= h else (h, w)
                new_long = int(self.resize * long / short)
                size = (self.resize, new_long) if w <= h else (new_long, self.resize)
                img = img.resize(size, Image.BILINEAR)
                w, h = img.size
                top = int(round((h - self.crop) / 2.0))
                left = int(round((w - self.crop) / 2.0))
                img = img.crop((left, top, left + self.crop, top + self.crop))
                pixels = np.asarray(img, np.float32)
        except OSError as err:
            raise DatasetError(f"could not decode the image {path!r} ({err}).") from None
        return pixels / np.float32(self.scale)
