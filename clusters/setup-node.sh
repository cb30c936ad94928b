#!/usr/bin/env bash
# What a mixray node installs, written once (issue 26): clusters/aws.yaml and gcp.yaml run it
# from their head/worker setup commands, and the KubeRay image recipe (clusters/kuberay.yaml's
# header) runs it when the image is built, so the three cannot drift apart.
#
#   bash clusters/setup-node.sh head|gpu-worker [CHECKOUT]     (CHECKOUT: default ~/mixray)
#
# head        CPU only: drives the sweep (a job's entrypoint) and MLflow. It gets the CPU wheel of
#             the pinned torch first (from PyPI a Linux torch==X is the multi-GB CUDA build; the
#             pyproject pin is on the version, so `pip install -e` keeps what is there), and no
#             vLLM: the engines check vLLM on the node type they run on (generate/job.py), and
#             vLLM on a CPU head drags in CUDA torchvision/torchaudio that break transformers.
# gpu-worker  teachers, Train workers, evaluation engines and judges: the CUDA build of the pinned
#             torch first, then mixray with its `vllm` extra, the vLLM release built against that
#             torch (pyproject.toml pins both: one place).
set -euo pipefail
role=${1:?usage: setup-node.sh head|gpu-worker [CHECKOUT]}
repo=${2:-$HOME/mixray}
torch=$(sed -n 's/^ *"\(torch==[^"]*\)".*/\1/p' "$repo/pyproject.toml")
[ -n "$torch" ] || { echo "setup-node.sh: no torch pin in $repo/pyproject.toml" >&2; exit 1; }
case $role in
  head)
    pip install -q "$torch" --index-url https://download.pytorch.org/whl/cpu
    pip install -q -e "$repo[cluster]" ;;
  gpu-worker)
    # PyPI's Linux wheel is a CUDA build; TORCH_INDEX=https://download.pytorch.org/whl/cu1XX
    # picks the CUDA that matches the image's driver
    pip install -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$torch"
    pip install -q -e "$repo[cluster,vllm]" ;;
  *)
    echo "setup-node.sh: unknown role $role (head or gpu-worker)" >&2; exit 2 ;;
esac
