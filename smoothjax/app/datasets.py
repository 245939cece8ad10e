"""Built-in datasets that need no download, and loading a user's ``.npz``.

Every loader returns a :class:`Dataset` with NumPy arrays ``x: [n, *input_shape]`` (float32) and
``y: [n]`` (int32 class indices in ``0 .. num_classes - 1``).

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

A path ending in ``.npz`` loads a user's file with arrays ``x`` (``[n, *input_shape]``) and ``y``
(``[n]`` integer labels); both splits return the whole file unless it also holds ``x_test`` /
``y_test`` (then ``split="test"`` returns those).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

BUILTIN_DATASETS = ("digits", "spirals", "swissroll")
SPLITS = ("train", "test")

_DIGITS_NUM_TEST = 360
_TOY_SIZES = {"train": 1000, "test": 400}


class DatasetError(ValueError):
    """A user-facing problem with a dataset (missing file, wrong keys or shapes)."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Arrays of one split: ``x [n, *input_shape]`` float32, ``y [n]`` int32."""

    name: str
    split: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])


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


def load_npz(path: str, split: str = "train") -> Dataset:
    """A user's ``.npz`` with arrays ``x [n, *input_shape]`` and ``y [n]`` (optionally ``x_test``, ``y_test``).

    Raises :class:`DatasetError` (a ``ValueError``) with a sentence saying how to fix the file when
    it is missing, lacks a key, or its arrays do not fit together.
    """
    _check_split(split)
    if not os.path.isfile(path):
        raise DatasetError(f"dataset file {path!r} not found; pass an existing .npz file with arrays 'x' and 'y'.")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001  (any unreadable file is a user error here)
        raise DatasetError(f"could not read {path!r} as a .npz file ({err}); save it with numpy.savez(path, x=..., y=...).") from None
    with data:
        keys = set(data.files)
        x_key, y_key = ("x_test", "y_test") if split == "test" and {"x_test", "y_test"} <= keys else ("x", "y")
        missing = [k for k in (x_key, y_key) if k not in keys]
        if missing:
            raise DatasetError(
                f"{path!r} has no array {missing[0]!r} (found: {sorted(keys)}); save it with numpy.savez(path, x=inputs, y=labels)."
            )
        x = np.asarray(data[x_key])
        y = np.asarray(data[y_key])
    if x.ndim < 2:
        raise DatasetError(f"array 'x' in {path!r} has shape {x.shape}; it must be [num_examples, *input_shape], e.g. [n, 64] or [n, 8, 8, 1].")
    if y.ndim != 1:
        raise DatasetError(f"array 'y' in {path!r} has shape {y.shape}; it must be a 1-D array of integer labels [num_examples].")
    if x.shape[0] != y.shape[0]:
        raise DatasetError(
            f"arrays 'x' ({x.shape[0]} examples) and 'y' ({y.shape[0]} labels) in {path!r} differ in length; they must have one label per example."
        )
    if x.shape[0] == 0:
        raise DatasetError(f"{path!r} holds no examples.")
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise DatasetError(f"array 'x' in {path!r} must hold finite numbers.")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.asarray(y, float) == np.round(np.asarray(y, float))):
        raise DatasetError(f"array 'y' in {path!r} must hold integer class labels 0, 1, ..., got dtype {y.dtype}.")
    y = y.astype(np.int64)
    if np.any(y < 0):
        raise DatasetError(f"array 'y' in {path!r} has negative labels; labels must be 0, 1, ..., num_classes - 1.")
    return Dataset(os.path.basename(path), split, x.astype(np.float32), y.astype(np.int32), int(y.max()) + 1)


def load_dataset(name: str, split: str = "train") -> Dataset:
    """A built-in dataset by name (``digits``, ``spirals``, ``swissroll``) or a path to a ``.npz`` file."""
    if name.endswith(".npz") or os.path.sep in name:
        return load_npz(name, split)
    if name == "digits":
        return load_digits(split)
    if name in ("spirals", "swissroll"):
        return load_toy(name, split)
    raise DatasetError(f"unknown dataset {name!r}; use one of {', '.join(BUILTIN_DATASETS)} or a path to a .npz file with arrays 'x' and 'y'.")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use 'train' or 'test'.")
