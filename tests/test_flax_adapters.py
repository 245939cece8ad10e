"""Flax linen and NNX models as pure ``apply_fn(params, x)``: same logits as calling the model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smoothjax.flax_adapters import linen_apply_fn, nnx_apply_fn


class _LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(3)(x.reshape((x.shape[0], -1)))


class _NNXCNN(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)
        self.dense = nnx.Linear(8 * 8 * 4, 3, rngs=rngs)

    def __call__(self, x):
        x = self.dropout(self.bn(nnx.relu(self.conv(x))))
        return self.dense(x.reshape((x.shape[0], -1)))


def _inputs():
    return jax.random.normal(jax.random.key(1), (5, 8, 8, 1), jnp.float32)


def test_linen_apply_fn_matches_module_apply_and_jits():
    module = _LinenCNN()
    x = _inputs()
    variables = module.init(jax.random.key(0), x)
    apply_fn, params = linen_apply_fn(module, variables, train=False)
    expected = np.asarray(module.apply(variables, x, train=False))
    np.testing.assert_allclose(np.asarray(apply_fn(params, x)), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jit(apply_fn)(params, x)), expected, rtol=1e-5, atol=1e-6)
    assert apply_fn(params, x).shape == (5, 3)


def test_nnx_apply_fn_is_pure_eval_mode_and_matches_model():
    model = _NNXCNN(nnx.Rngs(0))
    x = _inputs()
    apply_fn, params = nnx_apply_fn(model)
    # The caller's model is untouched (still in training mode).
    assert model.dropout.deterministic is False and model.bn.use_running_average is False
    model.eval()
    expected = np.asarray(model(x))
    out1 = np.asarray(jax.jit(apply_fn)(params, x))
    out2 = np.asarray(apply_fn(params, x))
    np.testing.assert_allclose(out1, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out2, out1, rtol=1e-5, atol=1e-6)  # deterministic: dropout off
    assert out1.shape == (5, 3) and out1.dtype == np.float32


def test_nnx_apply_fn_params_are_traced_arguments():
    """New weights flow through params (no closure over the original values)."""
    model = _NNXCNN(nnx.Rngs(0))
    apply_fn, params = nnx_apply_fn(model)
    zeroed = jax.tree_util.tree_map(jnp.zeros_like, params)
    out = np.asarray(jax.jit(apply_fn)(zeroed, _inputs()))
    # all-zero weights (and zero BatchNorm scale) give zero logits
    np.testing.assert_allclose(out, 0.0, atol=1e-6)
