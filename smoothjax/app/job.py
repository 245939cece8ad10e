"""A dataset certification job that survives interruption: streamed rows, resume, shards, merge.

:func:`certify_dataset` streams a dataset through the compiled certify program
(:func:`smoothjax.pipeline.certify`) ``inputs_per_call`` inputs at a time and appends each
finished chunk's rows to a TSV at once (one write, flush and ``fsync`` per chunk). Beside it, a
JSON sidecar ``<out>.json`` records every setting, the PRNG key, hashes of the model parameters
and of the dataset arrays, library versions, the PRNG implementation, the device, the model's
output dtype and the matmul precision, timestamps and the job's status.

Order and identity. Rows are written in the job's order (the order of ``input_ids``: increasing
dataset index for the command line). Chunks are fixed by position in the job, so a resumed input
is computed in exactly the call it would have been computed in without the interruption; noise
keys derive from ``(key, input_id)`` anyway, so every row is the same bytes as in an
uninterrupted run except its ``time`` column (seconds per input). If a resume had to append rows
out of order (a damaged row in the middle of the file), the finished file is rewritten in job
order.

Resume (``resume=True``). The rows already in the file are kept and their inputs skipped. A torn
last line (the process was killed inside a write) and any row that does not parse are dropped
and recomputed. The run is refused (:class:`JobError`) when the sidecar's settings differ from
the new call's (sigma, n0, n, alpha, methods, key, format, subspace, shard, model and dataset
hashes, input ids, ``batch_size`` and ``inputs_per_call``): runs are never mixed silently. The
last two are checked because the radii depend on them in the last digits (the host math is
compiled per chunk shape); ``rows_per_call`` changes no number and may differ. Resuming a file
that does not exist starts it, so a job script may always pass ``resume=True``. Without
``resume``, an existing output is an error unless ``overwrite=True``.

Stopping. SIGTERM and SIGINT (when the job runs in the main thread) let the chunks already
dispatched finish and be written, mark the sidecar ``"interrupted"`` and raise
:class:`JobInterrupted`; a second signal acts at once. SIGKILL loses at most the chunks in
flight (and may tear the last line, see above).

Shards. ``shard=(i, k)`` certifies the job positions ``p`` with ``p % k == i`` (interleaved,
so every shard gets easy and hard inputs alike). Rows carry dataset ids, so :func:`merge_shards`
of all ``k`` shards equals the unsharded run. With several JAX processes
(``jax.process_count() > 1``) each process certifies its share of the (shard's) positions in the
same interleaved way and writes ``<out>.process<p>-of-<P>`` with its own sidecar.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from smoothjax import pipeline
from smoothjax.app import tsv
from smoothjax.app.provenance import (
    decode_ids,
    encode_ids,
    environment,
    file_sha256,
    key_impl,
    key_words,
    now_utc,
    params_sha256,
    process_position,
    sha256_arrays,
)

SIDECAR_FORMAT = "smoothjax-job/1"
FORMATS = ("smoothjax", "cohen")

#: Sidecar settings that must agree for a resume (and, apart from ``shard``, for a merge).
CHECKED_SETTINGS = (
    "sigma", "n0", "n", "alpha", "methods", "key", "key_impl", "format", "format_method", "subspace_sha256", "shard",
    "process", "params_sha256", "dataset_sha256", "input_ids", "batch_size", "inputs_per_call",
)

#: How an argument is named in messages: command-line flag, and Python keyword argument.
_ARGUMENTS = {
    "out": ("--out", "out="),
    "resume": ("--resume", "resume=True"),
    "overwrite": ("--overwrite", "overwrite=True"),
    "batch_size": ("--batch-size", "batch_size="),
    "inputs_per_call": ("--inputs-per-call", "inputs_per_call="),
}

Shard = tuple[int, int]


class JobError(ValueError):
    """A user-facing problem with a job: an existing output, settings that differ on resume, bad shards."""


def _arg(name: str, cli: bool) -> str:
    """``name`` as the user wrote it: the command-line flag (``cli``) or the Python keyword argument."""
    return _ARGUMENTS[name][0 if cli else 1]


class JobInterrupted(RuntimeError):
    """Raised when a signal stopped the job after writing the chunks in flight.

    Attributes: ``signal_name`` (e.g. ``"SIGTERM"``), ``signum``, ``done`` and ``total`` (inputs
    of this job written / to write), ``out`` (the TSV path).
    """

    def __init__(self, signum: int, done: int, total: int, out: str, *, cli_flags: bool = False):
        self.signum, self.done, self.total, self.out = signum, done, total, out
        self.signal_name = signal.Signals(signum).name
        how = "the same command plus --resume" if cli_flags else "the same call plus resume=True"
        super().__init__(
            f"stopped by {self.signal_name} after {done} of {total} inputs; the rows in {out} are kept, "
            f"resume with {how}."
        )


@dataclasses.dataclass(frozen=True)
class JobSummary:
    """What a :func:`certify_dataset` call did.

    ``total`` inputs belong to this job (this shard / process), ``done_before`` were already in
    the file when it started, ``done_now`` were certified by this call. ``seconds`` is this call's
    wall time; ``first_chunk_s`` the first chunk's (it includes compilation) and
    ``steady_per_input_s`` the seconds per input after it (NaN with fewer than two chunks).
    ``unconverged`` maps a method to the input ids (certified by this call) whose radius is Theorem
    3's certified fallback because its solver did not converge: sound, possibly loose.
    """

    out: str
    sidecar: str
    total: int
    done_before: int
    done_now: int
    seconds: float
    first_chunk_s: float
    steady_per_input_s: float
    dropped_rows: int
    status: str
    unconverged: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class MergeSummary:
    """What :func:`merge_shards` wrote: ``rows`` rows from ``len(sources)`` files into ``out``."""

    out: str
    sidecar: str
    rows: int
    sources: tuple[str, ...]


# ------------------------------------------------------------------------------- paths and shards


def sidecar_path(out: str) -> str:
    """The JSON sidecar beside a TSV: ``<out>.json``."""
    return f"{out}.json"


def process_output_path(out: str, process_index: int, process_count: int) -> str:
    """The file one of several JAX processes writes: ``<out>.process<i>-of-<k>``."""
    return f"{out}.process{process_index}-of-{process_count}"


def parse_shard(text: str) -> Shard:
    """``"1/4"`` -> ``(1, 4)``; raises :class:`JobError` unless ``0 <= i < k``."""
    index, sep, count = text.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        shard = None
    if not sep or shard is None or not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise JobError(f"--shard must look like I/K with 0 <= I < K (e.g. 0/4 for the first of four jobs), "
                       f"got {text!r}.")
    return shard


def shard_positions(num_inputs: int, shard: Shard | None) -> np.ndarray:
    """Positions ``p`` in ``range(num_inputs)`` with ``p % k == i`` for ``shard = (i, k)`` (all when None)."""
    positions = np.arange(num_inputs)
    if shard is None:
        return positions
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise JobError(f"shard must be (i, k) with 0 <= i < k, got {shard}.")
    return positions[index::count]


def read_sidecar(path: str) -> dict[str, Any]:
    """Load a job sidecar; raises :class:`JobError` when it is missing or not a smoothjax job sidecar."""
    if not os.path.isfile(path):
        raise JobError(f"sidecar {path!r} not found; it is written by `smoothjax certify` beside its TSV.")
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:
        raise JobError(f"sidecar {path!r} is not readable JSON ({err}).") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise JobError(f"{path!r} is not a smoothjax job sidecar (format {SIDECAR_FORMAT}).")
    return data


def _write_sidecar(path: str, data: Mapping[str, Any], *, sync_dir: bool = True) -> None:
    data = dict(data, updated_utc=now_utc())
    tsv.write_lines_atomic(path, [json.dumps(data, indent=1, sort_keys=False) + "\n"], sync_dir=sync_dir)


# ------------------------------------------------------------------------------- signals


class _StopFlag:
    """Set by SIGTERM / SIGINT while a job runs; the chunk loop stops at the next chunk boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {}

        def handler(signum, frame):  # first signal: stop after the chunks in flight; second: act at once
            self.signum = signum
            for s, h in previous.items():
                signal.signal(s, h)

        for s in (signal.SIGTERM, signal.SIGINT):
            previous[s] = signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


# ------------------------------------------------------------------------------- the job


def _row_format(fmt: str, methods: tuple[str, ...], method: str | None) -> tuple[list[str], Callable[..., list[str]]]:
    """``(column names, rows(result, labels, times, input_ids) -> lines)`` of a TSV format."""
    if fmt == "smoothjax":
        return tsv.tsv_header(methods), tsv.format_rows
    if fmt == "cohen":
        if method not in methods:
            raise ValueError(f"format 'cohen' writes one method's radius; {method!r} is not among the methods "
                             f"{list(methods)}.")
        return tsv.cohen_header(), functools.partial(tsv.cohen_rows, method=method)
    raise ValueError(f"unknown TSV format {fmt!r}; choose from {list(FORMATS)}.")


def _canonical_methods(methods: Sequence[str] | str, subspace: Any | None) -> tuple[str, ...]:
    """Methods in :data:`smoothjax.pipeline.ALL_METHODS` order (``subspace_l2`` added with a mask)."""
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    unknown = [m for m in methods if m not in pipeline.ALL_METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must name certificates from {list(pipeline.ALL_METHODS)}, got {list(methods)}.")
    if subspace is not None:
        methods = methods + ("subspace_l2",)
    return tuple(m for m in pipeline.ALL_METHODS if m in methods)


def _model_dtype(apply_fn, params, xs: np.ndarray) -> str:
    try:
        out = jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct((1, *xs.shape[1:]), xs.dtype))
        return str(out.dtype)
    except Exception:  # noqa: BLE001  (recorded as unknown; certify itself reports a model that fails)
        return "unknown"


def certify_dataset(
    apply_fn: Callable,
    params: Any,
    xs: Any,
    ys: Any | None,
    key: jax.Array,
    *,
    out: str,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    methods: Sequence[str] = pipeline.DEFAULT_METHODS,
    inputs_per_call: int,
    input_ids: Any | None = None,
    subspace: Any | None = None,
    resume: bool = False,
    overwrite: bool = False,
    shard: Shard | None = None,
    format: str = "smoothjax",
    format_method: str | None = None,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    rows_per_call: int | None = None,
    cli_flags: bool = False,
    on_first_call: Callable[[str], None] | None = None,
) -> JobSummary:
    """Certify ``xs`` into the TSV ``out``, one durable chunk at a time (see the module docstring).

    Args:
      apply_fn, params: the classifier ``apply_fn(params, x [m, *input_shape]) -> logits [m, C]``.
      xs: ``[num_inputs, *input_shape]`` inputs of the whole job (all shards), host arrays.
      ys: ``[num_inputs]`` integer labels, or None (label -1, correct 0).
      key: PRNG key; input ``i`` draws its noise from ``(key, input_ids[i])``.
      out: TSV path (several JAX processes: each writes :func:`process_output_path`).
      sigma, n0, n, alpha, batch_size, methods, subspace: as :func:`smoothjax.pipeline.certify`.
      inputs_per_call: inputs per compiled call; also the unit of writing and of resuming.
      rows_per_call: optional cap on the rows of one model call (:func:`smoothjax.certify`); it
        does not change any result, so a resumed job may use another value.
      input_ids: ``[num_inputs]`` ids written as ``idx`` (default ``arange(num_inputs)``).
      resume: keep the rows already in ``out`` and certify the rest (settings must agree).
      overwrite: start afresh even if ``out`` exists (ignored with ``resume``).
      shard: ``(i, k)``: certify only positions ``p % k == i``.
      format: the row format: ``"smoothjax"`` (``idx label predict radius_<method>... correct time``)
        or ``"cohen"`` (Cohen et al.'s ``idx label predict radius correct time`` for one method).
      format_method: the method of the ``"cohen"`` format (default: the first of ``methods``).
      progress: show a progress bar on stderr (only when stderr is a terminal).
      metadata: extra JSON-able facts for the sidecar (command line, seed, model file, dataset name).
      cli_flags: name command-line flags (``--resume``) rather than keyword arguments
        (``resume=True``) in error messages; the command line sets it.
      on_first_call: called with a one-line note just before the first (compiling) call.

    Returns:
      a :class:`JobSummary`.

    Raises:
      JobError: ``out`` exists without ``resume`` / ``overwrite``; a resume with other settings.
      JobInterrupted: SIGTERM / SIGINT stopped the job (the rows written so far are kept).
      ValueError: bad arguments, as :func:`smoothjax.pipeline.certify` raises them.
    """
    start_time = time.perf_counter()
    xs = np.asarray(xs)
    total_inputs = xs.shape[0]
    ids = np.arange(total_inputs, dtype=np.int64) if input_ids is None else np.asarray(input_ids).astype(np.int64)
    if ids.shape != (total_inputs,):
        raise ValueError(f"input_ids must have one entry per input ({total_inputs}), got shape {ids.shape}.")
    if len(np.unique(ids)) != total_inputs:
        raise ValueError("input_ids must be distinct (each names one row of the TSV).")
    labels = None if ys is None else np.asarray(ys).astype(np.int64)
    if labels is not None and labels.shape != (total_inputs,):
        raise ValueError(f"ys must have one label per input ({total_inputs}), got shape {labels.shape}.")
    if isinstance(inputs_per_call, bool) or not isinstance(inputs_per_call, (int, np.integer)) or inputs_per_call < 1:
        raise ValueError(f"inputs_per_call must be a whole number >= 1, got {inputs_per_call!r}.")
    methods = _canonical_methods(methods, subspace)
    if format == "cohen" and format_method is None:
        format_method = methods[0]
    header, rows_fn = _row_format(format, methods, format_method)
    header_line = "\t".join(header) + "\n"

    positions = shard_positions(total_inputs, shard)
    process = process_position()
    if process[1] > 1:
        positions = positions[process[0]::process[1]]
        out = process_output_path(out, *process)
    side = sidecar_path(out)

    settings = {
        "sigma": float(sigma), "n0": int(n0), "n": int(n), "alpha": float(alpha), "methods": list(methods),
        "key": key_words(key), "key_impl": key_impl(key), "format": format,
        "format_method": format_method if format != "smoothjax" else None,
        "subspace_sha256": None if subspace is None else sha256_arrays([np.asarray(subspace, bool)]),
        "shard": None if shard is None else [int(shard[0]), int(shard[1])],
        "process": None if process[1] == 1 else list(process),
        "params_sha256": params_sha256(params),
        "dataset_sha256": sha256_arrays([xs] + ([] if labels is None else [labels])),
        "input_ids": encode_ids(ids),
        "batch_size": int(batch_size), "inputs_per_call": int(inputs_per_call),
    }

    done: set[int] = set()
    kept: list[str] | None = None  # rows to keep when the file must be rewritten before resuming
    dropped = 0
    previous_sessions: list[dict] = []
    started_utc = now_utc()
    exists = os.path.exists(out)
    if exists and not resume and not overwrite:
        raise JobError(f"{out} exists; pass {_arg('resume', cli_flags)} to continue it or "
                       f"{_arg('overwrite', cli_flags)} to start again.")
    if exists and resume:
        old = read_sidecar(side) if os.path.exists(side) else None
        if old is None:
            raise JobError(f"cannot resume {out}: its sidecar {side} is missing, so its settings cannot be checked; "
                           f"pass {_arg('overwrite', cli_flags)} to start again.")
        old_settings = old.get("settings", {})
        differ = [name for name in CHECKED_SETTINGS if old_settings.get(name) != settings[name]]
        if differ:
            detail = ", ".join(f"{_setting_name(d, cli_flags)} {old_settings.get(d)!r} -> {settings[d]!r}"
                               for d in differ if d not in _HIDDEN_SETTINGS)
            names = ", ".join(_setting_name(d, cli_flags) for d in differ)
            raise JobError(f"cannot resume {out}: these settings differ from the run that wrote it: {names}"
                           f"{' (' + detail + ')' if detail else ''}; use the same settings, another "
                           f"{_arg('out', cli_flags)}, or {_arg('overwrite', cli_flags)}.")
        header, rows, dropped = tsv.read_complete_rows(out)
        if header is not None and header != header_line:
            raise JobError(f"cannot resume {out}: its columns differ from this run's; use another "
                           f"{_arg('out', cli_flags)} or {_arg('overwrite', cli_flags)}.")
        wanted = {int(i) for i in ids[positions]}
        kept = []
        for line in rows:
            idx = int(line.split("\t", 1)[0])
            if idx in wanted and idx not in done:
                done.add(idx)
                kept.append(line)
            else:
                dropped += 1
        if not dropped and header is not None:
            kept = None  # the file is sound as it is: append to it
        previous_sessions = list(old.get("sessions", []))
        started_utc = old.get("started_utc", started_utc)

    kwargs = dict(sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size, methods=methods,
                  rows_per_call=rows_per_call)
    if subspace is not None:
        kwargs["subspace"] = subspace
    per_call = int(min(inputs_per_call, max(1, len(positions))))
    # chunks are fixed by position: a resumed input is computed in the same call as without a stop
    chunks = [positions[lo: lo + per_call] for lo in range(0, len(positions), per_call)]
    todo = [c for c in chunks if any(int(ids[p]) not in done for p in c)]
    done_before = len(done)

    def dispatch(chunk: np.ndarray):
        take = np.concatenate([chunk, np.full(per_call - len(chunk), chunk[-1])])  # one shape: one compilation
        return pipeline.certify(apply_fn, params, xs[take], key, input_ids=ids[take], **kwargs)

    record = {
        "format": SIDECAR_FORMAT,
        "status": "running",
        "out": os.path.basename(out),
        "settings": settings,
        "inputs": {"job": int(total_inputs), "this_file": int(len(positions)), "shape": list(xs.shape[1:])},
        "model": {"apply_fn": getattr(apply_fn, "__qualname__", repr(apply_fn)),
                  "output_dtype": _model_dtype(apply_fn, params, xs)},
        "environment": environment(),
        "metadata": dict(metadata or {}),
        "started_utc": started_utc,
        "sessions": previous_sessions + [{"started_utc": now_utc(), "done_before": done_before}],
    }
    samples_per_input = n0 + n
    chunk_seconds: list[float] = []
    chunk_inputs: list[int] = []
    done_now, status = 0, "interrupted"
    unconverged: dict[str, list[int]] = {}
    stop = _StopFlag()
    bar = None

    def finish(chunk: np.ndarray, result, t_prev: float) -> float:
        nonlocal done_now
        res = jax.tree_util.tree_map(lambda a: np.asarray(a)[: len(chunk)], result)
        t_now = time.perf_counter()
        chunk_seconds.append(t_now - t_prev)
        chunk_inputs.append(len(chunk))
        times = np.full(len(chunk), (t_now - t_prev) / len(chunk))
        lines = rows_fn(res, None if labels is None else labels[chunk], times, ids[chunk])
        fresh = [line for p, line in zip(chunk, lines) if int(ids[p]) not in done]
        tsv.append_lines(out, fresh)
        for method, ok in res.solver_converged.items():
            loose = [int(ids[p]) for p, good, pred in zip(chunk, np.asarray(ok), np.asarray(res.prediction))
                     if not good and pred >= 0 and int(ids[p]) not in done]
            if loose:
                unconverged.setdefault(method, []).extend(loose)
        done.update(int(ids[p]) for p in chunk)
        done_now += len(fresh)
        bar.update(len(fresh))
        if len(chunk_seconds) > 1:  # the first chunk's time includes compilation: leave it out of the rate
            rate = sum(chunk_inputs[1:]) * samples_per_input / max(sum(chunk_seconds[1:]), 1e-9)
            bar.set_postfix_str(f"{rate:.3g} samples/s", refresh=False)
        return t_now

    with stop.installed():
        t_prev = time.perf_counter()
        # the first call validates every argument (and compiles) before any file is touched
        if todo and on_first_call is not None:
            shape = "[" + ", ".join(map(str, (per_call, *xs.shape[1:]))) + "]"
            on_first_call(f"compiling the certification program for inputs {shape} (n0={n0}, n={n}, "
                          f"methods={','.join(methods)}); later chunks of this shape reuse it")
        in_flight = (todo[0], dispatch(todo[0])) if todo else None
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        if not (exists and resume):
            tsv.write_lines_atomic(out, [header_line], sync_dir=False)
        elif kept is not None:  # torn or damaged rows dropped
            tsv.write_lines_atomic(out, [header_line] + kept, sync_dir=False)
        _write_sidecar(side, record)  # its directory sync also makes the TSV's rename durable
        from tqdm.auto import tqdm

        bar = tqdm(total=len(positions), initial=done_before, desc="certify", unit="input", dynamic_ncols=True,
                   disable=not (progress and sys.stderr.isatty()), file=sys.stderr)
        try:
            for chunk in todo[1:]:  # one chunk computes while the previous one is written
                if stop.signum is not None:
                    break
                pending = (chunk, dispatch(chunk))
                t_prev = finish(*in_flight, t_prev)
                in_flight = pending
            if in_flight is not None:
                t_prev = finish(*in_flight, t_prev)
            if stop.signum is not None and len(done) < len(positions):
                raise JobInterrupted(stop.signum, len(done), len(positions), out, cli_flags=cli_flags)
            _put_in_job_order(out, header_line, ids[positions])
            status = "complete"
        except BaseException as err:
            record["sessions"][-1]["error"] = f"{type(err).__name__}: {err}"
            raise
        finally:
            bar.close()
            seconds = time.perf_counter() - start_time
            record["status"] = status
            record["sessions"][-1].update(ended_utc=now_utc(), inputs=done_now, seconds=round(seconds, 3),
                                          unconverged_radii=unconverged)
            if status == "complete":
                record["finished_utc"] = now_utc()
            _write_sidecar(side, record, sync_dir=False)

    steady = float(np.sum(chunk_seconds[1:]) / np.sum(chunk_inputs[1:])) if len(chunk_seconds) > 1 else float("nan")
    return JobSummary(
        out=out, sidecar=side, total=len(positions), done_before=done_before, done_now=done_now, seconds=seconds,
        first_chunk_s=chunk_seconds[0] if chunk_seconds else 0.0, steady_per_input_s=steady, dropped_rows=dropped,
        status=status, unconverged=unconverged,
    )


def _put_in_job_order(out: str, header_line: str, order: np.ndarray) -> None:
    """Rewrite ``out`` in job order if a resume appended rows out of it (usually nothing to do)."""
    header, rows, _ = tsv.read_complete_rows(out)
    rank = {int(i): r for r, i in enumerate(order)}
    keys = [rank.get(int(line.split("\t", 1)[0]), len(rank)) for line in rows]
    if header != header_line or keys != sorted(keys):
        tsv.write_lines_atomic(out, [header_line] + [line for _, line in sorted(zip(keys, rows), key=lambda kv: kv[0])])


# ------------------------------------------------------------------------------- merge


_HIDDEN_SETTINGS = ("key", "input_ids", "params_sha256", "dataset_sha256", "subspace_sha256")


def _setting_name(name: str, cli: bool) -> str:
    """A sidecar setting as messages name it: the flag or keyword of the run-shape settings, ``key (seed)``."""
    if name in ("batch_size", "inputs_per_call"):
        return _arg(name, cli).rstrip("=")
    return "key (seed)" if name == "key" else name


def _check_no_duplicates(ids: np.ndarray, holders: dict[int, list[str]]) -> None:
    """Raise :class:`JobError` naming every file that holds a row of an input held more than once."""
    dup = sorted(r for r, files in holders.items() if len(files) > 1)
    if not dup:
        return
    files = list(dict.fromkeys(p for r in dup for p in holders[r]))
    shown = "; ".join(f"idx {int(ids[r])} in {', '.join(holders[r])}" for r in dup[:5])
    shown += "; ..." if len(dup) > 5 else ""
    raise JobError(f"{len(dup)} input(s) appear more than once ({shown}); the files that hold them: "
                   f"{', '.join(files)}. Merge each shard once.")


def merge_shards(paths: Sequence[str], out: str, *, overwrite: bool = False, cli_flags: bool = False) -> MergeSummary:
    """Concatenate the shard (or per-process) TSVs of one job into ``out``, in job order.

    Checks that every file has a sidecar, that the sidecars agree on every setting but the shard /
    process, that each file is complete, and that the union of rows covers each input of the job
    exactly once; raises :class:`JobError` otherwise. Writes ``out`` and its sidecar (status
    ``"complete"``, ``merged_from`` naming the sources). ``cli_flags``: name command-line flags
    in messages rather than keyword arguments.
    """
    if not paths:
        raise JobError("merge needs at least one shard TSV.")
    if os.path.exists(out) and not overwrite:
        raise JobError(f"{out} exists; pass {_arg('overwrite', cli_flags)} to replace it.")
    for path in paths:
        if not os.path.isfile(path):
            what = "is a directory, not a TSV" if os.path.isdir(path) else "not found"
            raise JobError(f"shard TSV {path!r} {what}; merge takes the TSVs that certify wrote with a shard.")
    sidecars = [read_sidecar(sidecar_path(p)) for p in paths]
    first = sidecars[0]
    resume = "--resume" if cli_flags else "certify_dataset(..., resume=True)"
    for path, side in zip(paths, sidecars):
        if side.get("status") != "complete":
            raise JobError(f"{path} is not complete (status {side.get('status')!r}); resume it with {resume} first.")
        differ = [k for k in CHECKED_SETTINGS if k not in ("shard", "process")
                  and side["settings"].get(k) != first["settings"].get(k)]
        if differ:
            names = ", ".join(_setting_name(d, cli_flags) + ("" if d in _HIDDEN_SETTINGS else
                                                             f" ({side['settings'].get(d)!r} in {path}, "
                                                             f"{first['settings'].get(d)!r} in {paths[0]})")
                              for d in differ)
            raise JobError(f"{path} and {paths[0]} come from different runs (they differ in {names}); "
                           "merge the shards of one job.")
    ids = decode_ids(first["settings"]["input_ids"])
    rank = {int(i): r for r, i in enumerate(ids)}
    header_line, by_rank, holders = None, {}, {}
    for path in paths:
        header, rows, dropped = tsv.read_complete_rows(path)
        if dropped:
            raise JobError(f"{path} has {dropped} damaged row(s); resume it with {resume} first.")
        if header_line is None:
            header_line = header
        elif header != header_line:
            raise JobError(f"{path} has other columns than {paths[0]}.")
        for line in rows:
            idx = int(line.split("\t", 1)[0])
            if idx not in rank:
                raise JobError(f"{path} has a row for idx {idx}, which is not an input of this job.")
            by_rank[rank[idx]] = line
            holders.setdefault(rank[idx], []).append(path)
    _check_no_duplicates(ids, holders)
    missing = [int(ids[r]) for r in range(len(ids)) if r not in by_rank]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise JobError(f"{len(missing)} input(s) of the job are in none of the files (idx {shown}); "
                       "merge every shard (and every process file).")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tsv.write_lines_atomic(out, [header_line] + [by_rank[r] for r in range(len(ids))])
    record = dict(first, status="complete", out=os.path.basename(out), finished_utc=now_utc(),
                  settings=dict(first["settings"], shard=None, process=None),
                  inputs=dict(first.get("inputs", {}), job=len(ids), this_file=len(ids)),
                  merged_from=[{"path": os.path.relpath(p, os.path.dirname(os.path.abspath(out))),
                                "sha256": file_sha256(p), "shard": s["settings"].get("shard"),
                                "process": s["settings"].get("process")}
                               for p, s in zip(paths, sidecars)])
    record.pop("sessions", None)
    _write_sidecar(sidecar_path(out), record)
    return MergeSummary(out=out, sidecar=sidecar_path(out), rows=len(ids), sources=tuple(paths))
