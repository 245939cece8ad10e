"""The published architectures in Flax: parameter counts, normalisation first, dtype-clean outputs.

Agreement with PyTorch is tested in ``test_torch_checkpoint.py`` (real torch fixtures and a NumPy reference).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smoothjax.app import architectures

NAMES = tuple(architectures.ARCHITECTURES)

# sum(p.numel() for p in model.parameters()) of the PyTorch reference networks (torchvision's
# resnet50: 25,557,032); BatchNorm running statistics are not parameters.
TORCH_PARAMETER_COUNTS = {
    "cifar_resnet20": 272_474,
    "cifar_resnet110": 1_730_714,
    "resnet50": 25_557_032,
    "mnist_net": 166_406,
    "small_mnist_net": 15_530,
    "small_mnist_pca_net": 12_210,
    "swiss_roll_net": 162,
}


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_match_pytorch(name):
    variables = architectures.abstract_variables(name)
    assert _count(variables["params"]) == TORCH_PARAMETER_COUNTS[name]
    has_bn = name.startswith(("cifar", "resnet"))
    assert ("batch_stats" in variables) == has_bn


@pytest.mark.parametrize("in_dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_logits_are_float32_whatever_the_input(name, in_dtype):
    # x64 is on (conftest) and promotion is strict: float32 constants and a float32 network throughout
    spec = architectures.arch_spec(name)
    model = architectures.get_architecture(name)
    variables = architectures.abstract_variables(name)
    shape = (32, 32, 3) if name == "resnet50" else spec.input_shape
    out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((3, *shape), in_dtype))
    assert out.shape == (3, spec.num_classes)
    assert out.dtype == jnp.float32


@pytest.mark.parametrize("name", ["mnist_net"])
def test_runs_under_jit_and_batches_independently(name):
    # every architecture also runs under jit against PyTorch's logits in test_torch_checkpoint.py
    spec = architectures.arch_spec(name)
    model = architectures.get_architecture(name)
    variables = architectures.init_variables(name, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, *spec.input_shape), jnp.float32)
    apply = jax.jit(model.apply)
    out = apply(variables, x)
    assert out.dtype == jnp.float32 and out.shape == (3, spec.num_classes)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(apply(variables, x[1:2])[0], out[1], rtol=1e-5, atol=1e-6)


def test_normalisation_constants_are_float32_and_the_papers():
    for mean, std in architectures.NORMALIZATION.values():
        assert mean.dtype == np.float32 and std.dtype == np.float32
    np.testing.assert_array_equal(architectures.NORMALIZATION["cifar10"][0], np.float32([0.4914, 0.4822, 0.4465]))
    np.testing.assert_array_equal(architectures.NORMALIZATION["cifar10"][1], np.float32([0.2023, 0.1994, 0.2010]))
    np.testing.assert_array_equal(architectures.NORMALIZATION["imagenet"][0], np.float32([0.485, 0.456, 0.406]))
    np.testing.assert_array_equal(architectures.NORMALIZATION["imagenet"][1], np.float32([0.229, 0.224, 0.225]))


def test_normalisation_is_the_first_layer():
    # noise is added in [0, 1] pixel space: the network standardises the raw input itself
    x = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3), jnp.float32)
    got = architectures.Normalize("cifar10").apply({}, x)
    mean, std = architectures.NORMALIZATION["cifar10"]
    np.testing.assert_allclose(got, (np.asarray(x) - mean) / std, rtol=1e-6)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(architectures.Normalize(None).apply({}, x), x)

    model = architectures.get_architecture("small_mnist_net")
    variables = architectures.init_variables("small_mnist_net", jax.random.key(0))
    images = jax.random.uniform(jax.random.key(3), (2, 7, 7, 1), jnp.float32)
    is_normalize = lambda mdl, _: isinstance(mdl, architectures.Normalize)
    capture = jax.jit(lambda v, a: model.apply(v, a, capture_intermediates=is_normalize, mutable=["intermediates"])[1])
    (seen,) = jax.tree_util.tree_leaves(capture(variables, images)["intermediates"])
    mean, std = architectures.NORMALIZATION["small_mnist"]
    np.testing.assert_allclose(seen, (np.asarray(images) - mean) / std, rtol=1e-6)


def test_unknown_architecture_and_bad_inputs_raise():
    with pytest.raises(architectures.ArchitectureError,
                       match="unknown architecture 'resnet18'; use one of cifar_resnet20"):
        architectures.get_architecture("resnet18")
    with pytest.raises(architectures.ArchitectureError, match="6n \\+ 2"):
        architectures.CifarResNet(21).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
    model = architectures.get_architecture("cifar_resnet20")
    variables = architectures.abstract_variables("cifar_resnet20")
    with pytest.raises(architectures.ArchitectureError, match="channels last"):
        jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 3, 32, 32), jnp.float32))


def test_num_classes_option():
    variables = architectures.abstract_variables("cifar_resnet110", num_classes=100)
    assert variables["params"]["fc"]["kernel"].shape == (64, 100)
    out = jax.eval_shape(architectures.get_architecture("mnist_net", num_classes=3).apply,
                         architectures.abstract_variables("mnist_net", num_classes=3),
                         jax.ShapeDtypeStruct((2, 28, 28), jnp.float32))
    assert out.shape == (2, 3)
