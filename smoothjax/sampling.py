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
~25% slower noise and ~5x longer compile on CPU. Noise generation is a few percent of a small
CNN's forward pass on 8x8 inputs (measured by the slow test
``tests/test_sampling.py::test_statistics_cost_at_most_ten_percent_over_bare_forward_pass``). Noise
has the dtype of ``xs`` (pass float32 inputs to keep a float32 model in float32); statistics are
accumulated in int64 counts and float64 sums when x64 is on (the smoothjax default).

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
  the model sees ``1.5 * batch_size`` rows per input per step). ``dipole_both[b]`` counts pairs
  with both sides ``= t``, ``dipole_plus_only[b]`` pairs with only the ``+`` side ``= t``
  (second paper, Theorem 3; ``n/2`` pairs as in its reference code).
- ``split_half=True``: ``z_i = e_i (1_i - 1/2)`` summed separately over even ``i`` (half a,
  ``ceil(n/2)`` samples) and odd ``i`` (half b, ``floor(n/2)`` samples): ``z_sum_a``, ``z_sum_b``
  of shape ``[batch, d]`` with ``d = prod(input_shape)``, flattened in C order. Their means
  estimate ``sigma^2 grad g`` (first paper, Table 1 / Theorem 5). Projections onto a subspace are
  linear, so they are exact functions of these means (:func:`project`).

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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

from smoothjax import _validation as V
from smoothjax._sharding import over_devices, pad_to_devices

# Largest number of samples per input: sample indices are folded into keys as uint32.
MAX_NUM_SAMPLES = 2**32


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SampleStatistics:
    """Sufficient statistics of one sampling pass (see the module docstring for the math).

    Array fields have a leading ``[batch]`` axis; fields not requested are ``None``. Integer
    fields are int64 (int32 when x64 is off); float fields are float64 (float32 when x64 is off).
    ``z_sum_a``/``z_sum_b`` are in input units (they include the factor sigma of ``e``).
    """

    counts: Any  # [batch, num_classes]
    nonfinite: Any  # [batch]
    target_class: Any = None  # [batch] int32
    dot_sum: Any = None  # [batch]
    dot_sq_sum: Any = None  # [batch]
    dipole_both: Any = None  # [batch]
    dipole_plus_only: Any = None  # [batch]
    z_sum_a: Any = None  # [batch, d]
    z_sum_b: Any = None  # [batch, d]
    num_samples: int = dataclasses.field(default=0, metadata=dict(static=True))

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
    def target_count(self):
        """``counts[b, target_class[b]]`` (requires ``target_class``)."""
        return jnp.take_along_axis(self.counts, self.target_class[:, None].astype(jnp.int32), axis=1)[:, 0]

    @property
    def dot_mean(self):
        """Mean over pairs of ``(e.e') 1 1' / sigma^4``: estimates ``||grad g||^2`` (1/input units^2)."""
        return self.dot_sum / self.num_pairs

    @property
    def z_mean_a(self):
        """Mean of ``z = e (1 - 1/2)`` over half a: estimates ``sigma^2 grad g``, ``[batch, d]``."""
        return self.z_sum_a / self.num_a

    @property
    def z_mean_b(self):
        return self.z_sum_b / self.num_b


def count_dtype():
    """int64 when x64 is on (the smoothjax default), else int32 (then num_samples < 2^31 is enforced)."""
    return jnp.int64 if jax.config.jax_enable_x64 else jnp.int32


def _sum_dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def project(z, basis):
    """Coordinates of ``z [..., d]`` in a subspace: ``z @ basis`` with ``basis [d, k]``.

    For a coordinate subspace (e.g. one colour channel) ``basis`` is the 0/1 selection matrix; a
    boolean mask ``m`` of the input shape gives the same result as ``z[..., m.ravel()]``.
    """
    return jnp.asarray(z) @ jnp.asarray(basis, jnp.asarray(z).dtype)


def noise_dtype(xs):
    """Noise dtype for inputs ``xs``: the dtype of ``xs`` when it is floating, else float32."""
    dtype = jnp.asarray(xs).dtype if hasattr(xs, "dtype") else np.asarray(xs).dtype
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32


def validate_sampling_args(apply_fn, params, xs, *, sigma, num_samples, batch_size, pairs, name="num_samples"):
    """Host-side checks shared by the public entry points; returns ``num_classes``.

    Raises ``ValueError`` for: a bad sigma; non-finite inputs; inputs without a batch axis; a
    sample count below 1, above ``2^32`` (or ``2^31 - 1`` with x64 off), or odd when ``pairs``;
    an odd ``batch_size`` when ``pairs``; an ``apply_fn`` that fails on ``[k, *input_shape]`` or
    does not return logits of shape ``[k, num_classes]``.
    """
    V.check_sigma(sigma)
    V.check_finite("xs", xs)
    shape = tuple(np.shape(xs))
    if len(shape) < 2:
        raise ValueError(
            f"xs must have a batch axis and at least one input axis, [batch, *input_shape]; got shape {shape}."
        )
    if shape[0] < 1:
        raise ValueError("xs must contain at least one input.")
    V.check_static_int(name, num_samples, 1)
    V.check_static_int("batch_size", batch_size, 1)
    limit = MAX_NUM_SAMPLES if jax.config.jax_enable_x64 else 2**31 - 1
    if num_samples > limit:
        raise ValueError(
            f"{name} = {num_samples} exceeds the supported maximum {limit} per input "
            "(sample indices are folded into keys as uint32; counts would overflow with x64 off)."
        )
    if pairs and num_samples % 2:
        raise ValueError(f"{name} must be even when pair statistics (SoS, dipole) are requested; got {num_samples}.")
    if pairs and batch_size % 2:
        raise ValueError(f"batch_size must be even when pair statistics (SoS, dipole) are requested; got {batch_size}.")
    probe = jax.ShapeDtypeStruct((2, *shape[1:]), noise_dtype(xs))
    try:
        out = jax.eval_shape(apply_fn, params, probe)
    except Exception as err:  # the model rejects the input shape
        raise ValueError(
            f"apply_fn(params, x) failed for x of shape {probe.shape} (inputs of shape {shape[1:]}): {err}"
        ) from err
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != 2:
        got = getattr(out, "shape", type(out))
        raise ValueError(
            f"apply_fn must return logits of shape [batch, num_classes]; for a batch of 2 inputs of shape "
            f"{shape[1:]} it returned {got}."
        )
    return int(out.shape[1])


def sample_statistics(
    apply_fn,
    params,
    xs,
    key,
    *,
    sigma,
    num_samples: int,
    batch_size: int,
    target_class=None,
    input_ids=None,
    dot_product: bool = False,
    dipole: bool = False,
    split_half: bool = False,
) -> SampleStatistics:
    """Sufficient statistics of ``num_samples`` Gaussian-noise samples per input (module docstring).

    Args:
      apply_fn: pure ``apply_fn(params, x_batch [m, *input_shape]) -> logits [m, num_classes]``.
      params: pytree passed to ``apply_fn``.
      xs: inputs ``[batch, *input_shape]``; noise is drawn in their (floating) dtype.
      key: a JAX PRNG key. Input ``b`` uses ``fold_in(key, input_ids[b])``.
      sigma: noise standard deviation (input units), a scalar (may be traced).
      num_samples: static int ``n`` (samples per input).
      batch_size: static int, noise samples per input per loop step; the model sees
        ``batch * batch_size`` rows per step (``1.5x`` that with ``dipole``). Results do not depend on it.
      target_class: ``[batch]`` int, the class whose indicator the pair / split-half statistics
        use (required when any of them is requested).
      input_ids: ``[batch]`` non-negative ints (default ``arange(batch)``).
      dot_product, dipole, split_half: static flags selecting the statistics to compute.

    Returns:
      :class:`SampleStatistics`. Call it under ``jax.jit`` (with the flags, counts and
      ``apply_fn`` static) or through :func:`smoothjax.pipeline.certify`, which does.

    Raises:
      ValueError: (outside jit) for the bad inputs listed in :func:`validate_sampling_args`, a
      missing ``target_class`` or malformed ``input_ids``.
    """
    pairs = dot_product or dipole
    num_classes = validate_sampling_args(
        apply_fn, params, xs, sigma=sigma, num_samples=num_samples, batch_size=batch_size, pairs=pairs
    )
    batch = np.shape(xs)[0]
    if (dot_product or dipole or split_half) and target_class is None:
        raise ValueError("target_class is required for the dot-product, dipole and split-half statistics.")
    if target_class is not None and V.is_concrete(target_class):
        t = np.asarray(target_class)
        if t.shape != (batch,) or t.dtype.kind not in "iu" or np.any(t < 0) or np.any(t >= num_classes):
            raise ValueError(f"target_class must be {batch} class indices in [0, {num_classes}), one per input.")
    input_ids = check_input_ids(input_ids, batch)
    xs = jnp.asarray(xs)
    target = jnp.zeros(batch, jnp.int32) if target_class is None else jnp.asarray(target_class).astype(jnp.int32)
    xs, padded_ids, _ = pad_to_devices(xs, input_ids)
    target = jnp.concatenate([target, jnp.repeat(target[-1:], xs.shape[0] - batch)])
    stats = _sample_statistics_jit(
        apply_fn,
        params,
        xs,
        key,
        jnp.asarray(sigma),
        target,
        padded_ids,
        num_samples=num_samples,
        batch_size=batch_size,
        dot_product=dot_product,
        dipole=dipole,
        split_half=split_half,
    )
    if target_class is None:
        stats = dataclasses.replace(stats, target_class=None)
    if xs.shape[0] != batch:
        stats = jax.tree_util.tree_map(lambda a: a[:batch], stats)
    return stats


def check_input_ids(input_ids, batch):
    """``input_ids`` as a ``[batch]`` uint32 array (default ``arange(batch)``); ValueError if malformed."""
    if input_ids is None:
        return jnp.arange(batch, dtype=jnp.uint32)
    if V.is_concrete(input_ids):
        ids = np.asarray(input_ids)
        if ids.shape != (batch,) or ids.dtype.kind not in "iu" or np.any(ids < 0) or np.any(ids >= 2**32):
            raise ValueError(f"input_ids must be {batch} non-negative integers below 2^32, one per input.")
    return jnp.asarray(input_ids).astype(jnp.uint32)


def _key_words(key):
    """The two uint32 words of a (typed or raw) PRNG key that seed the noise hash."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return key.reshape(-1)[:2].astype(jnp.uint32)


def standard_normal(key_words, sample_idx, shape, dtype):
    """Standard normal noise ``[len(sample_idx), *shape]``, a pure function of (key, sample index).

    Value ``j`` of sample ``i`` comes from the Threefry-2x32 hash of the counter ``(i, j // 2)``
    under ``key_words`` (one hash gives two 32-bit words; float64 uses two words per value),
    turned into a uniform on (-1, 1) and then into a normal by ``sqrt(2) erfinv`` as
    ``jax.random.normal`` does. Any chunking of the sample indices gives the same noise, and it costs
    one hash per two words, the same as ``jax.random.normal`` (no per-sample key derivation).
    """
    dim = int(np.prod(shape))
    wide = jnp.dtype(dtype) == jnp.float64
    words = dim * (2 if wide else 1)
    pairs = (words + 1) // 2
    chunk = sample_idx.shape[0]
    x0 = jnp.broadcast_to(sample_idx[:, None], (chunk, pairs))
    x1 = jnp.broadcast_to(jnp.arange(pairs, dtype=jnp.uint32), (chunk, pairs))
    out = threefry_2x32((key_words[0], key_words[1]), jnp.concatenate([x0.ravel(), x1.ravel()]))
    half = chunk * pairs
    bits = jnp.concatenate([out[:half].reshape(chunk, pairs), out[half:].reshape(chunk, pairs)], axis=1)[:, :words]
    if wide:
        bits = (bits[:, :dim].astype(jnp.uint64) << 32) | bits[:, dim:].astype(jnp.uint64)
        one, shift, ftype = jnp.uint64(0x3FF0000000000000), 12, jnp.float64
    else:
        one, shift, ftype = jnp.uint32(0x3F800000), 9, jnp.float32
    u = jax.lax.bitcast_convert_type((bits >> shift) | one, ftype) - 1.0  # uniform on [0, 1)
    v = jnp.maximum(2.0 * u - 1.0, jnp.nextafter(ftype(-1), ftype(0)))  # uniform on (-1, 1)
    z = np.sqrt(2.0).astype(ftype) * jax.lax.erf_inv(v)
    return z.reshape((chunk, *shape)).astype(dtype)


_STATIC = ("apply_fn", "num_samples", "batch_size", "dot_product", "dipole", "split_half")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _sample_statistics_jit(apply_fn, params, xs, key, sigma, target_class, input_ids, **kw):
    def per_shard(xs, target_class, input_ids, params, key, sigma):
        return sample_statistics_under_jit(apply_fn, params, xs, key, sigma, target_class, input_ids, **kw)

    return over_devices(per_shard, (xs, target_class, input_ids), (params, key, sigma))


def sample_statistics_under_jit(
    apply_fn,
    params,
    xs,
    key,
    sigma,
    target_class,
    input_ids,
    *,
    num_samples,
    batch_size,
    dot_product=False,
    dipole=False,
    split_half=False,
) -> SampleStatistics:
    """:func:`sample_statistics` for use inside ``jit``: no host-side validation, no sharding.

    Arguments as :func:`sample_statistics` (``sigma`` a traced scalar, ``input_ids`` a ``[batch]``
    uint32 array, ``target_class`` ``[batch]`` int or None); the caller validates them and runs it
    under ``jax.jit`` with ``num_samples``, ``batch_size`` and the flags static.
    """
    xs = jnp.asarray(xs)
    dtype = noise_dtype(xs)
    xs = xs.astype(dtype)
    batch, input_shape = xs.shape[0], xs.shape[1:]
    dim = int(np.prod(input_shape))
    num_classes = jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct((1, *input_shape), dtype)).shape[-1]
    n, chunk = num_samples, min(batch_size, num_samples + (num_samples % 2))
    num_chunks = -(-n // chunk)
    ctype, ftype = count_dtype(), _sum_dtype()
    need_target = dot_product or dipole or split_half
    if target_class is not None:
        target = jnp.asarray(target_class).astype(jnp.int32)

    input_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, input_ids)
    offsets = jnp.arange(chunk, dtype=jnp.uint32)

    key_words = jax.vmap(_key_words)(input_keys)  # [batch, 2] uint32

    def draw(start):
        idx = start + offsets  # uint32 sample indices of this chunk (wraps only beyond n: masked)
        return jax.vmap(lambda k: standard_normal(k, idx, input_shape, dtype))(key_words)

    def step(c, carry):
        start = (c * chunk).astype(jnp.uint32)
        valid = (c * chunk + jnp.arange(chunk)) < n  # [chunk]
        u = draw(start)
        e = u * sigma.astype(dtype)
        rows = xs[:, None] + e
        if dipole:
            rows = jnp.concatenate([rows, xs[:, None] - e[:, 0::2]], axis=1)
        logits = apply_fn(params, rows.reshape((-1, *input_shape)))
        logits = logits.reshape((batch, rows.shape[1], num_classes))
        pred = jnp.argmax(logits, axis=-1)
        finite = jnp.all(jnp.isfinite(logits), axis=-1)
        pred_pos, finite_pos = pred[:, :chunk], finite[:, :chunk]
        new = dict(carry)
        onehot = (pred_pos[..., None] == jnp.arange(num_classes)) & valid[None, :, None]
        new["counts"] = carry["counts"] + jnp.sum(onehot, axis=1, dtype=jnp.int32).astype(ctype)
        bad_rows = (~finite_pos & valid).astype(jnp.int32)
        if dipole:
            bad_rows = bad_rows.at[:, 0::2].add((~finite[:, chunk:] & valid[0::2]).astype(jnp.int32))
        new["nonfinite"] = carry["nonfinite"] + jnp.sum(bad_rows, axis=1).astype(ctype)
        if need_target:
            hit = (pred_pos == target[:, None]) & valid  # [batch, chunk]
        if dot_product:
            uu = u.reshape((batch, chunk // 2, 2, dim))
            dots = jnp.sum(uu[:, :, 0] * uu[:, :, 1], axis=-1)  # u.u', [batch, chunk/2]
            both = hit[:, 0::2] & hit[:, 1::2]
            s = jnp.where(both, dots, 0).astype(ftype)
            new["dot_sum"] = carry["dot_sum"] + jnp.sum(s, axis=1)
            new["dot_sq_sum"] = carry["dot_sq_sum"] + jnp.sum(s * s, axis=1)
        if dipole:
            hit_minus = pred[:, chunk:] == target[:, None]
            hit_plus = hit[:, 0::2]  # valid mask already applied (valid pairs <=> valid even samples)
            new["dipole_both"] = carry["dipole_both"] + jnp.sum(hit_plus & hit_minus, axis=1).astype(ctype)
            new["dipole_plus_only"] = carry["dipole_plus_only"] + jnp.sum(hit_plus & ~hit_minus, axis=1).astype(ctype)
        if split_half:
            w = jnp.where(valid, hit.astype(dtype) - 0.5, 0).astype(dtype)  # [batch, chunk]
            half = (jnp.arange(chunk) % 2)[None, :] == jnp.arange(2)[:, None]  # [2, chunk] even/odd
            weights = jnp.where(half[None], w[:, None, :], 0)  # [batch, 2, chunk]
            sums = jnp.einsum("bhc,bcd->bhd", weights, u.reshape((batch, chunk, dim)))
            new["z_sums"] = carry["z_sums"] + sums.astype(ftype)
        return new

    carry = {
        "counts": jnp.zeros((batch, num_classes), ctype),
        "nonfinite": jnp.zeros((batch,), ctype),
    }
    if dot_product:
        carry["dot_sum"] = jnp.zeros((batch,), ftype)
        carry["dot_sq_sum"] = jnp.zeros((batch,), ftype)
    if dipole:
        carry["dipole_both"] = jnp.zeros((batch,), ctype)
        carry["dipole_plus_only"] = jnp.zeros((batch,), ctype)
    if split_half:
        carry["z_sums"] = jnp.zeros((batch, 2, dim), ftype)
    out = jax.lax.fori_loop(0, num_chunks, step, carry)

    sigma_f = jnp.asarray(sigma, ftype)
    fields = dict(counts=out["counts"], nonfinite=out["nonfinite"], num_samples=n)
    if target_class is not None:
        fields["target_class"] = target
    if dot_product:
        # (e.e') / sigma^4 = (u.u') / sigma^2 with e = sigma u.
        fields["dot_sum"] = out["dot_sum"] / sigma_f**2
        fields["dot_sq_sum"] = out["dot_sq_sum"] / sigma_f**4
    if dipole:
        fields["dipole_both"] = out["dipole_both"]
        fields["dipole_plus_only"] = out["dipole_plus_only"]
    if split_half:
        fields["z_sum_a"] = out["z_sums"][:, 0] * sigma_f
        fields["z_sum_b"] = out["z_sums"][:, 1] * sigma_f
    return SampleStatistics(**fields)
