"""Losses shared by objectives, on the vocab-parallel logits of the MLM head."""
import torch
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy


def predicted_labels(batch) -> torch.Tensor:
    """Gold ids at the predicted positions (flat, sequence-major like the model's output)."""
    return batch["labels"].t().reshape(-1).index_select(0, batch["lm_positions"])


def mlm_loss(batch, logits):
    """Mean cross-entropy over the predicted positions of the micro-batch (vocab-parallel, no full-vocab gather)."""
    losses = vocab_parallel_cross_entropy(logits, predicted_labels(batch))
    loss = losses.sum() / max(losses.numel(), 1)
    # clone: megatron-core divides the returned loss in place by the number of micro-batches
    return loss, {"lm loss": loss.detach().clone()}
