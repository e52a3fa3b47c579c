"""Measured figures against named baselines, each measured in the same run.

``python -m benchmarks [NAME...]`` (``make bench``) runs ``benchmarks/<NAME>.py`` and writes
``build/bench/<NAME>.json``::

    {"name", "metric", "unit", "value", "baseline", "baseline_value",
     "ratio": value / baseline_value, "config": {...}}

A benchmark module defines ``run() -> dict`` with those keys except ``name`` and ``ratio``.
Speed targets live here, never in timed unit tests: a busy CI machine must not fail a test.
"""
