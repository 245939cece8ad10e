"""What produced a certification run: hashes of its model and data, its environment, its inputs.

The dataset job (:mod:`smoothjax.app.job`) records these in the JSON sidecar beside its TSV, and a
resume or a merge compares them: sha256 of parameter pytrees, arrays and files; the PRNG key's words
and implementation; library versions, devices and numeric settings; input ids in a compact form.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import platform
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np


def sha256_arrays(arrays: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        digest.update(f"{a.dtype.str}{a.shape};".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def params_sha256(params: Any) -> str:
    """sha256 of a parameter pytree: its structure, and every leaf's dtype, shape and bytes."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    digest = hashlib.sha256(str(treedef).encode())
    digest.update(sha256_arrays(leaves).encode())
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def key_words(key) -> list[int]:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return [int(v) for v in np.asarray(key).reshape(-1)]


def process_position() -> tuple[int, int]:
    """``(process index, process count)`` of this JAX process."""
    return jax.process_index(), jax.process_count()


def key_impl(key) -> str:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return str(jax.random.key_impl(key))
    return f"raw uint32 key ({jax.config.jax_default_prng_impl})"


def _version(name: str) -> str | None:
    module = sys.modules.get(name)
    version = getattr(module, "__version__", None)
    if version is not None:
        return str(version)
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def _static_environment() -> tuple[tuple[str, Any], ...]:
    import flax  # noqa: F401  (so that its version is read from the module)
    import jaxlib  # noqa: F401

    devices = jax.devices()
    return (
        ("versions", {name: _version(name) for name in ("smoothjax", "jax", "jaxlib", "flax", "numpy")}
         | {"python": platform.python_version()}),
        ("backend", jax.default_backend()),
        ("device_kind", devices[0].device_kind),
        ("device_count", jax.device_count()),
        ("local_device_count", jax.local_device_count()),
        ("process_count", jax.process_count()),
        ("process_index", jax.process_index()),
        ("platform", platform.platform()),
        ("hostname", platform.node()),
    )


def environment() -> dict[str, Any]:
    """Versions, PRNG implementation, devices and numeric settings of this process."""
    env = dict(_static_environment())
    env["versions"] = dict(env["versions"])
    env.update(
        prng_impl=str(jax.config.jax_default_prng_impl),
        matmul_precision=jax.config.jax_default_matmul_precision,
        x64=bool(jax.config.jax_enable_x64),
    )
    return env


def encode_ids(ids: np.ndarray) -> dict[str, Any] | list[int]:
    """Input ids for the sidecar: ``{"start", "stop", "step"}`` when evenly spaced, else the list."""
    ids = np.asarray(ids, np.int64)
    if len(ids) >= 2:
        step = int(ids[1] - ids[0])
        if step > 0 and np.array_equal(np.diff(ids), np.full(len(ids) - 1, step)):
            return {"start": int(ids[0]), "stop": int(ids[-1]) + step, "step": step}
    if len(ids) == 1:
        return {"start": int(ids[0]), "stop": int(ids[0]) + 1, "step": 1}
    return [int(i) for i in ids]


def decode_ids(encoded: Mapping[str, int] | Sequence[int]) -> np.ndarray:
    if isinstance(encoded, Mapping):
        return np.arange(encoded["start"], encoded["stop"], encoded["step"], dtype=np.int64)
    return np.asarray(encoded, np.int64)


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
