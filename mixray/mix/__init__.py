"""Mixing pools of curated rows into one ordered training manifest. Pure Python/numpy, no Ray.

`manifest.build_manifest(pools, spec)` is the entry point: `spec` is a `mixray.mix.config.MixSpec`
(pools and weights, unit, budget, repetition, per-problem pairing, schedule, seed); schedule.py
compiles the schedule into segments, sampler.py picks the rows, card.py describes the result.

Nothing is imported here: reading a sweep file imports ``config``, and that stays free of numpy.
"""
