"""What :func:`smoothjax.certify` returns: the prediction, the radii and everything behind them.

``ABSTAIN = -1`` is the prediction of an input that is not certified (as in Cohen et al.'s code);
:class:`AbstainReason` names the bits of ``CertifyResult.abstain_reason``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import jax
import numpy as np
from jax.typing import ArrayLike

from smoothjax.sampling import SampleStatistics

ABSTAIN = -1


class AbstainReason(enum.IntFlag):
    """Why an input abstains: the bits of ``CertifyResult.abstain_reason`` (0 = certified).

    ``AbstainReason(int(result.abstain_reason[i]))`` prints the reasons by name, e.g.
    ``<AbstainReason.LOW_PROBABILITY|NONFINITE_LOGITS: 3>``.

    - ``LOW_PROBABILITY``: Cohen's lower bound on ``p_A`` is <= 1/2.
    - ``NONFINITE_LOGITS``: the model returned NaN or inf logits for some noisy input (the counts
      cannot be trusted, so the input abstains).
    - ``NONFINITE_INPUT``: NaN/inf in the input (only reachable under an outer ``jit``; concrete
      inputs raise ``ValueError``).
    - ``METHOD_FAILED``: some method's certificate was NaN and was replaced by 0 (the prediction
      stands; that method abstains).
    - ``INVALID_ARGUMENT``: sigma <= 0 or NaN, or alpha outside (0, 1) (only reachable under an
      outer ``jit``; concrete values raise ``ValueError``).

    Example:
      >>> from smoothjax import AbstainReason
      >>> AbstainReason(3)
      <AbstainReason.LOW_PROBABILITY|NONFINITE_LOGITS: 3>
      >>> AbstainReason(0).name is None or AbstainReason(0) == 0
      True
    """

    LOW_PROBABILITY = 1
    NONFINITE_LOGITS = 2
    NONFINITE_INPUT = 4
    METHOD_FAILED = 8
    INVALID_ARGUMENT = 16


def abstain_reasons(mask: ArrayLike) -> list:
    """The names of the reasons set in an ``abstain_reason`` value (empty when certified).

    A single value gives a list of names; an array (e.g. ``result.abstain_reason``) gives one such
    list per entry, nested like the array.

    Example:
      >>> abstain_reasons(9)
      ['LOW_PROBABILITY', 'METHOD_FAILED']
      >>> abstain_reasons(np.array([0, 1]))
      [[], ['LOW_PROBABILITY']]
    """
    a = np.asarray(mask)
    if a.ndim:
        return [abstain_reasons(v) for v in a]
    flags = AbstainReason(int(a))
    return [r.name for r in AbstainReason if r in flags]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CertifyResult:
    """Result of :func:`certify` for a batch of inputs; every array has a leading ``[batch]`` axis.

    Fields:
      prediction: int32, ``c_A`` or -1 (abstain).
      radii: dict method name -> float radius (input units, 0 where abstaining).
      p_lower: dict method name -> the lower bound on ``p_A`` that method used (for dipole, the
        lower bound on ``P[both sides = c_A]``).
      bounds: dict of the other confidence bounds used, e.g. ``"sos_grad_norm_upper"``,
        ``"dipole_plus_only_lower"``, ``"grad_l2_lower"``, ``"grad_linf_upper"``,
        ``"grad_l1_upper"``, ``"subspace_grad_l2_upper"`` (gradients in 1/input units).
      method_abstained: dict method name -> bool, True where that method's radius is 0.
      solver_converged: dict method name -> bool, False where the radius came from a solver that
        did not converge (the first-order radii: Theorem 3's certified fallback, sound but
        possibly loose); True for closed-form methods.
      abstain_reason: int32 bit mask of :class:`AbstainReason` (0 = certified).
      top_class: int32, the selection pass's top class ``c_A`` (also where abstaining).
      selection_counts: ``[batch, num_classes]`` counts of the selection pass.
      statistics: :class:`smoothjax.sampling.SampleStatistics` of the estimation pass.
      input_ids: the ids the noise keys were derived from.
      model_dtype: dtype of the model's logits (the model computes in it; noise is float32).
      matmul_precision: ``jax_default_matmul_precision`` in force ("default" when unset).
    """

    prediction: Any
    radii: dict
    p_lower: dict
    bounds: dict
    method_abstained: dict
    solver_converged: dict
    abstain_reason: Any
    top_class: Any
    selection_counts: Any
    statistics: SampleStatistics
    input_ids: Any
    model_dtype: str = dataclasses.field(default="", metadata=dict(static=True))
    matmul_precision: str = dataclasses.field(default="", metadata=dict(static=True))
