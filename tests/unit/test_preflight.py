"""What --dry-run refuses before a cluster is booked, and the real run refuses the same way before
Ray starts: missing local files, model specs that cannot resolve, tracking URIs MLflow refuses
(issue 26, item 4). Every sweep file in sweeps/ passes: no false alarms on the recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixray.config import SweepFileError, load_sweep
from mixray.sweep.__main__ import main
from mixray.sweep.preflight import check_inputs

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "sweeps" / "smoke.yaml")


@pytest.mark.parametrize("sweep", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_passes(sweep: Path) -> None:
    check_inputs(load_sweep(sweep))


@pytest.mark.parametrize(("override", "key"), [
    ("problems.source={kind: dataset, path: no/such/train.jsonl}", "problems.source.path"),
    ("evaluate.benchmarks=[{kind: dataset, name: mine, path: no/such.parquet}]",
     "evaluate.benchmarks[0].path (mine)"),
    ("students=[./no-such-model]", "students[0]"),
    ("teachers.long.model=/no/such/teacher", "teachers.long.model"),
    ("students=[owner/name@]", "students[0]"),
    ("tracking.tracking_uri=runs/mlruns", "a path is a file store"),
    ("tracking.tracking_uri=htp://head:5000", "MLflow knows no store 'htp'"),
    ("tracking.tracking_uri=http://", "needs a host"),
])
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real-run"])
def test_what_cannot_work_is_refused_naming_its_key(override: str, key: str, dry_run: bool,
                                                   tmp_path: Path, capsys) -> None:
    code = main([SMOKE, f"--set=run_root={tmp_path}", f"--set={override}",
                 *(["--dry-run"] if dry_run else [])])
    out, err = capsys.readouterr()
    assert code == 2 and key in err and "Traceback" not in err, err
    assert "output of Ray" not in out  # the real run stopped before it started anything
    assert not (tmp_path / "sweeps").exists()


def test_a_model_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    cfg = load_sweep(SMOKE, [f"students=[{tmp_path / 'weights'}]"])
    with pytest.raises(SweepFileError, match=r"students\[0\]: model dir .* has no config.json"):
        check_inputs(cfg)


def test_files_that_exist_and_usable_uris_pass(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n')
    for uri in ("sqlite:///runs/mlflow.db", "http://mixray-head:5000", "postgresql://u@h/db"):
        check_inputs(load_sweep(SMOKE, [
            f"problems.source={{kind: dataset, path: {data}}}",
            f"tracking.tracking_uri={uri}"]))
