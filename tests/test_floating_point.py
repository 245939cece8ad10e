"""Floating point: radii in float64 and float32 against an mpmath reference.

References are computed with mpmath at 30 significant digits from the defining equations
(independent of smoothjax):

* Cohen: ``sigma Phi^-1(p)``;
* SoS (second paper Thm 1): q = 1 - p, ``gamma = min(sigma G, phi(Phi^-1(p)))``, a in [0, q/2] with
  ``phi(Phi^-1(q - a)) - phi(Phi^-1(a)) = gamma``, then r with
  ``Phi(Phi^-1(1 - q + a) - r) - Phi(Phi^-1(a) - r) = 1/2``;
* dipole (second paper Thm 3): ``Phi(w + r) + Phi(w - r) - Phi(c - r) = 1/2``,
  ``w = Phi^-1((1 - cs)/2)``, ``c = Phi^-1(cn)``;
* Clopper-Pearson lower: the x with ``I_x(k, n - k + 1) = alpha`` (mpmath ``betainc``).

Requirements: the float64 radius never exceeds the reference by more than 1e-12 relative (and is
not more than 1e-9 relative below it: a sound but useless answer would also pass the first test).
The float32 path (a fresh subprocess: x64 is off there, so smoothjax computes in float32; reference
evaluated at the exact float32 inputs) is either sound the same way or refuses (NaN). Near p = 1
(k = n) radii are finite and sound. The worst deviations are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from scipy import optimize, special, stats

import smoothjax as sj
from smoothjax._roots import bisect, bisect_bracket

mp.mp.dps = 30
REL64 = 1e-12


def mp_ndtri(x):
    """Phi^-1(x) at full mpmath precision, with relative accuracy in both tails."""
    x = mp.mpf(x)
    if x == 0:
        return -mp.inf
    if x == 1:
        return mp.inf
    if x > 0.5:
        return -mp_ndtri(1 - x)
    start = special.ndtri(float(x)) if float(x) > 0 else -38.0
    return mp.findroot(lambda z: mp.ncdf(z) - x, mp.mpf(start), tol=mp.mpf(10) ** (-27))


def ref_cohen(p, sigma):
    p = mp.mpf(p)
    return mp.mpf(0) if p <= 0.5 else mp.mpf(sigma) * mp_ndtri(p)


def ref_sos(p, grad, sigma):
    p = mp.mpf(p)
    if p <= 0.5:
        return mp.mpf(0)
    q = 1 - p
    gmax = mp.npdf(mp_ndtri(p))
    gamma = min(mp.mpf(sigma) * mp.mpf(grad), gmax)
    h = lambda a: mp.npdf(mp_ndtri(q - a)) - (mp.npdf(mp_ndtri(a)) if a > 0 else 0) - gamma  # noqa: E731
    if h(mp.mpf(0)) <= 0:
        a = mp.mpf(0)
    else:
        qf, gf = float(q), float(gamma)
        hf = lambda a: stats.norm.pdf(special.ndtri(qf - a)) - stats.norm.pdf(special.ndtri(a)) - gf  # noqa: E731
        lo, hi = 0.0, qf / 2
        if hf(hi) < 0 < hf(max(qf * 1e-300, 1e-300)):
            a0 = optimize.brentq(hf, max(qf * 1e-300, 1e-300), hi, xtol=1e-300, rtol=1e-14)
        else:
            a0 = qf / 4
        try:
            a = mp.findroot(h, mp.mpf(a0), tol=mp.mpf(10) ** (-25))
            assert 0 < a <= q / 2
        except (ValueError, ZeroDivisionError, AssertionError):
            lo, hi = mp.mpf(0), q / 2
            for _ in range(120):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if h(mid) > 0 else (lo, mid)
            a = (lo + hi) / 2
    ua = mp_ndtri(a) if a > 0 else -mp.inf
    ub = mp_ndtri(1 - q + a)
    f = lambda r: mp.ncdf(ub - r) - (mp.ncdf(ua - r) if a > 0 else 0) - mp.mpf(1) / 2  # noqa: E731
    r0 = mp_ndtri(p)
    if a == 0:
        return mp.mpf(sigma) * r0
    return mp.mpf(sigma) * mp.findroot(f, (r0, max(ub, r0) + 1), solver="anderson", tol=mp.mpf(10) ** (-25))


def ref_dipole(cs, cn, sigma):
    cs, cn = mp.mpf(cs), mp.mpf(cn)
    if cs + cn <= 0.5:
        return mp.mpf(0)
    w = mp_ndtri((1 - cs) / 2)
    c = mp_ndtri(cn) if cn > 0 else -mp.inf
    f = lambda r: mp.ncdf(w + r) + mp.ncdf(w - r) - (mp.ncdf(c - r) if cn > 0 else 0) - mp.mpf(1) / 2  # noqa: E731
    lo = mp_ndtri(cs + cn)  # Cohen for the total mass: f(lo) <= 0
    hi = max(-w, c if cn > 0 else 0) + 1
    if f(lo) >= 0:
        return mp.mpf(sigma) * lo
    try:
        return mp.mpf(sigma) * mp.findroot(f, (lo, hi), solver="anderson", tol=mp.mpf(10) ** (-25))
    except (ValueError, ZeroDivisionError):
        for _ in range(110):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
        return mp.mpf(sigma) * (lo + hi) / 2


def ref_cp_lower(k, n, alpha):
    k, n, alpha = int(k), int(n), mp.mpf(alpha)
    if k == 0:
        return mp.mpf(0)
    if k == n:
        return alpha ** (mp.mpf(1) / n)
    f = lambda x: mp.betainc(k, n - k + 1, 0, x, regularized=True) - alpha  # noqa: E731
    lo, hi = mp.mpf(0), mp.mpf(1)
    x0 = special.betaincinv(k, n - k + 1, float(alpha))
    try:
        return mp.findroot(f, mp.mpf(x0), tol=mp.mpf(10) ** (-25))
    except (ValueError, ZeroDivisionError):
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
        return (lo + hi) / 2


def _rel_excess(value, ref):
    """(value - ref) / ref (positive = unsound), 0 when both are 0."""
    ref = mp.mpf(ref)
    if ref == 0:
        return 0.0 if value == 0 else math.inf
    return float((mp.mpf(float(value)) - ref) / ref)


# ----------------------------------------------------------------------------- grids

def _p_grid(num):
    """p from 0.5001 to 1 - 1e-15 (the region p -> 1/2 is tested separately: NEAR_HALF)."""
    tail = 1 - np.logspace(-1, -15, num // 2)  # towards 1
    body = np.linspace(0.5001, 0.95, num - num // 2)
    return np.unique(np.concatenate([body, tail, [0.5, 0.4, np.nextafter(1.0, 0.0)]]))


NEAR_HALF = [0.5 + 1e-15, 0.5 + 1e-12, 0.5 + 1e-9, 0.5 + 1e-7, 0.50001]


def _sos_grid(num_p, num_g):
    ps, gs = [], []
    for p in _p_grid(num_p):
        if p <= 0.5:
            continue
        gmax = float(mp.npdf(mp_ndtri(p)))
        for frac in np.concatenate([[0.0, 1e-8], np.linspace(0.05, 1.0, num_g - 3), [1.3]]):
            ps.append(p)
            gs.append(frac * gmax)
    return np.array(ps), np.array(gs)


def _dipole_grid(num):
    cs_l, cn_l = [], []
    for cs in np.concatenate([np.linspace(0.0, 0.98, num), 1 - np.logspace(-3, -13, 4)]):
        for frac in (0.0, 0.2, 0.5, 0.9, 1.0):
            cn = frac * (1 - cs) / 2  # feasible: P[only +] = P[only -] <= (1 - cs) / 2
            if cs + cn > 0.5:
                cs_l.append(cs)
                cn_l.append(cn)
    return np.array(cs_l), np.array(cn_l)


def _check64(values, refs, name, lower_rel=1e-9):
    worst_up, worst_down = -math.inf, 0.0
    for v, ref in zip(values, refs):
        assert np.isfinite(v), (name, v, ref)
        ex = _rel_excess(v, ref)
        worst_up = max(worst_up, ex)
        worst_down = min(worst_down, ex)
    print(f"\n[fp64] {name}: {len(refs)} points, max (ours - ref)/ref = {worst_up:.3e}, "
          f"min = {worst_down:.3e}")
    assert worst_up <= REL64, f"{name}: float64 radius exceeds the reference by {worst_up:.3e} relative"
    assert worst_down >= -lower_rel, f"{name}: float64 radius {worst_down:.3e} below the reference"
    return worst_up


def _cases(quick):
    if quick:
        return dict(p=_p_grid(24), sos=_sos_grid(8, 6), dipole=_dipole_grid(5))
    return dict(p=_p_grid(400), sos=_sos_grid(60, 20), dipole=_dipole_grid(40))


def _run_float64(quick):
    c = _cases(quick)
    sigma = 0.37
    p = c["p"]
    _check64(np.asarray(sj.cohen_radius(p, sigma)), [ref_cohen(x, sigma) for x in p], "cohen_radius")
    ps, gs = c["sos"]
    _check64(np.asarray(sj.sos_radius(ps, gs / sigma, sigma)), [ref_sos(a, b / sigma, sigma) for a, b in zip(ps, gs)],
             "sos_radius")
    cs, cn = c["dipole"]
    _check64(np.asarray(sj.dipole_radius(cs, cn, sigma)), [ref_dipole(a, b, sigma) for a, b in zip(cs, cn)],
             "dipole_radius")


def test_float64_radii_against_mpmath_quick():
    _run_float64(quick=True)


def test_float64_cohen_near_half():
    """p -> 1/2: Cohen's radius (tiny) is still within 1e-12 relative of the reference."""
    p = np.array(NEAR_HALF)
    _check64(np.asarray(sj.cohen_radius(p, 0.37)), [ref_cohen(x, 0.37) for x in p], "cohen_radius near 1/2")


def test_float64_sos_near_half():
    sigma = 0.37
    ps, gs = [], []
    for p in NEAR_HALF:
        for frac in (0.0, 0.05, 0.3, 0.9):
            ps.append(p)
            gs.append(frac * float(mp.npdf(mp_ndtri(p))) / sigma)
    _check64(np.asarray(sj.sos_radius(np.array(ps), np.array(gs), sigma)),
             [ref_sos(a, b, sigma) for a, b in zip(ps, gs)], "sos_radius near 1/2", lower_rel=1.0)


def test_float64_dipole_near_half():
    sigma = 0.37
    cs = [0.0, 0.2, 0.45, 0.5]
    pts = [(c, p - c) for p in NEAR_HALF for c in cs if 0 <= p - c <= (1 - c) / 2]
    _check64(np.asarray(sj.dipole_radius(np.array([a for a, _ in pts]), np.array([b for _, b in pts]), sigma)),
             [ref_dipole(a, b, sigma) for a, b in pts], "dipole_radius near 1/2", lower_rel=1.0)


@pytest.mark.slow
def test_float64_radii_against_mpmath_dense():
    _run_float64(quick=False)


CP_POINTS = [(k, n) for n in (1, 2, 10, 100, 1000) for k in sorted({0, 1, n // 3, n // 2, (3 * n) // 4, n - 1, n})
             if 0 <= k <= n] + [(9_990, 10_000), (10_000, 10_000), (999_000, 1_000_000), (10**6, 10**6)]


def test_clopper_pearson_and_cohen_from_counts_against_mpmath():
    """CP lower (float64) never above the exact beta quantile; Cohen's radius from it never above the reference."""
    alpha = 0.001
    ks = np.array([k for k, _ in CP_POINTS])
    ns = np.array([n for _, n in CP_POINTS])
    cp = np.asarray(sj.clopper_pearson_lower(ks, ns, alpha))
    refs = [ref_cp_lower(k, n, alpha) for k, n in CP_POINTS]
    _check64(cp, refs, "clopper_pearson_lower", lower_rel=1e-10)
    r = np.asarray(sj.cohen_radius(cp, 1.0))
    _check64(r, [ref_cohen(x, 1.0) for x in refs], "cohen_radius(clopper_pearson_lower(k, n))", lower_rel=1e-6)


@pytest.mark.parametrize("n", [10, 1000, 10**6, 10**9, 2**33])
def test_near_one_counts_k_equals_n(n):
    """k = n: p_lower = alpha^(1/n) < 1, so every radius is finite, positive and sound."""
    alpha = 0.001
    p = float(sj.clopper_pearson_lower(n, n, alpha))
    ref_p = ref_cp_lower(n, n, alpha)
    assert p < 1.0 and p <= ref_p
    for name, val, ref in (
        ("cohen", float(sj.cohen_radius(p, 0.5)), ref_cohen(p, 0.5)),
        ("sos", float(sj.sos_radius(p, 0.0, 0.5)), ref_sos(p, 0.0, 0.5)),
        ("dipole", float(sj.dipole_radius(p, 0.0, 0.5)), ref_dipole(p, 0.0, 0.5)),
    ):
        assert math.isfinite(val) and val > 0, (name, val)
        assert _rel_excess(val, ref) <= REL64, (name, val, ref)


@pytest.mark.parametrize("p", [1 - 1e-12, 1 - 1e-15, float(np.nextafter(1.0, 0.0))])
def test_near_one_probability_finite_and_sound(p):
    for name, val, ref in (
        ("cohen", float(sj.cohen_radius(p, 1.0)), ref_cohen(p, 1.0)),
        ("sos", float(sj.sos_radius(p, 1e-3, 1.0)), ref_sos(p, 1e-3, 1.0)),
    ):
        assert math.isfinite(val), (name, p, val)
        assert _rel_excess(val, ref) <= REL64, (name, p, val, ref)


# ----------------------------------------------------------------------------- float32 path

_F32_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import jax
    import smoothjax as sj
    assert not jax.config.jax_enable_x64
    d = json.load(sys.stdin)
    f32 = lambda k: np.asarray(d[k], np.float32)
    out = {}
    out["cohen"] = np.asarray(sj.cohen_radius(f32("p"), np.float32(d["sigma"]))).astype(float).tolist()
    out["sos"] = np.asarray(sj.sos_radius(f32("sos_p"), f32("sos_g"), np.float32(d["sigma"]))).astype(float).tolist()
    out["dipole"] = np.asarray(sj.dipole_radius(f32("cs"), f32("cn"), np.float32(d["sigma"]))).astype(float).tolist()
    out["cp"] = np.asarray(sj.clopper_pearson_lower(np.asarray(d["k"], np.int32), np.asarray(d["n"], np.int32),
                                                     np.float32(d["alpha"]))).astype(float).tolist()
    out["dtype"] = str(sj.cohen_radius(np.float32(0.9), np.float32(1.0)).dtype)
    print(json.dumps(out))
    """
)


def _run_float32(quick):
    c = _cases(quick)
    sigma = np.float32(0.37)
    f32 = lambda a: np.asarray(a, np.float32).astype(np.float64)  # noqa: E731  the exact float32 inputs
    p = f32(c["p"])
    p = p[p < 1.0]
    sos_p, sos_g = (f32(a) for a in c["sos"])
    keep = sos_p < 1.0
    sos_p, sos_g = sos_p[keep], sos_g[keep]
    cs, cn = (f32(a) for a in c["dipole"])
    keep = (cs < 1.0) & (cs + cn <= 1.0)
    cs, cn = cs[keep], cn[keep]
    cp_pts = [(k, n) for k, n in CP_POINTS if n < 2**24]
    payload = dict(sigma=float(sigma), p=p.tolist(), sos_p=sos_p.tolist(), sos_g=(sos_g / float(sigma)).tolist(),
                   cs=cs.tolist(), cn=cn.tolist(), k=[k for k, _ in cp_pts], n=[n for _, n in cp_pts], alpha=0.001)
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu")  # x64 off even if the caller exported it
    proc = subprocess.run([sys.executable, "-c", _F32_SCRIPT], input=json.dumps(payload), capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dtype"] == "float32"
    s = float(sigma)
    g32 = np.asarray(sos_g / s, np.float32).astype(np.float64)  # the exact float32 gradient passed
    checks = {
        "cohen_radius": (out["cohen"], [ref_cohen(x, s) for x in p], list(p)),
        "sos_radius": (out["sos"], [ref_sos(a, b, s) for a, b in zip(sos_p, g32)], list(zip(sos_p, g32))),
        "dipole_radius": (out["dipole"], [ref_dipole(a, b, s) for a, b in zip(cs, cn)], list(zip(cs, cn))),
        "clopper_pearson_lower": (out["cp"], [ref_cp_lower(k, n, float(np.float32(0.001))) for k, n in cp_pts],
                                  cp_pts),
    }
    problems = {name: [] for name in checks}
    for name, (vals, refs, inputs) in checks.items():
        worst, worst_low, refused = -math.inf, 0.0, 0
        for v, ref, inp in zip(vals, refs, inputs):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                refused += 1
                continue
            ex = _rel_excess(v, ref)
            if ex > REL64:
                problems[name].append(f"{name}{inp} (sigma={s}): float32 value {v!r} exceeds reference "
                                      f"{float(ref)!r} (rel {ex:.3e})")
            worst = max(worst, ex)
            worst_low = min(worst_low, ex)
        print(f"\n[fp32] {name}: {len(refs)} points, refused {refused}, max (ours - ref)/ref = {worst:.3e}, "
              f"min = {worst_low:.3e}")
    return problems


_F32_CACHE = {}


def _float32_problems(quick):
    if quick not in _F32_CACHE:
        _F32_CACHE[quick] = _run_float32(quick)
    return _F32_CACHE[quick]


def _assert_no_problems(problems, message=""):
    head = message + "\n" if message else ""
    assert not problems, head + "\n".join(problems[:20]) + f"\n({len(problems)} unsound float32 values)"


F32_SOS_MESSAGE = (
    "sos_radius in float32 must not exceed the exact radius of its float32 inputs (or must refuse with NaN); "
    "these points are above it:")


@pytest.mark.parametrize("name", ["cohen_radius", "dipole_radius", "clopper_pearson_lower"])
def test_float32_path_sound_or_refuses_quick(name):
    _assert_no_problems(_float32_problems(True)[name])


def test_float32_sos_sound_or_refuses_quick():
    _assert_no_problems(_float32_problems(True)["sos_radius"], F32_SOS_MESSAGE)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cohen_radius", "dipole_radius", "clopper_pearson_lower"])
def test_float32_path_sound_or_refuses_dense(name):
    _assert_no_problems(_float32_problems(False)[name])


@pytest.mark.slow
def test_float32_sos_sound_or_refuses_dense():
    _assert_no_problems(_float32_problems(False)["sos_radius"], F32_SOS_MESSAGE)


# ----------------------------------------------------------------------------- bisection on the float order

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_bisect_bracket_closes_to_adjacent_floats(dtype):
    """Both ends of the closed bracket of ``x >= t`` are the adjacent floats around t, under jit.

    The bracket [-2, 2] spans more than half the integer range of the float order (its width
    overflows a signed integer); the thresholds run from -1.5 to the ends of [0, 1] through tiny
    normal numbers of either sign (not subnormals: XLA on CPU flushes them to zero, so a predicate
    there is not monotone in the float order).
    """
    fi = np.finfo(dtype)
    t = np.array([-1.5, -4 * fi.tiny, 4 * fi.tiny, 1e-30, 0.3, 1 - fi.epsneg, 1.0], dtype)
    lo0, hi0 = np.full_like(t, -2.0), np.full_like(t, 2.0)
    lo, hi = jax.jit(lambda t, lo, hi: bisect_bracket(lambda x: x >= t, lo, hi))(t, lo0, hi0)
    lo, hi = np.asarray(lo), np.asarray(hi)
    assert lo.dtype == hi.dtype == dtype
    np.testing.assert_array_equal(hi, t)
    np.testing.assert_array_equal(lo, np.nextafter(t, dtype(-np.inf)))
    # bisect is the lower end of the bracket of "not fn <= 0"
    low = jax.jit(lambda t, lo, hi: bisect(lambda x: jnp.where(x >= t, 1.0, 0.0), lo, hi))(t, lo0, hi0)
    np.testing.assert_array_equal(np.asarray(low), lo)


def test_bisect_bracket_ends_keep_their_invariant():
    """An end the predicate never reaches stays put; an all-False (NaN) predicate closes below hi."""
    t = np.array([np.nan, 3.0, -3.0, 0.5])
    lo, hi = bisect_bracket(lambda x: x >= t, np.zeros(4), np.ones(4))
    np.testing.assert_array_equal(np.asarray(hi), [1.0, 1.0, 2.0**-1074, 0.5])
    np.testing.assert_array_equal(np.asarray(lo), [1.0 - 2.0**-53, 1.0 - 2.0**-53, 0.0, 0.5 - 2.0**-54])
    # bisect counts a NaN of fn as above the root: the lower end stays at the initial lo
    np.testing.assert_array_equal(np.asarray(bisect(lambda x: x - t, np.zeros(4), np.ones(4))),
                                  [0.0, 1.0 - 2.0**-53, 0.0, 0.5])
