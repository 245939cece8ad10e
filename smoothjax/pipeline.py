"""Cohen's PREDICT and CERTIFY for a batch of inputs, every certificate from one jitted program.

:func:`certify` runs, for a batch of inputs, in one compiled program (one per input shape and
static configuration; repeated calls do not recompile when the same ``apply_fn`` object is passed):

1. selection: ``n0`` noise samples per input, the top class ``c_A`` = most frequent class;
2. estimation: ``n`` fresh samples per input (:func:`smoothjax.sampling.sample_statistics`), with
   only the statistics the requested methods need (static flags);
3. the confidence bounds and radii of every requested method.

Large datasets: :func:`certify_in_batches` certifies any number of inputs a fixed number at a time
(one compiled program; the last group is padded), with results equal to one big call.

Keys. Input ``b`` uses the key ``fold_in(fold_in(key, stream), input_ids[b])`` with stream 0 for
selection, 1 for estimation and 2 for :func:`predict`, and noise sample ``i`` is a counter-based
function of that key and ``i`` (:func:`smoothjax.sampling.standard_normal`), so a result depends
only on ``(key, input_id)``: certifying a dataset in batches of any size (pass the
dataset indices as ``input_ids``), with any ``batch_size``, on any number of devices, gives the
same numbers.

Certificates and how alpha is split (each reported radius holds with probability >= 1 - alpha on
its own; by a union bound over the confidence bounds it uses, which needs each bound's own samples
to be iid but no independence between bounds, see :mod:`smoothjax.sampling`):

===================  ========================================================================
``cohen_l2``         ``p_A`` lower Clopper-Pearson bound at alpha; ``sigma Phi^-1(p_A)``.
``sos_l2``           ``p_A`` at alpha/2; the dot-product bound on ``||grad g||_2`` (second
                     paper, Thm 2, ``n/2`` pairs) at alpha/2; second paper Thm 1.
``dipole_l2``        Clopper-Pearson lower bounds on ``P[both sides = c_A]`` and ``P[only + side]``
                     over ``n/2`` antithetic pairs at alpha/2 each; second paper Thm 3.
``first_order_l1``   ``p_A`` at alpha/2; lower bound on ``||grad g||_2`` and upper bound on
                     ``||grad g||_inf`` at alpha/4 each (first paper Table 1); Corollary 3.2.
``first_order_linf`` ``p_A`` at alpha/2; ``||grad g||_2`` lower and ``||grad g||_1`` upper at
                     alpha/4 each; Corollary 3.3.
``subspace_l2``      ``p_A`` at alpha/2; ``||grad g||_2`` lower and the l2 norm of the gradient
                     restricted to the subspace, upper, at alpha/4 each; Corollary 3.4 (p = 2).
===================  ========================================================================

(The first paper's code spends 1.25 alpha on its l1/linf radii; here every certificate spends
exactly alpha.) The guarantee is per certificate, as in both papers; a statement about all
reported radii at once holds at ``1 - k alpha`` for ``k`` methods (union bound). Radii are in input
units and in the norm their name says (``subspace_l2``: an l2 ball of perturbations restricted to
the coordinates selected by ``subspace``).

Abstaining. ``prediction`` is ``c_A`` when Cohen's lower bound at alpha exceeds 1/2 (Cohen et
al.'s CERTIFY), else :data:`smoothjax.ABSTAIN` (-1); every radius is 0 where the prediction is -1,
and a method whose own bound does not certify (or whose certificate is NaN, e.g. contradictory
confidence bounds) reports radius 0 with ``method_abstained[name] = True``. ``abstain_reason`` is a
bit mask per input: :data:`REASON_LOW_PROBABILITY` (Cohen's bound <= 1/2),
:data:`REASON_NONFINITE_LOGITS` (the model returned NaN or inf logits for some noisy input: the
counts cannot be trusted, so the input abstains), :data:`REASON_NONFINITE_INPUT` (NaN/inf in
the input; only reachable under an outer ``jit``, since concrete inputs raise ``ValueError``),
:data:`REASON_METHOD_FAILED` (some method's certificate was NaN and was replaced by 0),
:data:`REASON_INVALID_ARGUMENT` (sigma <= 0 or NaN, or alpha outside (0, 1); only reachable under an
outer ``jit``, since concrete values raise ``ValueError``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax import _validation as V
from smoothjax._config import float_dtype
from smoothjax.results import ABSTAIN, AbstainReason, CertifyResult, abstain_reasons  # noqa: F401  (re-exported)
from smoothjax._sharding import over_devices, pad_to_devices
from smoothjax.binomial import binomial_two_sided_pvalue, clopper_pearson_lower
from smoothjax.certificates import cohen_radius, dipole_radius, sos_radius
from smoothjax.first_order import subspace_radius
from smoothjax.gradient_bounds import (
    grad_dual_norm_upper,
    grad_l1_upper,
    grad_l2_bounds,
    grad_linf_upper,
    sos_grad_norm_upper,
)
from smoothjax.sampling import check_input_ids, sample_statistics_under_jit, validate_sampling_args

ALL_METHODS = ("cohen_l2", "sos_l2", "dipole_l2", "first_order_l1", "first_order_linf", "subspace_l2")
DEFAULT_METHODS = ("cohen_l2", "sos_l2", "dipole_l2", "first_order_l1", "first_order_linf")

REASON_LOW_PROBABILITY = AbstainReason.LOW_PROBABILITY
REASON_NONFINITE_LOGITS = AbstainReason.NONFINITE_LOGITS
REASON_NONFINITE_INPUT = AbstainReason.NONFINITE_INPUT
REASON_METHOD_FAILED = AbstainReason.METHOD_FAILED
REASON_INVALID_ARGUMENT = AbstainReason.INVALID_ARGUMENT

_SELECTION_STREAM, _ESTIMATION_STREAM, _PREDICT_STREAM = 0, 1, 2
_PAIR_METHODS = ("sos_l2", "dipole_l2")
_FIRST_ORDER = ("first_order_l1", "first_order_linf", "subspace_l2")


# ----------------------------------------------------------------------------- validation


def _normalise_methods(methods, subspace):
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ValueError(f"unknown certification method(s) {unknown}; choose from {list(ALL_METHODS)}.")
    if subspace is not None and "subspace_l2" not in methods:
        methods = methods + ("subspace_l2",)
    if "subspace_l2" in methods and subspace is None:
        raise ValueError("method 'subspace_l2' needs a subspace: pass subspace=<boolean mask of the input shape>.")
    if not methods:
        raise ValueError("methods must name at least one certificate.")
    return tuple(m for m in ALL_METHODS if m in methods)


def _check_subspace(subspace, input_shape):
    if subspace is None:
        return None
    mask = np.asarray(subspace)
    if mask.shape != tuple(input_shape) or mask.dtype != bool:
        raise ValueError(
            f"subspace must be a boolean mask of the input shape {tuple(input_shape)} selecting the perturbed "
            f"coordinates; got an array of shape {mask.shape} and dtype {mask.dtype}."
        )
    if not mask.any():
        raise ValueError("subspace selects no coordinates; select at least one.")
    return jnp.asarray(mask)


def _stream_key(key, stream):
    return jax.random.fold_in(key, stream)


# ----------------------------------------------------------------------------- predict


def predict(apply_fn, params, xs, key, *, sigma, n: int, alpha, batch_size: int, input_ids=None):
    """Cohen et al.'s PREDICT for a batch: the top class, or -1 where the binomial test fails.

    With ``n`` noise samples per input, ``n_A, n_B`` the two largest class counts: predict ``c_A``
    if the two-sided exact binomial test of ``n_A`` out of ``n_A + n_B`` against 1/2 has p-value
    <= alpha, else abstain (-1). An input whose model logits were NaN/inf for some sample abstains.

    Args:
      apply_fn, params: the classifier ``apply_fn(params, x [m, *input_shape]) -> logits [m, C]``.
      xs: ``[batch, *input_shape]`` inputs. key: PRNG key. sigma: noise std (input units).
      n: static number of samples. alpha: test level in (0, 1). batch_size: samples per input per step.
      input_ids: ``[batch]`` ids the per-input keys are derived from (default ``arange(batch)``).

    Returns:
      int32 ``[batch]`` predictions (-1 = abstain).
    """
    V.check_alpha(alpha)
    validate_sampling_args(
        apply_fn, params, xs, sigma=sigma, num_samples=n, batch_size=batch_size, pairs=False, name="n"
    )
    xs = jnp.asarray(xs)
    ids = check_input_ids(input_ids, xs.shape[0])
    xs, ids, batch = pad_to_devices(xs, ids)
    ftype = float_dtype()
    out = _predict_jit(
        apply_fn, params, xs, key, ids, jnp.asarray(sigma, ftype), jnp.asarray(alpha, ftype), n=n, batch_size=batch_size
    )
    return out[:batch]


@functools.partial(jax.jit, static_argnames=("apply_fn", "n", "batch_size"))
def _predict_jit(apply_fn, params, xs, key, input_ids, sigma, alpha, *, n, batch_size):
    def per_shard(xs, input_ids, params, key, sigma, alpha):
        stats = sample_statistics_under_jit(
            apply_fn, params, xs, _stream_key(key, _PREDICT_STREAM), sigma, None, input_ids,
            num_samples=n, batch_size=batch_size,
        )
        top2 = jax.lax.top_k(stats.counts, 2)[0] if stats.counts.shape[1] > 1 else stats.counts
        n_a = top2[:, 0]
        n_b = top2[:, 1] if top2.shape[1] > 1 else jnp.zeros_like(n_a)
        pvalue = binomial_two_sided_pvalue(n_a, n_a + n_b)
        top = jnp.argmax(stats.counts, axis=1).astype(jnp.int32)
        ok = (pvalue <= alpha) & (stats.nonfinite == 0) & jnp.all(jnp.isfinite(_flat(xs)), axis=1)
        return jnp.where(ok, top, ABSTAIN)

    return over_devices(per_shard, (xs, input_ids), (params, key, sigma, alpha))


def _flat(xs):
    return xs.reshape((xs.shape[0], -1))


# ----------------------------------------------------------------------------- certify


def certify(
    apply_fn,
    params,
    xs,
    key,
    *,
    sigma,
    n0: int,
    n: int,
    alpha,
    batch_size: int,
    methods=DEFAULT_METHODS,
    subspace=None,
    input_ids=None,
) -> CertifyResult:
    """Certify a batch of inputs with every requested method (see the module docstring).

    Args:
      apply_fn: pure ``apply_fn(params, x [m, *input_shape]) -> logits [m, num_classes]`` (pass the
        same function object on every call: it is a static argument of the compiled program).
      params: pytree of model parameters.
      xs: ``[batch, *input_shape]`` inputs (noise is drawn in their dtype).
      key: PRNG key (``jax.random.key``).
      sigma: noise standard deviation (input units). alpha: failure probability in (0, 1).
      n0, n: static sample counts of the selection and estimation passes (``n0 <= n``; ``n`` even
        when ``sos_l2`` or ``dipole_l2`` is requested).
      batch_size: static, noise samples per input per step (even when pairs are needed). The model
        sees ``batch * batch_size`` rows per step (``1.5x`` with ``dipole_l2``).
      methods: certificate names from :data:`ALL_METHODS`.
      subspace: optional boolean mask of the input shape selecting the coordinates an adversary
        may perturb; adds ``"subspace_l2"``.
      input_ids: ``[batch]`` ids (e.g. dataset indices) the noise keys derive from.

    Returns:
      :class:`CertifyResult`.

    Raises:
      ValueError: bad sigma, alpha, sample counts (n0 > n, odd n or batch_size with pair methods),
        unknown methods, NaN/inf inputs, inputs the model rejects, a malformed subspace mask.
    """
    methods = _normalise_methods(methods, subspace)
    V.check_alpha(alpha)
    needs_pairs = any(m in methods for m in _PAIR_METHODS)
    num_classes = validate_sampling_args(
        apply_fn, params, xs, sigma=sigma, num_samples=n, batch_size=batch_size, pairs=needs_pairs, name="n"
    )
    V.check_static_int("n0", n0, 1)
    if n0 > n:
        raise ValueError(f"n0 (selection samples, {n0}) must not exceed n (estimation samples, {n}).")
    if any(m in methods for m in _FIRST_ORDER) and n < 4:
        raise ValueError(f"first-order certificates need n >= 4 samples (two halves); got n = {n}.")
    xs = jnp.asarray(xs)
    mask = _check_subspace(subspace, xs.shape[1:])
    ids = check_input_ids(input_ids, xs.shape[0])
    xs, ids, batch = pad_to_devices(xs, ids)
    ftype = float_dtype()
    result = _certify_jit(
        apply_fn, params, xs, key, ids, jnp.asarray(sigma, ftype), jnp.asarray(alpha, ftype), mask,
        n0=n0, n=n, batch_size=batch_size, methods=methods, num_classes=num_classes,
        subspace_dim=None if mask is None else int(np.sum(np.asarray(mask))),
    )
    if result.prediction.shape[0] != batch:
        result = jax.tree_util.tree_map(lambda a: a[:batch], result)
    return result


_CERTIFY_STATIC = ("apply_fn", "n0", "n", "batch_size", "methods", "num_classes", "subspace_dim")


@functools.partial(jax.jit, static_argnames=_CERTIFY_STATIC)
def _certify_jit(
    apply_fn, params, xs, key, input_ids, sigma, alpha, mask, *, n0, n, batch_size, methods, num_classes, subspace_dim
):
    def per_shard(xs, input_ids, params, key, sigma, alpha, mask):
        return _certify_traced(
            apply_fn, params, xs, key, input_ids, sigma, alpha, mask,
            n0=n0, n=n, batch_size=batch_size, methods=methods, subspace_dim=subspace_dim,
        )

    return over_devices(per_shard, (xs, input_ids), (params, key, sigma, alpha, mask))


def _certify_traced(
    apply_fn, params, xs, key, input_ids, sigma, alpha, mask, *, n0, n, batch_size, methods, subspace_dim
):
    ftype = float_dtype()
    sigma, alpha = jnp.asarray(sigma, ftype), jnp.asarray(alpha, ftype)
    dim = int(np.prod(xs.shape[1:]))
    selection = sample_statistics_under_jit(
        apply_fn, params, xs, _stream_key(key, _SELECTION_STREAM), sigma, None, input_ids,
        num_samples=n0, batch_size=batch_size,
    )
    top = jnp.argmax(selection.counts, axis=1).astype(jnp.int32)
    first_order = [m for m in methods if m in _FIRST_ORDER]
    stats = sample_statistics_under_jit(
        apply_fn, params, xs, _stream_key(key, _ESTIMATION_STREAM), sigma, top, input_ids,
        num_samples=n, batch_size=batch_size,
        dot_product="sos_l2" in methods, dipole="dipole_l2" in methods, split_half=bool(first_order),
    )
    # Every Clopper-Pearson bound in ONE call (one solver in the compiled program, not four).
    n_a = stats.target_count
    cp_k, cp_n, cp_alpha = [n_a, n_a], [n, n], [alpha, alpha / 2]
    if "dipole_l2" in methods:
        cp_k += [stats.dipole_both, stats.dipole_plus_only]
        cp_n += [stats.num_pairs] * 2
        cp_alpha += [alpha / 2] * 2
    cp = clopper_pearson_lower(
        jnp.stack(cp_k),
        jnp.asarray(cp_n, ftype)[:, None],
        jnp.stack([jnp.broadcast_to(a, n_a.shape) for a in cp_alpha]),
    )
    p_cohen, p_half = cp[0], cp[1]

    radii, p_lower, bounds, converged = {}, {}, {}, {}
    if "cohen_l2" in methods:
        radii["cohen_l2"] = cohen_radius(p_cohen, sigma)
        p_lower["cohen_l2"] = p_cohen
    if "sos_l2" in methods:
        grad_up = sos_grad_norm_upper(stats.dot_mean, stats.num_pairs, dim, sigma, alpha / 2, p_half)
        radii["sos_l2"] = sos_radius(p_half, grad_up, sigma)
        p_lower["sos_l2"] = p_half
        bounds["sos_grad_norm_upper"] = grad_up
    if "dipole_l2" in methods:
        cs, cn = cp[2], cp[3]
        radii["dipole_l2"] = dipole_radius(cs, cn, sigma)
        p_lower["dipole_l2"] = cs
        bounds["dipole_plus_only_lower"] = cn
    if first_order:
        radii_fo, bounds_fo = _first_order_radii(stats, p_half, sigma, alpha / 4, mask, subspace_dim, first_order)
        radii.update(radii_fo)
        bounds.update(bounds_fo)
        for m in first_order:
            p_lower[m] = p_half

    finite_input = jnp.all(jnp.isfinite(_flat(xs)), axis=1)
    certified = p_cohen > 0.5
    reason = jnp.where(certified, 0, REASON_LOW_PROBABILITY)
    reason = reason | jnp.where(stats.nonfinite + selection.nonfinite > 0, REASON_NONFINITE_LOGITS, 0)
    reason = reason | jnp.where(finite_input, 0, REASON_NONFINITE_INPUT)
    # sigma / alpha outside their domain (only reachable when traced: concrete values raise first)
    valid_args = jnp.isfinite(sigma) & (sigma > 0) & (alpha > 0) & (alpha < 1)
    reason = reason | jnp.where(valid_args, 0, REASON_INVALID_ARGUMENT)
    failed = jnp.zeros_like(certified)
    for name in radii:
        failed = failed | jnp.isnan(radii[name])
    reason = (reason | jnp.where(failed & (reason == 0), REASON_METHOD_FAILED, 0)).astype(jnp.int32)
    ok = (reason & ~REASON_METHOD_FAILED) == 0
    prediction = jnp.where(ok, top, ABSTAIN).astype(jnp.int32)
    method_abstained, solver_converged = {}, {}
    for name in list(radii):
        solver_converged[name] = converged.get(name, jnp.ones_like(certified))
        r = jnp.asarray(radii[name], ftype)
        good = ok & ~jnp.isnan(r) & (r > 0)  # +inf is legitimate (subspace_l2: g constant along S)
        radii[name] = jnp.where(good, r, 0.0)
        method_abstained[name] = ~good
    return CertifyResult(
        prediction=prediction,
        radii=radii,
        p_lower=p_lower,
        bounds=bounds,
        method_abstained=method_abstained,
        solver_converged=solver_converged,
        abstain_reason=reason,
        top_class=top,
        selection_counts=selection.counts,
        statistics=stats,
        input_ids=input_ids,
    )


def _first_order_radii(stats, p_lower, sigma, alpha_each, mask, subspace_dim, methods):
    """First-paper radii (Corollaries 3.2-3.4) from the split-half means of ``z``.

    Each gradient-norm bound holds on its own at ``1 - alpha_each`` (``alpha_each = alpha/4``; see
    :mod:`smoothjax.gradient_bounds`), so with ``p_lower`` at alpha/2 every radius spends alpha.
    The subspace bound uses the means with the coordinates outside the mask set to 0 (the same
    dot products and norms as the projected coordinates) and ``subspace_dim = mask.sum()``.

    All radii come from ONE call of the Theorem 3 solver (compiling it dominates the program's
    compile time): by :func:`smoothjax.first_order.subspace_radius`'s formula with ``p = inf``,
    ``R = sigma R_v(q, -sigma b / n, sigma sqrt(l^2 - (b/n)^2)) / n`` with ``n = sqrt(d_S)``, which is
    Corollary 3.2 (l1) for ``b = ||grad||_inf`` upper, ``d_S = 1``; Corollary 3.3 (linf) for
    ``b = ||grad||_1`` upper, ``d_S = d`` (plus :func:`~smoothjax.first_order.linf_radius`'s check
    ``||grad||_1 upper >= ||grad||_2 lower``, NaN otherwise); Corollary 3.4 with p = 2 for
    ``b = ||P_S grad||_2`` upper, ``d_S = 1``.
    """

    mean_a, mean_b, num_a, num_b = stats.z_mean_a, stats.z_mean_b, stats.num_a, stats.num_b
    dim = mean_a.shape[-1]
    l2_lower = grad_l2_bounds(mean_a, mean_b, num_a, num_b, sigma, alpha_each).lower
    bounds, rows = {"grad_l2_lower": l2_lower}, []
    if "first_order_l1" in methods:
        bounds["grad_linf_upper"] = grad_linf_upper(mean_a, mean_b, num_a, num_b, sigma, alpha_each)
        rows.append(("first_order_l1", bounds["grad_linf_upper"], 1))
    if "first_order_linf" in methods:
        bounds["grad_l1_upper"] = grad_l1_upper(mean_a, mean_b, num_a, num_b, sigma, alpha_each)
        rows.append(("first_order_linf", bounds["grad_l1_upper"], dim))
    if "subspace_l2" in methods:
        keep = mask.reshape(-1).astype(mean_a.dtype)
        bounds["subspace_grad_l2_upper"] = grad_dual_norm_upper(
            mean_a * keep, mean_b * keep, num_a, num_b, sigma, alpha_each, 2, subspace_dim=subspace_dim
        )
        rows.append(("subspace_l2", bounds["subspace_grad_l2_upper"], 1))
    dual = jnp.stack([r[1] for r in rows])  # [k, batch]
    lengths_sq = jnp.asarray([r[2] for r in rows], dual.dtype)[:, None]
    radius = subspace_radius(p_lower[None], l2_lower[None], dual, sigma, p=math.inf, subspace_dim=lengths_sq)
    radii = {name: radius[i] for i, (name, _, _) in enumerate(rows)}
    if "first_order_linf" in radii:
        inconsistent = (p_lower > 0.5) & (bounds["grad_l1_upper"] < l2_lower * (1 - 1e-9))
        radii["first_order_linf"] = jnp.where(inconsistent, jnp.nan, radii["first_order_linf"])
    return radii, bounds


def certify_in_batches(apply_fn, params, xs, key, *, inputs_per_call: int, input_ids=None, callback=None, **kwargs):
    """:func:`certify` over a large dataset, ``inputs_per_call`` inputs at a time, one compiled program.

    Input ``i`` uses the id ``input_ids[i]`` (default ``i``), so the result equals one big
    :func:`certify` call and does not depend on ``inputs_per_call``. The last, partial group is
    padded to ``inputs_per_call`` (repeating its last input) so that every call has the same shape
    and nothing recompiles; the padding is dropped. ``callback(done, total)`` is called after each
    group (e.g. to update a progress bar; progress display is the caller's job).

    Args:
      xs: ``[num_inputs, *input_shape]`` (a NumPy array is fine; groups are moved to the device
        one at a time). Other arguments as :func:`certify` (``kwargs``: sigma, n0, n, alpha,
        batch_size, methods, subspace).

    Returns:
      one :class:`CertifyResult` for all inputs (NumPy arrays).
    """
    V.check_static_int("inputs_per_call", inputs_per_call, 1)
    total = np.shape(xs)[0]
    ids = np.arange(total) if input_ids is None else np.asarray(input_ids)
    if ids.shape != (total,):
        raise ValueError(f"input_ids must have one entry per input ({total}), got shape {ids.shape}.")
    xs = np.asarray(xs)
    parts = []
    for lo in range(0, total, inputs_per_call):
        hi = min(lo + inputs_per_call, total)
        take = np.concatenate([np.arange(lo, hi), np.full(inputs_per_call - (hi - lo), hi - 1)])
        res = certify(apply_fn, params, xs[take], key, input_ids=ids[take], **kwargs)
        parts.append(jax.tree_util.tree_map(lambda a, k=hi - lo: np.asarray(a)[:k], res))
        if callback is not None:
            callback(hi, total)
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)
