"""The comparison report of one sweep invocation, read back from MLflow: `__main__` is the
command (``python -m mixray.report``), `build` the driver (index.html, summary.json, figures),
`figures` draws with matplotlib, `html` renders the page.
"""
