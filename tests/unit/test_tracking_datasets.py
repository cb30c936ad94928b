"""Dataset inputs logged while another run creates the same dataset: MLflow's store loses that
race with a unique-key error (seen in CI when two students' trials on one mix started together),
and the loser tries again. The race itself cannot be provoked on demand, so RacingClient stands in
for the moment it is lost (a fake, named as one); the store is a real sqlite one."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mixray.tracking.datasets import DATASET_TRIES, dataset_input, log_datasets


class RacingClient(MlflowClient):
    """Fails its first ``losses`` log_inputs as a lost race would, then logs for real."""

    def __init__(self, uri: str, losses: int, message: str) -> None:
        super().__init__(tracking_uri=uri)
        self.losses, self.message, self.calls = losses, message, 0

    def log_inputs(self, run_id, datasets=None, models=None):
        self.calls += 1
        if self.calls <= self.losses:
            raise MlflowException(self.message)
        return super().log_inputs(run_id, datasets=datasets, models=models)


LOST = ("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
        "datasets.name, datasets.digest")


def _run_and_input(tmp_path: Path, client: MlflowClient):
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"]}), manifest)
    exp = client.create_experiment("races")
    run = client.create_run(exp)
    return run.info.run_id, dataset_input("mix", manifest, "53872a577a39c71c", "training")


def test_a_lost_dataset_race_is_tried_again_and_links_the_dataset_once(tmp_path: Path) -> None:
    client = RacingClient(f"sqlite:///{tmp_path / 'mlflow.db'}", losses=DATASET_TRIES - 1,
                          message=LOST)
    run_id, mix = _run_and_input(tmp_path, client)
    log_datasets(client, run_id, [mix], backoff_s=0.0)
    assert client.calls == DATASET_TRIES
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert [(d.dataset.name, d.dataset.digest) for d in inputs] == [("mix", "53872a577a39c71c")]


def test_other_errors_and_a_race_lost_every_time_are_raised(tmp_path: Path) -> None:
    always = RacingClient(f"sqlite:///{tmp_path / 'a.db'}", losses=DATASET_TRIES, message=LOST)
    run_id, mix = _run_and_input(tmp_path, always)
    with pytest.raises(MlflowException, match="UNIQUE constraint failed"):
        log_datasets(always, run_id, [mix], backoff_s=0.0)
    assert always.calls == DATASET_TRIES
    other = RacingClient(f"sqlite:///{tmp_path / 'b.db'}", losses=1, message="disk I/O error")
    run_id, mix = _run_and_input(tmp_path, other)
    with pytest.raises(MlflowException, match="disk I/O error"):
        log_datasets(other, run_id, [mix], backoff_s=0.0)
    assert other.calls == 1
