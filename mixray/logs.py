"""One logging setup for the driver and for Ray worker processes (trials, Train workers)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

FORMAT = logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S")


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, never to the stream of
    the moment it was made: under pytest that first stream is a capture buffer that is closed
    later, and the next record (a model built on first use) printed ``--- Logging error ---``
    instead of itself. Redirections made later (a CLI's, Ray's worker setup) are followed too."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # StreamHandler's own __init__ would bind a stream now

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr


def configure(level: int = logging.INFO) -> None:
    """Show mixray's INFO lines (progress, summaries); idempotent, so workers may call it freely."""
    logger = logging.getLogger("mixray")
    if any(isinstance(h, StderrHandler) for h in logger.handlers):
        return  # another's handler (pytest's capture, a user's) must not stop ours
    handler = StderrHandler()
    handler.setFormatter(FORMAT)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # Ray's own root handlers would print every line twice
