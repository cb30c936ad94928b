"""mixray's log handler follows sys.stderr: a stream closed after the first call (pytest's
capture, a CLI's redirection) must never swallow a later record or print a logging error."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from mixray import logs


@pytest.fixture
def fresh_mixray_logger():
    logger = logging.getLogger("mixray")
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers.clear()
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_records_go_to_the_stderr_of_their_moment(fresh_mixray_logger, monkeypatch) -> None:
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logs.configure()
    logging.getLogger("mixray.models").info("built at first call")
    first.close()  # as pytest closes a test's capture stream
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("mixray.models").info("building model tiny-random (once)")
    text = second.getvalue()
    assert "mixray.models: building model tiny-random (once)" in text
    assert "Logging error" not in text


def test_configure_is_idempotent(fresh_mixray_logger) -> None:
    logs.configure()
    logs.configure()
    ours = [h for h in fresh_mixray_logger.handlers if isinstance(h, logs.StderrHandler)]
    assert len(ours) == 1
    assert not fresh_mixray_logger.propagate
