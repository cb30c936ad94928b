"""SFT data: chat template, response-only loss mask, the overlong policy, packing, batches.

Prompt and response are tokenized separately and concatenated, so the mask boundary is exact even
where a BPE merge could straddle it. A sample longer than max_length is truncated (its response
tail goes) or dropped, as `overlong` says; a sample with no response token left is always dropped.
Both are counted, and more of them than `max_dropped_fraction` of the manifest is a ValueError.

Training *units* are what a batch is made of: one sample each (`packing="none"`, padded batches),
or several samples packed into one sequence of at most max_length tokens (`packing="greedy"`).
Packed samples restart their position_ids at 0 and pass no attention_mask: transformers 5.19
(`masking_utils.find_packed_sequence_indices`) then builds a block-diagonal causal mask, so no
token attends across a sample boundary, with sdpa and eager attention alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch

log = logging.getLogger(__name__)

IGNORE = -100
# Open sequences a greedy pack may still fill: a sample moves at most this many sequences earlier
# than manifest order, so schedules and curricula keep their shape; 16 fills sequences to ~98%.
PACK_WINDOW = 16
# Stands for a response whose rendering shows where the template ends the assistant turn.
RESPONSE_SENTINEL = "MIXRAY-RESPONSE-0f3a"


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    pool: int = 0  # index into the run's sorted pool names (teacher labels), for per-pool loss


@dataclass(frozen=True)
class DataStats:
    """What the overlong policy did to the manifest; logged and returned by the loop."""

    rows: int
    kept: int
    truncated: int
    dropped_overlong: int
    dropped_empty: int

    @property
    def affected(self) -> int:
        return self.truncated + self.dropped_overlong + self.dropped_empty

    def as_dict(self) -> dict[str, int]:
        return asdict(self) | {"affected": self.affected}


Responses = Literal["template", "as_written"]  # TrainConfig.responses


def encode(tokenizer, system: str, prompt: str, completion: str, max_length: int,
           pool: int = 0, responses: Responses = "template") -> Example:
    """Tokenize one row; the response tail beyond max_length is cut (and `truncated` set).
    ``responses``: how the completion becomes the assistant turn (`_response`)."""
    turns = [{"role": "system", "content": system}] if system else []
    turns.append({"role": "user", "content": prompt})
    prefix = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    p_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    response = _response(tokenizer, turns, prefix, completion, responses)
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = (p_ids + r_ids)[:max_length]
    labels = ([IGNORE] * len(p_ids) + r_ids)[:max_length]
    return Example(ids, labels, truncated=len(p_ids) + len(r_ids) > max_length, pool=pool)


def _response(tokenizer, turns: list[dict[str, str]], prefix: str, completion: str,
              responses: Responses = "template") -> str:
    """The assistant turn after the prompt, as the student's template renders the completion:
    a thinking template (Qwen3's) keeps a long row's think block and gives a short row its own
    empty one (its non-thinking form). A template that drops part of the completion (one that
    strips the reasoning of every assistant turn, as DeepSeek-R1-Distill's) would train the
    student on the answer alone: there, and always with ``responses`` "as_written", the
    completion is trained on whole, closed by the template's own end of turn."""
    def render(content: str) -> str:
        full = tokenizer.apply_chat_template(
            turns + [{"role": "assistant", "content": content}], tokenize=False)
        if not full.startswith(prefix):
            raise ValueError("the chat template renders the prompt differently once a response "
                             "follows, so the response-only loss mask has no exact boundary")
        return full[len(prefix):]

    response = render(completion)
    if responses == "template" and " ".join(completion.split()) in " ".join(response.split()):
        return response
    _, marker, end = render(RESPONSE_SENTINEL).partition(RESPONSE_SENTINEL)
    assert marker, "the template rewrote a plain response too"
    return completion + end


def build_examples(
    tokenizer, rows: Sequence[dict], *, system: str, max_length: int,
    overlong: Literal["truncate", "drop"], max_dropped_fraction: float, pools: Sequence[str] = (),
    responses: Responses = "template",
) -> tuple[list[Example], list[int], DataStats]:
    """Encode manifest rows -> (kept examples, their manifest row numbers, stats).

    ValueError when more than max_dropped_fraction of the rows were truncated or dropped, or when
    a row's pool is not one of `pools` (`_pool_of`).
    """
    pool_index = {p: i for i, p in enumerate(pools)}
    kept, where = [], []
    truncated = dropped_overlong = dropped_empty = 0
    for i, r in enumerate(rows):
        ex = encode(tokenizer, system, r["prompt"], r["completion"], max_length,
                    _pool_of(r, i, pool_index), responses)
        if ex.truncated and overlong == "drop":
            dropped_overlong += 1
        elif all(lab == IGNORE for lab in ex.labels):  # the prompt alone fills max_length
            dropped_empty += 1
        else:
            truncated += ex.truncated
            kept.append(ex)
            where.append(i)
    stats = DataStats(len(rows), len(kept), truncated, dropped_overlong, dropped_empty)
    log.info("data: %s (overlong=%s, max_length %d)", stats.as_dict(), overlong, max_length)
    if stats.affected > max_dropped_fraction * stats.rows or not kept:
        raise ValueError(
            f"{stats.affected} of {stats.rows} manifest rows exceed max_length {max_length} or "
            f"have no response token ({truncated} truncated, {dropped_overlong} dropped as "
            f"overlong, {dropped_empty} with an empty loss mask), more than max_dropped_fraction "
            f"{max_dropped_fraction:g} = {max_dropped_fraction * stats.rows:.1f} rows; raise "
            f"train.max_length or train.max_dropped_fraction")
    return kept, where, stats


def _pool_of(row: dict, at: int, pool_index: dict[str, int]) -> int:
    """The row's index into the run's pools. No pools: no per-pool accounting, all rows are 0.
    One pool: a row without a label belongs to it. Otherwise the label must name a run's pool,
    since a wrong index would book the row's loss to another teacher."""
    label = row.get("pool")
    if not pool_index or (label is None and len(pool_index) == 1):
        return 0
    if label not in pool_index:
        what = "has no pool" if label is None else f"has pool {label!r}"
        raise ValueError(f"manifest row {at} {what}, but the run's pools are "
                         f"{sorted(pool_index)}; every row must name one of them")
    return pool_index[label]


def pack_greedy(lengths: Sequence[int], capacity: int, phases: Sequence[int] | None = None,
                window: int = PACK_WINDOW) -> list[list[int]]:
    """Group sample indices into sequences of at most `capacity` tokens, in manifest order.

    First fit over the `window` most recently opened sequences; a new phase closes them all, so
    no sequence mixes two phases of a schedule. Deterministic: resumption sees the same packs.
    """
    packs: list[list[int]] = []
    free: list[int] = []
    open_: list[int] = []
    for i, n in enumerate(lengths):
        assert 0 < n <= capacity, f"sample {i} has {n} tokens; capacity {capacity}"
        if phases is not None and i and phases[i] != phases[i - 1]:
            open_.clear()
        target = next((j for j in open_ if free[j] >= n), None)
        if target is None:
            packs.append([])
            free.append(capacity)
            open_.append(len(packs) - 1)
            open_ = open_[-window:]
            target = len(packs) - 1
        packs[target].append(i)
        free[target] -= n
    return packs


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padding is masked out of attention and loss."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    pool = torch.full((len(examples), width), -1, dtype=torch.long)  # -1: padding
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        attn[i, :n] = 1
        pool[i, :n] = e.pool
    return {"input_ids": ids, "labels": labels, "attention_mask": attn, "pool_ids": pool}


def collate_packed(groups: list[list[Example]], pad_id: int) -> dict[str, torch.Tensor]:
    """One row per group of samples, position_ids restarting at 0 for each sample (and for the
    padding tail, which thereby is a segment of its own that no sample attends to)."""
    width = max(sum(len(e.input_ids) for e in g) for g in groups)
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    labels = torch.full((len(groups), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(groups), width), dtype=torch.long)
    pool = torch.full((len(groups), width), -1, dtype=torch.long)  # -1: padding
    for row, group in enumerate(groups):
        at = 0
        for e in group:
            n = len(e.input_ids)
            # a sample's first label is a prompt token: the previous sample never predicts it
            assert e.labels[0] == IGNORE, "a sample starts with its (unlearned) prompt"
            ids[row, at:at + n] = torch.tensor(e.input_ids)
            labels[row, at:at + n] = torch.tensor(e.labels)
            pos[row, at:at + n] = torch.arange(n)
            pool[row, at:at + n] = e.pool
            at += n
        pos[row, at:] = torch.arange(width - at)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "pool_ids": pool}


def make_units(examples: list[Example], packing: Literal["none", "greedy"], capacity: int,
               phases: Sequence[int] | None = None) -> list[list[int]]:
    """Training units (lists of example indices): one sample each, or greedy packs."""
    if packing == "none":
        return [[i] for i in range(len(examples))]
    return pack_greedy([len(e.input_ids) for e in examples], capacity, phases)


def collate_units(examples: list[Example], units: list[list[int]], pad_id: int,
                  packing: Literal["none", "greedy"]) -> dict[str, torch.Tensor]:
    if packing == "none":
        return collate([examples[u[0]] for u in units], pad_id)
    return collate_packed([[examples[i] for i in u] for u in units], pad_id)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Cells of a batch that hold a sample token, not padding."""
    return int((batch["pool_ids"] >= 0).sum())


def batch_indices(step: int, rank: int, world: int, micro: int, n_rows: int) -> list[int]:
    """Units for one rank at one micro-step: the global batch is a contiguous, cycled window.

    A function of the step only, so a resumed run sees exactly the rows it would have seen.
    """
    start = (step * world + rank) * micro
    return [(start + i) % n_rows for i in range(micro)]
