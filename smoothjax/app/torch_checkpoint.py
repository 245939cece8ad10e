"""Read PyTorch checkpoints without PyTorch, safely, and load them into :mod:`smoothjax.app.architectures`.

Formats (both written by ``torch.save``):

* **zip** (PyTorch >= 1.6): a zip archive ``<name>/data.pkl`` (the pickled object) with one member
  ``<name>/data/<key>`` of raw little-endian bytes per storage, ``<name>/byteorder`` optional.
* **legacy** (PyTorch < 1.6, e.g. Cohen et al.'s published ``checkpoint.pth.tar``): pickles of a magic
  number, a protocol number and system info, then the object, then the sorted storage keys, then
  each storage as an int64 element count followed by its raw bytes.

The object is unpickled by :class:`RestrictedUnpickler`, which resolves only tensors, storages and
plain containers (``dict``, ``OrderedDict``, ``list``, ``tuple``, ``set``, ``str``, ``bytes``, numbers,
``bool``, ``None``, NumPy scalars): any other global -- ``os.system``, a module class, ``eval`` -- is
refused with :class:`UnsafeCheckpointError` before it is looked up, so loading a checkpoint never
runs code. Tensors come back as NumPy arrays (``torch._utils._rebuild_tensor_v2`` rebuilt from the
storage bytes, offset, size and stride, bounds-checked).

Mapping onto the Flax models: Cohen et al. save ``torch.nn.Sequential(NormalizeLayer, model)``,
sometimes with ``model`` in ``torch.nn.DataParallel``, inside ``{"arch", "state_dict", "optimizer",
...}``, so keys look like ``1.module.layer1.0.conv1.weight``. :func:`strip_wrapper_prefixes` removes
the common ``module.`` / ``<index>.`` prefixes (and a normalisation layer's own ``means`` / ``sds``
buffers, checked against the architecture's constants); :func:`to_flax_variables` renames
(``layer1.0.downsample.0`` -> ``layer1_0/downsample_0``) and converts layouts:

=====================================  ==========================================  =========================
PyTorch                                Flax                                        layout
=====================================  ==========================================  =========================
``Conv2d.weight [O, I, kh, kw]``       ``params/.../kernel [kh, kw, I, O]``        transpose (2, 3, 1, 0)
``Linear.weight [out, in]``            ``params/.../kernel [in, out]``             transpose
``*.bias``                             ``params/.../bias``                         as is
``BatchNorm2d.weight`` / ``.bias``     ``params/.../scale`` / ``bias``             as is
``running_mean`` / ``running_var``     ``batch_stats/.../mean`` / ``var``          as is
``num_batches_tracked``                (dropped)
=====================================  ==========================================  =========================

Every parameter is checked: the first checkpoint key that the architecture lacks, has another
shape, or that the checkpoint lacks raises :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import pickle
import struct
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax.app import architectures

#: ``torch.save``'s legacy-format magic number and protocol version.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_IGNORED_SUFFIXES = ("num_batches_tracked",)
_NATIVE = "<" if sys.byteorder == "little" else ">"
_NORMALIZE_BUFFERS = {"means": 0, "mean": 0, "mu": 0, "sds": 1, "stds": 1, "std": 1, "sigma": 1}


class CheckpointError(ValueError):
    """A PyTorch checkpoint that cannot be read or does not fit the architecture (one-line message)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle references something other than tensors and plain containers."""


# ------------------------------------------------------------------------------------------
# restricted unpickling
# ------------------------------------------------------------------------------------------


class _StorageType:
    """Stands in for ``torch.FloatStorage`` etc.: only carries the element dtype."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


class _Storage:
    """A storage's bytes, read on first use by ``load(key, dtype, numel)``."""

    __slots__ = ("key", "dtype", "numel", "_load", "_array")

    def __init__(self, key: str, dtype: np.dtype, numel: int | None,
                 load: Callable[[str, np.dtype, int | None], np.ndarray]):
        self.key, self.dtype, self.numel, self._load, self._array = key, dtype, numel, load, None

    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self._load(self.key, self.dtype, self.numel)
        return self._array


class TensorRef:
    """A tensor in a checkpoint: ``storage`` viewed at ``offset`` with ``shape`` and ``stride`` (in elements)."""

    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        if not isinstance(storage, _Storage):
            raise CheckpointError("a tensor in the checkpoint does not refer to a storage.")
        self.storage, self.offset = storage, int(offset)
        self.shape, self.stride = tuple(int(s) for s in shape), tuple(int(s) for s in stride)

    def numpy(self) -> np.ndarray:
        """The tensor's values as a fresh, C-contiguous NumPy array (bounds checked against the storage)."""
        data = self.storage.array()
        if len(self.shape) != len(self.stride) or any(s < 0 for s in self.shape) or any(s < 0 for s in self.stride):
            raise CheckpointError(f"a tensor has an invalid shape {list(self.shape)} / stride {list(self.stride)}.")
        if 0 in self.shape:
            return np.zeros(self.shape, data.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        if self.offset < 0 or last >= data.size:
            raise CheckpointError(f"a tensor of shape {list(self.shape)} reaches past the end of its storage "
                                  "(truncated file?).")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.shape, strides=[s * data.itemsize for s in self.stride], writeable=False
        )
        return np.array(view, copy=True, order="C")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    """Protocol-2 pickles encode ``bytes`` as ``_codecs.encode(str, "latin1")``; only that is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError("the checkpoint calls _codecs.encode with unexpected arguments.")
    return text.encode("latin1")


def _numpy_dtype(spec, align=False, copy=False):
    dtype = np.dtype(spec)
    if dtype.hasobject:
        raise UnsafeCheckpointError("the checkpoint holds a NumPy object dtype.")
    return dtype


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafeCheckpointError("the checkpoint holds a NumPy scalar that is not a plain number.")
    return np.frombuffer(data, dtype)[0]


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): _codecs_encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only tensors, storages and plain containers (see module docstring).

    ``persistent_load(pid)`` turns PyTorch's storage references into lazily read storages via
    ``load_storage(key, dtype, numel)``. Any other global raises :class:`UnsafeCheckpointError`
    without importing or looking it up.

    Example:
        >>> import io, pickle
        >>> class Evil:
        ...     def __reduce__(self):
        ...         return (eval, ("print('pwned')",))
        >>> try:
        ...     RestrictedUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()
        ... except UnsafeCheckpointError as err:
        ...     print(err)
        the checkpoint's pickle references builtins.eval, which is not a tensor or a plain container;
        refusing to load it (loading it could run code).
    """

    def __init__(self, file, load_storage: Callable[[str, np.dtype, int | None], np.ndarray] | None = None,
                 byteorder: str = "little"):
        super().__init__(file)
        self._load_storage = load_storage
        self._byteorder = "<" if byteorder == "little" else ">"
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocol-2 pickles name Python 2's module
            module = "builtins"
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]) if _STORAGE_DTYPES[name] != "bfloat16" else _bfloat16())
        raise UnsafeCheckpointError(
            f"the checkpoint's pickle references {module}.{name}, which is not a tensor or a plain container; "
            "refusing to load it (loading it could run code)."
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._load_storage is None or not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise UnsafeCheckpointError(f"the checkpoint's pickle has an unexpected persistent reference {pid!r:.80}.")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        view = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError("the checkpoint's storage reference has no storage type.")
        dtype = storage_type.dtype
        if self._byteorder != _NATIVE and dtype.itemsize > 1:
            dtype = dtype.newbyteorder(self._byteorder)
        if key not in self._storages:
            self._storages[key] = _Storage(key, dtype, None if numel is None else int(numel), self._load_storage)
        storage = self._storages[key]
        if view is not None:  # legacy storage views: (view_key, offset, size)
            _view_key, offset, size = view
            root = storage
            storage = _Storage(f"{key}[{offset}:{offset + size}]", dtype, int(size),
                               lambda *_: root.array()[int(offset): int(offset) + int(size)])
        return storage


def _bfloat16() -> np.dtype:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


# ------------------------------------------------------------------------------------------
# the two file formats
# ------------------------------------------------------------------------------------------


def _restricted_load(file, **kwargs) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


@contextlib.contextmanager
def _open_zip(path: str) -> Iterator[Any]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pickles = sorted((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), key=len)
        if not pickles:
            raise CheckpointError(f"{path!r} is a zip file but not a PyTorch checkpoint (no data.pkl inside).")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()

        def load(key: str, dtype: np.dtype, numel: int | None) -> np.ndarray:
            member = f"{prefix}data/{key}"
            if member not in names:
                raise CheckpointError(f"{path!r} lacks the storage {member!r} (truncated file?).")
            raw = zf.read(member)
            count = len(raw) // dtype.itemsize
            if numel is not None and count < numel:
                raise CheckpointError(f"{path!r}: storage {key!r} has {count} elements, expected {numel} "
                                      "(truncated file?).")
            return np.frombuffer(raw, dtype, count)

        yield _restricted_load(io.BytesIO(zf.read(pickles[0])), load_storage=load, byteorder=byteorder)


@contextlib.contextmanager
def _open_legacy(path: str) -> Iterator[Any]:
    with open(path, "rb") as fh:
        magic = _restricted_load(fh)
        if magic != LEGACY_MAGIC:
            raise CheckpointError(f"{path!r} is a pickle but not a PyTorch checkpoint (no torch.save magic number).")
        protocol = _restricted_load(fh)
        if protocol != LEGACY_PROTOCOL:
            raise CheckpointError(f"{path!r} uses PyTorch's legacy protocol {protocol!r}; "
                                  f"only {LEGACY_PROTOCOL} is supported.")
        sys_info = _restricted_load(fh)
        byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"
        offsets: dict[str, tuple[int, int]] = {}

        def load(key: str, dtype: np.dtype, numel: int | None) -> np.ndarray:
            if key not in offsets:
                raise CheckpointError(f"{path!r} lacks the storage {key!r} (truncated file?).")
            start, count = offsets[key]
            fh.seek(start)
            raw = fh.read(count * dtype.itemsize)
            if len(raw) < count * dtype.itemsize:
                raise CheckpointError(f"{path!r} ends inside storage {key!r} (truncated file?).")
            return np.frombuffer(raw, dtype, count)

        unpickler = RestrictedUnpickler(fh, load_storage=load, byteorder=byteorder)
        obj = unpickler.load()
        keys = _restricted_load(fh)
        if not isinstance(keys, list):
            raise CheckpointError(f"{path!r}: the legacy storage index is not a list.")
        for key in keys:
            header = fh.read(8)
            if len(header) < 8 or str(key) not in unpickler._storages:
                raise CheckpointError(f"{path!r}: the storage {key!r} is missing or unreferenced (truncated file?).")
            (count,) = struct.unpack("<q" if byteorder == "little" else ">q", header)
            itemsize = unpickler._storages[str(key)].dtype.itemsize
            offsets[str(key)] = (fh.tell(), count)
            fh.seek(count * itemsize, os.SEEK_CUR)
        yield obj


def _file_kind(path: str) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):
        return "zip"
    if head[:1] == b"\x80":
        return "legacy"
    import tarfile  # PyTorch < 0.4 wrote checkpoints as tar archives

    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        pass
    return "unknown"


def is_torch_checkpoint(path: str) -> bool:
    """Whether ``path`` looks like a ``torch.save`` file (zip with ``data.pkl``, or a pickle); never unpickles."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as fh:
        head = fh.read(2)
    return head == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


@contextlib.contextmanager
def _open(path: str) -> Iterator[Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} not found.")
    kind = _file_kind(path)
    if kind == "tar":
        raise CheckpointError(f"{path!r} uses PyTorch's pre-0.4 tar format; re-save it with a newer torch.save.")
    if kind == "unknown":
        raise CheckpointError(f"{path!r} is not a PyTorch checkpoint "
                              "(neither torch.save's zip nor its legacy pickle format).")
    opener = _open_zip if kind == "zip" else _open_legacy
    try:
        with opener(path) as obj:
            yield obj
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, TypeError, ValueError, AttributeError, IndexError,
            KeyError, struct.error, OverflowError, MemoryError, RecursionError) as err:
        raise CheckpointError(f"cannot read {path!r} as a PyTorch checkpoint ({type(err).__name__}: {err}).") from None


def _materialize(obj: Any) -> Any:
    if isinstance(obj, TensorRef):
        return obj.numpy()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def load_torch_checkpoint(path: str) -> Any:
    """Everything ``torch.save`` wrote to ``path``, with tensors as NumPy arrays (PyTorch's layouts).

    Raises :class:`UnsafeCheckpointError` for pickles that reference anything but tensors and plain
    containers, :class:`CheckpointError` for unreadable files, ``FileNotFoundError`` for missing ones.
    """
    with _open(path) as obj:
        return _materialize(obj)


def read_state_dict(path: str) -> tuple[collections.OrderedDict, dict[str, Any]]:
    """``(state_dict, info)`` from a checkpoint: parameter name -> NumPy array, and the other plain fields.

    The state dict is ``checkpoint["state_dict"]`` (Cohen et al., Salman et al., MACER, ...), else
    ``checkpoint["model_state_dict"]`` / ``["model"]`` / ``["net"]``, else the checkpoint itself when it
    maps names to tensors. Only its tensors are read (optimizer state stays on disk). ``info`` keeps
    the checkpoint's scalar and string fields, e.g. ``{"arch": "cifar_resnet110", "epoch": 90}``.
    """
    with _open(path) as obj:
        state, info = None, {}
        if isinstance(obj, Mapping):
            for field in ("state_dict", "model_state_dict", "model", "net"):
                if isinstance(obj.get(field), Mapping):
                    state = obj[field]
                    break
            else:
                if obj and all(isinstance(v, TensorRef) for v in obj.values()):
                    state = obj
            info = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, (str, int, float, bool))}
        if state is None:
            fields = ", ".join(map(repr, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{path!r} holds no state_dict (found {fields}); "
                                  "save model.state_dict() or {'state_dict': ...}.")
        out = collections.OrderedDict()
        for key, value in state.items():
            if isinstance(value, TensorRef):
                out[str(key)] = value.numpy()
        if not out:
            raise CheckpointError(f"the state_dict in {path!r} holds no tensors.")
        return out, info


# ------------------------------------------------------------------------------------------
# mapping onto the Flax architectures
# ------------------------------------------------------------------------------------------


def strip_wrapper_prefixes(
    state_dict: Mapping[str, np.ndarray], arch: str | None = None
) -> tuple[collections.OrderedDict, dict[str, str]]:
    """Remove ``module.`` (DataParallel) and ``<index>.`` (Sequential) prefixes shared by all keys.

    ``Sequential(NormalizeLayer, model)`` with a normalisation layer that registers its ``means`` /
    ``sds`` as buffers gives keys ``0.means``, ``0.sds`` next to ``1.*``: those are dropped, after
    checking them against ``arch``'s constants when ``arch`` is given. Returns ``(stripped state
    dict, {stripped key: original key})``.

    Example:
        >>> import numpy as np
        >>> sd, names = strip_wrapper_prefixes({"1.module.fc.weight": np.zeros((10, 64)),
        ...                                     "1.module.fc.bias": np.zeros(10)})
        >>> list(sd), names["fc.bias"]
        (['fc.weight', 'fc.bias'], '1.module.fc.bias')
    """
    items = [(k, k, v) for k, v in state_dict.items()]  # (current key, original key, value)
    while items:
        heads = {k.split(".", 1)[0] for k, _, _ in items}
        if (all("." in k for k, _, _ in items) and len(heads) == 1
                and (heads == {"module"} or next(iter(heads)).isdigit())):
            items = [(k.split(".", 1)[1], o, v) for k, o, v in items]
            continue
        if len(heads) == 2 and all(h.isdigit() for h in heads) and all("." in k for k, _, _ in items):
            first, second = sorted(heads, key=int)
            buffers = [(k.split(".", 1)[1], o, v) for k, o, v in items if k.split(".", 1)[0] == first]
            if all(name in _NORMALIZE_BUFFERS for name, _, _ in buffers):
                _check_normalization(buffers, arch)
                items = [(k, o, v) for k, o, v in items if k.split(".", 1)[0] == second]
                continue
        break
    return collections.OrderedDict((k, v) for k, _, v in items), {k: o for k, o, _ in items}


def _check_normalization(buffers: list[tuple[str, str, np.ndarray]], arch: str | None) -> None:
    if arch is None:
        return
    dataset = architectures.arch_spec(arch).normalization
    expected = architectures.NORMALIZATION.get(dataset) if dataset else None
    for name, original, value in buffers:
        want = None if expected is None else expected[_NORMALIZE_BUFFERS[name]]
        got = np.asarray(value, np.float64).reshape(-1)
        if want is None or got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-6):
            raise CheckpointError(
                f"the checkpoint's normalisation layer has {original} = {np.round(got, 4).tolist()}, but {arch} "
                f"normalises with {None if want is None else np.round(want, 4).tolist()}; "
                "the model would see other inputs."
            )


def _flax_path(torch_module: str) -> tuple[str, ...]:
    """``"layer1.0.downsample.0"`` -> ``("layer1_0", "downsample_0")`` (an index joins its parent with ``_``)."""
    out: list[str] = []
    for part in torch_module.split("."):
        if part.isdigit() and out:
            out[-1] = f"{out[-1]}_{part}"
        else:
            out.append(part)
    return tuple(out)


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, prefix + (k,)))
        else:
            flat[prefix + (k,)] = v
    return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return tree


def _target(key: str, expected: Mapping[tuple[str, ...], Any]) -> tuple[tuple[str, ...], str] | None:
    """The Flax variable path for PyTorch ``key`` and how to convert it, or ``None`` if there is none."""
    module, _, leaf = key.rpartition(".")
    path = _flax_path(module) if module else ()
    if leaf == "weight":
        if ("params", *path, "scale") in expected:
            return ("params", *path, "scale"), "as_is"
        if ("params", *path, "kernel") in expected:
            ndim = len(expected[("params", *path, "kernel")].shape)
            return ("params", *path, "kernel"), {4: "conv", 2: "linear"}.get(ndim, "as_is")
        return None
    table = {"bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
    if leaf in table:
        collection, name = table[leaf]
        target = (collection, *path, name)
        return (target, "as_is") if target in expected else None
    return None


def _to_flax_layout(value: np.ndarray, how: str) -> np.ndarray:
    if how == "conv":
        return np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value
    if how == "linear":
        return value.T if value.ndim == 2 else value
    return value


def _torch_shape(flax_shape: tuple[int, ...], how: str) -> tuple[int, ...]:
    if how == "conv":
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if how == "linear":
        return tuple(reversed(flax_shape))
    return tuple(flax_shape)


def _torch_name(path: tuple[str, ...]) -> str:
    """Inverse of the renaming, for messages.

    ``("params", "layer1_0", "conv1", "kernel")`` -> ``layer1.0.conv1.weight``.
    """
    collection, *modules, leaf = path
    leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}.get(leaf, leaf)
    parts = []
    for m in modules:
        base, _, index = m.rpartition("_")
        parts.append(f"{base}.{index}" if base and index.isdigit() else m)
    return ".".join(parts + [leaf])


def infer_num_classes(state_dict: Mapping[str, np.ndarray], arch: str) -> int | None:
    """Rows of the classifier's weight (``fc.weight`` / ``lin2.weight`` / ``lin3.weight``) in a stripped state dict."""
    weight = state_dict.get(f"{architectures.arch_spec(arch).classifier}.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def to_flax_variables(
    state_dict: Mapping[str, np.ndarray], arch: str, *, num_classes: int | None = None,
    original_names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Flax variables of ``arch`` from a (prefix-stripped) PyTorch state dict; every parameter checked.

    ``num_classes`` defaults to the rows of the checkpoint's classifier weight. Returns
    ``{"params": ..., "batch_stats": ...}`` (no ``batch_stats`` for nets without BatchNorm) of float32
    ``jax.Array``. Raises :class:`CheckpointError` naming the first checkpoint parameter (in checkpoint
    order, by its original name when ``original_names`` is given) that ``arch`` lacks or that has
    another shape, or else the first parameter of ``arch`` the checkpoint lacks.
    """
    names = dict(original_names or {})
    if num_classes is None:
        num_classes = infer_num_classes(state_dict, arch)
    expected = _flatten(architectures.abstract_variables(arch, num_classes=num_classes))
    found: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in state_dict.items():
        if key.rpartition(".")[2] in _IGNORED_SUFFIXES:
            continue
        shown = names.get(key, key)
        target = _target(key, expected)
        if target is None:
            raise CheckpointError(
                f"checkpoint does not match {arch}: it has parameter {shown!r} (shape {list(np.shape(value))}), "
                f"which {arch} does not have; is it a checkpoint of another architecture?"
            )
        path, how = target
        want = _torch_shape(expected[path].shape, how)
        if tuple(np.shape(value)) != want:
            raise CheckpointError(
                f"checkpoint does not match {arch}: parameter {shown!r} has shape {list(np.shape(value))}, "
                f"but {arch} needs {list(want)}; is it a checkpoint of another architecture?"
            )
        found[path] = np.asarray(_to_flax_layout(np.asarray(value), how), np.float32)
    prefix = next((names[k][: -len(k)] for k in state_dict if k in names and names[k].endswith(k)), "")
    for path in expected:
        if path not in found:
            raise CheckpointError(
                f"checkpoint does not match {arch}: it lacks parameter {prefix + _torch_name(path)!r} "
                f"(shape {list(_torch_shape(expected[path].shape, _target_kind(path, expected)))}); "
                "is it a checkpoint of another architecture?"
            )
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), _unflatten(found))


def _target_kind(path: tuple[str, ...], expected: Mapping[tuple[str, ...], Any]) -> str:
    if path[-1] == "kernel":
        return {4: "conv", 2: "linear"}.get(len(expected[path].shape), "as_is")
    return "as_is"


def load_torch_model(
    path: str, arch: str | None = None, *, num_classes: int | None = None
) -> tuple[Callable[[Any, jax.Array], jax.Array], dict[str, Any], dict[str, Any]]:
    """Load a PyTorch checkpoint into a Flax architecture -> ``(apply_fn, variables, config)``.

    ``arch`` defaults to the checkpoint's ``"arch"`` field. ``apply_fn(variables, x) -> logits
    [batch, num_classes]`` with ``x: [batch, *config["input_shape"]]`` in [0, 1], channels last.
    ``config`` records ``architecture``, ``input_shape``, ``num_classes`` and ``source``. Raises
    :class:`CheckpointError` / :class:`UnsafeCheckpointError` (both ``ValueError``) with one-line messages.
    """
    state, info = read_state_dict(path)
    if arch is None:
        arch = info.get("arch")
        if not isinstance(arch, str) or arch not in architectures.ARCHITECTURES:
            recorded = f" (it records arch {arch!r})" if arch is not None else ""
            raise CheckpointError(
                f"pass --arch for {path!r}{recorded}; one of {', '.join(architectures.ARCHITECTURES)}."
            )
    spec = architectures.arch_spec(arch)
    stripped, names = strip_wrapper_prefixes(state, arch)
    if num_classes is None:
        num_classes = infer_num_classes(stripped, arch) or spec.num_classes
    variables = to_flax_variables(stripped, arch, num_classes=num_classes, original_names=names)
    model = architectures.get_architecture(arch, num_classes=num_classes)
    config = {
        "architecture": arch,
        "input_shape": list(spec.input_shape),
        "num_classes": int(num_classes),
        "source": {"format": "pytorch", "path": os.path.basename(path),
                   **{k: v for k, v in info.items() if k != "state_dict"}},
    }
    return model.apply, variables, config
