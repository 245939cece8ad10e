"""Writes the smoothjax notebooks (``python notebooks/build_notebooks.py``); edit the cells here.

Each notebook saves its figures as PNG into ``$SMOOTHJAX_FIGURES`` (default ``notebooks/figures``)
and runs top to bottom in well under 2 minutes on 2 CPU cores (``tests/test_notebooks.py``
executes them with nbclient).
"""

from __future__ import annotations

import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent

SETUP = '''\
import os, pathlib, time
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)  # the figures compare certificate math with float64 references
import smoothjax as sj
from smoothjax import theorem3, certificates, pipeline

FIG_DIR = pathlib.Path(os.environ.get("SMOOTHJAX_FIGURES", "figures"))
FIG_DIR.mkdir(parents=True, exist_ok=True)
def save(fig, name):
    path = FIG_DIR / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print("saved", path)
'''


def notebook(cells, name):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [new_markdown_cell(c[3:]) if c.startswith("md:") else new_code_cell(c) for c in cells]
    nbformat.write(nb, HERE / name)


# --------------------------------------------------------------------------------------------
HIGHER_ORDER_FIG1 = [
    """md:# First paper, Figure 1: slices of the certified safety region (zeroth vs first order)

Mohapatra et al., *Higher-Order Certification for Randomized Smoothing* (NeurIPS 2020), Figure 1:
a longitudinal slice of the certified safety region around x for several values of
y0 = g(x) and of the normalised gradient magnitude ||y1||_2 / max_{g(x)=y0} ||grad g(x)||_2, with
the gradient y1 pointing along the **negative x axis**. Green: the region certified from y0 alone
(Cohen et al.'s ball of radius Phi^-1(y0), in sigma units); blue: the region certified with y0 and
y1 (Theorem 3). The dashed line is the half-space the region grows to as the gradient reaches its
maximum (a linear base classifier).

Along a unit direction v at angle theta from y1, Theorem 3 takes (dimensionless, sigma = 1)
q = y0, m1 = sigma v.y1 = G cos(theta), m2 = sigma ||y1 - (v.y1) v|| = G |sin(theta)|, with
G = nu * phi(Phi^-1(y0)) for normalised gradient nu; the boundary point is R_v(q, m1, m2) v, where
R_v = `theorem3.directional_radius(q, m1, m2)`.""",
    SETUP,
    '''from jax.scipy.stats import norm
y0s = [0.6, 0.75, 0.9]
nus = [0.0, 0.5, 0.9, 0.99]
phis = np.linspace(0.0, np.pi, 91)            # polar angle of v from the +x axis (upper half; mirror below)
theta = np.pi - phis                          # angle between v and y1 (y1 points along -x)
Q, NU, TH = np.meshgrid(y0s, nus, theta, indexing="ij")
G = NU * np.asarray(norm.pdf(norm.ppf(Q)))     # sigma ||grad g|| (dimensionless)
m1, m2 = G * np.cos(TH), G * np.abs(np.sin(TH))
start = time.perf_counter()
R = np.asarray(jax.jit(theorem3.directional_radius)(jnp.asarray(Q), jnp.asarray(m1), jnp.asarray(m2)))
print(f"{R.size} directional radii in {time.perf_counter() - start:.1f} s")
cohen = np.asarray(norm.ppf(np.asarray(y0s)))
np.savez(FIG_DIR / "higher_order_fig1_radii.npz", y0s=y0s, nus=nus, phis=phis, R=R)  # checked by tests/test_notebooks.py
''',  # noqa: E501  (cell code, as in the committed notebooks)
    '''# Properties the paper lists (i-iii), checked on the computed radii:
for i, q in enumerate(y0s):
    for j, nu in enumerate(nus):
        r = R[i, j]
        finite = np.isfinite(r)
        # the first-order region contains the zeroth-order ball (a tiny solver slack allowed)
        assert np.all(r[finite] >= cohen[i] - 1e-6), (q, nu)
        # Proposition 2: R_v is non-increasing in the angle between v and y1. (A violation means
        # directional_radius returned a sound but loose radius: an unconverged solve.)
        rise = np.diff(r[::-1]) > 1e-6 + 1e-6 * np.abs(r[::-1][1:])   # (nu < 1: every r is finite)
        assert not np.any(rise), f"y0 = {q}, nu = {nu}: R_v rises with the angle at {np.degrees(np.pi - phis[::-1][1:][rise]).round()} deg"
# Zero gradient is not "no information": m1 = m2 = 0 still constrains the worst case, which is the
# second paper's "sandwich" (Figure 3c), the slab |z_1| <= a with 2 Phi(a) - 1 = y0, the same in every
# direction. Its radius solves Phi(a - r) - Phi(-a - r) = 1/2 (closed form + scipy root, independent of
# smoothjax), slightly above Cohen's Phi^-1(y0).
from scipy.optimize import brentq
from scipy.stats import norm as snorm
def slab_radius(q):
    a = snorm.ppf((1 + q) / 2)
    return brentq(lambda t: snorm.cdf(a - t) - snorm.cdf(-a - t) - 0.5, 0.0, 10.0, xtol=1e-14)
slab = np.array([slab_radius(q) for q in y0s])
print("R at nu = 0, directions 0/45/90 deg:", np.round(R[:, 0, [0, 45, 90]], 6))
print("slab closed form:                   ", np.round(slab, 6), "  Cohen:", np.round(cohen, 6))
assert np.max(np.abs(R[:, 0, :] - slab[:, None])) < 1e-6
# Proposition 1: the region is convex. Turning direction of the boundary polygon (upper half plus
# mirror) at every vertex; negative cross products would be dents.
for i, q in enumerate(y0s):
    for j, nu in enumerate(nus):
        r = np.minimum(R[i, j], 50.0)
        px = np.concatenate([r * np.cos(phis), (r * np.cos(phis))[::-1][1:-1]])
        py = np.concatenate([r * np.sin(phis), -(r * np.sin(phis))[::-1][1:-1]])
        e1 = np.stack([np.roll(px, -1) - px, np.roll(py, -1) - py], 1)
        e0 = np.roll(e1, 1, axis=0)
        cross = e0[:, 0] * e1[:, 1] - e0[:, 1] * e1[:, 0]
        dents = int(np.sum(cross < -1e-6 * np.max(np.abs(cross))))
        if dents:
            print(f"y0 = {q}, nu = {nu}: {dents} non-convex vertices of the sampled boundary")
print("R toward +x (away from y1):", np.round(R[:, :, 0], 3))
''',  # noqa: E501  (cell code, as in the committed notebooks)
    '''fig, axes = plt.subplots(len(y0s), len(nus), figsize=(3.0 * len(nus), 3.0 * len(y0s)))
lim = 4.0
for i, q in enumerate(y0s):
    for j, nu in enumerate(nus):
        ax = axes[i, j]
        r = np.minimum(R[i, j], 50.0)          # infinite radii (half-space) drawn as far away
        xs = np.concatenate([r * np.cos(phis), (r * np.cos(phis))[::-1]])
        ys = np.concatenate([r * np.sin(phis), -(r * np.sin(phis))[::-1]])
        ax.fill(xs, ys, color="tab:blue", alpha=0.45, lw=0, label="zeroth + first order")
        ax.add_patch(plt.Circle((0, 0), cohen[i], color="tab:green", alpha=0.8, lw=0, label="zeroth order"))
        ax.axvline(cohen[i], color="k", ls="--", lw=0.8)
        ax.annotate("", xy=(-0.9, 0), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="k"))
        ax.plot([0], [0], "k.", ms=4)
        ax.set_xlim(-lim, lim); ax.set_ylim(-lim, lim); ax.set_aspect("equal")
        ax.set_title(f"y0 = {q}, normalised |y1| = {nu}", fontsize=9)
        ax.tick_params(labelsize=7)
axes[0, 0].legend(fontsize=7, loc="lower left")
fig.suptitle("Certified safety region slices (sigma units); gradient y1 along -x (arrow)")
fig.tight_layout()
save(fig, "higher_order_fig1_safety_regions")
''',
    '''# Relative area of the slice, first order / zeroth order (property i: largest gain at low y0)
def slice_area(r):
    r = np.minimum(r, 50.0)
    return 2 * 0.5 * np.trapezoid(r ** 2, phis)
for i, q in enumerate(y0s):
    print(f"y0 = {q}: area ratio", [round(float(slice_area(R[i, j]) / (np.pi * cohen[i] ** 2)), 2) for j in range(len(nus))])
''',  # noqa: E501  (cell code, as in the committed notebooks)
]

# --------------------------------------------------------------------------------------------
SECOND_ORDER_FIG1 = [
    """md:# Second paper, Figure 1: lower bound vs distance, and certified radius vs p and gradient norm

Levine et al., *Tight Second-Order Certificates for Randomized Smoothing*, Figure 1.

(a) The tight lower bound on p_a(x') as a function of ||x' - x||_2 for p_a(x) = 0.8, sigma = 1,
plotted as Phi^-1(p_a(x')) (0 is the decision boundary): without gradient information (Cohen:
Phi^-1(0.8) - r) and with the information ||grad p_a(x)||_2 = 0. We compute the latter with the
first paper's Theorem 3 (`theorem3.theorem3_p_lower(r, q, m1=0, m2=0)`) and check it against the
worst case the second paper describes (Figure 3c): the slab |z_1| <= a with 2 Phi(a) - 1 = 0.8,
whose smoothed value at distance r is Phi(a - r) - Phi(-a - r), a closed form independent of our code.

(b) Certified radius (second paper Theorem 1, `certificates.sos_radius`) against the gradient norm for several
p_a(x); dashed lines: Cohen's radius from p_a(x) alone. Each curve ends at the largest possible
gradient phi(Phi^-1(p))/sigma, where it meets its dashed line.""",
    SETUP,
    '''from scipy.stats import norm
p, sigma = 0.8, 1.0
r = np.linspace(0.0, 3.0, 61)
start = time.perf_counter()
lower_grad0 = np.asarray(jax.jit(theorem3.theorem3_p_lower)(jnp.asarray(r), p, 0.0, 0.0))
print(f"Theorem 3 bound at {r.size} distances in {time.perf_counter() - start:.1f} s")
a = norm.ppf((1 + p) / 2)
slab = norm.cdf(a - r) - norm.cdf(-a - r)
cohen_curve = norm.ppf(p) - r
print("max |Theorem 3 - slab closed form| =", np.max(np.abs(lower_grad0 - slab)))
assert np.max(np.abs(lower_grad0 - slab)) < 1e-6
radius_grad0 = float(certificates.sos_radius(p, 0.0, sigma))
from scipy.optimize import brentq
print(f"SoS radius with zero gradient (second paper Thm 1): {radius_grad0:.4f}")
slab_radius = brentq(lambda t: norm.cdf(a - t) - norm.cdf(-a - t) - 0.5, 0, 10)
print(f"slab worst case crosses 1/2 at {slab_radius:.4f}; Cohen radius {norm.ppf(p):.4f}")
assert abs(radius_grad0 - slab_radius) < 1e-4
''',
    '''fig, ax = plt.subplots(figsize=(5, 3.6))
ax.plot(r, cohen_curve, color="tab:red", label="no gradient information (Cohen)")
ax.plot(r, norm.ppf(lower_grad0), color="tab:blue", label=r"$\\|\\nabla p_a(x)\\|_2 = 0$ (Theorem 3)")
ax.plot(r[::5], norm.ppf(slab[::5]), "k.", ms=5, label="slab worst case (closed form)")
ax.axhline(0.0, color="k", lw=0.8)
ax.set_xlabel(r"$\\|x' - x\\|_2$"); ax.set_ylabel(r"$\\Phi^{-1}$(lower bound of $p_a(x')$)")
ax.set_title(r"(a) $p_a(x) = 0.8$, $\\sigma = 1$")
ax.legend(fontsize=8)
fig.tight_layout()
save(fig, "second_order_fig1a_lower_bound")
''',
    '''ps = [0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
fig, ax = plt.subplots(figsize=(5.5, 3.8))
curves = {}
for k, pk in enumerate(ps):
    gmax = float(certificates.max_grad_norm(pk, sigma))
    g = np.linspace(0.0, gmax, 101)
    rad = np.asarray(certificates.sos_radius(jnp.full_like(g, pk), jnp.asarray(g), sigma))
    curves[pk] = (g, rad)
    c = f"C{k}"
    ax.plot(g, rad, color=c, label=f"p = {pk}")
    ax.axhline(norm.ppf(pk) * sigma, color=c, ls="--", lw=0.9)
    assert np.all(rad >= norm.ppf(pk) * sigma - 1e-6)            # never below Cohen
    assert np.all(np.diff(rad) <= 1e-9)                           # decreasing in the gradient norm
    assert abs(rad[-1] - norm.ppf(pk) * sigma) < 1e-3             # equal to Cohen at the largest gradient
ax.set_xlabel(r"$\\|\\nabla p_a(x)\\|_2$"); ax.set_ylabel("certified radius")
ax.set_title(r"(b) second-order (solid) vs first-order (dashed), $\\sigma = 1$")
ax.legend(fontsize=8, ncol=2)
fig.tight_layout()
save(fig, "second_order_fig1b_radius_vs_gradient")
# the plotted numbers, checked against closed forms by tests/test_notebooks.py
np.savez(FIG_DIR / "second_order_fig1.npz", r=r, lower_grad0=lower_grad0, p=p, ps=ps,
         grad=np.stack([curves[pk][0] for pk in ps]), radius=np.stack([curves[pk][1] for pk in ps]))
''',
    '''# The text: "at p_a(x) = 0.6, if the gradient norm is known to be zero, the certificate is slightly below
# the certificate for p_a(x) = 0.8 with no gradient information". The tight value (slab worst case,
# checked in closed form above for p = 0.8) sits between Cohen(0.6) and Cohen(0.8):
sos06 = float(certificates.sos_radius(0.6, 0.0, 1.0))
a06 = norm.ppf(0.8)
slab06 = brentq(lambda t: norm.cdf(a06 - t) - norm.cdf(-a06 - t) - 0.5, 0, 10)
print(f"SoS(p=0.6, grad=0) = {sos06:.4f} (slab closed form {slab06:.4f});  Cohen(p=0.8) = {norm.ppf(0.8):.4f};"
      f"  Cohen(p=0.6) = {norm.ppf(0.6):.4f}")
assert abs(sos06 - slab06) < 1e-4
assert norm.ppf(0.6) < sos06 < norm.ppf(0.8)
# Two papers, one certificate: the first paper's worst-direction radius (v = -grad, m1 = -G, m2 = 0)
# equals the second paper's SoS radius (both are tight given p and ||grad||).
P, FRAC = np.meshgrid([0.6, 0.8, 0.95], [0.0, 0.5, 0.9], indexing="ij")
G = FRAC * norm.pdf(norm.ppf(P))
rv = np.asarray(jax.jit(theorem3.directional_radius)(jnp.asarray(P), jnp.asarray(-G), jnp.zeros_like(jnp.asarray(G))))
rs = np.asarray(certificates.sos_radius(jnp.asarray(P), jnp.asarray(G), 1.0))
for pk, g, a_, b_ in zip(P.ravel(), G.ravel(), rv.ravel(), rs.ravel()):
    print(f"p={pk} |grad|={g:.3f}: Theorem 3 worst direction {a_:.5f}, SoS {b_:.5f}")
assert np.max(np.abs(rv - rs)) < 1e-3
''',
]

# --------------------------------------------------------------------------------------------
SWISS_ROLL = [
    """md:# Swiss Roll: second-order vs standard Gaussian smoothing certificates (second paper, Figure 2)

In the spirit of Levine et al.'s Figure 2: a 2-D, non-linearly separable Swiss Roll
(`smoothjax.app.datasets.make_swiss_roll`; the inner class, blue, is wrapped by the outer class, red), a
small MLP trained with Gaussian noise augmentation, and certificates for the test points.

Sizes: n = 10^5 (certification) and 10^6 (idealised values) in this notebook; the CI test runs it with
`SMOOTHJAX_NOTEBOOK_SIZE=ci`, which uses n = 2 x 10^4 and 2 x 10^5 (printed in the first cell).

* Left: what `smoothjax.pipeline.certify` certifies with n = 10^5 samples and alpha = 0.001.
  Correct, certified points in light red/blue, others in black; for a selection of points, the
  Cohen radius is a dark ring and the SoS radius a light ring. The paper used N = 10^8: the
  dot-product bound on ||grad p|| has a standard deviation of about sqrt(d)/(sigma^2 sqrt(n/2)), far
  above the largest possible gradient at n = 10^5, so here SoS cannot beat Cohen (it pays alpha/2).
* Right: the same points with p and grad p estimated from 10^6 noise samples each and plugged into
  the two certificates without confidence intervals (the N -> infinity limit the paper approaches with
  10^8 samples): the SoS gain appears where the gradient is small, at the "top of the hill" of a
  class, as the paper describes.""",
    SETUP,
    """from smoothjax.app import datasets, training
from jax.scipy.stats import norm as jnorm
train = datasets.load_dataset("swissroll", "train")
test = datasets.load_dataset("swissroll", "test")
SIGMA = 0.25
# SMOOTHJAX_NOTEBOOK_SIZE=ci (set by tests/test_notebooks.py) runs the same computation with fewer
# Monte Carlo samples, to fit the CI time budget; the committed notebook and figure are the full size.
SIZE = os.environ.get("SMOOTHJAX_NOTEBOOK_SIZE", "full")
N_CERT, N_IDEAL = (100_000, 1_000_000) if SIZE != "ci" else (20_000, 200_000)
print(f"size {SIZE!r}: certify with n = {N_CERT}, idealised p and grad p from {N_IDEAL} samples per point")
start = time.perf_counter()
run = training.train(train, sigma=SIGMA, config={"architecture": "mlp", "input_shape": [2], "num_classes": 2,
                     "hidden": [64, 64]}, epochs=150, batch_size=100, learning_rate=3e-3, seed=0)
print(f"trained in {time.perf_counter() - start:.1f} s; test accuracy {training.accuracy(run.apply_fn, run.params, test.x, test.y):.3f},"
      f" under noise {training.accuracy(run.apply_fn, run.params, test.x, test.y, sigma=SIGMA):.3f}")
""",  # noqa: E501  (cell code, as in the committed notebooks)
    """start = time.perf_counter()
res = pipeline.certify(run.apply_fn, run.params, test.x, jax.random.key(0), sigma=SIGMA, n0=100, n=N_CERT,
                       alpha=0.001, batch_size=5000, methods=("cohen_l2", "sos_l2"))
cohen = np.asarray(res.radii["cohen_l2"]); sos = np.asarray(res.radii["sos_l2"])
pred = np.asarray(res.prediction)
print(f"certified {len(test)} points with n = {N_CERT} in {time.perf_counter() - start:.1f} s")
good = (pred == test.y) & (cohen > 0)
print(f"certified accuracy at r=0: {good.mean():.3f};  mean Cohen radius {cohen[good].mean():.4f}, mean SoS radius {sos[good].mean():.4f}")
gain = sos - cohen
print(f"SoS > Cohen on {(gain > 1e-9).sum()} points; SoS < Cohen on {(gain < -1e-9).sum()} (SoS spends alpha/2 on p)")
bound = np.asarray(res.bounds["sos_grad_norm_upper"])[good]
print(f"gradient-norm upper bound / largest possible gradient: median {np.median(bound / np.asarray(certificates.max_grad_norm(np.asarray(res.p_lower['sos_l2'])[good], SIGMA))):.2f}")
""",  # noqa: E501  (cell code, as in the committed notebooks)
    """# A selection of points: per class, the 4 certified points farthest from the other class's
# test points plus 5 spread at random.
rng = np.random.default_rng(0)
chosen = []
for c in (0, 1):
    idx = np.flatnonzero(good & (test.y == c))
    other = test.x[test.y != c]
    dist = np.min(np.linalg.norm(test.x[idx, None] - other[None], axis=-1), axis=1)
    far = list(idx[np.argsort(-dist)[:4]])
    chosen += far + list(rng.choice(np.setdiff1d(idx, far), 5, replace=False))
chosen = np.array(chosen)

NUM, CHUNK = N_IDEAL, 20_000
def smoothed_value_and_gradient(x, c, key):
    # p = P[f(x + e) = c] and grad p = E[e 1{f(x + e) = c}] / sigma^2 (Stein), from NUM samples
    def body(i):
        e = SIGMA * jax.random.normal(jax.random.fold_in(key, i), (CHUNK, 2), jnp.float32)
        f = (jnp.argmax(run.apply_fn(run.params, x + e), -1) == c).astype(jnp.float64)
        return f.sum(), (e.astype(jnp.float64) * f[:, None]).sum(0)
    s, g = jax.lax.map(body, jnp.arange(NUM // CHUNK))
    return s.sum() / NUM, g.sum(0) / NUM / SIGMA ** 2
start = time.perf_counter()
p_hat, g_hat = jax.jit(jax.vmap(smoothed_value_and_gradient, in_axes=(0, 0, None)))(
    jnp.asarray(test.x[chosen]), jnp.asarray(pred[chosen]), jax.random.key(1))
p_hat = np.minimum(np.asarray(p_hat), 1 - 1e-6)
gnorm = np.minimum(np.linalg.norm(np.asarray(g_hat), axis=1), np.asarray(certificates.max_grad_norm(p_hat, SIGMA)))
ideal_cohen = SIGMA * np.asarray(jnorm.ppf(p_hat))
ideal_sos = np.asarray(certificates.sos_radius(p_hat, gnorm, SIGMA))
print(f"idealised values for {len(chosen)} points in {time.perf_counter() - start:.1f} s")
for c in (0, 1):
    sel = test.y[chosen] == c
    print(f"class {c} ({'inner, blue' if c else 'outer, red'}): idealised SoS / Cohen radius "
          f"{np.round(ideal_sos[sel] / ideal_cohen[sel], 3)}")
assert np.all(ideal_sos >= ideal_cohen - 1e-9)
np.savez(FIG_DIR / "swiss_roll_radii.npz", sigma=SIGMA, n=N_CERT, alpha=0.001, label=test.y, prediction=pred,
         cohen=cohen, sos=sos, chosen=chosen, p_hat=p_hat, grad_norm=gnorm, ideal_cohen=ideal_cohen, ideal_sos=ideal_sos)
""",  # noqa: E501  (cell code, as in the committed notebooks)
    """colors = {0: ("#d62728", "#f4a6a6"), 1: ("#1f77b4", "#a6c8f0")}
g = np.linspace(-1.25, 1.25, 200)
XX, YY = np.meshgrid(g, g)
logits = np.asarray(run.apply_fn(run.params, np.stack([XX.ravel(), YY.ravel()], 1).astype(np.float32)))
fig, axes = plt.subplots(1, 2, figsize=(13, 6.5))
for ax, (rc, rs, title) in zip(axes, [(cohen[chosen], sos[chosen], f"certified, n = {N_CERT:.0e}, alpha = 0.001"),
                                     (ideal_cohen, ideal_sos, f"idealised: p, grad p from {N_IDEAL:.0e} samples, no confidence bound")]):
    ax.contourf(XX, YY, logits.argmax(1).reshape(XX.shape), levels=[-0.5, 0.5, 1.5], colors=["#fde0e0", "#e0ecfb"], alpha=0.6)
    for c in (0, 1):
        sel = good & (test.y == c)
        ax.scatter(test.x[sel, 0], test.x[sel, 1], s=8, color=colors[c][1], zorder=2)
    ax.scatter(test.x[~good, 0], test.x[~good, 1], s=8, color="k", zorder=2)
    for k, i in enumerate(chosen):
        c = int(test.y[i])
        ax.add_patch(plt.Circle(test.x[i], rs[k], fill=False, color=colors[c][1], lw=4.0, zorder=3))
        ax.add_patch(plt.Circle(test.x[i], rc[k], fill=False, color=colors[c][0], lw=1.2, zorder=4))
        ax.plot(*test.x[i], ".", color=colors[c][0], ms=6, zorder=5)
    ax.set_aspect("equal"); ax.set_xlim(-1.25, 1.25); ax.set_ylim(-1.25, 1.25)
    ax.set_title(title, fontsize=10)
fig.suptitle(f"Swiss Roll, sigma = {SIGMA}: Cohen radius (dark ring) and SoS radius (light ring)")
fig.tight_layout()
save(fig, "swiss_roll_sos_vs_cohen")
""",  # noqa: E501  (cell code, as in the committed notebooks)
]

# --------------------------------------------------------------------------------------------
DIGITS = [
    """md:# Digits: every certificate on the shipped model

The 8x8 digits test set (d = 64, pixels in [0, 1]) and the model shipped with smoothjax
(`smoothjax/app/assets/digits_mlp_sigma0.25.msgpack`, trained by `smoothjax train` with Gaussian noise
augmentation at sigma = 0.25). One sampling pass per input feeds all certificates: Cohen (l2), SoS
(l2, second paper Theorem 1 with the Theorem 2 gradient-norm bound), dipole (l2, second paper
Theorem 3), and the first paper's first-order l1, linf and subspace-l2 radii (Corollaries 3.2-3.4;
subspace = the top half of the image, 32 pixels). The CI configuration certifies 60 images with
n = 10^4; set `NUM` and `N` higher for the full table (see the project report).""",
    SETUP,
    '''from smoothjax.app import analysis, cli, datasets, models\nfrom smoothjax.app.tsv import write_tsv
NUM = int(os.environ.get("SMOOTHJAX_DIGITS_NUM", 60))
N = int(os.environ.get("SMOOTHJAX_DIGITS_N", 10_000))
apply_fn, params, config = models.load_model(models.default_model_path())
test = datasets.load_dataset("digits", "test")
mask = cli.subspace_mask("top", config["input_shape"])
start = time.perf_counter()
res = pipeline.certify(apply_fn, params, test.x[:NUM], jax.random.key(0), sigma=0.25, n0=100, n=N, alpha=0.001,
                 batch_size=1000, methods=cli.ALL_METHODS, subspace=mask)
jax.block_until_ready(res.radii)
elapsed = time.perf_counter() - start
print(f"{NUM} inputs, n = {N}: {elapsed:.1f} s ({elapsed / NUM:.3f} s per input, compile included)")
tsv = FIG_DIR / "digits_certify.tsv"
write_tsv(str(tsv), res, labels=test.y[:NUM], times=np.full(NUM, elapsed / NUM))
table = analysis.read_tsv(str(tsv), name="digits")
print(analysis.markdown_table([table]))
''',
    '''# Sanity: abstentions have radius 0; SoS is compared with Cohen input by input
for m in table.methods:
    assert np.all(table.radii[m][table.predict == -1] == 0)
    assert np.all(np.isfinite(table.radii[m])) and np.all(table.radii[m] >= 0)
c, s, d = (table.radii[k] for k in ("cohen_l2", "sos_l2", "dipole_l2"))
print(f"SoS > Cohen on {(s > c).sum()}/{NUM} inputs, dipole > Cohen on {(d > c).sum()}/{NUM}")
l1, linf = table.radii["first_order_l1"], table.radii["first_order_linf"]
# every l2 ball of radius R contains the l1 ball of radius R and the linf ball of radius R/sqrt(d):
# the first-order radii can only be informative when they beat those baselines
print(f"first-order l1 > Cohen l2 radius on {(l1 > c + 1e-12).sum()}/{NUM};"
      f" linf > Cohen/sqrt(64) on {(linf > c / 8 + 1e-12).sum()}/{NUM}")
''',
    '''paths = analysis.plot_certified_accuracy([table], str(FIG_DIR / "digits_certified_accuracy"), formats=("png",))
print(paths)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
ok = table.correct
axes[0].scatter(c[ok], s[ok], s=10, label="SoS")
axes[0].scatter(c[ok], d[ok], s=10, marker="x", label="dipole")
lim = max(c.max(), s.max(), d.max()) * 1.05 + 1e-3
axes[0].plot([0, lim], [0, lim], "k--", lw=0.8)
axes[0].set_xlabel("Cohen l2 radius"); axes[0].set_ylabel("l2 radius"); axes[0].legend(); axes[0].set_title("second-order vs Cohen")
axes[1].scatter(c[ok], l1[ok], s=10, label="first-order l1")
axes[1].plot([0, lim], [0, lim], "k--", lw=0.8, label="Cohen l2 (an l1 certificate too)")
axes[1].set_xlabel("Cohen l2 radius"); axes[1].set_ylabel("l1 radius"); axes[1].legend(fontsize=8)
axes[1].set_title("first-order l1 vs Cohen")
fig.tight_layout()
save(fig, "digits_radius_scatter")
''',  # noqa: E501  (cell code, as in the committed notebooks)
]


def main():
    notebook(HIGHER_ORDER_FIG1, "higher_order_figure1.ipynb")
    notebook(SECOND_ORDER_FIG1, "second_order_figure1.ipynb")
    notebook(SWISS_ROLL, "swiss_roll.ipynb")
    notebook(DIGITS, "digits_certificates.ipynb")


if __name__ == "__main__":
    main()
