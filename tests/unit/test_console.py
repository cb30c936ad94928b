"""The quiet console: mixray's lines on the terminal, live lines in place, everything else (what
C++, child processes and other loggers write to fds 1 and 2) in the log file."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

from mixray.sweep import console
from mixray.sweep.console import ConsoleHandler, redirected, tail


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _logger(stream: io.StringIO) -> logging.Logger:
    log = logging.getLogger(f"mixray.test-console-{id(stream)}")
    log.propagate = False
    log.handlers = [ConsoleHandler(stream)]
    log.setLevel(logging.INFO)
    return log


def test_live_lines_share_one_status_line_updated_in_place_on_a_terminal() -> None:
    out = _Tty()
    log = _logger(out)
    log.info("generate[long]: 10/40 rows", extra={"live": "generate[long]"})
    log.info("generate[short]: 5/40 rows", extra={"live": "generate[short]"})
    log.info("generate[long]: 20/40 rows", extra={"live": "generate[long]"})
    log.info("curate[long]: 30 of 40 correct")
    text = out.getvalue()
    assert text.count("\n") == 2  # one status line, then the ordinary one
    status = text.split("\n")[0].rsplit(console.CLEAR, 1)[-1]  # what the terminal shows last
    assert status.endswith("generate[long]: 20/40 rows | generate[short]: 5/40 rows")
    assert text.endswith("curate[long]: 30 of 40 correct\n")


def test_live_lines_are_thinned_where_nothing_updates_in_place(monkeypatch) -> None:
    out = io.StringIO()
    log = _logger(out)
    clock = iter([0.0, 1.0, 20.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    for rows in (10, 20, 30):  # at 0 s, 1 s and 20 s: the one at 1 s is left out
        log.info("generate[long]: %d/40 rows", rows, extra={"live": "generate[long]"})
    lines = out.getvalue().splitlines()
    assert [ln.rsplit(": ", 1)[-1] for ln in lines] == ["10/40 rows", "30/40 rows"]
    assert console.CLEAR not in out.getvalue()


def test_everything_else_goes_to_the_log_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "sweep.log"
    with redirected(path) as terminal:
        logging.getLogger("mixray.test-redirect").warning("for the terminal")
        os.write(1, b"what C++ writes to fd 1 goes to the log\n")
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child\\n')"],
                       check=True)
        assert terminal is not sys.stdout
    text = path.read_text()
    assert "what C++ writes to fd 1 goes to the log" in text and "child" in text
    print("restored")  # fds 1 and 2 are back: pytest captures this, not the file
    assert "restored" not in path.read_text()


def test_a_failed_trial_shows_its_last_lines() -> None:
    error = "Traceback (most recent call last):\n  File x\n\n  boom()\nValueError: bad rows\n"
    assert tail(error, 2) == "  boom()\nValueError: bad rows"
