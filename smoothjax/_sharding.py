"""Spreading a batch of inputs over the local devices (private; shared by sampling and the pipeline).

The per-input programs of :mod:`smoothjax.sampling` and :mod:`smoothjax.pipeline` run under
``jax.shard_map`` over a mesh of the devices; every input's noise comes from its own key, so
results do not depend on how inputs are spread.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def pad_to_devices(xs, input_ids):
    """Pad the input axis to a multiple of the device count (repeating the last input and its id).

    Returns ``(xs, input_ids, original_batch)``; callers slice results back to ``original_batch``.
    """
    ndev = jax.device_count()
    batch = xs.shape[0]
    pad = (-batch) % ndev
    if pad:
        xs = jnp.concatenate([xs, jnp.repeat(xs[-1:], pad, axis=0)])
        input_ids = jnp.concatenate([input_ids, jnp.repeat(input_ids[-1:], pad)])
    return xs, input_ids, batch


def over_devices(fn, batch_args, replicated_args):
    """``fn(*batch_args, *replicated_args)``, sharded over the input axis when several devices exist.

    Used inside ``jit``. With one device it is a plain call; otherwise ``jax.shard_map`` over a 1-D
    mesh ``("inputs",)`` of all devices: each device runs the same per-input program on its slice
    of the inputs (whose count must divide evenly, see :func:`pad_to_devices`), with
    ``replicated_args`` (params, key, sigma, ...) on every device. Every output leaf must have a
    leading input axis. Per-input keys make the results identical to the single-device run.
    """
    devices = jax.devices()
    if len(devices) == 1:
        return fn(*batch_args, *replicated_args)
    mesh = jax.sharding.Mesh(np.array(devices), ("inputs",))
    spec = jax.sharding.PartitionSpec
    in_specs = (spec("inputs"),) * len(batch_args) + (spec(),) * len(replicated_args)
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=spec("inputs"), check_vma=False)(
        *batch_args, *replicated_args
    )
