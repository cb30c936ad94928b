"""The sweep: what runs a sweep file end to end, above the stages.

`__main__` is the command (``python -m mixray.sweep``); `plan` what ``--dry-run`` prints and
the checks before any work; `run` one invocation: `upstream` (models, problems, each teacher's
generation and curation), `baseline` (the students before fine-tuning), `tune` (Ray Tune over
the search space) running each `trial` (mix -> train -> evaluate), then the `summary`.
`invocation` keeps an invocation's state for ``--resume``; `resources` what a trial reserves;
`callbacks` Tune's trial states as metrics and a console line; `console` what a person sees.
"""
