"""One prepared accelerator check: certify a CIFAR ResNet-110 at n = 10^5 against its bare forward pass.

    python -m benchmarks.gpu_resnet110 [--n 100000] [--images 4] [--batch-size 1000] [--out FILE]

Run on a machine with a GPU (or TPU). It checks that the certify pipeline compiles and runs on the
accelerator (the device program has no 64-bit op; the float64 math runs on the host CPU), then
measures images/s of ``smoothjax.certify`` (every default method, and Cohen alone) and rows/s of
the bare jitted forward pass of the same model on the same number of rows, with random weights
(speed does not depend on them). The published anchor: Cohen et al.'s PyTorch CERTIFY takes about
15 s per CIFAR-10 image at n = 10^5 on one GTX 1080 Ti. Device kind, dtype and matmul precision
are recorded beside every figure. On a CPU it runs too (slowly; use ``--n 2000 --images 1``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def main(argv=None) -> int:
    import smoothjax
    from benchmarks.case_sampling import _bare_forward
    from smoothjax.app import architectures

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    model = architectures.get_architecture("cifar_resnet110")
    variables = architectures.init_variables("cifar_resnet110", jax.random.key(0))

    def apply_fn(v, x):
        return model.apply(v, x)

    xs = np.random.default_rng(0).uniform(size=(args.images, 32, 32, 3)).astype(np.float32)
    report = {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
              "device_count": jax.device_count(), "n": args.n, "n0": args.n0, "images": args.images,
              "batch_size": args.batch_size, "jax": jax.__version__}
    for name, methods in (("cohen", ("cohen_l2",)), ("all", smoothjax.pipeline.DEFAULT_METHODS)):
        kw = dict(sigma=0.25, n0=args.n0, n=args.n, alpha=0.001, batch_size=args.batch_size, methods=methods)
        t = time.perf_counter()
        res = smoothjax.certify(apply_fn, variables, xs, jax.random.key(1), **kw)
        first = time.perf_counter() - t
        t = time.perf_counter()
        res = smoothjax.certify(apply_fn, variables, xs, jax.random.key(2), **kw)
        steady = time.perf_counter() - t
        rows = args.images * (args.n0 + args.n * (1.5 if "dipole_l2" in methods else 1.0))
        report[name] = {"first_call_s": first, "seconds": steady, "images_per_s": args.images / steady,
                        "s_per_image": steady / args.images, "model_rows_per_s": rows / steady,
                        "model_dtype": res.model_dtype, "matmul_precision": res.matmul_precision,
                        "vs_cohen_15s_per_image": 15.0 / (steady / args.images)}
        print(name, json.dumps(report[name]), flush=True)
    steps = max(1, args.n // args.batch_size)
    rows_per_step = args.images * args.batch_size
    bare = _bare_forward(apply_fn, rows_per_step, steps)
    base = jnp.asarray(np.repeat(xs, args.batch_size, axis=0))
    pattern = jnp.ones_like(base)
    jax.block_until_ready(bare(variables, base, pattern))
    t = time.perf_counter()
    jax.block_until_ready(bare(variables, base, pattern))
    bare_s = time.perf_counter() - t
    report["bare_forward"] = {"rows": rows_per_step * steps, "seconds": bare_s,
                              "rows_per_s": rows_per_step * steps / bare_s}
    report["cohen"]["overhead_vs_bare"] = report["cohen"]["model_rows_per_s"] and (
        report["bare_forward"]["rows_per_s"] / report["cohen"]["model_rows_per_s"] - 1.0)
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
