"""The three benchmark classifiers (Flax linen, float32), as pure ``apply_fn(params, x) -> logits``.

* ``mlp``: 8x8x1 inputs, flatten, Dense 128 - ReLU - Dense 128 - ReLU - Dense 10.
* ``cnn``: 8x8x1 inputs, Conv 16 (3x3) - ReLU - Conv 32 (3x3, stride 2) - ReLU - Dense 64 - Dense 10.
* ``resnet``: 32x32x3 (CIFAR-sized) inputs, a ResNet-style network: Conv 16, two residual blocks
  at 16 channels, a strided block to 32 channels, one more block, global average pooling, Dense 10
  (no batch norm: the forward pass is what matters here).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32).reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(128)(x))
        x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(10)(x)


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32)
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=(2, 2))(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(10)(x)


class Block(nn.Module):
    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.Conv(self.features, (3, 3), strides=(self.stride, self.stride))(x))
        y = nn.Conv(self.features, (3, 3))(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), strides=(self.stride, self.stride))(x)
        return nn.relu(x + y)


class ResNetStyle(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32)
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = Block(16)(x)
        x = Block(16)(x)
        x = Block(32, stride=2)(x)
        x = Block(32)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(10)(x)


SHAPES = {"mlp": (8, 8, 1), "cnn": (8, 8, 1), "resnet": (32, 32, 3)}
_MODULES = {"mlp": MLP, "cnn": SmallCNN, "resnet": ResNetStyle}
_CACHE: dict = {}


def get(name: str):
    """``(apply_fn, params, input_shape)`` for a benchmark model; the same apply_fn object each call."""
    if name not in _CACHE:
        module = _MODULES[name]()
        shape = SHAPES[name]
        params = module.init(jax.random.key(0), jnp.zeros((1, *shape), jnp.float32))
        _CACHE[name] = (module.apply, params, shape)
    return _CACHE[name]
