"""What a person sees while a sweep runs: mixray's own lines, one live line per stage, and the
summary, while everything else (Ray's, Tune's, DeepSpeed's and transformers' output, the lines
Ray forwards from every worker, warnings) goes to a log file under the run root.

`redirected(path)` points file descriptors 1 and 2 at the log, so that output written by C++
(Ray's core worker), by subprocesses and by loggers made before it is caught too, and hands back
a stream on the terminal. `ConsoleHandler` writes mixray's records there: a record logged with
``extra={"live": key}`` replaces the previous one of the same key on one status line rewritten
in place on a terminal, and is printed at most every LIVE_EVERY_S per key elsewhere (CI logs,
`ray job logs`). `--verbose`
skips all of it: everything shows, as before.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from mixray.logs import FORMAT

LIVE_EVERY_S = 15.0  # not a terminal: a live line at most this often per key
CLEAR = "\r\x1b[K"


class ConsoleHandler(logging.Handler):
    """mixray's records on ``stream``. On a TTY the live ones (``record.live``) share one status
    line, rewritten in place (two teachers generate at once: ``generate[long]: ... |
    generate[short]: ...``); any other line ends it, and the live keys start afresh after it."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.tty = stream.isatty()
        self._live: dict[str, str] = {}  # key -> its latest message, on the open status line
        self._last: dict[str, float] = {}
        self.setFormatter(FORMAT)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            key = getattr(record, "live", None)
            if key is None:
                self._write(("\n" if self._live else "") + self.format(record) + "\n")
                self._live.clear()
            elif self.tty:
                self._live[key] = record.getMessage()
                width = shutil.get_terminal_size().columns - 1  # a wrapped line cannot be redrawn
                stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
                self._write(CLEAR + f"{stamp} " + " | ".join(self._live.values())[:width - 9])
            elif (now := time.monotonic()) - self._last.get(key, -LIVE_EVERY_S) >= LIVE_EVERY_S:
                self._last[key] = now
                self._write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def end_live(self) -> None:
        """End an open status line, so what follows starts on a line of its own."""
        if self._live:
            self._write("\n")
            self._live.clear()


@contextmanager
def redirected(log_path: Path) -> Iterator[TextIO]:
    """Send fds 1 and 2 (so sys.stdout, sys.stderr and every child process) to ``log_path``,
    show mixray's INFO records on the terminal, and yield a stream on the terminal for what
    must be seen there (the plan, the summary). Everything is restored on the way out."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    with open(log_path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        handler = ConsoleHandler(terminal)
        logger = logging.getLogger("mixray")
        logger.addHandler(handler)
        try:
            yield terminal
        finally:
            handler.end_live()
            logger.removeHandler(handler)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()


def tail(text: str, lines: int = 3) -> str:
    """The last non-empty lines of an error: what a failing trial shows on the console."""
    kept = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])
