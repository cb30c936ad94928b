"""What each run trained and was judged on, as MLflow dataset inputs: the UI's dataset view then
links a trial to its mix manifest (digest = the manifest's content hash, the same for the same
data) and the parent run to the sweep's problems and teacher pools. Only a reference is logged
(the file's URI, schema and row count), never the rows: the files stay in the run root.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

CONTEXT_TAG = "mlflow.data.context"  # what MLflow's UI shows as the dataset's role in the run
# Two runs logging the same dataset at once (two students' trials on one mix: the same name and
# digest) race in MLflow's get-or-create of the experiment's dataset row: the loser's transaction
# fails on the unique key and is rolled back whole, and its next try finds the row. Seen in CI
# (sqlite) with two trials starting together; the phrases are sqlite's, PostgreSQL's and MySQL's.
DATASET_TRIES = 3
UNIQUE_VIOLATION = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry")


def _column_type(t: pa.DataType) -> str:
    """MLflow's column-spec type of an Arrow type; what it has no name for shows as "string"
    (the schema is for people reading the UI, nothing parses it back)."""
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "long" if t.bit_width > 32 else "integer"
    if pa.types.is_floating(t):
        return "double" if t.bit_width > 32 else "float"
    return "binary" if pa.types.is_binary(t) else "string"


def dataset_input(name: str, path: Path, digest: str, context: str) -> DatasetInput:
    """A parquet file as a dataset input of a run. ``digest`` must fit MLflow's 36 characters:
    our content hashes and stage keys are 16."""
    assert len(digest) <= 36, digest
    schema = pq.read_schema(path)
    spec = [{"name": f.name, "type": _column_type(f.type)} for f in schema]
    dataset = Dataset(name=name, digest=digest, source_type="local",
                      source=json.dumps({"uri": path.resolve().as_uri()}),
                      schema=json.dumps({"mlflow_colspec": spec}),
                      profile=json.dumps({"num_rows": pq.read_metadata(path).num_rows}))
    return DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, context)])


def log_datasets(c: MlflowClient, run_id: str, inputs: list[DatasetInput],
                 backoff_s: float = 0.5) -> None:
    """Link ``inputs`` to the run; a dataset another run was creating at that very moment is
    tried again (DATASET_TRIES in all), any other error raised at once."""
    if not inputs:
        return
    for attempt in range(1, DATASET_TRIES + 1):
        try:
            c.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as e:
            if attempt == DATASET_TRIES or not any(p in str(e) for p in UNIQUE_VIOLATION):
                raise
            log.warning("run %s: a dataset was being created by another run at the same time; "
                        "trying again (%d of %d)", run_id, attempt + 1, DATASET_TRIES)
            time.sleep(backoff_s * attempt)
