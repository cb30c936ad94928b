"""Packing: several samples per sequence, no attention across them, positions restart per sample.

The proof is numerical: on the tiny model, the token-weighted loss of a packed batch equals the
per-sample losses of the same samples computed alone, for sdpa and eager attention."""

from __future__ import annotations

import pytest
import torch

from mixray.models import resolve
from mixray.train.data import collate, collate_packed, encode, make_units, pack_greedy, real_tokens
from mixray.train.loss import forward_inputs, pool_sums, token_losses


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoTokenizer

    path = resolve("tiny-random")
    return path, AutoTokenizer.from_pretrained(path)


def _examples(tok, n: int = 6):
    # long responses about 3x the short ones, alternating pools 0 (long) and 1 (short)
    return [encode(tok, "You are a helpful assistant.", f"{i} + {i}?",
                   f"{i} + {i} = {2 * i}. " * (6 if i % 2 == 0 else 2), 256, pool=i % 2)
            for i in range(n)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_per_sample_losses(tiny, attn) -> None:
    from transformers import AutoModelForCausalLM

    path, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation=attn).eval()
    examples = _examples(tok)
    with torch.no_grad():
        alone = []
        for e in examples:
            batch = collate([e], tok.pad_token_id)
            losses, mask = token_losses(model(**forward_inputs(batch)).logits, batch["labels"])
            alone.append((float(losses.sum()), int(mask.sum())))
        packed = collate_packed([examples[:4], examples[4:]], tok.pad_token_id)  # 2nd row padded
        losses, mask = token_losses(model(**forward_inputs(packed)).logits, packed["labels"])
        by_pool = pool_sums(losses, mask, packed["pool_ids"], 2)
    want = sum(s for s, _ in alone) / sum(n for _, n in alone)
    assert int(mask.sum()) == sum(n for _, n in alone)
    assert float(losses.sum() / mask.sum()) == pytest.approx(want, rel=1e-5)
    want_long = sum(alone[i][0] for i in (0, 2, 4)) / sum(alone[i][1] for i in (0, 2, 4))
    assert float(by_pool[0, 0] / by_pool[0, 1]) == pytest.approx(want_long, rel=1e-5)


def test_packed_positions_restart_per_sample(tiny) -> None:
    _, tok = tiny
    a, b = _examples(tok, 2)
    batch = collate_packed([[a, b], [b]], tok.pad_token_id)
    na, nb = len(a.input_ids), len(b.input_ids)
    assert batch["position_ids"][0].tolist() == list(range(na)) + list(range(nb))
    assert batch["position_ids"][1, :nb].tolist() == list(range(nb))
    assert batch["position_ids"][1, nb] == 0  # the padding tail is a segment of its own
    assert "attention_mask" not in batch  # packed detection needs attention_mask=None
    assert real_tokens(batch) == na + 2 * nb


def test_greedy_packing_is_complete_bounded_and_respects_phases() -> None:
    lengths = [30, 90, 30, 30, 100, 20, 60, 30, 90, 10] * 5
    phases = [0] * 25 + [1] * 25
    packs = pack_greedy(lengths, 128, phases, window=4)
    assert sorted(i for p in packs for i in p) == list(range(50))
    assert all(sum(lengths[i] for i in p) <= 128 for p in packs)
    assert all(len({phases[i] for i in p}) == 1 for p in packs)
    # manifest order is kept up to the window: a sample lands in one of the 4 newest packs
    opened = [min(p) for p in packs]
    assert opened == sorted(opened)
    for k, p in enumerate(packs):
        assert all(sum(o <= i for o in opened) - 1 - k < 4 for i in p)


def test_units_without_packing_are_single_samples(tiny) -> None:
    _, tok = tiny
    assert make_units(_examples(tok, 3), "none", 256) == [[0], [1], [2]]
