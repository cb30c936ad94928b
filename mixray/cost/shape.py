"""A model's shape, what its memory depends on: layers, widths, heads, vocabulary, parameters.

`model_shape` sizes a model spec without loading or building it (the memory preview runs in
`--dry-run`, before any GPU is booked): a local folder from its config.json; a model built in
code (`mixray.models`) and the public models the recipes name from their published
config.json, written here (`KNOWN`); any other hub id from the size in its name, on a
Qwen2.5-like shape scaled to that size, said as such in `Shape.source`. This machine has no
model hub, so a hub id's own config.json is never fetched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from mixray import models

SIZE_RE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)([bBmM])(?![a-zA-Z])")  # 72B, 0.5B, 135m


@dataclass(frozen=True)
class Shape:
    """The config.json numbers a decoder-only transformer's memory is computed from."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool  # the output head shares the embedding's weight
    qkv_bias: bool = False  # Qwen2.5's q, k and v projections have biases
    source: str = ""  # where these numbers come from, as the preview says it

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        """One decoder layer: q, k, v, o, the gated MLP's three matrices and two norms."""
        q, kv = self.heads * self.head_dim, self.kv_dim
        attn = self.hidden * (q + 2 * kv) + q * self.hidden
        bias = q + 2 * kv if self.qkv_bias else 0
        return attn + bias + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def params(self) -> int:
        embed = self.vocab * self.hidden
        return (embed * (1 if self.tied else 2) + self.layers * self.layer_params
                + self.hidden)

    @property
    def largest_layer_params(self) -> int:
        """The largest module ZeRO-3 gathers at once (DeepSpeed's `largest_layer_params`): the
        embedding (or head) at these vocabularies, else a decoder layer."""
        return max(self.vocab * self.hidden, self.layer_params)


def from_config(config: dict, source: str) -> Shape:
    """A shape from a Hugging Face config.json (Llama, Qwen2, Qwen3, Mistral layouts);
    ValueError for another layout (one without these keys)."""
    needed = ("num_attention_heads", "hidden_size", "num_hidden_layers", "intermediate_size",
              "vocab_size")
    if missing := [k for k in needed if not isinstance(config.get(k), int)]:
        raise ValueError(f"{source}: a layout this preview does not know (no {', '.join(missing)}"
                         f"; model_type {config.get('model_type')!r})")
    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    return Shape(layers=config["num_hidden_layers"], hidden=hidden,
                 intermediate=config["intermediate_size"], heads=heads,
                 kv_heads=config.get("num_key_value_heads") or heads,
                 head_dim=config.get("head_dim") or hidden // heads, vocab=config["vocab_size"],
                 tied=bool(config.get("tie_word_embeddings", False)),
                 qkv_bias=config.get("model_type") == "qwen2", source=source)


def _published(layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int,
               vocab: int, tied: bool, qkv_bias: bool = False, head_dim: int | None = None
               ) -> Shape:
    return Shape(layers, hidden, intermediate, heads, kv_heads, head_dim or hidden // heads,
                 vocab, tied, qkv_bias)


# Each model's published config.json (the hub's, as of 2025), for the models the recipes name:
# model name without its owner and -Instruct suffix -> shape.
KNOWN: dict[str, Shape] = {
    "Qwen2.5-0.5B": _published(24, 896, 4864, 14, 2, 151936, True, True),
    "Qwen2.5-1.5B": _published(28, 1536, 8960, 12, 2, 151936, True, True),
    "Qwen2.5-3B": _published(36, 2048, 11008, 16, 2, 151936, True, True),
    "Qwen2.5-7B": _published(28, 3584, 18944, 28, 4, 152064, False, True),
    "Qwen2.5-14B": _published(48, 5120, 13824, 40, 8, 152064, False, True),
    "Qwen2.5-32B": _published(64, 5120, 27648, 40, 8, 152064, False, True),
    "Qwen2.5-72B": _published(80, 8192, 29568, 64, 8, 152064, False, True),
    "QwQ-32B-Preview": _published(64, 5120, 27648, 40, 8, 152064, False, True),
    "Llama-3.2-1B": _published(16, 2048, 8192, 32, 8, 128256, True),
    "Llama-3.2-3B": _published(28, 3072, 8192, 24, 8, 128256, True),
    "Llama-3.1-8B": _published(32, 4096, 14336, 32, 8, 128256, False),
    "Llama-3.3-70B": _published(80, 8192, 28672, 64, 8, 128256, False),
    "SmolLM2-135M": _published(30, 576, 1536, 9, 3, 49152, True),
    # Qwen3: head_dim 128 whatever the width (its q/k norms, 2 x 128 per layer, left out)
    "Qwen3-0.6B": _published(28, 1024, 3072, 16, 8, 151936, True, head_dim=128),
    "Qwen3-1.7B": _published(28, 2048, 6144, 16, 8, 151936, True, head_dim=128),
    "Qwen3-4B": _published(36, 2560, 9728, 32, 8, 151936, True, head_dim=128),
    "Qwen3-8B": _published(36, 4096, 12288, 32, 8, 151936, False, head_dim=128),
    "Qwen3-14B": _published(40, 5120, 17408, 40, 8, 151936, False, head_dim=128),
    "Qwen3-32B": _published(64, 5120, 25600, 64, 8, 151936, False, head_dim=128),
    # mixray.models._build_tiny's config (head_dim 32 for vLLM's CPU attention)
    "tiny-random": Shape(2, 64, 128, 4, 2, 32, 1024, True),
}
BUILT = {"smollm2-135m-instruct": "SmolLM2-135M", "tiny-random": "tiny-random"}


def model_shape(spec: str) -> Shape:
    """The shape of a model spec, without loading it (module docstring: where it comes from)."""
    from dataclasses import replace

    if spec in BUILT:
        return replace(KNOWN[BUILT[spec]], source=f"{spec}: its config, built in code")
    local = Path(spec).expanduser()
    if not spec.startswith("hf:") and (local / "config.json").is_file():
        return from_config(json.loads((local / "config.json").read_text()),
                           f"{spec}: its config.json")
    repo, _ = models.parse_hub_spec(spec)
    name = re.sub(r"-Instruct$", "", repo.rsplit("/", 1)[-1])
    if name in KNOWN:
        return replace(KNOWN[name], source=f"{repo}: its published config.json")
    if (size := SIZE_RE.search(name)) is None:
        raise ValueError(f"model {spec!r}: no config.json here, not a known model and no size "
                         "in its name (e.g. 7B) to size it from")
    billions = float(size[1]) / (1000 if size[2] in "mM" else 1)
    return replace(scaled(billions), source=f"{repo}: from the size in its name ({size[0]}), on "
                   "a Qwen2.5-like shape (no config.json: the hub is not asked)")


def scaled(billions: float) -> Shape:
    """The known Qwen2.5 shape nearest in size to ``billions`` parameters, its width scaled so
    that its parameter count matches (layers, heads and vocabulary kept)."""
    qwen = [s for n, s in KNOWN.items() if n.startswith("Qwen2.5")]
    near = min(qwen, key=lambda s: abs(s.params / 1e9 - billions))
    factor = (billions * 1e9 / near.params) ** 0.5  # parameters grow with width squared
    hidden = max(64, round(near.hidden * factor / 64) * 64)
    return Shape(near.layers, hidden, round(near.intermediate * factor / 64) * 64, near.heads,
                 near.kv_heads, hidden // near.heads, near.vocab, near.tied, near.qkv_bias)
