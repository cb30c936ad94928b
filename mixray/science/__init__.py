"""The science of a sweep's results, without MLflow, Ray or plotting: `config` (the
``analysis:`` section), `significance` (paired bootstrap over problems and seeds, power),
`analysis` (curves, ΔLong/ΔLarge, best mixes, gains over the base models), `document` (the
findings as summary.json keeps them), `proposal` (the next mix: a weighted quadratic of the
curve and its best share).
"""
