"""The rehearsal head's Python has no vLLM, like the cloud heads (clusters/aws.yaml, gcp.yaml and
the KubeRay image install vLLM on GPU workers only: on a CPU head it would pull in CUDA torch).

clusters/local.py puts this directory on the head's PYTHONPATH, so every process of the head (the
job's driver, Ray's workers there, the autoscaler) runs this at start-up; clusters/local_provider.py
takes it off again for worker nodes, which keep the venv's vLLM. One install serves both: with
``sys.modules["vllm"] = None``, ``import vllm`` raises ModuleNotFoundError and
``importlib.util.find_spec("vllm")`` is None on the head, as where the package is absent.
"""

import sys

sys.modules["vllm"] = None  # type: ignore[assignment]
