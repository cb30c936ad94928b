"""The prepared GPU acceptance run, `make gpu-check` (README, "GPU acceptance"), in two halves:

- `loop.py` (`make gpu-check-loop`): the SFT loop under torchrun on CUDA (bf16, ZeRO-2 and
  ZeRO-3), export and reload, MFU of a Qwen2.5-0.5B-shaped model, HF generate tokens/s. Needs only
  Python, a CUDA torch >= 2.11, transformers and the wheels `wheels.py` prepares: no Ray, no vLLM.
- `cluster.py` (`make gpu-check-cluster`): on a GPU node with the full install, the GPU training
  test through Ray Train with NCCL, vLLM against HF tokens/s on the same prompts, an evaluation
  through vLLM.

Each writes one JSON (to $OUT when set, else benchmarks/results/), exits 0 with
{"skipped": "no CUDA"} where torch sees no GPU, and non-zero on any real failure. Models are
built in code (`common.build_model`); nothing is downloaded from a hub.
"""
