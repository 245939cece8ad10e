"""Spreading certification over devices and hosts: a mesh of inputs x samples (private).

The per-input programs of :mod:`smoothjax.sampling` and :mod:`smoothjax.pipeline` run under
``jax.shard_map`` over a mesh with the axes ``"inputs"`` and ``"samples"``: the inputs are split
over the first; every input's noise samples are split over the second (device ``s`` of ``S``
evaluates the chunks ``s, s + S, ...``) and its statistics reduced over it. Every input's noise is
a function of ``(key, input_id, sample index)``, so counts are bitwise equal for every mesh.

Parameters. The program is manual over ``"inputs"`` and ``"samples"`` only. The mesh may have
further axes (e.g. ``"model"``): parameters the caller sharded over them (a ``NamedSharding`` on
the same mesh) keep that sharding and XLA partitions the model over those axes (tensor
parallelism); parameters that are not sharded are replicated. A parameter sharded over
``"inputs"`` or ``"samples"`` is refused (:func:`check_params`): every device of those axes runs
the whole model on its own inputs and samples, so it needs every parameter.

Hosts. With several processes (``jax.distributed``), :func:`shard_inputs` builds global arrays
from each process's *local* inputs (``jax.make_array_from_process_local_data``): every process
passes its own inputs and gets its own results back from :func:`local_results`. Processes may
pass different numbers of inputs: each pads to the largest (repeating its last input) and drops
the padding from its results, so no input is lost or duplicated. A mesh whose inputs axis does
not split evenly over the processes is refused with a ``ValueError``, and so is one whose devices
at one position of the inputs axis (all their samples and model shards) span several processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike

INPUTS, SAMPLES = "inputs", "samples"

T = TypeVar("T")


def default_mesh(batch: int | None = None) -> Mesh:
    """The mesh used when the caller passes none.

    Splitting inputs is the cheapest parallelism (no collective), so every device goes on the
    inputs axis, unless there are fewer inputs than devices: then (one process) the samples axis
    takes the smallest divisor ``s`` of the device count with ``devices / s <= batch``, so that one
    input on 4 devices is split 1 x 4 instead of being computed 4 times. With several processes
    the default stays ``devices x 1`` (every process must build the same mesh).
    """
    devices = np.asarray(jax.devices())
    count = devices.size
    samples = 1
    if batch is not None and jax.process_count() == 1 and batch < count:
        samples = next(s for s in range(1, count + 1) if count % s == 0 and count // s <= max(batch, 1))
    return Mesh(devices.reshape(count // samples, samples), (INPUTS, SAMPLES))


def make_mesh(inputs: int, samples: int) -> Mesh:
    """An ``inputs x samples`` mesh of all devices (``inputs * samples == jax.device_count()``).

    For a mesh with a further axis to shard the parameters over (tensor parallelism), build the
    ``Mesh`` directly, e.g. ``Mesh(np.asarray(jax.devices()).reshape(1, 2, 2), ("inputs",
    "samples", "model"))``.

    Example:
      >>> mesh = make_mesh(jax.device_count(), 1)
      >>> dict(mesh.shape)
      {'inputs': 1, 'samples': 1}
    """
    count = jax.device_count()
    if inputs * samples != count:
        raise ValueError(f"a mesh of {inputs} x {samples} devices needs {inputs * samples} devices; "
                         f"{count} are available.")
    return Mesh(np.asarray(jax.devices()).reshape(inputs, samples), (INPUTS, SAMPLES))


def check_mesh(mesh: Any) -> Mesh:
    """``mesh`` if it is a ``Mesh`` with the axes ``"inputs"`` and ``"samples"`` (others allowed), else ValueError."""
    if not isinstance(mesh, Mesh) or not {INPUTS, SAMPLES} <= set(mesh.axis_names):
        names = getattr(mesh, "axis_names", type(mesh).__name__)
        raise ValueError(f"mesh must be a jax.sharding.Mesh with the axes 'inputs' and 'samples' (and optionally "
                         f"others, e.g. 'model'); got {names}. Build one with smoothjax.make_mesh(inputs, samples).")
    return mesh


def _spec_axes(spec: PartitionSpec) -> set[str]:
    """The mesh axis names a ``PartitionSpec`` shards over."""
    names: set[str] = set()
    for entry in spec:
        for name in entry if isinstance(entry, tuple) else (entry,):
            if isinstance(name, str):
                names.add(name)
    return names


def _sharded_leaves(params: Any) -> list[tuple[str, jax.Array]]:
    """``(path, leaf)`` for the parameters that are arrays split over several devices."""
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) \
                and not leaf.sharding.is_fully_replicated:
            out.append((jax.tree_util.keystr(path) or "params", leaf))
    return out


def check_params(mesh: Mesh, params: Any) -> None:
    """ValueError unless every parameter is replicated or sharded over axes of ``mesh`` other than inputs/samples.

    A sharded parameter must be a ``jax.Array`` with a ``NamedSharding`` over ``mesh`` itself; it
    keeps that sharding in the compiled program. Sharding over ``"inputs"`` or ``"samples"`` is
    refused: every device of those axes evaluates the whole model on its own inputs and samples.
    """
    for name, leaf in _sharded_leaves(params):
        sharding = leaf.sharding
        if not isinstance(sharding, NamedSharding) or sharding.mesh != mesh:
            where = (f"a mesh with axes {dict(sharding.mesh.shape)}" if isinstance(sharding, NamedSharding)
                     else f"a {type(sharding).__name__}")
            raise ValueError(
                f"parameter {name} is sharded over {where}, not over the mesh certification runs on "
                f"(axes {dict(mesh.shape)}). Shard the parameters with a NamedSharding over the mesh you pass "
                "as mesh= (a Mesh with the axes 'inputs' and 'samples' plus the parameters' axes, e.g. 'model'), "
                "or replicate them.")
        wrong = sorted(_spec_axes(sharding.spec) & {INPUTS, SAMPLES})
        if wrong:
            raise ValueError(
                f"parameter {name} is sharded over the mesh axis {wrong[0]!r} ({sharding.spec}); every device of "
                "the 'inputs' and 'samples' axes evaluates the whole model, so parameters may be sharded only "
                "over other mesh axes (e.g. 'model') or replicated.")


def resolve_mesh(mesh: Any, batch: int, params: Any = None) -> Mesh:
    """The mesh of a call, with the parameters checked against it (:func:`check_params`).

    ``mesh`` when given (checked by :func:`check_mesh`); else the mesh the parameters are sharded
    over, when they are sharded over one mesh with the axes ``"inputs"`` and ``"samples"``; else
    :func:`default_mesh`.
    """
    if mesh is None:
        meshes = {leaf.sharding.mesh for _, leaf in _sharded_leaves(params) if isinstance(leaf.sharding, NamedSharding)}
        if len(meshes) == 1:
            (own,) = meshes
            if isinstance(own, Mesh) and {INPUTS, SAMPLES} <= set(own.axis_names):
                mesh = own
        if mesh is None:
            mesh = default_mesh(batch)
    else:
        mesh = check_mesh(mesh)
    check_params(mesh, params)
    return mesh


def _local_positions(mesh: Mesh) -> int:
    """How many positions of the inputs axis this process's devices hold (each with all its other devices)."""
    local = {d.id for d in jax.local_devices()}
    positions = np.moveaxis(mesh.devices, list(mesh.axis_names).index(INPUTS), 0).reshape(mesh.shape[INPUTS], -1)
    rows = [row for row in positions if any(d.id in local for d in row)]
    for row in rows:
        if not all(d.id in local for d in row):
            raise ValueError("the samples axis (or another axis) of the mesh spans several processes at one position "
                             "of the inputs axis; put each process's devices on whole rows of the inputs axis (e.g. "
                             "smoothjax.make_mesh(jax.device_count() // k, k) with k <= jax.local_device_count()).")
    if not rows:
        raise ValueError("this process owns no device of the mesh.")
    return len(rows)


def shard_inputs(mesh: Mesh, *arrays: ArrayLike) -> tuple[Any, ...]:
    """Global arrays, sharded over the inputs axis, from this process's ``[batch, ...]`` NumPy arrays.

    Pads the batch (repeating the last entry) to a multiple of this process's share of the inputs
    axis, and with several processes to the largest local batch of any process. Returns the global
    arrays and ``local``, this process's batch before padding (pass it to :func:`local_results`).
    """
    batch = arrays[0].shape[0]
    positions = _local_positions(mesh)
    target = -(-batch // positions) * positions
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        sizes = np.asarray(multihost_utils.process_allgather(np.asarray([target], np.int64))).reshape(-1)
        target = int(sizes.max())
    sharding = NamedSharding(mesh, PartitionSpec(INPUTS))
    out = []
    for a in arrays:
        a = np.asarray(a)
        if target > batch:
            a = np.concatenate([a, np.repeat(a[-1:], target - batch, axis=0)])
        if jax.process_count() > 1:
            try:
                out.append(jax.make_array_from_process_local_data(sharding, a))
            except ValueError as err:
                raise ValueError(f"the inputs of this process do not fit the mesh layout: {err}") from err
        else:
            out.append(jax.device_put(a, sharding))
    return (*out, batch)


def local_results(mesh: Mesh, tree: Any, local: int) -> Any:
    """This process's rows of the global results ``tree`` (NumPy arrays), padding dropped."""

    def take(a):
        if a is None:
            return None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            a = multihost_utils.global_array_to_host_local_array(a, mesh, PartitionSpec(INPUTS))
        return np.asarray(a)[:local]

    return jax.tree_util.tree_map(take, tree)


def run(fn: Callable[..., T], mesh: Mesh, batch_args: Sequence[jax.Array], replicated_args: Sequence[Any]) -> T:
    """``fn(*batch_args, *replicated_args)`` under ``shard_map``: batch args split over the inputs axis.

    ``fn`` may use the ``"samples"`` axis for collectives; its outputs must have a leading input
    axis and be identical across the samples axis (they are reduced over it). The program is
    manual over ``"inputs"`` and ``"samples"`` only: ``replicated_args`` are replicated over those
    two axes and keep their sharding over any other axis of ``mesh``, where XLA partitions ``fn``.
    """
    spec = PartitionSpec
    in_specs = (spec(INPUTS),) * len(batch_args) + (spec(),) * len(replicated_args)
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=spec(INPUTS),
                         axis_names=frozenset({INPUTS, SAMPLES}), check_vma=False)(*batch_args, *replicated_args)


def gather_results(tree: T) -> T:
    """Every process's results, concatenated in process order (a no-op with one process).

    Call it on every process with that process's :func:`smoothjax.certify` result (or any pytree
    of arrays with a leading input axis); each gets the whole dataset's rows back. Processes may
    hold different numbers of rows.

    Example:
      >>> import numpy as np
      >>> gather_results({"radius": np.array([0.5, 0.25])})["radius"].tolist()
      [0.5, 0.25]
    """
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree_util.tree_flatten(tree)
    rows = np.asarray(leaves[0]).shape[0] if leaves else 0
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([rows], np.int64))).reshape(-1)
    most = int(sizes.max())
    out = []
    for leaf in leaves:
        a = np.asarray(leaf)
        if a.ndim == 0:
            out.append(a)
            continue
        padded = np.concatenate([a, np.zeros((most - a.shape[0], *a.shape[1:]), a.dtype)]) if most > a.shape[0] else a
        every = np.asarray(multihost_utils.process_allgather(padded))  # [processes, most, ...]
        out.append(np.concatenate([every[p, :sizes[p]] for p in range(len(sizes))]))
    return jax.tree_util.tree_unflatten(treedef, out)
