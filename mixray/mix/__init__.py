"""Mixing pools of curated rows into one ordered training manifest. Pure Python/numpy, no Ray.

`build_manifest(pools, spec)` is the entry point: `spec` is a `mixray.config.MixSpec`
(pools and weights, unit, budget, repetition, per-problem pairing, schedule, seed); schedule.py
compiles the schedule into segments, sampler.py picks the rows, card.py describes the result.
"""

from mixray.mix.manifest import Manifest, build_manifest

__all__ = ["Manifest", "build_manifest"]
