"""Command-line arguments of ``smoothjax``: the parser, the method names, and the checks of values.

Everything here turns text from the command line into checked Python values or raises
:class:`UsageError` with a sentence saying what is wrong and how to fix it; the commands that use
the values live in :mod:`smoothjax.app.cli`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np

#: Method names accepted on the command line -> certificate names of ``pipeline.certify``.
METHOD_ALIASES = {
    "cohen": "cohen_l2",
    "sos": "sos_l2",
    "dipole": "dipole_l2",
    "l1": "first_order_l1",
    "first-order-l1": "first_order_l1",
    "linf": "first_order_linf",
    "first-order-linf": "first_order_linf",
    "subspace": "subspace_l2",
    "first-order-subspace": "subspace_l2",
    "top2": "top2_l2",
}
ALL_METHODS = ("cohen_l2", "sos_l2", "dipole_l2", "first_order_l1", "first_order_linf")
DEMO_METHODS = ALL_METHODS + ("subspace_l2",)
DEMO_BATCH = 1000
DEMO_INPUTS = 100
DEMO_N = 2000
DEMO_N0 = 64
SUMMARY_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


class UsageError(ValueError):
    """A mistake in what the user asked for; reported as one line and exit status 2."""


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends each option's text with ``(default: VALUE)`` where the default means something.

    Left out: options without a default (``None``), flags (``False``), repeatable options (``[]``),
    positional arguments, and options whose help already says what the default is (it mentions
    "default", e.g. "default: the sigma the model was trained with").
    """

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default is None or default is argparse.SUPPRESS
                or isinstance(default, bool) or default == []):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``smoothjax <cmd>: error: ...``), exit status 2, defaults in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="smoothjax", description="Randomized-smoothing certificates in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="{train,certify,merge,analyze,demo}", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("train", help="train a classifier (Gaussian augmentation, MACER, Consistency, SmoothAdv "
                                     "or certificate-aware)")
    _add_dataset_args(p)
    p.add_argument("--arch", default="mlp", help="mlp | cnn")
    p.add_argument("--hidden", default=None, help="comma-separated hidden widths (mlp), e.g. 128,128")
    p.add_argument("--sigma", type=float, required=True, help="noise std in input units (certify with the same sigma)")
    p.add_argument("--objective", default="gaussian",
                   help="gaussian (default), macer, consistency, smoothadv, or a certificate-aware objective: "
                        "cohen_l2, sos_l2, dipole_l2, first_order_l1, first_order_linf")
    p.add_argument("--objective-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option passed to the objective, e.g. num_samples=4 (repeatable)")
    p.add_argument("--epochs", type=int, default=30, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=64, help="examples per optimizer step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of Adam, decayed on a cosine")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialization, shuffling and noise")
    p.add_argument("--out", required=True, help="checkpoint path to write (.msgpack)")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="write a resumable checkpoint here every --checkpoint-every epochs (loadable by certify)")
    p.add_argument("--checkpoint-every", type=int, default=1, metavar="N", help="epochs between --checkpoint writes")
    p.add_argument("--resume", default=None, metavar="PATH", help="continue from a --checkpoint file (same arguments)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("certify", help="certify inputs with chosen methods and write a Cohen-style TSV")
    _add_certify_args(p)
    p.add_argument("--out", required=True,
                   help="TSV path to write (rows are appended as inputs finish; settings in OUT.json)")
    p.add_argument("--resume", action="store_true",
                   help="continue OUT: skip the inputs already written (the settings must be the same); "
                        "starts OUT if missing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT instead of refusing")
    p.add_argument("--shard", default=None, metavar="I/K",
                   help="certify only the inputs at positions p with p %% K == I "
                        "(one of K independent jobs; join with merge)")
    p.add_argument("--format", default="smoothjax", choices=("smoothjax", "cohen"),
                   help="smoothjax: a radius column per method (default); cohen: Cohen et al.'s columns for one method")
    p.add_argument("--cohen-method", default=None,
                   help="the method whose radius --format cohen writes (default: the first of --methods)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("merge", help="join the shard TSVs of one certify job into one TSV")
    p.add_argument("tsv", nargs="+", help="the shard TSVs (each with its OUT.json sidecar)")
    p.add_argument("--out", required=True, help="merged TSV path to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")

    p = sub.add_parser("analyze", help="certified accuracy vs radius plots and a markdown table from TSVs")
    p.add_argument("tsv", nargs="+",
                   help="TSVs written by `smoothjax certify`, "
                        "Cohen et al.'s logs (idx label predict radius correct time), "
                        "the second paper's logs (N_<n>, second_order_N_<n>, dipole_N_<n>), or directories of them")
    p.add_argument("--out", default="smoothjax-analysis", help="output directory")
    p.add_argument("--radii", default=",".join(f"{r:g}" for r in SUMMARY_RADII), help="radii for the table")
    p.add_argument("--method", default=None,
                   help="method name for logs with a single radius column "
                        "(default cohen_l2, or what a second-paper file name says)")
    p.add_argument("--sigma", type=float, default=None,
                   help="noise level of the logs (default: from OUT.json or the path)")
    p.add_argument("--n", type=int, default=None,
                   help="estimation samples of the logs (default: from OUT.json or the file name)")
    p.add_argument("--alpha", type=float, default=None,
                   help="failure probability of the logs (default: from OUT.json; needed for HighProb accuracy)")
    p.add_argument("--rho", type=float, default=0.001,
                   help="HighProb accuracy holds with probability >= 1 - RHO over the certification noise")

    p = sub.add_parser("demo", help="certify + analyze a digits subset with the shipped model")
    p.add_argument("--out", default="smoothjax-demo", help="output directory")
    p.add_argument("--max-inputs", type=int, default=DEMO_INPUTS, help="test inputs to certify")
    p.add_argument("--n", type=int, default=DEMO_N, help="samples for estimation")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    return parser


def _add_dataset_args(p):
    p.add_argument("--dataset", default="digits",
                   help="digits | spirals | swissroll | cifar10[:DIR] | cifar100[:DIR] | mnist[:DIR] "
                        "| imagenet:DIR (class folders) | a directory of one of these | path/to/data.npz (arrays x, y)")
    p.add_argument("--layout", default=None, choices=("nhwc", "nchw"),
                   help="layout of a 4-D .npz image array; needed when its channel axis cannot be told from the shape")
    p.add_argument("--scale", type=float, default=None,
                   help="divide the inputs by SCALE: required for integer (uint8) .npz pixels, "
                        "e.g. 255 maps 0..255 to [0, 1]; image formats default to 255")
    p.add_argument("--download", action="store_true",
                   help="fetch cifar10 or mnist from the official source when the files are missing "
                        "(nothing is downloaded otherwise)")


def dataset_options(args) -> dict:
    """The ``load_dataset`` keywords of the dataset arguments."""
    return {"layout": args.layout, "scale": args.scale, "download": args.download}


def _add_certify_args(p):
    p.add_argument("--model", default=None,
                   help="checkpoint from `smoothjax train` (.msgpack or Orbax directory) "
                        "or a PyTorch checkpoint (.pth / .pth.tar) of an --arch (default: the shipped digits model)")
    p.add_argument("--arch", default=None,
                   help="architecture of a PyTorch --model: cifar_resnet20, cifar_resnet110, resnet50, mnist_net, "
                        "small_mnist_net, small_mnist_pca_net, swiss_roll_net (default: the checkpoint's 'arch' field)")
    p.add_argument("--model-fn", default=None, metavar="MODULE:FACTORY",
                   help="certify any Flax model: FACTORY() (or FACTORY(MODEL) with --model) "
                        "in an importable module returns (apply_fn, params) or (apply_fn, params, config)")
    _add_dataset_args(p)
    p.add_argument("--split", default="test", help="train | test")
    p.add_argument("--sigma", type=float, default=None,
                   help="noise std (default: the sigma the model was trained with)")
    p.add_argument("--n0", type=int, default=100, help="samples for selecting the top class")
    p.add_argument("--n", type=int, default=10_000, help="samples for estimation")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--batch-size", type=int, default=1000,
                   help="noise samples per input per model call, even for sos/dipole")
    p.add_argument("--methods", default="cohen,sos,dipole,l1,linf",
                   help="comma-separated, from cohen, sos, dipole, l1, linf, subspace")
    p.add_argument("--subspace", default=None,
                   help="pixel mask for the subspace l2 threat model (default top when subspace is requested): "
                        "'top', 'bottom', 'left', 'right', 'centre' (image halves / central quarter) "
                        "or a .npy boolean mask of the input shape")
    p.add_argument("--max-inputs", type=int, default=None, help="certify at most this many inputs (default: all)")
    p.add_argument("--skip", type=int, default=1, help="certify every SKIP-th input")
    p.add_argument("--inputs-per-call", type=int, default=10,
                   help="inputs per compiled call; rows are written (and resumed) a call at a time")
    p.add_argument("--rows-per-call", default="auto",
                   help="most rows the model sees in one call (Cohen's --batch); 'auto' = 2048 on a CPU, every row "
                        "of a step on an accelerator; 'all' = every row of a step. Results do not depend on it")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the noise; each input's samples derive from it and the input's index")


# ------------------------------------------------------------------------------------------
# validation helpers
# ------------------------------------------------------------------------------------------


def parse_methods(text: str) -> tuple[str, ...]:
    """``"cohen,sos,l1"`` -> ``("cohen_l2", "sos_l2", "first_order_l1")``; raises :class:`UsageError`."""
    out = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        canonical = METHOD_ALIASES.get(name, name.replace("-", "_"))
        if canonical not in ALL_METHODS + ("subspace_l2", "top2_l2"):
            raise UsageError(
                f"unknown method {raw.strip()!r}; "
                "use a comma-separated list of cohen, sos, dipole, l1, linf, subspace, top2."
            )
        if canonical not in out:
            out.append(canonical)
    if not out:
        raise UsageError("no methods given; use e.g. --methods cohen,sos,dipole,l1,linf.")
    return tuple(out)


def parse_radii(text: str) -> tuple[float, ...]:
    try:
        radii = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise UsageError(f"--radii must be comma-separated numbers such as 0,0.25,0.5, got {text!r}.") from None
    if not radii or any(not np.isfinite(r) or r < 0 for r in radii):
        raise UsageError(f"--radii must be non-negative numbers such as 0,0.25,0.5, got {text!r}.")
    return radii


def parse_options(items: Sequence[str]) -> dict:
    """``["num_samples=4", "link=sigmoid"]`` -> ``{"num_samples": 4, "link": "sigmoid"}`` (numbers parsed)."""
    import json

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--objective-option must look like KEY=VALUE (e.g. num_samples=4), got {item!r}.")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


def check_positive(name: str, value, *, integer: bool = False):
    if value is None:
        return
    if not np.isfinite(value) or value <= 0:
        raise UsageError(f"{name} must be {'a whole number ' if integer else ''}> 0, got {value}.")


#: Certificates built on pairs of noise samples: they need an even --n and --batch-size.
PAIR_METHODS = ("sos_l2", "dipole_l2")


def check_certify_numbers(*, sigma, n0, n, alpha, batch_size, methods=()):
    if sigma is not None and (not np.isfinite(sigma) or sigma <= 0):
        raise UsageError(f"--sigma must be a noise level > 0 (e.g. 0.25), got {sigma}.")
    check_positive("--n0", n0, integer=True)
    check_positive("--n", n, integer=True)
    check_positive("--batch-size", batch_size, integer=True)
    if n0 > n:
        raise UsageError(f"--n0 ({n0}) must not exceed --n ({n}); "
                         "n0 samples select the class, n (more) samples certify it.")
    if n < 2:
        raise UsageError(f"--n must be at least 2 (pairs of samples are needed), got {n}.")
    if not (0 < alpha < 1):
        raise UsageError(f"--alpha must lie strictly between 0 and 1 (e.g. 0.001), got {alpha}.")
    paired = [m for m in methods if m in PAIR_METHODS]
    for flag, value in (("--batch-size", batch_size), ("--n", n)):
        if paired and value % 2:
            names = " and ".join(m.split("_")[0] for m in paired)
            others = ",".join(next(a for a, c in METHOD_ALIASES.items() if c == m)
                              for m in methods if m not in PAIR_METHODS) or "cohen"
            raise UsageError(f"{flag} must be even for {names} (pair-based: they use samples two at a time), "
                             f"got {value}; pass an even {flag} (e.g. {value + 1}) or leave them out "
                             f"(e.g. --methods {others}).")


def subspace_mask(spec: str | None, input_shape: Sequence[int]) -> np.ndarray | None:
    """A boolean mask of ``input_shape`` for ``--subspace`` (named image region or a ``.npy`` file)."""
    if spec is None:
        return None
    shape = tuple(input_shape)
    if spec.endswith(".npy"):
        if not os.path.isfile(spec):
            raise UsageError(f"subspace mask file {spec!r} not found; "
                             f"save a boolean array of shape {shape} with numpy.save.")
        mask = np.load(spec, allow_pickle=False)
        if mask.shape != shape and mask.size != int(np.prod(shape)):
            raise UsageError(f"subspace mask {spec!r} has shape {mask.shape}, but inputs have shape {shape}.")
        mask = mask.reshape(shape).astype(bool)
    else:
        if len(shape) < 2:
            raise UsageError(f"--subspace {spec!r} needs image inputs [H, W, ...]; for shape {shape} pass a .npy mask.")
        h, w = shape[0], shape[1]
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        regions = {
            "top": rows < h // 2,
            "bottom": rows >= h // 2,
            "left": cols < w // 2,
            "right": cols >= w // 2,
            "centre": (abs(rows - (h - 1) / 2) < h / 4) & (abs(cols - (w - 1) / 2) < w / 4),
        }
        regions["center"] = regions["centre"]
        if spec not in regions:
            raise UsageError(f"unknown --subspace {spec!r}; use top, bottom, left, right, centre or a .npy mask file.")
        mask = np.broadcast_to(regions[spec].reshape((h, w) + (1,) * (len(shape) - 2)), shape)
    if not mask.any():
        raise UsageError("the subspace mask selects no coordinates; select at least one.")
    return np.asarray(mask, bool)


def parse_rows_per_call(value) -> int | None:
    """``--rows-per-call``: a positive integer, ``all`` (None) or ``auto`` (2048 on a CPU backend)."""
    import jax

    if value in (None, "all"):
        return None
    if value == "auto":
        return 2048 if jax.default_backend() == "cpu" else None
    try:
        rows = int(value)
    except ValueError:
        rows = 0
    if rows < 1:
        raise UsageError(f"--rows-per-call must be a positive integer, 'auto' or 'all'; got {value!r}.")
    return rows
