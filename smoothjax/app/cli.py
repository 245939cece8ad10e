"""The ``smoothjax`` command line: the commands ``train``, ``certify``, ``merge``, ``analyze``, ``demo``.

Their arguments, and the checks that turn them into values, live in :mod:`smoothjax.app.arguments`.

::

    smoothjax demo [--out DIR]                       # the shipped digits model: certify + analyze a subset
    smoothjax train --dataset digits --sigma 0.25 --out model.msgpack
    smoothjax certify --model model.msgpack --dataset digits --sigma 0.25 --n 10000 --out cert.tsv [--resume]
    smoothjax certify ... --shard 0/4 --out cert.shard0.tsv      # one of four independent jobs
    smoothjax merge cert.shard0.tsv cert.shard1.tsv ... --out cert.tsv
    smoothjax analyze cert.tsv [more.tsv ...] --out analysis/

User mistakes (a missing file, arrays of the wrong shape, sigma <= 0, n0 > n, an unknown method,
...) print one line ``smoothjax <command>: error: <what is wrong and how to fix it>`` on stderr and
exit with status 2; they never print a traceback.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from smoothjax.app.arguments import (
    ALL_METHODS,
    DEMO_BATCH,
    DEMO_INPUTS,
    DEMO_METHODS,
    DEMO_N0,
    METHOD_ALIASES,
    SUMMARY_RADII,
    UsageError,
    build_parser,
    check_certify_numbers,
    check_positive,
    dataset_options,
    parse_methods,
    parse_options,
    parse_radii,
    parse_rows_per_call,
    subspace_mask,
)

# The command line's names, including those of :mod:`smoothjax.app.arguments` that scripts and
# notebooks read as ``cli.X``.
__all__ = [
    "ALL_METHODS",
    "DEMO_INPUTS",
    "METHOD_ALIASES",
    "UsageError",
    "build_parser",
    "enable_compilation_cache",
    "main",
    "missing_app_packages",
    "parse_methods",
    "parse_rows_per_call",
    "print_summary",
    "run_analyze",
    "run_certify",
    "subspace_mask",
]

# ------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------


def cmd_train(args) -> int:
    from smoothjax.app import datasets, models, training

    check_positive("--sigma", args.sigma)
    check_positive("--epochs", args.epochs, integer=True)
    check_positive("--batch-size", args.batch_size, integer=True)
    check_positive("--lr", args.lr)
    data = datasets.load_dataset(args.dataset, "train", **dataset_options(args))
    config = models.default_config(args.arch, data.input_shape, data.num_classes)
    if args.hidden:
        try:
            widths = [int(w) for w in args.hidden.split(",")]
        except ValueError:
            raise UsageError(f"--hidden must be comma-separated integers such as 128,128, "
                             f"got {args.hidden!r}.") from None
        config["hidden"] = widths[0] if args.arch == "cnn" else widths
    check_positive("--checkpoint-every", args.checkpoint_every, integer=True)
    options = parse_options(args.objective_option)
    from smoothjax.objectives import make_objective

    make_objective(args.objective, models.build_model(config).apply, sigma=args.sigma, **options)  # fail early
    print(f"training {args.arch} on {args.dataset} ({len(data)} examples, input shape {data.input_shape}, "
          f"{data.num_classes} classes), sigma={args.sigma}, objective={args.objective}", flush=True)

    def report(epoch, loss):
        if args.quiet and (epoch == 0 or (epoch + 1) % max(1, args.epochs // 10) == 0 or epoch + 1 == args.epochs):
            print(f"  epoch {epoch + 1:4d}/{args.epochs}  loss {loss:.4f}", flush=True)

    config["training"] = {
        "dataset": args.dataset, "sigma": args.sigma, "objective": args.objective, "objective_options": options,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
    }
    if isinstance(data.x, np.ndarray):  # the units the model learns; certify warns about data on another scale
        config["training"]["input_range"] = [float(np.min(data.x)), float(np.max(data.x))]
    start = time.perf_counter()
    try:
        result = training.train(
            data, sigma=args.sigma, config=config, objective=args.objective, objective_options=options,
            epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed, callback=report,
            checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every, resume=args.resume,
            progress=not args.quiet,
        )
    except training.TrainingDiverged as err:
        # not a usage mistake (exit 2) but a failed run: exit 1, and no model file is written
        print(f"smoothjax train: error: {err}", file=sys.stderr)
        return 1
    config = dict(result.config)
    models.save_model(args.out, config, result.params)
    msg = f"saved {args.out} ({os.path.getsize(args.out) / 1024:.0f} KB) after {time.perf_counter() - start:.1f} s"
    try:
        test = datasets.load_dataset(args.dataset, "test", **{**dataset_options(args), "download": False})
        clean = training.accuracy(result.apply_fn, result.params, test.x, test.y)
        noisy = training.accuracy(result.apply_fn, result.params, test.x, test.y, sigma=args.sigma)
        which = "training-set accuracy (the file has no x_test / y_test)" if test.note else "test accuracy"
        msg += f"; {which} {clean:.3f} clean, {noisy:.3f} under noise sigma={args.sigma}"
    except Exception:  # noqa: BLE001  (a user .npz without a test split: skip the report)
        pass
    print(msg)
    return 0


def run_certify(
    *, model_path, dataset, split, sigma, n0, n, alpha, batch_size, methods, subspace, max_inputs, skip,
    inputs_per_call, seed, out, progress=True, dataset_options=None, resume=False, overwrite=False, shard=None,
    tsv_format="smoothjax", format_method=None, command=None, arch=None, model_fn=None, rows_per_call=None,
):
    """Certify a dataset split into ``out`` (TSV + ``out.json``); returns ``(table, timing dict, sigma)``.

    The work is :func:`smoothjax.app.job.certify_dataset` (streamed rows, resume, shards); the
    table is the whole file as written (all inputs of this shard, also those of earlier runs).
    """
    import jax

    from smoothjax.app import analysis, datasets, job, models, provenance

    check_certify_numbers(sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size, methods=methods)
    check_positive("--skip", skip, integer=True)
    check_positive("--max-inputs", max_inputs, integer=True)
    check_positive("--inputs-per-call", inputs_per_call, integer=True)
    shard = job.parse_shard(shard) if isinstance(shard, str) else shard
    if tsv_format == "cohen" and format_method is not None:
        format_method = parse_methods(format_method)[0]
    apply_fn, params, config = models.load_for_certify(model_path, arch=arch, model_fn=model_fn)
    if sigma is None:
        sigma = config.get("training", {}).get("sigma")
        if sigma is None:
            raise UsageError("this model does not record its training sigma; pass --sigma.")
    data = datasets.load_dataset(dataset, split, **(dataset_options or {}))
    config = models.complete_config(config, apply_fn, params, data.input_shape)  # a --model-fn may not say
    expected = tuple(config["input_shape"])
    data = datasets.match_input_shape(data, expected)  # flattening only: never reorders axes
    if data.num_classes > config["num_classes"]:
        raise UsageError(f"{dataset!r} has labels up to {data.num_classes - 1} "
                         f"but the model has {config['num_classes']} classes.")
    if "subspace_l2" in methods and subspace is None:
        subspace = "top"
    mask = subspace_mask(subspace, expected) if "subspace_l2" in methods else None

    ids = np.arange(len(data))[::skip]
    if max_inputs is not None:
        ids = ids[:max_inputs]
    if len(ids) == 0:
        raise UsageError("no inputs to certify; lower --skip or raise --max-inputs.")
    xs = np.asarray(data.x[ids])
    warning = datasets.input_range_warning(xs, config, repr(dataset))
    if warning:
        print(f"smoothjax certify: warning: {warning}", file=sys.stderr, flush=True)
    model_file = model_path or ("" if model_fn else models.default_model_path())
    metadata = {
        "command": list(command) if command is not None else None,
        "seed": seed,
        "model": {"path": model_file,
                  "sha256": provenance.file_sha256(model_file) if os.path.isfile(model_file) else None,
                  "config": config},
        "dataset": {"name": dataset, "split": split, "skip": skip, "max_inputs": max_inputs, "size": len(data)},
        "subspace": subspace if mask is not None else None,
    }
    summary = job.certify_dataset(
        apply_fn, params, xs, data.y[ids], jax.random.key(seed), out=out, sigma=sigma, n0=n0, n=n,
        alpha=alpha, batch_size=batch_size, methods=methods, subspace=mask, inputs_per_call=inputs_per_call,
        input_ids=ids, resume=resume, overwrite=overwrite, shard=shard, format=tsv_format,
        format_method=format_method, progress=progress, metadata=metadata, rows_per_call=rows_per_call,
        cli_flags=True, on_first_call=(lambda line: print(line, flush=True)) if progress else None,
    )
    table = analysis.read_tsv(summary.out)
    timing = {
        "total_s": summary.seconds,
        "per_input_s": summary.seconds / max(1, summary.done_now),
        "first_call_s": summary.first_chunk_s,
        "steady_per_input_s": summary.steady_per_input_s,
        "inputs_this_run": summary.done_now,
        "inputs_before": summary.done_before,
        "unconverged": summary.unconverged,
        "dataset_note": data.note,
        "out": summary.out,
    }
    return table, timing, sigma


def print_summary(table, timing, *, radii=SUMMARY_RADII, file=None) -> None:
    """Print certified accuracy at ``radii``, ACR per method, and the time per input."""
    from smoothjax.app import analysis

    file = file or sys.stdout
    this_run = timing.get("inputs_this_run", len(table.label))
    if this_run == 0:
        line = f"\nsummary: {len(table.label)} inputs, all certified by earlier runs (nothing left to do"
    else:
        line = (f"\nsummary: {len(table.label)} inputs"
                + (f" ({this_run} processed in this run)" if this_run != len(table.label) else "")
                + f"; {this_run} in {timing['total_s']:.1f} s: {timing['per_input_s']:.4f} s per input "
                f"(the first call, {timing['first_call_s']:.1f} s, includes compilation")
        if np.isfinite(timing["steady_per_input_s"]):
            line += f"; {timing['steady_per_input_s']:.4f} s per input after it"
    print(line + ")", file=file)
    width = max(len(m) for m in table.methods)
    head = "  ".join(f"r={r:<5g}" for r in radii)
    print(f"  {'method'.ljust(width)}  {'threat':<11}  {head}  ACR", file=file)
    for m in table.methods:
        acc = analysis.certified_accuracy(table, m, radii)
        cells = "  ".join(f"{a:<7.3f}" for a in acc)
        acr = analysis.average_certified_radius(table, m)
        print(f"  {m.ljust(width)}  {analysis.threat_model(m):<11}  {cells}  {acr:.3f}", file=file)
    print("  (certified accuracy: fraction of inputs classified correctly with radius >= r; "
          "ACR: average certified radius)", file=file)
    if timing.get("dataset_note"):
        print(f"  note: {timing['dataset_note']}", file=file)
    for method, ids in sorted(timing.get("unconverged", {}).items()):
        shown = ", ".join(str(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
        print(f"  note: {len(ids)} {method} radii are Theorem 3's certified fallback (the solver did not converge: "
              f"sound, possibly loose), inputs {shown}; the sidecar lists them all", file=file)




def cmd_certify(args) -> int:
    from smoothjax.app.job import JobInterrupted

    try:
        table, timing, sigma = run_certify(
            model_path=args.model, dataset=args.dataset, dataset_options=dataset_options(args), split=args.split,
            sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch_size,
            methods=parse_methods(args.methods), subspace=args.subspace, max_inputs=args.max_inputs, skip=args.skip,
            inputs_per_call=args.inputs_per_call, seed=args.seed, out=args.out, progress=not args.quiet,
            resume=args.resume, overwrite=args.overwrite, shard=args.shard, tsv_format=args.format,
            format_method=args.cohen_method, command=sys.argv, arch=args.arch, model_fn=args.model_fn,
            rows_per_call=parse_rows_per_call(args.rows_per_call),
        )
    except JobInterrupted as stop:  # SIGTERM / SIGINT: the rows written so far are kept
        print(f"smoothjax certify: {stop}", file=sys.stderr)
        return 128 + stop.signum
    print(f"wrote {timing['out']} and {timing['out']}.json "
          f"(sigma={sigma}, n0={args.n0}, n={args.n}, alpha={args.alpha})")
    print_summary(table, timing)
    return 0


def cmd_merge(args) -> int:
    from smoothjax.app import job

    summary = job.merge_shards(args.tsv, args.out, overwrite=args.overwrite, cli_flags=True)
    print(f"wrote {summary.out} ({summary.rows} rows from {len(summary.sources)} files) and {summary.sidecar}")
    return 0


def _distinct_names(paths: Sequence[str]) -> list[str]:
    """Table names for files: the file's stem, and for stems that collide the folders that tell them apart.

    Folders are compared from the file upwards and the nearest differing ones are kept until the
    names are unique (``a/x/test/N_1`` and ``b/y/test/N_1`` become ``x/N_1`` and ``y/N_1``).
    """
    from smoothjax.app import tsv

    stems = [tsv.file_stem(os.path.basename(p)) for p in paths]
    names = list(stems)
    for stem in {s for s in stems if stems.count(s) > 1}:
        group = [i for i, s in enumerate(stems) if s == stem]
        dirs = [os.path.normpath(os.path.abspath(paths[i])).split(os.sep)[-2::-1] for i in group]  # nearest first
        depth = max(len(d) for d in dirs)
        keep: list[int] = []
        for k in range(depth):  # add differing folders, nearest first, until the names are unique
            if len({d[k] if k < len(d) else None for d in dirs}) > 1:
                keep.append(k)
                labels = ["/".join([d[j] for j in reversed(keep) if j < len(d)] + [stem]) for d in dirs]
                if len(set(labels)) == len(labels):
                    break
        for i, d in zip(group, dirs):
            names[i] = "/".join([d[k] for k in reversed(keep) if k < len(d)] + [stem])
    return names


def run_analyze(paths: Sequence[str], out_dir: str, radii=SUMMARY_RADII, *, method: str | None = None,
                settings: dict | None = None, rho: float = 0.001) -> list[str]:
    """Figures, ``summary.md`` and ``summary.tex`` for certification logs; returns the written paths (markdown last).

    ``paths`` may name directories (every log directly inside). ``method`` names the radius of
    single-radius logs; ``settings`` (``sigma`` / ``n`` / ``alpha``) override what the logs' sidecars
    and names say. Writes ``certified_accuracy.png`` / ``.svg`` and, when some method can be paired
    with Cohen's radius, ``radius_scatter.png``.
    """
    import dataclasses

    from smoothjax.app import analysis, tsv

    if not (0 < rho < 1):
        raise UsageError(f"--rho must lie strictly between 0 and 1 (e.g. 0.001), got {rho}.")
    files = tsv.expand_log_paths(paths)
    tables = [analysis.read_tsv(p, method=method, settings=settings) for p in files]
    names = [t.name for t in tables]
    if len(set(names)) < len(names):  # same file name in different folders: tell them apart
        tables = [dataclasses.replace(t, name=n) for t, n in zip(tables, _distinct_names(files))]
    os.makedirs(out_dir, exist_ok=True)
    scatter_notes: list[str] = []
    written = analysis.plot_certified_accuracy(tables, os.path.join(out_dir, "certified_accuracy"))
    written += analysis.plot_radius_scatter(tables, os.path.join(out_dir, "radius_scatter"), notes=scatter_notes)
    for note in [n for n in map(analysis.partial_note, tables) if n] + scatter_notes:
        print(f"note: {note}", file=sys.stderr)
    tex = os.path.join(out_dir, "summary.tex")
    with open(tex, "w") as fh:
        fh.write(analysis.latex_table(tables, radii, rho=rho))
    md = os.path.join(out_dir, "summary.md")
    with open(md, "w") as fh:
        fh.write("# Certified accuracy\n\n")
        fh.write("Fraction of all attempted inputs classified correctly with certified radius >= r (input units; "
                 "abstentions count as wrong); ACR = average certified radius.\n\n")
        for t in tables:
            text = analysis.settings_text(t.settings)
            if text:
                fh.write(f"- {t.name}: {text}\n")
        fh.write("\n" if any(t.settings for t in tables) else "")
        fh.write(analysis.markdown_table(tables, radii, rho=rho))
        fh.write("".join(f"\nNote: {note}.\n" for note in scatter_notes))
    return written + [tex, md]


def cmd_analyze(args) -> int:
    radii = parse_radii(args.radii)
    check_positive("--sigma", args.sigma)
    check_positive("--n", args.n, integer=True)
    if args.alpha is not None and not (0 < args.alpha < 1):
        raise UsageError(f"--alpha must lie strictly between 0 and 1 (e.g. 0.001), got {args.alpha}.")
    method = parse_methods(args.method)[0] if args.method else None
    settings = {"sigma": args.sigma, "n": args.n, "alpha": args.alpha}
    written = run_analyze(args.tsv, args.out, radii, method=method, settings=settings, rho=args.rho)
    with open(written[-1]) as fh:
        print(fh.read())
    print("wrote " + ", ".join(written))
    return 0


def cmd_demo(args) -> int:
    from smoothjax.app import models

    check_positive("--max-inputs", args.max_inputs, integer=True)
    check_positive("--n", args.n, integer=True)
    start = time.perf_counter()
    out = args.out
    tsv = os.path.join(out, "digits_sigma0.25.tsv")
    print(f"smoothjax demo: certifying the first {args.max_inputs} digits test images with the shipped model "
          f"({os.path.basename(models.default_model_path())}), sigma=0.25, n0={min(DEMO_N0, args.n)}, n={args.n}, "
          "alpha=0.001, methods cohen, sos, dipole, first-order l1 / linf / subspace (top half of the image)",
          flush=True)
    table, timing, _ = run_certify(
        model_path=None, dataset="digits", split="test", sigma=0.25, n0=min(DEMO_N0, args.n), n=args.n, alpha=0.001,
        batch_size=min(DEMO_BATCH, args.n - args.n % 2 or 2), methods=DEMO_METHODS, subspace="top",
        max_inputs=args.max_inputs, skip=1, inputs_per_call=max(1, args.max_inputs // 10), seed=args.seed, out=tsv,
        overwrite=True, command=sys.argv, rows_per_call=parse_rows_per_call("auto"),
    )
    print_summary(table, timing)
    written = run_analyze([tsv], out)
    print(f"\nwrote {tsv}, " + ", ".join(written))
    print(f"demo finished in {time.perf_counter() - start:.1f} s; next: `smoothjax certify --n 100000 --out cert.tsv` "
          "for the full test set, or `smoothjax train --dataset your.npz --sigma 0.25 --out model.msgpack`.")
    return 0


COMMANDS = {"train": cmd_train, "certify": cmd_certify, "merge": cmd_merge, "analyze": cmd_analyze, "demo": cmd_demo}


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache for the command line; returns its directory.

    The certify program (sampling + every certificate, including the Theorem 3 solver) takes most
    of a short run's time to compile; with the cache, a second ``smoothjax demo`` or ``certify``
    with the same configuration starts in seconds. Directory: ``$SMOOTHJAX_CACHE_DIR``, default
    ``~/.cache/smoothjax/jax``; set ``SMOOTHJAX_CACHE_DIR=`` (empty) to turn it off. Only the
    command line does this; importing smoothjax never changes JAX's cache settings.
    """
    import jax

    path = os.environ.get("SMOOTHJAX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "smoothjax", "jax"))
    if not path:
        return None
    try:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    except Exception:  # noqa: BLE001  (a read-only home or an old jax: run without the cache)
        return None
    return path


#: Packages of the ``app`` extra (plots, progress bars, the digits data); the core needs none.
APP_PACKAGES = {"matplotlib": "matplotlib", "tqdm": "tqdm", "sklearn": "scikit-learn"}


def missing_app_packages() -> list[str]:
    """The distributions of the ``app`` extra that cannot be imported (empty when installed)."""
    import importlib.util

    missing = []
    for module, dist in APP_PACKAGES.items():
        try:
            found = sys.modules.get(module, 0) is not None and importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(dist)
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smoothjax`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"smoothjax {args.command}"
    missing = missing_app_packages()
    if missing:
        print(f"{prog}: error: the command line needs the application extra ({', '.join(missing)} not installed): "
              "pip install 'smoothjax[app]'", file=sys.stderr)
        return 2
    if args.command in ("certify", "demo"):
        enable_compilation_cache()
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        # UsageError, DatasetError, ModelError, AnalysisError and the library's ValueErrors for
        # concrete bad inputs all say what is wrong in one sentence.
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
