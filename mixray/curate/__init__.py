"""Curation: grade each completion's final answer (`mixray.grading`), keep the correct ones.

Pure Python + pyarrow (no Ray): it runs in the driver once per sweep.
"""
