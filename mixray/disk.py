"""Disk use under the run root: how big a folder is, and deleting what a finished run no longer
needs (train.keep_checkpoints) without ever failing the run over a leftover.

Sizes count the bytes of regular files, as `du --apparent-size -s` does, and follow no symlinks:
a model folder linked in from the cache (models.resolve) is not counted again.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

UNITS = ("B", "KB", "MB", "GB", "TB")


def tree_size(path: Path) -> int:
    """Bytes of the regular files under `path` (itself, if a file); symlinks are not followed
    and count as nothing; a missing path is 0 bytes. A file or folder that vanishes during the
    walk (another sweep sharing the run root deletes its checkpoints) counts as 0 too."""
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return 0
    if not path.is_dir():
        return path.stat().st_size
    total, stack = 0, [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += _size(entry)
        except FileNotFoundError:
            continue
    return total


def _size(entry: os.DirEntry) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0


def human_size(n_bytes: int) -> str:
    """1234567 -> '1.2 MB' (powers of 1000, as df -H and the issue's numbers use)."""
    assert n_bytes >= 0, n_bytes
    value, unit = float(n_bytes), UNITS[0]
    for unit in UNITS:
        if value < 1000 or unit == UNITS[-1]:
            break
        value /= 1000
    return f"{n_bytes} B" if unit == "B" else f"{value:.1f} {unit}"


def remove(path: Path) -> int:
    """Delete a file or folder tree; return the bytes freed. A failure is logged as a warning
    naming the path, not raised: callers delete what a FINISHED run no longer needs, and a
    leftover costs disk, not results (failing the run would throw its results away)."""
    path = Path(path)
    size = tree_size(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as e:
        log.warning("could not delete %s (%s): delete it by hand to free up to %s", path, e,
                    human_size(size))
        return 0
    return size
