"""What a sweep file names that must exist or work, checked before any work: by `--dry-run`, which
is what a user runs before booking GPUs, and by the real run alike, before Ray starts.

`check_inputs` refuses (a `SweepFileError`: exit 2, every problem with its key) every local file
the sweep reads that is missing (problem and benchmark files), every model spec that cannot
resolve (a folder that is missing or holds no config.json, a malformed hub id, and, where the
hub answers, a hub id with no such model or revision), and a tracking URI MLflow would refuse
(a bare path is a file store, which MLflow 3 refuses). Where the hub does not answer, hub ids
are checked for their form only, and the run downloads them. What needs the cluster
(resources) is `plan.check_resources`'s, once Ray is up.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from mixray import models
from mixray.config import SweepConfig, SweepFileError
from mixray.problems.config import DatasetSource

log = logging.getLogger(__name__)

# What MLflow 3's tracking stores accept (mlflow.tracking._tracking_service.utils); a file store
# (a bare path or file:) only with MLFLOW_ALLOW_FILE_STORE=true.
DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
SERVER_SCHEMES = ("http", "https", "databricks")


def check_inputs(cfg: SweepConfig) -> None:
    """Raise SweepFileError listing every input of ``cfg`` that cannot exist or work."""
    problems = [*_files(cfg), *_models(cfg), *_tracking(cfg.tracking.tracking_uri)]
    if problems:
        raise SweepFileError(f"sweep {cfg.name!r}: {len(problems)} input(s) cannot be used "
                             "(nothing was started):\n" + "\n".join(f"  - {p}" for p in problems))


def _local(path: str | None) -> bool:
    return path is not None and not path.startswith("hf:")


def _files(cfg: SweepConfig) -> Iterator[str]:
    """Local files the problems stage and the benchmarks read (relative to where the sweep
    runs, as they are read)."""
    named: list[tuple[str, str | None]] = []
    src = cfg.problems.source
    if isinstance(src, DatasetSource):
        named += [("problems.source.path", src.path), ("problems.source.eval_path", src.eval_path)]
    for i, bench in enumerate(cfg.evaluate.benchmarks):
        named.append((f"evaluate.benchmarks[{i}].path ({bench.name})",
                      getattr(bench, "path", None)))
    for key, path in named:
        if _local(path) and not Path(path).expanduser().is_file():
            yield f"{key}: no such file {path!r} (relative to {Path.cwd()})"


def _models(cfg: SweepConfig) -> Iterator[str]:
    specs = [(f"students[{i}]", s) for i, s in enumerate(cfg.students)]
    specs += [(f"teachers.{label}.model", t.local_model) for label, t in cfg.teachers.items()]
    if cfg.evaluate.judge is not None:
        specs.append(("evaluate.judge.model", cfg.evaluate.judge.model))
    hub = []  # well-formed hub ids, for the hub itself to answer
    for key, spec in specs:
        if spec is None:
            continue
        if (problem := models.spec_problem(spec)) is not None:
            yield f"{key}: {problem}"
        elif models.is_hub_spec(spec):
            hub.append((key, spec))
    if hub and not models.hub_reachable():
        log.info("the model hub does not answer here: %d hub id(s) are checked for their form "
                 "only (the run downloads them)", len(hub))
        return
    for key, spec in hub:
        if (problem := models.hub_problem(spec)) is not None:
            yield f"{key}: {problem}"


def _tracking(uri: str | None) -> Iterator[str]:
    if uri is None:
        return  # sqlite under the run root
    parsed = urlparse(uri)
    key = f"tracking.tracking_uri {uri!r}"
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and uri[1:3] == ":\\"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
            yield (f"{key}: a path is a file store, which MLflow 3 refuses; use "
                   f"sqlite:///{Path(parsed.path).expanduser()}/mlflow.db, or a tracking server "
                   "(http://host:5000) on a cluster")
    elif parsed.scheme in SERVER_SCHEMES[:2] and not parsed.netloc:
        yield f"{key}: a server URI needs a host, as in http://mixray-head:5000"
    elif parsed.scheme == "sqlite" and not parsed.path.strip("/"):
        yield f"{key}: a sqlite URI needs a file, as in sqlite:///runs/mlflow.db"
    elif parsed.scheme.split("+")[0] not in (*DB_SCHEMES, *SERVER_SCHEMES):
        yield (f"{key}: MLflow knows no store {parsed.scheme!r}; expected one of "
               f"{', '.join(s + '://' for s in (*DB_SCHEMES, *SERVER_SCHEMES))}")
