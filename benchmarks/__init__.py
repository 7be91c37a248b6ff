"""Benchmarks of `resilient` against the libraries a user would otherwise assemble.

Run ``python -m benchmarks [--quick] [--only SUBSTRING] [--json PATH]``. Every case runs in
one process, so the ratios in a table compare figures measured in the same run. With
``--instructions`` (valgrind needed) the table gives instructions per call instead, each
case counted in child processes under callgrind (see `benchmarks._instructions`).
"""
