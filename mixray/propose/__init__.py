"""``python -m mixray.propose``: the next mix of a finished sweep (`mixray.science.proposal`), read
back from MLflow, printed and, with ``--write``, written as the next sweep file."""
