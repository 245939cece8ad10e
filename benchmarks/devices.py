"""Scaling over devices: certify on 1, 2 and 4 devices, sharded over inputs and over samples.

    python -m benchmarks.devices [--quick] [--out benchmarks/results/devices-cpu.json]

Each device count runs in its own process (``--xla_force_host_platform_device_count``, CPU). For
every count D and both mesh shapes (D x 1: inputs split; 1 x D: each input's samples split) it
times ``smoothjax.certify`` (Cohen + SoS + dipole, the MLP of :mod:`benchmarks.models`) after a
warm-up call, best of ``repeats``, and reports inputs/s and the scaling efficiency
``t_1 / (D t_D)`` against the one-device run. Each simulated device runs single-threaded, so D
devices use min(D, cores) cores: on a 2-core machine the efficiency of 4 devices cannot exceed 0.5;
on real accelerators each device is a chip.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import textwrap

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

WORKER = textwrap.dedent(
    """
    import json, sys, time
    import jax, numpy as np
    import smoothjax
    from benchmarks import models
    cfg = json.loads(sys.argv[1])
    apply_fn, params, shape = models.get("mlp")
    xs = np.random.default_rng(0).uniform(size=(cfg["inputs"], *shape)).astype(np.float32)
    out = []
    d = jax.device_count()
    for mesh_shape in ([(1, 1)] if d == 1 else [(d, 1), (1, d)]):
        mesh = smoothjax.make_mesh(*mesh_shape)
        kw = dict(sigma=0.25, n0=100, n=cfg["n"], alpha=0.001, batch_size=cfg["batch_size"],
                  methods=("cohen_l2", "sos_l2", "dipole_l2"), mesh=mesh)
        smoothjax.certify(apply_fn, params, xs, jax.random.key(0), **kw)  # compile
        best = float("inf")
        for _ in range(cfg["repeats"]):
            t = time.perf_counter()
            smoothjax.certify(apply_fn, params, xs, jax.random.key(1), **kw)
            best = min(best, time.perf_counter() - t)
        out.append({"devices": d, "mesh": list(mesh_shape), "seconds": best, "inputs_per_s": cfg["inputs"] / best})
    print(json.dumps(out))
    """
)

CONFIGS = {
    "quick": {"inputs": 8, "n": 20_000, "batch_size": 1_000, "repeats": 3},
    "full": {"inputs": 16, "n": 100_000, "batch_size": 2_000, "repeats": 5},
}


def run(mode: str) -> list[dict]:
    cfg = CONFIGS[mode]
    rows = []
    root = pathlib.Path(__file__).resolve().parents[1]
    for devices in (1, 2, 4):
        # one thread per simulated device, so D devices use min(D, cores) cores (the one-device run
        # would otherwise already use every core through XLA's threaded kernels)
        flags = (f"--xla_force_host_platform_device_count={devices} --xla_cpu_multi_thread_eigen=false "
                 "intra_op_parallelism_threads=1")
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, PYTHONPATH=str(root))
        done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(cfg)], env=env, capture_output=True,
                              text=True, timeout=1800, cwd=root)
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        rows.extend(json.loads(done.stdout.strip().splitlines()[-1]))
    base = next(r["seconds"] for r in rows if r["devices"] == 1)
    for r in rows:
        r["efficiency"] = base / (r["devices"] * r["seconds"])
    return rows


def markdown(rows, cfg) -> str:
    lines = [f"inputs {cfg['inputs']}, n = {cfg['n']}, batch_size {cfg['batch_size']}, methods cohen + sos + dipole, "
             f"MLP, CPU ({os.cpu_count()} cores; one thread per simulated device)", "",
             "| devices | mesh (inputs x samples) | s per call | inputs/s | efficiency t1 / (D tD) |",
             "|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['devices']} | {r['mesh'][0]} x {r['mesh'][1]} | {r['seconds']:.3f} | "
                     f"{r['inputs_per_s']:.2f} | {r['efficiency']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="certify scaling over simulated CPU devices")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "devices-cpu.json"))
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    rows = run(mode)
    md = markdown(rows, CONFIGS[mode])
    print(md)
    pathlib.Path(args.out).write_text(json.dumps({"mode": mode, "config": CONFIGS[mode], "rows": rows}, indent=1))
    pathlib.Path(args.out).with_suffix(".md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
