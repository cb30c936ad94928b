"""What each run trained and was judged on, as MLflow dataset inputs: the UI's dataset view then
links a trial to its mix manifest (digest = the manifest's content hash, the same for the same
data) and the parent run to the sweep's problems and teacher pools. Only a reference is logged
(the file's URI, schema and row count), never the rows: the files stay in the run root.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient

CONTEXT_TAG = "mlflow.data.context"  # what MLflow's UI shows as the dataset's role in the run


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


def log_datasets(c: MlflowClient, run_id: str, inputs: list[DatasetInput]) -> None:
    if inputs:
        c.log_inputs(run_id, datasets=inputs)
