"""The layout the architecture promises: a core that never imports the application, no private
imports across modules, small modules, and a core that works without the application's extras."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "smoothjax"
CORE = sorted(p for p in PACKAGE.rglob("*.py") if "app" not in p.relative_to(PACKAGE).parts)
ALL = sorted(PACKAGE.rglob("*.py"))
APP_EXTRA = ("matplotlib", "tqdm", "sklearn")


def _module(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path):
    """(imported module, imported name or None) for every import statement of a file (absolute)."""
    tree = ast.parse(path.read_text())
    here = _module(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                yield base, alias.name


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_never_imports_the_application(path):
    bad = [m for m, name in _imports(path)
           if m.startswith("smoothjax.app") or (m == "smoothjax" and name == "app") or m.split(".")[0] in APP_EXTRA]
    assert not bad, bad


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_another_modules_private_name(path):
    mine = _module(path)
    package = mine if path.name == "__init__.py" else mine.rsplit(".", 1)[0]
    bad = []
    for module, name in _imports(path):
        if not module.startswith("smoothjax") or name is None or not name.startswith("_"):
            continue
        # a package's own underscore modules and the private helper modules (smoothjax/_*.py) are
        # meant to be imported; an underscore *name* from another module is not
        if module.rsplit(".", 1)[0] == package and module.rsplit(".", 1)[-1].startswith("_"):
            continue
        if module == package or module.startswith(package + "."):
            continue
        target = ROOT.joinpath(*module.split("."), name)
        if target.with_suffix(".py").exists() or target.is_dir():  # a private helper module, not a name
            continue
        bad.append(f"from {module} import {name}")
    assert not bad, bad


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path):
    lines = path.read_text().count("\n")
    assert lines <= 700, f"{path.relative_to(ROOT)} has {lines} lines; split it along its concepts"


def test_core_works_without_the_application_extras():
    """With matplotlib, tqdm and scikit-learn unimportable, the core imports and certifies."""
    code = (
        "import sys\n"
        f"for m in {APP_EXTRA!r}: sys.modules[m] = None\n"
        "import jax, numpy as np, smoothjax as sj\n"
        "f = lambda p, x: jax.numpy.stack([x[:, 0], -x[:, 0]], -1)\n"
        "r = sj.certify(f, None, np.array([[1.0, 0.0]], np.float32), jax.random.key(0), sigma=0.5, n0=32,\n"
        "               n=1000, alpha=0.01, batch_size=500, methods=('cohen_l2', 'sos_l2', 'dipole_l2'))\n"
        "assert r.prediction[0] == 0 and r.radii['cohen_l2'][0] > 0\n"
        "print(float(sj.cohen_radius(0.99, sigma=0.25)) > 0)\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]


def test_command_line_without_the_extras_names_the_extra(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "from smoothjax.app import cli\n"
        "sys.exit(cli.main(['demo', '--out', 'unused']))\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "smoothjax[app]" in lines[0], done.stderr
