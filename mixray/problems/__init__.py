"""Problems: where the teachers' training problems and the held-out problems come from.

``config`` (the `problems` section: a reasoning-gym task or a dataset), ``datasets`` (reading
jsonl/json/parquet files and hub datasets through a field mapping and an answer transform, with
bad-row accounting; evaluation's benchmarks read through it too) and ``stage``
(`stage.build_problems`, the stage a sweep runs first).

Nothing is imported here: reading a sweep file imports ``config``, and that stays free of pyarrow.
"""
