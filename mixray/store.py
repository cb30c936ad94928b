"""Where MLflow records live by default: an sqlite file in the run root.

The sweep, report and evaluate CLIs share this default. Apart from `mixray.tracking`, which
imports mlflow, so that reading a config or a CLI's arguments never does.
"""

from __future__ import annotations

from pathlib import Path

from mixray.runroot import RunRoot

SQLITE = "sqlite:///"


def default_tracking_uri(run_root: str | Path = "runs") -> str:
    """The MLflow store every CLI and sweep defaults to: sqlite in the run root (relative to the
    working directory unless `run_root` is absolute)."""
    return f"{SQLITE}{RunRoot(Path(run_root)).mlflow_db}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a local sqlite store (relative, or absolute: "sqlite:////");
    None for any other store."""
    return Path(tracking_uri.removeprefix(SQLITE)) if tracking_uri.startswith(SQLITE) else None
