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
from smoothjax.binomial import (binomial_two_sided_pvalue, clopper_pearson_lower, clopper_pearson_upper)
# [binomial]
from smoothjax.certificates import (cohen_radius, dipole_radius, max_grad_norm, sos_grad_norm_upper, sos_radius)
# [certificates]
from smoothjax.gradient_bounds import (SUBGAUSSIAN_CONSTANT, NormBounds, chaos_deviation, grad_dual_norm_upper, grad_l1_bounds, grad_l1_upper, grad_l2_bounds, grad_linf_bounds, grad_linf_upper)  # noqa: E501
# [gradient_bounds]
from smoothjax.quadrature import gauss_hermite_normal, gauss_legendre, gaussian_panel_rule
# [quadrature]
from smoothjax.theorem3 import (Theorem3Solution, directional_radius, max_grad_norm_dimensionless, theorem3_coefficients, theorem3_p_lower)  # noqa: E501
# [theorem3]
from smoothjax.first_order import (l1_radius, linf_radius, subspace_radius)
# [first_order]
from smoothjax.sampling import SampleStatistics, sample_statistics
# [sampling]
from smoothjax.pipeline import CertifyResult, certify, certify_in_batches, predict, write_tsv
# [pipeline]
from smoothjax.flax_adapters import linen_apply_fn, nnx_apply_fn
# [flax_adapters]
from smoothjax.objectives import (OBJECTIVES, certified_radius_loss, gaussian_augmentation_loss, gradient_norms, make_objective, smoothed_gradient, soft_radius, soft_smoothed_probabilities)
# [objectives]

__version__ = "0.1.0"
