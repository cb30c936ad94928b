"""``python -m mixray.propose --experiment NAME [--tracking-uri URI] [--parent RUN_ID]
[--write NEXT.yaml]`` prints, per student, pair of pools and schedule, the predicted best share
with its 95% interval and, with ``--write``, the parent's ``config.json`` with its search replaced
by a ``long_share`` grid over those intervals (`next_space`), named ``<name>-next``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from mixray import logs
from mixray.config import load_sweep
from mixray.science.analysis import curve_points
from mixray.science.proposal import describe, next_space, next_sweep, propose
from mixray.tracking.records import add_invocation_arguments, load_sweep_record, parent_config

log = logging.getLogger("mixray.propose")


def write_next_sweep(tracking_uri: str, parent_id: str, grid: Sequence[float],
                     path: str | Path) -> Path:
    """Write the next sweep file from the parent run's config.json; validated, or not left."""
    config = parent_config(tracking_uri, parent_id)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    before = path.read_bytes() if path.is_file() else None  # a file it replaces comes back
    path.write_text(yaml.safe_dump(next_sweep(config, grid), sort_keys=False))
    try:
        load_sweep(path)
    except ValueError:
        if before is None:
            path.unlink()
        else:
            path.write_bytes(before)
        raise
    log.info("propose: wrote %s", path)
    return path



def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mixray.propose",
        description="The best long share of one sweep's finished trials, and the next sweep.")
    add_invocation_arguments(parser)
    parser.add_argument("--write", default=None, metavar="NEXT.yaml",
                        help="Write the next sweep file here: long_share over the intervals.")
    args = parser.parse_args(argv)
    logs.configure()
    try:
        rec = load_sweep_record(args.experiment, args.tracking_uri, args.parent)
        points = curve_points(rec.trials)
        if not points:
            raise ValueError(f"parent run {rec.parent_id} of experiment {args.experiment!r} has "
                             "no finished trials with a long_share and an accuracy")
        proposals = propose(points)  # the eval accuracy, and its error, is what is fitted
        for p in proposals:
            print(describe(p))
        if args.write:
            print(write_next_sweep(args.tracking_uri, rec.parent_id, next_space(proposals),
                                   args.write))
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
