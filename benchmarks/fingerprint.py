"""Every number smoothjax computes on the benchmark inputs, saved or compared bit for bit.

A refactor must not change a single bit of a certificate. Run before the change with ``--save``
and after it with ``--compare`` (same machine, same JAX):

    python -m benchmarks.fingerprint --save before.npz
    python -m benchmarks.fingerprint --compare before.npz

It evaluates every public certificate function (Clopper-Pearson, Cohen, SoS and its gradient-norm
bound, dipole, Theorem 3 directional radius and p_lower, the l1 / linf / subspace radii, the
gradient-norm bounds, the chaos deviation of both proven methods) on
:func:`benchmarks.case_certificates._inputs` (fixed seed) and ``certify`` with every method on a
small fixed MLP, and reports per array whether it is bitwise equal, and
otherwise the largest relative difference and whether any value went up.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

SIZE = 500


def _arrays():
    import smoothjax as sj
    from benchmarks.case_certificates import ALPHA, COHEN_N, LINF_DIM, SIGMA, _inputs

    rng = np.random.default_rng(20261206)
    out = {}
    c = _inputs("cohen", SIZE, rng)
    out["cp_lower"] = sj.clopper_pearson_lower(c["count"], COHEN_N, ALPHA)
    out["cp_upper"] = sj.clopper_pearson_upper(c["count"], COHEN_N, ALPHA)
    out["cohen"] = sj.cohen_radius(out["cp_lower"], sigma=SIGMA)
    s = _inputs("sos", SIZE, rng)
    out["sos"] = sj.sos_radius(s["p_lower"], s["grad_norm_upper"], sigma=SIGMA)
    out["sos_grad_norm_upper"] = sj.sos_grad_norm_upper(
        s["grad_norm_upper"] ** 2, 5000, dim=49, sigma=SIGMA, alpha=ALPHA, p_lower=s["p_lower"])
    d = _inputs("dipole", SIZE, rng)
    out["dipole"] = sj.dipole_radius(d["cs_lower"], d["cn_lower"], sigma=SIGMA)
    t = _inputs("directional", SIZE, rng)
    out["directional"] = sj.directional_radius(t["q"], t["m1"], t["m2"])
    out["p_lower"] = sj.theorem3_p_lower(0.5 * out["directional"], t["q"], t["m1"], t["m2"])
    v = _inputs("l1", SIZE, rng)
    out["l1"] = sj.l1_radius(v["p_lower"], v["grad_l2_lower"], v["grad_linf_upper"], sigma=SIGMA)
    v = _inputs("linf", SIZE, rng)
    out["linf"] = sj.linf_radius(v["p_lower"], v["grad_l2_lower"], v["grad_l1_upper"], dim=LINF_DIM, sigma=SIGMA)
    v = _inputs("l1", SIZE, rng)
    out["subspace"] = sj.subspace_radius(v["p_lower"], v["grad_l2_lower"], v["grad_linf_upper"], sigma=SIGMA,
                                         p=2, subspace_dim=4)
    z = rng.normal(size=(8, LINF_DIM)) * 0.05
    za, zb = z + 0.01 * rng.normal(size=z.shape), z + 0.01 * rng.normal(size=z.shape)
    for name, fn in (("grad_l2_bounds", sj.grad_l2_bounds), ("grad_l1_bounds", sj.grad_l1_bounds),
                     ("grad_linf_bounds", sj.grad_linf_bounds)):
        b = fn(za, zb, 5000, 5000, sigma=SIGMA, alpha=ALPHA)
        out[name + "_lower"], out[name + "_upper"] = b.lower, b.upper
    out.update(_chaos_arrays(sj, za, zb))
    out.update(_certify_arrays(sj))
    return {k: np.asarray(v) for k, v in out.items()}


CHAOS_DIMS = (1, 2, 7, 49, 784, 3072, 150_528, 1_000_000)


def _chaos_arrays(sj, za, zb):
    """``chaos_deviation`` (both proven methods) and the gradient-norm bounds built on it.

    Tails from 1e-300 (the Chernoff rate's root next to 1) to 0.5, dimensions 1 to 10^6, and
    proxies over eight decades.
    """
    from benchmarks.case_certificates import ALPHA, SIGMA

    k1 = np.array([1e-9, 1e-6, 3e-4, 0.02, 0.5, 1.0, 7.0, 1e3])[:, None]
    k2 = np.array([2e-8, 1e-5, 1e-4, 0.3, 0.25, 1.0, 0.1, 4e2])[:, None]
    tail = np.array([1e-300, 1e-100, 1e-30, 1e-12, 1e-6, 2.5e-4, 0.01, 0.1, 0.25, 0.5])
    out = {}
    for method in ("bernstein", "chernoff"):
        for dim in CHAOS_DIMS:
            out[f"chaos_{method}_d{dim}"] = sj.chaos_deviation(k1, k2, dim=dim, alpha_tail=tail, method=method)
        alphas = np.array([1e-12, 1e-6, ALPHA, 0.05, 0.5])[:, None]
        for sub in (None, 1, 4):
            b = sj.grad_l2_bounds(za, zb, 5000, 3000, sigma=SIGMA, alpha=alphas, method=method, subspace_dim=sub)
            out[f"grad_l2_{method}_s{sub}_lower"], out[f"grad_l2_{method}_s{sub}_upper"] = b.lower, b.upper
        out[f"grad_dual_l2_{method}"] = sj.grad_dual_norm_upper(za, zb, 500, 500, sigma=SIGMA, alpha=ALPHA, p=2,
                                                               method=method, subspace_dim=3)
    return out


def _certify_arrays(sj):
    rng = np.random.default_rng(7)
    w1 = jnp.asarray(rng.normal(size=(16, 32)) / 4, jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(32, 5)), jnp.float32)
    params = {"w1": w1, "w2": w2}
    xs = jnp.asarray(rng.uniform(size=(6, 4, 4)), jnp.float32)
    res = sj.certify(_mlp, params, xs, jax.random.key(3), sigma=0.25, n0=64, n=2000, alpha=0.001,
                     batch_size=200, methods=("cohen_l2", "sos_l2", "dipole_l2", "first_order_l1",
                                              "first_order_linf"))
    out = {"certify_prediction": res.prediction, "certify_counts": np.asarray(res.statistics.counts, np.int64)}
    for name, r in res.radii.items():
        out["certify_" + name] = r
    for name, b in res.bounds.items():
        out["certify_bound_" + name] = b
    return out


def _mlp(params, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"])
    return h @ params["w2"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", metavar="NPZ")
    group.add_argument("--compare", metavar="NPZ")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # the certificate functions' float64 mode
    arrays = _arrays()
    if args.save:
        np.savez(args.save, **arrays)
        print(f"saved {len(arrays)} arrays to {args.save}")
        return 0
    before = dict(np.load(args.compare))
    changed = 0
    for name in sorted(set(before) | set(arrays)):
        if name not in arrays or name not in before:
            print(f"{name:36s} only {'before' if name in before else 'after'}")
            changed += 1
            continue
        a, b = arrays[name], before[name]
        if a.shape == b.shape and np.array_equal(a.view(np.uint8), b.astype(a.dtype).view(np.uint8)) \
                and a.dtype == b.dtype:
            print(f"{name:36s} bitwise equal")
            continue
        changed += 1
        af, bf = a.astype(float), b.astype(float)
        rel = np.nanmax(np.abs(af - bf) / np.maximum(np.abs(bf), 1e-300)) if a.shape == b.shape else np.inf
        up = np.nanmax(af - bf) if a.shape == b.shape else np.inf
        print(f"{name:36s} DIFFERS dtype {b.dtype}->{a.dtype} max rel {rel:.3g} max increase {up:.3g}")
    print("all bitwise equal" if not changed else f"{changed} arrays differ")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
