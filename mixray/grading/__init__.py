"""Answer grading, shared by curation and evaluation (and the gold transforms of problems).

``extract`` (the final answer of a completion), ``verify`` (math-verify, GSM8K numbers, and
`verify.VERIFIER_VERSION`, part of curation's cache key), ``grade`` (one completion by answer
format) and ``rates`` (the per-sample no-answer, truncation and error rates).

A leaf of the data flow: it imports nothing from the stages (problems, curate, evaluate) nor
`mixray.config`, so every stage may use it and none reaches back up the chain through it.
"""
