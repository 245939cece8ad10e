"""Write the PyTorch test fixtures of ``tests/test_torch_checkpoint.py`` (needs ``torch``; run once).

::

    python scripts/make_torch_fixtures.py                 # small fixtures -> tests/data/torch/
    python scripts/make_torch_fixtures.py --large DIR     # + resnet50 / cifar_resnet110 -> DIR (too big to commit)

For each small architecture (``cifar_resnet20``, ``mnist_net``, ``small_mnist_net``,
``small_mnist_pca_net``, ``swiss_roll_net``) it builds the PyTorch network with random weights (fixed
seed), wraps it as the reference code does, saves it with ``torch.save`` and records PyTorch's logits
on two random inputs:

* ``<arch>.pth.tar.xz``: the ``torch.save`` file, xz-compressed (tests decompress it first). Weights
  and BatchNorm statistics are random multiples of a power of two near their scale, so the files
  compress well and stay exact in float32.
* ``<arch>_logits.npz``: ``x`` (inputs ``[2, *input_shape]``, channels last, float32 in [0, 1]),
  ``logits`` (PyTorch's, float32 ``[2, num_classes]``), ``logits_float64`` (the same network run in
  float64 by PyTorch, for checks free of float32 rounding), ``torch_version``, ``prefix`` (the wrapper
  prefix of the state-dict keys) and ``format`` (``zip`` or ``legacy``).

The wrappers and formats differ on purpose: ``cifar_resnet20`` is ``Sequential(NormalizeLayer,
DataParallel(net))`` (keys ``1.module.*``), ``mnist_net`` ``Sequential(NormalizeLayer, net)`` (keys
``1.*``), ``small_mnist_net`` the same in PyTorch's legacy (pre-1.6) format, ``small_mnist_pca_net``
a bare ``state_dict`` (keys ``*``), ``swiss_roll_net`` ``Sequential(Identity, net)`` inside
``{"arch", "state_dict", "epoch", "optimizer"}`` with SGD momentum buffers.

``--large DIR`` writes ``resnet50`` (torchvision's, ``Sequential(NormalizeLayer, DataParallel(net))``,
one 64x64 input) and ``cifar_resnet110`` (one 32x32 input) checkpoints and logits, uncompressed, to
``DIR``; ``SMOOTHJAX_TORCH_LARGE_FIXTURES=DIR pytest -m slow tests/test_torch_checkpoint.py`` then
checks the importer against them.

The PyTorch networks below are written from the architectures' descriptions (see
``smoothjax/app/architectures.py``); module names follow the reference code, since checkpoint keys
are built from them.
"""

from __future__ import annotations

import argparse
import lzma
import math
import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "torch")
SEED = 20240517

NORMALIZATION = {
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "mnist": ([0.1307], [0.3081]),
    "small_mnist": ([0.1307], [0.2307]),
}


class NormalizeLayer(nn.Module):
    """Per-channel standardisation with constants held as plain attributes (no state-dict entries)."""

    def __init__(self, dataset: str):
        super().__init__()
        means, sds = NORMALIZATION[dataset]
        self.means = torch.tensor(means)
        self.sds = torch.tensor(sds)

    def forward(self, x):
        return (x - self.means[None, :, None, None]) / self.sds[None, :, None, None]


class Block(nn.Module):
    """Two 3x3 conv + BN, ReLU between, shortcut identity or 1x1 conv + BN, ReLU after the sum."""

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    """Depth 6n + 2: 3x3 stem (16), stages of n blocks at widths 16/32/64, AvgPool2d(8), fc."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        inplanes, layers = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(Block(inplanes, planes, stride if i == 0 else 1))
                inplanes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class MnistNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 4, stride=2, padding=1)
        self.lin1 = nn.Linear(32 * 7 * 7, 100)
        self.lin2 = nn.Linear(100, 10)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.lin2(F.relu(self.lin1(x.flatten(1))))


class SmallMnistNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 2)
        self.lin1 = nn.Linear(4 * 6 * 6, 100)
        self.lin2 = nn.Linear(100, 10)

    def forward(self, x):
        return self.lin2(F.relu(self.lin1(F.relu(self.conv1(x)).flatten(1))))


class MLP3(nn.Module):
    def __init__(self, inputs: int, hidden: int, classes: int):
        super().__init__()
        self.lin1 = nn.Linear(inputs, hidden)
        self.lin2 = nn.Linear(hidden, hidden)
        self.lin3 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.lin3(F.relu(self.lin2(F.relu(self.lin1(x.flatten(1))))))


def _randomize(model: nn.Module, inputs: torch.Tensor, generator: torch.Generator, quantize: bool) -> None:
    """Random weights; BatchNorm statistics measured on ``inputs`` then perturbed (so activations stay O(1)).

    ``quantize``: every value a multiple of a power of two, about 16 steps per standard deviation.
    """

    def fill(t: torch.Tensor, values: torch.Tensor) -> None:
        if quantize:
            step = 2.0 ** (math.floor(math.log2(float(values.std()) + 1e-12)) - 3)
            values = torch.round(values / step) * step
        t.copy_(values)

    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                fill(module.weight, torch.randn(module.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
                if module.bias is not None:
                    fill(module.bias, 0.1 * torch.randn(module.bias.shape, generator=generator))
        for bn in norms:
            c = bn.num_features
            fill(bn.weight, 1 + 0.2 * torch.randn(c, generator=generator))
            fill(bn.bias, 0.2 * torch.randn(c, generator=generator))
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batch
        if norms:
            model.train()
            model(inputs)
            model.eval()
        for bn in norms:
            c = bn.num_features
            fill(bn.running_mean, bn.running_mean + 0.1 * torch.randn(c, generator=generator))
            fill(bn.running_var, bn.running_var * (0.8 + 0.4 * torch.rand(c, generator=generator)))
            bn.running_var.clamp_(min=1e-3)
            bn.momentum = 0.1
            bn.num_batches_tracked.fill_(1000)


def _inputs(shape: tuple[int, ...], count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` inputs in [0, 1] on a 1/256 grid, PyTorch layout (NCHW for images)."""
    return torch.floor(torch.rand((count, *shape), generator=generator) * 256) / 256


def _save(obj, path: str, legacy: bool) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


def _logits64(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The same network's logits computed in float64 (a copy of ``model`` converted with ``.double()``)."""
    import copy

    twin = copy.deepcopy(model).double()
    for module in twin.modules():
        if isinstance(module, NormalizeLayer):
            module.means, module.sds = module.means.double(), module.sds.double()
    with torch.no_grad():
        return twin(x.double()).numpy()


def _record(path: str, x: torch.Tensor, logits: torch.Tensor, logits64: np.ndarray, prefix: str, fmt: str) -> None:
    x = x.numpy()
    if x.ndim == 4:
        x = np.transpose(x, (0, 2, 3, 1))  # NCHW -> NHWC
    np.savez(path, x=np.ascontiguousarray(x, np.float32), logits=logits.numpy().astype(np.float32),
             logits_float64=logits64, torch_version=np.array(torch.__version__), prefix=np.array(prefix),
             format=np.array(fmt))


def small_fixtures(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    generator = torch.Generator().manual_seed(SEED)
    cases = [
        # arch, network, normalisation, input shape (PyTorch), wrapper, format
        ("cifar_resnet20", CifarResNet(20), "cifar10", (3, 32, 32), "sequential+dataparallel", "zip"),
        ("mnist_net", MnistNet(), "mnist", (1, 28, 28), "sequential", "zip"),
        ("small_mnist_net", SmallMnistNet(), "small_mnist", (1, 7, 7), "sequential", "legacy"),
        ("small_mnist_pca_net", MLP3(10, 100, 10), None, (1, 1, 10), "bare", "zip"),
        ("swiss_roll_net", MLP3(2, 10, 2), None, (2,), "sequential+optimizer", "zip"),
    ]
    for arch, net, dataset, shape, wrapper, fmt in cases:
        norm = NormalizeLayer(dataset) if dataset else nn.Identity()
        _randomize(net, norm(_inputs(shape, 16, generator)), generator, quantize=True)
        if wrapper == "sequential+dataparallel":
            model, prefix = nn.Sequential(norm, nn.DataParallel(net)), "1.module."
        elif wrapper == "bare":
            model, prefix = nn.Sequential(norm, net), ""
        else:
            model, prefix = nn.Sequential(norm, net), "1."
        model.eval()
        x = _inputs(shape, 2, generator)
        if wrapper == "sequential+optimizer":  # one SGD step so the optimizer holds momentum buffers
            opt = torch.optim.SGD(model.parameters(), lr=2.0 ** -8, momentum=0.9, weight_decay=1e-4)
            model(x).sum().backward()
            opt.step()
            with torch.no_grad():  # back onto the grid
                for p in model.parameters():
                    p.copy_(torch.round(p * 2.0 ** 12) / 2.0 ** 12)
        with torch.no_grad():
            logits = model(x)
        if wrapper == "bare":
            obj = net.state_dict()
        else:
            obj = {"arch": arch, "state_dict": model.state_dict(), "epoch": 90}
            if wrapper == "sequential+optimizer":
                obj["optimizer"] = opt.state_dict()
        raw = os.path.join(out, f"{arch}.pth.tar")
        _save(obj, raw, legacy=fmt == "legacy")
        with open(raw, "rb") as fh, lzma.open(raw + ".xz", "wb", preset=9) as dst:
            dst.write(fh.read())
        os.remove(raw)
        _record(os.path.join(out, f"{arch}_logits.npz"), x, logits, _logits64(model, x), prefix, fmt)
        print(f"{arch}: {os.path.getsize(raw + '.xz') / 1024:.0f} KB, logits {logits.numpy().round(3).tolist()}")


def large_fixtures(out: str) -> None:
    import torchvision

    os.makedirs(out, exist_ok=True)
    generator = torch.Generator().manual_seed(SEED + 1)
    for arch, net, dataset, shape, prefix in (
        ("cifar_resnet110", CifarResNet(110), "cifar10", (3, 32, 32), "1."),
        ("resnet50", torchvision.models.resnet50(), "imagenet", (3, 64, 64), "1.module."),
    ):
        _randomize(net, NormalizeLayer(dataset)(_inputs(shape, 16, generator)), generator, quantize=False)
        inner = nn.DataParallel(net) if prefix == "1.module." else net
        model = nn.Sequential(NormalizeLayer(dataset), inner).eval()
        x = _inputs(shape, 1, generator)
        with torch.no_grad():
            logits = model(x)
        _save({"arch": arch, "state_dict": model.state_dict(), "epoch": 90}, os.path.join(out, f"{arch}.pth.tar"),
              legacy=False)
        _record(os.path.join(out, f"{arch}_logits.npz"), x, logits, _logits64(model, x), prefix, "zip")
        print(f"{arch}: written to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=OUT, help="directory of the small fixtures (default tests/data/torch)")
    parser.add_argument("--large", default=None, metavar="DIR",
                        help="also write resnet50 / cifar_resnet110 fixtures to DIR")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    small_fixtures(args.out)
    if args.large:
        large_fixtures(args.large)


if __name__ == "__main__":
    main()
