"""float32 gradients of the Theorem 3 radii: nonzero and close to the float64 ones.

In float32 the Theorem 3 solver's convergence tolerance (1e-11) is out of reach, so ``converged``
is usually False; such a radius still gets its implicit-function derivative when its last solve is
accurate to float32 round-off (``slope_ok`` in :mod:`smoothjax.theorem3._radius`), so that
certificate-aware training in float32 gets a signal from the first-order radii. Here a fresh
subprocess (x64 off: smoothjax computes in float32) evaluates radii and gradients on a grid of
q in (0.55, 0.999), m1 = -a M <= 0, m2 = b M in [0, M) (M = phi(Phi^-1(q))), and of
``soft_radius("first_order_l1")``; the pytest process (x64 on) evaluates the float64 ones at the
same (float32-rounded) inputs. Requirements: float32 gradients finite, nonzero wherever the float64
gradient is, within GRAD_RTOL relative (plus GRAD_ATOL of the gradient's norm at that point: the m1
slope where the E[X F] constraint is inactive is round-off); float32 radii not above float64 ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from smoothjax import theorem3
from smoothjax.objectives import soft_radius

# measured worst on these grids: 5.5e-3 (q = 0.999, m2 = 0.99 M, where dR/dq ~ 2e4), 99 % below 1.2e-3;
# soft_radius("first_order_l1"): 3e-5
GRAD_RTOL = 1e-2
GRAD_ATOL = 1e-4
ROUND_ULPS = 0.0  # float32 radii must not exceed float64's (theorem3.F32_ROUND_ULPS margin)
SIGMA = 0.25


def _t3_grid():
    q = np.linspace(0.55, 0.999, 7)
    a = np.array([0.0, 0.3, 0.7, 0.99, 1.1])
    b = np.array([0.0, 0.2, 0.6, 0.9, 0.99])
    Q, A, B = np.meshgrid(q, a, b, indexing="ij")
    M = stats.norm.pdf(stats.norm.ppf(Q))
    return [np.asarray(x.ravel(), np.float32) for x in (Q, -A * M, B * M)]


def _fo_grid():
    p = np.array([0.7, 0.9, 0.99, 0.56, 0.8, 0.95, 0.995])
    frac = np.array([0.05, 0.3, 0.6, 0.9])  # sigma l2 / M
    ratio = np.array([0.1, 0.5, 0.9])  # linf / l2
    P, F, R = np.meshgrid(p, frac, ratio, indexing="ij")
    L2 = F * stats.norm.pdf(stats.norm.ppf(P)) / SIGMA
    return [np.asarray(x.ravel(), np.float32) for x in (P, L2, L2 * R)]


_F32_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from smoothjax import theorem3
from smoothjax.objectives import soft_radius
args = json.loads(sys.argv[1])
q, m1, m2 = [jnp.asarray(x, jnp.float32) for x in args["t3"]]
p, l2, li = [jnp.asarray(x, jnp.float32) for x in args["fo"]]
soft = lambda a, b, c: soft_radius("first_order_l1", a, args["sigma"], grad_l2=b, grad_linf=c)
value_grad = lambda fn, *a: (lambda y, back: (y, jnp.stack(back(jnp.ones_like(y)))))(*jax.vjp(fn, *a))
(R, gR), (S, gS) = jax.jit(lambda t, f: (value_grad(theorem3.directional_radius, *t), value_grad(soft, *f)))(
    (q, m1, m2), (p, l2, li))
out = {"dtype": str(R.dtype), "R": R, "gR": gR, "S": S, "gS": gS}
print(json.dumps({k: v if isinstance(v, str) else np.asarray(v, float).tolist() for k, v in out.items()}))
"""


def _float32_start(t3, fo):
    """Start the float32 subprocess (it runs while the float64 values are computed here)."""
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu")  # x64 off even if the caller exported it
    payload = json.dumps({"t3": [x.tolist() for x in t3], "fo": [x.tolist() for x in fo], "sigma": SIGMA})
    return subprocess.Popen([sys.executable, "-c", _F32_SCRIPT, payload], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _float32_result(proc):
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    out = json.loads(stdout.strip().splitlines()[-1])
    return out["dtype"], {k: np.asarray(v) for k, v in out.items() if k != "dtype"}


def _value_grad(fn, *args):
    """Values and [3, N] elementwise gradients of an elementwise fn of three arrays (one solve)."""
    y, back = jax.vjp(fn, *args)
    return y, jnp.stack(back(jnp.ones_like(y)))


def _check_sound(r32, r64, g64, inputs, name):
    """Sound: the float32 radius is at most the float64 one at the same inputs (ROUND_ULPS = 0 float32
    ulps of the radius and of each input carried through the float64 gradient). Without
    theorem3.F32_ROUND_ULPS the solve's own rounding put it up to 1.2 of those ulps above."""
    assert np.all(np.isfinite(r32)), name
    scale = np.abs(r64) + np.sum(np.abs(g64 * np.stack(inputs).astype(float)), axis=0)
    excess = (r32 - r64) / (np.finfo(np.float32).eps * scale)
    print(f"{name}: float32 radius above float64 by at most {np.max(excess):.2f} ulps")
    assert np.all(excess <= ROUND_ULPS), f"{name}: {np.argwhere(excess > ROUND_ULPS).tolist()}"


def _check_grads(g32, g64, name):
    """[3, N] float32 gradients against float64 ones: finite, nonzero where float64's is, close."""
    assert np.all(np.isfinite(g32)), name
    missing = (g32 == 0) & (g64 != 0)
    assert not missing.any(), f"{name}: zero float32 gradient at {np.argwhere(missing).tolist()}"
    norm = np.sqrt(np.sum(g64 ** 2, axis=0))
    err = np.abs(g32 - g64)
    bound = GRAD_RTOL * np.abs(g64) + GRAD_ATOL * norm
    worst = np.max(err / np.maximum(np.abs(g64), GRAD_ATOL * norm))
    print(f"{name}: worst relative gradient error {worst:.2e}")
    assert np.all(err <= bound), f"{name}: {np.argwhere(err > bound).tolist()}"


def test_float32_radius_gradients_match_float64():
    t3, fo = _t3_grid(), _fo_grid()
    proc = _float32_start(t3, fo)
    with jax.enable_x64(True):

        def soft(a, b, c):
            return soft_radius("first_order_l1", a, SIGMA, grad_l2=b, grad_linf=c)

        both = jax.jit(lambda t, f: (_value_grad(theorem3.directional_radius, *t), _value_grad(soft, *f)))
        (R64, g64), (S64, gS64) = jax.tree_util.tree_map(
            np.asarray, both(*[[jnp.asarray(x, jnp.float64) for x in a] for a in (t3, fo)]))
    dtype, f32 = _float32_result(proc)
    assert dtype == "float32"
    _check_sound(f32["R"], R64, g64, t3, "directional_radius")
    _check_sound(f32["S"], S64, gS64, fo, "soft_radius first_order_l1")
    assert np.all(g64[0] > 0) and np.all(gS64[0] > 0)  # the grid has a slope everywhere
    _check_grads(f32["gR"], g64, "directional_radius")
    _check_grads(f32["gS"], gS64, "soft_radius first_order_l1")
