"""smoothjax: randomized-smoothing certificates in JAX.

The certified core (this package, without :mod:`smoothjax.app`), one module per concept:

  binomial          Clopper-Pearson bounds and binomial tests.
  certificates      closed-form / 1-D radii: Cohen, second-order smoothing (SoS), dipole.
  gradient_bounds   confidence bounds on norms of grad g: the first paper's Table 1 / Theorem 5
                    bounds and the second paper's dot-product bound (SoS).
  quadrature        Gauss-Hermite and Gauss-Legendre rules.
  theorem3          the first paper's Theorem 3 system, its Newton solver and directional radius.
  first_order       Corollaries 3.2-3.4: l1, linf and subspace radii.
  sampling          streamed noise sampling and sufficient statistics.
  pipeline          predict / certify over a batch of inputs.
  results           CertifyResult, ABSTAIN and the abstain reasons.
  flax_adapters     turning Flax linen / NNX models into pure ``apply_fn(params, x)``.
  surrogates        differentiable soft smoothed probabilities, gradients and radii at them.
  objectives        training losses: the published baselines and certificate-aware hinges.

The application (command line, datasets, model zoo, training loop, analysis, TSV files) lives in
:mod:`smoothjax.app`, which the core never imports.
"""

from smoothjax import _config  # noqa: F401  (float64 policy, see smoothjax._config)
from smoothjax._sharding import gather_results, make_mesh
from smoothjax.binomial import binomial_two_sided_pvalue, clopper_pearson_lower, clopper_pearson_upper
from smoothjax.certificates import cohen_radius, dipole_radius, max_grad_norm, sos_radius, top2_radius
from smoothjax.first_order import RadiusSolution, l1_radius, linf_radius, subspace_radius, subspace_radius_solution
from smoothjax.flax_adapters import linen_apply_fn, nnx_apply_fn
from smoothjax.gradient_bounds import (
    SUBGAUSSIAN_CONSTANT,
    NormBounds,
    chaos_deviation,
    grad_dual_norm_upper,
    grad_l1_bounds,
    grad_l1_upper,
    grad_l2_bounds,
    grad_linf_bounds,
    grad_linf_upper,
    sos_grad_norm_upper,
)
from smoothjax.objectives import (
    OBJECTIVES,
    certified_radius_loss,
    consistency_loss,
    gaussian_augmentation_loss,
    macer_loss,
    make_objective,
    smoothadv_loss,
)
from smoothjax.pipeline import certify, certify_in_batches, predict
from smoothjax.quadrature import gauss_hermite_normal, gauss_legendre, gaussian_panel_rule
from smoothjax.results import ABSTAIN, AbstainReason, CertifyResult, abstain_reasons
from smoothjax.sampling import SampleStatistics, sample_statistics
from smoothjax.surrogates import gradient_norms, smoothed_gradient, soft_radius, soft_smoothed_probabilities
from smoothjax.theorem3 import (
    DirectionalRadiusSolution,
    Theorem3Solution,
    directional_radius,
    directional_radius_solution,
    max_grad_norm_dimensionless,
    theorem3_coefficients,
    theorem3_p_lower,
)

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN",
    "OBJECTIVES",
    "SUBGAUSSIAN_CONSTANT",
    "AbstainReason",
    "CertifyResult",
    "DirectionalRadiusSolution",
    "RadiusSolution",
    "NormBounds",
    "SampleStatistics",
    "Theorem3Solution",
    "abstain_reasons",
    "binomial_two_sided_pvalue",
    "certified_radius_loss",
    "certify",
    "certify_in_batches",
    "chaos_deviation",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "consistency_loss",
    "cohen_radius",
    "directional_radius",
    "directional_radius_solution",
    "dipole_radius",
    "gather_results",
    "gauss_hermite_normal",
    "gauss_legendre",
    "gaussian_augmentation_loss",
    "gaussian_panel_rule",
    "grad_dual_norm_upper",
    "grad_l1_bounds",
    "grad_l1_upper",
    "grad_l2_bounds",
    "grad_linf_bounds",
    "grad_linf_upper",
    "gradient_norms",
    "l1_radius",
    "linen_apply_fn",
    "linf_radius",
    "macer_loss",
    "make_objective",
    "make_mesh",
    "max_grad_norm",
    "max_grad_norm_dimensionless",
    "nnx_apply_fn",
    "predict",
    "sample_statistics",
    "smoothadv_loss",
    "smoothed_gradient",
    "soft_radius",
    "soft_smoothed_probabilities",
    "sos_grad_norm_upper",
    "sos_radius",
    "subspace_radius",
    "subspace_radius_solution",
    "theorem3_coefficients",
    "theorem3_p_lower",
    "top2_radius",
]
