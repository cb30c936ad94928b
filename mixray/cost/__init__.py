"""The cost of a sweep: `config` (the ``cost:`` section and its throughput table, every default
with its source), `estimate` (tokens, time and GPU-hours per stage, which ``--dry-run`` prints),
`text` (how an estimate reads), `actual` (what a finished sweep spent, from its files, against
the estimate: summary.json's ``cost``).
"""
