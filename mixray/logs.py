"""One logging setup for the driver and for Ray worker processes (trials, Train workers)."""

from __future__ import annotations

import logging


def configure(level: int = logging.INFO) -> None:
    """Show mixray's INFO lines (progress, summaries); idempotent, so workers may call it freely."""
    logger = logging.getLogger("mixray")
    if logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # Ray's own root handlers would print every line twice
