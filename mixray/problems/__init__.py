"""Problems: where the teachers' training problems and the held-out problems come from.

``datasets`` (reading jsonl/json/parquet files and hub datasets through a field mapping and an
answer transform, with bad-row accounting; evaluation's benchmarks read through it too) and
``stage`` (`stage.build_problems`, the stage a sweep runs first).

Nothing is imported here: `mixray.config` imports `datasets`, and `stage` imports
`mixray.config`, so an eager import of `stage` here would be circular.
"""
