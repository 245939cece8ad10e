"""Cohen's PREDICT and CERTIFY for a batch of inputs: a device program for the samples, a host
program for the certificate math.

:func:`certify` runs, for a batch of inputs, two compiled programs (one each per input shape and
static configuration; repeated calls do not recompile when the same ``apply_fn`` object is passed):

1. on the devices (the model's own dtype, int32 counts, double-word float sums, no 64-bit type):
   selection, ``n0`` noise samples per input and the top class ``c_A`` = most frequent class;
   estimation, ``n`` fresh samples per input (:mod:`smoothjax.sampling`) with only the statistics
   the requested methods need;
2. on the host CPU, in float64 (``jax.enable_x64`` scoped to this program; no global setting is
   changed): the confidence bounds and radii of every requested method.

The device program is ``shard_map``-ped over a mesh with the axes ``"inputs"`` and ``"samples"``
(``mesh=``; default every device on the inputs axis), also across processes; parameters the caller
sharded over further mesh axes (e.g. ``"model"``) keep their sharding (:mod:`smoothjax._sharding`).
The host sits between the two programs once per call, never inside the per-sample loop.

Float32-only mode. ``certify(..., certificate_math="device")``, or any call under an outer
``jit`` (traced inputs), runs statistics and math in one program on the device in the ambient
precision (float32 unless the caller turned x64 on): sound (the math widens its margins in
float32, see each certificate) but less tight, and without the host round trip.

Large datasets: :func:`certify_in_batches` certifies any number of inputs a fixed number at a time
(one compiled program; the last group is padded), with results equal to one big call.

Keys. Input ``b`` uses the key ``fold_in(fold_in(key, stream), input_ids[b])`` with stream 0 for
selection, 1 for estimation and 2 for :func:`predict`, and noise sample ``i`` is a counter-based
function of that key and ``i`` (:func:`smoothjax.sampling.standard_normal`), so a result depends
only on ``(key, input_id)``: certifying a dataset in batches of any size (pass the
dataset indices as ``input_ids``), with any ``batch_size``, on any mesh, gives the same counts
(float sums agree to their documented accumulation bound).

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
``top2_l2``          ``p_A`` lower at alpha/2, the runner-up's probability (the second class of
                     the selection pass) upper at alpha/2; Cohen et al. Theorem 1 in its general
                     form (:func:`smoothjax.certificates.top2_radius`).
===================  ========================================================================

(The first paper's code spends 1.25 alpha on its l1/linf radii; here every certificate spends
exactly alpha.) The guarantee is per certificate, as in both papers; a statement about all
reported radii at once holds at ``1 - k alpha`` for ``k`` methods (union bound). Radii are in input
units and in the norm their name says (``subspace_l2``: an l2 ball of perturbations restricted to
the coordinates selected by ``subspace``).

Only dipole. When the dipole certificate is the only one requested, the estimation pass draws only
its ``n/2`` antithetic pairs (``n`` model rows, not ``1.5 n``), and Cohen's bound behind the
prediction uses the ``n/2`` iid ``+`` sides.

Float statistics. The sums of the device program carry an accumulation bound
(:mod:`smoothjax.sampling`); the SoS bound adds ``dot_sum_error`` to the dot-product estimate and
the first-order bounds take the split-half means at the worst corner of their error boxes, so the
bounds hold for the exact sums.

Abstaining. ``prediction`` is ``c_A`` when Cohen's lower bound at alpha exceeds 1/2 (Cohen et
al.'s CERTIFY), else :data:`smoothjax.ABSTAIN` (-1); every radius is 0 where the prediction is -1,
and a method whose own bound does not certify (or whose certificate is NaN, e.g. contradictory
confidence bounds) reports radius 0 with ``method_abstained[name] = True``. ``abstain_reason`` is a
bit mask per input of :class:`smoothjax.results.AbstainReason` (printable by name).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.typing import ArrayLike

from smoothjax import _sharding
from smoothjax import _validation as V
from smoothjax._config import float_dtype
from smoothjax.binomial import binomial_two_sided_pvalue, clopper_pearson_lower, clopper_pearson_upper
from smoothjax.certificates import cohen_radius, dipole_radius, sos_radius, top2_radius
from smoothjax.first_order import subspace_radius_solution
from smoothjax.gradient_bounds import (
    grad_dual_norm_upper,
    grad_l1_upper,
    grad_l2_bounds,
    grad_linf_upper,
    sos_grad_norm_upper,
)
from smoothjax.results import ABSTAIN, AbstainReason, CertifyResult, abstain_reasons  # noqa: F401  (re-exported)
from smoothjax.sampling import (
    SampleStatistics,
    check_input_ids,
    combine,
    device_statistics,
    model_dtype,
    noise_dtype,
    validate_sampling_args,
)

__all__ = [
    "ABSTAIN",
    "ALL_METHODS",
    "DEFAULT_METHODS",
    "AbstainReason",
    "CertifyResult",
    "certify",
    "certify_in_batches",
    "predict",
]

ALL_METHODS = ("cohen_l2", "sos_l2", "dipole_l2", "first_order_l1", "first_order_linf", "subspace_l2", "top2_l2")
DEFAULT_METHODS = ("cohen_l2", "sos_l2", "dipole_l2", "first_order_l1", "first_order_linf")

REASON_LOW_PROBABILITY = AbstainReason.LOW_PROBABILITY
REASON_NONFINITE_LOGITS = AbstainReason.NONFINITE_LOGITS
REASON_NONFINITE_INPUT = AbstainReason.NONFINITE_INPUT
REASON_METHOD_FAILED = AbstainReason.METHOD_FAILED
REASON_INVALID_ARGUMENT = AbstainReason.INVALID_ARGUMENT

_SELECTION_STREAM, _ESTIMATION_STREAM, _PREDICT_STREAM = 0, 1, 2
_PAIR_METHODS = ("sos_l2", "dipole_l2")
_FIRST_ORDER = ("first_order_l1", "first_order_linf", "subspace_l2")
_MATH = ("host", "device")


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
    return mask


def _check_math(certificate_math):
    if certificate_math not in _MATH:
        raise ValueError(f"certificate_math must be 'host' (float64 on the host CPU) or 'device' (one program in "
                         f"the ambient precision); got {certificate_math!r}.")


def _stream_key(key, stream):
    return jax.random.fold_in(key, stream)


@functools.cache
def _host_cpu():
    return jax.local_devices(backend="cpu")[0]


def _on_host_x64(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in float64 on the host CPU (scoped x64), results as NumPy arrays."""
    with jax.enable_x64(True), jax.default_device(_host_cpu()):
        out = fn(*args, **kwargs)
        return jax.tree_util.tree_map(np.asarray, out)


def _precision_tags(apply_fn, params, xs):
    precision = jax.config.jax_default_matmul_precision
    return dict(model_dtype=str(model_dtype(apply_fn, params, xs)),
                matmul_precision="default" if precision is None else str(precision))


# ----------------------------------------------------------------------------- predict


def predict(
    apply_fn: Callable,
    params: Any,
    xs: ArrayLike,
    key: jax.Array,
    *,
    sigma: ArrayLike,
    n: int,
    alpha: ArrayLike,
    batch_size: int,
    input_ids: ArrayLike | None = None,
    mesh: Mesh | None = None,
) -> np.ndarray | jax.Array:
    """Cohen et al.'s PREDICT for a batch: the top class, or -1 where the binomial test fails.

    With ``n`` noise samples per input, ``n_A, n_B`` the two largest class counts: predict ``c_A``
    if the two-sided exact binomial test of ``n_A`` out of ``n_A + n_B`` against 1/2 has p-value
    <= alpha, else abstain (-1). An input whose model logits were NaN/inf for some sample abstains.

    Args:
      apply_fn, params: the classifier ``apply_fn(params, x [m, *input_shape]) -> logits [m, C]``.
      xs: ``[batch, *input_shape]`` inputs. key: PRNG key. sigma: noise std (input units).
      n: static number of samples. alpha: test level in (0, 1). batch_size: samples per input per step.
      input_ids: ``[batch]`` ids the per-input keys are derived from (default ``arange(batch)``).
      mesh: optional ``Mesh`` with the axes ``"inputs"`` and ``"samples"`` and possibly others
        (see :func:`certify`, also for sharded ``params``).

    Returns:
      int32 ``[batch]`` predictions (-1 = abstain): a NumPy array (a traced array under an outer ``jit``).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> f = lambda p, x: jnp.stack([x[:, 0], -x[:, 0]], -1)   # class 0 iff x_0 > 0
      >>> xs = np.array([[2.0, 0.0], [0.0, 0.0]], np.float32)
      >>> predict(f, None, xs, jax.random.key(0), sigma=1.0, n=1000, alpha=0.001, batch_size=500).tolist()
      [0, -1]
    """
    V.check_scalar("sigma", sigma, "one noise level for every input and pixel; call predict once per sigma")
    V.check_alpha(alpha)
    validate_sampling_args(
        apply_fn, params, xs, sigma=sigma, num_samples=n, batch_size=batch_size, pairs=False, name="n"
    )
    ids = check_input_ids(input_ids, np.shape(xs)[0])
    flags = dict(n=n, batch_size=batch_size)
    if not V.is_concrete((xs, sigma, alpha, ids)):
        counts, nonfinite, finite = _predict_statistics(apply_fn, params, jnp.asarray(xs), key, ids, sigma, **flags)
        return _predict_math(counts, nonfinite, finite, alpha)
    mesh = _sharding.resolve_mesh(mesh, np.shape(xs)[0], params)
    xs = np.asarray(xs)
    xs_g, ids_g, local = _sharding.shard_inputs(mesh, xs, np.asarray(ids))
    sigma_dev = jnp.asarray(sigma, noise_dtype(xs))
    out = _predict_jit(apply_fn, params, xs_g, key, ids_g, sigma_dev, mesh=mesh, **flags)
    counts, nonfinite, finite = _sharding.local_results(mesh, out, local)
    return _on_host_x64(_predict_math_jit, counts.astype(np.int64), nonfinite, finite, np.float64(alpha))


def _predict_statistics(apply_fn, params, xs, key, ids, sigma, *, n, batch_size, samples_axis=None):
    stats = device_statistics(apply_fn, params, xs, _stream_key(key, _PREDICT_STREAM), sigma, None, ids,
                              num_samples=n, batch_size=batch_size, samples_axis=samples_axis)
    return stats.counts, stats.nonfinite, jnp.all(jnp.isfinite(_flat(xs)), axis=1)


@functools.partial(jax.jit, static_argnames=("apply_fn", "n", "batch_size", "mesh"))
def _predict_jit(apply_fn, params, xs, key, ids, sigma, *, n, batch_size, mesh):
    def per_shard(xs, ids, params, key, sigma):
        return _predict_statistics(apply_fn, params, xs, key, ids, sigma, n=n, batch_size=batch_size,
                                   samples_axis=_sharding.SAMPLES)

    return _sharding.run(per_shard, mesh, (xs, ids), (params, key, sigma))


def _predict_math(counts, nonfinite, finite, alpha):
    top2 = jax.lax.top_k(counts, 2)[0] if counts.shape[1] > 1 else counts
    n_a = top2[:, 0]
    n_b = top2[:, 1] if top2.shape[1] > 1 else jnp.zeros_like(n_a)
    pvalue = binomial_two_sided_pvalue(n_a, n_a + n_b)
    top = jnp.argmax(counts, axis=1).astype(jnp.int32)
    ok = (pvalue <= alpha) & (nonfinite == 0) & finite
    return jnp.where(ok, top, ABSTAIN).astype(jnp.int32)


_predict_math_jit = jax.jit(_predict_math)


def _flat(xs):
    return xs.reshape((xs.shape[0], -1))


# ----------------------------------------------------------------------------- certify


def certify(
    apply_fn: Callable,
    params: Any,
    xs: ArrayLike,
    key: jax.Array,
    *,
    sigma: ArrayLike,
    n0: int,
    n: int,
    alpha: ArrayLike,
    batch_size: int,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    subspace: ArrayLike | None = None,
    input_ids: ArrayLike | None = None,
    mesh: Mesh | None = None,
    certificate_math: str = "host",
    rows_per_call: int | None = None,
) -> CertifyResult:
    """Certify a batch of inputs with every requested method (see the module docstring).

    Args:
      apply_fn: pure ``apply_fn(params, x [m, *input_shape]) -> logits [m, num_classes]`` (pass the
        same function object on every call: it is a static argument of the compiled program).
      params: pytree of model parameters: replicated over the devices, except arrays the caller
        sharded (a ``NamedSharding`` over ``mesh``), which keep their sharding (see ``mesh``).
      xs: ``[batch, *input_shape]`` inputs; noise is drawn and added in float32 (float64 for
        float64 inputs), the model computes in its own dtype.
      key: PRNG key (``jax.random.key``).
      sigma: noise standard deviation (input units). alpha: failure probability in (0, 1).
      n0, n: static sample counts of the selection and estimation passes (``n0 <= n``; ``n`` even
        when ``sos_l2`` or ``dipole_l2`` is requested; ``n < 2^31``).
      batch_size: static, noise samples per input per step (even when pairs are needed). The model
        sees ``batch * batch_size`` rows per step (``1.5x`` with ``dipole_l2`` and another method).
      methods: certificate names from :data:`ALL_METHODS`.
      subspace: optional boolean mask of the input shape selecting the coordinates an adversary
        may perturb; adds ``"subspace_l2"``.
      input_ids: ``[batch]`` ids (e.g. dataset indices) the noise keys derive from.
      mesh: optional ``jax.sharding.Mesh`` with the axes ``"inputs"`` and ``"samples"``
        (``smoothjax.make_mesh(i, s)``) and possibly others, e.g. ``"model"``. The program is
        manual over inputs and samples only: parameters sharded over the other axes keep that
        sharding and XLA partitions the model over them (tensor parallelism); parameters sharded
        over ``"inputs"`` or ``"samples"``, or over another mesh, raise ``ValueError`` (every
        device of those axes evaluates the whole model). Default: the mesh the parameters are
        sharded over if it has those two axes, else every device on the inputs axis (few inputs:
        their samples split too). With several processes each passes its own inputs and gets its
        own results.
      certificate_math: ``"host"`` (default: float64 on the host CPU) or ``"device"`` (float32-only
        mode: one program in the ambient precision, see the module docstring).
      rows_per_call: static, optional cap on the rows of one model call (default: all inputs of a
        step in one call, ``batch * batch_size`` rows). The inputs of a step are then evaluated in
        groups; results do not change. On a CPU, calls of a few thousand rows stay in cache
        (measured 1.3x faster for a small CNN at 2000 rows per call than at 8000).

    Returns:
      :class:`CertifyResult` (NumPy arrays; traced arrays under an outer ``jit``).

    Raises:
      ValueError: bad sigma, alpha, sample counts (n0 > n, odd n or batch_size with pair methods),
        unknown methods, NaN/inf inputs, inputs the model rejects, a malformed subspace mask or mesh,
        parameters sharded over the inputs or samples axis or over another mesh.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> f = lambda p, x: jnp.stack([x[:, 0], -x[:, 0]], -1)   # class 0 iff x_0 > 0
      >>> res = certify(f, None, np.array([[1.0, 0.0]], np.float32), jax.random.key(0), sigma=0.5,
      ...               n0=64, n=10_000, alpha=0.001, batch_size=1000, methods=("cohen_l2", "sos_l2"))
      >>> int(res.prediction[0]), 0.8 < float(res.radii["cohen_l2"][0]) <= 1.0
      (0, True)
    """
    methods = _normalise_methods(methods, subspace)
    V.check_scalar("sigma", sigma, "one noise level for every input and pixel; call certify once per sigma")
    V.check_alpha(alpha)
    _check_math(certificate_math)
    needs_pairs = any(m in methods for m in _PAIR_METHODS)
    num_classes = validate_sampling_args(
        apply_fn, params, xs, sigma=sigma, num_samples=n, batch_size=batch_size, pairs=needs_pairs, name="n"
    )
    V.check_static_int("n0", n0, 1)
    if rows_per_call is not None:
        V.check_static_int("rows_per_call", rows_per_call, 1)
    if n0 > n:
        raise ValueError(f"n0 (selection samples, {n0}) must not exceed n (estimation samples, {n}).")
    if any(m in methods for m in _FIRST_ORDER) and n < 4:
        raise ValueError(f"first-order certificates need n >= 4 samples (two halves); got n = {n}.")
    if "top2_l2" in methods and num_classes < 2:
        raise ValueError("method 'top2_l2' needs a model with at least two classes.")
    mask = _check_subspace(subspace, np.shape(xs)[1:])
    ids = check_input_ids(input_ids, np.shape(xs)[0])
    config = _config(methods, n0=n0, n=n, batch_size=batch_size, dim=int(np.prod(np.shape(xs)[1:])),
                     subspace_dim=None if mask is None else int(mask.sum()), xs_dtype=noise_dtype(xs),
                     rows_per_call=rows_per_call)
    tags = _precision_tags(apply_fn, params, xs)
    if certificate_math == "device" or not V.is_concrete((xs, sigma, alpha, ids, params)):
        sigma_f, alpha_f = (jnp.asarray(v, float_dtype()) for v in (sigma, alpha))
        mask_j = None if mask is None else jnp.asarray(mask)
        return _certify_one_program(apply_fn, params, jnp.asarray(xs), key, jnp.asarray(ids), sigma_f, alpha_f, mask_j,
                  config=config, tags=tuple(tags.items()))
    mesh = _sharding.resolve_mesh(mesh, np.shape(xs)[0], params)
    xs = np.asarray(xs)
    xs_g, ids_g, local = _sharding.shard_inputs(mesh, xs, np.asarray(ids))
    device_out = _statistics_jit(apply_fn, params, xs_g, key, ids_g, jnp.asarray(sigma, noise_dtype(xs)),
                                 mesh=mesh, config=config)
    selection, top, finite, dev = _sharding.local_results(mesh, device_out, local)
    stats = combine(dev, float(sigma), top, xs_dtype=config.xs_dtype, input_dim=config.dim, num_samples=n,
                    batch_size=batch_size, pairs_only=config.pairs_only,
                    sample_shards=mesh.shape[_sharding.SAMPLES])
    ids_local = np.asarray(ids)[:local] if local <= np.shape(ids)[0] else np.asarray(ids)
    return _on_host_x64(
        _certificates_jit, stats, selection.counts.astype(np.int64), selection.nonfinite.astype(np.int64), top,
        finite, ids_local, np.float64(sigma), np.float64(alpha), mask, config=config, tags=tuple(tags.items()))


class CertifyConfig(NamedTuple):
    """Static configuration of the certify programs (hashable; one compiled program per value)."""

    methods: tuple
    n0: int
    n: int
    batch_size: int
    dim: int
    subspace_dim: int | None
    xs_dtype: np.dtype
    dot_product: bool
    dipole: bool
    split_half: bool
    pairs_only: bool
    rows_per_call: int | None = None


def _config(methods, *, n0, n, batch_size, dim, subspace_dim, xs_dtype, rows_per_call=None) -> CertifyConfig:
    first_order = tuple(m for m in methods if m in _FIRST_ORDER)
    iid_needed = any(m in methods for m in ("cohen_l2", "sos_l2", "top2_l2") + _FIRST_ORDER)
    return CertifyConfig(methods=methods, n0=n0, n=n, batch_size=batch_size, dim=dim, subspace_dim=subspace_dim,
                         xs_dtype=np.dtype(xs_dtype), dot_product="sos_l2" in methods,
                         dipole="dipole_l2" in methods, split_half=bool(first_order),
                         pairs_only="dipole_l2" in methods and not iid_needed, rows_per_call=rows_per_call)


def _statistics(apply_fn, params, xs, key, ids, sigma, *, config, samples_axis=None):
    """The device part: selection counts, the top class, the estimation statistics (double words)."""
    selection = device_statistics(apply_fn, params, xs, _stream_key(key, _SELECTION_STREAM), sigma, None, ids,
                                  num_samples=config.n0, batch_size=config.batch_size, samples_axis=samples_axis,
                                  rows_per_call=config.rows_per_call)
    top = jax.lax.argmax(selection.counts, 1, jnp.int32)
    estimation = device_statistics(
        apply_fn, params, xs, _stream_key(key, _ESTIMATION_STREAM), sigma, top, ids,
        num_samples=config.n, batch_size=config.batch_size, dot_product=config.dot_product, dipole=config.dipole,
        split_half=config.split_half, pairs_only=config.pairs_only, samples_axis=samples_axis,
        rows_per_call=config.rows_per_call,
    )
    finite = jnp.all(jnp.isfinite(_flat(xs)), axis=1)
    return selection, top, finite, estimation


@functools.partial(jax.jit, static_argnames=("apply_fn", "mesh", "config"))
def _statistics_jit(apply_fn, params, xs, key, ids, sigma, *, mesh, config):
    def per_shard(xs, ids, params, key, sigma):
        return _statistics(apply_fn, params, xs, key, ids, sigma, config=config, samples_axis=_sharding.SAMPLES)

    return _sharding.run(per_shard, mesh, (xs, ids), (params, key, sigma))


@functools.partial(jax.jit, static_argnames=("apply_fn", "config", "tags"))
def _certify_one_program(apply_fn, params, xs, key, ids, sigma, alpha, mask, *, config, tags):
    selection, top, finite, dev = _statistics(apply_fn, params, xs, key, ids, sigma.astype(config.xs_dtype),
                                              config=config)
    stats = combine(dev, sigma, top, xs_dtype=config.xs_dtype, input_dim=config.dim, num_samples=config.n,
                    batch_size=config.batch_size, pairs_only=config.pairs_only)
    return _certificates(stats, selection.counts, selection.nonfinite, top, finite, ids, sigma, alpha, mask,
                         config=config, tags=tags)


def _certificates(stats: SampleStatistics, selection_counts, selection_nonfinite, top, finite, ids, sigma, alpha,
                  mask, *, config, tags) -> CertifyResult:
    """The certificate math from the statistics (host program in float64, or inside the device program)."""
    methods = config.methods
    ftype = float_dtype()
    sigma, alpha = jnp.asarray(sigma, ftype), jnp.asarray(alpha, ftype)
    counts = jnp.asarray(stats.counts)
    top = jnp.asarray(top).astype(jnp.int32)
    n_a = jnp.take_along_axis(counts, top[:, None], axis=1)[:, 0]
    trials = stats.count_samples
    # Every Clopper-Pearson lower bound in ONE call (one solver in the compiled program, not four).
    cp_k, cp_n, cp_alpha = [n_a, n_a], [trials, trials], [alpha, alpha / 2]
    if "dipole_l2" in methods:
        cp_k += [jnp.asarray(stats.dipole_both), jnp.asarray(stats.dipole_plus_only)]
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
        # the dot-product estimate widened by its accumulation bound (toward a larger gradient)
        est = (jnp.asarray(stats.dot_sum) + jnp.asarray(stats.dot_sum_error)) / stats.num_pairs
        grad_up = sos_grad_norm_upper(est, stats.num_pairs, dim=config.dim, sigma=sigma, alpha=alpha / 2,
                                      p_lower=p_half)
        radii["sos_l2"] = sos_radius(p_half, grad_up, sigma)
        p_lower["sos_l2"] = p_half
        bounds["sos_grad_norm_upper"] = grad_up
    if "dipole_l2" in methods:
        cs, cn = cp[2], cp[3]
        radii["dipole_l2"] = dipole_radius(cs, cn, sigma)
        p_lower["dipole_l2"] = cs
        bounds["dipole_plus_only_lower"] = cn
    if "top2_l2" in methods:
        runner = _runner_up(jnp.asarray(selection_counts), top)
        n_b = jnp.take_along_axis(counts, runner[:, None], axis=1)[:, 0]
        pb_upper = clopper_pearson_upper(n_b, jnp.asarray(trials, ftype), alpha / 2)
        radii["top2_l2"] = top2_radius(p_half, pb_upper, sigma=sigma)
        p_lower["top2_l2"] = p_half
        bounds["top2_runner_up_upper"] = pb_upper
    first_order = [m for m in methods if m in _FIRST_ORDER]
    if first_order:
        radii_fo, bounds_fo, conv_fo = _first_order_radii(stats, p_half, sigma, alpha / 4, mask, config.subspace_dim,
                                                          first_order)
        radii.update(radii_fo)
        bounds.update(bounds_fo)
        converged.update(conv_fo)
        for m in first_order:
            p_lower[m] = p_half

    certified = p_cohen > 0.5
    nonfinite = jnp.asarray(stats.nonfinite) + jnp.asarray(selection_nonfinite)
    reason = jnp.where(certified, 0, int(REASON_LOW_PROBABILITY))
    reason = reason | jnp.where(nonfinite > 0, int(REASON_NONFINITE_LOGITS), 0)
    reason = reason | jnp.where(jnp.asarray(finite), 0, int(REASON_NONFINITE_INPUT))
    # sigma / alpha outside their domain (only reachable when traced: concrete values raise first)
    valid_args = jnp.isfinite(sigma) & (sigma > 0) & (alpha > 0) & (alpha < 1)
    reason = reason | jnp.where(valid_args, 0, int(REASON_INVALID_ARGUMENT))
    failed = jnp.zeros_like(certified)
    for name in radii:
        failed = failed | jnp.isnan(radii[name])
    reason = (reason | jnp.where(failed & (reason == 0), int(REASON_METHOD_FAILED), 0)).astype(jnp.int32)
    ok = (reason & ~int(REASON_METHOD_FAILED)) == 0
    prediction = jnp.where(ok, top, ABSTAIN).astype(jnp.int32)
    method_abstained, solver_converged = {}, {}
    for name in list(radii):
        r = jnp.asarray(radii[name], ftype)
        good = ok & ~jnp.isnan(r) & (r > 0)  # +inf is legitimate (subspace_l2: g constant along S)
        radii[name] = jnp.where(good, r, 0.0)
        method_abstained[name] = ~good
        solver_converged[name] = converged.get(name, jnp.ones_like(certified))
    return CertifyResult(
        prediction=prediction,
        radii=radii,
        p_lower=p_lower,
        bounds=bounds,
        method_abstained=method_abstained,
        solver_converged=solver_converged,
        abstain_reason=reason,
        top_class=top,
        selection_counts=jnp.asarray(selection_counts),
        statistics=stats,
        input_ids=jnp.asarray(ids),
        **dict(tags),
    )


_certificates_jit = jax.jit(_certificates, static_argnames=("config", "tags"))


def _runner_up(selection_counts, top):
    """The class with the most selection counts other than ``top`` (the lowest index on ties)."""
    masked = jnp.where(jnp.arange(selection_counts.shape[1])[None, :] == top[:, None], -1, selection_counts)
    return jnp.argmax(masked, axis=1).astype(jnp.int32)


def _box_corner(x, y, err, lowest: bool):
    """Per coordinate, the corner of ``[x +- err] x [y +- err]`` with the smallest (or largest) ``x y``."""
    corners = [(x + sx * err, y + sy * err) for sx in (-1.0, 1.0) for sy in (-1.0, 1.0)]
    prods = jnp.stack([a * b for a, b in corners])
    pick = jnp.argmin(prods, axis=0) if lowest else jnp.argmax(prods, axis=0)
    xs = jnp.stack([a for a, _ in corners])
    ys = jnp.stack([b for _, b in corners])
    return (jnp.take_along_axis(xs, pick[None], axis=0)[0], jnp.take_along_axis(ys, pick[None], axis=0)[0])


def _first_order_radii(stats, p_lower, sigma, alpha_each, mask, subspace_dim, methods):
    """First-paper radii (Corollaries 3.2-3.4) from the split-half means of ``z``.

    ``converged`` is False where Theorem 3's solver returned its certified fallback (sound, possibly
    loose). Each gradient-norm bound holds on its own at ``1 - alpha_each`` (``alpha_each = alpha/4``; see
    :mod:`smoothjax.gradient_bounds`), so with ``p_lower`` at alpha/2 every radius spends alpha.
    The subspace bound uses the means with the coordinates outside the mask set to 0 (the same
    dot products and norms as the projected coordinates) and ``subspace_dim = mask.sum()``.

    Accumulation error: every entry of the means is within ``e = z_sum_error / num`` of the exact
    mean, so the l2 lower bound (increasing in ``X.Y``) takes each coordinate at the corner of its
    error box with the smallest ``X_j Y_j``, the subspace l2 upper bound at the largest, and the
    linf / l1 upper bounds (increasing in ``|M_j|``, ``M`` the pooled mean) move both halves by
    ``e`` away from zero along ``M``.

    All radii come from ONE call of the Theorem 3 solver (compiling it dominates the program's
    compile time): by :func:`smoothjax.first_order.subspace_radius`'s formula with ``p = inf``,
    ``R = sigma R_v(q, -sigma b / n, sigma sqrt(l^2 - (b/n)^2)) / n`` with ``n = sqrt(d_S)``, which is
    Corollary 3.2 (l1) for ``b = ||grad||_inf`` upper, ``d_S = 1``; Corollary 3.3 (linf) for
    ``b = ||grad||_1`` upper, ``d_S = d`` (plus :func:`~smoothjax.first_order.linf_radius`'s check
    ``||grad||_1 upper >= ||grad||_2 lower``, NaN otherwise); Corollary 3.4 with p = 2 for
    ``b = ||P_S grad||_2`` upper, ``d_S = 1``.
    """
    mean_a, mean_b = jnp.asarray(stats.z_mean_a), jnp.asarray(stats.z_mean_b)
    num_a, num_b = stats.num_a, stats.num_b
    err = jnp.asarray(stats.z_sum_error)[:, None] / min(num_a, num_b)
    dim = mean_a.shape[-1]
    low_a, low_b = _box_corner(mean_a, mean_b, err, lowest=True)
    l2_lower = grad_l2_bounds(low_a, low_b, num_a, num_b, sigma=sigma, alpha=alpha_each).lower
    pooled = (num_a * mean_a + num_b * mean_b) / (num_a + num_b)
    away = jnp.where(pooled < 0, -1.0, 1.0) * err
    up_a, up_b = mean_a + away, mean_b + away
    bounds, rows = {"grad_l2_lower": l2_lower}, []
    if "first_order_l1" in methods:
        bounds["grad_linf_upper"] = grad_linf_upper(up_a, up_b, num_a, num_b, sigma=sigma, alpha=alpha_each)
        rows.append(("first_order_l1", bounds["grad_linf_upper"], 1))
    if "first_order_linf" in methods:
        bounds["grad_l1_upper"] = grad_l1_upper(up_a, up_b, num_a, num_b, sigma=sigma, alpha=alpha_each)
        rows.append(("first_order_linf", bounds["grad_l1_upper"], dim))
    if "subspace_l2" in methods:
        keep = jnp.asarray(mask).reshape(-1).astype(mean_a.dtype)
        hi_a, hi_b = _box_corner(mean_a, mean_b, err, lowest=False)
        bounds["subspace_grad_l2_upper"] = grad_dual_norm_upper(
            hi_a * keep[None], hi_b * keep[None], num_a, num_b, sigma=sigma, alpha=alpha_each, p=2,
            subspace_dim=subspace_dim,
        )
        rows.append(("subspace_l2", bounds["subspace_grad_l2_upper"], 1))
    dual = jnp.stack([r[1] for r in rows])  # [k, batch]
    lengths_sq = jnp.asarray([r[2] for r in rows], dual.dtype)[:, None]
    solution = subspace_radius_solution(p_lower[None], l2_lower[None], dual, sigma=sigma, p=math.inf,
                                        subspace_dim=lengths_sq)
    radii = {name: solution.radius[i] for i, (name, _, _) in enumerate(rows)}
    converged = {name: solution.converged[i] for i, (name, _, _) in enumerate(rows)}
    if "first_order_linf" in radii:
        inconsistent = (p_lower > 0.5) & (bounds["grad_l1_upper"] < l2_lower * (1 - 1e-9))
        radii["first_order_linf"] = jnp.where(inconsistent, jnp.nan, radii["first_order_linf"])
    return radii, bounds, converged


def certify_in_batches(
    apply_fn: Callable,
    params: Any,
    xs: ArrayLike,
    key: jax.Array,
    *,
    inputs_per_call: int,
    input_ids: ArrayLike | None = None,
    callback: Callable[[int, int], object] | None = None,
    **kwargs: Any,
) -> CertifyResult:
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
