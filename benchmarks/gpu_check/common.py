"""What both halves of the GPU acceptance run share: the model built in code, the FLOPs and MFU
arithmetic, the peak-FLOPS table, versions, and writing the result (or the 'skipped' one).

MFU (model FLOPs utilisation) = model FLOPs per second / (peak dense bf16 FLOPS x GPUs). Two
FLOP counts are reported:

- ``6NT``: 6 x parameters x trained tokens, the usual convention (forward 2, backward 4 FLOPs
  per parameter and token); with tied embeddings the embedding matrix counts once, as the
  output head's matmul (the lookup costs nothing).
- ``model``: what the SFT step must compute: the body (all parameters but the embedding/head
  matrix) on every token, the head only on tokens with a loss (`mixray.train.loss` skips the
  prompt's), and causal attention within each packed sample (6 x layers x attention width x
  n^2 per sample of n tokens: QK^T and AV, 2 n^2 d/2 multiply-adds each, times 3 for backward).
  Recomputation (activation checkpointing) is work the model does not need: never counted.

The peak is the datasheet's dense bf16 (no 2:4 sparsity) by device name; on an H200 a plain
8192^3 bf16 matmul through PyTorch reaches about 790 of its 989 TFLOP/s (measured on the lent
machine, /work/.library/device), so 40% MFU there is about half of what a matmul alone gets.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

log = logging.getLogger("mixray.benchmarks.gpu_check")
REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"

# (words the device name must contain, dense bf16 TFLOP/s from the datasheet, without sparsity).
# First match wins, so the specific names come first: "H100 PCIe" before "H100". Words, not
# substrings: "NVIDIA L40S" must not match "L4". torch names the SXM H100 "NVIDIA H100 80GB HBM3".
PEAK_BF16_TFLOPS: tuple[tuple[frozenset[str], float], ...] = (
    (frozenset({"GH200"}), 989.4),
    (frozenset({"H200", "NVL"}), 835.5),  # H200 NVL: 1,671 with sparsity
    (frozenset({"H200"}), 989.4),  # H200 SXM: the H100 SXM's tensor cores, more memory
    (frozenset({"H100", "PCIE"}), 756.0),
    (frozenset({"H100", "NVL"}), 835.5),
    (frozenset({"H100"}), 989.4),  # H100 SXM: 1,979 with sparsity
    (frozenset({"A100"}), 312.0),  # SXM and PCIe alike
    (frozenset({"L40S"}), 362.1),
    (frozenset({"L4"}), 121.0),
)
MFU_GOAL = 0.40  # issue 16: >= 40% on H100-class for the 0.5B model

# Qwen2.5-0.5B's shape (its config.json): 494,032,768 parameters with tied embeddings. "tiny"
# keeps the same architecture small enough for a CPU rehearsal (--allow-cpu) in seconds.
SIZES: dict[str, dict[str, Any]] = {
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
             "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
             "max_position_embeddings": 32768, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6,
             "tie_word_embeddings": True},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 512,
             "max_position_embeddings": 4096, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6,
             "tie_word_embeddings": True},
}


# --- arithmetic (pure) ------------------------------------------------------------------------

def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a device by its torch name, or None when the table lacks it."""
    words = set(re.split(r"[\s\-_]+", device_name.upper()))
    return next((tflops for needed, tflops in PEAK_BF16_TFLOPS if needed <= words), None)


def model_shape(config: dict[str, Any]) -> dict[str, Any]:
    """What the FLOP counts need from a model config (a Qwen2/Llama-style config.json)."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return {"vocab": config["vocab_size"], "hidden": config["hidden_size"],
            "layers": config["num_hidden_layers"], "attention_width": heads * head_dim,
            "tied": bool(config.get("tie_word_embeddings", False))}


def flops_6nt(n_params: int, tokens: float) -> float:
    return 6.0 * n_params * tokens


def model_flops(shape: dict[str, Any], n_params: int, tokens: float, loss_tokens: float,
                attention_sq: float) -> float:
    """Forward + backward FLOPs of an SFT step (module docstring): the body on every token, the
    head on tokens with a loss, attention on the sum over packed samples of n^2."""
    head = shape["vocab"] * shape["hidden"]
    body = n_params - head * (1 if shape["tied"] else 2)  # the embedding (and an untied head)
    return (6.0 * body * tokens + 6.0 * head * loss_tokens
            + 6.0 * shape["layers"] * shape["attention_width"] * attention_sq)


def mfu(flops: float, seconds: float, peak_tflops: float | None, gpus: int) -> float | None:
    """Achieved / peak; None when the peak is unknown (a device not in the table)."""
    if not peak_tflops or seconds <= 0:
        return None
    return flops / seconds / (peak_tflops * 1e12 * gpus)


# --- environment ------------------------------------------------------------------------------

def default_out(name: str) -> Path:
    """$OUT/<name> when OUT is set (the device tool brings back what lies there), else
    benchmarks/results/<name>."""
    return Path(os.environ["OUT"]) / name if os.environ.get("OUT") else RESULTS / name


def dist_version(name: str) -> str | None:
    """The version of the module actually imported, else of the installed distribution."""
    module = sys.modules.get(name.replace("-", "_"))
    version = getattr(module, "__version__", None)
    if version is not None:
        return str(version)
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(packages: Iterable[str] = ()) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    found: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "nccl": _nccl_version() if cuda else None,
        "driver": _nvidia_smi("driver_version"),
    }
    for name in ("transformers", "deepspeed", "pydantic", "tokenizers", "safetensors",
                 "pyarrow", *packages):
        found[name] = dist_version(name)
    return found


def _nccl_version() -> str:
    import torch

    v = torch.cuda.nccl.version()  # a tuple (2, 27, 3) in torch 2.x, an int in older ones
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def devices() -> list[dict[str, Any]]:
    import torch

    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "multiprocessors": p.multi_processor_count,
                    "peak_bf16_tflops": peak_bf16_tflops(p.name)})
    return out


def _nvidia_smi(field: str) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                          check=False, capture_output=True, text=True)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout else None


def import_check(modules: Iterable[str], forbidden: Iterable[str]) -> dict[str, Any]:
    """Import `modules` here and say which of the `forbidden` top-level packages came along."""
    import importlib

    for m in modules:
        importlib.import_module(m)
    loaded = {m.split(".")[0] for m in sys.modules}
    return {"modules": list(modules), "forbidden_imported": sorted(set(forbidden) & loaded)}


class GpuMemory:
    """The most memory in use on each GPU while it runs (nvidia-smi every 500 ms): it sees the
    torchrun workers, which this process cannot ask. Nothing where nvidia-smi is missing."""

    def __init__(self, path: Path) -> None:
        self.path, self.proc = path, None

    def __enter__(self) -> Self:
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits",
                 "-lms", "500"], stdout=self.path.open("w"), stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def peak_mib(self) -> dict[str, int] | None:
        if self.proc is None or not self.path.exists():
            return None
        peak: dict[str, int] = {}
        for line in self.path.read_text().splitlines():
            index, _, used = line.partition(",")
            if used.strip().isdigit():
                peak[index.strip()] = max(peak.get(index.strip(), 0), int(used))
        return peak


def matmul_tflops(n: int = 8192, repeats: int = 10) -> float:
    """bf16 n^3 matmul TFLOP/s on GPU 0 (three warm-ups): what this device gives PyTorch."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del a, b
    torch.cuda.empty_cache()  # the torchrun workers that follow get the memory back
    return 2 * n**3 * repeats / seconds / 1e12


# --- the model, built in code -----------------------------------------------------------------

def padded_tokenizer(vocab_size: int):
    """mixray's byte-level BPE (ChatML, trained in code) with its vocabulary filled up to
    `vocab_size` by unused pieces (pairs, then triples, of byte-level characters): encoding is
    unchanged (no merge makes them), and every id the model can emit decodes, which vLLM's
    detokenizer needs when a random model samples an id past the 384 trained ones. Loaded back
    from a Qwen2 model folder, transformers makes it a Qwen2Tokenizer, with Qwen2.5's
    pre-tokenizer (digits one by one): the loop, this check's token accounting, HF and vLLM all
    load it so, from the folder."""
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from mixray.models import train_tiny_tokenizer

    base = train_tiny_tokenizer()
    data = json.loads(base.backend_tokenizer.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]  # the specials are in it (ids 0-2)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    pieces = ("".join(p) for n in (2, 3) for p in itertools.product(alphabet, repeat=n))
    for piece in pieces:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(piece, len(vocab))
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token=base.bos_token,
        eos_token=base.eos_token, pad_token=base.pad_token, chat_template=base.chat_template)


def build_model(out: Path, size: str, device: str) -> dict[str, Any]:
    """A randomly initialised Qwen2 of `size` (SIZES) saved as a bf16 HF folder at `out`, with
    the padded tokenizer; built on `device` (a 0.5B init takes seconds on a GPU, about a
    minute on 2 CPU cores). Returns its parameter count, shape and build time."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    start = time.perf_counter()
    spec = SIZES[size]
    tokenizer = padded_tokenizer(spec["vocab_size"])
    assert len(tokenizer) == spec["vocab_size"], (len(tokenizer), spec["vocab_size"])
    config = Qwen2Config(**spec, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, use_cache=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())  # tied: the embedding counts once
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"size": size, "params": n_params, "config": spec,
            "shape": model_shape(spec), "build_s": round(time.perf_counter() - start, 1)}


# --- the result -------------------------------------------------------------------------------

def write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", out)


def finish(report: dict[str, Any], errors: dict[str, str], out: Path, work: Path,
           keep_work: bool, started: float) -> bool:
    """Write the half's report (its wall time, ``ok``) and say whether it passed; a failed
    half keeps its work dir for the logs, a passed one removes it unless ``keep_work``."""
    import shutil
    import sys
    import time

    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["ok"] = not errors
    write(report, out)
    if errors:
        print(f"{report['half']} half FAILED ({', '.join(errors)}); work kept in {work}; "
              f"see {out}", file=sys.stderr)
        return False
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return True


def skipped(report: dict[str, Any], out: Path, why: str) -> int:
    """Write {"skipped": why, ...} and return 0: no GPU is not a failure."""
    import torch

    message = (f"{report['half']} half skipped: {why} (torch {torch.__version__}, built for "
               f"CUDA {torch.version.cuda}; torch.cuda.is_available() is False). Run it on a "
               f"machine with an NVIDIA GPU and a CUDA torch.")
    write({"skipped": why, "message": message} | report, out)
    print(message)
    return 0


def failed_tail(text: str, limit: int = 4000) -> str:
    """The end of a log: where a traceback is."""
    return text[-limit:]
