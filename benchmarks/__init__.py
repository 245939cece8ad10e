"""smoothjax benchmarks: ``python -m benchmarks [--quick]`` (see ``benchmarks/README.md``).

Not part of the installed package; run from the repository root.
"""
