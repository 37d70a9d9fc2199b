"""PPT's forward and loss (docs/unimc_and_ppt.md, "PPT"): a prompt on a frozen encoder, the MLM head read at the
[MASK] slot of each example.

* ``vocab`` loss (PPT's): vocab-parallel cross-entropy over the whole vocabulary at the slot, target = the label
  word's id; the megatron-core CE needs no [n, V] gather.
* ``verbalizer`` loss (PET's): cross-entropy over the example's candidate words only, their logits taken by the
  column gather (``unimc.losses.vocab_columns``); candidates past an example's ``num_classes`` are masked out.

Accuracy is the argmax over the candidate words (both losses); ``vocab_accuracy`` is PPT's own evaluation, the
argmax over the whole vocabulary equal to the label word.
"""
import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

from megatron_vega.unimc.losses import vocab_columns

LOSSES = ("vocab", "verbalizer")


def collate(examples, pad_id: int, label_ids) -> dict[str, torch.Tensor]:
    """Right-padded tokens, the slot of each row, its label and the [b, K] mask of its candidate words."""
    b, s = len(examples), max(len(e.tokens) for e in examples)
    tokens = torch.full((b, s), pad_id, dtype=torch.long)
    padding = torch.zeros_like(tokens)
    for i, e in enumerate(examples):
        tokens[i, :len(e.tokens)] = torch.tensor(e.tokens)
        padding[i, :len(e.tokens)] = 1
    classes = torch.tensor([e.num_classes for e in examples])
    return {"tokens": tokens, "padding_mask": padding, "slot": torch.tensor([e.slot for e in examples]),
            "label": torch.tensor([e.label for e in examples]),
            "candidates": torch.arange(len(label_ids))[None, :] < classes[:, None]}


class _ReadAt:
    """The encoder as a Prompt calls it, returning the MLM logits at ``positions`` only (flat, s-major)."""

    def __init__(self, encoder, positions):
        self.encoder, self.positions = encoder, positions

    def __call__(self, tokens, attention):
        return self.encoder(tokens, attention, lm_positions=self.positions)

    def embedding_hook(self, hook):
        return self.encoder.embedding_hook(hook)


def slot_logits(prompt, encoder, batch) -> torch.Tensor:
    """[b, V/tp] fp32 logits of this rank's vocabulary slice at each row's slot, the prompt in place. A shallow
    prompt sits after [CLS], moving the slot right by its length; a deep one adds no position."""
    b = batch["tokens"].shape[0]
    shift = 0 if prompt.deep else prompt.length
    rows = torch.arange(b, device=batch["slot"].device)
    logits, _ = prompt(_ReadAt(encoder, (batch["slot"] + shift) * b + rows), batch)
    return logits


def ppt_loss(logits, batch, label_ids, kind: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(mean loss over the rows, {"correct", "vocab_correct"} counts) for vocab-parallel slot logits [b, V/tp]."""
    ids = torch.tensor(label_ids, device=logits.device)
    gold = batch["label"]
    columns = vocab_columns(logits, list(label_ids)).masked_fill(~batch["candidates"], float("-inf"))
    if kind == "vocab":
        loss = vocab_parallel_cross_entropy(logits.clone(), ids[gold]).mean()  # the CE shifts its input in place
    else:
        loss = F.cross_entropy(columns, gold)
    with torch.no_grad():
        full = gather_from_tensor_model_parallel_region(logits)  # [b, V]: b is a micro-batch, small
        counts = {"correct": (columns.argmax(-1) == gold).sum(), "vocab_correct": (full.argmax(-1) == ids[gold]).sum()}
    return loss, counts
