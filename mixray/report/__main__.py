"""``python -m mixray.report --experiment NAME [--tracking-uri URI] [--parent RUN_ID] [--out DIR]``:
the comparison report of one sweep invocation (`mixray.report.build.write_report`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mixray import logs
from mixray.report.build import write_report
from mixray.tracking.records import add_invocation_arguments


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mixray.report",
        description="Learnability-gap tables and Mix Distillation plots of one sweep, from MLflow.")
    add_invocation_arguments(parser)
    parser.add_argument("--out", default=None,
                        help="Output folder (default: runs/reports/<experiment>/<parent id>/).")
    args = parser.parse_args(argv)
    logs.configure()
    try:
        index = write_report(args.experiment, args.tracking_uri, args.parent, args.out)
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
