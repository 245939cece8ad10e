"""Flax (linen) versions of the classifiers published with randomized-smoothing papers.

Every model takes inputs in **[0, 1] pixel space, channels last** (``x: [batch, H, W, C]``; the
MNIST nets also take ``[batch, H, W]``), standardises them in its first layer and returns logits
``[batch, num_classes]``. Gaussian noise is therefore added before the standardisation, so radii
are in pixel units, as in Cohen et al.'s ``NormalizeLayer``. BatchNorm runs in inference mode
(running statistics), so ``model.apply(variables, x)`` is the pure
``apply_fn(params, x_batch) -> logits`` that :func:`smoothjax.pipeline.certify` takes, with
``params = {"params": ..., "batch_stats": ...}``.

Architectures (``--arch`` names are those of the reference code):

=======================  =====================  ==============  =================================
name                     input ``[H, W, C]``    normalisation   reference
=======================  =====================  ==============  =================================
``cifar_resnet20``       ``[32, 32, 3]``        CIFAR-10        Cohen et al. 2019, ``archs/cifar_resnet.py``
                                                                (depth 6n+2, BasicBlock, widths 16/32/64)
``cifar_resnet110``      ``[32, 32, 3]``        CIFAR-10        same, depth 110
``resnet50``             ``[224, 224, 3]``      ImageNet        torchvision ``resnet50``
                                                                (Bottleneck, stride in the 3x3 conv)
``mnist_net``            ``[28, 28, 1]``        MNIST           Levine & Feizi's second-order repository,
                                                                ``archs/mnist_classifier.py``
``small_mnist_net``      ``[7, 7, 1]``          small MNIST     same repository, ``archs/small_mnist_classifier.py``
``small_mnist_pca_net``  ``[10]``               none            same repository, ``archs/small_mnist_pca_classifier.py``
``swiss_roll_net``       ``[2]``                none            same repository, ``archs/swiss_roll_classifier.py``
=======================  =====================  ==============  =================================

Cohen et al.: "Certified Adversarial Robustness via Randomized Smoothing" (ICML 2019), code
github.com/locuslab/smoothing. Levine, Kumar, Goldstein & Feizi: "Tight Second-Order Certificates
for Randomized Smoothing" (2020), code github.com/alevine0/smoothing_second_order. Normalisation
constants are those of the papers' ``datasets.py`` (small MNIST: mean 0.1307, std 0.2307, the value
the reference code uses for 7x7 block-averaged MNIST); the PCA and Swiss-roll nets use no
normalisation (``torch.nn.Identity`` in the reference code).

Layouts follow PyTorch wherever it matters for importing weights: convolutions use PyTorch's
explicit symmetric padding (not ``"SAME"``, which pads stride-2 convolutions asymmetrically), the
MNIST nets flatten feature maps in PyTorch's channel-major ``[C, H, W]`` order, BatchNorm uses
``epsilon=1e-5``, and global average pooling replaces ``AvgPool2d(8)`` / ``AdaptiveAvgPool2d(1)``
(the same numbers at the reference input sizes). Submodules carry PyTorch's names with ``.``
before an index written ``_`` (``layer1.0.downsample.0`` -> ``layer1_0/downsample_0``), which is
what :mod:`smoothjax.app.torch_checkpoint` relies on.

Every model computes in ``dtype`` (float32 by default) whatever the input dtype, so float32 inputs
give float32 logits even with ``jax_enable_x64`` on; the normalisation constants are float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

#: Per-channel (means, standard deviations) of the reference code's ``NormalizeLayer``, float32.
NORMALIZATION: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "cifar10": (np.array([0.4914, 0.4822, 0.4465], np.float32), np.array([0.2023, 0.1994, 0.2010], np.float32)),
    "imagenet": (np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)),
    "mnist": (np.array([0.1307], np.float32), np.array([0.3081], np.float32)),
    "small_mnist": (np.array([0.1307], np.float32), np.array([0.2307], np.float32)),
}

_BN_EPSILON = 1e-5  # PyTorch's BatchNorm2d default


class ArchitectureError(ValueError):
    """An unknown architecture name or an input it cannot take."""


# ------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (last axis), constants float32: Cohen et al.'s ``NormalizeLayer``.

    ``dataset`` names an entry of :data:`NORMALIZATION`; ``None`` is the identity.
    """

    dataset: str | None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.dataset is None:
            return x
        mean, std = (jnp.asarray(c, self.dtype).reshape((1,) * (x.ndim - 1) + (-1,))
                     for c in NORMALIZATION[self.dataset])
        return (x - mean) / std


def _conv(features: int, kernel: int, stride: int, padding: int, name: str, dtype: Any, bias: bool = False) -> nn.Conv:
    """PyTorch's ``Conv2d(kernel, stride, padding)`` with explicit symmetric padding."""
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=((padding, padding), (padding, padding)),
        use_bias=bias, dtype=dtype, name=name,
    )


def _bn(name: str, dtype: Any) -> nn.BatchNorm:
    """PyTorch's ``BatchNorm2d`` in eval mode (running statistics, eps 1e-5)."""
    return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=_BN_EPSILON, dtype=dtype, name=name)


def _images(x: jax.Array, dtype: Any, channels: int) -> jax.Array:
    """Cast to ``dtype``; ``[batch, H, W]`` -> ``[batch, H, W, 1]`` for one-channel models."""
    x = jnp.asarray(x, dtype)
    if x.ndim == 3 and channels == 1:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] != channels:
        raise ArchitectureError(f"expected images [batch, H, W, {channels}] (channels last), "
                                f"got shape {list(x.shape)}.")
    return x


def _flatten_channel_major(x: jax.Array) -> jax.Array:
    """``[batch, H, W, C]`` -> ``[batch, C * H * W]`` in PyTorch's ``view(batch, -1)`` order."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape((x.shape[0], -1))


# ------------------------------------------------------------------------------------------
# residual networks
# ------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity (or 1x1 conv + BN) shortcut; stride on the first."""

    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = nn.relu(_bn("bn1", self.dtype)(_conv(self.planes, 3, self.stride, 1, "conv1", self.dtype)(x)))
        out = _bn("bn2", self.dtype)(_conv(self.planes, 3, 1, 1, "conv2", self.dtype)(out))
        residual = x
        if self.downsample:
            residual = _bn("downsample_1", self.dtype)(
                _conv(self.planes, 1, self.stride, 0, "downsample_0", self.dtype)(x))
        return nn.relu(out + residual)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck: 1x1, 3x3 (carrying the stride), 1x1 to ``4 * planes``, each with BatchNorm."""

    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = nn.relu(_bn("bn1", self.dtype)(_conv(self.planes, 1, 1, 0, "conv1", self.dtype)(x)))
        out = nn.relu(_bn("bn2", self.dtype)(_conv(self.planes, 3, self.stride, 1, "conv2", self.dtype)(out)))
        out = _bn("bn3", self.dtype)(_conv(4 * self.planes, 1, 1, 0, "conv3", self.dtype)(out))
        residual = x
        if self.downsample:
            residual = _bn("downsample_1", self.dtype)(
                _conv(4 * self.planes, 1, self.stride, 0, "downsample_0", self.dtype)(x))
        return nn.relu(out + residual)


class CifarResNet(nn.Module):
    """The CIFAR ResNet of Cohen et al.'s code: depth ``6n + 2``, three stages of ``n`` BasicBlocks.

    Stem 3x3 conv (16) + BN + ReLU; stages of widths 16, 32, 64 (the last two start with stride 2
    and a 1x1 conv + BN shortcut); global average pooling (``AvgPool2d(8)`` on the 8x8 maps of a
    32x32 input); a linear layer ``fc``. ``x: [batch, 32, 32, 3]`` in [0, 1] -> ``[batch, num_classes]``.
    """

    depth: int
    num_classes: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ArchitectureError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {self.depth}.")
        n = (self.depth - 2) // 6
        x = Normalize("cifar10", self.dtype)(_images(x, self.dtype, 3))
        x = nn.relu(_bn("bn1", self.dtype)(_conv(16, 3, 1, 1, "conv1", self.dtype)(x)))
        inplanes = 16
        for stage, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            for i in range(n):
                s = stride if i == 0 else 1
                x = BasicBlock(planes, s, s != 1 or inplanes != planes, self.dtype, name=f"layer{stage}_{i}")(x)
                inplanes = planes
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)


class ResNet50(nn.Module):
    """torchvision's ``resnet50``: 7x7/2 stem + 3x3/2 max pool, Bottleneck stages [3, 4, 6, 3], ``fc``.

    ``x: [batch, H, W, 3]`` in [0, 1] (224x224 for ImageNet; any size >= 32 runs, the network ends in
    global average pooling) -> ``[batch, num_classes]``.
    """

    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Normalize("imagenet", self.dtype)(_images(x, self.dtype, 3))
        x = nn.relu(_bn("bn1", self.dtype)(_conv(64, 7, 2, 3, "conv1", self.dtype)(x)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        inplanes = 64
        for stage, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
            for i in range(blocks):
                s = stride if i == 0 else 1
                x = Bottleneck(planes, s, s != 1 or inplanes != 4 * planes, self.dtype, name=f"layer{stage}_{i}")(x)
                inplanes = 4 * planes
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)


# ------------------------------------------------------------------------------------------
# the second-order paper's small networks
# ------------------------------------------------------------------------------------------


class MnistNet(nn.Module):
    """Conv 4x4/2 (16) -> ReLU -> conv 4x4/2 (32) -> ReLU -> linear 1568 -> 100 -> ReLU -> linear 10.

    Convolutions pad by 1 (28 -> 14 -> 7). ``x: [batch, 28, 28, 1]`` or ``[batch, 28, 28]`` in [0, 1].
    """

    num_classes: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Normalize("mnist", self.dtype)(_images(x, self.dtype, 1))
        x = nn.relu(_conv(16, 4, 2, 1, "conv1", self.dtype, bias=True)(x))
        x = nn.relu(_conv(32, 4, 2, 1, "conv2", self.dtype, bias=True)(x))
        x = nn.relu(nn.Dense(100, dtype=self.dtype, name="lin1")(_flatten_channel_major(x)))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="lin2")(x)


class SmallMnistNet(nn.Module):
    """Conv 2x2/1 (4, no padding: 7 -> 6) -> ReLU -> linear 144 -> 100 -> ReLU -> linear 10.

    For MNIST averaged over 4x4 blocks: ``x: [batch, 7, 7, 1]`` or ``[batch, 7, 7]`` in [0, 1].
    """

    num_classes: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Normalize("small_mnist", self.dtype)(_images(x, self.dtype, 1))
        x = nn.relu(_conv(4, 2, 1, 0, "conv1", self.dtype, bias=True)(x))
        x = nn.relu(nn.Dense(100, dtype=self.dtype, name="lin1")(_flatten_channel_major(x)))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="lin2")(x)


class MLP3(nn.Module):
    """Flatten -> ``lin1`` -> ReLU -> ``lin2`` -> ReLU -> ``lin3``, no normalisation.

    The PCA-MNIST net (widths 100, 100; input the first 10 principal components of small MNIST)
    and the Swiss-roll net (widths 10, 10; input 2 coordinates).
    """

    hidden: int
    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x, self.dtype).reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="lin1")(x))
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="lin2")(x))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="lin3")(x)


# ------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------


class ArchSpec(NamedTuple):
    """What the command line and the checkpoint importer need to know about an architecture."""

    name: str
    build: Callable[[int, Any], nn.Module]  # (num_classes, dtype) -> module
    input_shape: tuple[int, ...]  # one input, channels last
    num_classes: int  # the reference default
    normalization: str | None  # key of NORMALIZATION, None for the identity
    classifier: str  # PyTorch name of the last linear layer (its rows are the classes)


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec("cifar_resnet20", lambda k, d: CifarResNet(20, k, d), (32, 32, 3), 10, "cifar10", "fc"),
        ArchSpec("cifar_resnet110", lambda k, d: CifarResNet(110, k, d), (32, 32, 3), 10, "cifar10", "fc"),
        ArchSpec("resnet50", lambda k, d: ResNet50(k, d), (224, 224, 3), 1000, "imagenet", "fc"),
        ArchSpec("mnist_net", lambda k, d: MnistNet(k, d), (28, 28, 1), 10, "mnist", "lin2"),
        ArchSpec("small_mnist_net", lambda k, d: SmallMnistNet(k, d), (7, 7, 1), 10, "small_mnist", "lin2"),
        ArchSpec("small_mnist_pca_net", lambda k, d: MLP3(100, k, d), (10,), 10, None, "lin3"),
        ArchSpec("swiss_roll_net", lambda k, d: MLP3(10, k, d), (2,), 2, None, "lin3"),
    )
}


def arch_spec(name: str) -> ArchSpec:
    """The :class:`ArchSpec` registered as ``name``; raises :class:`ArchitectureError` for unknown names.

    Example:
        >>> arch_spec("cifar_resnet110").input_shape
        (32, 32, 3)
    """
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ArchitectureError(f"unknown architecture {name!r}; use one of {', '.join(ARCHITECTURES)}.") from None


def get_architecture(name: str, *, num_classes: int | None = None, dtype: Any = jnp.float32) -> nn.Module:
    """The linen module for ``name`` (see the module docstring), ``num_classes`` outputs (default: the reference's).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = get_architecture("swiss_roll_net")
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.float32))
        >>> model.apply(variables, jnp.zeros((5, 2), jnp.float32)).shape
        (5, 2)
    """
    spec = arch_spec(name)
    return spec.build(spec.num_classes if num_classes is None else int(num_classes), dtype)


def abstract_variables(name: str, *, num_classes: int | None = None) -> dict[str, Any]:
    """Shapes and dtypes of ``name``'s variables (``{"params": ..., "batch_stats": ...}``) without computing them.

    Leaves are ``jax.ShapeDtypeStruct``; a fresh copy of a cached tree (tracing ResNet-110 takes a second).
    """
    spec = arch_spec(name)
    return _copy(_abstract_variables(name, spec.num_classes if num_classes is None else int(num_classes)))


def _copy(tree: Any) -> Any:
    """A copy of nested dicts that keeps their key order (``jax.tree_util`` would sort the keys)."""
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


@functools.lru_cache(maxsize=32)
def _abstract_variables(name: str, num_classes: int) -> dict[str, Any]:
    """Variable shapes with dict keys in creation order (PyTorch's module order), ``params`` first."""
    model = get_architecture(name, num_classes=num_classes)
    dummy = jax.ShapeDtypeStruct((1, *arch_spec(name).input_shape), jnp.float32)
    order: list[Any] = []

    def init(key: jax.Array, x: jax.Array) -> Any:
        variables = model.init(key, x)
        order.append(_copy(variables))  # only its key order is used
        return variables

    shapes = jax.eval_shape(init, jax.random.key(0), dummy)

    def reorder(template: Any, tree: Any) -> Any:
        return {k: reorder(v, tree[k]) for k, v in template.items()} if isinstance(template, dict) else tree

    return reorder(order[0], shapes)


def init_variables(name: str, key: jax.Array, *, num_classes: int | None = None) -> dict[str, Any]:
    """Fresh float32 variables for ``name`` from PRNG ``key`` (BatchNorm statistics: mean 0, variance 1)."""
    spec = arch_spec(name)
    model = get_architecture(name, num_classes=num_classes)
    return jax.jit(model.init)(key, jnp.zeros((1, *spec.input_shape), jnp.float32))
