"""smoothjax: randomized-smoothing certificates in JAX.

Importing smoothjax enables ``jax_enable_x64`` (see :mod:`smoothjax._config`).

Where things live (one module per concept):
  binomial         Clopper-Pearson bounds and binomial tests.
  certificates     closed-form / 1-D radii: Cohen, second-order smoothing (SoS), dipole.
  gradient_bounds  first paper's Table 1 / Theorem 5 bounds on norms of grad g.
  quadrature       Gauss-Hermite rules.
  theorem3         the first paper's Theorem 3 system, its Newton solver and directional radius.
  first_order      Corollaries 3.2-3.4: l1, linf and subspace radii.
  sampling         streamed noise sampling and sufficient statistics.
  pipeline         predict / certify over a batch of inputs, results as pytrees, TSV output.
  flax_adapters    turning Flax linen / NNX models into pure ``apply_fn(params, x)``.
  objectives       differentiable surrogates and certificate-aware training losses.
  cli              the ``smoothjax`` command line.
"""

from smoothjax import _config  # noqa: F401  (enables x64 before anything else is traced)

ABSTAIN = -1

# Public names, re-exported explicitly; one block per module.
# [binomial]
# [certificates]
# [gradient_bounds]
# [quadrature]
# [theorem3]
# [first_order]
# [sampling]
# [pipeline]
# [flax_adapters]
# [objectives]

__version__ = "0.1.0"
