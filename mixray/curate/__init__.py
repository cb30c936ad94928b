"""Curation: extract each completion's final answer, verify it, keep the correct ones.

Pure Python + pyarrow (no Ray): it runs in the driver once per sweep and in evaluation.
"""
