"""Mixing pools of curated rows into one ordered training manifest. Pure Python/numpy, no Ray."""
