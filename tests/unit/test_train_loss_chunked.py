"""The chunked loss (train/loss.py) gives the full-logits loss: the same per-token losses, pool sums
and gradients on a tiny Llama (tied and untied head, through peft too), and never keeps more than
one chunk's fp32 logits for backward. No Ray, no DeepSpeed."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mixray.train.data import IGNORE
from mixray.train.loss import (
    chunked_losses,
    forward_inputs,
    head_calls,
    model_losses,
    output_head,
    pool_sums,
    token_losses,
)

VOCAB = 97


def _model(tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
                         max_position_embeddings=256)
    return LlamaForCausalLM(config).float()


def _batch(rows: int = 3, seq: int = 40) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (rows, seq), generator=g)
    labels = ids.clone()
    labels[:, :7] = IGNORE  # a prompt
    labels[1, 30:] = IGNORE  # padding of a shorter row
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "pool_ids": torch.randint(0, 2, (rows, seq), generator=g)}


def _loss_and_grads(model, batch, chunk: int | None):
    model.zero_grad()
    if chunk is None:
        losses, mask = token_losses(model(**forward_inputs(batch)).logits, batch["labels"])
    else:
        losses, mask = model_losses(model, batch, chunk=chunk)
    (losses.sum() / mask.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return losses.detach(), mask, grads


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("chunk", [1, 16, 4096])  # 1 and 16: many checkpointed chunks; 4096: one
def test_chunked_loss_matches_full_logits(tied: bool, chunk: int) -> None:
    model, batch = _model(tied), _batch()
    want, want_mask, want_grads = _loss_and_grads(model, batch, None)
    got, got_mask, got_grads = _loss_and_grads(model, batch, chunk)
    assert torch.equal(got_mask, want_mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert float(got[~got_mask].abs().sum()) == 0.0
    torch.testing.assert_close(pool_sums(got, got_mask, batch["pool_ids"], 2),
                               pool_sums(want, want_mask, batch["pool_ids"], 2))
    assert set(got_grads) == set(want_grads)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_loss_through_peft_matches() -> None:
    import peft

    def lora(tied: bool):
        return peft.get_peft_model(_model(tied), peft.LoraConfig(
            r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
            task_type="CAUSAL_LM"))

    model, batch = lora(False), _batch()
    assert output_head(model) is model.base_model.model.lm_head
    want, _, want_grads = _loss_and_grads(model, batch, None)
    got, _, got_grads = _loss_and_grads(model, batch, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert set(got_grads) == set(want_grads) and all("lora_" in n for n in got_grads)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packed_sequences_match_full_logits() -> None:
    """Packed units pass position_ids and no attention mask (train/data.py): the same path."""
    model, batch = _model(False), _batch(rows=2, seq=40)
    del batch["attention_mask"]
    batch["position_ids"] = torch.cat([torch.arange(15), torch.arange(25)]).repeat(2, 1)
    want, _, want_grads = _loss_and_grads(model, batch, None)
    got, _, got_grads = _loss_and_grads(model, batch, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_extra_empty_head_calls_change_nothing() -> None:
    """Under ZeRO-3 every rank calls the head as often as the rank with the most positions
    (head_calls); the extra calls see empty chunks."""
    model, batch = _model(False), _batch()
    positions = int((batch["labels"][:, 1:] != IGNORE).sum())
    assert head_calls(model.lm_head, positions, 16) == -(-positions // 16)  # no process group
    hidden = model(**forward_inputs(batch), output_hidden_states=True).hidden_states[-1]
    want, _ = chunked_losses(model.lm_head, hidden, batch["labels"], 16)
    got, _ = chunked_losses(model.lm_head, hidden, batch["labels"], 16, calls=12)
    torch.testing.assert_close(got, want)
    with pytest.raises(AssertionError, match="cannot cover"):
        chunked_losses(model.lm_head, hidden, batch["labels"], 16, calls=2)


def test_a_batch_without_loss_tokens_still_backpropagates() -> None:
    model, batch = _model(False), _batch()
    batch["labels"][:] = IGNORE
    losses, mask = model_losses(model, batch, chunk=4)
    assert not mask.any() and float(losses.detach().abs().sum()) == 0.0
    losses.sum().backward()  # a graph to the head exists: every rank runs the same backward
    assert float(model.lm_head.weight.grad.abs().sum()) == 0.0


def _saved_bytes(fn) -> tuple[int, int]:
    """(total, largest) bytes autograd keeps for backward while fn() builds its graph."""
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.sum().backward()
    return sum(sizes), max(sizes)


def test_only_one_chunk_of_logits_is_ever_kept() -> None:
    """8,192 loss positions (a long-CoT sequence): the full path keeps the [8191, vocab] fp32
    log-softmax for backward; the chunked one keeps only its inputs, and recomputes a chunk."""
    torch.manual_seed(0)
    seq, width, vocab, chunk = 8192, 16, 1000, 1024
    head = torch.nn.Linear(width, vocab, bias=False)
    hidden = torch.randn(1, seq, width, requires_grad=True)
    labels = torch.randint(0, vocab, (1, seq))
    logits_bytes = (seq - 1) * vocab * 4
    full_total, full_largest = _saved_bytes(lambda: token_losses(head(hidden), labels)[0])
    total, largest = _saved_bytes(lambda: chunked_losses(head, hidden, labels, chunk)[0])
    assert full_largest >= logits_bytes
    # the chunked graph keeps the loss positions' hidden rows (seq x width fp32) and small things,
    # never one chunk's logits, let alone all of them
    assert largest <= seq * width * 4 < chunk * vocab * 4
    assert total < full_total / 5
