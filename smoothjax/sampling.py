"""Streamed Gaussian-noise sampling and the sufficient statistics of every certificate.

:func:`sample_statistics` evaluates a classifier ``f(x) = argmax apply_fn(params, x)`` at
``x + e`` with ``e ~ N(0, sigma^2 I)`` for a batch of inputs, ``batch_size`` noise samples per
input per step, inside one ``lax.fori_loop``. Only running sums are carried, so memory does not
depend on ``num_samples`` (only on ``batch_size`` and the number of inputs).

Noise is drawn per sample index
-------------------------------
Input ``x_b`` gets the key ``k_b = fold_in(key, input_id_b)``; value ``j`` of its noise sample
``i`` is computed from the Threefry-2x32 hash of the counter ``(i, j // 2)`` under ``k_b``
(:func:`standard_normal`; ``i < 2^32``), turned into a normal as ``jax.random.normal`` does. The
statistics therefore depend only on ``(key, input_id, num_samples)``, never on ``batch_size``, on
how a dataset is split into calls, or on the number of devices. This counter-based draw costs one
hash per two random words, exactly like ``jax.random.normal``, so chunk-size invariance is free:
the alternative of a key per sample (``fold_in(k_b, i)`` then ``jax.random.normal``) measured
~25% slower noise and ~5x longer compile on CPU. On 2 CPU cores the noise of a row of 64 values
costs ~0.3 us, ~5% of the 8x8 CNN of ``benchmarks/models.py`` (``benchmarks/README.md``). Noise
is drawn and added in float32 (float64 only for float64 inputs), also when the inputs or the model
are bfloat16 / float16: noise quantised to 16 bits would no longer be Gaussian.

Any PRNG key works, typed (``jax.random.key(s, impl=...)``) or raw: its implementation derives the
per-input keys (``fold_in``), whose first two words seed the Threefry hash, so the noise is a
deterministic function of the key (``"rbg"`` keys give the noise of the Threefry key of the same
seed). It is no speed knob: the hash is Threefry whatever the key, and ``"rbg"``'s own bits (XLA's
RngBitGenerator) are ~5x slower on CPU and, under ``vmap``, all drawn from the first key.

Precision on the device
-----------------------
The sampling program holds no 64-bit type (TPUs have none, GPUs run them slowly): counts are int32
(so ``n < 2^31``), and float sums are carried as double words ``hi + lo`` of the noise dtype
(:mod:`smoothjax._summation`), combined in float64 on the host. Their accumulation error is bounded:
``|sum - exact sum of the per-sample values| <= 4 L u^2 S`` with ``u = 2^-24`` (float32), ``L`` the
number of additions a term passes through (``ceil(log2(chunk)) + number of chunks + sample
shards``) and ``S`` a bound on the sum of absolute values: ``S = n U / 2`` for the split-half
sums, accumulated in units of ``u = e / sigma`` (``|u (1 - 1/2)| <= U / 2``, ``U = 5.5`` the
largest ``|u|`` the float32 generator can return; 9 in float64; the bound is then scaled by
sigma), and the accumulated ``sum_pairs sum_j |u_j u'_j|`` (``dot_abs_sum``) for the dot
products, whose per-pair float32 products and sum over ``d`` add ``(u + 4 ceil(log2 d) u^2)``
times that. :attr:`SampleStatistics.dot_sum_error` and :attr:`SampleStatistics.z_sum_error` are
these bounds; the pipeline widens every confidence bound by them (toward the safe side). For
n = 10^5 in chunks of 1000 the bound is ~1e-12 of ``S``: far below the statistical deviations.

Statistics (per input ``b``, with ``t = target_class[b]`` and ``1_i = [f(x_b + e_i) = t]``)
-----------------------------------------------------------------------------------------------
- ``counts[b, c]``: number of samples ``i < n`` with ``f(x_b + e_i) = c``. Always computed.
- ``nonfinite[b]``: number of samples whose logits contained NaN or inf (their argmax is
  meaningless; :func:`smoothjax.pipeline.certify` abstains for such inputs).
- ``dot_product=True``: pairs ``(e_{2j}, e_{2j+1})``, ``j < n/2``, are independent, and
  ``dot_sum[b] = sum_j (e_{2j} . e_{2j+1}) 1_{2j} 1_{2j+1} / sigma^4``; its mean over the
  ``n/2`` pairs is the unbiased estimator of ``||grad g||^2`` of the second paper's Theorem 2
  (``E[e 1(x+e)] = sigma^2 grad g``). ``dot_sq_sum`` is the sum of squares (diagnostics).
- ``dipole=True``: antithetic pairs ``(x + e_{2j}, x - e_{2j})``, ``j < n/2`` (the ``+`` side
  reuses the estimation sample ``2j``; ``x - e_{2j}`` costs ``n/2`` extra model evaluations, so
  the model sees ``1.5 * batch_size`` rows per input per step). With ``pairs_only=True`` (only
  pair statistics wanted, e.g. the dipole certificate alone) the odd samples are never drawn:
  the model sees the ``n`` rows ``x +- e_{2j}`` and ``counts`` are over the ``n/2`` iid ``+``
  sides (``count_samples = n/2``). ``dipole_both[b]`` counts pairs
  with both sides ``= t``, ``dipole_plus_only[b]`` pairs with only the ``+`` side ``= t``
  (second paper, Theorem 3; ``n/2`` pairs as in its reference code).
- ``split_half=True``: ``z_i = e_i (1_i - 1/2)`` summed separately over even ``i`` (half a,
  ``ceil(n/2)`` samples) and odd ``i`` (half b, ``floor(n/2)`` samples): ``z_sum_a``, ``z_sum_b``
  of shape ``[batch, d]`` with ``d = prod(input_shape)``, flattened in C order. Their means
  estimate ``sigma^2 grad g`` (first paper, Table 1 / Theorem 5). Projections onto a subspace are
  linear, so they are exact functions of these means (``z @ basis``).

How the samples are shared, and why every certificate still holds at 1 - alpha
-----------------------------------------------------------------------------
All statistics of one estimation pass come from the same ``n`` iid samples ``e_i`` (plus the
mirrored ``-e_{2j}``). A union bound over the confidence bounds that one certificate uses needs
each bound to hold at its own level, which needs only that bound's own samples to be iid
(counts: ``e_i`` iid; dot products: the pairs iid; dipole: the antithetic pairs iid; split halves:
each half iid); it needs no independence between the bounds. The top class must be chosen on
separate samples (the selection pass of :func:`smoothjax.pipeline.certify`, a different key). The
alpha split per certificate is documented in :mod:`smoothjax.pipeline`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32
from jax.sharding import Mesh
from jax.typing import ArrayLike

from smoothjax import _sharding
from smoothjax import _summation as S
from smoothjax import _validation as V

# Largest number of samples per input: counts are int32 on the device.
MAX_NUM_SAMPLES = 2**31 - 1
# Largest |u| of a standard normal draw of :func:`standard_normal` (float32: 5.42; float64: 8.3).
U_MAX = {np.dtype(np.float32): 5.5, np.dtype(np.float64): 9.0}
MaybeArray = ArrayLike | None  # NumPy on the host, jax.Array under jit; None: not requested
DoubleWord = tuple[jax.Array, jax.Array]  # (hi, lo)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SampleStatistics:
    """Sufficient statistics of one sampling pass (see the module docstring for the math).

    Array fields have a leading ``[batch]`` axis; fields not requested are ``None``. From
    :func:`sample_statistics` (concrete inputs) integer fields are int64 and float fields float64
    NumPy arrays (the device's double-word sums combined on the host); under ``jit`` they are
    int32 and the ambient float dtype. ``z_sum_a``/``z_sum_b`` are in input units (they include
    the factor sigma of ``e``); ``dot_sum`` in 1/input units squared.
    ``dot_sum_error`` / ``z_sum_error`` bound the accumulation error of ``dot_sum`` / of every
    entry of ``z_sum_a`` and ``z_sum_b`` (same units; module docstring).
    """

    counts: ArrayLike  # [batch, num_classes]
    nonfinite: ArrayLike  # [batch]
    target_class: MaybeArray = None  # [batch] int32
    dot_sum: MaybeArray = None  # [batch]
    dot_sq_sum: MaybeArray = None  # [batch]
    dot_sum_error: MaybeArray = None  # [batch]
    dipole_both: MaybeArray = None  # [batch]
    dipole_plus_only: MaybeArray = None  # [batch]
    z_sum_a: MaybeArray = None  # [batch, d]
    z_sum_b: MaybeArray = None  # [batch, d]
    z_sum_error: MaybeArray = None  # [batch]
    num_samples: int = dataclasses.field(default=0, metadata=dict(static=True))
    count_samples: int = dataclasses.field(default=0, metadata=dict(static=True))

    @property
    def num_pairs(self) -> int:
        """Number of independent pairs (dot-product pairs and dipole pairs): ``num_samples // 2``."""
        return self.num_samples // 2

    @property
    def num_a(self) -> int:
        return (self.num_samples + 1) // 2

    @property
    def num_b(self) -> int:
        return self.num_samples // 2

    @property
    def target_count(self) -> ArrayLike:
        """``counts[b, target_class[b]]`` (requires ``target_class``)."""
        t = np.asarray(self.target_class) if isinstance(self.counts, np.ndarray) else self.target_class
        if isinstance(self.counts, np.ndarray):
            return np.take_along_axis(self.counts, t[:, None].astype(np.int64), axis=1)[:, 0]
        return jnp.take_along_axis(self.counts, t[:, None].astype(jnp.int32), axis=1)[:, 0]

    @property
    def dot_mean(self) -> ArrayLike:
        """Mean over pairs of ``(e.e') 1 1' / sigma^4``: estimates ``||grad g||^2`` (1/input units^2)."""
        return self.dot_sum / self.num_pairs

    @property
    def z_mean_a(self) -> ArrayLike:
        """Mean of ``z = e (1 - 1/2)`` over half a: estimates ``sigma^2 grad g``, ``[batch, d]``."""
        return self.z_sum_a / self.num_a

    @property
    def z_mean_b(self) -> ArrayLike:
        return self.z_sum_b / self.num_b


class DeviceStatistics(NamedTuple):
    """What the device program returns: int32 counts and double-word sums ``(hi, lo)``.

    Sums are in units of the standard normal draws ``u = e / sigma``: ``dot`` is
    ``sum_pairs u.u' 1 1'``, ``z_a``/``z_b`` are ``sum u (1 - 1/2)`` over the two halves.
    :func:`combine` turns them into :class:`SampleStatistics`.
    """

    counts: jax.Array
    nonfinite: jax.Array
    dipole_both: jax.Array | None = None
    dipole_plus_only: jax.Array | None = None
    dot: DoubleWord | None = None
    dot_sq: DoubleWord | None = None
    dot_abs: DoubleWord | None = None  # sum over pairs of sum_j |u_j u'_j|
    z_a: DoubleWord | None = None  # [batch, d]
    z_b: DoubleWord | None = None  # [batch, d]


def count_dtype() -> jnp.dtype:
    """The dtype of counts on the device: int32 (``n < 2^31`` is enforced)."""
    return jnp.int32


def noise_dtype(xs: ArrayLike) -> jnp.dtype:
    """Noise dtype for inputs ``xs``: float64 for float64 inputs, else float32 (also for bf16 / f16)."""
    dtype = jnp.asarray(xs).dtype if hasattr(xs, "dtype") else np.asarray(xs).dtype
    return jnp.dtype(jnp.float64) if dtype == jnp.float64 else jnp.dtype(jnp.float32)


_NUM_CLASSES_CACHE: dict = {}


def _num_classes(apply_fn: Callable, params: Any, input_shape: tuple[int, ...], dtype) -> tuple[int, jnp.dtype]:
    """``num_classes`` from ``jax.eval_shape`` of the model, memoised per (model, shapes)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    sig = (apply_fn, tree, tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves), input_shape,
           str(dtype))
    try:
        cached = _NUM_CLASSES_CACHE.get(sig)
    except TypeError:  # an unhashable apply_fn: no memo
        cached, sig = None, None
    if cached is not None:
        return cached
    probe = jax.ShapeDtypeStruct((2, *input_shape), dtype)
    try:
        out = jax.eval_shape(apply_fn, params, probe)
    except Exception as err:  # the model rejects the input shape
        raise ValueError(f"apply_fn(params, x) failed for x of shape {probe.shape} (inputs of shape {input_shape}): "
                         f"{err}") from err
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != 2:
        got = getattr(out, "shape", type(out))
        raise ValueError(f"apply_fn must return logits of shape [batch, num_classes]; for a batch of 2 inputs of "
                         f"shape {input_shape} it returned {got}.")
    result = (int(out.shape[1]), jnp.dtype(out.dtype))
    if sig is not None:
        if len(_NUM_CLASSES_CACHE) > 256:
            _NUM_CLASSES_CACHE.clear()
        _NUM_CLASSES_CACHE[sig] = result
    return result


def validate_sampling_args(apply_fn: Callable, params: Any, xs: ArrayLike, *, sigma: ArrayLike, num_samples: int,
                           batch_size: int, pairs: bool, name: str = "num_samples") -> int:
    """Host-side checks shared by the public entry points; returns ``num_classes``.

    Raises ``ValueError`` for: a bad sigma; non-finite inputs; inputs without a batch axis; a
    sample count below 1 or at least ``2^31``, or odd when ``pairs``; an odd ``batch_size`` when
    ``pairs``; an ``apply_fn`` that fails on ``[k, *input_shape]`` or does not return logits of
    shape ``[k, num_classes]``. The model probe (``jax.eval_shape``) is memoised per model and
    shapes, so repeated calls cost microseconds.
    """
    V.check_sigma(sigma)
    V.check_finite("xs", xs)
    shape = tuple(np.shape(xs))
    if len(shape) < 2:
        raise ValueError(f"xs must have a batch axis and at least one input axis, [batch, *input_shape]; "
                         f"got shape {shape}.")
    if shape[0] < 1:
        raise ValueError("xs must contain at least one input.")
    V.check_static_int(name, num_samples, 1)
    V.check_static_int("batch_size", batch_size, 1)
    if num_samples > MAX_NUM_SAMPLES:
        raise ValueError(f"{name} = {num_samples} exceeds the supported maximum {MAX_NUM_SAMPLES} per input "
                         "(counts are int32 on the device).")
    if pairs and num_samples % 2:
        raise ValueError(f"{name} must be even when pair statistics (SoS, dipole) are requested; got {num_samples}.")
    if pairs and batch_size % 2:
        raise ValueError(f"batch_size must be even when pair statistics (SoS, dipole) are requested; got {batch_size}.")
    return _num_classes(apply_fn, params, shape[1:], noise_dtype(xs))[0]


def model_dtype(apply_fn: Callable, params: Any, xs: ArrayLike) -> jnp.dtype:
    """The dtype of the logits ``apply_fn`` returns for inputs like ``xs`` (after validation)."""
    return _num_classes(apply_fn, params, tuple(np.shape(xs))[1:], noise_dtype(xs))[1]


def sample_statistics(apply_fn: Callable, params: Any, xs: ArrayLike, key: ArrayLike, *, sigma: ArrayLike,
                      num_samples: int, batch_size: int, target_class: ArrayLike | None = None,
                      input_ids: ArrayLike | None = None, dot_product: bool = False, dipole: bool = False,
                      split_half: bool = False, pairs_only: bool = False, mesh: Mesh | None = None,
                      rows_per_call: int | None = None) -> SampleStatistics:
    """Sufficient statistics of ``num_samples`` Gaussian-noise samples per input (module docstring).

    Args:
      apply_fn: pure ``apply_fn(params, x_batch [m, *input_shape]) -> logits [m, num_classes]``.
      params: pytree passed to ``apply_fn``.
      xs: inputs ``[batch, *input_shape]``; noise is drawn in float32 (float64 for float64 inputs).
      key: a JAX PRNG key. Input ``b`` uses ``fold_in(key, input_ids[b])``.
      sigma: noise standard deviation (input units), a scalar (may be traced).
      num_samples: static int ``n`` (samples per input).
      batch_size: static int, noise samples per input per loop step; the model sees
        ``batch * batch_size`` rows per step (``1.5x`` that with ``dipole``). Results do not depend on it.
      target_class: ``[batch]`` int, the class whose indicator the pair / split-half statistics
        use (required when any of them is requested).
      input_ids: ``[batch]`` non-negative ints (default ``arange(batch)``).
      dot_product, dipole, split_half: static flags selecting the statistics to compute.
      pairs_only: draw only the antithetic pairs (requires ``dipole`` and no other statistic).
      mesh: optional ``jax.sharding.Mesh`` with axes ``("inputs", "samples")`` and possibly more
        (e.g. ``"model"``: parameters sharded over it keep their sharding; see
        :func:`smoothjax.certify`). Default: the parameters' own mesh, else every device on the
        inputs axis (:mod:`smoothjax._sharding`).
      rows_per_call: optional static cap on the rows of one model call (see :func:`device_statistics`).

    Returns:
      :class:`SampleStatistics` (NumPy arrays, float64 sums, for concrete inputs; traced arrays
      in the ambient precision when called under ``jit``).

    Raises:
      ValueError: (outside jit) for the bad inputs listed in :func:`validate_sampling_args`, a
      missing ``target_class`` or malformed ``input_ids``.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> f = lambda p, x: jnp.stack([x[:, 0], -x[:, 0]], -1)   # class 0 iff x_0 > 0
      >>> st = sample_statistics(f, None, np.zeros((1, 3), np.float32), jax.random.key(0), sigma=1.0,
      ...                        num_samples=1000, batch_size=100)
      >>> int(st.counts.sum()), 400 < int(st.counts[0, 0]) < 600
      (1000, True)
    """
    num_classes = validate_sampling_args(apply_fn, params, xs, sigma=sigma, num_samples=num_samples,
                                         batch_size=batch_size, pairs=dot_product or dipole)
    if pairs_only and (dot_product or split_half or not dipole):
        raise ValueError("pairs_only=True draws only antithetic pairs: it needs dipole=True and no dot-product "
                         "or split-half statistics.")
    batch = np.shape(xs)[0]
    if (dot_product or dipole or split_half) and target_class is None:
        raise ValueError("target_class is required for the dot-product, dipole and split-half statistics.")
    if target_class is not None and V.is_concrete(target_class):
        t = np.asarray(target_class)
        if t.shape != (batch,) or t.dtype.kind not in "iu" or np.any(t < 0) or np.any(t >= num_classes):
            raise ValueError(f"target_class must be {batch} class indices in [0, {num_classes}), one per input.")
    input_ids = check_input_ids(input_ids, batch)
    flags = dict(num_samples=num_samples, batch_size=batch_size, dot_product=dot_product, dipole=dipole,
                 split_half=split_half, pairs_only=pairs_only, rows_per_call=rows_per_call)
    host = dict(xs_dtype=noise_dtype(xs), input_dim=int(np.prod(np.shape(xs)[1:])), num_samples=num_samples,
                batch_size=batch_size, pairs_only=pairs_only)
    target = None if target_class is None else jnp.asarray(target_class).astype(jnp.int32)
    if not V.is_concrete((xs, sigma, target_class, input_ids)):
        dev = device_statistics(apply_fn, params, jnp.asarray(xs), key, sigma, target, input_ids, **flags)
        return combine(dev, sigma, target, **host)
    mesh = _sharding.resolve_mesh(mesh, np.shape(xs)[0], params)
    target_np = np.zeros(batch, np.int32) if target is None else np.asarray(target)
    xs_g, ids_g, target_g, local = _sharding.shard_inputs(mesh, np.asarray(xs), np.asarray(input_ids), target_np)
    dev = _device_statistics_jit(apply_fn, params, xs_g, key, jnp.asarray(sigma, noise_dtype(xs)), target_g, ids_g,
                                 mesh=mesh, **flags)
    dev = _sharding.local_results(mesh, dev, local)
    return combine(dev, float(sigma), None if target is None else target_np,
                   sample_shards=mesh.shape[_sharding.SAMPLES], **host)


def check_input_ids(input_ids: ArrayLike | None, batch: int) -> ArrayLike:
    """``input_ids`` as a ``[batch]`` uint32 array (default ``arange(batch)``); ValueError if malformed."""
    if input_ids is None:
        return np.arange(batch, dtype=np.uint32)
    if V.is_concrete(input_ids):
        ids = np.asarray(input_ids)
        if ids.shape != (batch,) or ids.dtype.kind not in "iu" or np.any(ids < 0) or np.any(ids >= 2**32):
            raise ValueError(f"input_ids must be {batch} non-negative integers below 2^32, one per input.")
        return ids.astype(np.uint32)
    return jnp.asarray(input_ids).astype(jnp.uint32)


def _key_words(key: jax.Array) -> jax.Array:
    """The two uint32 words of a (typed or raw) PRNG key that seed the noise hash."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return key.reshape(-1)[:2].astype(jnp.uint32)


def standard_normal(key_words: ArrayLike, sample_idx: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """Standard normal noise ``[len(sample_idx), *shape]``, a pure function of (key, sample index).

    Value ``j`` of sample ``i`` comes from the Threefry-2x32 hash of the counter ``(i, j // 2)``
    under ``key_words`` (one hash gives two 32-bit words; float64 uses two words per value),
    turned into a uniform on (-1, 1) and then into a normal by ``sqrt(2) erfinv`` as
    ``jax.random.normal`` does. Any chunking of the sample indices gives the same noise, and it costs
    one hash per two words, the same as ``jax.random.normal`` (no per-sample key derivation).
    """
    return _erfinv_noise(key_words, sample_idx, shape, dtype) * _SQRT2[jnp.dtype(dtype)]


_SQRT2 = {jnp.dtype(t): t(np.sqrt(2.0)) for t in (np.float32, np.float64)}


def _erfinv_noise(key_words: ArrayLike, sample_idx: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """:func:`standard_normal` before its factor ``sqrt(2)``: ``erfinv`` of the uniforms.

    The two output words of each hash are transformed separately and joined afterwards: joining
    the raw words first puts the concatenation inside the ``erfinv`` loop, which XLA:CPU then runs
    about 4x slower (the values are the same bits either way).
    """
    dim = int(np.prod(shape))
    wide = jnp.dtype(dtype) == jnp.float64
    pairs = dim if wide else (dim + 1) // 2
    chunk = sample_idx.shape[0]
    x0 = jnp.broadcast_to(sample_idx[:, None], (chunk, pairs))
    x1 = jnp.broadcast_to(jnp.arange(pairs, dtype=jnp.uint32), (chunk, pairs))
    out = threefry_2x32((key_words[0], key_words[1]), jnp.concatenate([x0.ravel(), x1.ravel()]))
    first, second = out[:chunk * pairs].reshape(chunk, pairs), out[chunk * pairs:].reshape(chunk, pairs)
    if wide:  # value j: high word first[j], low word second[j]
        z = _erfinv_uniform((first.astype(jnp.uint64) << 32) | second.astype(jnp.uint64))
    else:  # value j: word j of first ++ second
        z = jnp.concatenate([_erfinv_uniform(first), _erfinv_uniform(second[:, :dim - pairs])], axis=1)
    return z.reshape((chunk, *shape)).astype(dtype)


def _erfinv_uniform(bits: jax.Array) -> jax.Array:
    """``erfinv`` of ``jax.random.normal``'s uniform on (-1, 1) from uint32 (float32) or uint64 (float64) words."""
    if bits.dtype == jnp.uint64:
        one, shift, ftype = jnp.uint64(0x3FF0000000000000), 12, np.float64
    else:
        one, shift, ftype = jnp.uint32(0x3F800000), 9, np.float32
    u = jax.lax.bitcast_convert_type((bits >> shift) | one, ftype) - ftype(1.0)  # uniform on [0, 1)
    lowest = np.nextafter(ftype(-1), ftype(0))  # a constant: no nextafter op in the program
    v = jnp.maximum(ftype(2.0) * u - ftype(1.0), lowest)  # uniform on (-1, 1)
    return jax.lax.erf_inv(v)


_STATIC = ("apply_fn", "num_samples", "batch_size", "dot_product", "dipole", "split_half", "pairs_only", "mesh",
           "rows_per_call")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _device_statistics_jit(apply_fn: Callable, params: Any, xs: jax.Array, key: jax.Array, sigma: jax.Array,
                           target_class: jax.Array, input_ids: jax.Array, *, mesh: Mesh, **kw) -> DeviceStatistics:
    def per_shard(xs, target_class, input_ids, params, key, sigma):
        return device_statistics(apply_fn, params, xs, key, sigma, target_class, input_ids,
                                 samples_axis=_sharding.SAMPLES, **kw)

    return _sharding.run(per_shard, mesh, (xs, target_class, input_ids), (params, key, sigma))


def _dw_accumulate(acc: DoubleWord, part: DoubleWord) -> DoubleWord:
    return S.dw_add(acc[0], acc[1], part[0], part[1])


def chunk_size(num_samples: int, batch_size: int, *, split_half: bool = False, pairs_only: bool = False) -> int:
    """Noise samples per input per loop step (even whenever pairs or halves are used)."""
    chunk = min(batch_size, num_samples + (num_samples % 2))
    if (split_half or pairs_only) and chunk % 2:
        chunk = chunk + 1 if chunk == 1 else chunk - 1
    return chunk


def device_statistics(apply_fn: Callable, params: Any, xs: ArrayLike, key: jax.Array, sigma: ArrayLike,
                      target_class: ArrayLike | None, input_ids: ArrayLike, *, num_samples: int, batch_size: int,
                      dot_product: bool = False, dipole: bool = False, split_half: bool = False,
                      pairs_only: bool = False, samples_axis: str | None = None,
                      rows_per_call: int | None = None) -> DeviceStatistics:
    """The sampling program for use inside ``jit`` / ``shard_map``: no validation, no 64-bit types.

    Arguments as :func:`sample_statistics` (``sigma`` a traced scalar, ``input_ids`` a ``[batch]``
    uint32 array, ``target_class`` ``[batch]`` int32 or None). With ``samples_axis`` (the name of
    a mapped mesh axis of size ``S``), this device evaluates the chunks ``c = s, s + S, ...`` of
    its axis index ``s`` and the statistics are reduced over the axis: integer counts by ``psum``
    (bitwise equal to one device), double words by an ordered tree over the gathered parts.
    ``rows_per_call`` (static, optional) caps the rows of one model call: the inputs of a step are
    then evaluated in groups (``lax.map``), e.g. to stay in a CPU's caches; the statistics do not
    change.
    """
    xs = jnp.asarray(xs)
    dtype = noise_dtype(xs)
    xs = xs.astype(dtype)
    batch, input_shape = xs.shape[0], xs.shape[1:]
    dim = int(np.prod(input_shape))
    num_classes = jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct((1, *input_shape), dtype)).shape[-1]
    n = num_samples
    chunk = chunk_size(n, batch_size, split_half=split_half, pairs_only=pairs_only)
    # pairs_only: one step draws chunk/2 even-indexed samples and evaluates them and their mirrors
    draws = chunk // 2 if pairs_only else chunk
    total = n // 2 if pairs_only else n  # draws per input
    num_chunks = -(-total // draws)
    shards = 1 if samples_axis is None else jax.lax.psum(1, samples_axis)
    shard = jnp.int32(0) if samples_axis is None else jax.lax.axis_index(samples_axis).astype(jnp.int32)
    steps = -(-num_chunks // shards)
    need_target = dot_product or dipole or split_half
    target = jnp.zeros((batch,), jnp.int32) if target_class is None else jnp.asarray(target_class).astype(jnp.int32)
    sigma = jnp.asarray(sigma).astype(dtype)
    zero_i = jnp.zeros((batch,), jnp.int32)

    input_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, input_ids)
    key_words = jax.vmap(_key_words)(input_keys)  # [batch, 2] uint32
    offsets = jnp.arange(draws, dtype=jnp.int32)
    classes = jnp.arange(num_classes, dtype=jnp.int32)

    def step(j, carry):
        c = j * shards + shard  # this device's j-th chunk
        pos = c * draws + offsets  # draw positions, [draws]
        valid = pos < total
        idx = (2 * pos if pairs_only else pos).astype(jnp.uint32)  # sample indices
        # u = sqrt(2) erfinv(v) for the statistics; the rows take sigma u as erfinv(v) (sqrt(2) sigma)
        root = jax.vmap(lambda k: _erfinv_noise(k, idx, input_shape, dtype))(key_words)
        u = root * _SQRT2[dtype]
        e = root * (_SQRT2[dtype] * sigma)
        if pairs_only:
            rows = jnp.concatenate([xs[:, None] + e, xs[:, None] - e], axis=1)
        elif dipole:
            rows = jnp.concatenate([xs[:, None] + e, xs[:, None] - e[:, 0::2]], axis=1)
        else:
            rows = xs[:, None] + e
        logits = _evaluate(apply_fn, params, rows, rows_per_call).reshape((batch, rows.shape[1], num_classes))
        pred = jax.lax.argmax(logits, 2, jnp.int32)
        finite = jnp.all(jnp.isfinite(logits), axis=-1)
        pred_pos, finite_pos = pred[:, :draws], finite[:, :draws]
        onehot = (pred_pos[:, :, None] == classes[None, None, :]) & valid[None, :, None]
        counts = carry.counts + jnp.sum(onehot, axis=1, dtype=jnp.int32)
        bad = ~finite_pos & valid[None, :]
        nonfinite = carry.nonfinite + jnp.sum(bad, axis=1, dtype=jnp.int32)
        if pairs_only:
            nonfinite = nonfinite + jnp.sum(~finite[:, draws:] & valid[None, :], axis=1, dtype=jnp.int32)
        elif dipole:
            nonfinite = nonfinite + jnp.sum(~finite[:, chunk:] & valid[None, 0::2], axis=1, dtype=jnp.int32)
        new = carry._replace(counts=counts, nonfinite=nonfinite)
        if need_target:
            hit = (pred_pos == target[:, None]) & valid[None, :]  # [batch, draws]
        if dipole:
            hit_plus = hit if pairs_only else hit[:, 0::2]  # valid pairs <=> valid + sides
            hit_minus = pred[:, draws:] == target[:, None] if pairs_only else pred[:, chunk:] == target[:, None]
            new = new._replace(
                dipole_both=carry.dipole_both + jnp.sum(hit_plus & hit_minus, axis=1, dtype=jnp.int32),
                dipole_plus_only=carry.dipole_plus_only + jnp.sum(hit_plus & ~hit_minus, axis=1, dtype=jnp.int32),
            )
        if dot_product:
            dot_hi, dot_lo, absdot = _pair_dots(u.reshape((batch, chunk // 2, 2, dim)))
            both = hit[:, 0::2] & hit[:, 1::2]
            zero = jnp.zeros((), dtype)
            dot_hi, dot_lo = (jnp.where(both, dot_hi, zero), jnp.where(both, dot_lo, zero))
            absdot = jnp.where(both, absdot, zero)
            sq = dot_hi * dot_hi
            new = new._replace(
                dot=_dw_accumulate(carry.dot, S.tree_sum(dot_hi, axis=1, lo=dot_lo)),
                dot_sq=_dw_accumulate(carry.dot_sq, S.tree_sum(sq, axis=1)),
                dot_abs=_dw_accumulate(carry.dot_abs, S.tree_sum(absdot, axis=1)),
            )
        if split_half:
            half = np.asarray(0.5, dtype)
            w = jnp.where(hit, half, -half) * valid[None, :].astype(dtype)  # exact: +-1/2 or 0
            uu = u.reshape((batch, chunk // 2, 2, dim))
            ww = w.reshape((batch, chunk // 2, 2))
            za = S.tree_sum(ww[:, :, 0, None] * uu[:, :, 0], axis=1)  # even sample indices: half a
            zb = S.tree_sum(ww[:, :, 1, None] * uu[:, :, 1], axis=1)
            new = new._replace(z_a=_dw_accumulate(carry.z_a, za), z_b=_dw_accumulate(carry.z_b, zb))
        return new

    zero_f, zero_d = jnp.zeros((batch,), dtype), jnp.zeros((batch, dim), dtype)
    carry = DeviceStatistics(
        counts=jnp.zeros((batch, num_classes), jnp.int32),
        nonfinite=zero_i,
        dipole_both=zero_i if dipole else None,
        dipole_plus_only=zero_i if dipole else None,
        dot=(zero_f, zero_f) if dot_product else None,
        dot_sq=(zero_f, zero_f) if dot_product else None,
        dot_abs=(zero_f, zero_f) if dot_product else None,
        z_a=(zero_d, zero_d) if split_half else None,
        z_b=(zero_d, zero_d) if split_half else None,
    )
    out = jax.lax.fori_loop(jnp.int32(0), jnp.int32(steps), step, carry)
    return out if samples_axis is None else _reduce_over_samples(out, samples_axis)


def _evaluate(apply_fn: Callable, params: Any, rows: jax.Array, rows_per_call: int | None) -> jax.Array:
    """Logits of ``rows [batch, R, *input_shape]``, in model calls of at most ``rows_per_call`` rows
    (whole inputs per call: the largest divisor ``g`` of ``batch`` with ``g R <= rows_per_call``)."""
    batch, per_input = rows.shape[0], rows.shape[1]
    input_shape = rows.shape[2:]
    if rows_per_call is None or batch * per_input <= rows_per_call or batch == 1:
        return apply_fn(params, rows.reshape((-1, *input_shape)))
    group = max([g for g in range(1, batch + 1) if batch % g == 0 and g * per_input <= rows_per_call] or [1])
    grouped = rows.reshape((batch // group, group * per_input, *input_shape))
    return _map(lambda r: apply_fn(params, r), grouped).reshape((batch * per_input, -1))


def _map(fn: Callable, xs: jax.Array) -> Any:
    """``jax.lax.map(fn, xs)`` with an int32 loop counter (``lax.map``'s is int64 under x64)."""
    shapes = jax.eval_shape(fn, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype))
    init = jax.tree_util.tree_map(lambda s: jnp.zeros((xs.shape[0], *s.shape), s.dtype), shapes)

    def body(i, acc):
        out = fn(jax.lax.dynamic_index_in_dim(xs, i, keepdims=False))
        return jax.tree_util.tree_map(lambda a, o: jax.lax.dynamic_update_index_in_dim(a, o, i, 0), acc, out)

    return jax.lax.fori_loop(jnp.int32(0), jnp.int32(xs.shape[0]), body, init)


def _pair_dots(uu: jax.Array, block_values: int = 2**17) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per pair of ``uu [batch, pairs, 2, d]``: ``u.u'`` as a double word (rounded products summed by
    a tree over ``d``) and ``sum_j |u_j u'_j|``, each ``[batch, pairs]``. Long rows go in blocks of
    ``~block_values / d`` pairs (a loop) whose tree stays in a CPU's cache: 2.5x (d = 784) to
    6x (d = 3072) faster than a whole step at once; every pair's sums are the same operations."""
    batch, pairs, _, dim = uu.shape

    def dots(x):
        prod = x[..., 0, :] * x[..., 1, :]  # rounded products
        return (*S.tree_sum(prod, axis=-1), jnp.sum(jnp.abs(prod), axis=-1))

    block = max(1, block_values // dim)
    if block >= pairs:
        return dots(uu)
    total = batch * pairs
    steps = -(-total // block)
    flat = S.pad_zeros(uu.reshape((total, 2, dim)), steps * block - total, axis=0)
    out = _map(dots, flat.reshape((steps, block, 2, dim)))
    return tuple(o.reshape(-1)[:total].reshape((batch, pairs)) for o in out)


def _reduce_over_samples(out: DeviceStatistics, axis: str) -> DeviceStatistics:
    """Counts by ``psum``; double words gathered in axis order and summed by a fixed tree."""
    def reduce(x):
        if x is None or not isinstance(x, tuple):
            return None if x is None else jax.lax.psum(x, axis)
        hi, lo = (jax.lax.all_gather(v, axis) for v in x)
        return S.tree_sum(hi, axis=0, lo=lo)

    return DeviceStatistics(*(reduce(x) for x in out))


def accumulation_depth(num_samples: int, batch_size: int, *, split_half: bool = False, pairs_only: bool = False,
                       sample_shards: int = 1, pair_terms: bool = False) -> int:
    """Number ``L`` of double-word additions a term passes through (module docstring)."""
    chunk = chunk_size(num_samples, batch_size, split_half=split_half, pairs_only=pairs_only)
    draws = chunk // 2 if pairs_only else chunk
    total = num_samples // 2 if pairs_only else num_samples
    num_chunks = -(-total // draws)
    per_chunk = S.tree_depth(chunk // 2 if (pair_terms or split_half) else chunk)
    return per_chunk + -(-num_chunks // sample_shards) + S.tree_depth(sample_shards) + 1


def combine(dev: DeviceStatistics, sigma: ArrayLike, target_class: ArrayLike | None, *, xs_dtype, input_dim: int,
            num_samples: int, batch_size: int, pairs_only: bool = False, sample_shards: int = 1) -> SampleStatistics:
    """:class:`SampleStatistics` from the device's counts and double words (module docstring).

    With NumPy inputs (the host side of :func:`sample_statistics`) every sum is ``hi + lo`` in
    float64 and every count int64; with traced inputs (float32-only mode, under ``jit``) the
    ambient float dtype and int32.
    """
    host = isinstance(dev.counts, np.ndarray)
    xp = np if host else jnp
    ftype = np.float64 if host else (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    itype = np.int64 if host else jnp.int32
    u = S.unit_roundoff(xs_dtype)

    def f(x):
        return None if x is None else xp.asarray(x[0]).astype(ftype) + xp.asarray(x[1]).astype(ftype)

    def i(x):
        return None if x is None else xp.asarray(x).astype(itype)

    sig = xp.asarray(sigma).astype(ftype)
    fields = dict(counts=i(dev.counts), nonfinite=i(dev.nonfinite), num_samples=num_samples,
                  count_samples=num_samples // 2 if pairs_only else num_samples)
    if target_class is not None:
        fields["target_class"] = xp.asarray(target_class).astype(np.int32)
    if dev.dipole_both is not None:
        fields["dipole_both"], fields["dipole_plus_only"] = i(dev.dipole_both), i(dev.dipole_plus_only)
    if dev.dot is not None:
        depth = accumulation_depth(num_samples, batch_size, sample_shards=sample_shards, pair_terms=True)
        abs_sum = f(dev.dot_abs)
        # per-pair products rounded (u) and summed over d by a tree (4 ceil(log2 d) u^2), the pairs
        # accumulated (4 L u^2); the computed abs_sum (a float32 sum over d) is at least
        # 1 - (d + 2) u times the exact one, covered by the last factor.
        rel = (u + S.error_bound(S.tree_depth(input_dim) + depth, 1.0, xs_dtype)) * (1.0 + 2.0 * (input_dim + 2) * u)
        fields["dot_sum"] = f(dev.dot) / sig**2  # (e.e') / sigma^4 = (u.u') / sigma^2
        fields["dot_sq_sum"] = f(dev.dot_sq) / sig**4
        fields["dot_sum_error"] = rel * abs_sum / sig**2
    if dev.z_a is not None:
        depth = accumulation_depth(num_samples, batch_size, split_half=True, sample_shards=sample_shards)
        u_max = U_MAX[np.dtype(xs_dtype)]
        bound = S.error_bound(depth, 0.5 * u_max * ((num_samples + 1) // 2), xs_dtype)
        fields["z_sum_a"] = f(dev.z_a) * sig
        fields["z_sum_b"] = f(dev.z_b) * sig
        fields["z_sum_error"] = xp.full(fields["counts"].shape[:1], bound, ftype) * sig
    return SampleStatistics(**fields)

