"""Test helpers independent of smoothjax: a ``torch.save`` writer and a NumPy forward pass, both without torch.

* :func:`write_torch_zip` / :func:`write_torch_legacy` write nested dicts / lists / tuples / strings /
  numbers with NumPy arrays as tensors in PyTorch's zip (>= 1.6) and legacy (< 1.6) formats, emitting
  the pickle opcodes directly (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
  ``torch.FloatStorage`` ... as globals), so they share no code with the reader under test.
* :func:`state_dict_shapes` lists PyTorch's parameter names and shapes for the CIFAR ResNets (Cohen et
  al.'s ``archs/cifar_resnet.py``) and torchvision's ResNet-50; :func:`random_state_dict` fills them.
* :func:`forward` runs those networks in float64 NumPy, in PyTorch's layouts (NCHW activations, OIHW
  kernels, ``[out, in]`` linear weights), with the normalisation layer first and BatchNorm in eval mode.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage", np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}
NORMALIZATION = {
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}


class StridedTensor:
    """A tensor that is a strided view of ``base`` (1-D storage): to test non-contiguous tensors."""

    def __init__(self, base: np.ndarray, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.base, self.offset, self.shape, self.stride = base, offset, shape, stride


# ------------------------------------------------------------------------------------------
# writer
# ------------------------------------------------------------------------------------------


class _Pickler:
    """Protocol-2 pickle opcodes for plain containers and tensors, as ``torch.save`` writes them."""

    def __init__(self, legacy: bool):
        self.out = bytearray()
        self.legacy = legacy
        self.storages: list[tuple[str, np.ndarray]] = []

    def dump(self, obj) -> bytes:
        self.out += pickle.PROTO + b"\x02"
        self.save(obj)
        self.out += pickle.STOP
        return bytes(self.out)

    def glob(self, module: str, name: str) -> None:
        self.out += pickle.GLOBAL + f"{module}\n{name}\n".encode()

    def save(self, obj) -> None:
        out = self.out
        if obj is None:
            out += pickle.NONE
        elif obj is True or obj is False:
            out += pickle.NEWTRUE if obj else pickle.NEWFALSE
        elif isinstance(obj, int):
            if -(2**31) <= obj < 2**31:
                out += pickle.BININT + struct.pack("<i", obj)
            else:
                raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
                out += pickle.LONG1 + bytes([len(raw)]) + raw
        elif isinstance(obj, float):
            out += pickle.BINFLOAT + struct.pack(">d", obj)
        elif isinstance(obj, str):
            raw = obj.encode()
            out += pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw
        elif isinstance(obj, (np.ndarray, StridedTensor)):
            self.save_tensor(obj)
        elif isinstance(obj, collections.OrderedDict):
            self.glob("collections", "OrderedDict")
            out += pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.MARK
            for k, v in obj.items():
                self.save(k)
                self.save(v)
            out += pickle.SETITEMS
        elif isinstance(obj, dict):
            out += pickle.EMPTY_DICT + pickle.MARK
            for k, v in obj.items():
                self.save(k)
                self.save(v)
            out += pickle.SETITEMS
        elif isinstance(obj, list):
            out += pickle.EMPTY_LIST + pickle.MARK
            for v in obj:
                self.save(v)
            out += pickle.APPENDS
        elif isinstance(obj, tuple):
            out += pickle.MARK
            for v in obj:
                self.save(v)
            out += pickle.TUPLE
        else:
            raise TypeError(f"cannot write {type(obj).__name__}")

    def save_tensor(self, tensor) -> None:
        if isinstance(tensor, StridedTensor):
            base = np.ascontiguousarray(tensor.base).reshape(-1)
            offset, shape, stride = tensor.offset, tensor.shape, tensor.stride
        else:
            base = np.ascontiguousarray(tensor).reshape(-1)
            offset, shape = 0, tensor.shape
            stride = tuple(int(np.prod(tensor.shape[i + 1:])) for i in range(tensor.ndim))
        key = str(len(self.storages))
        self.storages.append((key, base))
        self.glob("torch._utils", "_rebuild_tensor_v2")
        self.out += pickle.MARK
        # persistent id: ('storage', storage type, key, location, numel[, view metadata])
        self.out += pickle.MARK
        self.save("storage")
        self.glob("torch", STORAGE_NAMES[base.dtype])
        self.save(key)
        self.save("cpu")
        self.save(int(base.size))
        if self.legacy:
            self.save(None)
        self.out += pickle.TUPLE + pickle.BINPERSID
        self.save(int(offset))
        self.save(tuple(int(s) for s in shape))
        self.save(tuple(int(s) for s in stride))
        self.save(False)
        self.save(collections.OrderedDict())
        self.out += pickle.TUPLE + pickle.REDUCE


def write_torch_zip(path: str, obj, archive: str = "archive") -> None:
    """Write ``obj`` as ``torch.save`` (zip format) would: ``archive/data.pkl`` + ``archive/data/<key>``."""
    pickler = _Pickler(legacy=False)
    data = pickler.dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive}/data.pkl", data)
        zf.writestr(f"{archive}/byteorder", "little")
        for key, base in pickler.storages:
            zf.writestr(f"{archive}/data/{key}", base.astype(base.dtype.newbyteorder("<")).tobytes())
        zf.writestr(f"{archive}/version", "3\n")


def write_torch_legacy(path: str, obj) -> None:
    """Write ``obj`` as ``torch.save(..., _use_new_zipfile_serialization=False)`` would."""
    pickler = _Pickler(legacy=True)
    data = pickler.dump(obj)
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    with open(path, "wb") as fh:
        for header in (LEGACY_MAGIC, 1001, sys_info):
            fh.write(pickle.dumps(header, protocol=2))
        fh.write(data)
        keys = sorted(key for key, _ in pickler.storages)
        fh.write(pickle.dumps(keys, protocol=2))
        storages = dict(pickler.storages)
        for key in keys:
            fh.write(struct.pack("<q", storages[key].size))
            fh.write(storages[key].astype(storages[key].dtype.newbyteorder("<")).tobytes())


# ------------------------------------------------------------------------------------------
# PyTorch parameter names and a NumPy forward pass
# ------------------------------------------------------------------------------------------


def _conv_bn(sd, prefix, cin, cout, k, bn_prefix):
    sd[f"{prefix}.weight"] = (cout, cin, k, k)
    for name, shape in (("weight", (cout,)), ("bias", (cout,)), ("running_mean", (cout,)), ("running_var", (cout,)),
                        ("num_batches_tracked", ())):
        sd[f"{bn_prefix}.{name}"] = shape


def state_dict_shapes(arch: str, num_classes: int | None = None) -> collections.OrderedDict:
    """PyTorch ``state_dict`` names -> shapes, in module order, for ``cifar_resnet<depth>`` and ``resnet50``."""
    sd = collections.OrderedDict()
    if arch.startswith("cifar_resnet"):
        n = (int(arch[len("cifar_resnet"):]) - 2) // 6
        _conv_bn(sd, "conv1", 3, 16, 3, "bn1")
        inplanes = 16
        for stage, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            for i in range(n):
                p = f"layer{stage}.{i}"
                _conv_bn(sd, f"{p}.conv1", inplanes, planes, 3, f"{p}.bn1")
                _conv_bn(sd, f"{p}.conv2", planes, planes, 3, f"{p}.bn2")
                if i == 0 and (stride != 1 or inplanes != planes):
                    _conv_bn(sd, f"{p}.downsample.0", inplanes, planes, 1, f"{p}.downsample.1")
                inplanes = planes
        sd["fc.weight"], sd["fc.bias"] = (num_classes or 10, 64), (num_classes or 10,)
    elif arch == "resnet50":
        _conv_bn(sd, "conv1", 3, 64, 7, "bn1")
        inplanes = 64
        for stage, (planes, blocks, _stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
            for i in range(blocks):
                p = f"layer{stage}.{i}"
                _conv_bn(sd, f"{p}.conv1", inplanes, planes, 1, f"{p}.bn1")
                _conv_bn(sd, f"{p}.conv2", planes, planes, 3, f"{p}.bn2")
                _conv_bn(sd, f"{p}.conv3", planes, 4 * planes, 1, f"{p}.bn3")
                if i == 0:
                    _conv_bn(sd, f"{p}.downsample.0", inplanes, 4 * planes, 1, f"{p}.downsample.1")
                inplanes = 4 * planes
        sd["fc.weight"], sd["fc.bias"] = (num_classes or 1000, 2048), (num_classes or 1000,)
    else:
        raise ValueError(arch)
    return sd


def random_state_dict(arch: str, seed: int, num_classes: int | None = None) -> collections.OrderedDict:
    """Random float32 weights (He scale) and BatchNorm statistics for :func:`state_dict_shapes`."""
    rng = np.random.default_rng(seed)
    sd = collections.OrderedDict()
    for name, shape in state_dict_shapes(arch, num_classes).items():
        leaf = name.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            value = np.array(1000, np.int64)
        elif leaf == "running_var":
            value = rng.uniform(1.0, 2.0, shape)
        elif leaf == "weight" and len(shape) == 1:
            value = rng.uniform(0.5, 1.0, shape)
        elif leaf == "weight":
            value = rng.normal(0.0, np.sqrt(1.0 / np.prod(shape[1:])), shape)
        else:
            value = rng.normal(0.0, 0.1, shape)
        sd[name] = np.asarray(value, np.int64 if leaf == "num_batches_tracked" else np.float32)
    return sd


def _conv(x, w, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", windows, w, optimize=True)


def _bn(x, sd, p, eps=1e-5):
    shape = (1, -1, 1, 1)
    scale = sd[f"{p}.weight"].reshape(shape) / np.sqrt(sd[f"{p}.running_var"].reshape(shape) + eps)
    return (x - sd[f"{p}.running_mean"].reshape(shape)) * scale + sd[f"{p}.bias"].reshape(shape)


def _maxpool3s2p1(x):
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(-1, -2))


def forward(arch: str, sd, x_nhwc: np.ndarray) -> np.ndarray:
    """Logits ``[batch, classes]`` of ``arch`` with PyTorch state dict ``sd`` on ``x_nhwc`` in [0, 1], float64."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    x = np.transpose(np.asarray(x_nhwc, np.float64), (0, 3, 1, 2))
    mean, std = (np.array(c, np.float32).astype(np.float64).reshape(1, -1, 1, 1)  # PyTorch keeps them in float32
                 for c in NORMALIZATION["cifar10" if arch.startswith("cifar") else "imagenet"])
    x = (x - mean) / std
    if arch.startswith("cifar_resnet"):
        n = (int(arch[len("cifar_resnet"):]) - 2) // 6
        x = relu(_bn(_conv(x, sd["conv1.weight"], 1, 1), sd, "bn1"))
        for stage, stride in ((1, 1), (2, 2), (3, 2)):
            for i in range(n):
                p, s = f"layer{stage}.{i}", stride if i == 0 else 1
                out = relu(_bn(_conv(x, sd[f"{p}.conv1.weight"], s, 1), sd, f"{p}.bn1"))
                out = _bn(_conv(out, sd[f"{p}.conv2.weight"], 1, 1), sd, f"{p}.bn2")
                if f"{p}.downsample.0.weight" in sd:
                    x = _bn(_conv(x, sd[f"{p}.downsample.0.weight"], s, 0), sd, f"{p}.downsample.1")
                x = relu(out + x)
    else:
        x = _maxpool3s2p1(relu(_bn(_conv(x, sd["conv1.weight"], 2, 3), sd, "bn1")))
        for stage, blocks, stride in ((1, 3, 1), (2, 4, 2), (3, 6, 2), (4, 3, 2)):
            for i in range(blocks):
                p, s = f"layer{stage}.{i}", stride if i == 0 else 1
                out = relu(_bn(_conv(x, sd[f"{p}.conv1.weight"], 1, 0), sd, f"{p}.bn1"))
                out = relu(_bn(_conv(out, sd[f"{p}.conv2.weight"], s, 1), sd, f"{p}.bn2"))
                out = _bn(_conv(out, sd[f"{p}.conv3.weight"], 1, 0), sd, f"{p}.bn3")
                if f"{p}.downsample.0.weight" in sd:
                    x = _bn(_conv(x, sd[f"{p}.downsample.0.weight"], s, 0), sd, f"{p}.downsample.1")
                x = relu(out + x)
    x = x.mean(axis=(2, 3))
    return x @ sd["fc.weight"].T + sd["fc.bias"]
